//! How failures that happen before SQS answers are classified, and how sends are retried,
//! against local listeners only (no internet, no moto): missing credentials, an
//! unresolvable host, an untrusted certificate, and a fake SQS endpoint that answers
//! HTTP 500 a few times.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use queue_aws::{SqsProvider, StaticCredentials};
use queue_core::{
    AuthFailure, Message, QueueError, QueueName, QueueProvider, RetryClass, SessionId,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn creds() -> StaticCredentials {
    StaticCredentials::new("test".into(), "test".into())
}

/// The error and its sources, as one line.
fn chain(err: &QueueError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(" / ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

const CHILD_VAR: &str = "QUEUE_AWS_TEST_NO_CREDENTIALS_CHILD";

/// With no credentials anywhere, a call fails with a permanent authentication error that
/// says so (not a transient connection error), so the runtime's auth-failure metric
/// counts it. Runs in a child process with an empty environment, so credentials of the
/// machine running the tests cannot leak in.
#[test]
fn missing_credentials_are_an_auth_error() {
    let exe = std::env::current_exe().expect("test binary path");
    let home = std::env::temp_dir().join("queue-aws-test-no-credentials-home");
    let out = std::process::Command::new(exe)
        .args([
            "child_without_credentials",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env_clear()
        .env(CHILD_VAR, "1")
        .env("HOME", &home)
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run the child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child did not run:\n{text}");
}

/// The child half of [`missing_credentials_are_an_auth_error`]; does nothing when run
/// outside it.
#[tokio::test]
#[ignore = "run by missing_credentials_are_an_auth_error in a clean environment"]
async fn child_without_credentials() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let provider = SqsProvider::builder()
        .with_region("us-east-1")
        .with_endpoint(endpoint)
        .with_operation_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("building needs no credentials");
    let err = provider
        .check_access(&QueueName::new("jobs").unwrap())
        .await
        .expect_err("no credentials");
    assert!(
        matches!(
            err,
            QueueError::Auth {
                kind: AuthFailure::Authentication,
                ..
            }
        ),
        "{}",
        chain(&err)
    );
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    assert!(chain(&err).contains("credentials"), "{}", chain(&err));
}

/// A host name that cannot resolve (`.invalid` never does) is a connection error that
/// names DNS.
#[tokio::test]
async fn unresolvable_host_is_a_connection_error_naming_dns() {
    let provider = SqsProvider::builder()
        .with_region("us-east-1")
        .with_endpoint("https://sqs.queue-runtime-test.invalid")
        .with_credentials(creds())
        .with_max_attempts(1)
        .with_operation_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let err = provider
        .check_access(&QueueName::new("jobs").unwrap())
        .await
        .expect_err("the host does not exist");
    assert!(
        matches!(err, QueueError::Connection { .. }),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains("DNS"), "{}", chain(&err));
    assert_eq!(err.retry_class(), RetryClass::Transient);
}

/// A TLS listener with a self-signed certificate: the handshake fails, and the error says
/// TLS and an untrusted certificate, permanently (retrying cannot fix it).
#[tokio::test]
async fn untrusted_certificate_is_a_permanent_tls_error() {
    let port = self_signed_tls_listener().await;
    let provider = SqsProvider::builder()
        .with_region("us-east-1")
        .with_endpoint(format!("https://localhost:{port}"))
        .with_credentials(creds())
        .with_max_attempts(1)
        .with_operation_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let err = provider
        .check_access(&QueueName::new("jobs").unwrap())
        .await
        .expect_err("the certificate is not trusted");
    let text = chain(&err);
    assert!(matches!(err, QueueError::Provider { .. }), "{text}");
    assert_eq!(err.retry_class(), RetryClass::Permanent, "{text}");
    assert!(
        text.contains("TLS") && text.contains("not trusted"),
        "{text}"
    );
}

/// Serves TLS on 127.0.0.1 with a fresh self-signed certificate for `localhost`; returns
/// the port. Handshakes fail on the client side; the task ends with the runtime.
async fn self_signed_tls_listener() -> u16 {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    port
}

/// A fake SQS endpoint (AWS JSON 1.0 protocol) for one FIFO queue `jobs.fifo`: answers
/// `GetQueueUrl`/`GetQueueAttributes`, and `SendMessage` with HTTP 500 for the first
/// `failures` calls, then success. Records every `SendMessage` request body.
struct FakeSqs {
    port: u16,
    sends: Arc<Mutex<Vec<String>>>,
}

impl FakeSqs {
    async fn start(failures: usize, failure: (u16, &'static str)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sends = Arc::new(Mutex::new(Vec::new()));
        let state = (sends.clone(), failures, failure);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(serve(stream, port, state));
            }
        });
        Self { port, sends }
    }

    fn sends(&self) -> Vec<String> {
        self.sends.lock().unwrap().clone()
    }
}

type FakeState = (Arc<Mutex<Vec<String>>>, usize, (u16, &'static str));

async fn serve(mut stream: TcpStream, port: u16, (sends, failures, failure): FakeState) {
    let mut buf = Vec::new();
    loop {
        let Some((target, body)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let (status, answer) = match target.as_str() {
            "AmazonSQS.GetQueueUrl" if body.contains("\"jobs.fifo\"") => (
                200,
                format!("{{\"QueueUrl\":\"http://127.0.0.1:{port}/123456789012/jobs.fifo\"}}"),
            ),
            "AmazonSQS.GetQueueUrl" => (
                400,
                "{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\",\"message\":\"no\"}"
                    .to_owned(),
            ),
            "AmazonSQS.GetQueueAttributes" => (
                200,
                "{\"Attributes\":{\"FifoQueue\":\"true\",\"VisibilityTimeout\":\"30\"}}".to_owned(),
            ),
            "AmazonSQS.SendMessage" => {
                let n = {
                    let mut sends = sends.lock().unwrap();
                    sends.push(body);
                    sends.len()
                };
                if n <= failures {
                    (failure.0, failure.1.to_owned())
                } else {
                    (
                        200,
                        "{\"MessageId\":\"sqs-1\",\"SequenceNumber\":\"1\"}".to_owned(),
                    )
                }
            }
            _ => (
                400,
                "{\"__type\":\"com.amazonaws.sqs#UnsupportedOperation\"}".to_owned(),
            ),
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request; returns its `X-Amz-Target` and body.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")?.parse().ok()?;
    let target = header("x-amz-target").unwrap_or_default();
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    buf.drain(..head_end + len);
    Some((target, body))
}

const INTERNAL_ERROR: (u16, &str) = (
    500,
    "{\"__type\":\"com.amazonaws.sqs#InternalError\",\"message\":\"try again\"}",
);

async fn fake_provider(fake: &FakeSqs, attempts: u32) -> SqsProvider {
    SqsProvider::builder()
        .with_region("us-east-1")
        .with_endpoint(format!("http://127.0.0.1:{}", fake.port))
        .with_credentials(creds())
        .with_max_attempts(attempts)
        .with_operation_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap()
}

fn fifo_message() -> Message {
    Message::new("payload")
        .with_session_id(SessionId::new("octo/repo#1").unwrap())
        .with_message_id(queue_core::MessageId::new("github-delivery-42").unwrap())
}

/// A send that meets transient server errors is retried (by the SDK's standard retry
/// strategy, `max_attempts` calls in all) with the very same request, so the message id
/// and the FIFO de-duplication id do not change between attempts, and it succeeds.
#[tokio::test]
async fn send_is_retried_on_transient_errors_with_the_same_ids() {
    let fake = FakeSqs::start(2, INTERNAL_ERROR).await;
    let provider = fake_provider(&fake, 3).await;
    let queue = QueueName::new("jobs.fifo").unwrap();
    let id = provider
        .send(&queue, fifo_message())
        .await
        .expect("the third attempt succeeds");
    assert_eq!(id.as_str(), "github-delivery-42");
    let sends = fake.sends();
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert!(
        sends.iter().all(|b| b == &sends[0]),
        "attempts differ: {sends:?}"
    );
    assert!(
        sends[0].contains("\"MessageDeduplicationId\":\"github-delivery-42\""),
        "{}",
        sends[0]
    );
}

/// Retries are bounded: with `max_attempts` 2 and a server that keeps failing, the send
/// fails after exactly two calls with a transient error the caller may retry later.
#[tokio::test]
async fn send_retries_are_bounded_and_the_error_stays_transient() {
    let fake = FakeSqs::start(usize::MAX, INTERNAL_ERROR).await;
    let provider = fake_provider(&fake, 2).await;
    let started = Instant::now();
    let err = provider
        .send(&QueueName::new("jobs.fifo").unwrap(), fifo_message())
        .await
        .expect_err("the server keeps failing");
    assert_eq!(fake.sends().len(), 2);
    assert_eq!(err.retry_class(), RetryClass::Transient, "{}", chain(&err));
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Permanent errors are not retried: one call, a typed error.
#[tokio::test]
async fn permanent_send_errors_are_not_retried() {
    let invalid = (
        400,
        "{\"__type\":\"com.amazonaws.sqs#InvalidMessageContents\",\"message\":\"no\"}",
    );
    let fake = FakeSqs::start(usize::MAX, invalid).await;
    let provider = fake_provider(&fake, 3).await;
    let err = provider
        .send(&QueueName::new("jobs.fifo").unwrap(), fifo_message())
        .await
        .expect_err("the server refuses the message");
    assert_eq!(fake.sends().len(), 1);
    assert!(
        matches!(err, QueueError::InvalidMessage { .. }),
        "{}",
        chain(&err)
    );
}
