//! The conformance suite every queue-runtime provider must pass.
//!
//! Each promised behaviour is one `pub async fn` taking a [`Harness`] (the provider under
//! test plus timing knobs). A case that needs something the provider's
//! [`Capabilities`](queue_core::Capabilities) say it lacks returns early and prints why, so
//! provider differences live in capabilities, never in test names. Every case creates its
//! own uniquely named queue and deletes it at the end (best effort: a failing case leaves
//! its queue behind, which on an emulator is harmless).
//!
//! A provider crate runs the whole suite from `tests/conformance.rs` with the
//! [`conformance_tests!`] macro and a factory `async fn() -> Option<Harness>`:
//!
//! ```
//! use std::sync::Arc;
//!
//! use queue_conformance::{Harness, conformance_tests};
//! use queue_memory::InMemoryProvider;
//!
//! async fn harness() -> Option<Harness> {
//!     // A provider for a real server returns `None` when its `QUEUE_TEST_*` variables
//!     // are unset: every test then prints a skip note and passes, unless the
//!     // environment variable `CI` is set, where it fails instead.
//!     let provider = InMemoryProvider::new();
//!     let clock = provider.clone();
//!     Some(Harness::new(Arc::new(provider)).with_clock(move || clock.now()))
//! }
//!
//! // One #[tokio::test] per case, on a paused clock.
//! conformance_tests!(harness, paused);
//! # fn main() {}
//! ```
//!
//! The macro arms are:
//! - `conformance_tests!(factory)`: `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`;
//! - `conformance_tests!(factory, current_thread)`: `#[tokio::test]` with real time;
//! - `conformance_tests!(factory, paused)`: `#[tokio::test(start_paused = true)]`, for
//!   providers on tokio's clock (the in-memory provider); timeouts elapse instantly.
//!
//! The calling crate needs `tokio` as a dev-dependency with the `macros` and `rt` features
//! (plus `rt-multi-thread` for the default arm, `test-util` for `paused`).
//!
//! # Which cases need what
//! Every case needs [`QueueProvider::create_queue`](queue_core::QueueProvider::create_queue)
//! and `delete_queue`. Session queues get a `.fifo` name and
//! [`QueueSpec::with_sessions`](queue_core::QueueSpec::with_sessions). Gated cases:
//!
//! | capability | cases |
//! |---|---|
//! | `sessions != None` (through `accept_session` when `Locked`, the plain receive when `Grouped`) | `session_id_round_trip`, `session_fifo_order`, `session_abandoned_message_comes_first`, `thousand_message_session_in_order` |
//! | `sessions == Locked` | `second_accept_of_locked_session_fails`, `accept_next_skips_locked_sessions`, `session_lock_expiry_allows_steal`, `session_close_releases_messages`, `session_lock_renewal_keeps_session` (also `lock_renewal`) |
//! | `session_state` and `Locked` | `session_state_round_trip` |
//! | `delayed_abandon` | `abandon_with_delay_redelivers_later` |
//! | `lock_renewal` | `renew_lock_extends_lock` |
//! | `native_dead_letter` | `auto_dead_letter_after_max_deliveries` |
//! | `scheduled_delivery` (delay capped by `max_schedule_delay`) | `scheduled_message_invisible_until_due` |
//! | `duplicate_detection` (on a session queue where sessions exist) | `duplicate_detection_drops_duplicates` |
//! | `message_ttl` | `expired_message_is_not_delivered` |
//!
//! The redrive cases (`redrive_is_not_dropped_by_duplicate_detection`,
//! `redrive_keeps_order_and_limit`) run on every provider, on a session queue where sessions
//! exist and with duplicate detection on where the provider has it.
//!
//! `refused_batch_entry_follows_batch_atomic` runs on every provider and checks what
//! `batch_atomic` promises (nothing of the batch sent, or `PartialBatch` with the rest sent).
//!
//! The rest run on every provider. [`CASES`] lists them all.
//!
//! # Timing
//! Locks are [`Harness::lock_duration`] long (default 2 s); "expired" means waiting 1.5
//! lock durations plus half a second; anything expected to arrive gets
//! [`Harness::slack`] (default 10 s). On a real server one run of the suite takes about
//! 30 seconds of waiting; under a paused clock it takes milliseconds.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cases;
mod harness;

pub use cases::*;
pub use harness::{Harness, TestQueue, harness_or_skip};

/// Names of all cases, in the order the macro emits them.
pub const CASES: &[&str] = conformance_tests!(@names);

/// Expands into one `#[tokio::test]` per conformance case.
///
/// `$factory` is a path to an `async fn() -> Option<Harness>`; see the [crate docs](crate)
/// for the arms and the skip rules.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@attrs $factory, (flavor = "multi_thread", worker_threads = 2));
    };
    ($factory:path, current_thread) => {
        $crate::conformance_tests!(@attrs $factory, (flavor = "current_thread"));
    };
    ($factory:path, paused) => {
        $crate::conformance_tests!(@attrs $factory, (flavor = "current_thread", start_paused = true));
    };
    (@attrs $factory:path, $attrs:tt) => {
        $crate::__conformance_case_list!(@emit $factory, $attrs,);
    };
    (@names) => {
        $crate::__conformance_case_list!(@name_list)
    };
    (@name_list $($case:ident)*) => {
        &[$(::core::stringify!($case)),*]
    };
    (@emit $factory:path, $attrs:tt, $($case:ident)*) => {
        $(
            #[::tokio::test $attrs]
            async fn $case() {
                if let ::core::option::Option::Some(harness) =
                    $crate::harness_or_skip(::core::stringify!($case), $factory().await)
                {
                    $crate::$case(&harness).await;
                }
            }
        )*
    };
}

/// The one list of cases, fed to [`conformance_tests!`] (tests and [`CASES`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case_list {
    ($($head:tt)*) => {
        $crate::conformance_tests! {$($head)*
            unique_ids
            round_trip
            binary_body_round_trip
            session_id_round_trip
            queue_not_found
            empty_receive_returns_at_deadline
            receive_returns_when_a_message_arrives
            complete_prevents_redelivery
            unknown_receipt_is_rejected
            expired_receipt_is_rejected
            settled_receipt_is_rejected
            abandon_redelivers_with_count_two
            abandon_with_delay_redelivers_later
            lock_expiry_redelivers_and_invalidates_receipt
            renew_lock_extends_lock
            dead_letter_moves_to_dlq_with_reason
            auto_dead_letter_after_max_deliveries
            session_fifo_order
            session_abandoned_message_comes_first
            second_accept_of_locked_session_fails
            accept_next_skips_locked_sessions
            session_lock_expiry_allows_steal
            session_lock_renewal_keeps_session
            session_close_releases_messages
            thousand_message_session_in_order
            concurrent_senders_get_distinct_ids
            batch_send_and_receive
            oversize_message_rejected
            refused_batch_entry_follows_batch_atomic
            scheduled_message_invisible_until_due
            expired_message_is_not_delivered
            duplicate_detection_drops_duplicates
            session_state_round_trip
            redrive_is_not_dropped_by_duplicate_detection
            redrive_keeps_order_and_limit
        }
    };
}
