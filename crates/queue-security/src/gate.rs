//! [`SignatureGate`]: the consumer-side check (signature, freshness, replay) as a
//! [`MessageGate`].

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use queue_core::{MessageGate, ReceivedMessage, Rejection};

use crate::{
    error::SecurityError,
    keys::KeyRing,
    limits::Limits,
    replay::{InMemoryReplayStore, ReplayStore},
    signature::{SignatureVerifier, Verified},
};

/// What to do with a message that carries no signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnsignedPolicy {
    /// Reject it (reason `Unsigned`). The default.
    #[default]
    Reject,
    /// Let it through with a `warn`-level log line and a count in
    /// [`SignatureGate::unsigned_accepted`]. For migrations only.
    AllowWithWarning,
}

/// What to do when the replay store fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplayStoreFailure {
    /// Reject the message (reason `ReplayCheckFailed`). The default: fail closed.
    #[default]
    Reject,
    /// Accept it with an `error`-level log line: fail open.
    Allow,
}

/// Default time a first delivery's id stays in the replay store.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(60 * 60);

/// How the gate decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateOutcome {
    /// Signature, freshness (and, on a first delivery, replay check) passed.
    Verified(Verified),
    /// The message is unsigned and the policy lets it through.
    UnsignedAllowed,
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Verifies received messages before the handler runs.
///
/// Checks, in order: body size, attribute limits, signature envelope, key id, MAC
/// (constant time), freshness of the signing time against the broker's accept time, and,
/// on a first delivery (`delivery_count == 1`), that the message id was not seen before
/// within the replay window. A redelivery (`delivery_count > 1`) skips the replay check
/// and passes freshness because its accept time is the original one.
///
/// Rejections carry a reason from [`crate::reason`]; the runtime dead-letters them with
/// that reason and never retries.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use queue_core::MessageGate;
/// use queue_security::{KeyRing, SignatureGate, UnsignedPolicy, generate_key};
///
/// let ring = KeyRing::new();
/// ring.insert("k1", generate_key()?)?;
/// ring.set_active("k1")?;
/// let gate: Arc<dyn MessageGate> = Arc::new(
///     SignatureGate::new(ring)
///         .with_max_skew(Duration::from_secs(120))
///         .with_unsigned_policy(UnsignedPolicy::Reject),
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SignatureGate {
    verifier: SignatureVerifier,
    unsigned: UnsignedPolicy,
    replay: Option<Arc<dyn ReplayStore>>,
    replay_window: Duration,
    replay_failure: ReplayStoreFailure,
    clock: Clock,
    unsigned_accepted: AtomicU64,
}

impl SignatureGate {
    /// A gate with the verifier defaults (5 minute skew, default limits, uncovered
    /// attributes rejected), unsigned messages rejected, and an in-memory replay store of
    /// [`crate::DEFAULT_REPLAY_CAPACITY`] ids kept for [`DEFAULT_REPLAY_WINDOW`].
    pub fn new(keys: KeyRing) -> Self {
        Self::from_verifier(SignatureVerifier::new(keys))
    }

    /// A gate around a configured verifier.
    pub fn from_verifier(verifier: SignatureVerifier) -> Self {
        Self {
            verifier,
            unsigned: UnsignedPolicy::Reject,
            replay: Some(Arc::new(InMemoryReplayStore::default())),
            replay_window: DEFAULT_REPLAY_WINDOW,
            replay_failure: ReplayStoreFailure::Reject,
            clock: Arc::new(SystemTime::now),
            unsigned_accepted: AtomicU64::new(0),
        }
    }

    /// Sets the allowed distance between signing time and broker accept time.
    pub fn with_max_skew(mut self, skew: Duration) -> Self {
        self.verifier = self.verifier.with_max_skew(skew);
        self
    }

    /// Sets the limits (body size first, attributes).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.verifier = self.verifier.with_limits(limits);
        self
    }

    /// Accepts attributes the signature does not cover.
    pub fn with_allow_uncovered_attributes(mut self, allow: bool) -> Self {
        self.verifier = self.verifier.with_allow_uncovered_attributes(allow);
        self
    }

    /// Sets the unsigned-message policy.
    pub fn with_unsigned_policy(mut self, policy: UnsignedPolicy) -> Self {
        self.unsigned = policy;
        self
    }

    /// Uses `store` for replay protection.
    pub fn with_replay_store(mut self, store: Arc<dyn ReplayStore>) -> Self {
        self.replay = Some(store);
        self
    }

    /// Turns replay protection off (freshness still bounds replays to the skew window).
    pub fn without_replay_protection(mut self) -> Self {
        self.replay = None;
        self
    }

    /// How long a first delivery's id is remembered (at least until the end of the
    /// message's freshness window, whichever is later).
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Sets what happens when the replay store fails.
    pub fn with_replay_store_failure(mut self, policy: ReplayStoreFailure) -> Self {
        self.replay_failure = policy;
        self
    }

    /// Replaces the clock used for replay-store expiry (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Unsigned messages let through by [`UnsignedPolicy::AllowWithWarning`] so far.
    pub fn unsigned_accepted(&self) -> u64 {
        self.unsigned_accepted.load(Ordering::Relaxed)
    }

    /// Runs every check and says how the message passed, or why it failed.
    pub async fn verify(&self, received: &ReceivedMessage) -> Result<GateOutcome, SecurityError> {
        let verified = match self.verifier.verify(received) {
            Ok(v) => v,
            Err(SecurityError::Unsigned) if self.unsigned == UnsignedPolicy::AllowWithWarning => {
                self.unsigned_accepted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    queue = %received.receipt.queue(),
                    message_id = %received.message_id,
                    "accepting an unsigned message (unsigned policy: allow with warning)"
                );
                return Ok(GateOutcome::UnsignedAllowed);
            }
            Err(e) => return Err(e),
        };
        if received.delivery_count <= 1
            && let Some(store) = &self.replay
        {
            let now = (self.clock)();
            let skew = self.verifier.max_skew();
            let window_end = verified
                .not_before
                .unwrap_or(verified.signed_at)
                .max(verified.signed_at)
                + skew.saturating_mul(2);
            let expires_at = (now + self.replay_window).max(window_end);
            let key = format!("{}/{}", received.receipt.queue(), received.message_id);
            match store.check_and_record(&key, now, expires_at).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(SecurityError::Replayed {
                        message_id: received.message_id.to_string(),
                    });
                }
                Err(source) => match self.replay_failure {
                    ReplayStoreFailure::Reject => {
                        return Err(SecurityError::ReplayStore { source });
                    }
                    ReplayStoreFailure::Allow => {
                        tracing::error!(
                            queue = %received.receipt.queue(),
                            message_id = %received.message_id,
                            "replay store failed; accepting the message without a replay check"
                        );
                    }
                },
            }
        }
        Ok(GateOutcome::Verified(verified))
    }
}

impl fmt::Debug for SignatureGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureGate")
            .field("verifier", &self.verifier)
            .field("unsigned", &self.unsigned)
            .field("replay", &self.replay)
            .field("replay_window", &self.replay_window)
            .field("replay_failure", &self.replay_failure)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageGate for SignatureGate {
    async fn check(&self, message: &ReceivedMessage) -> Result<(), Rejection> {
        match self.verify(message).await {
            Ok(_) => Ok(()),
            Err(err) => {
                let reason = err.reason();
                tracing::debug!(
                    queue = %message.receipt.queue(),
                    message_id = %message.message_id,
                    delivery_count = message.delivery_count,
                    reason,
                    "signature gate rejected a message"
                );
                Err(Rejection::new(reason, err.to_string()))
            }
        }
    }
}
