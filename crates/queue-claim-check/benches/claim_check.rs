//! Throughput of 1 MiB and 10 MiB messages through the claim-check layer (written next).
fn main() {}
