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

mod attach;
mod connection;
mod delivery;
mod frames;
mod nodes;
mod sasl;

pub(crate) use self::delivery::{decode_incoming, delivery_message, encode_message, incoming};
use self::{
    frames::{frame, perf, read_frame},
    sasl::handshake,
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
    let (reader, mut frames) = spawn_reader(r);
    let mut conn = Conn {
        shared,
        w,
        peer_max_frame: 512,
        sessions: HashMap::new(),
        owners: Vec::new(),
        heartbeat: None,
        authorized,
        pending: Vec::new(),
        retrying: None,
    };
    let (result, clean) = conn.run(&mut frames, &mut stop, &mut cut).await;
    reader.abort();
    conn.finish(&result, clean).await;
    result
}

/// Frames read off the socket (or the read error that ended it).
type Frames = mpsc::Receiver<Result<(u16, Vec<u8>), ConnError>>;

/// Reads frames in a task of their own, so a slow peer never stalls the connection loop.
fn spawn_reader(mut r: BoxRead) -> (tokio::task::JoinHandle<()>, Frames) {
    let (tx, rx) = mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let res = read_frame(&mut r).await.map(|(_, ch, b)| (ch, b));
            let stop = res.is_err();
            if tx.send(res).await.is_err() || stop {
                break;
            }
        }
    });
    (reader, rx)
}

/// What one turn of the connection loop decided.
enum Turn {
    Go,
    /// The connection ends; `clean` when with an AMQP close (or the emulator stopping).
    End {
        clean: bool,
    },
    Fail(ConnError),
}

impl Conn {
    /// Serves the connection until it ends. Returns how, and whether it ended cleanly: a
    /// connection lost any other way (the peer vanished, or `drop_connections` cut it)
    /// keeps its session locks until they expire, as Service Bus does.
    async fn run(
        &mut self,
        frames: &mut Frames,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        cut: &mut tokio::sync::watch::Receiver<u64>,
    ) -> (Result<(), ConnError>, bool) {
        let mut changed = self.shared.broker.subscribe();
        let mut heartbeat: Option<tokio::time::Interval> = None;
        loop {
            if heartbeat.is_none() {
                heartbeat = self.heartbeat.map(|d| {
                    let mut i = tokio::time::interval(d);
                    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    i
                });
            }
            let deadline = self.next_deadline();
            let turn = tokio::select! {
                msg = frames.recv() => self.on_read(msg).await,
                _ = changed.changed() => Turn::Go,
                _ = stop.changed() => Turn::End { clean: true },
                _ = cut.changed() => Turn::End { clean: false },
                _ = tokio::time::sleep_until(deadline) => {
                    self.shared.broker.tick();
                    Turn::Go
                }
                _ = tick(heartbeat.as_mut()) => {
                    // The peer asked for traffic within its idle timeout: an empty frame.
                    match self.w.write_all(&frame(0, 0, &[], &[])).await {
                        Ok(()) => Turn::Go,
                        Err(e) => Turn::Fail(e.into()),
                    }
                }
            };
            match turn {
                Turn::Go => {}
                Turn::End { clean } => return (Ok(()), clean),
                Turn::Fail(e) => return (Err(e), false),
            }
            if let Err(e) = self.pump().await {
                return (Err(e), false);
            }
        }
    }

    /// When the loop must wake up at the latest: a broker deadline or a waiting attach's.
    fn next_deadline(&self) -> Instant {
        self.shared
            .broker
            .next_deadline()
            .into_iter()
            .chain(self.pending.iter().map(|p| p.deadline))
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
    }

    /// Handles what the reader sent.
    async fn on_read(&mut self, msg: Option<Result<(u16, Vec<u8>), ConnError>>) -> Turn {
        let Some(msg) = msg else {
            return Turn::End { clean: false };
        };
        let (ch, body) = match msg {
            Ok(v) => v,
            Err(e) => return Turn::Fail(e),
        };
        match self.on_frame(ch, body).await {
            Ok(true) => Turn::Go,
            Ok(false) => Turn::End { clean: true },
            Err(e) => Turn::Fail(e),
        }
    }

    /// Says why to a peer that broke the protocol, and releases the sessions of a
    /// connection that ended cleanly.
    async fn finish(&mut self, result: &Result<(), ConnError>, clean: bool) {
        if let Some(err) = result.as_ref().err().and_then(ConnError::close_error) {
            // Bounded, best effort.
            if let Ok(bytes) = perf(0, &Close { error: Some(err) }) {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.w.write_all(&bytes)).await;
            }
        }
        if clean {
            for o in &self.owners {
                self.shared.broker.release_owner(*o);
            }
        }
    }
}

/// The next heartbeat tick, or never without a heartbeat.
async fn tick(heartbeat: Option<&mut tokio::time::Interval>) {
    match heartbeat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
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
    error(nodes::condition_of(e, "amqp:invalid-field"), e.to_string())
}
