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
    replay::{InMemoryReplayStore, ReplayStore, ReplayVerdict},
    signature::{SignatureVerifier, Verified, check_window},
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

/// Default time a nonce stays in the replay store.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(60 * 60);

/// How the gate decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateOutcome {
    /// Signature, freshness, scheduled time and replay check passed.
    Verified(Verified),
    /// The message is unsigned and the policy lets it through.
    UnsignedAllowed,
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Verifies received messages before the handler runs.
///
/// Checks, in order: body size, attribute limits, signature envelope, key id, MAC
/// (constant time), freshness of the signing time against the broker's accept time, the
/// signed scheduled time (a message is not due before `not_before - max_skew` by the
/// gate's clock), and replay: the signature's nonce is remembered with the broker identity
/// of the message that carried it (broker message id or sequence number). A redelivery of
/// that same broker message passes; any other broker message with the same nonce is a
/// replay, whether or not the first one was ever checked. Providers that report no broker
/// identity fall back to checking first deliveries only (see `docs/security.md`).
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
///         .with_max_skew(Duration::from_secs(120))?
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

    /// Sets the allowed distance between signing time and broker accept time; more than
    /// [`crate::MAX_WINDOW`] is an error.
    pub fn with_max_skew(mut self, skew: Duration) -> Result<Self, SecurityError> {
        self.verifier = self.verifier.with_max_skew(skew)?;
        Ok(self)
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

    /// How long a nonce is remembered after its first sighting (at least until the end
    /// of the message's freshness window, whichever is later); more than
    /// [`crate::MAX_WINDOW`] is an error.
    pub fn with_replay_window(mut self, window: Duration) -> Result<Self, SecurityError> {
        self.replay_window = check_window("replay window", window)?;
        Ok(self)
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
        let now = (self.clock)();
        self.check_due(&verified, now)?;
        if let Some(store) = &self.replay {
            self.check_replay(store.as_ref(), received, &verified, now)
                .await?;
        }
        Ok(GateOutcome::Verified(verified))
    }

    /// A message signed for scheduled delivery is not handled before its time.
    fn check_due(&self, verified: &Verified, now: SystemTime) -> Result<(), SecurityError> {
        let Some(not_before) = verified.not_before else {
            return Ok(());
        };
        let due = not_before
            .checked_sub(self.verifier.max_skew())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match due.duration_since(now) {
            Ok(early_by) if !early_by.is_zero() => Err(SecurityError::NotYetDue { early_by }),
            _ => Ok(()),
        }
    }

    async fn check_replay(
        &self,
        store: &dyn ReplayStore,
        received: &ReceivedMessage,
        verified: &Verified,
        now: SystemTime,
    ) -> Result<(), SecurityError> {
        let identity = match broker_identity(received) {
            Some(id) => id,
            // No broker identity: only first deliveries can be told apart from copies.
            None if received.delivery_count > 1 => return Ok(()),
            // A fresh identity: any other sighting of this nonce is a replay.
            None => unique_identity(),
        };
        let expires_at = self.nonce_expiry(verified, now);
        let nonce = format!("{}/{}", received.receipt.queue(), verified.nonce());
        match store
            .check_and_record(&nonce, &identity, now, expires_at)
            .await
        {
            Ok(ReplayVerdict::First | ReplayVerdict::Redelivery) => Ok(()),
            Ok(_) => Err(SecurityError::Replayed {
                message_id: received.message_id.to_string(),
            }),
            Err(source) => match self.replay_failure {
                ReplayStoreFailure::Reject => Err(SecurityError::ReplayStore { source }),
                ReplayStoreFailure::Allow => {
                    tracing::error!(
                        queue = %received.receipt.queue(),
                        message_id = %received.message_id,
                        error = %crate::redact::redact_error(source.as_ref()),
                        "replay store failed; accepting the message without a replay check (fail-open policy)"
                    );
                    Ok(())
                }
            },
        }
    }

    /// The nonce is kept for the replay window after now, and at least until the end of
    /// the message's freshness window (after which freshness alone rejects copies).
    fn nonce_expiry(&self, verified: &Verified, now: SystemTime) -> SystemTime {
        let latest = verified
            .not_before
            .map_or(verified.signed_at, |nb| nb.max(verified.signed_at));
        let window_end = latest
            .checked_add(self.verifier.max_skew().saturating_mul(2))
            .unwrap_or(latest);
        now.checked_add(self.replay_window)
            .unwrap_or(now)
            .max(window_end)
    }
}

/// An identity no other check uses (random, for messages without a broker identity).
fn unique_identity() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap_or_else(
        |_| {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            bytes[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        },
    );
    format!("unidentified:{}", hex::encode(bytes))
}

/// The broker's identity of this broker message: the same across redeliveries, new for a
/// copy sent again.
fn broker_identity(received: &ReceivedMessage) -> Option<String> {
    if let Some(id) = &received.broker_message_id {
        return Some(format!("id:{id}"));
    }
    received.sequence_number.map(|seq| format!("seq:{seq}"))
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
