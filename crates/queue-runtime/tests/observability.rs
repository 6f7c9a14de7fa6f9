//! Logs and metrics: useful fields and bounded labels, never bodies or secrets.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use queue_runtime::{
    HandlerError, Message, Outcome, Processor, ProcessorSettings, QueueProvider,
    QueueRuntimeConfig, QueueSpec, RetrySettings, SessionId, json_handler, telemetry,
};

const BODY_CANARY: &str = "CANARY-body-9d1e";
const ATTR_CANARY: &str = "CANARY-attr-77b2";
const SECRET_CANARY: &str = "CANARY-secret-31c4";

/// A metric name and its sorted labels.
type MetricKey = (String, Vec<(String, String)>);

/// Every metric update, by name and sorted labels.
#[derive(Default)]
struct Captured {
    values: Mutex<BTreeMap<MetricKey, f64>>,
}

struct Cell {
    key: MetricKey,
    sink: Arc<Captured>,
}

impl Cell {
    fn add(&self, v: f64) {
        *self
            .sink
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += v;
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.add(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.add(value as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.add(value);
    }
    fn decrement(&self, value: f64) {
        self.add(-value);
    }
    fn set(&self, value: f64) {
        self.sink
            .values
            .lock()
            .unwrap()
            .insert(self.key.clone(), value);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _value: f64) {
        // Count of observations.
        self.add(1.0);
    }
}

struct TestRecorder(Arc<Captured>);

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        Arc::new(Cell {
            key: (key.name().to_owned(), labels),
            sink: self.0.clone(),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

fn recorder() -> Arc<Captured> {
    static CAPTURED: OnceLock<Arc<Captured>> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Arc::new(Captured::default());
            metrics::set_global_recorder(TestRecorder(captured.clone()))
                .expect("no other recorder in this test binary");
            captured
        })
        .clone()
}

#[derive(Debug, serde::Deserialize)]
struct Event {
    action: String,
}

#[derive(Debug)]
struct RejectFlagged;

#[async_trait::async_trait]
impl queue_runtime::MessageGate for RejectFlagged {
    async fn check(
        &self,
        message: &queue_runtime::ReceivedMessage,
    ) -> Result<(), queue_runtime::Rejection> {
        if message.message.attributes.contains_key("flagged") {
            Err(queue_runtime::Rejection::new(
                "Flagged",
                "flagged by the test gate",
            ))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn logs_and_metrics_carry_ids_and_bounded_labels_but_no_bodies_or_secrets() {
    let captured = recorder();
    let logs = CapturedLogs::default();
    let subscriber = logs.subscriber();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A configuration holding a secret, logged the way an application would.
    let cfg = QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"obs\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{SECRET_CANARY}\"\n"
    ))
    .unwrap();
    tracing::info!(config = ?cfg, "starting");

    let (mem, provider, queue) = memory("obs", QueueSpec::default()).await;
    let session = SessionId::new("octo/repo#7").unwrap();
    let mut ids = Vec::new();
    for (body, extra) in [
        (
            format!("{{\"action\":\"opened\",\"note\":\"{BODY_CANARY}\"}}"),
            None,
        ),
        (
            format!("{{\"action\":\"flaky\",\"note\":\"{BODY_CANARY}\"}}"),
            None,
        ),
        (format!("{{\"action\":{BODY_CANARY}}}"), None),
        (
            format!("{{\"action\":\"x\",\"note\":\"{BODY_CANARY}\"}}"),
            Some("flagged"),
        ),
    ] {
        let mut msg = Message::new(body)
            .with_session_id(session.clone())
            .with_attribute("token", ATTR_CANARY);
        if let Some(flag) = extra {
            msg = msg.with_attribute(flag, "1");
        }
        ids.push(provider.send(&queue, msg).await.unwrap());
    }
    let handler = json_handler(|event: Event, ctx| async move {
        if event.action == "flaky" && ctx.attempt() == 1 {
            return Err(HandlerError::transient("downstream returned 503"));
        }
        Ok(Outcome::Complete)
    });
    let report = run_until_drained(
        Processor::new(provider.clone(), queue.clone(), handler)
            .with_gate(Arc::new(RejectFlagged))
            .with_settings(
                ProcessorSettings::default()
                    .with_receive_wait(Duration::from_millis(200))
                    .with_session_idle_timeout(Duration::from_millis(200))
                    .with_retry(
                        RetrySettings::default().with_initial_delay(Duration::from_millis(100)),
                    ),
            ),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        (
            report.completed,
            report.dead_lettered,
            report.retried,
            report.rejected
        ),
        (2, 2, 1, 1)
    );

    let text = logs.text();
    for canary in [BODY_CANARY, ATTR_CANARY, SECRET_CANARY] {
        assert!(
            !text.contains(canary),
            "{canary} leaked into the logs:\n{text}"
        );
    }
    // The logs are useful: ids, session, delivery count, reasons.
    for id in &ids {
        assert!(
            text.contains(id.as_str()),
            "message id {id} missing from logs"
        );
    }
    for needle in [
        "octo/repo#7",
        "delivery_count=1",
        // The retry runs in process on the same delivery: the attempt grows, not the count.
        "attempt=2",
        "queue.handle",
        "UndecodableBody",
        "Flagged",
        "downstream returned 503",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from logs");
    }

    // Metrics: counts by bounded labels only.
    let values = captured.values.lock().unwrap();
    let get = |name: &str, extra: &[(&str, &str)]| -> f64 {
        values
            .iter()
            .filter(|((n, labels), _)| {
                n == name
                    && labels.iter().any(|(k, v)| k == "queue" && v == "obs")
                    && extra
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    };
    // Four deliveries: the flaky message's retry runs in process on its first delivery.
    assert_eq!(get(telemetry::RECEIVED, &[]), 4.0);
    assert_eq!(get(telemetry::COMPLETED, &[]), 2.0);
    assert_eq!(get(telemetry::RETRIED, &[("reason", "handler_error")]), 1.0);
    assert_eq!(
        get(telemetry::DEAD_LETTERED, &[("reason", "UndecodableBody")]),
        1.0
    );
    assert_eq!(get(telemetry::DEAD_LETTERED, &[("reason", "Flagged")]), 1.0);
    assert_eq!(get(telemetry::REJECTED, &[("reason", "Flagged")]), 1.0);
    assert_eq!(get(telemetry::FAILED, &[("kind", "error")]), 1.0);
    assert_eq!(get(telemetry::HANDLER_DURATION, &[]), 4.0);
    assert_eq!(get(telemetry::IN_FLIGHT, &[]), 0.0);
    assert_eq!(get(telemetry::ACTIVE_SESSIONS, &[]), 0.0);
    let allowed = [
        "queue",
        "provider",
        "reason",
        "kind",
        "operation",
        "outcome",
    ];
    for ((name, labels), _) in values.iter() {
        for (k, v) in labels {
            assert!(
                allowed.contains(&k.as_str()),
                "{name}: unexpected label {k}"
            );
            assert!(
                !ids.iter().any(|id| v.contains(id.as_str()))
                    && !v.contains("octo/repo")
                    && !v.contains("CANARY"),
                "{name}: unbounded label value {k}={v}"
            );
        }
    }
}

/// Under the default layer stack the `Instrumented` layer records the provider-call
/// metrics; the processor must not count the same messages a second time.
#[tokio::test(start_paused = true)]
async fn provider_call_metrics_are_counted_once_under_the_default_stack() {
    let captured = recorder();
    // A subscriber here too: a thread without one would let tracing cache the shared
    // callsites as disabled while the other test in this binary is capturing logs.
    let logs = CapturedLogs::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let (mem, bare, queue) = memory("obs-stack", QueueSpec::default()).await;
    let provider = queue_runtime::layer::default_stack(bare, Default::default());
    assert!(provider.instrumented());
    for n in 0..3 {
        let body = format!("{{\"action\":\"opened-{n}\"}}");
        provider.send(&queue, Message::new(body)).await.unwrap();
    }
    let handler = json_handler(|_event: Event, _ctx| async move { Ok(Outcome::Complete) });
    let report = run_until_drained(
        Processor::new(provider, queue.clone(), handler).with_settings(
            ProcessorSettings::default().with_receive_wait(Duration::from_millis(200)),
        ),
        &mem,
        &queue,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.completed, 3);

    let values = captured.values.lock().unwrap();
    let total = |name: &str| -> f64 {
        values
            .iter()
            .filter(|((n, labels), _)| {
                n == name && labels.iter().any(|(k, v)| k == "queue" && v == "obs-stack")
            })
            .map(|(_, v)| *v)
            .sum()
    };
    assert_eq!(total(telemetry::RECEIVED), 3.0, "received counted once");
    assert_eq!(total(telemetry::COMPLETED), 3.0, "completed counted once");
    assert_eq!(total(queue_runtime::layer::MESSAGES_SENT), 3.0);
}
