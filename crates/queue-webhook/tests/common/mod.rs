//! Helpers shared by the intake tests: signing, a server on 127.0.0.1, raw HTTP/1.1
//! requests, draining a session, and real-looking GitHub payloads.
#![allow(dead_code)] // each test file uses a different subset

use std::{net::SocketAddr, time::Duration};

use queue_core::{
    QueueName, ReceiveOptions, ReceivedMessage, SessionSelector, SharedQueueProvider,
};
use queue_webhook::WebhookIntake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const SECRET: &str = "It's a Secret to Everybody";
/// GitHub's documented example: this body signed with SECRET.
pub(crate) const EXAMPLE_SIG: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

pub(crate) async fn serve(intake: &WebhookIntake) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = intake.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One HTTP/1.1 request on a fresh connection; returns the status code and body.
pub(crate) async fn request(
    addr: SocketAddr,
    head: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = exchange(addr, head, headers, body).await;
    (status, body)
}

/// One HTTP/1.1 request on a fresh connection; returns the status code, the response's
/// header lines and its body.
pub(crate) async fn exchange(
    addr: SocketAddr,
    head: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut text = format!(
        "{head} HTTP/1.1\r\nHost: bot.example\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    // The server may answer (413) and close before reading an oversize body.
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw))
        .await
        .expect("the server answers within 15 s")
        .ok();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    (status, head.to_owned(), body.to_owned())
}

/// Delivers `body` as GitHub would: event, delivery id and signature headers.
pub(crate) async fn deliver(
    addr: SocketAddr,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: &str,
) -> (u16, String) {
    let sig = sign(secret, body);
    let headers = [
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", sig.as_str()),
        ("Content-Type", "application/json"),
    ];
    request(addr, "POST /webhook", &headers, body).await
}

/// Every message of session `id`, completed.
pub(crate) async fn drain_session(
    provider: &SharedQueueProvider,
    queue: &QueueName,
    id: &str,
) -> Vec<ReceivedMessage> {
    let session = queue_core::SessionId::new(id).unwrap();
    let receiver = provider
        .accept_session(
            queue,
            SessionSelector::Named(session),
            Duration::from_millis(200),
        )
        .await
        .unwrap()
        .expect("the session exists");
    let mut out = Vec::new();
    loop {
        let batch = receiver
            .receive(ReceiveOptions::new(10, Duration::from_millis(50)))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            receiver.complete(&m.receipt).await.unwrap();
            out.push(m);
        }
    }
    receiver.close().await.unwrap();
    out
}

pub(crate) const PULL_REQUEST: &str = r#"{"action":"opened","number":42,"pull_request":{"number":42,"title":"Add widgets","state":"open","head":{"ref":"feature/widgets","sha":"6dcb09b5b57875f334f61aebed695e2e4193db5e"},"base":{"ref":"main"},"user":{"login":"octocat"}},"repository":{"id":1296269,"full_name":"octo-org/widgets","private":false},"sender":{"login":"octocat"},"installation":{"id":2311213}}"#;
pub(crate) const PUSH: &str = r#"{"ref":"refs/heads/main","before":"9049f1265b7d61be4a8904a9a27120d2064dab3b","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","repository":{"id":1296269,"full_name":"octo-org/widgets"},"pusher":{"name":"octocat"},"commits":[{"id":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","message":"Update README.md"}]}"#;
pub(crate) const ISSUE_COMMENT: &str = r#"{"action":"created","issue":{"number":42,"title":"Add widgets","pull_request":{"url":"https://api.github.com/repos/octo-org/widgets/pulls/42"}},"comment":{"id":5,"body":"/retest","user":{"login":"hubot"}},"repository":{"id":1296269,"full_name":"octo-org/widgets"},"sender":{"login":"hubot"}}"#;
