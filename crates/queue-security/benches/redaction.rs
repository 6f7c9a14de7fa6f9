//! Cost of `redact_text` on 1 MiB, against a baseline measured in the same run.
//!
//! Baseline `copy` = copying the same 1 MiB into a new `String` (the least any function
//! that returns cleaned text costs). `redact` runs over ordinary log text with a few
//! secrets, and over inputs that made the round-1 implementation quadratic. The bound the
//! project holds is < 50 ms per MiB in release; the ratio to `copy` is what to compare.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_security::redact_text;

const MIB: usize = 1 << 20;

fn fill(pattern: &str) -> String {
    pattern.repeat(MIB / pattern.len())
}

fn bench(c: &mut Criterion) {
    let inputs = [
        (
            "log_lines",
            fill(
                "2026-12-03T12:00:00Z INFO received message_id=72d3162e delivery_count=1 queue=events Endpoint=sb://ns/;SharedAccessKeyName=app;SharedAccessKey=c2VjcmV0 Authorization: Bearer abc.def\n",
            ),
        ),
        ("repeated_connection_keys", fill("SharedAccessKey=a ")),
        ("repeated_quotes", fill("sig=\"x ")),
        ("repeated_urls", fill("a://b:c")),
        ("repeated_markers", fill("[REDACTED]")),
    ];
    let mut group = c.benchmark_group("redact");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.sample_size(10);
    for (name, text) in &inputs {
        group.bench_function(format!("copy/{name}"), |b| {
            b.iter(|| std::hint::black_box(text.as_str()).to_owned())
        });
        group.bench_function(format!("redact/{name}"), |b| {
            b.iter(|| redact_text(std::hint::black_box(text)).len())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
