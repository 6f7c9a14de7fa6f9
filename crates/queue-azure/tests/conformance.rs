//! The conformance suite against the in-process Service Bus emulator, over AMQP with SAS
//! authorization, for session and non-session queues (each case makes its own queue).

mod common;

use std::{sync::Arc, time::Duration};

use queue_conformance::{Harness, conformance_tests};

async fn harness() -> Option<Harness> {
    let provider = Arc::new(common::PerCaseEmulator::default());
    Some(
        Harness::new(provider)
            .with_prefix("sb")
            .with_lock_duration(Duration::from_secs(2))
            .with_receive_wait(Duration::from_secs(1)),
    )
}

conformance_tests!(harness);
