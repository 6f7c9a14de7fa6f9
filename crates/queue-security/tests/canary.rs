//! Canary secrets (key material, webhook secret, bodies, attribute values, connection
//! strings) never appear in captured tracing output, `Debug`, `Display` or errors.

use std::{
    io,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use queue_core::{
    Message, MessageGate, MessageId, QueueName, Receipt, ReceivedMessage, SecretString,
};
use queue_security::{
    ConnectionString, KeyRing, MessageSigner, MessageSummary, SignatureGate, Signing,
    UnsignedPolicy, WebhookHeaders, WebhookVerifier, encode_key, redact_error, redact_text,
};

const KEY_CANARY: &[u8; 32] = b"CANARYkeyCANARYkeyCANARYkey01234";
const BODY_CANARY: &str = "CANARYbody-7d1e";
const ATTR_CANARY: &str = "CANARYattr-33f0";
const WEBHOOK_CANARY: &str = "CANARYwebhook-secret-5b2c";
const CONN_CANARY: &str = "CANARYconnKEY0123456789";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn canaries() -> Vec<String> {
    let key_b64 = {
        use secrecy::ExposeSecret;
        encode_key(KEY_CANARY).expose_secret().to_owned()
    };
    vec![
        "CANARY".to_owned(),
        key_b64,
        BODY_CANARY.to_owned(),
        ATTR_CANARY.to_owned(),
        WEBHOOK_CANARY.to_owned(),
        CONN_CANARY.to_owned(),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for c in canaries() {
        assert!(!text.contains(&c), "{what} leaks {c:?}: {text}");
    }
}

fn ring() -> KeyRing {
    let spec = {
        use secrecy::ExposeSecret;
        format!("*k1:{}", encode_key(KEY_CANARY).expose_secret())
    };
    KeyRing::from_spec(&SecretString::from(spec)).unwrap()
}

fn deliver(msg: Message, dc: u32) -> ReceivedMessage {
    let id = msg.message_id.clone().unwrap_or_else(MessageId::random);
    let receipt = Receipt::new("test", QueueName::new("q").unwrap(), None, "CANARYreceipt");
    ReceivedMessage::new(msg, id, dc, SystemTime::now(), receipt)
}

#[tokio::test]
async fn nothing_secret_reaches_logs_debug_display_or_errors() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let ring = ring();
    let signer = MessageSigner::new(ring.clone());
    let gate =
        SignatureGate::new(ring.clone()).with_unsigned_policy(UnsignedPolicy::AllowWithWarning);
    let q = QueueName::new("q").unwrap();
    let mut texts: Vec<(String, String)> = Vec::new();

    let mut msg = Message::new(BODY_CANARY).with_attribute("token", ATTR_CANARY);
    signer.sign(&q, &mut msg).unwrap();
    gate.check(&deliver(msg.clone(), 1)).await.unwrap();
    // Rejections: replay, tamper, unsigned-allowed (warn), malformed.
    let replay = gate.check(&deliver(msg.clone(), 1)).await.unwrap_err();
    texts.push(("replay rejection".into(), format!("{replay} {replay:?}")));
    let mut tampered = deliver(msg.clone(), 1);
    tampered.message.body = format!("{BODY_CANARY}!").into();
    let rej = gate.check(&tampered).await.unwrap_err();
    texts.push(("tamper rejection".into(), format!("{rej} {rej:?}")));
    gate.check(&deliver(
        Message::new(BODY_CANARY).with_attribute("x", ATTR_CANARY),
        1,
    ))
    .await
    .unwrap();
    let mut bad = deliver(msg.clone(), 1);
    bad.message
        .attributes
        .insert("qr-sig".into(), format!("v={ATTR_CANARY}"));
    let rej = gate.check(&bad).await.unwrap_err();
    texts.push(("version rejection".into(), format!("{rej} {rej:?}")));
    let too_long = deliver(
        Message::new("x").with_attribute("a", format!("{ATTR_CANARY}{}", "x".repeat(2000))),
        1,
    );
    let rej = gate.check(&too_long).await.unwrap_err();
    texts.push(("limit rejection".into(), format!("{rej} {rej:?}")));

    // Debug of everything that holds a secret.
    texts.push(("ring".into(), format!("{ring:?}")));
    texts.push(("signer".into(), format!("{signer:?}")));
    texts.push(("gate".into(), format!("{gate:?}")));
    texts.push((
        "signing provider".into(),
        format!(
            "{:?}",
            Signing::new(queue_memory::InMemoryProvider::new(), signer.clone())
        ),
    ));
    texts.push(("message".into(), format!("{msg:?}")));
    texts.push((
        "summary".into(),
        MessageSummary::of_received(&deliver(msg.clone(), 1)).to_string(),
    ));
    let webhook = WebhookVerifier::new(SecretString::from(WEBHOOK_CANARY));
    texts.push(("webhook verifier".into(), format!("{webhook:?}")));
    let headers = WebhookHeaders::from_pairs([
        ("X-Hub-Signature-256", "sha256=00"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "d"),
    ])
    .unwrap();
    let err = webhook
        .message_from_delivery(&headers, BODY_CANARY.as_bytes().to_vec())
        .unwrap_err();
    texts.push(("webhook error".into(), format!("{err} {err:?}")));
    let conn = format!("Endpoint=sb://ns/;SharedAccessKeyName=app;SharedAccessKey={CONN_CANARY}");
    let cs = ConnectionString::parse(&SecretString::from(conn.clone())).unwrap();
    texts.push(("connection string".into(), format!("{cs:?}")));
    texts.push(("redacted".into(), redact_text(&conn).into_owned()));
    let io = io::Error::other(format!("login failed for {conn}"));
    texts.push(("redacted error".into(), redact_error(&io)));
    // Key configuration errors.
    let err = KeyRing::from_spec(&SecretString::from(format!("k1:{CONN_CANARY}!"))).unwrap_err();
    texts.push(("key error".into(), format!("{err} {err:?}")));
    let qe: queue_core::QueueError = err.into();
    texts.push(("queue error".into(), format!("{qe} {qe:?}")));

    tracing::info!(summary = %MessageSummary::of_message(&msg), "sent");
    drop(_guard);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("unsigned"), "the warning was captured: {log}");
    assert!(
        log.contains("Replayed"),
        "the rejection was captured: {log}"
    );
    assert_clean("tracing output", &log);
    for (what, text) in texts {
        assert_clean(&what, &text);
    }
}
