//! The conformance suite against the in-process Service Bus emulator, over AMQP with SAS
//! authorization, for session and non-session queues. One emulator serves the whole binary;
//! each case creates (and deletes) its own queue on it at run time.

mod common;

use std::{sync::Arc, time::Duration};

use queue_conformance::{Harness, conformance_tests};

async fn harness() -> Option<Harness> {
    let provider = Arc::new(common::EmulatorQueues::new());
    Some(
        Harness::new(provider)
            .with_prefix("sb")
            .with_lock_duration(Duration::from_secs(2))
            .with_receive_wait(Duration::from_secs(1)),
    )
}

conformance_tests!(harness);
