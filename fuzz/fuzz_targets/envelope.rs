//! Signature envelope parsing (`qr-sig` attribute): no panic, one spelling per envelope, round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| queue_security::fuzzing::envelope(data));
