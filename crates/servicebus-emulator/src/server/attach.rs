//! Link attaches: addresses, which node or entity a link names, receiver kinds, sessions locked or waited for.

use super::frames::perf;
use super::*;

/// How long a next-available session receiver may wait: the client's `com.microsoft:timeout`
/// link property in milliseconds, else 60 s.
pub(super) fn session_wait(attach: &Attach) -> Duration {
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
pub(super) fn link_addresses(attach: &Attach) -> (String, Option<String>) {
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
pub(super) fn kind_mismatch(
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

pub(super) fn parse_address(addr: &str) -> String {
    let mut a = addr;
    if let Some(i) = a.find("://") {
        a = &a[i + 3..];
        a = a.find('/').map(|j| &a[j..]).unwrap_or("");
    }
    a.trim_matches('/').to_owned()
}

pub(super) fn entity_of(path: &str) -> Option<EntityRef> {
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

pub(super) fn unix_to_ticks(t: SystemTime) -> i64 {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    DOTNET_EPOCH_TICKS + ms * 10_000
}

pub(super) fn filter_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Described(d) => filter_string(&d.value),
        _ => None,
    }
}

/// Fills the attach answer of a receiver granted session `lock`: the session id in its
/// source's session filter, the lock's expiry as `com.microsoft:locked-until-utc`.
/// Returns the session id and the answer's link properties.
fn session_granted(
    attach: &mut Attach,
    lock: crate::broker::SessionLock,
) -> (Option<String>, Option<Fields>) {
    let ticks = unix_to_ticks(lock.locked_until);
    let mut props = OrderedMap::new();
    props.insert(Symbol::from(LOCKED_UNTIL_UTC), Value::Long(ticks));
    if let Some(src) = attach.source.as_mut() {
        let set = src.filter.get_or_insert_with(OrderedMap::new);
        let sid = Value::String(lock.session_id.clone());
        set.insert(Symbol::from(SESSION_FILTER), sid);
    }
    (Some(lock.session_id), Some(props))
}

impl Conn {
    pub(super) async fn refuse_attach(
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

    pub(super) async fn on_attach(&mut self, ch: u16, attach: Attach) -> Result<(), ConnError> {
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
    pub(super) fn node_kind(
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
    pub(super) async fn receiver_kind(
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
        let (session, properties) = if sessionful {
            let wanted = match &filter {
                None | Some(Value::Null) => None,
                Some(v) => filter_string(v),
            };
            let locked = self
                .shared
                .broker
                .accept_session(&entity.queue, wanted.as_deref(), owner);
            match locked {
                Ok(lock) => session_granted(&mut attach, lock),
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
        } else {
            (None, None)
        };
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
    pub(super) async fn wait_for_session(
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
    pub(super) async fn accept_attach(
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
    pub(super) async fn grant(&mut self, ch: u16, handle: u32) -> Result<(), ConnError> {
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
}
