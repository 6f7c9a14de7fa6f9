//! Cost of signing and verifying, against a baseline measured in the same run.
//!
//! Baseline `hmac_body` = one HMAC-SHA256 over the body alone with `ring` (the least any
//! body signature costs). `sign` = `MessageSigner::sign_at` (limits, canonical encoding,
//! envelope); `verify` = `SignatureVerifier::verify` (limits, envelope parsing, canonical
//! encoding, constant-time check, freshness). Their ratios to the baseline show what the
//! envelope and the covered metadata add, for a small (1 KiB) and a large (64 KiB) body.

use std::time::{Duration, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use queue_core::{Message, MessageId, QueueName, Receipt, ReceivedMessage, SessionId};
use queue_security::{KeyRing, MessageSigner, SignatureVerifier};
use secrecy::SecretSlice;

const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn message(size: usize) -> Message {
    Message::new(vec![b'x'; size])
        .with_content_type("application/json")
        .with_session_id(SessionId::new("octo/repo#42").expect("session"))
        .with_message_id(MessageId::new("72d3162e-cc78-11e3-81ab-4c9367dc0958").expect("id"))
        .with_attribute("github-event", "pull_request")
        .with_attribute("github-action", "opened")
}

fn bench(c: &mut Criterion) {
    let ring = KeyRing::new();
    ring.insert("k1", SecretSlice::from(KEY.to_vec()))
        .expect("key");
    ring.set_active("k1").expect("active");
    let signer = MessageSigner::new(ring.clone());
    let verifier = SignatureVerifier::new(ring);
    let queue = QueueName::new("events").expect("queue");
    let at = UNIX_EPOCH + Duration::from_secs(1_764_470_000);
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY);

    let mut group = c.benchmark_group("signature");
    for size in [1024usize, 64 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        let msg = message(size);
        group.bench_with_input(BenchmarkId::new("hmac_body", size), &msg, |b, m| {
            b.iter(|| ring::hmac::sign(&hmac_key, &m.body))
        });
        group.bench_with_input(BenchmarkId::new("sign", size), &msg, |b, m| {
            b.iter(|| {
                let mut m = m.clone();
                signer.sign_at(&queue, &mut m, at).expect("sign");
                m
            })
        });
        let mut signed = msg.clone();
        signer.sign_at(&queue, &mut signed, at).expect("sign");
        let id = signed.message_id.clone().expect("id");
        let receipt = Receipt::new("bench", queue.clone(), None, "t");
        let received = ReceivedMessage::new(signed, id, 1, at, receipt);
        group.bench_with_input(BenchmarkId::new("verify", size), &received, |b, r| {
            b.iter(|| verifier.verify(r).expect("verify"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
