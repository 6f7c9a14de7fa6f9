//! The AMQP 1.0 glue: listener, SASL, connections, sessions, links, `$cbs` and `$management`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fe2o3_amqp_types::{
    definitions::{DeliveryTag, ErrorCondition, Fields, Handle, Role, SenderSettleMode},
    messaging::{
        Accepted, AmqpValue, Body, Data, DeliveryState, Header, Message, MessageAnnotations,
        Properties, Rejected,
        annotations::OwnedKey,
        message::__private::{Deserializable, Serializable},
    },
    performatives::{
        Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Performative, Transfer,
    },
    primitives::{OrderedMap, SimpleValue, Symbol, Timestamp},
    sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome},
};
use serde::Serialize;
use serde_amqp::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    time::Instant,
};
use uuid::Uuid;

use crate::{
    broker::{AmqpMessage, Broker, Delivered, EntityRef, IncomingMessage, Settlement, SubQueue},
    codec::DecodeError,
    error::EmulatorError,
    listen::{BoxRead, BoxWrite},
    sas::{TokenError, check_sas_token},
};

const SESSION_FILTER: &str = "com.microsoft:session-filter";
const LOCKED_UNTIL_UTC: &str = "com.microsoft:locked-until-utc";
const OPERATION_TIMEOUT: &str = "com.microsoft:timeout";
const BATCH_FORMAT: u32 = 0x8001_3700;
/// The largest frame we accept, announced in our `open`.
pub(crate) const OUR_MAX_FRAME: u32 = 256 * 1024;
/// How long a peer may take to establish the transport and finish the AMQP handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const LINK_CREDIT: u32 = 200;
const SESSION_WINDOW: u32 = 1_000_000;
/// .NET ticks (100 ns) between 0001-01-01 and the Unix epoch.
const DOTNET_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) key: Option<(String, String)>,
    pub(crate) next_owner: AtomicU64,
    /// Largest message (or batch) accepted, as advertised on every attach (the tier's).
    pub(crate) max_message_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("codec: {0}")]
    Codec(#[from] serde_amqp::Error),
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("frame of {0} bytes exceeds the max frame size")]
    FrameTooLarge(usize),
}

impl ConnError {
    /// The error a `close` names before the connection is dropped, for peers that broke
    /// the protocol (as opposed to vanishing).
    fn close_error(&self) -> Option<fe2o3_amqp_types::definitions::Error> {
        Some(match self {
            Self::Decode(e) => error("amqp:decode-error", e.to_string()),
            Self::Codec(_) => error("amqp:decode-error", "malformed encoding"),
            Self::FrameTooLarge(n) => error(
                "amqp:frame-size-too-small",
                format!("a frame of {n} bytes exceeds the max frame size {OUR_MAX_FRAME}"),
            ),
            Self::Protocol(why) => error("amqp:connection:framing-error", why.clone()),
            Self::Io(_) => return None,
        })
    }
}

// ---------------------------------------------------------------- framing

async fn read_frame(r: &mut BoxRead) -> Result<(u8, u16, Vec<u8>), ConnError> {
    let size = r.read_u32().await? as usize;
    if size > OUR_MAX_FRAME as usize {
        return Err(ConnError::FrameTooLarge(size));
    }
    if size < 8 {
        return Err(ConnError::Protocol(format!("bad frame size {size}")));
    }
    let mut buf = vec![0u8; size - 4];
    r.read_exact(&mut buf).await?;
    let doff = buf[0] as usize * 4;
    if doff < 8 || doff > size {
        return Err(ConnError::Protocol("bad data offset".into()));
    }
    let ftype = buf[1];
    let channel = u16::from_be_bytes([buf[2], buf[3]]);
    Ok((ftype, channel, buf[doff - 4..].to_vec()))
}

fn frame(ftype: u8, channel: u16, body: &[u8], payload: &[u8]) -> Vec<u8> {
    let size = 8 + body.len() + payload.len();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.push(2);
    out.push(ftype);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
    out
}

fn perf<T: Serialize>(channel: u16, p: &T) -> Result<Vec<u8>, ConnError> {
    Ok(frame(0, channel, &serde_amqp::to_vec(p)?, &[]))
}

// ---------------------------------------------------------------- connection

pub(crate) async fn serve(
    mut r: BoxRead,
    mut w: BoxWrite,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut cut: tokio::sync::watch::Receiver<u64>,
) -> Result<(), ConnError> {
    cut.mark_unchanged();
    // A peer that stalls before the AMQP header exchange completes is dropped.
    let authorized = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut r, &mut w, &shared)) => r
            .map_err(|_| ConnError::Protocol("handshake timed out".into()))??,
        _ = cut.changed() => return Ok(()),
    };

    let (tx, mut rx) = mpsc::channel::<Result<(u16, Vec<u8>), ConnError>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let res = read_frame(&mut r).await.map(|(_, ch, b)| (ch, b));
            let stop = res.is_err();
            if tx.send(res).await.is_err() || stop {
                break;
            }
        }
    });
    let mut conn = Conn {
        shared: shared.clone(),
        w,
        peer_max_frame: 512,
        sessions: HashMap::new(),
        owners: Vec::new(),
        heartbeat: None,
        authorized,
        pending: Vec::new(),
        retrying: None,
    };
    let mut changed = shared.broker.subscribe();
    let mut heartbeat: Option<tokio::time::Interval> = None;
    // Whether the connection ended with an AMQP close (or the emulator stopping). A
    // connection lost any other way (the peer vanished, or `drop_connections` cut it)
    // keeps its session locks until they expire, as Service Bus does.
    let mut clean = false;
    let result = loop {
        if heartbeat.is_none() {
            heartbeat = conn.heartbeat.map(|d| {
                let mut i = tokio::time::interval(d);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
        }
        let deadline = shared
            .broker
            .next_deadline()
            .into_iter()
            .chain(conn.pending.iter().map(|p| p.deadline))
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break Ok(()) };
                let (ch, body) = match msg { Ok(v) => v, Err(e) => break Err(e) };
                match conn.on_frame(ch, body).await {
                    Ok(true) => {}
                    Ok(false) => {
                        clean = true;
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                }
            }
            _ = changed.changed() => {}
            _ = stop.changed() => {
                clean = true;
                break Ok(());
            }
            _ = cut.changed() => break Ok(()),
            _ = tokio::time::sleep_until(deadline) => { shared.broker.tick(); }
            _ = async {
                match heartbeat.as_mut() {
                    Some(i) => { i.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                // The peer asked for traffic within its idle timeout: an empty frame.
                conn.w.write_all(&frame(0, 0, &[], &[])).await?;
            }
        }
        if let Err(e) = conn.pump().await {
            break Err(e);
        }
    };
    reader.abort();
    if let Some(err) = result.as_ref().err().and_then(ConnError::close_error) {
        // Say why before dropping a peer that broke the protocol; bounded, best effort.
        if let Ok(bytes) = perf(0, &Close { error: Some(err) }) {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.w.write_all(&bytes)).await;
        }
    }
    if clean {
        for o in &conn.owners {
            shared.broker.release_owner(*o);
        }
    }
    result
}

/// Protocol header exchange and optional SASL. Returns whether SASL PLAIN proved the key.
async fn handshake(r: &mut BoxRead, w: &mut BoxWrite, shared: &Shared) -> Result<bool, ConnError> {
    let mut hdr = [0u8; 8];
    r.read_exact(&mut hdr).await?;
    // Without a configured key every client is trusted; with one, the connection must
    // prove it knows the key (SASL PLAIN, or a verified `$cbs` token) before using entities.
    let mut authorized = shared.key.is_none();
    if &hdr[..4] != b"AMQP" {
        return Err(ConnError::Protocol("not AMQP".into()));
    }
    if hdr[4] == 3 {
        w.write_all(b"AMQP\x03\x01\x00\x00").await?;
        let mechs = SaslMechanisms {
            sasl_server_mechanisms: serde_amqp::primitives::Array(vec![
                Symbol::from("MSSBCBS"),
                Symbol::from("PLAIN"),
                Symbol::from("ANONYMOUS"),
            ]),
        };
        w.write_all(&frame(1, 0, &serde_amqp::to_vec(&mechs)?, &[]))
            .await?;
        let (_, _, body) = read_frame(r).await?;
        let init: SaslInit = crate::codec::decode(&body)?;
        let ok = sasl_ok(
            &init,
            shared.key.as_ref().map(|(n, k)| (n.as_str(), k.as_str())),
        );
        let outcome = SaslOutcome {
            code: if ok { SaslCode::Ok } else { SaslCode::Auth },
            additional_data: None,
        };
        w.write_all(&frame(1, 0, &serde_amqp::to_vec(&outcome)?, &[]))
            .await?;
        if !ok {
            return Err(ConnError::Protocol("SASL authentication failed".into()));
        }
        authorized |= init.mechanism.as_str() == "PLAIN";
        r.read_exact(&mut hdr).await?;
    }
    if hdr != *b"AMQP\x00\x01\x00\x00" {
        w.write_all(b"AMQP\x00\x01\x00\x00").await?;
        return Err(ConnError::Protocol("unsupported protocol header".into()));
    }
    w.write_all(&hdr).await?;
    Ok(authorized)
}

fn sasl_ok(init: &SaslInit, key: Option<(&str, &str)>) -> bool {
    match init.mechanism.as_str() {
        "ANONYMOUS" | "MSSBCBS" => true,
        "PLAIN" => {
            let Some((name, key)) = key else { return true };
            let resp = init
                .initial_response
                .as_ref()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default();
            let mut parts = resp.split(|b| *b == 0);
            let _authzid = parts.next();
            let user = parts.next().unwrap_or_default();
            let pass = parts.next().unwrap_or_default();
            bool::from(ct_eq_hashed(user, name.as_bytes()) & ct_eq_hashed(pass, key.as_bytes()))
        }
        _ => false,
    }
}

/// Decodes a (size-checked) performative. rhea, the JavaScript SDK's AMQP stack, writes
/// the keys of an error's `info` map (the dead-letter reason of a rejected outcome) as
/// strings where the spec says symbols; such frames are re-read with those keys as symbols.
fn decode_performative(bytes: &[u8]) -> Result<Performative, ConnError> {
    match serde_amqp::from_slice(bytes) {
        Ok(p) => Ok(p),
        Err(first) => {
            let Ok(mut v) = serde_amqp::from_slice::<Value>(bytes) else {
                return Err(first.into());
            };
            symbolize_error_info(&mut v, 0);
            serde_amqp::from_slice(&serde_amqp::to_vec(&v)?).map_err(|_| first.into())
        }
    }
}

/// Turns string keys of every `amqp:error` info map inside `v` into symbols.
fn symbolize_error_info(v: &mut Value, depth: usize) {
    use serde_amqp::descriptor::Descriptor;
    if depth > crate::codec::MAX_DEPTH {
        return;
    }
    match v {
        Value::Described(d) => {
            let is_error = matches!(&d.descriptor, Descriptor::Code(0x1d))
                || matches!(&d.descriptor, Descriptor::Name(n) if n.0 == "amqp:error:list");
            if let (true, Value::List(fields)) = (is_error, &mut d.value)
                && let Some(Value::Map(info)) = fields.get_mut(2)
            {
                let entries: Vec<(Value, Value)> = std::mem::take(info).into_iter().collect();
                for (k, val) in entries {
                    let k = match k {
                        Value::String(s) => Value::Symbol(Symbol::from(s)),
                        other => other,
                    };
                    info.insert(k, val);
                }
            }
            symbolize_error_info(&mut d.value, depth + 1);
        }
        Value::List(items) => items
            .iter_mut()
            .for_each(|i| symbolize_error_info(i, depth + 1)),
        _ => {}
    }
}

/// Compares two secrets in constant time: their SHA-256 digests are compared with
/// `subtle`, so neither the position of the first difference nor the length leaks.
fn ct_eq_hashed(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    let da = ring::digest::digest(&ring::digest::SHA256, a);
    let db = ring::digest::digest(&ring::digest::SHA256, b);
    da.as_ref().ct_eq(db.as_ref())
}

enum LinkKind {
    /// Client sends messages into a queue.
    QueueIn { queue: String },
    /// Client receives from a queue or its dead-letter queue.
    QueueOut {
        entity: EntityRef,
        session: Option<String>,
        peek_lock: bool,
        owner: u64,
    },
    /// Client sends requests to `$cbs` or `<entity>/$management`.
    NodeIn { node: Node },
    /// Client receives responses from a node.
    NodeOut { pending: VecDeque<Vec<u8>> },
}

#[derive(Debug, Clone)]
enum Node {
    Cbs,
    Management(EntityRef),
}

struct Link {
    /// The link name (management requests name their receiver by it).
    name: String,
    /// The node address (for NodeOut: the source address it listens to).
    address: String,
    /// The reply address of a NodeOut link (its target address).
    reply_to: Option<String>,
    kind: LinkKind,
    credit: u32,
    delivery_count: u32,
    drain: bool,
    /// Our role's settle mode: we settle our transfers up-front.
    presettle: bool,
    partial: Option<(Transfer, Vec<u8>)>,
    /// Credit we granted (incoming links).
    granted: u32,
}

struct OutDelivery {
    token: Uuid,
    handle: u32,
}

struct Sess {
    remote_channel: u16,
    next_outgoing_id: u32,
    next_incoming_id: u32,
    next_delivery_id: u32,
    links: HashMap<u32, Link>,
    unsettled: HashMap<u32, OutDelivery>,
}

struct Conn {
    shared: Arc<Shared>,
    w: BoxWrite,
    peer_max_frame: usize,
    sessions: HashMap<u16, Sess>,
    owners: Vec<u64>,
    heartbeat: Option<Duration>,
    authorized: bool,
    /// Next-available session receivers waiting for a session.
    pending: Vec<PendingAttach>,
    /// Owner and deadline of the pending attach being retried.
    retrying: Option<(u64, Instant)>,
}

struct PendingAttach {
    ch: u16,
    attach: Attach,
    deadline: Instant,
    owner: u64,
}

/// How long a next-available session receiver may wait: the client's `com.microsoft:timeout`
/// link property in milliseconds, else 60 s.
fn session_wait(attach: &Attach) -> Duration {
    let ms = attach
        .properties
        .as_ref()
        .and_then(|p| p.get(&Symbol::from(OPERATION_TIMEOUT)))
        .and_then(|v| match v {
            Value::Uint(x) => Some(u64::from(*x)),
            Value::Ulong(x) => Some(*x),
            Value::Int(x) => u64::try_from(*x).ok(),
            Value::Long(x) => u64::try_from(*x).ok(),
            _ => None,
        })
        .unwrap_or(60_000);
    Duration::from_millis(ms.min(600_000))
}

/// The address a link names (target for a client sender, source for a client receiver)
/// and, for a receiver, its target address (where `$cbs`/`$management` replies go).
fn link_addresses(attach: &Attach) -> (String, Option<String>) {
    let target = attach.target.as_ref().and_then(|t| match t.as_ref() {
        fe2o3_amqp_types::messaging::TargetArchetype::Target(t) => t.address.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    });
    if attach.role == Role::Sender {
        return (target.unwrap_or_default(), None);
    }
    let source = attach.source.as_ref().and_then(|s| s.address.clone());
    (source.unwrap_or_default(), target)
}

/// The refusal of a receiver whose kind does not match the entity, if it does not.
fn kind_mismatch(
    sessionful: bool,
    has_filter: bool,
    path: &str,
) -> Option<fe2o3_amqp_types::definitions::Error> {
    match (sessionful, has_filter) {
        (true, false) => Some(error(
            "amqp:not-allowed",
            format!(
                "The entity `{path}` requires sessions: a receiver without a session \
                 filter (a non-sessionful receiver) cannot attach to it."
            ),
        )),
        (false, true) => Some(error(
            "amqp:not-allowed",
            format!(
                "The entity `{path}` does not require sessions: a sessionful receiver \
                 (one with a session filter) cannot attach to it."
            ),
        )),
        _ => None,
    }
}

fn parse_address(addr: &str) -> String {
    let mut a = addr;
    if let Some(i) = a.find("://") {
        a = &a[i + 3..];
        a = a.find('/').map(|j| &a[j..]).unwrap_or("");
    }
    a.trim_matches('/').to_owned()
}

fn entity_of(path: &str) -> Option<EntityRef> {
    let mut parts = path.split('/');
    let queue = parts.next()?.to_owned();
    let sub = match parts.next() {
        None => SubQueue::Main,
        Some(s) if s.eq_ignore_ascii_case("$deadletterqueue") => SubQueue::DeadLetter,
        Some(_) => return None,
    };
    if parts.next().is_some() || queue.is_empty() {
        return None;
    }
    Some(EntityRef { queue, sub })
}

/// An AMQP error as Service Bus sends it: condition, description and an `info` map (the
/// official SDKs read `info` unconditionally; without it the Python SDK's refused sends hang).
pub(crate) fn error(cond: &str, desc: impl Into<String>) -> fe2o3_amqp_types::definitions::Error {
    let mut info = OrderedMap::new();
    info.insert(
        Symbol::from("com.microsoft:tracking-id"),
        Value::String(Uuid::new_v4().to_string()),
    );
    fe2o3_amqp_types::definitions::Error {
        condition: ErrorCondition::Custom(Symbol::from(cond)),
        description: Some(desc.into()),
        info: Some(info.into()),
    }
}

fn broker_error(e: &EmulatorError) -> fe2o3_amqp_types::definitions::Error {
    let cond = match e {
        EmulatorError::EntityNotFound { .. } => "amqp:not-found",
        EmulatorError::LockLost => "com.microsoft:message-lock-lost",
        EmulatorError::SessionLockLost => "com.microsoft:session-lock-lost",
        EmulatorError::SessionCannotBeLocked { .. } => "com.microsoft:session-cannot-be-locked",
        EmulatorError::NoSessionAvailable => "com.microsoft:timeout",
        EmulatorError::QuotaExceeded { .. } => "amqp:resource-limit-exceeded",
        EmulatorError::NotAllowed { .. } => "amqp:not-allowed",
        _ => "amqp:invalid-field",
    };
    error(cond, e.to_string())
}

fn status_of(e: &EmulatorError) -> i32 {
    match e {
        EmulatorError::EntityNotFound { .. } => 404,
        EmulatorError::LockLost | EmulatorError::SessionLockLost => 410,
        EmulatorError::SessionCannotBeLocked { .. } => 409,
        EmulatorError::NoSessionAvailable => 408,
        EmulatorError::QuotaExceeded { .. } => 403,
        _ => 400,
    }
}

/// The `errorCondition` of a failed `$management` response.
fn management_condition_of(e: &EmulatorError) -> &'static str {
    match e {
        EmulatorError::EntityNotFound { .. } => "amqp:not-found",
        EmulatorError::LockLost => "com.microsoft:message-lock-lost",
        EmulatorError::SessionLockLost => "com.microsoft:session-lock-lost",
        EmulatorError::SessionCannotBeLocked { .. } => "com.microsoft:session-cannot-be-locked",
        EmulatorError::NoSessionAvailable => "com.microsoft:timeout",
        EmulatorError::QuotaExceeded { .. } => "amqp:resource-limit-exceeded",
        EmulatorError::NotAllowed { .. } => "amqp:not-allowed",
        _ => "com.microsoft:argument-error",
    }
}

/// The `errorCondition` of a failed `$cbs` response.
fn cbs_condition_of(status: i32) -> &'static str {
    match status {
        401 => "amqp:unauthorized-access",
        400 => "com.microsoft:argument-error",
        _ => "amqp:internal-error",
    }
}

impl Conn {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), ConnError> {
        self.w.write_all(&bytes).await?;
        Ok(())
    }

    /// Handles one frame body; `Ok(false)` when the peer closed the connection.
    async fn on_frame(&mut self, ch: u16, body: Vec<u8>) -> Result<bool, ConnError> {
        if body.is_empty() {
            return Ok(true);
        }
        let n = crate::codec::check_first_value(&body)?;
        let p = decode_performative(&body[..n])?;
        let payload = body[n..].to_vec();
        match p {
            Performative::Open(open) => self.on_open(open).await?,
            Performative::Begin(begin) => self.on_begin(ch, begin).await?,
            Performative::Attach(attach) => self.on_attach(ch, attach).await?,
            Performative::Flow(flow) => self.on_flow(ch, flow).await?,
            Performative::Transfer(t) => self.on_transfer(ch, t, payload).await?,
            Performative::Disposition(d) => self.on_disposition(ch, d).await?,
            Performative::Detach(d) => self.on_detach(ch, d).await?,
            Performative::End(_) => self.on_end(ch).await?,
            Performative::Close(_) => {
                self.send(perf(0, &Close { error: None })?).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn on_open(&mut self, open: Open) -> Result<(), ConnError> {
        self.peer_max_frame = (open.max_frame_size.0 as usize).clamp(512, 16 * 1024 * 1024);
        self.heartbeat = open
            .idle_time_out
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(t as u64 / 2));
        let reply = Open {
            container_id: format!("servicebus-emulator-{}", Uuid::new_v4()),
            hostname: None,
            max_frame_size: OUR_MAX_FRAME.into(),
            channel_max: open.channel_max,
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.send(perf(0, &reply)?).await
    }

    async fn on_begin(&mut self, ch: u16, begin: Begin) -> Result<(), ConnError> {
        let reply = Begin {
            remote_channel: Some(ch),
            next_outgoing_id: 0,
            incoming_window: SESSION_WINDOW,
            outgoing_window: SESSION_WINDOW,
            handle_max: begin.handle_max,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.sessions.insert(
            ch,
            Sess {
                remote_channel: ch,
                next_outgoing_id: 0,
                next_incoming_id: begin.next_outgoing_id,
                next_delivery_id: 0,
                links: HashMap::new(),
                unsettled: HashMap::new(),
            },
        );
        self.send(perf(ch, &reply)?).await
    }

    async fn on_detach(&mut self, ch: u16, d: Detach) -> Result<(), ConnError> {
        let removed = self.sessions.get_mut(&ch).and_then(|s| {
            // Deliveries of a closed link can no longer be settled through it.
            s.unsettled.retain(|_, od| od.handle != d.handle.0);
            s.links.remove(&d.handle.0)
        });
        // A detach for a link we do not hold answers the detach we sent when we refused
        // it: nothing more to say.
        let Some(link) = removed else {
            // A receiver that gives up while waiting for a session.
            if let Some(i) = self
                .pending
                .iter()
                .position(|p| p.ch == ch && p.attach.handle == d.handle)
            {
                let p = self.pending.remove(i);
                let e = EmulatorError::NoSessionAvailable;
                self.refuse_attach(ch, p.attach, broker_error(&e)).await?;
            }
            return Ok(());
        };
        if let LinkKind::QueueOut { owner, .. } = link.kind {
            self.shared.broker.release_owner(owner);
        }
        let reply = Detach {
            handle: d.handle,
            closed: d.closed,
            error: None,
        };
        self.send(perf(ch, &reply)?).await
    }

    async fn on_end(&mut self, ch: u16) -> Result<(), ConnError> {
        self.pending.retain(|p| p.ch != ch);
        if let Some(s) = self.sessions.remove(&ch) {
            for l in s.links.values() {
                if let LinkKind::QueueOut { owner, .. } = l.kind {
                    self.shared.broker.release_owner(owner);
                }
            }
        }
        self.send(perf(ch, &End { error: None })?).await
    }

    async fn refuse_attach(
        &mut self,
        ch: u16,
        attach: Attach,
        err: fe2o3_amqp_types::definitions::Error,
    ) -> Result<(), ConnError> {
        let handle = attach.handle.clone();
        let role = attach.role.clone();
        let reply = Attach {
            name: attach.name,
            handle: attach.handle,
            role: match role {
                Role::Sender => Role::Receiver,
                Role::Receiver => Role::Sender,
            },
            snd_settle_mode: attach.snd_settle_mode,
            rcv_settle_mode: attach.rcv_settle_mode,
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.send(perf(ch, &reply)?).await?;
        let det = Detach {
            handle,
            closed: true,
            error: Some(err),
        };
        self.send(perf(ch, &det)?).await?;
        Ok(())
    }

    async fn on_attach(&mut self, ch: u16, attach: Attach) -> Result<(), ConnError> {
        let client_sends = attach.role == Role::Sender;
        let (address, reply_to) = link_addresses(&attach);
        let path = parse_address(&address);
        if path != "$cbs" && !self.authorized {
            let err = error(
                "amqp:unauthorized-access",
                "put a valid SAS token on $cbs before attaching to an entity",
            );
            return self.refuse_attach(ch, attach, err).await;
        }
        let is_node = path == "$cbs" || path.ends_with("/$management") || path == "$management";
        let (kind, properties, attach) = if is_node {
            match self.node_kind(&path, client_sends) {
                Ok(kind) => (kind, None, attach),
                Err(err) => return self.refuse_attach(ch, attach, err).await,
            }
        } else {
            let Some(entity) = entity_of(&path).filter(|e| self.shared.broker.has_queue(&e.queue))
            else {
                let err = error(
                    "amqp:not-found",
                    format!("The messaging entity `{path}` could not be found."),
                );
                return self.refuse_attach(ch, attach, err).await;
            };
            if client_sends {
                if entity.sub != SubQueue::Main {
                    let err = error("amqp:not-allowed", "cannot send to a dead-letter queue");
                    return self.refuse_attach(ch, attach, err).await;
                }
                let queue = entity.queue;
                (LinkKind::QueueIn { queue }, None, attach)
            } else {
                match self.receiver_kind(ch, attach, entity, &path).await? {
                    Some(accepted) => accepted,
                    // Refused, or waiting for a session.
                    None => return Ok(()),
                }
            }
        };
        self.accept_attach(ch, attach, kind, properties, path, reply_to)
            .await
    }

    /// The link kind of a `$cbs` or `$management` node link, or why it is refused.
    fn node_kind(
        &self,
        path: &str,
        client_sends: bool,
    ) -> Result<LinkKind, fe2o3_amqp_types::definitions::Error> {
        let node = if path == "$cbs" {
            Node::Cbs
        } else {
            match entity_of(path.trim_end_matches("/$management")) {
                Some(e) if self.shared.broker.has_queue(&e.queue) => Node::Management(e),
                _ => return Err(error("amqp:not-found", format!("no entity at `{path}`"))),
            }
        };
        Ok(if client_sends {
            LinkKind::NodeIn { node }
        } else {
            LinkKind::NodeOut {
                pending: VecDeque::new(),
            }
        })
    }

    /// Sets up a receiver on a queue: checks its kind against the entity and, on a
    /// session queue, locks a session. `None` when the attach was refused or is waiting
    /// for a session (next available).
    async fn receiver_kind(
        &mut self,
        ch: u16,
        mut attach: Attach,
        entity: EntityRef,
        path: &str,
    ) -> Result<Option<(LinkKind, Option<Fields>, Attach)>, ConnError> {
        let (owner, deadline) = match self.retrying.take() {
            Some((owner, deadline)) => (owner, Some(deadline)),
            None => {
                let owner = self.shared.next_owner.fetch_add(1, Ordering::Relaxed);
                self.owners.push(owner);
                (owner, None)
            }
        };
        let peek_lock = attach.snd_settle_mode != SenderSettleMode::Settled;
        let cfg = self
            .shared
            .broker
            .queue_config(&entity.queue)
            .unwrap_or_default();
        let filter = attach
            .source
            .as_ref()
            .and_then(|s| s.filter.as_ref())
            .and_then(|f| f.get(&Symbol::from(SESSION_FILTER)).cloned());
        // Service Bus refuses a receiver whose kind does not match the entity, with
        // `amqp:not-allowed` on the detach (the SDKs raise an invalid-operation error):
        // only the main queue of an entity that requires sessions is sessionful, and a
        // receiver there must name a session filter.
        let sessionful = cfg.requires_session && entity.sub == SubQueue::Main;
        if let Some(err) = kind_mismatch(sessionful, filter.is_some(), path) {
            self.refuse_attach(ch, attach, err).await?;
            return Ok(None);
        }
        let mut session = None;
        let mut properties = None;
        if sessionful {
            let wanted = match &filter {
                None | Some(Value::Null) => None,
                Some(v) => filter_string(v),
            };
            let locked = self
                .shared
                .broker
                .accept_session(&entity.queue, wanted.as_deref(), owner);
            match locked {
                Ok(lock) => {
                    let ticks = unix_to_ticks(lock.locked_until);
                    let mut props = OrderedMap::new();
                    props.insert(Symbol::from(LOCKED_UNTIL_UTC), Value::Long(ticks));
                    properties = Some(props);
                    if let Some(src) = attach.source.as_mut() {
                        let set = src.filter.get_or_insert_with(OrderedMap::new);
                        let sid = Value::String(lock.session_id.clone());
                        set.insert(Symbol::from(SESSION_FILTER), sid);
                    }
                    session = Some(lock.session_id);
                }
                // "Next available" waits for a session, up to the client's
                // `com.microsoft:timeout` (60 s when it names none).
                Err(EmulatorError::NoSessionAvailable) if wanted.is_none() => {
                    self.wait_for_session(ch, attach, owner, deadline).await?;
                    return Ok(None);
                }
                Err(e) => {
                    self.refuse_attach(ch, attach, broker_error(&e)).await?;
                    return Ok(None);
                }
            }
        }
        let kind = LinkKind::QueueOut {
            entity,
            session,
            peek_lock,
            owner,
        };
        Ok(Some((kind, properties, attach)))
    }

    /// Parks a next-available session receiver until its deadline, or refuses it when the
    /// deadline has passed.
    async fn wait_for_session(
        &mut self,
        ch: u16,
        attach: Attach,
        owner: u64,
        deadline: Option<Instant>,
    ) -> Result<(), ConnError> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + session_wait(&attach));
        if Instant::now() < deadline {
            self.pending.push(PendingAttach {
                ch,
                attach,
                deadline,
                owner,
            });
            return Ok(());
        }
        let e = EmulatorError::NoSessionAvailable;
        self.refuse_attach(ch, attach, broker_error(&e)).await
    }

    /// Answers an accepted attach and registers the link (granting credit to senders).
    async fn accept_attach(
        &mut self,
        ch: u16,
        attach: Attach,
        kind: LinkKind,
        properties: Option<Fields>,
        path: String,
        reply_to: Option<String>,
    ) -> Result<(), ConnError> {
        let handle = attach.handle.0;
        let client_sends = attach.role == Role::Sender;
        let presettle = attach.snd_settle_mode == SenderSettleMode::Settled;
        let reply = Attach {
            name: attach.name.clone(),
            handle: attach.handle.clone(),
            role: if client_sends {
                Role::Receiver
            } else {
                Role::Sender
            },
            snd_settle_mode: attach.snd_settle_mode.clone(),
            rcv_settle_mode: attach.rcv_settle_mode.clone(),
            source: attach.source.clone(),
            target: attach.target.clone(),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: if client_sends { None } else { Some(0) },
            max_message_size: Some(self.shared.max_message_size as u64),
            offered_capabilities: None,
            desired_capabilities: None,
            properties,
        };
        self.send(perf(ch, &reply)?).await?;
        let initial = attach.initial_delivery_count.unwrap_or(0);
        let link = Link {
            name: attach.name,
            address: path,
            reply_to,
            kind,
            credit: 0,
            delivery_count: if client_sends { initial } else { 0 },
            drain: false,
            presettle,
            partial: None,
            granted: 0,
        };
        let Some(sess) = self.sessions.get_mut(&ch) else {
            return Err(ConnError::Protocol("attach on unknown session".into()));
        };
        sess.links.insert(handle, link);
        if client_sends {
            self.grant(ch, handle).await?;
        }
        Ok(())
    }

    /// Gives an incoming link its credit back.
    async fn grant(&mut self, ch: u16, handle: u32) -> Result<(), ConnError> {
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        let Some(l) = s.links.get_mut(&handle) else {
            return Ok(());
        };
        l.granted = LINK_CREDIT;
        let flow = Flow {
            next_incoming_id: Some(s.next_incoming_id),
            incoming_window: SESSION_WINDOW,
            next_outgoing_id: s.next_outgoing_id,
            outgoing_window: SESSION_WINDOW,
            handle: Some(Handle(handle)),
            delivery_count: Some(l.delivery_count),
            link_credit: Some(LINK_CREDIT),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        let bytes = perf(s.remote_channel, &flow)?;
        self.send(bytes).await
    }

    async fn on_flow(&mut self, ch: u16, flow: Flow) -> Result<(), ConnError> {
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        let Some(h) = flow.handle.as_ref().map(|h| h.0) else {
            if flow.echo {
                let f = session_flow(s);
                let b = perf(ch, &f)?;
                self.send(b).await?;
            }
            return Ok(());
        };
        let Some(l) = s.links.get_mut(&h) else {
            return Ok(());
        };
        let outgoing = matches!(l.kind, LinkKind::QueueOut { .. } | LinkKind::NodeOut { .. });
        if let (Some(credit), true) = (flow.link_credit, outgoing) {
            let their_count = flow.delivery_count.unwrap_or(l.delivery_count);
            l.credit = their_count
                .wrapping_add(credit)
                .wrapping_sub(l.delivery_count);
            l.drain = flow.drain;
        }
        if flow.echo {
            let mut f = session_flow(s);
            let l = s.links.get(&h).expect("present");
            f.handle = Some(Handle(h));
            f.delivery_count = Some(l.delivery_count);
            f.link_credit = Some(l.credit);
            let b = perf(ch, &f)?;
            self.send(b).await?;
        }
        Ok(())
    }

    async fn on_transfer(
        &mut self,
        ch: u16,
        t: Transfer,
        payload: Vec<u8>,
    ) -> Result<(), ConnError> {
        let max = self.shared.max_message_size;
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        s.next_incoming_id = s.next_incoming_id.wrapping_add(1);
        let Some(l) = s.links.get_mut(&t.handle.0) else {
            return Ok(());
        };
        let (first, mut data) = match l.partial.take() {
            Some((first, mut data)) => {
                // Past the advertised maximum the rest is dropped; the delivery is refused
                // when its last frame arrives.
                if data.len() <= max {
                    data.extend_from_slice(&payload);
                }
                (first, data)
            }
            None => (t.clone(), payload),
        };
        if t.more {
            l.partial = Some((first, std::mem::take(&mut data)));
            return Ok(());
        }
        l.delivery_count = l.delivery_count.wrapping_add(1);
        l.granted = l.granted.saturating_sub(1);
        let low = l.granted < LINK_CREDIT / 2;
        let settled = first.settled.unwrap_or(false);
        let delivery_id = first.delivery_id.unwrap_or(0);
        let format = first.message_format.unwrap_or(0);
        let kind = match &l.kind {
            LinkKind::QueueIn { queue } => Some(Err(queue.clone())),
            LinkKind::NodeIn { node } => Some(Ok(node.clone())),
            _ => None,
        };
        let outcome: DeliveryState = match kind {
            _ if data.len() > max => DeliveryState::Rejected(Rejected {
                error: Some(error(
                    "amqp:link:message-size-exceeded",
                    format!("messages are limited to {max} bytes"),
                )),
            }),
            Some(Err(queue)) => match decode_incoming(format, &data) {
                Ok(msgs) => match self.shared.broker.send(&queue, msgs) {
                    Ok(_) => DeliveryState::Accepted(Accepted {}),
                    Err(e) => DeliveryState::Rejected(Rejected {
                        error: Some(broker_error(&e)),
                    }),
                },
                Err(reason) => DeliveryState::Rejected(Rejected {
                    error: Some(error("amqp:decode-error", reason)),
                }),
            },
            Some(Ok(node)) => match crate::codec::decode::<Deserializable<AmqpMessage>>(&data) {
                Ok(Deserializable(req)) => {
                    self.on_request(ch, &node, req).await?;
                    DeliveryState::Accepted(Accepted {})
                }
                Err(_) => DeliveryState::Rejected(Rejected {
                    error: Some(error("amqp:decode-error", "malformed request")),
                }),
            },
            None => DeliveryState::Rejected(Rejected {
                error: Some(error("amqp:not-allowed", "link does not accept transfers")),
            }),
        };
        if !settled {
            let d = Disposition {
                role: Role::Receiver,
                first: delivery_id,
                last: None,
                settled: true,
                state: Some(outcome),
                batchable: false,
            };
            self.send(perf(ch, &d)?).await?;
        }
        if low {
            self.grant(ch, t.handle.0).await?;
        }
        Ok(())
    }

    async fn on_disposition(&mut self, ch: u16, d: Disposition) -> Result<(), ConnError> {
        if d.role != Role::Receiver {
            return Ok(());
        }
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        let last = d.last.unwrap_or(d.first);
        let mut replies = Vec::new();
        // Walk the deliveries we track inside the range, not the (peer-chosen) range itself.
        let mut ids: Vec<u32> = s
            .unsettled
            .keys()
            .copied()
            .filter(|id| id.wrapping_sub(d.first) <= last.wrapping_sub(d.first))
            .collect();
        ids.sort_by_key(|id| id.wrapping_sub(d.first));
        for id in ids {
            if let Some(od) = s.unsettled.remove(&id) {
                let res = match d.state.as_ref().map(settlement_of) {
                    Some(Ok(how)) => self.shared.broker.settle(od.token, how),
                    // Not applied; the message keeps its lock until it expires.
                    Some(Err(e)) => Err(e),
                    None => Ok(()),
                };
                if !d.settled {
                    let state = match (&res, &d.state) {
                        // The echo names the outcome applied. A rejected outcome that carries an
                        // error means "could not apply", so a dead-letter echo has none.
                        (Ok(()), Some(DeliveryState::Rejected(_))) => {
                            DeliveryState::Rejected(Rejected { error: None })
                        }
                        (Ok(()), Some(st)) => st.clone(),
                        (Ok(()), None) => DeliveryState::Accepted(Accepted {}),
                        (Err(e), _) => DeliveryState::Rejected(Rejected {
                            error: Some(broker_error(e)),
                        }),
                    };
                    replies.push(Disposition {
                        role: Role::Sender,
                        first: id,
                        last: None,
                        settled: true,
                        state: Some(state),
                        batchable: false,
                    });
                }
            }
        }
        for r in replies {
            self.send(perf(ch, &r)?).await?;
        }
        Ok(())
    }

    /// Handles one `$cbs` / `$management` request and queues the response.
    async fn on_request(
        &mut self,
        ch: u16,
        node: &Node,
        req: AmqpMessage,
    ) -> Result<(), ConnError> {
        let op = app_prop_str(&req, "operation").unwrap_or_default();
        let (status, desc, body, condition): (i32, String, Value, &str) = match node {
            Node::Cbs => {
                let (status, desc, body) = self.cbs(&req);
                self.authorized |= status == 200;
                (status, desc, body, cbs_condition_of(status))
            }
            Node::Management(entity) => {
                let associated = app_prop_str(&req, "associated-link-name");
                let owner_of =
                    |sid: &str| self.session_owner(&entity.queue, sid, associated.as_deref());
                match crate::management::handle(&self.shared.broker, entity, &op, &req, &owner_of) {
                    Ok(v) => (
                        if matches!(v, Value::Null) && op == "com.microsoft:peek-message" {
                            204
                        } else {
                            200
                        },
                        "OK".into(),
                        v,
                        "",
                    ),
                    Err(e) => (
                        status_of(&e),
                        e.to_string(),
                        Value::Null,
                        management_condition_of(&e),
                    ),
                }
            }
        };
        let props = Properties {
            correlation_id: req.properties.as_ref().and_then(|p| p.message_id.clone()),
            ..Default::default()
        };
        let mut ap = OrderedMap::new();
        ap.insert("statusCode".to_owned(), SimpleValue::Int(status));
        ap.insert(
            "statusDescription".to_owned(),
            SimpleValue::String(desc.clone()),
        );
        ap.insert("status-code".to_owned(), SimpleValue::Int(status));
        ap.insert("status-description".to_owned(), SimpleValue::String(desc));
        if status >= 300 {
            ap.insert(
                "errorCondition".to_owned(),
                SimpleValue::Symbol(Symbol::from(condition)),
            );
            ap.insert(
                "error-condition".to_owned(),
                SimpleValue::Symbol(Symbol::from(condition)),
            );
        }
        let resp: Message<AmqpValue<Value>> = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(props),
            application_properties: Some(fe2o3_amqp_types::messaging::ApplicationProperties(ap)),
            body: AmqpValue(body),
            footer: None,
        };
        let bytes = serde_amqp::to_vec(&Serializable(resp))?;
        let reply_to = req.properties.as_ref().and_then(|p| p.reply_to.clone());
        let node_addr = match node {
            Node::Cbs => "$cbs".to_owned(),
            Node::Management(e) => match e.sub {
                SubQueue::Main => format!("{}/$management", e.queue),
                SubQueue::DeadLetter => format!("{}/$deadletterqueue/$management", e.queue),
            },
        };
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        // The response goes to the node's receiver whose target address is the request's
        // reply-to; rhea (the JavaScript SDK) leaves the target empty and names the link
        // instead, so a link of that name (or, failing that, one with no target) serves too.
        let rank = |l: &Link| match &reply_to {
            None => Some(0),
            Some(r) if l.reply_to.as_ref() == Some(r) => Some(0),
            Some(r) if &l.name == r => Some(1),
            Some(_) if l.reply_to.is_none() => Some(2),
            Some(_) => None,
        };
        let target = s
            .links
            .values_mut()
            .filter(|l| matches!(l.kind, LinkKind::NodeOut { .. }))
            .filter(|l| l.address.eq_ignore_ascii_case(&node_addr))
            .filter_map(|l| rank(l).map(|r| (r, l)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, l)| l);
        if let Some(LinkKind::NodeOut { pending }) = target.map(|l| &mut l.kind) {
            pending.push_back(bytes);
        }
        Ok(())
    }

    /// The receiver on this connection a session operation speaks for: the link named by
    /// `associated-link-name` when the request carries one, else whichever of this
    /// connection's receivers holds the session. `None` when there is no such receiver.
    fn session_owner(&self, queue: &str, sid: &str, associated: Option<&str>) -> Option<u64> {
        let receivers = self.sessions.values().flat_map(|s| s.links.values());
        match associated {
            Some(name) => receivers
                .filter(|l| l.name == name)
                .find_map(|l| match &l.kind {
                    LinkKind::QueueOut { owner, .. } => Some(*owner),
                    _ => None,
                }),
            None => self
                .owners
                .iter()
                .copied()
                .find(|o| self.shared.broker.holds_session(queue, sid, *o)),
        }
    }

    fn cbs(&self, req: &AmqpMessage) -> (i32, String, Value) {
        let op = app_prop_str(req, "operation").unwrap_or_default();
        if op != "put-token" {
            return (
                400,
                format!("unsupported $cbs operation `{op}`"),
                Value::Null,
            );
        }
        let token = match &req.body {
            Body::Value(AmqpValue(Value::String(s))) => s.clone(),
            _ => return (400, "put-token body must be a string".into(), Value::Null),
        };
        let key = self
            .shared
            .key
            .as_ref()
            .map(|(n, k)| (n.as_str(), k.as_str()));
        // The Python SDK labels SAS tokens `jwt`, so the token's own shape decides.
        if !token.starts_with("SharedAccessSignature ") {
            // Bearer tokens are opaque here; accept them only when no key is configured.
            return if key.is_none() {
                (200, "OK".into(), Value::Null)
            } else {
                (
                    401,
                    "only SAS tokens are accepted when a key is configured".into(),
                    Value::Null,
                )
            };
        }
        match check_sas_token(&token, key, SystemTime::now()) {
            Ok(()) => (200, "OK".into(), Value::Null),
            Err(TokenError::Malformed) => (400, "malformed SAS token".into(), Value::Null),
            Err(TokenError::Expired) => (401, "SAS token expired".into(), Value::Null),
            Err(TokenError::BadSignature) => (
                401,
                "InvalidSignature: the token has an invalid signature".into(),
                Value::Null,
            ),
        }
    }

    /// Detaches links to deleted queues, and session receivers whose session lock ran out,
    /// as Service Bus does.
    async fn detach_lost_links(&mut self) -> Result<(), ConnError> {
        let mut lost = Vec::new();
        for (ch, s) in &self.sessions {
            for (h, l) in &s.links {
                let queue = match &l.kind {
                    LinkKind::QueueIn { queue } => queue,
                    LinkKind::QueueOut { entity, .. } => &entity.queue,
                    LinkKind::NodeIn {
                        node: Node::Management(entity),
                    } => &entity.queue,
                    _ => continue,
                };
                if !self.shared.broker.has_queue(queue) {
                    let entity = queue.clone();
                    lost.push((*ch, *h, EmulatorError::EntityNotFound { entity }));
                    continue;
                }
                let LinkKind::QueueOut {
                    entity,
                    session: Some(sid),
                    owner,
                    ..
                } = &l.kind
                else {
                    continue;
                };
                if !self.shared.broker.holds_session(&entity.queue, sid, *owner) {
                    lost.push((*ch, *h, EmulatorError::SessionLockLost));
                }
            }
        }
        for (ch, h, why) in lost {
            if let Some(s) = self.sessions.get_mut(&ch) {
                s.links.remove(&h);
                s.unsettled.retain(|_, od| od.handle != h);
            }
            let det = Detach {
                handle: Handle(h),
                closed: true,
                error: Some(broker_error(&why)),
            };
            self.send(perf(ch, &det)?).await?;
        }
        Ok(())
    }

    /// Sends whatever the links have credit for: queue deliveries and node responses.
    async fn pump(&mut self) -> Result<(), ConnError> {
        self.detach_lost_links().await?;
        for p in std::mem::take(&mut self.pending) {
            self.retrying = Some((p.owner, p.deadline));
            self.on_attach(p.ch, p.attach).await?;
            self.retrying = None;
        }
        let chans: Vec<u16> = self.sessions.keys().copied().collect();
        for ch in chans {
            let handles: Vec<u32> = self.sessions[&ch].links.keys().copied().collect();
            for h in handles {
                while let Some(s) = self.sessions.get_mut(&ch) {
                    let Some(l) = s.links.get_mut(&h) else { break };
                    if l.credit == 0 {
                        break;
                    }
                    let (payload, tag, token, settled) = match &mut l.kind {
                        LinkKind::NodeOut { pending } => match pending.pop_front() {
                            Some(p) => (p, Uuid::new_v4(), None, l.presettle),
                            None => break,
                        },
                        LinkKind::QueueOut {
                            entity,
                            session,
                            peek_lock,
                            owner,
                        } => {
                            let got = self.shared.broker.receive(
                                entity,
                                session.as_deref(),
                                *owner,
                                *peek_lock,
                            );
                            match got {
                                Ok(Some(d)) => {
                                    let bytes =
                                        encode_delivery(&self.shared.broker, &d, *peek_lock)?;
                                    let token = d.lock_token;
                                    (bytes, token, peek_lock.then_some(token), !*peek_lock)
                                }
                                _ => break,
                            }
                        }
                        _ => break,
                    };
                    l.credit -= 1;
                    l.delivery_count = l.delivery_count.wrapping_add(1);
                    let delivery_id = s.next_delivery_id;
                    s.next_delivery_id = s.next_delivery_id.wrapping_add(1);
                    if let (Some(token), false) = (token, settled) {
                        s.unsettled
                            .insert(delivery_id, OutDelivery { token, handle: h });
                    }
                    let t = Transfer {
                        handle: Handle(h),
                        delivery_id: Some(delivery_id),
                        delivery_tag: Some(DeliveryTag::from(tag.to_bytes_le().to_vec())),
                        message_format: Some(0),
                        settled: Some(settled),
                        more: false,
                        rcv_settle_mode: None,
                        state: None,
                        resume: false,
                        aborted: false,
                        batchable: false,
                    };
                    let frames = split_transfer(s, self.peer_max_frame, t, &payload)?;
                    for f in frames {
                        self.w.write_all(&f).await?;
                    }
                }
                // Drain: use up the remaining credit when nothing is left to send.
                let Some(s) = self.sessions.get_mut(&ch) else {
                    break;
                };
                let Some(l) = s.links.get_mut(&h) else {
                    continue;
                };
                if l.drain && l.credit > 0 {
                    l.delivery_count = l.delivery_count.wrapping_add(l.credit);
                    l.credit = 0;
                    l.drain = false;
                    let mut f = session_flow(s);
                    let l = &s.links[&h];
                    f.handle = Some(Handle(h));
                    f.delivery_count = Some(l.delivery_count);
                    f.link_credit = Some(0);
                    f.drain = true;
                    let b = perf(ch, &f)?;
                    self.send(b).await?;
                }
            }
        }
        Ok(())
    }
}

fn session_flow(s: &Sess) -> Flow {
    Flow {
        next_incoming_id: Some(s.next_incoming_id),
        incoming_window: SESSION_WINDOW,
        next_outgoing_id: s.next_outgoing_id,
        outgoing_window: SESSION_WINDOW,
        handle: None,
        delivery_count: None,
        link_credit: None,
        available: None,
        drain: false,
        echo: false,
        properties: None,
    }
}

fn split_transfer(
    s: &mut Sess,
    max_frame: usize,
    t: Transfer,
    payload: &[u8],
) -> Result<Vec<Vec<u8>>, ConnError> {
    let mut out = Vec::new();
    let mut probe = t.clone();
    probe.more = true;
    let overhead = 8 + serde_amqp::to_vec(&probe)?.len();
    let room = max_frame.saturating_sub(overhead).max(64);
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(room).collect()
    };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let mut ti = if i == 0 {
            t.clone()
        } else {
            Transfer {
                handle: t.handle.clone(),
                delivery_id: None,
                delivery_tag: None,
                message_format: None,
                settled: None,
                more: false,
                rcv_settle_mode: None,
                state: None,
                resume: false,
                aborted: false,
                batchable: false,
            }
        };
        ti.more = i + 1 < n;
        out.push(frame(0, s.remote_channel, &serde_amqp::to_vec(&ti)?, c));
        s.next_outgoing_id = s.next_outgoing_id.wrapping_add(1);
    }
    Ok(out)
}

fn unix_to_ticks(t: SystemTime) -> i64 {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    DOTNET_EPOCH_TICKS + ms * 10_000
}

fn filter_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Described(d) => filter_string(&d.value),
        _ => None,
    }
}

pub(crate) fn app_prop_str(m: &AmqpMessage, key: &str) -> Option<String> {
    m.application_properties
        .as_ref()?
        .0
        .get(key)
        .and_then(|v| match v {
            SimpleValue::String(s) => Some(s.clone()),
            SimpleValue::Symbol(s) => Some(s.0.clone()),
            _ => None,
        })
}

fn annotation<'a>(m: &'a AmqpMessage, key: &str) -> Option<&'a Value> {
    m.message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
}

/// Decodes what a client sent: one message, or a batch whose data sections each hold one.
pub(crate) fn decode_incoming(format: u32, data: &[u8]) -> Result<Vec<IncomingMessage>, String> {
    let Deserializable(outer): Deserializable<AmqpMessage> =
        crate::codec::decode(data).map_err(|e| format!("the message could not be decoded: {e}"))?;
    let msgs = if format == BATCH_FORMAT {
        let Body::Data(sections) = &outer.body else {
            return Err("a batch must carry data sections".into());
        };
        let mut v = Vec::new();
        for Data(bin) in sections.iter() {
            let Deserializable(m): Deserializable<AmqpMessage> = crate::codec::decode(bin)
                .map_err(|e| format!("a batched message could not be decoded: {e}"))?;
            v.push(m);
        }
        v
    } else {
        vec![outer]
    };
    Ok(msgs.into_iter().map(incoming).collect())
}

pub(crate) fn incoming(m: AmqpMessage) -> IncomingMessage {
    let scheduled_at = match annotation(&m, "x-opt-scheduled-enqueue-time") {
        Some(Value::Timestamp(ts)) if ts.milliseconds() > 0 => {
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ts.milliseconds() as u64))
        }
        _ => None,
    };
    let mut i = IncomingMessage::new(m);
    i.scheduled_at = scheduled_at;
    i
}

fn ts(t: SystemTime) -> Value {
    Value::Timestamp(Timestamp::from_milliseconds(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    ))
}

/// The message as a receiver sees it: broker annotations and the header's delivery count.
pub(crate) fn delivery_message(d: &Delivered, locked: bool) -> AmqpMessage {
    let mut m: AmqpMessage = (*d.message).clone();
    let h = m.header.get_or_insert_with(Header::default);
    h.delivery_count = d.delivery_count;
    let ma = m
        .message_annotations
        .get_or_insert_with(|| MessageAnnotations(OrderedMap::new()));
    let mut put = |k: &str, v: Value| {
        ma.0.insert(OwnedKey::Symbol(Symbol::from(k)), v);
    };
    put("x-opt-sequence-number", Value::Long(d.sequence_number));
    put("x-opt-enqueued-time", ts(d.enqueued_time));
    // 0 active, 2 scheduled (1 deferred is not emulated).
    put(
        "x-opt-message-state",
        Value::Int(if d.scheduled { 2 } else { 0 }),
    );
    if locked {
        if let Some(u) = d.locked_until {
            put("x-opt-locked-until", ts(u));
        }
        put(
            "x-opt-lock-token",
            Value::Uuid(serde_amqp::primitives::Uuid::from(*d.lock_token.as_bytes())),
        );
    }
    m
}

fn encode_delivery(_b: &Broker, d: &Delivered, locked: bool) -> Result<Vec<u8>, ConnError> {
    Ok(encode_message(delivery_message(d, locked))?)
}

/// Encodes a message with its header written out in full.
///
/// The generic encoder drops trailing fields that hold their default value, so a header
/// with `delivery-count = 0` would reach the client without the field, and the official
/// SDK reports the count as `None`. Service Bus always sends it, so the header is written
/// by hand: descriptor 0x70 and a list of its five fields.
pub(crate) fn encode_message(mut m: AmqpMessage) -> Result<Vec<u8>, serde_amqp::Error> {
    let mut out = Vec::new();
    if let Some(h) = m.header.take() {
        let mut fields = Vec::with_capacity(16);
        fields.push(if h.durable { 0x41 } else { 0x42 });
        fields.push(0x50);
        fields.push(h.priority.0);
        match h.ttl {
            Some(ttl) => {
                fields.push(0x70);
                fields.extend_from_slice(&ttl.to_be_bytes());
            }
            None => fields.push(0x40),
        }
        fields.push(if h.first_acquirer { 0x41 } else { 0x42 });
        fields.push(0x70);
        fields.extend_from_slice(&h.delivery_count.to_be_bytes());
        out.extend_from_slice(&[0x00, 0x53, 0x70, 0xc0, (fields.len() + 1) as u8, 5]);
        out.extend_from_slice(&fields);
    }
    out.extend_from_slice(&serde_amqp::to_vec(&Serializable(m))?);
    Ok(out)
}

/// Maps a receiver's outcome to a settlement. Deferral (`modified` with
/// `undeliverable-here`) is not emulated and is refused rather than misapplied.
fn settlement_of(state: &DeliveryState) -> Result<Settlement, EmulatorError> {
    Ok(match state {
        DeliveryState::Accepted(_) => Settlement::Complete,
        DeliveryState::Released(_) => Settlement::Release,
        DeliveryState::Modified(m) if m.undeliverable_here == Some(true) => {
            return Err(EmulatorError::BadRequest {
                reason: "deferring messages is not emulated".into(),
            });
        }
        DeliveryState::Modified(m) => Settlement::Abandon {
            properties: fields_to_props(m.message_annotations.as_ref()),
        },
        DeliveryState::Rejected(r) => {
            let info = r.error.as_ref().and_then(|e| e.info.as_deref());
            let get = |k: &str| {
                info.and_then(|i| i.get(&Symbol::from(k)))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    })
            };
            Settlement::DeadLetter {
                reason: get("DeadLetterReason"),
                description: get("DeadLetterErrorDescription"),
                properties: vec![],
            }
        }
        _ => {
            return Err(EmulatorError::BadRequest {
                reason: "unsupported delivery outcome".into(),
            });
        }
    })
}

fn fields_to_props(
    f: Option<&fe2o3_amqp_types::definitions::Fields>,
) -> Vec<(String, SimpleValue)> {
    f.map(|f| {
        f.iter()
            .filter_map(|(k, v)| {
                SimpleValue::try_from(v.clone())
                    .ok()
                    .map(|v| (k.0.clone(), v))
            })
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain_checks_user_and_password() {
        let init = |resp: &[u8]| SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(resp.to_vec().into()),
            hostname: None,
        };
        let key = Some(("policy", "secret"));
        assert!(sasl_ok(&init(b"\0policy\0secret"), key));
        assert!(!sasl_ok(&init(b"\0policy\0secreT"), key));
        assert!(!sasl_ok(&init(b"\0policy\0secret-and-more"), key));
        assert!(!sasl_ok(&init(b"\0other\0secret"), key));
        assert!(!sasl_ok(&init(b"\0policy"), key));
        assert!(sasl_ok(&init(b"anything"), None));
        assert!(bool::from(ct_eq_hashed(b"", b"")));
    }

    #[test]
    fn header_is_written_in_full() {
        let m: AmqpMessage = Message::builder()
            .body(Body::Value(AmqpValue(Value::String("x".into()))))
            .build();
        let d = Delivered {
            lock_token: Uuid::new_v4(),
            sequence_number: 7,
            delivery_count: 0,
            enqueued_time: SystemTime::now(),
            locked_until: Some(SystemTime::now()),
            message: std::sync::Arc::new(m),
            session_id: None,
            scheduled: false,
        };
        let bytes = encode_message(delivery_message(&d, true)).unwrap();
        assert_eq!(&bytes[..6], &[0x00, 0x53, 0x70, 0xc0, 11, 5]);
    }
}
