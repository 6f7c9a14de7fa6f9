#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
pub mod layer;
pub mod reference;
pub mod store;

pub use error::{ClaimCheckError, STORE_PROVIDER, reason};
pub use layer::{
    ClaimCheck, Cleanup, DEFAULT_HEADROOM, DEFAULT_MAX_BODY_SIZE, DEFAULT_PENDING_CAPACITY,
};
pub use object_store;
pub use reference::{BlobReference, MAX_REFERENCE_LEN, REFERENCE_ATTRIBUTE};
pub use store::{BlobStore, DEFAULT_PREFIX, DEFAULT_STORE_TIMEOUT, SweepReport};
