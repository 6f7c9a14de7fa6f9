//! The full conformance suite against the in-memory provider's `sqs` profile (SQS FIFO
//! message groups, `SessionSupport::Grouped`), on a paused tokio clock: the session cases
//! run through the plain receive, the session-lock cases skip themselves.

use std::sync::Arc;

use queue_conformance::{Harness, conformance_tests};
use queue_memory::{InMemoryProvider, Profile};

async fn harness() -> Option<Harness> {
    let provider = InMemoryProvider::builder()
        .with_profile(Profile::Sqs)
        .build()
        .expect("the sqs profile builds");
    let clock = provider.clone();
    Some(Harness::new(Arc::new(provider)).with_clock(move || clock.now()))
}

conformance_tests!(harness, paused);
