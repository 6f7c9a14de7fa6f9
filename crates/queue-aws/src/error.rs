//! The one place where SQS failures become [`QueueError`]s.
//!
//! SDK errors are first reduced to [`Failure`] (code, HTTP status, transport kind), a
//! plain value that keeps neither the SDK type nor the server's message text (which can
//! echo request values such as receipt handles or attribute values). [`map_failure`]
//! then classifies it; its table test is the specification of the mapping.

use std::{error::Error as StdError, fmt, time::Duration};

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use queue_core::{AuthFailure, BoxError, QueueError, RetryClass};

use crate::PROVIDER;

/// What went wrong, reduced to classification facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The service answered with an error.
    Service {
        code: Option<String>,
        status: Option<u16>,
        /// `Some(false)` when a batch entry failed through no fault of the sender.
        sender_fault: Option<bool>,
        /// Server text, kept only to tell size and attribute problems apart inside a
        /// generic `InvalidParameterValue`; never copied into an error.
        hint: Hint,
    },
    /// The call timed out (SDK operation or attempt timeout).
    Timeout,
    /// The request never got an answer (DNS, connect, TLS, I/O).
    Transport {
        timeout: bool,
        cause: TransportCause,
    },
    /// No credentials could be loaded (the default chain found none, or a configured
    /// source such as a profile, SSO or web identity failed).
    Credentials,
    /// The request could not be built (e.g. no region).
    Construction { detail: &'static str },
    /// An answer came that could not be read.
    Response { status: Option<u16> },
}

/// Why a request got no answer, as far as a caller can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportCause {
    /// The endpoint's host name did not resolve.
    Dns,
    /// The TLS handshake failed; retrying will not help until the certificate, the
    /// trusted roots or the endpoint change.
    Tls(TlsProblem),
    /// The host refused the connection (nothing listens on the port).
    Refused,
    /// Another I/O failure.
    Io(std::io::ErrorKind),
    /// No detail available.
    Unknown,
}

/// What the TLS handshake objected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsProblem {
    /// The certificate chain does not lead to a trusted root (self-signed, private CA).
    Untrusted,
    /// The certificate is not valid for the endpoint's host name.
    WrongHost,
    /// The certificate is expired or not yet valid.
    Expired,
    /// Another handshake failure (protocol version, cipher suites, revocation...).
    Other,
}

/// What an `InvalidParameterValue` message says, as far as classification cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hint {
    None,
    TooLarge,
    Attributes,
    /// The receipt handle is unknown or its message is gone (real SQS answers a
    /// `ChangeMessageVisibility` on a deleted message this way).
    Receipt,
}

impl Hint {
    fn from_message(msg: Option<&str>) -> Self {
        let Some(msg) = msg else { return Self::None };
        let lower = msg.to_ascii_lowercase();
        if lower.contains("receipthandle") || lower.contains("receipt handle") {
            Self::Receipt
        } else if lower.contains("shorter than")
            || lower.contains("too long")
            || lower.contains("size")
        {
            Self::TooLarge
        } else if lower.contains("attribute") {
            Self::Attributes
        } else {
            Self::None
        }
    }
}

/// Where the failure happened, for the error's context fields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) operation: &'static str,
    pub(crate) queue: &'a str,
    /// Configured operation timeout, reported by [`QueueError::Timeout`].
    pub(crate) timeout: Duration,
    /// Size and limit of the message being sent, if this was a send.
    pub(crate) size: Option<(usize, usize)>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(operation: &'static str, queue: &'a str, timeout: Duration) -> Self {
        Self {
            operation,
            queue,
            timeout,
            size: None,
        }
    }
}

/// Reduces an SDK error to [`Failure`].
pub(crate) fn failure_of<E>(err: &SdkError<E, aws_sdk_sqs::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(service) => Failure::Service {
            code: service.err().code().map(str::to_owned),
            status: Some(service.raw().status().as_u16()),
            sender_fault: None,
            hint: Hint::from_message(service.err().message()),
        },
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(dispatch) => dispatch_failure(
            dispatch.is_timeout(),
            dispatch
                .as_connector_error()
                .map(|c| c as &(dyn StdError + 'static)),
        ),
        SdkError::ConstructionFailure(_) => Failure::Construction {
            detail: "the request could not be built (missing credentials or region?)",
        },
        SdkError::ResponseError(resp) => Failure::Response {
            status: Some(resp.raw().status().as_u16()),
        },
        _ => Failure::Response { status: None },
    }
}

/// Reduces a failed batch entry to [`Failure`].
pub(crate) fn failure_of_entry(code: &str, sender_fault: bool, message: Option<&str>) -> Failure {
    Failure::Service {
        code: Some(code.to_owned()),
        status: None,
        sender_fault: Some(sender_fault),
        hint: Hint::from_message(message),
    }
}

/// Classifies a request that got no answer by walking its cause chain. Missing
/// credentials surface here too: the SDK resolves them while dispatching.
fn dispatch_failure(timeout: bool, err: Option<&(dyn StdError + 'static)>) -> Failure {
    let mut cause = TransportCause::Unknown;
    let mut io = None;
    for e in causes(err) {
        if e.is::<CredentialsError>() {
            return Failure::Credentials;
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            cause = TransportCause::Tls(tls_problem(tls));
        } else if cause == TransportCause::Unknown && e.to_string() == "dns error" {
            // hyper-util's connector names a failed lookup so; it has no typed kind.
            cause = TransportCause::Dns;
        } else if let Some(e) = e.downcast_ref::<std::io::Error>() {
            io.get_or_insert(e.kind());
        }
    }
    if cause == TransportCause::Unknown {
        cause = match io {
            Some(std::io::ErrorKind::ConnectionRefused) => TransportCause::Refused,
            Some(kind) => TransportCause::Io(kind),
            None => TransportCause::Unknown,
        };
    }
    Failure::Transport { timeout, cause }
}

/// The error and its causes. `io::Error::source` skips the error it wraps, so that one
/// is visited through `get_ref`.
fn causes<'e>(err: Option<&'e (dyn StdError + 'static)>) -> Vec<&'e (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = err;
    while let Some(e) = next {
        out.push(e);
        if out.len() > 32 {
            break;
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

fn tls_problem(err: &rustls::Error) -> TlsProblem {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongHost,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => TlsProblem::Expired,
            C::UnknownIssuer | C::BadSignature | C::Other(_) => TlsProblem::Untrusted,
            _ => TlsProblem::Other,
        },
        _ => TlsProblem::Other,
    }
}

/// Shorthand: reduce and map.
pub(crate) fn map_sdk<E>(
    err: SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    ctx: Ctx<'_>,
) -> QueueError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    map_failure(&failure_of(&err), ctx)
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "OverLimit",
    "KmsThrottled",
    "KMS.ThrottlingException",
];
const SERVER: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "QueueDeletedRecently",
    "AWS.SimpleQueueService.QueueDeletedRecently",
    "PurgeQueueInProgress",
    "AWS.SimpleQueueService.PurgeQueueInProgress",
];
const NOT_FOUND: &[&str] = &[
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
];
const AUTHORIZATION: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "KmsAccessDenied",
    "KMS.AccessDeniedException",
];
const AUTHENTICATION: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidSecurity",
    "InvalidAccessKeyId",
    "AuthFailure",
    "RequestExpired",
];
const LOCK_LOST: &[&str] = &[
    "ReceiptHandleIsInvalid",
    "InvalidReceiptHandle",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
];
const TOO_LARGE: &[&str] = &[
    "MessageTooLong",
    "BatchRequestTooLong",
    "AWS.SimpleQueueService.BatchRequestTooLong",
];
const BAD_MESSAGE: &[&str] = &[
    "InvalidMessageContents",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "TooManyEntriesInBatchRequest",
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "BatchEntryIdsNotDistinct",
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "EmptyBatchRequest",
    "AWS.SimpleQueueService.EmptyBatchRequest",
    "InvalidBatchEntryId",
    "AWS.SimpleQueueService.InvalidBatchEntryId",
];
const UNSUPPORTED: &[&str] = &[
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
];
const INVALID_PARAMETER: &[&str] = &[
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "InvalidParameterCombination",
    "MissingParameter",
    "ValidationError",
    "ValidationException",
    "InvalidAddress",
];

/// Operations whose invalid parameters are the message's fault.
fn is_send(operation: &str) -> bool {
    operation.starts_with("send") || operation == "dead_letter" || operation == "redrive"
}

/// Maps a reduced failure to the queue error a caller sees. The only classification of
/// SQS failures in this crate.
pub(crate) fn map_failure(failure: &Failure, ctx: Ctx<'_>) -> QueueError {
    let op = ctx.operation;
    match failure {
        Failure::Timeout | Failure::Transport { timeout: true, .. } => QueueError::Timeout {
            provider: PROVIDER,
            operation: op,
            after: ctx.timeout,
        },
        Failure::Transport {
            cause: TransportCause::Tls(_),
            ..
        } => provider_err(failure, op, RetryClass::Permanent),
        Failure::Transport { .. } => QueueError::Connection {
            provider: PROVIDER,
            operation: op,
            source: Box::new(Redacted(describe(failure))),
        },
        Failure::Credentials => QueueError::Auth {
            provider: PROVIDER,
            operation: op,
            kind: AuthFailure::Authentication,
            detail: "no AWS credentials could be loaded (environment, profile, SSO, web identity, container or instance metadata); configure credentials for the SQS provider".to_owned(),
        },
        Failure::Construction { .. } => QueueError::Auth {
            provider: PROVIDER,
            operation: op,
            kind: AuthFailure::Authentication,
            detail: "the request could not be signed or built; check that credentials and a region are configured".to_owned(),
        },
        Failure::Response { status } => match status {
            Some(429) => throttled(op),
            Some(s) if *s >= 500 => provider_err(failure, op, RetryClass::Transient),
            // An unreadable 2xx/4xx answer: often a proxy or a wrong endpoint.
            _ => provider_err(failure, op, RetryClass::Permanent),
        },
        Failure::Service { .. } => map_service(failure, ctx),
    }
}

fn provider_err(failure: &Failure, op: &'static str, class: RetryClass) -> QueueError {
    QueueError::Provider {
        provider: PROVIDER,
        operation: op,
        class,
        source: Box::new(Redacted(describe(failure))) as BoxError,
    }
}

fn throttled(op: &'static str) -> QueueError {
    QueueError::Throttled {
        provider: PROVIDER,
        operation: op,
        retry_after: None,
    }
}

fn too_large(ctx: Ctx<'_>) -> QueueError {
    let (size, max) = ctx.size.unwrap_or((0, crate::codec::MAX_MESSAGE_SIZE));
    QueueError::MessageTooLarge {
        provider: PROVIDER,
        queue: ctx.queue.to_owned(),
        size,
        max,
    }
}

fn lock_lost(ctx: Ctx<'_>) -> QueueError {
    QueueError::LockLost {
        provider: PROVIDER,
        queue: ctx.queue.to_owned(),
        operation: ctx.operation,
    }
}

/// An error answer of the service: by code first, then by HTTP status.
fn map_service(failure: &Failure, ctx: Ctx<'_>) -> QueueError {
    let Failure::Service {
        code,
        status,
        sender_fault,
        hint,
    } = failure
    else {
        return provider_err(failure, ctx.operation, RetryClass::Permanent);
    };
    let op = ctx.operation;
    let code = code.as_deref().unwrap_or_default();
    let is = |table: &[&str]| table.contains(&code);
    if let Some(err) = map_known_code(code, ctx) {
        err
    } else if is(SERVER) || sender_fault == &Some(false) {
        provider_err(failure, op, RetryClass::Transient)
    } else if is(INVALID_PARAMETER) {
        match hint {
            Hint::Receipt => lock_lost(ctx),
            Hint::TooLarge if is_send(op) => too_large(ctx),
            _ if is_send(op) => QueueError::InvalidMessage {
                provider: PROVIDER,
                reason: match hint {
                    Hint::Attributes => format!("SQS rejected the message attributes ({code})"),
                    _ => format!("SQS rejected a message parameter ({code})"),
                },
            },
            _ => provider_err(failure, op, RetryClass::Permanent),
        }
    } else {
        map_status(failure, *status, code, op)
    }
}

/// Codes with one meaning whatever the operation.
fn map_known_code(code: &str, ctx: Ctx<'_>) -> Option<QueueError> {
    let op = ctx.operation;
    let is = |table: &[&str]| table.contains(&code);
    let auth = |kind, detail| QueueError::Auth {
        provider: PROVIDER,
        operation: op,
        kind,
        detail,
    };
    Some(if is(THROTTLING) {
        throttled(op)
    } else if is(NOT_FOUND) {
        QueueError::QueueNotFound {
            provider: PROVIDER,
            queue: ctx.queue.to_owned(),
            operation: op,
        }
    } else if is(AUTHORIZATION) {
        auth(
            AuthFailure::Authorization,
            format!("SQS denied the call ({code}); check the IAM policy"),
        )
    } else if is(AUTHENTICATION) {
        auth(
            AuthFailure::Authentication,
            format!("SQS rejected the credentials ({code})"),
        )
    } else if is(LOCK_LOST) {
        lock_lost(ctx)
    } else if is(TOO_LARGE) {
        too_large(ctx)
    } else if is(BAD_MESSAGE) {
        QueueError::InvalidMessage {
            provider: PROVIDER,
            reason: format!("SQS rejected the message ({code})"),
        }
    } else if is(UNSUPPORTED) {
        QueueError::Unsupported {
            provider: PROVIDER,
            operation: op,
        }
    } else {
        return None;
    })
}

/// An unknown code: the HTTP status decides.
fn map_status(failure: &Failure, status: Option<u16>, code: &str, op: &'static str) -> QueueError {
    let auth = |kind, detail| QueueError::Auth {
        provider: PROVIDER,
        operation: op,
        kind,
        detail,
    };
    match status {
        Some(429) => throttled(op),
        Some(401) => auth(
            AuthFailure::Authentication,
            format!("SQS answered 401 ({code})"),
        ),
        Some(403) => auth(
            AuthFailure::Authorization,
            format!("SQS answered 403 ({code})"),
        ),
        Some(s) if s >= 500 => provider_err(failure, op, RetryClass::Transient),
        _ => provider_err(failure, op, RetryClass::Permanent),
    }
}

/// A one-line description of a failure without server text.
fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Service { code, status, .. } => format!(
            "SQS error code `{}`{}",
            code.as_deref().unwrap_or("<none>"),
            status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
        ),
        Failure::Timeout => "timed out".to_owned(),
        Failure::Transport {
            timeout: true,
            cause,
        } => format!("no answer from SQS in time ({})", describe_cause(*cause)),
        Failure::Transport { cause, .. } => describe_cause(*cause),
        Failure::Credentials => "no AWS credentials could be loaded".to_owned(),
        Failure::Construction { detail } => (*detail).to_owned(),
        Failure::Response { status } => format!(
            "unreadable answer from SQS{}",
            status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
        ),
    }
}

fn describe_cause(cause: TransportCause) -> String {
    match cause {
        TransportCause::Dns => {
            "DNS lookup of the SQS endpoint's host name failed (check the region or endpoint, and DNS)".to_owned()
        }
        TransportCause::Tls(problem) => format!(
            "TLS handshake with the SQS endpoint failed: {}",
            match problem {
                TlsProblem::Untrusted => "the server certificate is not trusted (unknown issuer or self-signed)",
                TlsProblem::WrongHost => "the server certificate is not valid for the endpoint's host name",
                TlsProblem::Expired => "the server certificate is expired or not yet valid",
                TlsProblem::Other => "the handshake was refused",
            }
        ),
        TransportCause::Refused => "the SQS endpoint refused the connection".to_owned(),
        TransportCause::Io(kind) => format!("no answer from SQS (I/O error: {kind})"),
        TransportCause::Unknown => "no answer from SQS (transport failure)".to_owned(),
    }
}

/// A source error carrying only our own description.
#[derive(Debug)]
struct Redacted(String);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Redacted {}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> Failure {
        Failure::Service {
            code: Some(code.to_owned()),
            status: Some(status),
            sender_fault: None,
            hint: Hint::None,
        }
    }

    fn ctx(op: &'static str) -> Ctx<'static> {
        Ctx {
            operation: op,
            queue: "jobs",
            timeout: Duration::from_secs(60),
            size: Some((2_000_000, 1_048_576)),
        }
    }

    #[test]
    fn mapping_table() {
        use RetryClass::{Permanent, Transient};
        // (failure, operation, expected kind label, expected retry class)
        let table: Vec<(Failure, &'static str, &str, RetryClass)> = vec![
            (
                service("ThrottlingException", 400),
                "send",
                "throttled",
                Transient,
            ),
            (
                service("RequestThrottled", 403),
                "receive",
                "throttled",
                Transient,
            ),
            (service("OverLimit", 403), "receive", "throttled", Transient),
            (service("KmsThrottled", 400), "send", "throttled", Transient),
            (service("InternalError", 500), "send", "provider", Transient),
            (
                service("ServiceUnavailable", 503),
                "receive",
                "provider",
                Transient,
            ),
            (
                service("SomethingNew", 502),
                "complete",
                "provider",
                Transient,
            ),
            (service("", 429), "send", "throttled", Transient),
            (
                service("QueueDoesNotExist", 400),
                "send",
                "queue_not_found",
                Permanent,
            ),
            (
                service("AWS.SimpleQueueService.NonExistentQueue", 400),
                "check_access",
                "queue_not_found",
                Permanent,
            ),
            (service("AccessDenied", 403), "send", "auth", Permanent),
            (
                service("InvalidClientTokenId", 403),
                "receive",
                "auth",
                Permanent,
            ),
            (
                service("SignatureDoesNotMatch", 403),
                "receive",
                "auth",
                Permanent,
            ),
            (service("Unknown", 403), "receive", "auth", Permanent),
            (
                service("ReceiptHandleIsInvalid", 400),
                "complete",
                "lock_lost",
                Permanent,
            ),
            (
                service("MessageNotInflight", 400),
                "abandon",
                "lock_lost",
                Permanent,
            ),
            (
                service("BatchRequestTooLong", 400),
                "send_batch",
                "message_too_large",
                Permanent,
            ),
            (
                Failure::Service {
                    code: Some("InvalidParameterValue".into()),
                    status: Some(400),
                    sender_fault: None,
                    hint: Hint::from_message(Some(
                        "One or more parameters are invalid. Reason: Message must be shorter than 262144 bytes.",
                    )),
                },
                "send",
                "message_too_large",
                Permanent,
            ),
            (
                Failure::Service {
                    code: Some("InvalidParameterValue".into()),
                    status: Some(400),
                    sender_fault: None,
                    hint: Hint::from_message(Some(
                        "Number of message attributes [11] exceeds the allowed maximum [10].",
                    )),
                },
                "send",
                "invalid_message",
                Permanent,
            ),
            (
                service("InvalidParameterValue", 400),
                "renew_lock",
                "provider",
                Permanent,
            ),
            (
                Failure::Service {
                    code: Some("InvalidParameterValue".into()),
                    status: Some(400),
                    sender_fault: None,
                    hint: Hint::from_message(Some(
                        "Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change.",
                    )),
                },
                "abandon",
                "lock_lost",
                Permanent,
            ),
            (
                service("InvalidMessageContents", 400),
                "send",
                "invalid_message",
                Permanent,
            ),
            (
                service("UnsupportedOperation", 400),
                "receive",
                "unsupported",
                Permanent,
            ),
            (
                service("QueueDeletedRecently", 400),
                "create_queue",
                "provider",
                Transient,
            ),
            (
                failure_of_entry("InternalError", false, None),
                "send_batch",
                "provider",
                Transient,
            ),
            (
                failure_of_entry("ReceiptHandleIsInvalid", true, Some("handle \"x\" bad")),
                "complete_batch",
                "lock_lost",
                Permanent,
            ),
            (Failure::Timeout, "receive", "timeout", Transient),
            (
                Failure::Transport {
                    timeout: false,
                    cause: TransportCause::Refused,
                },
                "send",
                "connection",
                Transient,
            ),
            (
                Failure::Transport {
                    timeout: false,
                    cause: TransportCause::Dns,
                },
                "receive",
                "connection",
                Transient,
            ),
            (
                Failure::Transport {
                    timeout: false,
                    cause: TransportCause::Tls(TlsProblem::Untrusted),
                },
                "check_access",
                "provider",
                Permanent,
            ),
            (Failure::Credentials, "receive", "auth", Permanent),
            (
                Failure::Transport {
                    timeout: true,
                    cause: TransportCause::Unknown,
                },
                "send",
                "timeout",
                Transient,
            ),
            (
                Failure::Construction { detail: "x" },
                "send",
                "auth",
                Permanent,
            ),
            (
                Failure::Response { status: Some(503) },
                "send",
                "provider",
                Transient,
            ),
            (
                Failure::Response { status: Some(200) },
                "send",
                "provider",
                Permanent,
            ),
            (
                service("QueueNameExists", 400),
                "create_queue",
                "provider",
                Permanent,
            ),
        ];
        for (failure, op, label, class) in table {
            let err = map_failure(&failure, ctx(op));
            assert_eq!(err.kind_label(), label, "{failure:?} during {op}: {err}");
            assert_eq!(err.retry_class(), class, "{failure:?} during {op}: {err}");
            assert!(err.to_string().contains("sqs"), "{err}");
        }
    }

    #[test]
    fn typed_fields_are_filled() {
        match map_failure(&service("MessageTooLong", 400), ctx("send")) {
            QueueError::MessageTooLarge {
                size, max, queue, ..
            } => {
                assert_eq!((size, max, queue.as_str()), (2_000_000, 1_048_576, "jobs"));
            }
            other => panic!("{other:?}"),
        }
        match map_failure(&service("QueueDoesNotExist", 400), ctx("receive")) {
            QueueError::QueueNotFound {
                queue, operation, ..
            } => {
                assert_eq!((queue.as_str(), operation), ("jobs", "receive"));
            }
            other => panic!("{other:?}"),
        }
        match map_failure(&service("AccessDenied", 403), ctx("send")) {
            QueueError::Auth { kind, .. } => assert_eq!(kind, AuthFailure::Authorization),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_text_never_reaches_the_error() {
        let failure = failure_of_entry(
            "InvalidParameterValue",
            true,
            Some("Value CANARY-secret-attr for parameter X is invalid"),
        );
        let err = map_failure(&failure, ctx("send_batch"));
        let mut text = format!("{err} {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(&s.to_string());
            source = s.source();
        }
        assert!(!text.contains("CANARY"), "{text}");
    }
}
