//! Request/response links (`$cbs`, `<entity>/$management`), pipelined.
//!
//! Many calls may be in flight on one pair of links at once: a request is sent as soon as
//! the sender is free, and a reader task hands each response to its caller by correlation
//! id. (With one call at a time, the settlements, renewals and session-state calls of
//! every session receiver on a connection queued behind each other for a full round trip
//! each.) Service Bus answers management requests on one link in any order it likes, which
//! the correlation id covers; the official SDKs pipeline the same way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fe2o3_amqp::{
    Receiver, Sender,
    session::SessionHandle,
    types::{
        definitions::{ReceiverSettleMode, SenderSettleMode},
        messaging::{
            AmqpValue, ApplicationProperties, Body, Message as AmqpMessage, MessageId as AmqpId,
            Properties,
        },
        primitives::{OrderedMap, SimpleValue, Symbol, Value},
    },
};
use tokio::{sync::oneshot, time::Instant};

use crate::{
    amqp::{link_name, receiver_attach_failure, recv_failure, send_failure, sender_attach_failure},
    error::Failure,
};

/// A `$management` or `$cbs` response.
pub(crate) struct Response {
    pub(crate) status: i32,
    pub(crate) condition: Option<String>,
    pub(crate) description: String,
    pub(crate) body: Value,
}

impl Response {
    /// The body map entry `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match &self.body {
            Value::Map(m) => m
                .get(&Value::String(key.to_owned()))
                .or_else(|| m.get(&Value::Symbol(Symbol::from(key)))),
            _ => None,
        }
    }

    pub(crate) fn into_result(self) -> Result<Self, Failure> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(Failure::Status {
                code: self.status,
                condition: self.condition,
                description: self.description,
            })
        }
    }

    /// The response carried by `m`.
    fn of(m: AmqpMessage<Body<Value>>) -> Self {
        let empty = ApplicationProperties(OrderedMap::new());
        let ap = m.application_properties.as_ref().unwrap_or(&empty);
        let status = app_int(ap, &["statusCode", "status-code"]).unwrap_or(500);
        let condition = app_string(ap, &["errorCondition", "error-condition"]);
        let description =
            app_string(ap, &["statusDescription", "status-description"]).unwrap_or_default();
        let body = match m.body {
            Body::Value(AmqpValue(v)) => v,
            _ => Value::Null,
        };
        Self {
            status,
            condition,
            description,
            body,
        }
    }
}

fn app_string(ap: &ApplicationProperties, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match ap.0.get(*k) {
        Some(SimpleValue::String(s)) => Some(s.clone()),
        Some(SimpleValue::Symbol(s)) => Some(s.0.clone()),
        _ => None,
    })
}

fn app_int(ap: &ApplicationProperties, keys: &[&str]) -> Option<i32> {
    keys.iter().find_map(|k| match ap.0.get(*k) {
        Some(SimpleValue::Int(n)) => Some(*n),
        Some(SimpleValue::Long(n)) => i32::try_from(*n).ok(),
        Some(SimpleValue::Uint(n)) => i32::try_from(*n).ok(),
        Some(SimpleValue::Short(n)) => Some(i32::from(*n)),
        _ => None,
    })
}

type Reply = oneshot::Sender<Result<Response, Failure>>;

/// Calls waiting for their responses, by request message id.
#[derive(Default)]
struct Pending {
    waiting: HashMap<String, Reply>,
    /// Why the reply link stopped, once it has: later calls fail at once with it.
    broken: Option<Failure>,
}

type SharedPending = Arc<Mutex<Pending>>;

fn lock(p: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets a call's slot when the call ends early (timeout, or its future dropped).
struct Slot<'a> {
    pending: &'a SharedPending,
    id: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiting.remove(&self.id);
    }
}

/// A request/response pair of links.
pub(crate) struct RpcLink {
    sender: tokio::sync::Mutex<Sender>,
    reply_to: String,
    pending: SharedPending,
    reader: tokio::task::JoinHandle<()>,
    /// The session the pair lives on; dropping it ends the session.
    _session: Mutex<SessionHandle<()>>,
}

impl Drop for RpcLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RpcLink {
    pub(crate) async fn attach(
        mut session: SessionHandle<()>,
        node: &str,
    ) -> Result<Self, Failure> {
        let reply_to = format!("{node}-reply-{}", uuid::Uuid::new_v4());
        let sender = Sender::builder()
            .name(link_name("rpc-send"))
            .target(node)
            .sender_settle_mode(SenderSettleMode::Settled)
            .attach(&mut session)
            .await
            .map_err(|e| sender_attach_failure(&e))?;
        let receiver = Receiver::builder()
            .name(link_name("rpc-recv"))
            .source(node)
            .target(reply_to.as_str())
            .receiver_settle_mode(ReceiverSettleMode::First)
            .attach(&mut session)
            .await
            .map_err(|e| receiver_attach_failure(&e))?;
        let pending = SharedPending::default();
        let reader = tokio::spawn(read_replies(receiver, pending.clone()));
        Ok(Self {
            sender: tokio::sync::Mutex::new(sender),
            reply_to,
            pending,
            reader,
            _session: Mutex::new(session),
        })
    }

    /// Sends one request and waits for its response, at most `timeout` in all.
    pub(crate) async fn call(
        &self,
        properties: Vec<(&str, SimpleValue)>,
        body: Value,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        let deadline = Instant::now() + timeout;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if let Some(why) = &p.broken {
                return Err(why.clone());
            }
            p.waiting.insert(id.clone(), tx);
        }
        let _slot = Slot {
            pending: &self.pending,
            id: id.clone(),
        };
        let msg = self.request(id, properties, body);
        let sent = tokio::time::timeout_at(deadline, async {
            let mut sender = self.sender.lock().await;
            sender.send(msg).await
        })
        .await
        .map_err(|_| Failure::Timeout(timeout))?;
        sent.map_err(|e| send_failure(&e))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(Failure::Timeout(timeout)),
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Failure::ConnectionLost(
                "the response link stopped before the answer".into(),
            )),
        }
    }

    fn request(
        &self,
        id: String,
        properties: Vec<(&str, SimpleValue)>,
        body: Value,
    ) -> AmqpMessage<AmqpValue<Value>> {
        let mut ap = OrderedMap::new();
        for (k, v) in properties {
            ap.insert(k.to_owned(), v);
        }
        AmqpMessage {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(AmqpId::String(id)),
                reply_to: Some(self.reply_to.clone()),
                ..Properties::default()
            }),
            application_properties: Some(ApplicationProperties(ap)),
            body: AmqpValue(body),
            footer: None,
        }
    }
}

/// Hands each response to the call it answers (a response to a call that gave up is
/// dropped); when the link stops, fails every waiting call with the cause.
async fn read_replies(mut receiver: Receiver, pending: SharedPending) {
    let why = loop {
        let d = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => break recv_failure(&e),
        };
        let _ = receiver.accept(&d).await;
        let m = d.into_message();
        let Some(AmqpId::String(corr)) =
            m.properties.as_ref().and_then(|p| p.correlation_id.clone())
        else {
            continue;
        };
        let reply = lock(&pending).waiting.remove(&corr);
        if let Some(tx) = reply {
            let _ = tx.send(Ok(Response::of(m)));
        }
    };
    let waiting = {
        let mut p = lock(&pending);
        p.broken = Some(why.clone());
        std::mem::take(&mut p.waiting)
    };
    for (_, tx) in waiting {
        let _ = tx.send(Err(why.clone()));
    }
}
