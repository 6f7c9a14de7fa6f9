//! The security wiring end to end: producers send through `Signing`, a `Processor` with a
//! `SignatureGate` consumes from the in-memory provider on tokio's paused clock, and GitHub
//! webhooks become ordered, de-duplicated queue messages. Every test captures `tracing`
//! output (TRACE) and metrics, and checks that key material and the webhook secret never
//! show up in logs, `Debug`, errors or dead-letter descriptions.
#![cfg(all(feature = "security", feature = "memory"))]

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{CapturedLogs, paused_runtime, run_until_drained, start, wait_until};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use queue_runtime::{
    Message, MessageGate, MessageId, Outcome, Processor, ProcessorSettings, QueueName,
    QueueProvider, QueueSpec, ReceiveOptions, ReceivedMessage, RetrySettings, SessionId,
    SharedQueueProvider, handler_fn,
    memory::InMemoryProvider,
    security::{
        KeyRing, MessageSigner, SIGNATURE_ATTRIBUTE, SignatureGate, Signing, UnsignedPolicy,
        WebhookHeaders, WebhookVerifier, encode_key, reason,
    },
    telemetry,
};
use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// Signing key material (the active key of every ring here).
const KEY_CANARY: &str = "CANARY-signing-key-5e0b-0123456789abcdef";
/// Key material of a producer whose key the consumer does not know.
const ROGUE_KEY_CANARY: &str = "CANARY-rogue-key-a41f-0123456789abcdef";
/// The GitHub webhook secret.
const WEBHOOK_CANARY: &str = "CANARY-webhook-secret-7c21";
/// Text inside message bodies.
const BODY_CANARY: &str = "CANARY-body-e5d0";

// ---------------------------------------------------------------------------------------
// Capture: a metrics recorder and a tracing writer, local to the test's thread.

type MetricKey = (String, Vec<(String, String)>);

/// Counter values by name and sorted labels.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<MetricKey, u64>>);

struct CounterCell {
    key: MetricKey,
    sink: Arc<Counters>,
}

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        *self
            .sink
            .0
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.sink.0.lock().unwrap().insert(self.key.clone(), value);
    }
}

/// Records counters (gauges and histograms are not needed here).
struct CountingRecorder(Arc<Counters>);

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        Counter::from_arc(Arc::new(CounterCell {
            key: (key.name().to_owned(), labels),
            sink: self.0.clone(),
        }))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counters {
    /// Sum of `name` over series carrying every label in `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    fn all_label_values(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .keys()
            .flat_map(|(_, l)| l.iter().map(|(_, v)| v.clone()))
            .collect()
    }
}

/// What a test run produced besides its own assertions.
struct Captured {
    logs: String,
    counters: Arc<Counters>,
}

/// Runs `test` on a paused current-thread runtime with a TRACE subscriber and a metrics
/// recorder installed for this thread (every task of the runtime runs on it).
fn captured<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Captured {
    let logs = CapturedLogs::default();
    let counters = Arc::new(Counters::default());
    let recorder = CountingRecorder(counters.clone());
    let subscriber = logs.subscriber();
    let rt = paused_runtime();
    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || rt.block_on(test()))
    });
    drop(rt);
    Captured {
        logs: logs.text(),
        counters,
    }
}

/// Every form a canary secret could leak in: as text, base64 (how keys are configured) and
/// hex.
fn secret_forms() -> Vec<String> {
    let mut out = Vec::new();
    for secret in [KEY_CANARY, ROGUE_KEY_CANARY, WEBHOOK_CANARY] {
        out.push(secret.to_owned());
        out.push(encode_key(secret.as_bytes()).expose_secret().to_owned());
        out.push(hex::encode(secret.as_bytes()));
    }
    // A prefix catches truncated copies too.
    out.push("CANARY-signing".to_owned());
    out.push("CANARY-rogue".to_owned());
    out.push("CANARY-webhook".to_owned());
    out
}

/// Asserts no canary secret is in `text` (`what` names where the text came from).
fn assert_no_secrets(what: &str, text: &str) {
    for secret in secret_forms() {
        assert!(
            !text.contains(&secret),
            "a secret ({secret}) leaked into {what}:\n{text}"
        );
    }
}

fn check_capture(c: &Captured) {
    assert!(!c.logs.is_empty(), "the subscriber captured nothing");
    assert_no_secrets("the tracing output", &c.logs);
    for value in c.counters.all_label_values() {
        assert_no_secrets("a metric label", &value);
        assert!(!value.contains(BODY_CANARY), "body text in a metric label");
    }
}

// ---------------------------------------------------------------------------------------
// Fixture.

fn ring_with(id: &str, material: &str) -> KeyRing {
    let ring = KeyRing::new();
    ring.insert(id, SecretSlice::from(material.as_bytes().to_vec()))
        .unwrap();
    ring.set_active(id).unwrap();
    ring
}

struct Env {
    mem: InMemoryProvider,
    raw: SharedQueueProvider,
    producer: Signing<InMemoryProvider>,
    ring: KeyRing,
    queue: QueueName,
}

impl Env {
    async fn new(queue: &str, spec: QueueSpec) -> Self {
        let mem = InMemoryProvider::new();
        let queue = QueueName::new(queue).unwrap();
        mem.create_queue(&queue, &spec).await.unwrap();
        let ring = ring_with("k1", KEY_CANARY);
        let producer = Signing::new(mem.clone(), self_clocked(&mem, ring.clone()));
        Self {
            raw: Arc::new(mem.clone()),
            mem,
            producer,
            ring,
            queue,
        }
    }

    fn gate(&self, policy: UnsignedPolicy) -> Arc<SignatureGate> {
        let clock = self.mem.clone();
        Arc::new(
            SignatureGate::new(self.ring.clone())
                .with_max_skew(Duration::from_secs(120))
                .expect("skew within MAX_WINDOW")
                .with_unsigned_policy(policy)
                .with_clock(move || clock.now()),
        )
    }

    fn signer(&self) -> &MessageSigner {
        self.producer.signer()
    }

    /// Dead letters by message id: (reason, description, delivery count when read).
    async fn dead_letters(&self) -> HashMap<MessageId, (String, String, u32)> {
        let got = self
            .mem
            .receive_dead_letters(&self.queue, ReceiveOptions::new(100, Duration::ZERO))
            .await
            .unwrap();
        got.into_iter()
            .map(|m| {
                let dl = m.dead_letter.clone().expect("a dead-letter reason");
                (m.message_id, (dl.reason, dl.description, m.delivery_count))
            })
            .collect()
    }
}

/// A signer stamping the provider's (virtual) time.
fn self_clocked(mem: &InMemoryProvider, ring: KeyRing) -> MessageSigner {
    let clock = mem.clone();
    MessageSigner::new(ring).with_clock(move || clock.now())
}

fn settings() -> ProcessorSettings {
    ProcessorSettings::default()
        // Long polls: the memory provider answers as soon as a message is visible, and
        // few empty polls keep the TRACE output small while an hour passes.
        .with_receive_wait(Duration::from_secs(30))
        .with_session_idle_timeout(Duration::from_millis(200))
        .with_retry(RetrySettings::default().with_initial_delay(Duration::from_millis(100)))
}

/// One handler call as the handler saw it.
#[derive(Clone, Debug)]
struct Seen {
    message_id: MessageId,
    session_id: Option<SessionId>,
    delivery_count: u32,
    attempt: u32,
    body: String,
    receipt_session: Option<SessionId>,
    message: Message,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A handler that records every call; bodies starting with `retry-once` ask for a retry an
/// hour later on their first attempt.
fn recording_handler(log: Log) -> impl queue_runtime::Handler {
    handler_fn(move |msg: ReceivedMessage, ctx| {
        let log = log.clone();
        async move {
            let body = String::from_utf8_lossy(msg.body()).into_owned();
            log.lock().unwrap().push(Seen {
                message_id: ctx.message_id().clone(),
                session_id: ctx.session_id().cloned(),
                delivery_count: ctx.delivery_count(),
                attempt: ctx.attempt(),
                receipt_session: msg.receipt.session().cloned(),
                message: msg.message.clone(),
                body: body.clone(),
            });
            if body.starts_with("retry-once") && ctx.attempt() == 1 {
                return Ok(Outcome::retry_after(
                    Duration::from_secs(3600),
                    "downstream busy",
                ));
            }
            Ok(Outcome::Complete)
        }
    })
}

fn seen_ids(log: &Log) -> Vec<MessageId> {
    log.lock()
        .unwrap()
        .iter()
        .map(|s| s.message_id.clone())
        .collect()
}

fn id(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Signed messages pass; attacks are dead-lettered with their reason, once, and counted.

#[test]
fn signed_messages_pass_and_attacks_are_dead_lettered_once_with_their_reason() {
    let c = captured(|| async {
        let env = Env::new("signed", QueueSpec::default().with_max_delivery_count(5)).await;
        let gate = env.gate(UnsignedPolicy::Reject);
        let log: Log = Arc::default();
        let processor = Processor::new(
            env.raw.clone(),
            env.queue.clone(),
            recording_handler(log.clone()),
        )
        .with_gate(gate.clone())
        .with_settings(settings());
        let debug = format!("{processor:?} {gate:?} {:?} {:?}", env.producer, env.ring);
        assert_no_secrets("Debug of the processor, gate, signer and ring", &debug);
        assert!(debug.contains("SignatureGate"), "{debug}");
        let running = start(processor);

        // Legitimate traffic: one plain message, one the handler retries an hour later.
        let ok = Message::new(format!("ok {BODY_CANARY}")).with_message_id(id("ok-1"));
        let retry = Message::new(format!("retry-once {BODY_CANARY}"))
            .with_message_id(id("retry-1"))
            .with_correlation_id("corr-1");
        assert_eq!(env.producer.send(&env.queue, ok).await.unwrap(), id("ok-1"));
        env.producer.send(&env.queue, retry).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            wait_until(Duration::from_secs(120), || {
                seen_ids(&log)
                    .iter()
                    .filter(|i| **i == id("retry-1"))
                    .count()
                    == 2
            })
            .await,
            "the retried message came back: {:?}",
            seen_ids(&log)
        );
        let captured_ok = {
            let seen = log.lock().unwrap();
            let retried: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.message_id == id("retry-1"))
                .collect();
            assert_eq!(
                retried
                    .iter()
                    .map(|s| (s.delivery_count, s.attempt))
                    .collect::<Vec<_>>(),
                [(1, 1), (2, 2)],
                "the redelivery (an hour later) passed the gate and was not taken for a replay"
            );
            seen.iter()
                .find(|s| s.message_id == id("ok-1"))
                .expect("ok-1 handled")
                .message
                .clone()
        };
        assert!(captured_ok.attributes.contains_key(SIGNATURE_ATTRIBUTE));
        let handled_before = log.lock().unwrap().len();

        // Replay: an attacker re-sends a captured, validly signed message within the skew.
        let mut original = Message::new("replay original").with_message_id(id("replay-1"));
        env.signer().sign(&env.queue, &mut original).unwrap();
        env.raw.send(&env.queue, original.clone()).await.unwrap();
        assert!(
            wait_until(Duration::from_secs(60), || seen_ids(&log)
                .contains(&id("replay-1")))
            .await
        );
        env.raw.send(&env.queue, original).await.unwrap();

        // Stale: the message captured from the first delivery, re-sent an hour later (well
        // past the 2-minute skew; it is also in the replay store, but freshness comes first).
        tokio::time::sleep(Duration::from_secs(3600)).await;
        env.raw.send(&env.queue, captured_ok).await.unwrap();

        // Tampered: a body byte flipped after signing.
        let mut tampered =
            Message::new(format!("amount=100 {BODY_CANARY}")).with_message_id(id("tampered-1"));
        env.signer().sign(&env.queue, &mut tampered).unwrap();
        tampered.body = format!("amount=900 {BODY_CANARY}").into();
        env.raw.send(&env.queue, tampered).await.unwrap();

        // Unknown key: signed by a producer whose key the consumer never had.
        let rogue = Signing::new(
            env.mem.clone(),
            self_clocked(&env.mem, ring_with("rogue", ROGUE_KEY_CANARY)),
        );
        assert_no_secrets("Debug of a rogue signer", &format!("{rogue:?}"));
        rogue
            .send(
                &env.queue,
                Message::new("rogue").with_message_id(id("rogue-1")),
            )
            .await
            .unwrap();

        // Unsigned, under the Reject policy.
        env.raw
            .send(
                &env.queue,
                Message::new("plain").with_message_id(id("unsigned-1")),
            )
            .await
            .unwrap();

        assert!(
            wait_until(Duration::from_secs(60), || env
                .mem
                .dead_letter_count(&env.queue)
                .unwrap()
                == 5)
            .await
        );
        let report = running
            .stop_when(Duration::from_secs(5), || {
                env.mem.message_count(&env.queue).unwrap() == 0
            })
            .await;

        // The handler saw exactly one more message (the replay original), never an attack.
        let seen = seen_ids(&log);
        assert_eq!(seen.len(), handled_before + 1, "{seen:?}");
        assert_eq!(
            seen.iter().filter(|i| **i == id("replay-1")).count(),
            1,
            "the replayed copy reached the handler"
        );
        for attack in ["tampered-1", "rogue-1", "unsigned-1"] {
            assert!(!seen.contains(&id(attack)), "{attack} reached the handler");
        }
        assert_eq!(seen.iter().filter(|i| **i == id("ok-1")).count(), 1);

        let dead = env.dead_letters().await;
        let expected = [
            ("replay-1", reason::REPLAYED),
            ("ok-1", reason::MESSAGE_STALE),
            ("tampered-1", reason::SIGNATURE_INVALID),
            ("rogue-1", reason::UNKNOWN_KEY),
            ("unsigned-1", reason::UNSIGNED),
        ];
        assert_eq!(dead.len(), expected.len(), "{dead:?}");
        for (msg, why) in expected {
            let (got, description, count) = &dead[&id(msg)];
            assert_eq!(got, why, "{msg}: {description}");
            assert!(reason::GATE_REASONS.contains(&got.as_str()));
            // Delivered to the consumer once, never retried: the one delivery plus this
            // read of the dead-letter queue (the memory provider, like Service Bus, counts
            // the dead-letter read as a delivery).
            assert_eq!(*count, 2, "{msg} was delivered more than once");
            assert_no_secrets("a dead-letter description", description);
            assert!(!description.contains(BODY_CANARY), "{description}");
        }

        assert_eq!(
            (
                report.completed,
                report.retried,
                report.rejected,
                report.dead_lettered,
                report.received
            ),
            (3, 1, 5, 5, 9),
            "{report:?}"
        );
        assert_no_secrets("the shutdown report", &format!("{report:?}"));
    });
    check_capture(&c);
    for why in [
        reason::REPLAYED,
        reason::MESSAGE_STALE,
        reason::SIGNATURE_INVALID,
        reason::UNKNOWN_KEY,
        reason::UNSIGNED,
    ] {
        assert_eq!(
            c.counters
                .get(telemetry::REJECTED, &[("reason", why), ("queue", "signed")]),
            1,
            "rejected_total{{reason={why}}}"
        );
        assert_eq!(
            c.counters.get(telemetry::DEAD_LETTERED, &[("reason", why)]),
            1,
            "dead_lettered_total{{reason={why}}}"
        );
    }
    assert_eq!(c.counters.get(telemetry::REJECTED, &[]), 5);
    assert_eq!(
        c.counters.get(telemetry::RETRIED, &[]),
        1,
        "only the handler's retry"
    );
    assert_eq!(c.counters.get(telemetry::COMPLETED, &[]), 3);
    // The rejections are logged with their reason and message id.
    for needle in [
        "message rejected by a gate",
        "Replayed",
        "tampered-1",
        "UnknownKey",
    ] {
        assert!(c.logs.contains(needle), "`{needle}` missing from the logs");
    }
    assert!(!c.logs.contains(BODY_CANARY), "body text in the logs");
}

// ---------------------------------------------------------------------------------------
// 1b. Session messages through accept_session: the signature covers the session id.

#[test]
fn session_messages_are_verified_through_accept_session() {
    let c = captured(|| async {
        let env = Env::new("signed-sessions", QueueSpec::default().with_sessions(true)).await;
        assert_eq!(
            env.mem.capabilities().sessions,
            queue_runtime::SessionSupport::Locked
        );
        let log: Log = Arc::default();
        let processor = Processor::new(
            env.raw.clone(),
            env.queue.clone(),
            recording_handler(log.clone()),
        )
        .with_gate(env.gate(UnsignedPolicy::Reject))
        .with_settings(settings());
        let pr1 = SessionId::new("octo/repo#1").unwrap();
        let pr2 = SessionId::new("octo/repo#2").unwrap();
        let mut sent = Vec::new();
        for n in 0..3 {
            for pr in [&pr1, &pr2] {
                let mid = id(&format!("{pr}-event-{n}").replace(['/', '#'], "-"));
                let msg = Message::new(format!("{pr} event {n}"))
                    .with_session_id(pr.clone())
                    .with_message_id(mid.clone())
                    .with_attribute("github-event", "pull_request");
                assert_eq!(env.producer.send(&env.queue, msg).await.unwrap(), mid);
                sent.push((mid, pr.clone()));
            }
        }
        // Redirect: signed for PR 1, moved to PR 2's session after signing.
        let mut moved = Message::new("merge it")
            .with_session_id(pr1.clone())
            .with_message_id(id("moved-1"));
        env.signer().sign(&env.queue, &mut moved).unwrap();
        moved.session_id = Some(pr2.clone());
        env.raw.send(&env.queue, moved).await.unwrap();
        // An unsigned message in PR 1's session.
        env.raw
            .send(
                &env.queue,
                Message::new("unsigned")
                    .with_session_id(pr1.clone())
                    .with_message_id(id("unsigned-s")),
            )
            .await
            .unwrap();
        // Messages of a session queue are only handed out through accept_session.
        let plain = env
            .mem
            .receive(&env.queue, ReceiveOptions::new(10, Duration::ZERO))
            .await
            .unwrap();
        assert!(
            plain.is_empty(),
            "plain receive handed out session messages"
        );

        let report =
            run_until_drained(processor, &env.mem, &env.queue, Duration::from_secs(60)).await;
        assert_eq!((report.completed, report.rejected), (6, 2), "{report:?}");
        assert!(report.sessions >= 2, "{report:?}");

        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 6, "{seen:?}");
        for s in &seen {
            // The id and session id the producer signed arrive unchanged (the MAC covers
            // both, so a change would have been rejected), through a session receiver.
            let (_, session) = sent.iter().find(|(m, _)| *m == s.message_id).expect("sent");
            assert_eq!(s.session_id.as_ref(), Some(session));
            assert_eq!(s.message.session_id.as_ref(), Some(session));
            assert_eq!(s.message.message_id.as_ref(), Some(&s.message_id));
            assert_eq!(
                s.receipt_session.as_ref(),
                Some(session),
                "not received through a session"
            );
            assert_eq!(s.delivery_count, 1);
        }
        for pr in [&pr1, &pr2] {
            let order: Vec<String> = seen
                .iter()
                .filter(|s| s.session_id.as_ref() == Some(pr))
                .map(|s| s.body.clone())
                .collect();
            assert_eq!(
                order,
                (0..3)
                    .map(|n| format!("{pr} event {n}"))
                    .collect::<Vec<_>>()
            );
        }
        let dead = env.dead_letters().await;
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(dead[&id("moved-1")].0, reason::SIGNATURE_INVALID);
        assert_eq!(dead[&id("unsigned-s")].0, reason::UNSIGNED);
        for (_, description, _) in dead.values() {
            assert_no_secrets("a dead-letter description", description);
        }
    });
    check_capture(&c);
    assert_eq!(
        c.counters.get(
            telemetry::REJECTED,
            &[("reason", reason::SIGNATURE_INVALID)]
        ),
        1
    );
    assert_eq!(
        c.counters
            .get(telemetry::REJECTED, &[("reason", reason::UNSIGNED)]),
        1
    );
    assert!(
        c.logs.contains("queue.session"),
        "no session span: not consumed via sessions"
    );
}

// ---------------------------------------------------------------------------------------
// 2. AllowWithWarning: unsigned messages pass with a warning that carries no body text.

#[test]
fn allow_with_warning_lets_unsigned_messages_through_with_a_bodyless_warning() {
    let c = captured(|| async {
        let env = Env::new("migrating", QueueSpec::default()).await;
        let gate = env.gate(UnsignedPolicy::AllowWithWarning);
        let log: Log = Arc::default();
        let processor = Processor::new(
            env.raw.clone(),
            env.queue.clone(),
            recording_handler(log.clone()),
        )
        .with_gate(gate.clone() as Arc<dyn MessageGate>)
        .with_settings(settings());
        let running = start(processor);
        env.raw
            .send(
                &env.queue,
                Message::new(format!("legacy {BODY_CANARY}")).with_message_id(id("legacy-1")),
            )
            .await
            .unwrap();
        env.producer
            .send(
                &env.queue,
                Message::new("signed").with_message_id(id("signed-1")),
            )
            .await
            .unwrap();
        // The policy only covers unsigned messages: a forged one is still rejected.
        let mut forged = Message::new("signed").with_message_id(id("forged-1"));
        env.signer().sign(&env.queue, &mut forged).unwrap();
        forged.body = "forged".into();
        env.raw.send(&env.queue, forged).await.unwrap();
        let report = running
            .stop_when(Duration::from_secs(60), || {
                env.mem.message_count(&env.queue).unwrap() == 0
            })
            .await;
        assert_eq!((report.completed, report.rejected), (2, 1), "{report:?}");
        let mut seen = seen_ids(&log);
        seen.sort();
        assert_eq!(seen, [id("legacy-1"), id("signed-1")]);
        assert_eq!(gate.unsigned_accepted(), 1);
        let dead = env.dead_letters().await;
        assert_eq!(dead[&id("forged-1")].0, reason::SIGNATURE_INVALID);
    });
    check_capture(&c);
    let warning = c
        .logs
        .lines()
        .find(|l| l.contains("accepting an unsigned message"))
        .expect("a warning for the unsigned message");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("legacy-1"),
        "the warning names the message id: {warning}"
    );
    assert!(!c.logs.contains(BODY_CANARY), "body text in the logs");
    assert_eq!(
        c.counters
            .get(telemetry::REJECTED, &[("reason", reason::UNSIGNED)]),
        0
    );
    assert_eq!(
        c.counters.get(
            telemetry::REJECTED,
            &[("reason", reason::SIGNATURE_INVALID)]
        ),
        1
    );
}

// ---------------------------------------------------------------------------------------
// 3. GitHub webhook -> queue -> processor.

/// A delivery as GitHub would send it, signed with `secret`.
fn delivery(secret: &str, event: &str, delivery_id: &str, body: &str) -> (WebhookHeaders, String) {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref())
    );
    let headers = WebhookHeaders::from_pairs([
        ("x-hub-signature-256", signature.as_str()),
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", delivery_id),
        ("content-type", "application/json"),
    ])
    .unwrap();
    (headers, body.to_owned())
}

fn pr_payload(action: &str, number: u32) -> String {
    format!(
        r#"{{"action":"{action}","number":{number},"pull_request":{{"number":{number},"title":"{BODY_CANARY}"}},"repository":{{"full_name":"octo/repo"}}}}"#
    )
}

fn comment_payload(number: u32) -> String {
    format!(
        r#"{{"action":"created","issue":{{"number":{number},"pull_request":{{}}}},"comment":{{"body":"{BODY_CANARY}"}},"repository":{{"full_name":"octo/repo"}}}}"#
    )
}

#[test]
fn github_webhooks_become_ordered_deduplicated_verified_messages() {
    let c = captured(|| async {
        let env = Env::new(
            "github-events",
            QueueSpec::default()
                .with_sessions(true)
                .with_duplicate_detection(Duration::from_secs(600)),
        )
        .await;
        let verifier = WebhookVerifier::new(SecretString::from(WEBHOOK_CANARY));
        assert_no_secrets("Debug of the webhook verifier", &format!("{verifier:?}"));
        // Deliveries of two pull requests, interleaved as GitHub sends them.
        let deliveries = [
            ("pull_request", "d-1", pr_payload("opened", 1)),
            ("pull_request", "d-2", pr_payload("opened", 2)),
            ("pull_request", "d-3", pr_payload("synchronize", 1)),
            ("issue_comment", "d-4", comment_payload(2)),
            ("pull_request", "d-5", pr_payload("closed", 1)),
            ("pull_request", "d-6", pr_payload("closed", 2)),
        ];
        let mut expected_session = HashMap::new();
        for (event, delivery_id, body) in &deliveries {
            let (headers, body) = delivery(WEBHOOK_CANARY, event, delivery_id, body);
            let msg = verifier.message_from_delivery(&headers, body).unwrap();
            assert_eq!(msg.message_id, Some(id(delivery_id)));
            let session = msg.session_id.clone().unwrap();
            expected_session.insert(id(delivery_id), session);
            assert_eq!(
                env.producer.send(&env.queue, msg).await.unwrap(),
                id(delivery_id)
            );
        }
        let pr1 = SessionId::new("octo/repo#1").unwrap();
        let pr2 = SessionId::new("octo/repo#2").unwrap();
        for (d, pr) in [
            ("d-1", &pr1),
            ("d-3", &pr1),
            ("d-5", &pr1),
            ("d-2", &pr2),
            ("d-4", &pr2),
            ("d-6", &pr2),
        ] {
            assert_eq!(&expected_session[&id(d)], pr, "session of {d}");
        }
        // GitHub redelivers d-3 (same X-GitHub-Delivery): broker duplicate detection drops it.
        let (headers, body) = delivery(WEBHOOK_CANARY, "pull_request", "d-3", &deliveries[2].2);
        let again = verifier.message_from_delivery(&headers, body).unwrap();
        assert_eq!(
            env.producer.send(&env.queue, again).await.unwrap(),
            id("d-3")
        );
        assert_eq!(
            env.mem.message_count(&env.queue).unwrap(),
            6,
            "the redelivery was stored"
        );
        // A forged delivery never becomes a message, and its error holds no secret.
        let (mut headers, body) = delivery(
            "not-the-secret",
            "pull_request",
            "d-9",
            &pr_payload("closed", 1),
        );
        let err = verifier
            .message_from_delivery(&headers, body.clone())
            .unwrap_err();
        assert_eq!(err.reason(), reason::SIGNATURE_INVALID);
        assert_no_secrets("a webhook error", &format!("{err} {err:?}"));
        headers.signature = None;
        let err = verifier.message_from_delivery(&headers, body).unwrap_err();
        assert_no_secrets("a webhook error", &format!("{err} {err:?}"));

        let log: Log = Arc::default();
        let processor = Processor::new(
            env.raw.clone(),
            env.queue.clone(),
            recording_handler(log.clone()),
        )
        .with_gate(env.gate(UnsignedPolicy::Reject))
        .with_settings(settings());
        let report =
            run_until_drained(processor, &env.mem, &env.queue, Duration::from_secs(60)).await;
        assert_eq!(
            (report.completed, report.rejected, report.dead_lettered),
            (6, 0, 0),
            "{report:?}"
        );

        let seen = log.lock().unwrap().clone();
        let mut ids: Vec<MessageId> = seen.iter().map(|s| s.message_id.clone()).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["d-1", "d-2", "d-3", "d-4", "d-5", "d-6"].map(id),
            "each delivery handled once"
        );
        let events = |pr: &SessionId| -> Vec<String> {
            seen.iter()
                .filter(|s| s.session_id.as_ref() == Some(pr))
                .map(|s| {
                    format!(
                        "{}:{}",
                        s.message.attributes["github-event"], s.message.attributes["github-action"]
                    )
                })
                .collect()
        };
        assert_eq!(
            events(&pr1),
            [
                "pull_request:opened",
                "pull_request:synchronize",
                "pull_request:closed"
            ]
        );
        assert_eq!(
            events(&pr2),
            [
                "pull_request:opened",
                "issue_comment:created",
                "pull_request:closed"
            ]
        );
        for s in &seen {
            assert_eq!(
                s.session_id.as_ref(),
                Some(&expected_session[&s.message_id])
            );
            assert_eq!(s.message.content_type.as_deref(), Some("application/json"));
        }
    });
    check_capture(&c);
    assert_eq!(c.counters.get(telemetry::REJECTED, &[]), 0);
    assert_eq!(c.counters.get(telemetry::COMPLETED, &[]), 6);
    assert!(!c.logs.contains(BODY_CANARY), "body text in the logs");
}
