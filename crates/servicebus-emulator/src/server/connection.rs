//! The connection's frame dispatch, and sessions opening and closing (begin, end, detach).

use super::frames::{decode_performative, perf};
use super::*;

impl Conn {
    pub(super) async fn send(&mut self, bytes: Vec<u8>) -> Result<(), ConnError> {
        self.w.write_all(&bytes).await?;
        Ok(())
    }

    /// Handles one frame body; `Ok(false)` when the peer closed the connection.
    pub(super) async fn on_frame(&mut self, ch: u16, body: Vec<u8>) -> Result<bool, ConnError> {
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

    pub(super) async fn on_open(&mut self, open: Open) -> Result<(), ConnError> {
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

    pub(super) async fn on_begin(&mut self, ch: u16, begin: Begin) -> Result<(), ConnError> {
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

    pub(super) async fn on_detach(&mut self, ch: u16, d: Detach) -> Result<(), ConnError> {
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

    pub(super) async fn on_end(&mut self, ch: u16) -> Result<(), ConnError> {
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

    /// Detaches links to deleted queues, and session receivers whose session lock ran out,
    /// as Service Bus does.
    pub(super) async fn detach_lost_links(&mut self) -> Result<(), ConnError> {
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
}
