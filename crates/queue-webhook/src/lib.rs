//! GitHub webhook intake for `queue-runtime`: a ready [`axum::Router`].
//!
//! [`WebhookIntake::router`] serves:
//!
//! | route | answers |
//! |---|---|
//! | `POST /webhook` | `202` enqueued; `400` malformed delivery; `401` missing or wrong `X-Hub-Signature-256`; `413` body over the limit; `503` the queue cannot take it now (GitHub shows the failure; redeliver it later) |
//! | `GET /healthz` | `200` while the process serves requests (liveness) |
//! | `GET /readyz` | `200` or `503` from the readiness check, for example the processor's state |
//! | `GET /metrics` | Prometheus text, when a recorder handle is given ([`install_prometheus`]) |
//!
//! Each delivery becomes one message: the raw body, message id = `X-GitHub-Delivery` (so a
//! redelivery is a duplicate the broker drops), session = the pull request, issue or ref
//! (see [`queue_security::github::session_key`]). The signature is checked against every
//! configured secret before the body is parsed, so the secret can be rotated without
//! downtime ([`WebhookVerifier::with_secret`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! use std::sync::Arc;
//! use queue_core::{QueueName, SharedQueueProvider};
//! use queue_webhook::{WebhookIntake, WebhookVerifier};
//! use secrecy::SecretString;
//!
//! let provider: SharedQueueProvider = Arc::new(queue_memory::InMemoryProvider::new());
//! let verifier = WebhookVerifier::new(SecretString::from("new-secret"))
//!     .with_secret(SecretString::from("old-secret")); // during a rotation
//! let intake = WebhookIntake::new(provider, QueueName::new("github-events")?, verifier);
//! intake.create_queue().await?; // sessions and duplicate detection on
//! let app: axum::Router = intake.router();
//! // axum::serve(tokio::net::TcpListener::bind("0.0.0.0:8080").await?, app).await?;
//! # drop(app);
//! # Ok(())
//! # }
//! ```

use queue_core::backoff::{Backoff, Jitter};
use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use queue_core::{
    Message, MessageId, QueueError, QueueName, QueueSpec, RetryClass, SharedQueueProvider,
};
use queue_security::{
    SecurityError,
    github::{SIGNATURE_HEADER, WebhookHeaders},
};

pub use axum;
pub use metrics_exporter_prometheus;
pub use queue_security::github::WebhookVerifier;
pub use secrecy::SecretString;

/// Counter of deliveries by `outcome` (`accepted`, `bad_request`, `unauthorized`,
/// `too_large`, `unavailable`).
pub const DELIVERIES_TOTAL: &str = "queue_webhook_deliveries_total";
/// Histogram of the time to enqueue an accepted delivery, retries included.
pub const ENQUEUE_SECONDS: &str = "queue_webhook_enqueue_seconds";
/// How long queues created by [`WebhookIntake::create_queue`] remember delivery ids.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The answer of a readiness check: `Ok(())` or why not.
pub type Readiness = std::result::Result<(), String>;

type ReadinessFn = dyn Fn() -> Readiness + Send + Sync;

/// Installs the process-wide Prometheus recorder for the `metrics` facade and returns the
/// handle that [`WebhookIntake::with_metrics`] renders on `/metrics`.
pub fn install_prometheus() -> queue_core::Result<PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| QueueError::config("metrics", e.to_string()))
}

/// Receives GitHub webhooks and enqueues them; build the HTTP routes with
/// [`WebhookIntake::router`].
#[derive(Clone)]
pub struct WebhookIntake {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SharedQueueProvider,
    queue: QueueName,
    verifier: WebhookVerifier,
    max_body: usize,
    enqueue_deadline: Duration,
    readiness: Option<Arc<ReadinessFn>>,
    metrics: Option<PrometheusHandle>,
}

impl fmt::Debug for WebhookIntake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookIntake")
            .field("provider", &self.inner.provider.name())
            .field("queue", &self.inner.queue)
            .field("verifier", &self.inner.verifier)
            .field("max_body", &self.inner.max_body)
            .finish_non_exhaustive()
    }
}

impl WebhookIntake {
    /// Intake for `queue` on `provider`, checking signatures with `verifier`. Bodies are
    /// limited to [`queue_security::github::DEFAULT_MAX_WEBHOOK_BODY`] (256 KiB); an enqueue
    /// may take up to 8 s with retries (GitHub gives up after 10 s).
    pub fn new(provider: SharedQueueProvider, queue: QueueName, verifier: WebhookVerifier) -> Self {
        let max_body = queue_security::github::DEFAULT_MAX_WEBHOOK_BODY;
        Self {
            inner: Arc::new(Inner {
                provider,
                queue,
                verifier: verifier.with_max_body_size(max_body),
                max_body,
                enqueue_deadline: Duration::from_secs(8),
                readiness: None,
                metrics: None,
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            provider: shared.provider.clone(),
            queue: shared.queue.clone(),
            verifier: shared.verifier.clone(),
            max_body: shared.max_body,
            enqueue_deadline: shared.enqueue_deadline,
            readiness: shared.readiness.clone(),
            metrics: shared.metrics.clone(),
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Sets the largest body accepted; larger ones get `413` before anything is parsed.
    pub fn with_max_body_size(self, bytes: usize) -> Self {
        self.map(|i| {
            i.max_body = bytes;
            i.verifier = i.verifier.clone().with_max_body_size(bytes);
        })
    }

    /// Sets the longest time one enqueue may take, retries included (default 8 s).
    pub fn with_enqueue_deadline(self, deadline: Duration) -> Self {
        self.map(|i| i.enqueue_deadline = deadline)
    }

    /// Sets the readiness check served on `/readyz` (for example the processor's state).
    /// Without one, `/readyz` answers like `/healthz`.
    pub fn with_readiness(self, check: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        self.map(|i| i.readiness = Some(Arc::new(check)))
    }

    /// Serves `handle`'s metrics on `/metrics` (see [`install_prometheus`]).
    pub fn with_metrics(self, handle: PrometheusHandle) -> Self {
        self.map(|i| i.metrics = Some(handle))
    }

    /// Creates the queue for webhook events if it does not exist: sessions on, and
    /// duplicate detection on delivery ids for [`DUPLICATE_WINDOW`], so a redelivered
    /// webhook is not handled twice.
    pub async fn create_queue(&self) -> queue_core::Result<()> {
        let spec = QueueSpec::default()
            .with_sessions(true)
            .with_duplicate_detection(DUPLICATE_WINDOW);
        self.inner
            .provider
            .create_queue(&self.inner.queue, &spec)
            .await
    }

    /// The routes: `POST /webhook`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhook", post(receive))
            .layer(DefaultBodyLimit::max(self.inner.max_body))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(render_metrics))
            .with_state(self.inner.clone())
    }
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match body {
        Err(rejection) => reply(rejection.status(), "the request body could not be read"),
        Ok(body) => match delivery_to_message(&inner.verifier, &headers, body) {
            Err(e) => rejected(&e),
            Ok(message) => enqueue(&inner, message).await,
        },
    };
    metrics::counter!(DELIVERIES_TOTAL, "outcome" => outcome(response.status())).increment(1);
    response
}

fn delivery_to_message(
    verifier: &WebhookVerifier,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Message, SecurityError> {
    let pairs = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let parsed = WebhookHeaders::from_pairs(pairs)?;
    verifier.message_from_delivery(&parsed, body)
}

/// The status code of a refused delivery.
pub fn status_of(err: &SecurityError) -> StatusCode {
    match err {
        SecurityError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SecurityError::MissingHeader { header } if *header == SIGNATURE_HEADER => {
            StatusCode::UNAUTHORIZED
        }
        SecurityError::SignatureInvalid | SecurityError::MalformedSignature { .. } => {
            StatusCode::UNAUTHORIZED
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

fn rejected(err: &SecurityError) -> Response {
    let status = status_of(err);
    tracing::warn!(
        status = status.as_u16(),
        reason = err.reason(),
        "webhook delivery refused"
    );
    // Security errors name headers and limits, never secrets or payloads.
    reply(status, &err.to_string())
}

async fn enqueue(inner: &Inner, message: Message) -> Response {
    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(inner.enqueue_deadline, send_with_retry(inner, message)).await;
    metrics::histogram!(ENQUEUE_SECONDS).record(started.elapsed().as_secs_f64());
    match sent {
        Ok(Ok(id)) => {
            let body = serde_json::json!({ "message_id": id.as_str() }).to_string();
            (StatusCode::ACCEPTED, json_header(), body).into_response()
        }
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable("enqueue deadline passed"),
    }
}

/// Sends with up to three attempts on transient errors (about 100 ms, then 200 ms apart,
/// jittered down by up to half: `queue_core::backoff`). A retry cannot duplicate: the
/// message id is the delivery id and the queue de-duplicates on it.
async fn send_with_retry(inner: &Inner, message: Message) -> queue_core::Result<MessageId> {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(200));
    let jitter = Jitter::random();
    let mut attempt = 1;
    loop {
        match inner.provider.send(&inner.queue, message.clone()).await {
            Err(e) if attempt < 3 && e.retry_class() == RetryClass::Transient => {
                tracing::debug!(attempt, error = %e, "enqueue failed; retrying");
                tokio::time::sleep(backoff.delay(attempt, jitter.next_unit())).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn unavailable(cause: &str) -> Response {
    tracing::error!(cause, "webhook delivery not enqueued; answering 503");
    let mut response = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "the queue is unavailable; redeliver later",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
    response
}

fn outcome(status: StatusCode) -> &'static str {
    match status {
        StatusCode::ACCEPTED => "accepted",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "bad_request",
    }
}

fn json_header() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "application/json")]
}

fn reply(status: StatusCode, error: &str) -> Response {
    let body = serde_json::json!({ "error": error }).to_string();
    (status, json_header(), body).into_response()
}

async fn ready(State(inner): State<Arc<Inner>>) -> Response {
    match inner.readiness.as_ref().map_or(Ok(()), |check| check()) {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn render_metrics(State(inner): State<Arc<Inner>>) -> Response {
    match &inner.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder installed").into_response(),
    }
}
