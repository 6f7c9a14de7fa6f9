//! Connection string parsing and redaction: no panic, secrets never in Debug or redacted text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| queue_security::fuzzing::connection_string(data));
