//! Shared pieces of the claim-check tests: a GitHub-like payload, blob listing, a bounded
//! receive, the 25 MB round trip every provider runs, and the skip rule for servers.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::TryStreamExt as _;
use queue_claim_check::{
    BlobStore, REFERENCE_ATTRIBUTE,
    object_store::{ObjectStore, path::Path},
};
use queue_core::{Message, QueueName, QueueProvider, ReceiveOptions, ReceivedMessage};

/// 25 MiB: just above GitHub's 25 MB webhook payload cap.
pub const GITHUB_MAX: usize = 25 * 1024 * 1024;

/// A `push` event body of at least `size` bytes: many commits with ids, messages, authors
/// and file lists, as GitHub sends for a large push.
pub fn github_push(size: usize) -> Bytes {
    let mut out = String::with_capacity(size + 4096);
    out.push_str(
        r#"{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","#,
    );
    out.push_str(r#""after":"76ae82c7b1a177c8d03f9e96e0adf2466113728f","repository":{"id":1296269,"full_name":"octo-org/monorepo","private":false},"#);
    out.push_str(r#""pusher":{"name":"monalisa","email":"mona@example.com"},"commits":["#);
    let mut n: u64 = 0;
    while out.len() < size {
        if n > 0 {
            out.push(',');
        }
        let id = format!("{:040x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        out.push_str(&format!(
            r#"{{"id":"{id}","tree_id":"{id}","distinct":true,"message":"Refactor module {n}: split the handler, add tests for edge case #{n}","timestamp":"2026-12-03T15:{:02}:{:02}Z","author":{{"name":"Mona Lisa","email":"mona@example.com","username":"monalisa"}},"added":["src/mod_{n}/handler.rs","src/mod_{n}/tests.rs"],"removed":[],"modified":["src/lib.rs","CHANGELOG.md"]}}"#,
            n % 60,
            (n / 60) % 60
        ));
        n += 1;
    }
    out.push_str("]}");
    Bytes::from(out)
}

/// Every object under the store's prefix.
pub async fn blobs(objects: &Arc<dyn ObjectStore>, store: &BlobStore) -> Vec<String> {
    objects
        .list(Some(&Path::from(store.prefix())))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list blobs")
}

/// Receives one message, waiting at most `within`.
pub async fn receive_one(
    p: &(impl QueueProvider + ?Sized),
    q: &QueueName,
    within: Duration,
) -> Option<ReceivedMessage> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = p
            .receive(q, ReceiveOptions::new(1, Duration::from_secs(1)))
            .await
            .expect("receive");
        if let Some(m) = got.into_iter().next() {
            return Some(m);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Sends a 25 MiB push event through `p` (a claim-check layer over `store`), receives it
/// with its body and attributes intact, completes it, and checks that the blob was there
/// while the message was in flight and is gone after the complete.
pub async fn round_trip_github_push(
    p: &(impl QueueProvider + ?Sized),
    q: &QueueName,
    objects: &Arc<dyn ObjectStore>,
    store: &BlobStore,
) {
    let body = github_push(GITHUB_MAX);
    let msg = Message::new(body.clone())
        .with_content_type("application/json")
        .with_subject("push")
        .with_attribute("github-event", "push");
    let id = p.send(q, msg).await.expect("send 25 MiB");
    assert_eq!(
        blobs(objects, store).await.len(),
        1,
        "one blob while in flight"
    );
    let got = receive_one(p, q, Duration::from_secs(60))
        .await
        .expect("the message arrives");
    assert_eq!(got.message_id, id);
    assert_eq!(got.body().len(), body.len());
    assert!(got.body() == &body, "the body is the one sent");
    assert_eq!(
        got.message.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(got.message.subject.as_deref(), Some("push"));
    assert_eq!(
        got.message
            .attributes
            .get("github-event")
            .map(String::as_str),
        Some("push")
    );
    assert!(
        !got.message.attributes.contains_key(REFERENCE_ATTRIBUTE),
        "reference removed"
    );
    p.complete(&got.receipt).await.expect("complete");
    assert!(
        blobs(objects, store).await.is_empty(),
        "complete deletes the blob"
    );
}

/// The value of `var`, or `None` with a skip note; under CI a missing variable fails
/// (`queue_core::ci::test_server`).
pub fn server_env(var: &str, starts: &str) -> Option<String> {
    queue_core::ci::test_server(
        var,
        "claim-check server test",
        &format!("`cargo xtask test` starts {starts}"),
    )
}
