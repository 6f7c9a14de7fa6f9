//! The `$cbs` and `$management` nodes: requests and their responses.

use super::delivery::app_prop_str;
use super::*;

pub(super) fn status_of(e: &EmulatorError) -> i32 {
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
pub(super) fn management_condition_of(e: &EmulatorError) -> &'static str {
    condition_of(e, "com.microsoft:argument-error")
}

/// The AMQP error condition Service Bus uses for `e`; `other` for errors without one of
/// their own (link refusals and `$management` answers differ only there).
pub(super) fn condition_of(e: &EmulatorError, other: &'static str) -> &'static str {
    match e {
        EmulatorError::EntityNotFound { .. } => "amqp:not-found",
        EmulatorError::LockLost => "com.microsoft:message-lock-lost",
        EmulatorError::SessionLockLost => "com.microsoft:session-lock-lost",
        EmulatorError::SessionCannotBeLocked { .. } => "com.microsoft:session-cannot-be-locked",
        EmulatorError::NoSessionAvailable => "com.microsoft:timeout",
        EmulatorError::QuotaExceeded { .. } => "amqp:resource-limit-exceeded",
        EmulatorError::NotAllowed { .. } => "amqp:not-allowed",
        _ => other,
    }
}

/// The `errorCondition` of a failed `$cbs` response.
pub(super) fn cbs_condition_of(status: i32) -> &'static str {
    match status {
        401 => "amqp:unauthorized-access",
        400 => "com.microsoft:argument-error",
        _ => "amqp:internal-error",
    }
}

/// A node's answer: status, description, body, error condition.
type Answer = (i32, String, Value, &'static str);

/// The encoded response to `req`: both spellings of the status properties (entity
/// `$management` replies use `statusCode`, `$cbs` ones `status-code`), and the error
/// condition when the request failed.
fn response_bytes(req: &AmqpMessage, answer: Answer) -> Result<Vec<u8>, ConnError> {
    let (status, desc, body, condition) = answer;
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
        for key in ["errorCondition", "error-condition"] {
            ap.insert(key.to_owned(), SimpleValue::Symbol(Symbol::from(condition)));
        }
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
    Ok(serde_amqp::to_vec(&Serializable(resp))?)
}

impl Conn {
    /// Handles one `$cbs` / `$management` request and queues the response.
    pub(super) async fn on_request(
        &mut self,
        ch: u16,
        node: &Node,
        req: AmqpMessage,
    ) -> Result<(), ConnError> {
        let answer = self.answer(node, &req);
        let bytes = response_bytes(&req, answer)?;
        let reply_to = req.properties.as_ref().and_then(|p| p.reply_to.clone());
        self.queue_response(ch, node, reply_to, bytes);
        Ok(())
    }

    /// Status, description, body and error condition of the answer to `req`.
    fn answer(&mut self, node: &Node, req: &AmqpMessage) -> Answer {
        let op = app_prop_str(req, "operation").unwrap_or_default();
        let entity = match node {
            Node::Cbs => {
                let (status, desc, body) = self.cbs(req);
                self.authorized |= status == 200;
                return (status, desc, body, cbs_condition_of(status));
            }
            Node::Management(entity) => entity,
        };
        let associated = app_prop_str(req, "associated-link-name");
        let owner_of = |sid: &str| self.session_owner(&entity.queue, sid, associated.as_deref());
        match crate::management::handle(&self.shared.broker, entity, &op, req, &owner_of) {
            Ok(v) => {
                let status = if matches!(v, Value::Null) && op == "com.microsoft:peek-message" {
                    204
                } else {
                    200
                };
                (status, "OK".into(), v, "")
            }
            Err(e) => (
                status_of(&e),
                e.to_string(),
                Value::Null,
                management_condition_of(&e),
            ),
        }
    }

    /// Queues a response for the node's receiver the request named. The response goes to
    /// the receiver whose target address is the request's reply-to; rhea (the JavaScript
    /// SDK) leaves the target empty and names the link instead, so a link of that name
    /// (or, failing that, one with no target) serves too.
    fn queue_response(&mut self, ch: u16, node: &Node, reply_to: Option<String>, bytes: Vec<u8>) {
        let node_addr = match node {
            Node::Cbs => "$cbs".to_owned(),
            Node::Management(e) => match e.sub {
                SubQueue::Main => format!("{}/$management", e.queue),
                SubQueue::DeadLetter => format!("{}/$deadletterqueue/$management", e.queue),
            },
        };
        let Some(s) = self.sessions.get_mut(&ch) else {
            return;
        };
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
    }

    /// The receiver on this connection a session operation speaks for: the link named by
    /// `associated-link-name` when the request carries one, else whichever of this
    /// connection's receivers holds the session. `None` when there is no such receiver.
    pub(super) fn session_owner(
        &self,
        queue: &str,
        sid: &str,
        associated: Option<&str>,
    ) -> Option<u64> {
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

    pub(super) fn cbs(&self, req: &AmqpMessage) -> (i32, String, Value) {
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
}
