//! One `pub async fn` per promised behaviour.
//!
//! Cases panic (with the provider's error text) when the provider misbehaves and return
//! early, after a note on stderr, when a capability they need is absent.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use queue_core::{
    DeadLetterReason, MAX_DELIVERY_COUNT_EXCEEDED, Message, MessageId, QueueError, QueueName,
    Receipt, ReceiveOptions, ReceivedMessage, Result, SessionId, SessionReceiver, SessionSelector,
    SessionSupport,
};
use tokio::time::{Instant, sleep};

use crate::harness::{Harness, note};

fn ok<T>(r: Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn sid(s: &str) -> SessionId {
    ok(SessionId::new(s), "session id")
}

fn bodies(msgs: &[ReceivedMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect()
}

/// A message lock has surely expired after this long.
fn past_lock(h: &Harness) -> Duration {
    h.lock_duration() + h.lock_duration() / 2 + Duration::from_millis(500)
}

fn is_lock_lost(e: &QueueError) -> bool {
    matches!(e, QueueError::LockLost { .. })
}

fn is_session_lock_lost(e: &QueueError) -> bool {
    matches!(
        e,
        QueueError::SessionLockLost { .. } | QueueError::LockLost { .. }
    )
}

/// Whether the provider orders per session at all; notes the skip if not.
fn ordered(h: &Harness, case: &str) -> Option<SessionSupport> {
    match h.capabilities().sessions {
        SessionSupport::None => {
            note(case, "provider has no ordered sessions");
            None
        }
        s => Some(s),
    }
}

fn locked_sessions(h: &Harness, case: &str) -> bool {
    let locked = h.capabilities().sessions == SessionSupport::Locked;
    if !locked {
        note(
            case,
            "provider has no session locks (SessionSupport::Locked)",
        );
    }
    locked
}

async fn accept(h: &Harness, q: &QueueName, s: &SessionId) -> Box<dyn SessionReceiver> {
    let got = h
        .provider()
        .accept_session(q, SessionSelector::Named(s.clone()), h.receive_wait())
        .await;
    match ok(got, "accept_session(Named)") {
        Some(r) => r,
        None => panic!("accept_session(Named `{s}`) returned no session"),
    }
}

async fn session_recv(r: &dyn SessionReceiver, h: &Harness, max: usize) -> Vec<ReceivedMessage> {
    ok(
        r.receive(ReceiveOptions::new(max, h.receive_wait())).await,
        "session receive",
    )
}

/// Receives `n` messages of session `s` in the provider's order and completes each one
/// before asking for more: through an accepted session (`Locked`) or the plain receive
/// (`Grouped`). Gives up when no progress is made within the harness slack.
async fn take_session(
    h: &Harness,
    q: &QueueName,
    s: &SessionId,
    n: usize,
    batch: usize,
) -> Vec<ReceivedMessage> {
    let caps = h.capabilities();
    let batch = batch.clamp(1, caps.max_batch_size.max(1));
    let receiver = match caps.sessions {
        SessionSupport::Locked => Some(accept(h, q, s).await),
        _ => None,
    };
    let mut got = Vec::with_capacity(n);
    let mut idle_since = Instant::now();
    let mut renewed = Instant::now();
    while got.len() < n && idle_since.elapsed() <= h.slack() {
        // Keep the session lock while waiting longer than it lasts, as a consumer would.
        if let Some(r) = &receiver
            && caps.lock_renewal
            && renewed.elapsed() >= h.lock_duration() / 3
        {
            ok(r.renew_session_lock().await, "renew_session_lock");
            renewed = Instant::now();
        }
        let want = batch.min(n - got.len());
        let msgs = match &receiver {
            Some(r) => session_recv(r.as_ref(), h, want).await,
            None => h.recv(q, want).await,
        };
        if !msgs.is_empty() {
            idle_since = Instant::now();
        }
        for m in msgs {
            match &receiver {
                Some(r) => ok(r.complete(&m.receipt).await, "session complete"),
                None => ok(h.provider().complete(&m.receipt).await, "complete"),
            }
            got.push(m);
        }
    }
    if let Some(r) = receiver {
        ok(r.close().await, "session close");
    }
    got
}

/// Sends `msg` and panics on failure.
async fn send(h: &Harness, q: &QueueName, msg: Message) -> MessageId {
    ok(h.provider().send(q, msg).await, "send")
}

/// Every sent message gets an id distinct from all others, and is received under it.
pub async fn unique_ids(h: &Harness) {
    let q = h.queue("unique-ids", h.spec()).await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let id = send(h, q.name(), Message::new(format!("m{i}"))).await;
        assert!(
            ids.insert(id.clone()),
            "message id {id} was handed out twice"
        );
    }
    let max = h.capabilities().max_batch_size.max(1);
    let got = h.take_n(q.name(), 20, max, h.slack()).await;
    let received: HashSet<MessageId> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(
        received, ids,
        "received ids differ from the ids send returned"
    );
    for m in &got {
        assert_eq!(
            m.message.message_id.as_ref(),
            Some(&m.message_id),
            "ReceivedMessage::message.message_id must equal message_id"
        );
    }
    q.delete().await;
}

/// Body, attributes, content type, correlation id, subject and a caller-chosen message id
/// come back exactly as sent.
pub async fn round_trip(h: &Harness) {
    let q = h.queue("round-trip", h.spec()).await;
    let id = ok(MessageId::new("delivery-3f1c9a"), "message id");
    let body = "{\"action\":\"opened\",\"title\":\"Ünïcode ✓ \\\"quoted\\\"\"}\n\ttrailing ";
    let sent = Message::new(body)
        .with_content_type("application/json")
        .with_correlation_id("corr-42")
        .with_subject("pull_request.opened")
        .with_attribute("event", "pull_request")
        .with_attribute("x-hub-delivery", "1b2c3d")
        .with_attribute("empty-ok", "v")
        .with_message_id(id.clone());
    let returned = send(h, q.name(), sent.clone()).await;
    assert_eq!(returned, id, "send must return the caller's message id");
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    let m = &got[0];
    assert_eq!(
        m.body().as_ref(),
        body.as_bytes(),
        "body changed in transit"
    );
    assert_eq!(m.message.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.message.correlation_id.as_deref(), Some("corr-42"));
    assert_eq!(
        m.message.subject.as_deref(),
        Some("pull_request.opened"),
        "subject changed in transit"
    );
    assert_eq!(m.message.attributes, sent.attributes, "attributes changed");
    assert_eq!(m.message_id, id);
    assert_eq!(m.message.session_id, None);
    assert_eq!(m.delivery_count, 1, "first delivery must count 1");
    assert!(m.dead_letter.is_none());
    ok(h.provider().complete(&m.receipt).await, "complete");
    q.delete().await;
}

/// A body of arbitrary bytes (every byte value, not UTF-8) comes back unchanged.
pub async fn binary_body_round_trip(h: &Harness) {
    let q = h.queue("binary-body", h.spec()).await;
    let body: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    send(
        h,
        q.name(),
        Message::new(body.clone()).with_content_type("application/octet-stream"),
    )
    .await;
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    assert_eq!(
        got[0].body().as_ref(),
        body.as_slice(),
        "binary body changed"
    );
    ok(h.provider().complete(&got[0].receipt).await, "complete");
    q.delete().await;
}

/// A message's session id comes back with it.
pub async fn session_id_round_trip(h: &Harness) {
    if ordered(h, "session_id_round_trip").is_none() {
        return;
    }
    let q = h.queue("session-rt", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#7");
    send(
        h,
        q.name(),
        Message::new("hello")
            .with_session_id(s.clone())
            .with_correlation_id("c-7")
            .with_attribute("k", "v"),
    )
    .await;
    let got = take_session(h, q.name(), &s, 1, 1).await;
    assert_eq!(got.len(), 1, "the session message did not arrive");
    assert_eq!(got[0].session_id(), Some(&s));
    assert_eq!(got[0].body().as_ref(), b"hello");
    assert_eq!(got[0].message.correlation_id.as_deref(), Some("c-7"));
    assert_eq!(
        got[0].message.attributes.get("k").map(String::as_str),
        Some("v")
    );
    q.delete().await;
}

/// Using a queue that does not exist fails with `QueueNotFound`.
pub async fn queue_not_found(h: &Harness) {
    let name = h.unique_name("missing", false);
    let err = h
        .provider()
        .send(&name, Message::new("x"))
        .await
        .expect_err("sending to a missing queue must fail");
    assert!(
        matches!(err, QueueError::QueueNotFound { .. }),
        "expected QueueNotFound, got {err}"
    );
    let err = h
        .provider()
        .check_access(&name)
        .await
        .expect_err("check_access on a missing queue must fail");
    assert!(
        matches!(err, QueueError::QueueNotFound { .. }),
        "expected QueueNotFound from check_access, got {err}"
    );
    let err = h
        .provider()
        .receive(&name, ReceiveOptions::new(1, Duration::from_millis(100)))
        .await
        .expect_err("receiving from a missing queue must fail");
    assert!(
        matches!(err, QueueError::QueueNotFound { .. }),
        "expected QueueNotFound, got {err}"
    );
}

/// Receiving from an empty queue returns an empty batch when the wait ends: not an
/// error, not much later, and not long before.
pub async fn empty_receive_returns_at_deadline(h: &Harness) {
    let q = h.queue("empty", h.spec()).await;
    let wait = Duration::from_secs(1);
    let start = Instant::now();
    let got = h.recv_wait(q.name(), 5, wait).await;
    let took = start.elapsed();
    assert!(
        got.is_empty(),
        "an empty queue returned {} messages",
        got.len()
    );
    assert!(
        took >= wait / 2,
        "an empty receive returned after {took:?}, well before its {wait:?} wait"
    );
    assert!(
        took <= wait + h.slack(),
        "an empty receive took {took:?} for a {wait:?} wait"
    );
    q.delete().await;
}

/// A waiting receive returns as soon as a message arrives, not at its deadline.
pub async fn receive_returns_when_a_message_arrives(h: &Harness) {
    let q = h.queue("wakeup", h.spec()).await;
    let wait = h.slack() * 2;
    let provider = h.provider().clone();
    let name = q.name().clone();
    let sender = tokio::spawn(async move {
        sleep(Duration::from_millis(300)).await;
        provider.send(&name, Message::new("late")).await
    });
    let start = Instant::now();
    let got = h.recv_wait(q.name(), 1, wait).await;
    let took = start.elapsed();
    ok(
        sender.await.expect("sender task panicked"),
        "send while a receive waits",
    );
    assert_eq!(
        bodies(&got),
        ["late"],
        "the waiting receive missed the message"
    );
    assert!(
        took < wait,
        "the receive waited {took:?}, its whole {wait:?}, though a message arrived"
    );
    ok(h.provider().complete(&got[0].receipt).await, "complete");
    q.delete().await;
}

/// A completed message is never delivered again, even after its lock would have expired.
pub async fn complete_prevents_redelivery(h: &Harness) {
    let q = h.queue("complete", h.spec()).await;
    send(h, q.name(), Message::new("once")).await;
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    ok(h.provider().complete(&got[0].receipt).await, "complete");
    sleep(past_lock(h)).await;
    let again = h.recv(q.name(), 1).await;
    assert!(again.is_empty(), "a completed message was delivered again");
    q.delete().await;
}

/// A receipt the provider never issued is rejected with `LockLost`.
pub async fn unknown_receipt_is_rejected(h: &Harness) {
    let q = h.queue("unknown-receipt", h.spec()).await;
    let bogus = Receipt::new(
        h.provider().name(),
        q.name().clone(),
        None,
        "not-a-real-receipt",
    );
    let err = h
        .provider()
        .complete(&bogus)
        .await
        .expect_err("completing with an unknown receipt must fail");
    assert!(is_lock_lost(&err), "expected LockLost, got {err}");
    let err = h
        .provider()
        .abandon(&bogus, None)
        .await
        .expect_err("abandoning with an unknown receipt must fail");
    assert!(is_lock_lost(&err), "expected LockLost, got {err}");
    q.delete().await;
}

/// A receipt whose lock expired is rejected with `LockLost`.
pub async fn expired_receipt_is_rejected(h: &Harness) {
    let q = h.queue("expired-receipt", h.spec()).await;
    send(h, q.name(), Message::new("slow")).await;
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    sleep(past_lock(h)).await;
    // Let the broker notice: the message is available again.
    let again = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(
        again.len(),
        1,
        "the message was not redelivered after its lock expired"
    );
    let err = h
        .provider()
        .complete(&got[0].receipt)
        .await
        .expect_err("completing with an expired receipt must fail");
    assert!(is_lock_lost(&err), "expected LockLost, got {err}");
    ok(h.provider().complete(&again[0].receipt).await, "complete");
    q.delete().await;
}

/// A receipt is good for one settlement: completing twice fails with `LockLost`.
pub async fn settled_receipt_is_rejected(h: &Harness) {
    let q = h.queue("settled-receipt", h.spec()).await;
    send(h, q.name(), Message::new("x")).await;
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    ok(h.provider().complete(&got[0].receipt).await, "complete");
    let err = h
        .provider()
        .abandon(&got[0].receipt, None)
        .await
        .expect_err("abandoning a completed message must fail");
    assert!(is_lock_lost(&err), "expected LockLost, got {err}");
    q.delete().await;
}

/// An abandoned message comes again with delivery count 2.
pub async fn abandon_redelivers_with_count_two(h: &Harness) {
    let q = h.queue("abandon", h.spec()).await;
    let id = send(h, q.name(), Message::new("retry me")).await;
    let first = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(first.len(), 1, "the message did not arrive");
    assert_eq!(first[0].delivery_count, 1);
    ok(
        h.provider().abandon(&first[0].receipt, None).await,
        "abandon",
    );
    let second = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(second.len(), 1, "the abandoned message did not come again");
    assert_eq!(second[0].message_id, id);
    assert_eq!(second[0].delivery_count, 2, "second delivery must count 2");
    ok(h.provider().complete(&second[0].receipt).await, "complete");
    q.delete().await;
}

/// An abandon with a delay hides the message for that delay.
pub async fn abandon_with_delay_redelivers_later(h: &Harness) {
    if !h.capabilities().delayed_abandon {
        note("abandon_with_delay_redelivers_later", "no delayed abandon");
        return;
    }
    let q = h.queue("abandon-delay", h.spec()).await;
    send(h, q.name(), Message::new("later")).await;
    let first = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(first.len(), 1, "the message did not arrive");
    let delay = Duration::from_secs(3);
    let start = Instant::now();
    ok(
        h.provider().abandon(&first[0].receipt, Some(delay)).await,
        "abandon with delay",
    );
    let early = h.recv_wait(q.name(), 1, Duration::from_secs(1)).await;
    assert!(
        early.is_empty(),
        "a message abandoned with a delay came back at once"
    );
    let again = h.recv_n(q.name(), 1, delay + h.slack()).await;
    assert_eq!(again.len(), 1, "the delayed message never came back");
    assert!(
        start.elapsed() >= delay - Duration::from_millis(500),
        "the delayed message came back after {:?}, before its {delay:?} delay",
        start.elapsed()
    );
    assert_eq!(again[0].delivery_count, 2);
    ok(h.provider().complete(&again[0].receipt).await, "complete");
    q.delete().await;
}

/// When a lock expires the message is delivered again with delivery count + 1, and the
/// old receipt no longer settles it.
pub async fn lock_expiry_redelivers_and_invalidates_receipt(h: &Harness) {
    let q = h.queue("lock-expiry", h.spec()).await;
    send(h, q.name(), Message::new("dropped ball")).await;
    let first = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(first.len(), 1, "the message did not arrive");
    // While the lock holds, nobody else gets the message.
    let during = h.recv_wait(q.name(), 1, h.lock_duration() / 4).await;
    assert!(
        during.is_empty(),
        "a locked message was delivered to a second receiver"
    );
    let second = h.recv_n(q.name(), 1, h.lock_duration() + h.slack()).await;
    assert_eq!(
        second.len(),
        1,
        "the message was not redelivered after its lock expired"
    );
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(
        second[0].delivery_count, 2,
        "redelivery after lock expiry must count 2"
    );
    let err = h
        .provider()
        .complete(&first[0].receipt)
        .await
        .expect_err("the first delivery's receipt must be invalid now");
    assert!(is_lock_lost(&err), "expected LockLost, got {err}");
    ok(h.provider().complete(&second[0].receipt).await, "complete");
    let none = h.recv(q.name(), 1).await;
    assert!(none.is_empty(), "the message came back after completion");
    q.delete().await;
}

/// Renewing a lock keeps the message hidden past the original expiry.
pub async fn renew_lock_extends_lock(h: &Harness) {
    if !h.capabilities().lock_renewal {
        note("renew_lock_extends_lock", "no lock renewal");
        return;
    }
    let q = h.queue("renew", h.spec()).await;
    send(h, q.name(), Message::new("long job")).await;
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    let lock = h.lock_duration();
    sleep(lock * 6 / 10).await;
    let until = ok(h.provider().renew_lock(&got[0].receipt).await, "renew_lock");
    if let Some(before) = got[0].locked_until {
        assert!(until > before, "renew_lock did not move the expiry forward");
    }
    sleep(lock * 6 / 10).await;
    // Past the original expiry; the renewed lock still holds.
    let other = h.recv_wait(q.name(), 1, lock / 10).await;
    assert!(
        other.is_empty(),
        "a renewed lock expired at the original time"
    );
    ok(
        h.provider().complete(&got[0].receipt).await,
        "complete after renewal",
    );
    q.delete().await;
}

/// An explicitly dead-lettered message leaves the queue and appears in the dead-letter
/// queue with its reason; completing it there removes it.
pub async fn dead_letter_moves_to_dlq_with_reason(h: &Harness) {
    let q = h.queue("dead-letter", h.spec()).await;
    let id = send(h, q.name(), Message::new("poison").with_attribute("k", "v")).await;
    let got = h.recv_n(q.name(), 1, h.slack()).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    let reason = DeadLetterReason::new("SchemaInvalid", "missing field `action`");
    ok(
        h.provider()
            .dead_letter(&got[0].receipt, reason.clone())
            .await,
        "dead_letter",
    );
    sleep(past_lock(h)).await;
    let main = h.recv(q.name(), 1).await;
    assert!(
        main.is_empty(),
        "a dead-lettered message stayed in the queue"
    );
    let dead = h.recv_dead_n(q.name(), 1, h.slack()).await;
    assert_eq!(dead.len(), 1, "the message is not in the dead-letter queue");
    assert_eq!(dead[0].message_id, id);
    assert_eq!(dead[0].body().as_ref(), b"poison");
    assert_eq!(
        dead[0].message.attributes.get("k").map(String::as_str),
        Some("v")
    );
    let recorded = dead[0]
        .dead_letter
        .as_ref()
        .expect("a dead-lettered message carries its reason");
    assert_eq!(recorded.reason, reason.reason);
    assert_eq!(recorded.description, reason.description);
    ok(
        h.provider().complete(&dead[0].receipt).await,
        "complete in DLQ",
    );
    sleep(past_lock(h)).await;
    let dead = h.recv_dead_n(q.name(), 1, h.receive_wait()).await;
    assert!(
        dead.is_empty(),
        "completing in the DLQ did not remove the message"
    );
    q.delete().await;
}

/// A message delivered `max_delivery_count` times and then released moves to the
/// dead-letter queue with reason `MaxDeliveryCountExceeded`.
pub async fn auto_dead_letter_after_max_deliveries(h: &Harness) {
    if !h.capabilities().native_dead_letter {
        note(
            "auto_dead_letter_after_max_deliveries",
            "no native dead-lettering",
        );
        return;
    }
    let max = 2;
    let q = h
        .queue("auto-dlq", h.spec().with_max_delivery_count(max))
        .await;
    let id = send(h, q.name(), Message::new("always fails")).await;
    for n in 1..=max {
        let got = h.recv_n(q.name(), 1, h.slack()).await;
        assert_eq!(got.len(), 1, "delivery {n} did not arrive");
        assert_eq!(got[0].delivery_count, n);
        ok(h.provider().abandon(&got[0].receipt, None).await, "abandon");
    }
    let more = h.recv(q.name(), 1).await;
    assert!(
        more.is_empty(),
        "the message was delivered more than max_delivery_count ({max}) times"
    );
    let dead = h.recv_dead_n(q.name(), 1, h.slack()).await;
    assert_eq!(dead.len(), 1, "the message is not in the dead-letter queue");
    assert_eq!(dead[0].message_id, id);
    let recorded = dead[0]
        .dead_letter
        .as_ref()
        .expect("an auto dead-lettered message carries its reason");
    assert_eq!(recorded.reason, MAX_DELIVERY_COUNT_EXCEEDED);
    ok(
        h.provider().complete(&dead[0].receipt).await,
        "complete in DLQ",
    );
    q.delete().await;
}

/// Messages of one session come in send order: A, B, C (each completed before the next
/// is asked for, so `Grouped` providers are held to the same order).
pub async fn session_fifo_order(h: &Harness) {
    if ordered(h, "session_fifo_order").is_none() {
        return;
    }
    let q = h.queue("fifo", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#1");
    for b in ["A", "B", "C"] {
        send(h, q.name(), Message::new(b).with_session_id(s.clone())).await;
    }
    let got = take_session(h, q.name(), &s, 3, 1).await;
    assert_eq!(bodies(&got), ["A", "B", "C"], "session order broken");
    q.delete().await;
}

/// An abandoned session message is delivered again before the later ones.
pub async fn session_abandoned_message_comes_first(h: &Harness) {
    let Some(support) = ordered(h, "session_abandoned_message_comes_first") else {
        return;
    };
    let q = h.queue("fifo-abandon", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#2");
    for b in ["A", "B", "C"] {
        send(h, q.name(), Message::new(b).with_session_id(s.clone())).await;
    }
    if support == SessionSupport::Locked {
        let r = accept(h, q.name(), &s).await;
        let first = session_recv(r.as_ref(), h, 1).await;
        assert_eq!(bodies(&first), ["A"]);
        ok(r.abandon(&first[0].receipt).await, "session abandon");
        ok(r.close().await, "session close");
    } else {
        let first = h.recv_n(q.name(), 1, h.slack()).await;
        assert_eq!(bodies(&first), ["A"]);
        ok(
            h.provider().abandon(&first[0].receipt, None).await,
            "abandon",
        );
    }
    let got = take_session(h, q.name(), &s, 3, 1).await;
    assert_eq!(
        bodies(&got),
        ["A", "B", "C"],
        "an abandoned message lost its place"
    );
    assert_eq!(got[0].delivery_count, 2);
    q.delete().await;
}

/// Accepting a session that another receiver holds fails with `SessionLocked`.
pub async fn second_accept_of_locked_session_fails(h: &Harness) {
    if !locked_sessions(h, "second_accept_of_locked_session_fails") {
        return;
    }
    let q = h
        .queue("session-locked", h.spec().with_sessions(true))
        .await;
    let s = sid("octo/repo#3");
    send(h, q.name(), Message::new("A").with_session_id(s.clone())).await;
    let first = accept(h, q.name(), &s).await;
    let second = h
        .provider()
        .accept_session(
            q.name(),
            SessionSelector::Named(s.clone()),
            h.receive_wait(),
        )
        .await;
    match second {
        Err(QueueError::SessionLocked { session, .. }) => assert_eq!(session, s),
        Err(e) => panic!("expected SessionLocked, got {e}"),
        Ok(_) => panic!("a locked session was accepted a second time"),
    }
    ok(first.close().await, "session close");
    let again = accept(h, q.name(), &s).await;
    ok(again.close().await, "session close");
    q.delete().await;
}

/// `SessionSelector::Next` skips sessions other receivers hold, and returns `None` when
/// every session with messages is held.
pub async fn accept_next_skips_locked_sessions(h: &Harness) {
    if !locked_sessions(h, "accept_next_skips_locked_sessions") {
        return;
    }
    let q = h.queue("accept-next", h.spec().with_sessions(true)).await;
    let s1 = sid("octo/repo#10");
    let s2 = sid("octo/repo#11");
    send(h, q.name(), Message::new("1").with_session_id(s1.clone())).await;
    send(h, q.name(), Message::new("2").with_session_id(s2.clone())).await;
    let held = accept(h, q.name(), &s1).await;
    let next = ok(
        h.provider()
            .accept_session(q.name(), SessionSelector::Next, h.slack())
            .await,
        "accept_session(Next)",
    )
    .expect("an unlocked session with messages exists");
    assert_eq!(next.session_id(), &s2, "Next returned the locked session");
    let none = ok(
        h.provider()
            .accept_session(q.name(), SessionSelector::Next, h.receive_wait())
            .await,
        "accept_session(Next) with all sessions locked",
    );
    assert!(
        none.is_none(),
        "Next returned a session although all are locked"
    );
    let got = session_recv(next.as_ref(), h, 1).await;
    assert_eq!(bodies(&got), ["2"]);
    ok(next.complete(&got[0].receipt).await, "session complete");
    ok(next.close().await, "session close");
    ok(held.close().await, "session close");
    q.delete().await;
}

/// After a session lock expires, another receiver may accept the session and gets its
/// unsettled messages again; the old receiver's calls fail with a lock-lost error.
pub async fn session_lock_expiry_allows_steal(h: &Harness) {
    if !locked_sessions(h, "session_lock_expiry_allows_steal") {
        return;
    }
    let q = h.queue("session-steal", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#4");
    for b in ["A", "B"] {
        send(h, q.name(), Message::new(b).with_session_id(s.clone())).await;
    }
    let old = accept(h, q.name(), &s).await;
    let first = session_recv(old.as_ref(), h, 1).await;
    assert_eq!(bodies(&first), ["A"]);
    sleep(past_lock(h)).await;
    let thief = accept(h, q.name(), &s).await;
    let again = session_recv(thief.as_ref(), h, 1).await;
    assert_eq!(
        bodies(&again),
        ["A"],
        "the stolen session lost its first message"
    );
    assert_eq!(again[0].delivery_count, 2);
    let err = old
        .complete(&first[0].receipt)
        .await
        .expect_err("the old receiver's settlement must fail");
    assert!(
        is_session_lock_lost(&err),
        "expected a lock-lost error, got {err}"
    );
    let err = old
        .receive(ReceiveOptions::new(1, Duration::from_millis(200)))
        .await
        .expect_err("the old receiver's receive must fail");
    assert!(
        is_session_lock_lost(&err),
        "expected SessionLockLost, got {err}"
    );
    ok(thief.complete(&again[0].receipt).await, "session complete");
    let rest = session_recv(thief.as_ref(), h, 1).await;
    assert_eq!(bodies(&rest), ["B"]);
    ok(thief.complete(&rest[0].receipt).await, "session complete");
    ok(thief.close().await, "session close");
    q.delete().await;
}

/// Renewing a session lock keeps the session (and its received messages) past the
/// original expiry: others still cannot accept it and its messages still settle.
pub async fn session_lock_renewal_keeps_session(h: &Harness) {
    if !locked_sessions(h, "session_lock_renewal_keeps_session") {
        return;
    }
    if !h.capabilities().lock_renewal {
        note("session_lock_renewal_keeps_session", "no lock renewal");
        return;
    }
    let q = h.queue("session-renew", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#8");
    send(h, q.name(), Message::new("A").with_session_id(s.clone())).await;
    let r = accept(h, q.name(), &s).await;
    let before = r.locked_until();
    let got = session_recv(r.as_ref(), h, 1).await;
    assert_eq!(bodies(&got), ["A"]);
    let lock = h.lock_duration();
    sleep(lock * 6 / 10).await;
    let until = ok(r.renew_session_lock().await, "renew_session_lock");
    assert!(
        until > before,
        "renew_session_lock did not move the expiry forward"
    );
    assert_eq!(
        r.locked_until(),
        until,
        "locked_until does not report the renewal"
    );
    sleep(lock * 6 / 10).await;
    match h
        .provider()
        .accept_session(
            q.name(),
            SessionSelector::Named(s.clone()),
            h.receive_wait(),
        )
        .await
    {
        Err(QueueError::SessionLocked { .. }) => {}
        Err(e) => panic!("expected SessionLocked for a renewed session, got {e}"),
        Ok(_) => panic!("a renewed session lock expired at the original time"),
    }
    ok(
        r.complete(&got[0].receipt).await,
        "session complete after renewal",
    );
    ok(r.close().await, "session close");
    q.delete().await;
}

/// Closing a session releases it and its unsettled messages at once.
pub async fn session_close_releases_messages(h: &Harness) {
    if !locked_sessions(h, "session_close_releases_messages") {
        return;
    }
    let q = h.queue("session-close", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#5");
    send(h, q.name(), Message::new("A").with_session_id(s.clone())).await;
    let r = accept(h, q.name(), &s).await;
    let got = session_recv(r.as_ref(), h, 1).await;
    assert_eq!(bodies(&got), ["A"]);
    ok(r.close().await, "session close");
    let next = ok(
        h.provider()
            .accept_session(q.name(), SessionSelector::Next, h.receive_wait())
            .await,
        "accept_session(Next) after close",
    )
    .expect("a closed session is available again before its lock would expire");
    assert_eq!(next.session_id(), &s);
    let again = session_recv(next.as_ref(), h, 1).await;
    assert_eq!(
        bodies(&again),
        ["A"],
        "the unsettled message was not released"
    );
    ok(next.complete(&again[0].receipt).await, "session complete");
    ok(next.close().await, "session close");
    q.delete().await;
}

/// A session of 1000 messages is delivered completely and in order.
pub async fn thousand_message_session_in_order(h: &Harness) {
    if ordered(h, "thousand_message_session_in_order").is_none() {
        return;
    }
    const N: usize = 1000;
    let q = h.queue("thousand", h.spec().with_sessions(true)).await;
    let s = sid("octo/big-repo#1000");
    let batch = h.capabilities().max_batch_size.max(1);
    let all: Vec<Message> = (0..N)
        .map(|i| Message::new(format!("{i:04}")).with_session_id(s.clone()))
        .collect();
    for chunk in all.chunks(batch) {
        let ids = ok(
            h.provider().send_batch(q.name(), chunk.to_vec()).await,
            "send_batch",
        );
        assert_eq!(ids.len(), chunk.len());
    }
    let got = take_session(h, q.name(), &s, N, batch).await;
    assert_eq!(
        got.len(),
        N,
        "only {} of {N} session messages arrived",
        got.len()
    );
    for (i, m) in got.iter().enumerate() {
        let want = format!("{i:04}");
        assert_eq!(
            m.body().as_ref(),
            want.as_bytes(),
            "message {i} out of order in a {N}-message session"
        );
    }
    q.delete().await;
}

/// Many tasks sending at once get pairwise distinct ids, and every message arrives.
pub async fn concurrent_senders_get_distinct_ids(h: &Harness) {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let q = h.queue("concurrent", h.spec()).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let provider = h.provider().clone();
            let name = q.name().clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    ids.push(
                        provider
                            .send(&name, Message::new(format!("{t}-{i}")))
                            .await?,
                    );
                }
                Ok::<_, QueueError>(ids)
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in futures::future::join_all(tasks).await {
        for id in ok(t.expect("sender task panicked"), "concurrent send") {
            assert!(
                ids.insert(id.clone()),
                "id {id} handed to two concurrent senders"
            );
        }
    }
    assert_eq!(ids.len(), TASKS * EACH);
    let max = h.capabilities().max_batch_size.max(1);
    let got = h.take_n(q.name(), TASKS * EACH, max, h.slack() * 3).await;
    let received: HashSet<_> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(received.len(), got.len(), "a message was delivered twice");
    assert_eq!(received, ids, "received ids differ from sent ids");
    q.delete().await;
}

/// `send_batch` returns one id per message in order, and batched receives bring them all
/// back without exceeding the requested batch size.
pub async fn batch_send_and_receive(h: &Harness) {
    let q = h.queue("batch", h.spec()).await;
    let max = h.capabilities().max_batch_size.max(1);
    let n = 2 * max.min(10) + 1;
    let msgs: Vec<Message> = (0..n).map(|i| Message::new(format!("b{i}"))).collect();
    let ids = ok(h.provider().send_batch(q.name(), msgs).await, "send_batch");
    assert_eq!(ids.len(), n, "send_batch must return one id per message");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "duplicate ids");
    // Asking for more than the provider's batch limit is clamped, not an error.
    let mut got = h.recv_n(q.name(), 1, h.slack()).await;
    got.extend(h.recv(q.name(), max + 5).await);
    assert!(
        got.len() <= 1 + max,
        "asked for {} messages with a batch limit of {max}, got {}",
        max + 5,
        got.len() - 1
    );
    for m in &got {
        ok(h.provider().complete(&m.receipt).await, "complete");
    }
    got.extend(
        h.take_n(q.name(), n - got.len(), max.min(10), h.slack())
            .await,
    );
    let received: HashSet<_> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(
        received,
        ids.iter().cloned().collect(),
        "batch contents differ"
    );
    for m in &got {
        let i = ids
            .iter()
            .position(|id| *id == m.message_id)
            .expect("known id");
        assert_eq!(
            m.body().as_ref(),
            format!("b{i}").as_bytes(),
            "send_batch ids are not in input order"
        );
    }
    q.delete().await;
}

fn oversize(h: &Harness) -> Message {
    Message::new(vec![b'x'; h.capabilities().max_message_size + 1])
}

/// A message over the size limit fails with `MessageTooLarge` naming both sizes, and
/// nothing is sent.
pub async fn oversize_message_rejected(h: &Harness) {
    let q = h.queue("oversize", h.spec()).await;
    let max = h.capabilities().max_message_size;
    let err = h
        .provider()
        .send(q.name(), oversize(h))
        .await
        .expect_err("an oversize message must be rejected");
    match err {
        QueueError::MessageTooLarge {
            size, max: limit, ..
        } => {
            assert!(
                size > limit,
                "reported size {size} is not above the limit {limit}"
            );
            assert_eq!(limit, max, "reported limit differs from capabilities");
        }
        e => panic!("expected MessageTooLarge, got {e}"),
    }
    let got = h.recv(q.name(), 1).await;
    assert!(got.is_empty(), "a rejected message was delivered");
    q.delete().await;
}

/// A batch with one refused (oversize) entry never sends that entry, and the rest follows
/// [`Capabilities::batch_atomic`](queue_core::Capabilities::batch_atomic): an atomic provider
/// fails the batch with the entry's `MessageTooLarge` and sends nothing of it; any other
/// reports `PartialBatch` with the entry failed, the two others sent, and exactly those
/// arrive.
pub async fn refused_batch_entry_follows_batch_atomic(h: &Harness) {
    let q = h.queue("refused-batch", h.spec()).await;
    let atomic = h.capabilities().batch_atomic;
    let batch = vec![Message::new("ok-1"), oversize(h), Message::new("ok-2")];
    let err = h
        .provider()
        .send_batch(q.name(), batch)
        .await
        .expect_err("a batch with an oversize entry must not succeed");
    let expected = match err {
        QueueError::MessageTooLarge { .. } if atomic => 0,
        QueueError::PartialBatch {
            succeeded, failed, ..
        } if !atomic => {
            assert!(
                matches!(&failed[..], [f] if f.index == 1 && matches!(f.error, QueueError::MessageTooLarge { .. })),
                "only the oversize entry may fail, as MessageTooLarge: {failed:?}"
            );
            let sent: Vec<usize> = succeeded.iter().map(|(i, _)| *i).collect();
            assert_eq!(sent, [0, 2], "the other entries are sent and reported");
            2
        }
        e => panic!(
            "batch_atomic = {atomic}: expected {}, got {e}",
            if atomic {
                "the entry's MessageTooLarge"
            } else {
                "PartialBatch"
            }
        ),
    };
    let got = h
        .recv_n(q.name(), expected.max(1), h.receive_wait() * 2)
        .await;
    let mut bodies: Vec<_> = got.iter().map(|m| m.body().clone()).collect();
    bodies.sort();
    let want: &[&str] = if atomic { &[] } else { &["ok-1", "ok-2"] };
    assert_eq!(bodies, want, "messages sent differ from what was reported");
    for m in &got {
        ok(h.provider().complete(&m.receipt).await, "complete");
    }
    q.delete().await;
}

/// A scheduled message stays invisible until its time, then arrives.
pub async fn scheduled_message_invisible_until_due(h: &Harness) {
    let caps = h.capabilities();
    if !caps.scheduled_delivery {
        note(
            "scheduled_message_invisible_until_due",
            "no scheduled delivery",
        );
        return;
    }
    let q = h.queue("scheduled", h.spec()).await;
    let mut delay = Duration::from_secs(4);
    if let Some(max) = caps.max_schedule_delay {
        delay = delay.min(max);
    }
    let due = h.now() + delay;
    let start = Instant::now();
    send(
        h,
        q.name(),
        Message::new("later").with_scheduled_enqueue_time(due),
    )
    .await;
    let early = h.recv_wait(q.name(), 1, delay / 4).await;
    assert!(early.is_empty(), "a scheduled message was delivered early");
    let got = h.recv_n(q.name(), 1, delay + h.slack()).await;
    assert_eq!(got.len(), 1, "the scheduled message never arrived");
    // Brokers schedule with one-second granularity; allow for it.
    let elapsed = start.elapsed();
    assert!(
        elapsed + Duration::from_secs(1) >= delay,
        "a message scheduled {delay:?} ahead arrived after {elapsed:?}"
    );
    ok(h.provider().complete(&got[0].receipt).await, "complete");
    q.delete().await;
}

/// A message whose time to live runs out before anyone receives it is never delivered;
/// one with a longer time to live still is.
pub async fn expired_message_is_not_delivered(h: &Harness) {
    if !h.capabilities().message_ttl {
        note(
            "expired_message_is_not_delivered",
            "no per-message time to live",
        );
        return;
    }
    let q = h.queue("ttl", h.spec()).await;
    let ttl = Duration::from_secs(2);
    send(h, q.name(), Message::new("short").with_time_to_live(ttl)).await;
    send(
        h,
        q.name(),
        Message::new("long").with_time_to_live(Duration::from_secs(3600)),
    )
    .await;
    sleep(ttl + Duration::from_secs(1)).await;
    // Receive for a while, completing at once, so nothing is redelivered.
    let deadline = Instant::now() + h.receive_wait() * 3;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        for m in h.recv(q.name(), 10).await {
            ok(h.provider().complete(&m.receipt).await, "complete");
            got.push(m);
        }
    }
    assert_eq!(bodies(&got), ["long"], "an expired message was delivered");
    q.delete().await;
}

/// Within the duplicate-detection window, a second send of the same message id is
/// accepted (same id back) but not delivered twice.
pub async fn duplicate_detection_drops_duplicates(h: &Harness) {
    let caps = h.capabilities();
    if !caps.duplicate_detection {
        note(
            "duplicate_detection_drops_duplicates",
            "no duplicate detection",
        );
        return;
    }
    // SQS detects duplicates on FIFO queues only, so use a session queue where sessions
    // exist at all.
    let with_sessions = caps.sessions != SessionSupport::None;
    let spec = h
        .spec()
        .with_sessions(with_sessions)
        .with_duplicate_detection(Duration::from_secs(300));
    let q = h.queue("dedup", spec).await;
    let s = sid("dedup-session");
    let id = ok(MessageId::new("github-delivery-0001"), "message id");
    let make = |body: &str| {
        let m = Message::new(body.to_owned()).with_message_id(id.clone());
        if with_sessions {
            m.with_session_id(s.clone())
        } else {
            m
        }
    };
    assert_eq!(send(h, q.name(), make("first")).await, id);
    assert_eq!(
        send(h, q.name(), make("first")).await,
        id,
        "a duplicate send must return the id"
    );
    let got = if with_sessions {
        take_session(h, q.name(), &s, 2, 10).await
    } else {
        let got = h.recv_n(q.name(), 2, h.receive_wait() * 2).await;
        for m in &got {
            ok(h.provider().complete(&m.receipt).await, "complete");
        }
        got
    };
    assert_eq!(bodies(&got), ["first"], "a duplicate was delivered");
    q.delete().await;
}

/// Session state set by one receiver is seen by the next one, and can be cleared.
pub async fn session_state_round_trip(h: &Harness) {
    let caps = h.capabilities();
    if !caps.session_state || caps.sessions != SessionSupport::Locked {
        note("session_state_round_trip", "no session state");
        return;
    }
    let q = h.queue("session-state", h.spec().with_sessions(true)).await;
    let s = sid("octo/repo#6");
    send(h, q.name(), Message::new("A").with_session_id(s.clone())).await;
    let r = accept(h, q.name(), &s).await;
    assert_eq!(
        ok(r.get_state().await, "get_state"),
        None,
        "fresh state must be empty"
    );
    let state = Bytes::from_static(b"{\"last_seen\":\"A\"}\x00\xff");
    ok(r.set_state(Some(state.clone())).await, "set_state");
    assert_eq!(ok(r.get_state().await, "get_state"), Some(state.clone()));
    ok(r.close().await, "session close");
    let r = accept(h, q.name(), &s).await;
    assert_eq!(
        ok(r.get_state().await, "get_state"),
        Some(state),
        "state did not survive a new accept"
    );
    ok(r.set_state(None).await, "clear state");
    assert_eq!(
        ok(r.get_state().await, "get_state"),
        None,
        "state was not cleared"
    );
    ok(r.close().await, "session close");
    q.delete().await;
}

/// The spec and session id of the redrive cases: a session queue where sessions exist (SQS
/// de-duplicates on FIFO queues only), with duplicate detection where the provider has it.
fn redrive_spec(h: &Harness) -> (queue_core::QueueSpec, Option<SessionId>) {
    let caps = h.capabilities();
    let with_sessions = caps.sessions != SessionSupport::None;
    let mut spec = h.spec().with_sessions(with_sessions);
    if caps.duplicate_detection {
        spec = spec.with_duplicate_detection(Duration::from_secs(300));
    }
    (spec, with_sessions.then(|| sid("octo/repo#redrive")))
}

/// Receives the next `n` messages (of session `s`, if given) and dead-letters them in order.
async fn dead_letter_n(h: &Harness, q: &QueueName, s: Option<&SessionId>, n: usize) {
    let reason = || DeadLetterReason::new("HandlerFailed", "redrive case");
    if let Some(s) = s.filter(|_| h.capabilities().sessions == SessionSupport::Locked) {
        let r = accept(h, q, s).await;
        let mut done = 0;
        let deadline = Instant::now() + h.slack();
        while done < n && Instant::now() < deadline {
            for m in session_recv(r.as_ref(), h, n - done).await {
                ok(
                    r.dead_letter(&m.receipt, reason()).await,
                    "session dead_letter",
                );
                done += 1;
            }
        }
        ok(r.close().await, "session close");
        assert_eq!(done, n, "not every message arrived to be dead-lettered");
        return;
    }
    let got = h.recv_n(q, n, h.slack()).await;
    assert_eq!(
        got.len(),
        n,
        "not every message arrived to be dead-lettered"
    );
    for m in got {
        ok(
            h.provider().dead_letter(&m.receipt, reason()).await,
            "dead_letter",
        );
    }
}

/// Takes `n` messages from the main queue (through the session when there is one).
async fn take_redriven(
    h: &Harness,
    q: &QueueName,
    s: Option<&SessionId>,
    n: usize,
) -> Vec<ReceivedMessage> {
    match s {
        Some(s) => take_session(h, q, s, n, 10).await,
        None => h.take_n(q, n, 10, h.slack()).await,
    }
}

fn redrive_options(h: &Harness) -> queue_core::RedriveOptions {
    queue_core::RedriveOptions::new().with_wait(h.receive_wait())
}

/// One redrive run of at most `max` messages, panicking on failure.
async fn redrive_run(h: &Harness, q: &QueueName, max: Option<usize>) -> queue_core::RedriveReport {
    use queue_core::QueueProviderExt;
    let mut options = redrive_options(h);
    if let Some(max) = max {
        options = options.with_max_messages(max);
    }
    match h.provider().redrive(q, options).await {
        Ok(r) => r,
        Err(e) => panic!("redrive failed: {e}"),
    }
}

/// A dead letter redriven while the duplicate-detection window still holds its message id
/// arrives again (under a fresh id, the original kept in
/// [`ORIGINAL_MESSAGE_ID_ATTRIBUTE`](queue_core::ORIGINAL_MESSAGE_ID_ATTRIBUTE)), and the
/// report counts it. Re-sending under the original id would be dropped by the broker
/// while the dead-letter copy is completed: a silent loss.
pub async fn redrive_is_not_dropped_by_duplicate_detection(h: &Harness) {
    use queue_core::{ORIGINAL_MESSAGE_ID_ATTRIBUTE, QueueProviderExt};
    let (spec, s) = redrive_spec(h);
    let q = h.queue("redrive-dedup", spec).await;
    let id = ok(MessageId::new("github-delivery-0002"), "message id");
    let mut msg = Message::new("poison")
        .with_message_id(id.clone())
        .with_attribute("k", "v");
    if let Some(s) = &s {
        msg = msg.with_session_id(s.clone());
    }
    assert_eq!(send(h, q.name(), msg).await, id);
    dead_letter_n(h, q.name(), s.as_ref(), 1).await;

    let options = redrive_options(h).with_max_messages(1);
    let report = match h.provider().redrive(q.name(), options).await {
        Ok(r) => r,
        Err(e) => panic!("redrive failed: {e}"),
    };
    assert_eq!((report.received, report.moved), (1, 1), "{report:?}");
    assert_eq!(report.moved_ids[0].from, id);
    let fresh = report.moved_ids[0].to.clone();

    let got = take_redriven(h, q.name(), s.as_ref(), 1).await;
    assert_eq!(
        bodies(&got),
        ["poison"],
        "the redriven message never arrived (dropped as a duplicate?)"
    );
    assert_ne!(
        fresh, id,
        "a redrive must not re-send under the original id"
    );
    assert_eq!(got[0].message_id, fresh);
    assert_eq!(got[0].session_id(), s.as_ref());
    let attrs = &got[0].message.attributes;
    assert_eq!(attrs.get("k").map(String::as_str), Some("v"));
    assert_eq!(
        attrs.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE).map(String::as_str),
        Some(id.as_str())
    );
    assert!(
        h.recv_dead_n(q.name(), 1, h.receive_wait())
            .await
            .is_empty(),
        "the dead-letter copy was not removed"
    );
    q.delete().await;
}

/// Redrive moves dead letters back in order, stops at `max_messages`, and a second run
/// moves the rest; an empty dead-letter queue moves nothing.
pub async fn redrive_keeps_order_and_limit(h: &Harness) {
    let (spec, s) = redrive_spec(h);
    let q = h.queue("redrive-order", spec).await;
    for body in ["A", "B", "C"] {
        let mut msg = Message::new(body);
        if let Some(s) = &s {
            msg = msg.with_session_id(s.clone());
        }
        send(h, q.name(), msg).await;
    }
    dead_letter_n(h, q.name(), s.as_ref(), 3).await;
    let first = redrive_run(h, q.name(), Some(2)).await;
    assert_eq!(first.moved, 2, "{first:?}");
    let second = redrive_run(h, q.name(), None).await;
    assert_eq!(second.moved, 1, "{second:?}");
    let mut got = bodies(&take_redriven(h, q.name(), s.as_ref(), 3).await);
    if s.is_none() {
        // Without sessions the provider promises no order.
        got.sort();
    }
    assert_eq!(got, ["A", "B", "C"], "redrive lost or reordered messages");
    let empty = redrive_run(h, q.name(), None).await;
    assert_eq!((empty.received, empty.moved), (0, 0), "{empty:?}");
    q.delete().await;
}
