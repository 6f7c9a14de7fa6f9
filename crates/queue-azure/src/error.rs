//! The one place where Service Bus failures become [`QueueError`]s.

use std::time::Duration;

use queue_core::{AuthFailure, BoxError, QueueError, RetryClass, SessionId};

pub(crate) const PROVIDER: &str = "service-bus";

/// What went wrong, as seen on the wire.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// An AMQP error condition (on a detach, a rejected outcome, a refused attach...).
    Condition {
        condition: String,
        description: String,
    },
    /// A `$management` or `$cbs` response with a non-success status.
    Status {
        code: i32,
        condition: Option<String>,
        description: String,
    },
    /// No answer in time.
    Timeout(Duration),
    /// The connection, session or link died underneath the call.
    ConnectionLost(String),
    /// The TLS handshake refused the server (certificate or host name): retrying will not
    /// help until the configuration or the server changes.
    Tls(String),
    /// The local lock bookkeeping says the lock is gone (unknown, settled or expired).
    LockGone,
    /// The message does not fit.
    TooLarge { size: usize, max: usize },
}

impl Failure {
    /// A one-line description for logs (no secrets: conditions, statuses and causes only).
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Condition {
                condition,
                description,
            } => format!("{condition}: {}", clip(description)),
            Self::Status {
                code,
                condition,
                description,
            } => format!(
                "status {code} {}: {}",
                condition.as_deref().unwrap_or(""),
                clip(description)
            ),
            Self::Timeout(after) => format!("no answer within {after:?}"),
            Self::ConnectionLost(why) | Self::Tls(why) => why.clone(),
            Self::LockGone => "lock gone".into(),
            Self::TooLarge { size, max } => format!("message of {size} bytes over {max}"),
        }
    }
}

/// Where a failure happened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) operation: &'static str,
    pub(crate) queue: &'a str,
    pub(crate) session: Option<&'a SessionId>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(operation: &'static str, queue: &'a str) -> Self {
        Self {
            operation,
            queue,
            session: None,
        }
    }
    pub(crate) fn with_session(mut self, session: Option<&'a SessionId>) -> Self {
        self.session = session;
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Detail(String);

fn boxed(text: String) -> BoxError {
    Box::new(Detail(text))
}

/// Maps a failure to a [`QueueError`]. Every conversion in the crate goes through here.
pub(crate) fn map_failure(f: Failure, ctx: Ctx<'_>) -> QueueError {
    let (condition, description, status) = match f {
        Failure::Condition {
            condition,
            description,
        } => (Some(condition), description, None),
        Failure::Status {
            code,
            condition,
            description,
        } => (condition, description, Some(code)),
        local => return map_local(local, ctx),
    };
    let cond = condition
        .as_deref()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| condition_of_status(status));
    if let Some(refusal) = session_kind_refusal(cond, &description, ctx) {
        return refusal;
    }
    if let Some(e) = map_entity_condition(cond, &description, ctx) {
        return e;
    }
    map_service_condition(cond, &description, status, ctx)
}

/// Failures found on this side: timeouts, lost connections, TLS, local lock bookkeeping
/// and size checks.
fn map_local(f: Failure, ctx: Ctx<'_>) -> QueueError {
    match f {
        Failure::Timeout(after) => QueueError::Timeout {
            provider: PROVIDER,
            operation: ctx.operation,
            after,
        },
        // A broker that attaches a receiver but drops its session filter cannot give a
        // session either; fe2o3 fails such an attach locally. Retrying will not help.
        Failure::ConnectionLost(why)
            if why.contains("DesiredFilterNotSupported") && why.contains(SESSION_FILTER) =>
        {
            QueueError::unsupported(PROVIDER, NO_SESSIONS)
        }
        Failure::ConnectionLost(why) => QueueError::Connection {
            provider: PROVIDER,
            operation: ctx.operation,
            source: boxed(why),
        },
        Failure::Tls(why) => QueueError::Provider {
            provider: PROVIDER,
            operation: ctx.operation,
            class: RetryClass::Permanent,
            source: boxed(format!("TLS: {why}")),
        },
        Failure::TooLarge { size, max } => QueueError::MessageTooLarge {
            provider: PROVIDER,
            queue: ctx.queue.to_owned(),
            size,
            max,
        },
        Failure::LockGone => lock_lost(ctx),
        remote @ (Failure::Condition { .. } | Failure::Status { .. }) => map_failure(remote, ctx),
    }
}

/// The AMQP condition a management status stands for, when the response named none.
fn condition_of_status(status: Option<i32>) -> &'static str {
    match status {
        Some(404) => "amqp:not-found",
        Some(401) => "amqp:unauthorized-access",
        Some(403) => "com.microsoft:forbidden",
        Some(408) => "com.microsoft:timeout",
        Some(410) => "com.microsoft:message-lock-lost",
        Some(413) => "amqp:link:message-size-exceeded",
        Some(503) => "com.microsoft:server-busy",
        Some(c) if c >= 500 => "amqp:internal-error",
        _ => "",
    }
}

/// Conditions about the entity, a lock, a session or the credentials.
fn map_entity_condition(cond: &str, description: &str, ctx: Ctx<'_>) -> Option<QueueError> {
    Some(match cond {
        "amqp:not-found"
        | "com.microsoft:entity-not-found"
        | "com.microsoft:no-matching-subscription" => QueueError::QueueNotFound {
            provider: PROVIDER,
            queue: ctx.queue.to_owned(),
            operation: ctx.operation,
        },
        "com.microsoft:message-lock-lost" => lock_lost(ctx),
        "com.microsoft:session-lock-lost" => match ctx.session {
            Some(s) => QueueError::SessionLockLost {
                provider: PROVIDER,
                queue: ctx.queue.to_owned(),
                session: s.clone(),
                operation: ctx.operation,
            },
            None => lock_lost(ctx),
        },
        "com.microsoft:session-cannot-be-locked" => match ctx.session {
            Some(s) => QueueError::SessionLocked {
                provider: PROVIDER,
                queue: ctx.queue.to_owned(),
                session: s.clone(),
            },
            None => transient(ctx, cond, description),
        },
        "amqp:unauthorized-access" => QueueError::Auth {
            provider: PROVIDER,
            operation: ctx.operation,
            kind: AuthFailure::Authentication,
            detail: "the namespace refused the credentials (check the key name, key or token)"
                .to_owned(),
        },
        "com.microsoft:forbidden" => QueueError::Auth {
            provider: PROVIDER,
            operation: ctx.operation,
            kind: AuthFailure::Authorization,
            detail: "the credentials lack a claim (Send, Listen or Manage) for this entity"
                .to_owned(),
        },
        _ => return None,
    })
}

/// Conditions about the message, the service's load, the connection, or the request.
fn map_service_condition(
    cond: &str,
    description: &str,
    status: Option<i32>,
    ctx: Ctx<'_>,
) -> QueueError {
    let detail = || boxed(format!("{cond}: {}", clip(description)));
    match cond {
        "amqp:link:message-size-exceeded" | "com.microsoft:message-size-exceeded" => {
            QueueError::MessageTooLarge {
                provider: PROVIDER,
                queue: ctx.queue.to_owned(),
                size: 0,
                max: 0,
            }
        }
        "com.microsoft:server-busy" => QueueError::Throttled {
            provider: PROVIDER,
            operation: ctx.operation,
            retry_after: Some(Duration::from_secs(10)),
        },
        "com.microsoft:timeout" | "amqp:resource-limit-exceeded" => QueueError::Timeout {
            provider: PROVIDER,
            operation: ctx.operation,
            after: Duration::ZERO,
        },
        c if CONNECTION_CONDITIONS.contains(&c) => QueueError::Connection {
            provider: PROVIDER,
            operation: ctx.operation,
            source: detail(),
        },
        c if PERMANENT_CONDITIONS.contains(&c) => QueueError::Provider {
            provider: PROVIDER,
            operation: ctx.operation,
            class: RetryClass::Permanent,
            source: detail(),
        },
        _ => match status {
            Some(c) if (400..500).contains(&c) => QueueError::Provider {
                provider: PROVIDER,
                operation: ctx.operation,
                class: RetryClass::Permanent,
                source: boxed(format!("status {c} {cond}: {}", clip(description))),
            },
            _ => transient(ctx, cond, description),
        },
    }
}

/// Conditions that mean the connection or link went away (transient).
const CONNECTION_CONDITIONS: &[&str] = &[
    "amqp:connection:forced",
    "amqp:connection:framing-error",
    "amqp:connection:redirect",
    "amqp:link:detach-forced",
    "amqp:link:stolen",
    "amqp:session:window-violation",
    "amqp:session:errant-link",
    "amqp:internal-error",
    "com.microsoft:operation-cancelled",
    "com.microsoft:container-close",
];

/// Conditions that retrying the same request cannot fix.
const PERMANENT_CONDITIONS: &[&str] = &[
    "com.microsoft:argument-error",
    "com.microsoft:argument-out-of-range",
    "amqp:invalid-field",
    "amqp:decode-error",
    "amqp:not-allowed",
    "amqp:not-implemented",
    "com.microsoft:entity-disabled",
    "com.microsoft:message-not-found",
    "com.microsoft:session-filter-mismatch",
];

const SESSION_FILTER: &str = "com.microsoft:session-filter";

/// `accept_session` on an entity that does not require sessions.
const NO_SESSIONS: &str = "accept_session on a queue without sessions";

/// A session-less receive on an entity that requires sessions.
const SESSIONS_REQUIRED: &str = "receive without a session on a queue that requires sessions";

/// Service Bus refuses a receiver that does not match the entity with `amqp:not-allowed`
/// on the attach's detach, and a description naming sessions ("... requires sessions to
/// create a non-sessionful message receiver", "A sessionful message receiver cannot be
/// created on an entity that does not require sessions"). That is a property of the queue,
/// not an outage, so it becomes [`QueueError::Unsupported`], which callers (the runtime's
/// `session_mode = "auto"`) take as "stop asking", never as something to retry.
fn session_kind_refusal(cond: &str, description: &str, ctx: Ctx<'_>) -> Option<QueueError> {
    if cond != "amqp:not-allowed" || !description.to_ascii_lowercase().contains("session") {
        return None;
    }
    let operation = match ctx.operation {
        "accept_session" => NO_SESSIONS,
        "receive" => SESSIONS_REQUIRED,
        _ => return None,
    };
    Some(QueueError::unsupported(PROVIDER, operation))
}

fn lock_lost(ctx: Ctx<'_>) -> QueueError {
    QueueError::LockLost {
        provider: PROVIDER,
        queue: ctx.queue.to_owned(),
        operation: ctx.operation,
    }
}

fn transient(ctx: Ctx<'_>, cond: &str, description: &str) -> QueueError {
    QueueError::Provider {
        provider: PROVIDER,
        operation: ctx.operation,
        class: RetryClass::Transient,
        source: boxed(format!("{cond}: {}", clip(description))),
    }
}

/// Broker descriptions carry tracking ids and entity names, never credentials; they are
/// still bounded so a hostile peer cannot flood logs.
fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(c: &str) -> Failure {
        Failure::Condition {
            condition: c.to_owned(),
            description: "desc".to_owned(),
        }
    }

    fn status(code: i32, c: Option<&str>) -> Failure {
        Failure::Status {
            code,
            condition: c.map(str::to_owned),
            description: "desc".to_owned(),
        }
    }

    #[test]
    fn mapping_table() {
        let s = SessionId::new("s-1").unwrap();
        let plain = Ctx::new("op", "q");
        let sess = Ctx::new("op", "q").with_session(Some(&s));
        let cases: Vec<(Failure, Ctx<'_>, &str, RetryClass)> = vec![
            (
                cond("com.microsoft:server-busy"),
                plain,
                "throttled",
                RetryClass::Transient,
            ),
            (status(503, None), plain, "throttled", RetryClass::Transient),
            (
                cond("com.microsoft:timeout"),
                plain,
                "timeout",
                RetryClass::Transient,
            ),
            (status(408, None), plain, "timeout", RetryClass::Transient),
            (
                Failure::Timeout(Duration::from_secs(1)),
                plain,
                "timeout",
                RetryClass::Transient,
            ),
            (
                Failure::ConnectionLost("reset".into()),
                plain,
                "connection",
                RetryClass::Transient,
            ),
            (
                cond("amqp:connection:forced"),
                plain,
                "connection",
                RetryClass::Transient,
            ),
            (
                cond("amqp:link:detach-forced"),
                plain,
                "connection",
                RetryClass::Transient,
            ),
            (
                cond("amqp:not-found"),
                plain,
                "queue_not_found",
                RetryClass::Permanent,
            ),
            (
                status(404, None),
                plain,
                "queue_not_found",
                RetryClass::Permanent,
            ),
            (
                cond("com.microsoft:entity-not-found"),
                plain,
                "queue_not_found",
                RetryClass::Permanent,
            ),
            (
                cond("com.microsoft:message-lock-lost"),
                plain,
                "lock_lost",
                RetryClass::Permanent,
            ),
            (
                status(410, Some("com.microsoft:message-lock-lost")),
                plain,
                "lock_lost",
                RetryClass::Permanent,
            ),
            (Failure::LockGone, plain, "lock_lost", RetryClass::Permanent),
            (
                cond("com.microsoft:session-lock-lost"),
                sess,
                "session_lock_lost",
                RetryClass::Permanent,
            ),
            (
                cond("com.microsoft:session-lock-lost"),
                plain,
                "lock_lost",
                RetryClass::Permanent,
            ),
            (
                cond("com.microsoft:session-cannot-be-locked"),
                sess,
                "session_locked",
                RetryClass::Transient,
            ),
            (
                cond("amqp:unauthorized-access"),
                plain,
                "auth",
                RetryClass::Permanent,
            ),
            (status(401, None), plain, "auth", RetryClass::Permanent),
            (status(403, None), plain, "auth", RetryClass::Permanent),
            (
                cond("amqp:link:message-size-exceeded"),
                plain,
                "message_too_large",
                RetryClass::Permanent,
            ),
            (
                Failure::TooLarge { size: 2, max: 1 },
                plain,
                "message_too_large",
                RetryClass::Permanent,
            ),
            (
                cond("com.microsoft:argument-error"),
                plain,
                "provider",
                RetryClass::Permanent,
            ),
            (status(400, None), plain, "provider", RetryClass::Permanent),
            (
                status(500, None),
                plain,
                "connection",
                RetryClass::Transient,
            ),
            (
                Failure::Condition {
                    condition: "amqp:not-allowed".into(),
                    description: "A sessionful message receiver cannot be created on an \
                                  entity that does not require sessions."
                        .into(),
                },
                Ctx::new("accept_session", "q"),
                "unsupported",
                RetryClass::Permanent,
            ),
            (
                Failure::Condition {
                    condition: "amqp:not-allowed".into(),
                    description: "It is not possible for an entity that requires sessions \
                                  to create a non-sessionful message receiver."
                        .into(),
                },
                Ctx::new("receive", "q"),
                "unsupported",
                RetryClass::Permanent,
            ),
            (
                Failure::ConnectionLost(
                    "attach failed: DesiredFilterNotSupported { not_supported: \
                     [Symbol(\"com.microsoft:session-filter\")] }"
                        .into(),
                ),
                Ctx::new("accept_session", "q"),
                "unsupported",
                RetryClass::Permanent,
            ),
            // Other refusals stay plain permanent provider errors.
            (
                cond("amqp:not-allowed"),
                Ctx::new("receive", "q"),
                "provider",
                RetryClass::Permanent,
            ),
            (
                Failure::Condition {
                    condition: "amqp:not-allowed".into(),
                    description: "session state too large".into(),
                },
                Ctx::new("set_session_state", "q"),
                "provider",
                RetryClass::Permanent,
            ),
            (
                cond("com.microsoft:something-new"),
                plain,
                "provider",
                RetryClass::Transient,
            ),
        ];
        for (failure, ctx, label, class) in cases {
            let text = format!("{failure:?}");
            let e = map_failure(failure, ctx);
            assert_eq!(e.kind_label(), label, "{text} -> {e}");
            assert_eq!(e.retry_class(), class, "{text} -> {e}");
        }
    }

    #[test]
    fn session_kind_refusals_say_what_the_queue_lacks() {
        let e = map_failure(
            Failure::Condition {
                condition: "amqp:not-allowed".into(),
                description: "entity does not require sessions".into(),
            },
            Ctx::new("accept_session", "q"),
        );
        assert_eq!(
            e.to_string(),
            "accept_session on a queue without sessions is not supported by service-bus"
        );
        let e = map_failure(
            Failure::Condition {
                condition: "amqp:not-allowed".into(),
                description: "entity requires sessions".into(),
            },
            Ctx::new("receive", "q"),
        );
        assert!(
            e.to_string().contains("queue that requires sessions"),
            "{e}"
        );
    }

    #[test]
    fn auth_errors_never_echo_the_description() {
        let e = map_failure(
            Failure::Condition {
                condition: "amqp:unauthorized-access".into(),
                description: "token CANARY-tok rejected".into(),
            },
            Ctx::new("send", "q"),
        );
        assert!(!e.to_string().contains("CANARY"));
        assert!(!format!("{e:?}").contains("CANARY"));
    }
}
