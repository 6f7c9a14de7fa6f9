//! Claim-check under message signing, in the documented order `Signing<ClaimCheck<P>>`: the
//! signature covers the original body and message id, which fix the reference. A message
//! whose blob and reference were both replaced (digest consistent, so the layer accepts
//! it) is refused by the `SignatureGate`; an untouched one passes.

use std::{sync::Arc, time::Duration};

use queue_claim_check::{
    BlobReference, BlobStore, ClaimCheck, REFERENCE_ATTRIBUTE,
    object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, memory::InMemory, path::Path},
};
use queue_core::{Message, MessageGate, QueueName, QueueProvider, QueueSpec, ReceiveOptions};
use queue_memory::InMemoryProvider;
use queue_security::{
    KeyRing, Limits, MessageSigner, SIGNATURE_ATTRIBUTE, SignatureGate, Signing, generate_key,
    reason,
};

const BOUND: usize = 32 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    signed: Signing<ClaimCheck<InMemoryProvider>>,
    raw: InMemoryProvider,
    objects: Arc<dyn ObjectStore>,
    store: BlobStore,
    gate: SignatureGate,
    queue: QueueName,
}

async fn setup() -> Setup {
    let ring = KeyRing::new();
    ring.insert("k1", generate_key().unwrap()).unwrap();
    ring.set_active("k1").unwrap();
    let limits = Limits::default().with_max_body_size(BOUND);
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = BlobStore::new(objects.clone());
    let raw = InMemoryProvider::new();
    let layer = ClaimCheck::new(raw.clone(), store.clone()).with_max_body_size(BOUND);
    let signer = MessageSigner::new(ring.clone()).with_limits(limits.clone());
    let signed = Signing::new(layer, signer);
    let queue = QueueName::new("events").unwrap();
    signed
        .create_queue(&queue, &QueueSpec::default())
        .await
        .unwrap();
    let gate = SignatureGate::new(ring).with_limits(limits);
    Setup {
        signed,
        raw,
        objects,
        store,
        gate,
        queue,
    }
}

#[tokio::test]
async fn a_signed_large_message_passes_the_gate_with_its_body() {
    let s = setup().await;
    let body = vec![b'{'; 3 << 20];
    let msg = Message::new(body.clone()).with_attribute("github-event", "push");
    s.signed.send(&s.queue, msg).await.unwrap();
    let got = s
        .signed
        .receive(&s.queue, ReceiveOptions::new(1, WAIT))
        .await
        .unwrap();
    let got = got.into_iter().next().expect("message");
    assert_eq!(got.body().as_ref(), body.as_slice());
    assert!(got.message.attributes.contains_key(SIGNATURE_ATTRIBUTE));
    assert!(!got.message.attributes.contains_key(REFERENCE_ATTRIBUTE));
    s.gate
        .check(&got)
        .await
        .expect("the signature covers the restored message");
    s.signed.complete(&got.receipt).await.unwrap();
}

#[tokio::test]
async fn a_replaced_blob_with_a_matching_reference_fails_the_signature() {
    let s = setup().await;
    s.signed
        .send(&s.queue, Message::new(vec![b'a'; 1 << 20]))
        .await
        .unwrap();
    // Someone with write access to the queue and the bucket swaps the message: a new body
    // under the key its id and digest give, and a reference that matches it.
    let stub = s
        .raw
        .receive(&s.queue, ReceiveOptions::new(1, WAIT))
        .await
        .unwrap();
    let stub = stub.into_iter().next().expect("stub");
    s.raw.complete(&stub.receipt).await.unwrap();
    let forged_body = vec![b'b'; 1 << 20];
    let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &forged_body)
        .as_ref()
        .try_into()
        .unwrap();
    let key = s.store.key_for(&stub.message_id, &digest);
    let path = Path::from(key.as_str());
    s.objects
        .put(&path, PutPayload::from(forged_body.clone()))
        .await
        .unwrap();
    let mut forged = stub.message.clone();
    let reference = BlobReference::new(key, forged_body.len() as u64, digest);
    forged
        .attributes
        .insert(REFERENCE_ATTRIBUTE.to_owned(), reference.to_string());
    s.raw.send(&s.queue, forged).await.unwrap();

    let got = s
        .signed
        .receive(&s.queue, ReceiveOptions::new(1, WAIT))
        .await
        .unwrap();
    let got = got
        .into_iter()
        .next()
        .expect("the layer accepts a consistent reference");
    assert_eq!(got.body().as_ref(), forged_body.as_slice());
    let rejection = s.gate.check(&got).await.expect_err("the gate refuses it");
    assert_eq!(rejection.reason, reason::SIGNATURE_INVALID);
}
