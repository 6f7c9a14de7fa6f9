//! Protocol-level checks with a generic AMQP 1.0 client (fe2o3-amqp): authorization,
//! addressing, lock tokens on the wire, and many concurrent connections and links.

use std::{collections::HashSet, time::Duration};

use fe2o3_amqp::{
    Connection, Receiver, Sender, Session,
    connection::ConnectionHandle,
    link::{ReceiverAttachError, delivery::Sendable},
    session::SessionHandle,
    types::{
        messaging::{Message, SerializableBody, annotations::OwnedKey},
        primitives::{Symbol, Value},
    },
};
use servicebus_emulator::{
    Emulator, EmulatorConfig, QueueConfig,
    broker::{EntityRef, SubQueue},
};

const KEY: &str = "client-test-key";
const POLICY: &str = "RootManageSharedAccessKey";

async fn start(key: bool) -> Emulator {
    let mut cfg = EmulatorConfig::new()
        .with_queue("q", QueueConfig::new())
        .with_queue("other", QueueConfig::new());
    if key {
        cfg = cfg.with_key(POLICY, KEY);
    }
    start_with(cfg).await
}

/// Starts an emulator with `cfg` on a free loopback port.
async fn start_with(cfg: EmulatorConfig) -> Emulator {
    Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Opens an anonymous connection named `name` to `emu` and begins a session on it.
async fn connect(emu: &Emulator, name: &str) -> (ConnectionHandle<()>, SessionHandle<()>) {
    open_session(name, &url(emu, None)).await
}

/// Opens a connection named `name` to the AMQP URL `addr` and begins a session on it.
async fn open_session(
    name: impl Into<String>,
    addr: &str,
) -> (ConnectionHandle<()>, SessionHandle<()>) {
    let mut conn = Connection::open(name, addr).await.unwrap();
    let session = Session::begin(&mut conn).await.unwrap();
    (conn, session)
}

/// Sends `msg` and requires the emulator to accept it.
async fn send_ok<T: SerializableBody>(sender: &mut Sender, msg: impl Into<Sendable<T>>) {
    sender
        .send(msg)
        .await
        .unwrap()
        .accepted_or("not accepted")
        .unwrap();
}

/// A queue that requires sessions, with session locks of `lock`.
fn session_queue(lock: Duration) -> QueueConfig {
    QueueConfig::new()
        .with_requires_session(true)
        .with_lock_duration(lock)
}

/// The main sub-queue of `queue`.
fn main_queue(queue: &str) -> EntityRef {
    EntityRef {
        queue: queue.into(),
        sub: SubQueue::Main,
    }
}

fn url(emu: &Emulator, creds: Option<(&str, &str)>) -> String {
    match creds {
        Some((u, p)) => format!("amqp://{u}:{p}@{}", emu.local_addr()),
        None => format!("amqp://{}", emu.local_addr()),
    }
}

#[tokio::test]
async fn entities_need_authorization_when_a_key_is_configured() {
    let emu = start(true).await;
    // No SASL and no $cbs token: attaching to a queue is refused.
    let (mut conn, mut session) = connect(&emu, "anon").await;
    assert!(Sender::attach(&mut session, "s", "q").await.is_err());
    let _ = session.end().await;
    let _ = conn.close().await;

    // SASL PLAIN with the wrong key: the connection is refused.
    assert!(
        Connection::open("bad", &url(&emu, Some((POLICY, "wrong")))[..])
            .await
            .is_err()
    );

    // SASL PLAIN with the right key: the queue is usable.
    let mut conn = Connection::open("good", &url(&emu, Some((POLICY, KEY)))[..])
        .await
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut sender = Sender::attach(&mut session, "s", "q").await.unwrap();
    send_ok(&mut sender, "hello").await;
    sender.close().await.unwrap();
    session.end().await.unwrap();
    conn.close().await.unwrap();
    let q = main_queue("q");
    assert_eq!(emu.broker().count(&q), 1);
}

#[tokio::test]
async fn lock_token_is_the_delivery_tag_and_addresses_may_be_uris() {
    let emu = start(false).await;
    let (mut conn, mut session) = connect(&emu, "c").await;
    let full = format!("amqp://{}/q", emu.local_addr());
    let mut sender = Sender::attach(&mut session, "s", &full[..]).await.unwrap();
    send_ok(&mut sender, "one").await;
    let mut receiver = Receiver::attach(&mut session, "r", "q").await.unwrap();
    let d = receiver.recv::<Value>().await.unwrap();
    let tag = d.delivery_tag().as_ref().to_vec();
    assert_eq!(tag.len(), 16, "delivery tag must be a 16-byte lock token");
    let msg: &Message<Value> = d.message();
    let ann = msg.message_annotations.as_ref().unwrap();
    let Some(Value::Uuid(token)) = ann.get(&OwnedKey::Symbol(Symbol::from("x-opt-lock-token")))
    else {
        panic!("no x-opt-lock-token")
    };
    // The tag carries the UUID in .NET byte order, the annotation in RFC order.
    let from_tag = uuid::Uuid::from_bytes_le(tag.try_into().unwrap());
    assert_eq!(from_tag.as_bytes(), token.as_inner());
    for k in [
        "x-opt-sequence-number",
        "x-opt-enqueued-time",
        "x-opt-locked-until",
    ] {
        assert!(
            ann.get(&OwnedKey::Symbol(Symbol::from(k))).is_some(),
            "missing {k}"
        );
    }
    assert_eq!(msg.header.as_ref().unwrap().delivery_count, 0);
    receiver.accept(&d).await.unwrap();
    receiver.close().await.unwrap();

    // The dead-letter sub-queue is addressable (and empty).
    let mut dlq = Receiver::attach(&mut session, "d", "q/$deadletterqueue")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), dlq.recv::<Value>())
            .await
            .is_err()
    );
    let _ = dlq.close().await;
    sender.close().await.unwrap();
    session.end().await.unwrap();

    // Unknown entities are refused (on a session of its own: the client frees a refused
    // link's handle asynchronously, so reusing the session at once races in the client).
    let mut session = Session::begin(&mut conn).await.unwrap();
    assert!(Sender::attach(&mut session, "s2", "missing").await.is_err());
    let _ = session.end().await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_and_links_at_once() {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 50;
    const RECEIVERS: usize = 4;
    let emu = start(false).await;
    let addr = url(&emu, None);
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let (mut conn, mut session) = open_session(format!("send-{s}"), &addr).await;
            let mut sender = Sender::attach(&mut session, format!("s{s}"), "q")
                .await
                .unwrap();
            for i in 0..PER_SENDER {
                send_ok(&mut sender, format!("{s}-{i}")).await;
            }
            sender.close().await.unwrap();
            session.end().await.unwrap();
            conn.close().await.unwrap();
        }));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut receivers = Vec::new();
    for r in 0..RECEIVERS {
        let addr = addr.clone();
        let tx = tx.clone();
        receivers.push(tokio::spawn(async move {
            let (mut conn, mut session) = open_session(format!("recv-{r}"), &addr).await;
            let mut receiver = Receiver::attach(&mut session, format!("r{r}"), "q")
                .await
                .unwrap();
            while let Ok(Ok(d)) =
                tokio::time::timeout(Duration::from_secs(2), receiver.recv::<String>()).await
            {
                receiver.accept(&d).await.unwrap();
                tx.send(d.body().clone()).unwrap();
            }
            let _ = receiver.close().await;
            let _ = session.end().await;
            let _ = conn.close().await;
        }));
    }
    drop(tx);
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = HashSet::new();
    while let Some(b) = rx.recv().await {
        assert!(seen.insert(b.clone()), "{b} delivered twice");
    }
    for r in receivers {
        r.await.unwrap();
    }
    assert_eq!(seen.len(), SENDERS * PER_SENDER);
    let q = main_queue("q");
    assert_eq!(emu.broker().count(&q), 0, "accepted messages left behind");
}

#[tokio::test]
async fn keeps_an_idle_connection_alive_for_a_client_with_an_idle_timeout() {
    let emu = start(false).await;
    let mut conn = Connection::builder()
        .container_id("idle")
        .idle_time_out(400u32)
        .open(&url(&emu, None)[..])
        .await
        .unwrap();
    // Longer than the client's idle timeout with nothing to say: the emulator must send
    // empty frames or the client drops the connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut sender = Sender::attach(&mut session, "s", "q").await.unwrap();
    send_ok(&mut sender, "still here").await;
    sender.close().await.unwrap();
    session.end().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn dropping_the_emulator_closes_its_connections() {
    let emu = start(false).await;
    let (_conn, mut session) = connect(&emu, "c").await;
    let mut sender = Sender::attach(&mut session, "s", "q").await.unwrap();
    send_ok(&mut sender, "before").await;
    let addr = emu.local_addr();
    drop(emu);
    let after = tokio::time::timeout(Duration::from_secs(2), sender.send("after")).await;
    assert!(
        !matches!(after, Ok(Ok(_))),
        "a send succeeded after shutdown"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn large_messages_are_split_and_reassembled() {
    // Premium: 1 MiB messages (Standard stops at 256 KiB).
    let emu = start_with(
        EmulatorConfig::new()
            .premium(1024)
            .with_queue("q", QueueConfig::new()),
    )
    .await;
    // The client accepts only small frames: what the emulator sends must be split.
    let mut conn = Connection::builder()
        .container_id("big")
        .max_frame_size(4096u32)
        .open(&url(&emu, None)[..])
        .await
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut sender = Sender::attach(&mut session, "s", "q").await.unwrap();
    // Larger than the emulator's 256 KiB frames: what the client sends arrives in pieces.
    let body: String = (0..600_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    send_ok(&mut sender, body.clone()).await;
    let mut receiver = Receiver::attach(&mut session, "r", "q").await.unwrap();
    let d = receiver.recv::<String>().await.unwrap();
    assert_eq!(d.body().len(), body.len());
    assert!(d.body() == &body, "body changed in transit");
    receiver.accept(&d).await.unwrap();
    receiver.close().await.unwrap();
    sender.close().await.unwrap();
    session.end().await.unwrap();
    conn.close().await.unwrap();
}

/// A hand-driven AMQP peer, for what well-behaved clients never send.
mod raw {
    use fe2o3_amqp::types::{
        definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode},
        messaging::{Source, Target},
        performatives::{Attach, Begin, Disposition, Open, Performative, Transfer},
    };
    use serde::Serialize;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    pub(crate) fn frame<T: Serialize>(perf: &T, payload: &[u8]) -> Vec<u8> {
        let body = serde_amqp::to_vec(perf).unwrap();
        let size = 8 + body.len() + payload.len();
        let mut out = (size as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(&body);
        out.extend_from_slice(payload);
        out
    }

    pub(crate) async fn read(s: &mut TcpStream) -> Performative {
        loop {
            let size = s.read_u32().await.unwrap() as usize;
            let mut buf = vec![0u8; size - 4];
            s.read_exact(&mut buf).await.unwrap();
            let body = &buf[(buf[0] as usize * 4 - 4)..];
            if body.is_empty() {
                continue; // heartbeat
            }
            let mut cur = std::io::Cursor::new(body);
            return serde_amqp::from_reader(&mut cur).unwrap();
        }
    }

    /// Connects, opens, begins and attaches a receiver link (handle 0) for session `sid`
    /// of `queue`; returns the socket and the attach answer.
    pub(crate) async fn session_receiver(
        addr: std::net::SocketAddr,
        queue: &str,
        sid: &str,
    ) -> (TcpStream, Performative) {
        let mut s = begun(addr).await;
        let source = Source::builder()
            .address(queue)
            .add_to_filter_using_legacy_format(
                "com.microsoft:session-filter",
                fe2o3_amqp::types::primitives::Value::String(sid.into()),
            )
            .build();
        let attach = Attach {
            name: "raw-receiver".into(),
            handle: Handle(0),
            role: Role::Receiver,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::Second,
            source: Some(Box::new(source)),
            target: Some(Box::new(Target::default().into())),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(&attach, &[])).await.unwrap();
        let answer = read(&mut s).await;
        (s, answer)
    }

    /// Connects, opens and begins a session on channel 0.
    async fn begun(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
        let mut hdr = [0u8; 8];
        s.read_exact(&mut hdr).await.unwrap();
        let open = Open {
            container_id: "raw".into(),
            hostname: None,
            max_frame_size: 65_536u32.into(),
            channel_max: 1u16.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(&open, &[])).await.unwrap();
        assert!(matches!(read(&mut s).await, Performative::Open(_)));
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 10_000,
            outgoing_window: 10_000,
            handle_max: Handle(255),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(&begin, &[])).await.unwrap();
        assert!(matches!(read(&mut s).await, Performative::Begin(_)));
        s
    }

    /// Connects, opens, begins and attaches a sender link (handle 0) to `address`.
    pub(crate) async fn sender(addr: std::net::SocketAddr, address: &str) -> TcpStream {
        let mut s = begun(addr).await;
        let attach = Attach {
            name: "raw-sender".into(),
            handle: Handle(0),
            role: Role::Sender,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source::default())),
            target: Some(Box::new(
                Target {
                    address: Some(address.into()),
                    ..Default::default()
                }
                .into(),
            )),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(&attach, &[])).await.unwrap();
        assert!(matches!(read(&mut s).await, Performative::Attach(_)));
        assert!(matches!(read(&mut s).await, Performative::Flow(_)));
        s
    }

    /// Writes one transfer frame on handle 0 carrying `payload` (see [`transfer`]).
    pub(crate) async fn write_transfer(s: &mut TcpStream, first: bool, more: bool, payload: &[u8]) {
        s.write_all(&frame(&transfer(first, more), payload))
            .await
            .unwrap();
    }

    /// Reads the next performative and requires it to be a disposition.
    pub(crate) async fn disposition(s: &mut TcpStream) -> Disposition {
        let Performative::Disposition(d) = read(s).await else {
            panic!("expected a disposition")
        };
        d
    }

    pub(crate) fn transfer(first: bool, more: bool) -> Transfer {
        Transfer {
            handle: Handle(0),
            delivery_id: first.then_some(0),
            delivery_tag: first.then(|| vec![1u8].into()),
            message_format: first.then_some(0),
            settled: first.then_some(false),
            more,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        }
    }
}

#[tokio::test]
async fn messages_over_the_advertised_size_are_refused() {
    use fe2o3_amqp::types::{
        definitions::{ErrorCondition, LinkError},
        messaging::DeliveryState,
    };

    let emu = start(false).await;
    let mut s = raw::sender(emu.local_addr(), "q").await;
    // 1.1 MiB in 60 000-byte frames: more than the 256 KiB every attach advertises.
    let chunk = vec![0x41u8; 60_000];
    let frames = 19;
    for i in 0..frames {
        raw::write_transfer(&mut s, i == 0, i + 1 < frames, &chunk).await;
    }
    let d = raw::disposition(&mut s).await;
    assert!(d.settled);
    let Some(DeliveryState::Rejected(r)) = d.state else {
        panic!("oversize message was not rejected: {:?}", d.state)
    };
    let cond = r.error.unwrap().condition;
    assert!(
        matches!(
            cond,
            ErrorCondition::LinkError(LinkError::MessageSizeExceeded)
        ),
        "{cond:?}"
    );
    let q = main_queue("q");
    assert_eq!(emu.broker().count(&q), 0);
}

#[tokio::test]
async fn undecodable_messages_are_rejected_with_a_reason() {
    use fe2o3_amqp::types::{
        definitions::{AmqpError, ErrorCondition},
        messaging::DeliveryState,
    };

    let emu = start(false).await;
    let mut s = raw::sender(emu.local_addr(), "q").await;
    raw::write_transfer(&mut s, true, false, b"\x00\x53\x77\xa1\xffnot amqp").await;
    let d = raw::disposition(&mut s).await;
    let Some(DeliveryState::Rejected(r)) = d.state else {
        panic!("garbage was not rejected: {:?}", d.state)
    };
    let e = r.error.unwrap();
    assert!(
        matches!(
            e.condition,
            ErrorCondition::AmqpError(AmqpError::DecodeError)
        ),
        "{:?}",
        e.condition
    );
    assert!(e.description.unwrap().contains("could not be decoded"));
}

#[tokio::test]
async fn session_filter_is_answered_and_an_expired_session_lock_detaches_the_link() {
    let cfg = EmulatorConfig::new().with_queue("s", session_queue(Duration::from_secs(1)));
    let emu = start_with(cfg).await;
    let (_conn, mut session) = connect(&emu, "c").await;
    let mut sender = Sender::attach(&mut session, "snd", "s").await.unwrap();
    for (sid, body) in [("first", "f0"), ("second", "s0")] {
        send_ok(&mut sender, grouped(sid, body)).await;
    }
    // A null session filter asks for the next available session; the answer names it.
    let mut receiver = try_session_receiver(&mut session, "rcv", "s", Value::Null)
        .await
        .unwrap();
    let filter = receiver
        .source()
        .as_ref()
        .and_then(|s| s.filter.as_ref())
        .and_then(|f| {
            f.get(&Symbol::from("com.microsoft:session-filter"))
                .cloned()
        });
    assert_eq!(filter, Some(Value::String("first".into())));
    let d = receiver.recv::<String>().await.unwrap();
    assert_eq!(d.body(), "f0");
    // Nobody renews: after the 1 s lock the emulator detaches the receiver.
    let next = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<String>()).await;
    assert!(
        matches!(&next, Ok(Err(e)) if format!("{e:?}").contains("com.microsoft:session-lock-lost")),
        "the link was not detached with session-lock-lost: {next:?}"
    );
}

/// Service Bus refuses, with `amqp:not-allowed`, a receiver whose kind does not match the
/// entity: a plain receiver on a queue that requires sessions, and a session receiver on a
/// queue (or dead-letter queue) without sessions. A refused plain receiver locks nothing.
#[tokio::test]
async fn receivers_must_match_whether_the_entity_requires_sessions() {
    let cfg = EmulatorConfig::new()
        .with_queue("s", QueueConfig::new().with_requires_session(true))
        .with_queue("q", QueueConfig::new());
    let emu = start_with(cfg).await;
    let (mut conn, mut session) = connect(&emu, "c").await;
    let mut sender = Sender::attach(&mut session, "snd", "s").await.unwrap();
    send_ok(&mut sender, grouped("g", "v")).await;
    session.end().await.unwrap();

    // Each refused attach on a session of its own (the client frees a refused link's handle
    // asynchronously).
    let mut session = Session::begin(&mut conn).await.unwrap();
    let plain = Receiver::attach(&mut session, "plain", "s").await;
    let Err(e) = plain else {
        panic!("a plain receiver on a session queue was attached");
    };
    let e = format!("{e:?}");
    assert!(e.contains("AmqpError(NotAllowed)"), "{e}");
    assert!(e.contains("requires sessions"), "{e}");
    let _ = session.end().await;

    for address in ["q", "s/$deadletterqueue"] {
        let mut session = Session::begin(&mut conn).await.unwrap();
        let refused = try_session_receiver(&mut session, "sessionful", address, Value::Null).await;
        let Err(e) = refused else {
            panic!("a session receiver on `{address}` was attached");
        };
        let e = format!("{e:?}");
        assert!(e.contains("AmqpError(NotAllowed)"), "{address}: {e}");
        assert!(e.contains("does not require sessions"), "{address}: {e}");
        let _ = session.end().await;
    }

    // The refused plain receiver took no session lock: a session receiver gets `g` at once.
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut receiver = try_session_receiver(&mut session, "rcv", "s", Value::Null)
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<String>())
        .await
        .expect("session g was locked by the refused plain receiver")
        .unwrap();
    assert_eq!(d.body(), "v");
    receiver.accept(&d).await.unwrap();
}

/// Sends one `$management` request on `session` (fresh links each time) and returns the
/// response's status code and error condition.
async fn management(
    session: &mut SessionHandle<()>,
    queue: &str,
    op: &str,
    body: Vec<(&str, Value)>,
    associated: Option<&str>,
) -> (i32, Option<String>) {
    use fe2o3_amqp::types::{
        messaging::{ApplicationProperties, Properties},
        primitives::OrderedMap,
    };
    let node = format!("{queue}/$management");
    let tag = uuid::Uuid::new_v4().to_string();
    let mut sender = Sender::attach(session, format!("mgmt-snd-{tag}"), &node[..])
        .await
        .unwrap();
    let reply_to = format!("reply-{tag}");
    let mut receiver = Receiver::builder()
        .name(format!("mgmt-rcv-{tag}"))
        .source(&node[..])
        .target(&reply_to[..])
        .attach(session)
        .await
        .unwrap();
    let mut map = OrderedMap::new();
    for (k, v) in body {
        map.insert(Value::String(k.to_owned()), v);
    }
    let mut props = ApplicationProperties::builder().insert("operation", op);
    if let Some(a) = associated {
        props = props.insert("associated-link-name", a);
    }
    let req = Message::builder()
        .properties(Properties {
            message_id: Some(tag.clone().into()),
            reply_to: Some(reply_to.clone()),
            ..Default::default()
        })
        .application_properties(props.build())
        .value(Value::Map(map))
        .build();
    send_ok(&mut sender, req).await;
    let resp = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Value>())
        .await
        .expect("management answers")
        .unwrap();
    receiver.accept(&resp).await.unwrap();
    let ap = resp.message().application_properties.clone().unwrap();
    let status = match ap.get("statusCode") {
        Some(fe2o3_amqp::types::primitives::SimpleValue::Int(s)) => *s,
        other => panic!("no status code: {other:?}"),
    };
    let condition = match ap.get("errorCondition") {
        Some(fe2o3_amqp::types::primitives::SimpleValue::Symbol(s)) => Some(s.0.clone()),
        _ => None,
    };
    sender.close().await.unwrap();
    receiver.close().await.unwrap();
    (status, condition)
}

fn grouped(sid: &str, body: &str) -> Message<fe2o3_amqp::types::messaging::AmqpValue<String>> {
    Message::builder()
        .properties(fe2o3_amqp::types::messaging::Properties {
            group_id: Some(sid.into()),
            ..Default::default()
        })
        .value(body.to_owned())
        .build()
}

async fn session_receiver(
    session: &mut SessionHandle<()>,
    name: &str,
    queue: &str,
    sid: &str,
) -> Receiver {
    try_session_receiver(session, name, queue, Value::String(sid.into()))
        .await
        .unwrap()
}

/// Attaches a receiver named `name` to `queue` with session filter `filter` (a session id,
/// or `Value::Null` for the next available session).
async fn try_session_receiver(
    session: &mut SessionHandle<()>,
    name: &str,
    queue: &str,
    filter: Value,
) -> Result<Receiver, ReceiverAttachError> {
    let source = fe2o3_amqp::types::messaging::Source::builder()
        .address(queue)
        .add_to_filter_using_legacy_format("com.microsoft:session-filter", filter)
        .build();
    Receiver::builder()
        .name(name)
        .source(source)
        .verify_incoming_source(false)
        .attach(session)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_operations_belong_to_the_receiver_holding_the_session() {
    let cfg = EmulatorConfig::new().with_queue("s", session_queue(Duration::from_secs(2)));
    let emu = start_with(cfg).await;
    let (_owner_conn, mut owner) = connect(&emu, "owner").await;
    let mut sender = Sender::attach(&mut owner, "snd", "s").await.unwrap();
    send_ok(&mut sender, grouped("s1", "a")).await;
    let _held = session_receiver(&mut owner, "holder", "s", "s1").await;
    let sid = || vec![("session-id", Value::String("s1".into()))];
    let lost = Some("com.microsoft:session-lock-lost".to_owned());

    // The holder, named by its link or not, may renew and use the state.
    for assoc in [Some("holder"), None] {
        for op in [
            "com.microsoft:renew-session-lock",
            "com.microsoft:get-session-state",
        ] {
            let got = management(&mut owner, "s", op, sid(), assoc).await;
            assert_eq!(got, (200, None), "{op} by the holder ({assoc:?})");
        }
    }
    let mut set = sid();
    set.push(("session-state", Value::Binary(b"x".to_vec().into())));
    let got = management(
        &mut owner,
        "s",
        "com.microsoft:set-session-state",
        set.clone(),
        Some("holder"),
    )
    .await;
    assert_eq!(got, (200, None));

    // Another connection, or a link name that is not the holder, does not own the session.
    let (_other_conn, mut other) = connect(&emu, "other").await;
    for (on_other, assoc) in [
        (true, None),
        (true, Some("holder")),
        (false, Some("not-a-link")),
        (false, Some("snd")),
    ] {
        for (op, body) in [
            ("com.microsoft:renew-session-lock", sid()),
            ("com.microsoft:get-session-state", sid()),
            ("com.microsoft:set-session-state", set.clone()),
        ] {
            let who = if on_other { &mut other } else { &mut owner };
            let got = management(who, "s", op, body, assoc).await;
            assert_eq!(got, (410, lost.clone()), "{op} by a non-owner ({assoc:?})");
        }
    }

    // Once the lock expires the holder itself gets session-lock-lost, not message-lock-lost.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for op in [
        "com.microsoft:renew-session-lock",
        "com.microsoft:get-session-state",
    ] {
        let got = management(&mut owner, "s", op, sid(), Some("holder")).await;
        assert_eq!(got, (410, lost.clone()), "{op} after expiry");
    }
    // A lost message lock still says message-lock-lost; a bad request is an argument error.
    let token = Value::Uuid(uuid::Uuid::new_v4().into_bytes().into());
    let got = management(
        &mut owner,
        "s",
        "com.microsoft:renew-lock",
        vec![("lock-tokens", Value::Array(vec![token].into()))],
        None,
    )
    .await;
    assert_eq!(got, (410, Some("com.microsoft:message-lock-lost".into())));
    let got = management(
        &mut owner,
        "s",
        "com.microsoft:renew-session-lock",
        vec![],
        None,
    )
    .await;
    assert_eq!(got, (400, Some("com.microsoft:argument-error".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_can_be_created_and_deleted_while_serving() {
    let emu = start_with(EmulatorConfig::new()).await;
    let (mut conn, mut session) = connect(&emu, "c").await;
    let err = Sender::attach(&mut session, "early", "dyn")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotFound"), "{err:?}");
    assert!(emu.create_queue("bad/name", QueueConfig::new()).is_err());

    emu.create_queue("dyn", QueueConfig::new()).unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut sender = Sender::attach(&mut session, "snd", "dyn").await.unwrap();
    send_ok(
        &mut sender,
        Message::builder().value("kept".to_owned()).build(),
    )
    .await;
    // Creating it again changes nothing: the message is still there.
    emu.create_queue("dyn", QueueConfig::new().with_max_delivery_count(1))
        .unwrap();
    let main = main_queue("dyn");
    assert_eq!(emu.broker().count(&main), 1);
    assert_eq!(
        emu.broker().queue_config("dyn").unwrap(),
        QueueConfig::new()
    );
    let mut receiver = Receiver::attach(&mut session, "rcv", "dyn").await.unwrap();
    let d = receiver.recv::<String>().await.unwrap();
    receiver.accept(&d).await.unwrap();

    // A receiver waiting on the queue is woken by its deletion with amqp:not-found.
    let waiting = tokio::spawn(async move { receiver.recv::<String>().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    emu.delete_queue("dyn").unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting receiver was woken")
        .unwrap();
    assert!(format!("{woke:?}").contains("NotFound"), "{woke:?}");
    assert!(!emu.broker().has_queue("dyn"));
    assert!(emu.delete_queue("dyn").is_err());
    let mut session = Session::begin(&mut conn).await.unwrap();
    let err = Receiver::attach(&mut session, "late", "dyn")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotFound"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_keep_their_locks_until_expiry() {
    let cfg = EmulatorConfig::new()
        .with_queue(
            "q",
            QueueConfig::new().with_lock_duration(Duration::from_secs(2)),
        )
        .with_queue("s", session_queue(Duration::from_secs(2)));
    let emu = start_with(cfg).await;
    let (_conn, mut session) = connect(&emu, "c").await;
    let mut sender = Sender::attach(&mut session, "snd", "q").await.unwrap();
    send_ok(
        &mut sender,
        Message::builder().value("m".to_owned()).build(),
    )
    .await;
    let mut ssender = Sender::attach(&mut session, "ssnd", "s").await.unwrap();
    send_ok(&mut ssender, grouped("s1", "sm")).await;
    let mut receiver = Receiver::attach(&mut session, "rcv", "q").await.unwrap();
    let d = receiver.recv::<String>().await.unwrap();
    assert_eq!(d.body(), "m");
    let mut sreceiver = session_receiver(&mut session, "srcv", "s", "s1").await;
    let sd = sreceiver.recv::<String>().await.unwrap();
    assert_eq!(sd.body(), "sm");

    emu.drop_connections();
    let next = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<String>()).await;
    assert!(
        matches!(next, Ok(Err(_))),
        "the connection survived the cut"
    );

    // A new connection works, but the locks of the dropped one hold until they expire.
    let (_conn, mut session) = connect(&emu, "c2").await;
    let mut receiver = Receiver::attach(&mut session, "rcv2", "q").await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(700), receiver.recv::<String>()).await;
    assert!(
        early.is_err(),
        "a locked message was handed out again before expiry"
    );
    let err = try_session_receiver(&mut session, "srcv2", "s", Value::String("s1".into()))
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("session-cannot-be-locked"),
        "{err:?}"
    );

    // After expiry both come back, nothing lost, with their delivery count raised.
    let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<String>())
        .await
        .expect("the message came back after its lock expired")
        .unwrap();
    assert_eq!(d.body(), "m");
    assert_eq!(
        d.message().header.as_ref().map(|h| h.delivery_count),
        Some(1)
    );
    receiver.accept(&d).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sreceiver = session_receiver(&mut session, "srcv3", "s", "s1").await;
    let sd = sreceiver.recv::<String>().await.unwrap();
    assert_eq!(sd.body(), "sm");
    sreceiver.accept(&sd).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_keeps_its_session_lock_until_expiry() {
    let cfg = EmulatorConfig::new().with_queue("s", session_queue(Duration::from_secs(2)));
    let emu = start_with(cfg).await;
    let (peer, answer) = raw::session_receiver(emu.local_addr(), "s", "s1").await;
    assert!(
        matches!(&answer, fe2o3_amqp::types::performatives::Performative::Attach(a) if a.source.is_some()),
        "{answer:?}"
    );
    // The peer goes away without detaching, ending or closing anything.
    drop(peer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut conn, mut session) = connect(&emu, "c").await;
    let err = try_session_receiver(&mut session, "early", "s", Value::String("s1".into()))
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("session-cannot-be-locked"),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    let _r = session_receiver(&mut session, "late", "s", "s1").await;
}
