//! [`FaultInjecting`]: injects errors, delays and dropped settlements into provider calls,
//! by schedule or by seeded chance, for tests and chaos drills.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;

use crate::{
    backoff::Jitter,
    error::{QueueError, Result, RetryClass},
    layer::{Forward, ForwardSession},
    message::{DeadLetterReason, Message, Receipt, ReceivedMessage},
    names::{MessageId, QueueName},
    provider::{QueueProvider, ReceiveOptions, SessionReceiver, SessionSelector},
};

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The call fails with a transient connection error before it reaches the provider.
    Transient,
    /// The call fails with `Throttled` (transient) before it reaches the provider.
    Throttled,
    /// The call fails with a permanent error before it reaches the provider.
    Permanent,
    /// The call reaches the provider, then its answer is lost: the caller gets a transient
    /// `Timeout` although the call took effect (the case that makes blind re-sends
    /// duplicate).
    LostReply,
    /// A settlement (`complete`, `abandon`, `dead_letter`) answers `Ok` without reaching
    /// the provider, so the message comes back when its lock expires. On other calls it
    /// acts as [`Fault::Transient`].
    Drop,
    /// The call waits this long (on the tokio clock), then proceeds.
    Delay(Duration),
}

/// When a [`Faults`] rule fires.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum When {
    /// On these calls of the operation (1 for the first).
    Calls(Vec<u64>),
    /// On every call.
    Always,
    /// With this probability per call, drawn from the seeded generator.
    Chance(f64),
}

#[derive(Clone, Debug)]
struct Rule {
    operation: Option<&'static str>,
    when: When,
    fault: Fault,
}

/// A fault plan: rules checked in order on each call; the first that fires decides.
///
/// Operations are named as in metrics: `send`, `send_batch`, `receive`, `complete`,
/// `abandon`, `dead_letter`, `renew_lock`, `accept_session`, `receive_dead_letters`,
/// `check_access`, and for session receivers `session_receive`, `renew_session_lock`
/// (settlements through a session count under `complete`, `abandon`, `dead_letter`).
/// With the same seed and the same order of calls, the same faults fire.
#[derive(Debug)]
pub struct Faults {
    rules: Vec<Rule>,
    jitter: Jitter,
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    calls: HashMap<&'static str, u64>,
    injected: HashMap<&'static str, u64>,
}

impl Faults {
    /// No rules yet; chances are drawn from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rules: Vec::new(),
            jitter: Jitter::seeded(seed),
            state: Mutex::default(),
        }
    }

    /// Adds a rule for one operation.
    pub fn on(mut self, operation: &'static str, when: When, fault: Fault) -> Self {
        self.rules.push(Rule {
            operation: Some(operation),
            when,
            fault,
        });
        self
    }

    /// Adds a rule for every operation.
    pub fn on_any(mut self, when: When, fault: Fault) -> Self {
        self.rules.push(Rule {
            operation: None,
            when,
            fault,
        });
        self
    }

    /// Calls of `operation` seen so far.
    pub fn calls(&self, operation: &str) -> u64 {
        self.lock().calls.get(operation).copied().unwrap_or(0)
    }

    /// Faults injected into `operation` so far.
    pub fn injected(&self, operation: &str) -> u64 {
        self.lock().injected.get(operation).copied().unwrap_or(0)
    }

    /// Faults injected so far, over all operations.
    pub fn injected_total(&self) -> u64 {
        self.lock().injected.values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call and picks its fault, if any.
    fn pick(&self, operation: &'static str) -> Option<Fault> {
        let mut state = self.lock();
        let n = {
            let c = state.calls.entry(operation).or_default();
            *c += 1;
            *c
        };
        let fault = self.rules.iter().find_map(|rule| {
            let applies = rule.operation.is_none_or(|op| op == operation);
            (applies && self.fires(&rule.when, n)).then_some(rule.fault)
        })?;
        *state.injected.entry(operation).or_default() += 1;
        Some(fault)
    }

    fn fires(&self, when: &When, n: u64) -> bool {
        match when {
            When::Calls(calls) => calls.contains(&n),
            When::Always => true,
            When::Chance(p) => self.jitter.next_unit() < *p,
        }
    }
}

/// Injects the faults of a [`Faults`] plan into the calls of the inner provider (and of
/// the session receivers it returns); calls without a fault are forwarded unchanged.
///
/// ```
/// # async fn demo(memory: impl queue_core::QueueProvider) {
/// use queue_core::layer::{Fault, FaultInjecting, Faults, When};
///
/// // The first two sends fail transiently; 10% of completions are lost.
/// let faults = Faults::seeded(7)
///     .on("send", When::Calls(vec![1, 2]), Fault::Transient)
///     .on("complete", When::Chance(0.1), Fault::Drop);
/// let flaky = FaultInjecting::new(memory, faults);
/// # }
/// ```
#[derive(Debug)]
pub struct FaultInjecting<P: ?Sized> {
    faults: Arc<Faults>,
    inner: Arc<P>,
}

impl<P: QueueProvider> FaultInjecting<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, faults: Faults) -> Self {
        Self::from_arc(Arc::new(inner), Arc::new(faults))
    }
}

impl<P: QueueProvider + ?Sized> FaultInjecting<P> {
    /// Wraps a shared provider with a shared plan (read its counters while it runs).
    pub fn from_arc(inner: Arc<P>, faults: Arc<Faults>) -> Self {
        Self { faults, inner }
    }

    /// The plan and its counters.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }
}

/// What to do with one call.
enum Step {
    /// Forward it (after any delay).
    Call,
    /// Forward it, then answer with this error.
    CallThenFail(QueueError),
    /// Answer with this error without forwarding.
    Fail(QueueError),
    /// Answer `Ok` without forwarding (settlements only).
    Skip,
}

fn injected(provider: &'static str, operation: &'static str, fault: Fault) -> QueueError {
    match fault {
        Fault::Throttled => QueueError::Throttled {
            provider,
            operation,
            retry_after: None,
        },
        Fault::Permanent => QueueError::Provider {
            provider,
            operation,
            class: RetryClass::Permanent,
            source: "injected permanent fault".into(),
        },
        Fault::LostReply => QueueError::Timeout {
            provider,
            operation,
            after: Duration::ZERO,
        },
        _ => QueueError::Connection {
            provider,
            operation,
            source: "injected connection fault".into(),
        },
    }
}

/// Decides a call's fate; sleeps first for a [`Fault::Delay`].
async fn step(faults: &Faults, provider: &'static str, operation: &'static str) -> Step {
    let settlement = matches!(operation, "complete" | "abandon" | "dead_letter");
    match faults.pick(operation) {
        None => Step::Call,
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Step::Call
        }
        Some(Fault::Drop) if settlement => Step::Skip,
        Some(Fault::LostReply) => {
            Step::CallThenFail(injected(provider, operation, Fault::LostReply))
        }
        Some(fault) => Step::Fail(injected(provider, operation, fault)),
    }
}

/// Runs `call` as `step` says; `skip` is the answer of a dropped settlement.
macro_rules! faulty {
    ($faults:expr, $provider:expr, $op:expr, $call:expr, $skip:expr) => {
        match step($faults, $provider, $op).await {
            Step::Call => $call.await,
            Step::CallThenFail(e) => {
                let _ = $call.await;
                Err(e)
            }
            Step::Fail(e) => Err(e),
            Step::Skip => $skip,
        }
    };
}

fn not_settlement<T>(provider: &'static str, op: &'static str) -> Result<T> {
    Err(injected(provider, op, Fault::Transient))
}

#[async_trait]
impl<P: QueueProvider + ?Sized> Forward for FaultInjecting<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let (f, p) = (&*self.faults, self.inner.name());
        faulty!(
            f,
            p,
            "send",
            self.inner.send(queue, message),
            not_settlement(p, "send")
        )
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        let (f, p, op) = (&*self.faults, self.inner.name(), "send_batch");
        faulty!(
            f,
            p,
            op,
            self.inner.send_batch(queue, messages),
            not_settlement(p, op)
        )
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let (f, p, op) = (&*self.faults, self.inner.name(), "receive");
        faulty!(
            f,
            p,
            op,
            self.inner.receive(queue, options),
            not_settlement(p, op)
        )
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        let (f, p) = (&*self.faults, self.inner.name());
        faulty!(f, p, "complete", self.inner.complete(receipt), Ok(()))
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        let (f, p) = (&*self.faults, self.inner.name());
        faulty!(f, p, "abandon", self.inner.abandon(receipt, delay), Ok(()))
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        let (f, p) = (&*self.faults, self.inner.name());
        faulty!(
            f,
            p,
            "dead_letter",
            self.inner.dead_letter(receipt, reason),
            Ok(())
        )
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        let (f, p, op) = (&*self.faults, self.inner.name(), "renew_lock");
        faulty!(
            f,
            p,
            op,
            self.inner.renew_lock(receipt),
            not_settlement(p, op)
        )
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        let (f, p, op) = (&*self.faults, self.inner.name(), "accept_session");
        let call = self.inner.accept_session(queue, selector, wait);
        let session = faulty!(f, p, op, call, not_settlement(p, op))?;
        Ok(session.map(|inner| {
            Box::new(FaultySession {
                faults: self.faults.clone(),
                provider: p,
                inner,
            }) as Box<dyn SessionReceiver>
        }))
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let (f, p, op) = (&*self.faults, self.inner.name(), "receive_dead_letters");
        let call = self.inner.receive_dead_letters(queue, options);
        faulty!(f, p, op, call, not_settlement(p, op))
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        let (f, p, op) = (&*self.faults, self.inner.name(), "check_access");
        faulty!(
            f,
            p,
            op,
            self.inner.check_access(queue),
            not_settlement(p, op)
        )
    }
}

/// A session receiver with the faults of its [`FaultInjecting`] provider.
#[derive(Debug)]
struct FaultySession {
    faults: Arc<Faults>,
    provider: &'static str,
    inner: Box<dyn SessionReceiver>,
}

#[async_trait]
impl ForwardSession for FaultySession {
    fn inner(&self) -> &dyn SessionReceiver {
        &*self.inner
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let (f, p, op) = (&*self.faults, self.provider, "session_receive");
        faulty!(f, p, op, self.inner.receive(options), not_settlement(p, op))
    }

    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let (f, p, op) = (&*self.faults, self.provider, "session_receive");
        faulty!(
            f,
            p,
            op,
            self.inner.receive_available(options),
            not_settlement(p, op)
        )
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        let (f, p) = (&*self.faults, self.provider);
        faulty!(f, p, "complete", self.inner.complete(receipt), Ok(()))
    }

    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        let (f, p) = (&*self.faults, self.provider);
        faulty!(f, p, "abandon", self.inner.abandon(receipt), Ok(()))
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        let (f, p) = (&*self.faults, self.provider);
        faulty!(
            f,
            p,
            "dead_letter",
            self.inner.dead_letter(receipt, reason),
            Ok(())
        )
    }

    async fn renew_session_lock(&self) -> Result<SystemTime> {
        let (f, p, op) = (&*self.faults, self.provider, "renew_session_lock");
        faulty!(
            f,
            p,
            op,
            self.inner.renew_session_lock(),
            not_settlement(p, op)
        )
    }
}
