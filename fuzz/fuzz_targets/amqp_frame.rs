//! The Service Bus emulator's frame decoding: any frame body must be refused with an
//! error or decoded, never panic or allocate beyond a bound (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb catch a decoder that trusts an announced size).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = servicebus_emulator::codec::decode_frame_body(data);
    let _ = servicebus_emulator::codec::check_values(data);
});
