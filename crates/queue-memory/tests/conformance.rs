//! The full conformance suite against the in-memory provider, on a paused tokio clock
//! (timeouts elapse instantly, so the whole suite takes well under a second).

use std::sync::Arc;

use queue_conformance::{Harness, conformance_tests};
use queue_memory::InMemoryProvider;

async fn harness() -> Option<Harness> {
    let provider = InMemoryProvider::new();
    let clock = provider.clone();
    Some(Harness::new(Arc::new(provider)).with_clock(move || clock.now()))
}

conformance_tests!(harness, paused);
