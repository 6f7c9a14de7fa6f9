//! Redaction of arbitrary text: no panic, idempotent, planted secrets never survive.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| queue_security::fuzzing::redaction(data));
