//! `$management` operations, mapped onto the semantic core.

use std::time::SystemTime;

use fe2o3_amqp_types::messaging::{AmqpValue, Body};
use serde_amqp::{
    Value,
    primitives::{Array, OrderedMap, Timestamp},
};
use uuid::Uuid;

use crate::{
    broker::{AmqpMessage, Broker, EntityRef, OwnerId, Settlement},
    error::EmulatorError,
    server::{delivery_message, encode_message, incoming},
};

fn bad(reason: impl Into<String>) -> EmulatorError {
    EmulatorError::BadRequest {
        reason: reason.into(),
    }
}

fn body_map(req: &AmqpMessage) -> Result<&OrderedMap<Value, Value>, EmulatorError> {
    match &req.body {
        Body::Value(AmqpValue(Value::Map(m))) => Ok(m),
        _ => Err(bad("request body must be a map")),
    }
}

fn get<'a>(m: &'a OrderedMap<Value, Value>, k: &str) -> Option<&'a Value> {
    m.get(&Value::String(k.to_owned()))
        .or_else(|| m.get(&Value::Symbol(k.into())))
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.0.clone(),
        Value::List(l) => l.clone(),
        other => vec![other.clone()],
    }
}

fn string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

fn token(v: &Value) -> Result<Uuid, EmulatorError> {
    match v {
        Value::Uuid(u) => Ok(Uuid::from_bytes(*u.as_inner())),
        Value::String(s) => s.parse().map_err(|_| bad("lock token is not a UUID")),
        _ => Err(bad("lock token is not a UUID")),
    }
}

fn ts(t: SystemTime) -> Value {
    Value::Timestamp(Timestamp::from_milliseconds(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    ))
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_owned()), v);
    }
    Value::Map(m)
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Long(x) => Some(*x),
        Value::Int(x) => Some(*x as i64),
        Value::Uint(x) => Some(*x as i64),
        Value::Ulong(x) => Some(*x as i64),
        Value::Short(x) => Some(*x as i64),
        _ => None,
    }
}

/// Runs one management operation. `Ok(Value::Null)` from a peek means "no messages" (204).
///
/// `owner_of(session)` names the caller's receiver that session operations speak for
/// (`None`: the caller has none, so it does not hold the session).
pub(crate) fn handle(
    broker: &Broker,
    entity: &EntityRef,
    op: &str,
    req: &AmqpMessage,
    owner_of: &dyn Fn(&str) -> Option<OwnerId>,
) -> Result<Value, EmulatorError> {
    let op: Operation = match op {
        "com.microsoft:renew-lock" => renew_locks,
        "com.microsoft:peek-message" => peek,
        "com.microsoft:schedule-message" => schedule,
        "com.microsoft:cancel-scheduled-message" => cancel_scheduled,
        "com.microsoft:renew-session-lock" => renew_session_lock,
        "com.microsoft:get-session-state" => get_session_state,
        "com.microsoft:set-session-state" => set_session_state,
        "com.microsoft:update-disposition" => update_disposition,
        other => return Err(bad(format!("operation `{other}` is not emulated"))),
    };
    let call = Call {
        broker,
        entity,
        body: body_map(req)?,
        owner_of,
    };
    op(&call)
}

/// One `$management` request: the namespace, the entity, the request's body map, and who
/// holds which session on the requesting connection.
struct Call<'a> {
    broker: &'a Broker,
    entity: &'a EntityRef,
    body: &'a OrderedMap<Value, Value>,
    owner_of: &'a dyn Fn(&str) -> Option<OwnerId>,
}

impl Call<'_> {
    /// The request's session id and the receiver holding it: session operations are only
    /// for the receiver holding the session.
    fn session(&self) -> Result<(String, OwnerId), EmulatorError> {
        let sid = string(get(self.body, "session-id")).ok_or_else(|| bad("session-id missing"))?;
        let owner = (self.owner_of)(&sid).ok_or(EmulatorError::SessionLockLost)?;
        Ok((sid, owner))
    }
}

type Operation = fn(&Call<'_>) -> Result<Value, EmulatorError>;

fn renew_locks(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let tokens = get(c.body, "lock-tokens").ok_or_else(|| bad("lock-tokens missing"))?;
    let mut exp = Vec::new();
    for t in list(tokens) {
        exp.push(ts(c.broker.renew_lock(token(&t)?)?));
    }
    Ok(map(vec![("expirations", Value::Array(Array(exp)))]))
}

fn peek(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let from = int(get(c.body, "from-sequence-number")).unwrap_or(0);
    let count = int(get(c.body, "message-count"))
        .unwrap_or(1)
        .clamp(1, 1000) as usize;
    let session = string(get(c.body, "session-id"));
    let got = c.broker.peek(c.entity, from, count, session.as_deref())?;
    if got.is_empty() {
        return Ok(Value::Null);
    }
    let mut msgs = Vec::new();
    for d in got {
        let bytes = encode_message(delivery_message(&d, false))
            .map_err(|_| bad("message could not be encoded"))?;
        msgs.push(map(vec![("message", Value::Binary(bytes.into()))]));
    }
    Ok(map(vec![("messages", Value::List(msgs))]))
}

fn schedule(c: &Call<'_>) -> Result<Value, EmulatorError> {
    use fe2o3_amqp_types::messaging::message::__private::Deserializable;
    let items = get(c.body, "messages").ok_or_else(|| bad("messages missing"))?;
    let mut batch = Vec::new();
    for it in list(items) {
        let Value::Map(im) = it else {
            return Err(bad("each scheduled message must be a map"));
        };
        let Some(Value::Binary(b)) = get(&im, "message") else {
            return Err(bad("scheduled message body missing"));
        };
        let Deserializable(msg) = crate::codec::decode::<Deserializable<AmqpMessage>>(b)
            .map_err(|_| bad("scheduled message could not be decoded"))?;
        batch.push(incoming(msg));
    }
    let seqs = c.broker.send(&c.entity.queue, batch)?;
    Ok(map(vec![(
        "sequence-numbers",
        Value::Array(Array(seqs.into_iter().map(Value::Long).collect())),
    )]))
}

fn cancel_scheduled(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let seqs: Vec<i64> = get(c.body, "sequence-numbers")
        .map(list)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| int(Some(v)))
        .collect();
    c.broker.cancel_scheduled(&c.entity.queue, &seqs)?;
    Ok(map(vec![]))
}

fn renew_session_lock(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let (sid, owner) = c.session()?;
    let until = c.broker.renew_session(&c.entity.queue, &sid, Some(owner))?;
    Ok(map(vec![("expiration", ts(until))]))
}

fn get_session_state(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let (sid, owner) = c.session()?;
    let st = c.broker.session_state(&c.entity.queue, &sid, Some(owner))?;
    Ok(map(vec![(
        "session-state",
        st.map(|b| Value::Binary(b.into())).unwrap_or(Value::Null),
    )]))
}

fn set_session_state(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let (sid, owner) = c.session()?;
    let st = match get(c.body, "session-state") {
        Some(Value::Binary(b)) => Some(b.to_vec()),
        Some(Value::String(s)) => Some(s.as_bytes().to_vec()),
        _ => None,
    };
    c.broker
        .set_session_state(&c.entity.queue, &sid, Some(owner), st)?;
    Ok(map(vec![]))
}

fn update_disposition(c: &Call<'_>) -> Result<Value, EmulatorError> {
    let status = string(get(c.body, "disposition-status")).unwrap_or_default();
    let tokens = get(c.body, "lock-tokens").map(list).unwrap_or_default();
    for t in tokens {
        let how = match status.as_str() {
            "completed" => Settlement::Complete,
            "abandoned" => Settlement::Abandon { properties: vec![] },
            "suspended" => Settlement::DeadLetter {
                reason: string(get(c.body, "deadletter-reason")),
                description: string(get(c.body, "deadletter-description")),
                properties: vec![],
            },
            other => return Err(bad(format!("disposition `{other}` is not emulated"))),
        };
        c.broker.settle(token(&t)?, how)?;
    }
    Ok(map(vec![]))
}
