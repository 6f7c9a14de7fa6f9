//! Deliveries: credit, incoming transfers (sends and requests), dispositions, and the pump that hands out messages.

use super::frames::{perf, session_flow, split_transfer};
use super::*;

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

pub(super) fn annotation<'a>(m: &'a AmqpMessage, key: &str) -> Option<&'a Value> {
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

pub(super) fn ts(t: SystemTime) -> Value {
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

pub(super) fn encode_delivery(
    _b: &Broker,
    d: &Delivered,
    locked: bool,
) -> Result<Vec<u8>, ConnError> {
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
pub(super) fn settlement_of(state: &DeliveryState) -> Result<Settlement, EmulatorError> {
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

pub(super) fn fields_to_props(
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

impl Conn {
    pub(super) async fn on_flow(&mut self, ch: u16, flow: Flow) -> Result<(), ConnError> {
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

    pub(super) async fn on_transfer(
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
        let outcome = self.apply_transfer(ch, kind, format, &data, max).await?;
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

    /// What a complete incoming transfer does (a send into a queue, or a `$cbs` /
    /// `$management` request) and the outcome the sender gets. `target` is the node of a
    /// request link or (`Err`) the queue of a sender link.
    async fn apply_transfer(
        &mut self,
        ch: u16,
        target: Option<Result<Node, String>>,
        format: u32,
        data: &[u8],
        max: usize,
    ) -> Result<DeliveryState, ConnError> {
        let rejected = |cond: &str, desc: String| {
            DeliveryState::Rejected(Rejected {
                error: Some(error(cond, desc)),
            })
        };
        if data.len() > max {
            let desc = format!("messages are limited to {max} bytes");
            return Ok(rejected("amqp:link:message-size-exceeded", desc));
        }
        Ok(match target {
            Some(Err(queue)) => match decode_incoming(format, data) {
                Ok(msgs) => match self.shared.broker.send(&queue, msgs) {
                    Ok(_) => DeliveryState::Accepted(Accepted {}),
                    Err(e) => DeliveryState::Rejected(Rejected {
                        error: Some(broker_error(&e)),
                    }),
                },
                Err(reason) => rejected("amqp:decode-error", reason),
            },
            Some(Ok(node)) => match crate::codec::decode::<Deserializable<AmqpMessage>>(data) {
                Ok(Deserializable(req)) => {
                    self.on_request(ch, &node, req).await?;
                    DeliveryState::Accepted(Accepted {})
                }
                Err(_) => rejected("amqp:decode-error", "malformed request".into()),
            },
            None => rejected("amqp:not-allowed", "link does not accept transfers".into()),
        })
    }

    pub(super) async fn on_disposition(
        &mut self,
        ch: u16,
        d: Disposition,
    ) -> Result<(), ConnError> {
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

    /// Sends whatever the links have credit for: queue deliveries and node responses.
    pub(super) async fn pump(&mut self) -> Result<(), ConnError> {
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
                while self.send_next(ch, h).await? {}
                self.finish_drain(ch, h).await?;
            }
        }
        Ok(())
    }

    /// Sends link `h` its next delivery or node response when it has credit and one is
    /// there; returns whether it sent one.
    async fn send_next(&mut self, ch: u16, h: u32) -> Result<bool, ConnError> {
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(false);
        };
        let Some(l) = s.links.get_mut(&h) else {
            return Ok(false);
        };
        if l.credit == 0 {
            return Ok(false);
        }
        let Some((payload, tag, token, settled)) = next_payload(&self.shared.broker, l)? else {
            return Ok(false);
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
        Ok(true)
    }

    /// Drain: uses up a draining link's remaining credit once nothing is left to send,
    /// and tells the peer.
    async fn finish_drain(&mut self, ch: u16, h: u32) -> Result<(), ConnError> {
        let Some(s) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        let Some(l) = s.links.get_mut(&h) else {
            return Ok(());
        };
        if !(l.drain && l.credit > 0) {
            return Ok(());
        }
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
        self.send(b).await
    }
}

/// What a link sends next: the payload, delivery tag, lock token (peek-lock only) and
/// whether the transfer is settled; `None` when nothing is waiting for it.
type Outgoing = (Vec<u8>, Uuid, Option<Uuid>, bool);

fn next_payload(broker: &Broker, l: &mut Link) -> Result<Option<Outgoing>, ConnError> {
    Ok(match &mut l.kind {
        LinkKind::NodeOut { pending } => pending
            .pop_front()
            .map(|p| (p, Uuid::new_v4(), None, l.presettle)),
        LinkKind::QueueOut {
            entity,
            session,
            peek_lock,
            owner,
        } => match broker.receive(entity, session.as_deref(), *owner, *peek_lock) {
            Ok(Some(d)) => {
                let bytes = encode_delivery(broker, &d, *peek_lock)?;
                let token = d.lock_token;
                Some((bytes, token, peek_lock.then_some(token), !*peek_lock))
            }
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
