//! The AMQP plumbing: one connection, one AMQP session per link (as the .NET SDK does, so a
//! refused attach never disturbs another link's handles), lazily attached links, `$cbs`
//! authorization with refresh, `$management` calls, and reconnect with backoff.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fe2o3_amqp::{
    Receiver, Sender, Session,
    connection::ConnectionHandle,
    link::{LinkStateError, RecvError, SendError, receiver::CreditMode},
    session::SessionHandle,
    types::{
        definitions::{self, ReceiverSettleMode, SenderSettleMode},
        messaging::{Message as AmqpMessage, Outcome, Properties, Source, Target},
        primitives::{OrderedMap, SimpleValue, Symbol, Value},
    },
};
use queue_core::{ExposeSecret, SecretString};

use crate::{
    config::{Credential, ServiceBusConfig},
    convert::{Outgoing, timestamp},
    credential::{SERVICE_BUS_SCOPE, sas_expiry, sas_token, unix_secs},
    error::Failure,
};

mod rpc;

pub(crate) use rpc::{Response, RpcLink};

pub(crate) const SESSION_FILTER: &str = "com.microsoft:session-filter";

/// The condition and description of an AMQP error.
pub(crate) fn failure_of(e: &definitions::Error) -> Failure {
    let condition = match serde_amqp::to_value(&e.condition) {
        Ok(Value::Symbol(s)) => s.0,
        Ok(Value::String(s)) => s,
        _ => String::new(),
    };
    Failure::Condition {
        condition,
        description: e.description.clone().unwrap_or_default(),
    }
}

fn link_state_failure(e: &LinkStateError) -> Failure {
    match e {
        LinkStateError::RemoteDetachedWithError(err)
        | LinkStateError::RemoteClosedWithError(err) => failure_of(err),
        other => Failure::ConnectionLost(format!("link stopped: {other}")),
    }
}

pub(crate) fn recv_failure(e: &RecvError) -> Failure {
    match e {
        RecvError::LinkStateError(l) => link_state_failure(l),
        other => Failure::ConnectionLost(format!("receive failed: {other}")),
    }
}

pub(crate) fn send_failure(e: &SendError) -> Failure {
    match e {
        SendError::LinkStateError(l) => link_state_failure(l),
        SendError::Detached(d) => match d {
            fe2o3_amqp::link::DetachError::RemoteDetachedWithError(err)
            | fe2o3_amqp::link::DetachError::RemoteClosedWithError(err) => failure_of(err),
            other => Failure::ConnectionLost(format!("link detached: {other}")),
        },
        other => Failure::ConnectionLost(format!("send failed: {other}")),
    }
}

/// Whether a failure means the connection (not just one link) is gone.
pub(crate) fn is_connection_loss(f: &Failure) -> bool {
    match f {
        Failure::ConnectionLost(_) => true,
        Failure::Condition { condition, .. } => {
            condition.starts_with("amqp:connection:")
                || condition == "amqp:session:window-violation"
        }
        _ => false,
    }
}

pub(crate) fn link_name(kind: &str) -> String {
    format!("{kind}-{}", uuid::Uuid::new_v4())
}

/// A sender link.
pub(crate) struct SenderLink {
    sender: tokio::sync::Mutex<Sender>,
    _session: Mutex<SessionHandle<()>>,
    pub(crate) max_message_size: Option<u64>,
}

/// The message format of a Service Bus batch: each data section holds one encoded message.
pub(crate) const BATCH_FORMAT: u32 = 0x8001_3700;

impl SenderLink {
    pub(crate) async fn send(&self, msg: Outgoing, timeout: Duration) -> Result<(), Failure> {
        let sendable = fe2o3_amqp::link::delivery::Sendable::builder()
            .message(msg)
            .build();
        self.send_sendable(sendable, timeout).await
    }

    /// Sends `msgs` as one batch delivery (all or nothing), as the SDKs' batches do: the
    /// envelope carries the first message's id and session id.
    pub(crate) async fn send_batch(
        &self,
        msgs: &[Outgoing],
        timeout: Duration,
    ) -> Result<(), Failure> {
        let first = msgs.first().and_then(|m| m.properties.as_ref());
        let envelope: Outgoing = AmqpMessage {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: first.and_then(|p| p.message_id.clone()),
                group_id: first.and_then(|p| p.group_id.clone()),
                ..Properties::default()
            }),
            application_properties: None,
            body: msgs
                .iter()
                .map(|m| {
                    fe2o3_amqp::types::messaging::Data(fe2o3_amqp::types::primitives::Binary::from(
                        crate::convert::encode(m),
                    ))
                })
                .collect(),
            footer: None,
        };
        let sendable = fe2o3_amqp::link::delivery::Sendable::builder()
            .message(envelope)
            .message_format(BATCH_FORMAT)
            .build();
        self.send_sendable(sendable, timeout).await
    }

    async fn send_sendable(
        &self,
        msg: fe2o3_amqp::link::delivery::Sendable<
            fe2o3_amqp::types::messaging::Batch<fe2o3_amqp::types::messaging::Data>,
        >,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let mut s = self.sender.lock().await;
        let outcome = tokio::time::timeout(timeout, s.send(msg))
            .await
            .map_err(|_| Failure::Timeout(timeout))?
            .map_err(|e| send_failure(&e))?;
        match outcome {
            Outcome::Accepted(_) => Ok(()),
            Outcome::Rejected(r) => Err(r.error.as_ref().map_or_else(
                || Failure::Condition {
                    condition: "amqp:internal-error".into(),
                    description: "message rejected".into(),
                },
                failure_of,
            )),
            other => Err(Failure::Condition {
                condition: "amqp:internal-error".into(),
                description: format!("unexpected outcome {:?}", std::mem::discriminant(&other)),
            }),
        }
    }
}

/// A peek-lock receiver link (settle mode second, manual credit).
pub(crate) struct ReceiverLink {
    pub(crate) receiver: tokio::sync::Mutex<Option<Receiver>>,
    /// Unique id of this link (receipts remember it).
    pub(crate) id: u64,
    pub(crate) closed: AtomicBool,
    /// For session links: the session id the service assigned.
    pub(crate) session_id: Option<String>,
    /// The link name, sent as `associated-link-name` with management calls about it.
    pub(crate) name: String,
    /// The link's own AMQP session, ended when the link closes.
    pub(crate) session: tokio::sync::Mutex<Option<SessionHandle<()>>>,
    /// Deliveries received on this link. fe2o3-amqp keeps each peek-locked one in the
    /// link's unsettled map until it is settled on the link, which never happens here
    /// (settlement goes through `$management`), so this is also the size of that map.
    pub(crate) delivered: AtomicU64,
    /// For session links: the session lock's expiry the service named on the attach
    /// (`com.microsoft:locked-until-utc`).
    pub(crate) locked_until: Option<SystemTime>,
    /// The connection whose spare sessions take this link's session back after a clean
    /// detach.
    live: Weak<Live>,
}

impl ReceiverLink {
    /// Detaches the link (best effort). After a clean detach its AMQP session goes back to
    /// the connection's spares for the next receive link; otherwise it is ended.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let receiver = self.receiver.lock().await.take();
        let detached = match receiver {
            Some(r) => matches!(
                tokio::time::timeout(Duration::from_secs(5), r.close()).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        let live = self.live.upgrade().filter(|l| l.is_usable());
        match live {
            Some(live) if detached => live.put_spare(session),
            _ => end_session(session).await,
        }
    }
}

/// Ends an AMQP session (best effort, bounded).
async fn end_session(mut s: SessionHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), s.end()).await;
}

/// Most AMQP sessions a connection keeps for later receive links.
const MAX_SPARE_SESSIONS: usize = 64;

fn attach_failure(text: &str, err: Option<definitions::Error>) -> Failure {
    match err {
        Some(e) => failure_of(&e),
        None => Failure::ConnectionLost(format!("attach failed: {text}")),
    }
}

/// A refused attach carries the broker's error in a detach; fe2o3 reports it as
/// `RemoteClosedWithError` (or a detach variant) of the attach error.
pub(crate) fn receiver_attach_failure(e: &fe2o3_amqp::link::ReceiverAttachError) -> Failure {
    use fe2o3_amqp::link::ReceiverAttachError as E;
    match e {
        E::RemoteClosedWithError(err) => failure_of(err),
        other => attach_failure(&other.to_string(), None),
    }
}

pub(crate) fn sender_attach_failure(e: &fe2o3_amqp::link::SenderAttachError) -> Failure {
    use fe2o3_amqp::link::SenderAttachError as E;
    match e {
        E::RemoteClosedWithError(err) => failure_of(err),
        other => attach_failure(&other.to_string(), None),
    }
}

/// Attaches a peek-lock receiver on `entity` (settle mode second, manual credit) on
/// `amqp_session`; with `session`, a session receiver (`Some(None)`: the next available
/// session), and with `server_wait`, how long the service may look for a session.
async fn attach_peek_lock(
    amqp_session: &mut SessionHandle<()>,
    entity: &str,
    session: Option<Option<&str>>,
    server_wait: Option<Duration>,
) -> Result<Receiver, fe2o3_amqp::link::ReceiverAttachError> {
    let mut source = Source::builder().address(entity);
    if let Some(s) = session {
        let mut filter = OrderedMap::new();
        filter.insert(
            Symbol::from(SESSION_FILTER),
            s.map_or(Value::Null, |id| Value::String(id.to_owned())),
        );
        source = source.filter(filter);
    }
    let mut props = OrderedMap::new();
    if let Some(w) = server_wait {
        props.insert(
            Symbol::from("com.microsoft:timeout"),
            Value::Uint(u32::try_from(w.as_millis()).unwrap_or(u32::MAX)),
        );
    }
    Receiver::builder()
        .name(link_name("recv"))
        .source(source.build())
        .target(
            Target::builder()
                .address(format!("recv-{}", uuid::Uuid::new_v4()))
                .build(),
        )
        .receiver_settle_mode(ReceiverSettleMode::Second)
        .sender_settle_mode(SenderSettleMode::Unsettled)
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .properties(props)
        .attach(amqp_session)
        .await
}

/// The session id the service put in the attach answer's session filter.
fn session_filter(receiver: &Receiver) -> Option<String> {
    let v = receiver
        .source()
        .as_ref()?
        .filter
        .as_ref()?
        .get(&Symbol::from(SESSION_FILTER))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        Value::Described(d) => match &d.value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The attach property naming a session lock's expiry, in .NET ticks (100 ns since
/// 0001-01-01 UTC).
const LOCKED_UNTIL_UTC: &str = "com.microsoft:locked-until-utc";
/// .NET ticks at the Unix epoch.
const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;

fn ticks_to_time(v: &Value) -> Option<SystemTime> {
    let ticks = match v {
        Value::Long(t) => *t,
        Value::Ulong(t) => i64::try_from(*t).ok()?,
        Value::Timestamp(t) => {
            let ms = u64::try_from(t.milliseconds()).ok()?;
            return Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        }
        _ => return None,
    };
    let since_epoch = u64::try_from(ticks.checked_sub(TICKS_AT_UNIX_EPOCH)?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(since_epoch.checked_mul(100)?))
}

/// One live connection and everything attached on it.
pub(crate) struct Live {
    pub(crate) connection: tokio::sync::Mutex<ConnectionHandle<()>>,
    cbs: RpcLink,
    /// CBS audience -> token expiry.
    tokens: Mutex<HashMap<String, SystemTime>>,
    senders: Mutex<HashMap<String, Arc<SenderLink>>>,
    receivers: Mutex<HashMap<String, Arc<ReceiverLink>>>,
    management: Mutex<HashMap<String, Arc<RpcLink>>>,
    /// AMQP sessions whose receive link was detached cleanly, ready for the next one
    /// (saves a begin and an end round trip per session receiver).
    spare: Mutex<Vec<SessionHandle<()>>>,
    dead: AtomicBool,
    /// Wakes calls racing [`Live::lost`] when the connection is found dead.
    lost: tokio::sync::Notify,
}

impl Live {
    /// A connection just opened, with its `$cbs` link.
    pub(crate) fn new(connection: ConnectionHandle<()>, cbs: RpcLink) -> Self {
        Self {
            connection: tokio::sync::Mutex::new(connection),
            cbs,
            tokens: Mutex::new(HashMap::new()),
            senders: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            management: Mutex::new(HashMap::new()),
            spare: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            lost: tokio::sync::Notify::new(),
        }
    }

    /// Marks the connection dead and wakes the calls waiting on it; `true` the first time.
    pub(crate) fn mark_dead(&self) -> bool {
        let first = !self.dead.swap(true, Ordering::AcqRel);
        self.lost.notify_waiters();
        first
    }

    /// Completes once the connection is marked dead.
    pub(crate) async fn lost(&self) {
        loop {
            let woken = self.lost.notified();
            if !self.is_usable() {
                return;
            }
            woken.await;
        }
    }

    /// Runs `fut` unless the connection dies first: a call in flight on a connection that
    /// is gone fails at once instead of waiting for an answer that cannot come.
    pub(crate) async fn unless_lost<T>(
        &self,
        fut: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::select! {
            res = fut => res,
            () = self.lost() => Err(Failure::ConnectionLost(
                "the connection was lost while the call was in flight".into(),
            )),
        }
    }

    pub(crate) fn is_usable(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    fn take_spare(&self) -> Option<SessionHandle<()>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_spare(&self, session: SessionHandle<()>) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < MAX_SPARE_SESSIONS {
            spare.push(session);
        }
    }
}

/// The connection manager shared by a provider and its session receivers.
pub(crate) struct Amqp {
    pub(crate) cfg: ServiceBusConfig,
    /// This manager, for the background tasks it starts.
    pub(crate) me: Weak<Amqp>,
    /// The connection and the reconnect state; held only for short, non-async updates.
    pub(crate) state: Mutex<crate::connection::ConnState>,
    /// Bumped after every connect attempt, so callers waiting for a connection wake up.
    pub(crate) attempts: tokio::sync::watch::Sender<u64>,
    pub(crate) generation: AtomicU64,
    next_link: AtomicU64,
    puts: AtomicU64,
    pub(crate) connects: AtomicU64,
    receive_attaches: AtomicU64,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("cfg", &self.cfg)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Amqp {
    pub(crate) fn new(cfg: ServiceBusConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            cfg,
            me: me.clone(),
            state: Mutex::new(crate::connection::ConnState::default()),
            attempts: tokio::sync::watch::channel(0).0,
            generation: AtomicU64::new(0),
            next_link: AtomicU64::new(1),
            puts: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            receive_attaches: AtomicU64::new(0),
        })
    }

    /// Tokens put on `$cbs` so far.
    pub(crate) fn token_puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }

    /// Plain (non-session) receive links attached so far.
    pub(crate) fn receive_attaches(&self) -> u64 {
        self.receive_attaches.load(Ordering::Relaxed)
    }

    /// Connections opened so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    fn audience(&self, entity: &str) -> String {
        let ep = &self.cfg.endpoint;
        format!("sb://{}/{}", ep.host, entity)
    }

    /// A token for `audience` and its expiry.
    async fn token(
        &self,
        audience: &str,
    ) -> Result<(SecretString, &'static str, SystemTime), Failure> {
        match &self.cfg.credential {
            Credential::SharedKey { key_name, key } => {
                let expires = SystemTime::now() + self.cfg.sas_token_ttl;
                Ok((
                    sas_token(audience, key_name, key, unix_secs(expires)),
                    "servicebus.windows.net:sastoken",
                    expires,
                ))
            }
            Credential::SasToken(t) => {
                let expires =
                    sas_expiry(t).unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
                Ok((t.clone(), "servicebus.windows.net:sastoken", expires))
            }
            Credential::Token(c) => {
                let t = c
                    .get_token(&[SERVICE_BUS_SCOPE])
                    .await
                    .map_err(|_| Failure::Status {
                        code: 401,
                        condition: Some("amqp:unauthorized-access".into()),
                        description: "the token credential returned no token".into(),
                    })?;
                Ok((t.token, "jwt", t.expires_on))
            }
        }
    }

    /// Puts a token for `audience` on `$cbs`.
    async fn put_token(&self, live: &Live, audience: &str) -> Result<(), Failure> {
        let (token, kind, expires) = self.token(audience).await?;
        let call = live.cbs.call(
            vec![
                ("operation", SimpleValue::String("put-token".into())),
                ("type", SimpleValue::String(kind.into())),
                ("name", SimpleValue::String(audience.into())),
                ("expiration", SimpleValue::Timestamp(timestamp(expires))),
            ],
            Value::String(token.expose_secret().to_owned()),
            self.cfg.operation_timeout,
        );
        let resp = live.unless_lost(call).await;
        let resp = match resp {
            Ok(r) => r,
            Err(f) => {
                self.note_failure(live, &f);
                return Err(f);
            }
        };
        self.puts.fetch_add(1, Ordering::Relaxed);
        if !(200..300).contains(&resp.status) {
            return Err(Failure::Status {
                code: resp.status,
                condition: Some(if resp.status == 404 {
                    "amqp:not-found".into()
                } else {
                    "amqp:unauthorized-access".into()
                }),
                description: String::new(),
            });
        }
        live.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(audience.to_owned(), expires);
        Ok(())
    }

    fn refresh_margin(&self) -> Duration {
        (self.cfg.sas_token_ttl / 5).min(Duration::from_secs(300))
    }

    /// Makes sure a fresh token for `entity` is on `$cbs`.
    pub(crate) async fn authorize(&self, live: &Live, entity: &str) -> Result<(), Failure> {
        let audience = self.audience(entity);
        let fresh = live
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&audience)
            .is_some_and(|exp| {
                exp.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > self.refresh_margin())
            });
        if fresh {
            return Ok(());
        }
        self.put_token(live, &audience).await
    }

    /// Re-puts tokens before they expire, for as long as the connection lives.
    pub(crate) fn spawn_refresher(self: &Arc<Self>, live: Weak<Live>) {
        let me = Arc::downgrade(self);
        let every = (self.refresh_margin() / 2).max(Duration::from_millis(200));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(me), Some(live)) = (me.upgrade(), live.upgrade()) else {
                    return;
                };
                if !live.is_usable() {
                    return;
                }
                let due: Vec<String> = {
                    let tokens = live.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    tokens
                        .iter()
                        .filter(|(_, exp)| {
                            exp.duration_since(SystemTime::now())
                                .map_or(true, |left| left <= me.refresh_margin())
                        })
                        .map(|(a, _)| a.clone())
                        .collect()
                };
                for audience in due {
                    if let Err(e) = me.put_token(&live, &audience).await {
                        tracing::warn!(kind = ?std::mem::discriminant(&e), "token refresh failed");
                    }
                }
            }
        });
    }

    /// Begins a new AMQP session on the live connection.
    async fn begin(&self, live: &Live) -> Result<SessionHandle<()>, Failure> {
        let mut c = live.connection.lock().await;
        let res = tokio::time::timeout(self.cfg.operation_timeout, Session::begin(&mut c)).await;
        drop(c);
        let f = match res {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => Failure::ConnectionLost(format!("begin failed: {e}")),
            Err(_) => Failure::Timeout(self.cfg.operation_timeout),
        };
        self.note_failure(live, &f);
        Err(f)
    }

    /// The sender link for `entity`, attached on first use.
    pub(crate) async fn sender(
        self: &Arc<Self>,
        entity: &str,
    ) -> Result<(Arc<Live>, Arc<SenderLink>), Failure> {
        let live = self.live().await?;
        self.authorize(&live, entity).await?;
        if let Some(s) = live
            .senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(entity)
        {
            return Ok((live.clone(), s.clone()));
        }
        let mut session = self.begin(&live).await?;
        let sender = Sender::builder()
            .name(link_name("send"))
            .target(entity)
            .sender_settle_mode(SenderSettleMode::Unsettled)
            .attach(&mut session)
            .await
            .map_err(|e| sender_attach_failure(&e));
        let sender = match sender {
            Ok(s) => s,
            Err(f) => {
                self.note_failure(&live, &f);
                return Err(f);
            }
        };
        let link = Arc::new(SenderLink {
            _session: Mutex::new(session),
            max_message_size: sender.max_message_size(),
            sender: tokio::sync::Mutex::new(sender),
        });
        live.senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entity.to_owned(), link.clone());
        Ok((live, link))
    }

    /// Forgets a link that failed, so it is attached again next time.
    pub(crate) fn drop_sender(&self, live: &Live, entity: &str) {
        live.senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(entity);
    }

    /// Forgets a receiver link.
    pub(crate) fn drop_receiver(&self, live: &Live, entity: &str, id: u64) {
        let mut r = live.receivers.lock().unwrap_or_else(|p| p.into_inner());
        if r.get(entity).is_some_and(|l| l.id == id)
            && let Some(l) = r.remove(entity)
        {
            l.closed.store(true, Ordering::Release);
        }
    }

    /// Retires the shared receiver `link` of `entity`: the next receive attaches a new one.
    /// The old link is detached in the background; its messages stay locked (detaching
    /// does not unlock them) and are settled by lock token through `$management`.
    pub(crate) fn retire_receiver(&self, live: &Live, entity: &str, link: &Arc<ReceiverLink>) {
        self.drop_receiver(live, entity, link.id);
        link.closed.store(true, Ordering::Release);
        let link = link.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { link.close().await });
        }
    }

    /// Attaches a peek-lock receiver on `entity`; with `session` set, a session receiver
    /// (`Some(None)`: the next available session).
    pub(crate) async fn attach_receiver(
        self: &Arc<Self>,
        live: &Arc<Live>,
        entity: &str,
        session: Option<Option<&str>>,
        server_wait: Option<Duration>,
    ) -> Result<Arc<ReceiverLink>, Failure> {
        self.authorize(live, entity).await?;
        let mut s = match live.take_spare() {
            Some(s) => s,
            None => self.begin(live).await?,
        };
        let attached = attach_peek_lock(&mut s, entity, session, server_wait)
            .await
            .map_err(|e| receiver_attach_failure(&e));
        let receiver = match attached {
            Ok(r) => r,
            Err(f) => {
                // A refused attach leaves its session behind: end it rather than reuse it.
                tokio::spawn(end_session(s));
                self.note_failure(live, &f);
                return Err(f);
            }
        };
        let session_id = session.and_then(|_| session_filter(&receiver));
        let locked_until = session.and_then(|_| {
            receiver.properties(|p| {
                p.as_ref()
                    .and_then(|p| p.get(&Symbol::from(LOCKED_UNTIL_UTC)))
                    .and_then(ticks_to_time)
            })
        });
        Ok(Arc::new(ReceiverLink {
            name: receiver.name().to_owned(),
            session: tokio::sync::Mutex::new(Some(s)),
            receiver: tokio::sync::Mutex::new(Some(receiver)),
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
            session_id,
            delivered: AtomicU64::new(0),
            locked_until,
            live: Arc::downgrade(live),
        }))
    }

    /// The shared (non-session) receiver for `entity`, attached on first use.
    pub(crate) async fn receiver(
        self: &Arc<Self>,
        entity: &str,
    ) -> Result<(Arc<Live>, Arc<ReceiverLink>), Failure> {
        let live = self.live().await?;
        self.authorize(&live, entity).await?;
        if let Some(r) = live
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(entity)
        {
            return Ok((live.clone(), r.clone()));
        }
        let link = self.attach_receiver(&live, entity, None, None).await?;
        self.receive_attaches.fetch_add(1, Ordering::Relaxed);
        live.receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entity.to_owned(), link.clone());
        Ok((live, link))
    }

    /// Calls `operation` on `<entity>/$management`.
    pub(crate) async fn manage(
        self: &Arc<Self>,
        entity: &str,
        operation: &str,
        body: Vec<(&str, Value)>,
        associated_link: Option<&str>,
    ) -> Result<Response, Failure> {
        let live = self.live().await?;
        self.authorize(&live, entity).await?;
        let node = format!("{entity}/$management");
        let existing = live
            .management
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned();
        let rpc = match existing {
            Some(r) => r,
            None => {
                let s = self.begin(&live).await?;
                let attached = RpcLink::attach(s, &node).await;
                let rpc = match attached {
                    Ok(r) => Arc::new(r),
                    Err(f) => {
                        self.note_failure(&live, &f);
                        return Err(f);
                    }
                };
                live.management
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node.clone(), rpc.clone());
                rpc
            }
        };
        let mut map = OrderedMap::new();
        for (k, v) in body {
            map.insert(Value::String(k.to_owned()), v);
        }
        let timeout = self.cfg.operation_timeout;
        let mut props = vec![
            ("operation", SimpleValue::String(operation.to_owned())),
            (
                "com.microsoft:server-timeout",
                SimpleValue::Uint(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)),
            ),
        ];
        if let Some(name) = associated_link {
            props.push(("associated-link-name", SimpleValue::String(name.to_owned())));
        }
        let res = live
            .unless_lost(rpc.call(props, Value::Map(map), timeout))
            .await;
        match res {
            Ok(r) => r.into_result(),
            Err(f) => {
                self.note_failure(&live, &f);
                if !is_connection_loss(&f) {
                    live.management
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&node);
                }
                Err(f)
            }
        }
    }
}
