//! The full conformance suite through the claim-check layer over the in-memory provider,
//! with a threshold of zero: every message with a body travels through the blob store, so
//! the layer must keep every promise the provider makes (order, locks, settlement,
//! sessions, dead letters, redrive) while it moves bodies.

use std::sync::Arc;

use queue_claim_check::{BlobStore, ClaimCheck, object_store::memory::InMemory};
use queue_conformance::{Harness, conformance_tests};
use queue_memory::InMemoryProvider;

async fn harness() -> Option<Harness> {
    let provider = InMemoryProvider::new();
    let clock = provider.clone();
    let store = BlobStore::new(Arc::new(InMemory::new()));
    let layered = ClaimCheck::new(provider, store).with_threshold(0);
    Some(Harness::new(Arc::new(layered)).with_clock(move || clock.now()))
}

conformance_tests!(harness, paused);
