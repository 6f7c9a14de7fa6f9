//! AMQP frames: reading, writing, performative decoding, and transfers split to the peer's frame size.

use super::*;

pub(super) async fn read_frame(r: &mut BoxRead) -> Result<(u8, u16, Vec<u8>), ConnError> {
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

pub(super) fn frame(ftype: u8, channel: u16, body: &[u8], payload: &[u8]) -> Vec<u8> {
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

pub(super) fn perf<T: Serialize>(channel: u16, p: &T) -> Result<Vec<u8>, ConnError> {
    Ok(frame(0, channel, &serde_amqp::to_vec(p)?, &[]))
}

/// Decodes a (size-checked) performative. rhea, the JavaScript SDK's AMQP stack, writes
/// the keys of an error's `info` map (the dead-letter reason of a rejected outcome) as
/// strings where the spec says symbols; such frames are re-read with those keys as symbols.
pub(super) fn decode_performative(bytes: &[u8]) -> Result<Performative, ConnError> {
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
pub(super) fn symbolize_error_info(v: &mut Value, depth: usize) {
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

pub(super) fn session_flow(s: &Sess) -> Flow {
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

pub(super) fn split_transfer(
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
