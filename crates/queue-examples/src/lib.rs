//! Runnable examples of `queue-runtime`; the code is in `examples/`.
//!
//! ```text
//! cargo run -p queue-examples --example github_bot
//! cargo run -p queue-examples --features security --example signed_webhooks
//! cargo run -p queue-examples --features webhook --example webhook_bot
//! ```
//!
//! Every example's heavier dependencies sit behind a feature of this crate, so running the
//! demo compiles `queue-runtime` with the in-memory provider and little else.
