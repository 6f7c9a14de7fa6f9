//! The shared conformance suite against an SQS-compatible server (moto in CI), on
//! standard queues and, for the session cases, FIFO queues.
//!
//! Runs when `QUEUE_TEST_SQS_ENDPOINT` is set; otherwise every case prints a skip note,
//! except under `CI`, where every case fails.
//!
//! SQS has no session lock (`SessionSupport::Grouped`), so the session-lock cases skip
//! themselves; the ordering cases run on FIFO queues through the plain receive.
//!
//! moto departure seen here: moto 5.2.5 de-duplicates a FIFO send only against messages
//! still in the queue, while real SQS drops any repeat of a `MessageDeduplicationId` for five
//! minutes, deleted or not. So on moto a redrive under the original id would still arrive;
//! `redrive_is_not_dropped_by_duplicate_detection` therefore also asserts that the redriven
//! id differs from the original, which holds on moto and real SQS alike.

mod common;

use std::{sync::Arc, time::Duration};

use queue_conformance::{Harness, conformance_tests};

async fn harness() -> Option<Harness> {
    let provider = common::provider("conformance").await?;
    // Locks of 10 s, not the default 2 s: moto's ReceiveMessage recomputes the queue's
    // attributes (a scan of every message) for each message it returns, so handing out
    // the 200 messages `concurrent_senders_get_distinct_ids` holds at once takes several
    // seconds on a busy two-core machine, and 2 s locks would run out mid-case.
    Some(
        Harness::new(Arc::new(provider))
            .with_prefix("qc-sqs")
            .with_lock_duration(Duration::from_secs(10)),
    )
}

conformance_tests!(harness);
