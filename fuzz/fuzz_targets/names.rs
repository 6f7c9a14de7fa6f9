//! Name validation (QueueName, SessionId, MessageId, attribute names) and the GitHub session-key sanitizer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| queue_security::fuzzing::names(data));
