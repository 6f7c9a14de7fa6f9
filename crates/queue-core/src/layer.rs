//! The forwarding base for provider decorators ("layers").
//!
//! A layer wraps an inner [`QueueProvider`] and changes some of its calls: it signs what it
//! sends, retries transient failures, records spans and metrics, or injects faults. With
//! [`Forward`], a layer names its inner provider and overrides only the methods it changes;
//! every other method forwards unchanged, and a blanket impl makes each [`Forward`] type a
//! [`QueueProvider`]. [`ForwardSession`] does the same for [`SessionReceiver`].
//!
//! ```
//! use async_trait::async_trait;
//! use queue_core::{layer::Forward, Message, MessageId, QueueName, QueueProvider, Result};
//!
//! /// Adds an attribute to every message it sends; everything else is forwarded.
//! #[derive(Debug)]
//! struct Tagging<P> {
//!     inner: P,
//! }
//!
//! #[async_trait]
//! impl<P: QueueProvider> Forward for Tagging<P> {
//!     type Inner = P;
//!
//!     fn inner(&self) -> &P {
//!         &self.inner
//!     }
//!
//!     async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
//!         self.inner.send(queue, message.with_attribute("tagged", "yes")).await
//!     }
//! }
//! ```
//!
//! With the feature `layers`, this module also has the layers themselves: [`Retrying`]
//! (bounded, class-aware retries with jittered backoff), [`Instrumented`] (spans and
//! metrics) and [`FaultInjecting`] (errors, delays and dropped settlements by schedule or
//! seed), and [`default_stack`], the stack that providers built from configuration get.
//!
//! Call a layered provider through [`QueueProvider`] (the trait most code has in scope).
//! Both traits have a `send`, so a file that has both in scope and calls a method on a
//! concrete layer type must name the trait (`QueueProvider::send(&layer, ..)`); a test
//! double avoids that by implementing `queue_core::layer::Forward` by its path, without
//! importing it.

#[cfg(feature = "layers")]
mod batch;
#[cfg(feature = "layers")]
mod fault;
#[cfg(feature = "layers")]
mod instrumented;
#[cfg(feature = "layers")]
mod retrying;

#[cfg(feature = "layers")]
pub use fault::{Fault, FaultInjecting, Faults, When};
#[cfg(feature = "layers")]
pub use instrumented::{
    AUTH_FAILURES, CALL_DURATION, Instrumented, MESSAGES_COMPLETED, MESSAGES_RECEIVED,
    MESSAGES_SENT, PROVIDER_ERRORS,
};
#[cfg(feature = "layers")]
pub use retrying::{PROVIDER_RETRIES, RetryConfig, Retrying, SendIds};

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    error::Result,
    message::{DeadLetterReason, Message, Receipt, ReceivedMessage},
    names::{MessageId, QueueName, SessionId},
    provider::{
        Capabilities, QueueProvider, QueueSpec, ReceiveOptions, SessionReceiver, SessionSelector,
    },
};

/// A provider decorator that forwards every call it does not override to [`inner`].
///
/// Each method has the meaning of the [`QueueProvider`] method of the same name, and a
/// default body that calls it on the inner provider. Implementors set [`Forward::Inner`],
/// write [`inner`], and override what they change; the blanket impl
/// `impl<T: Forward> QueueProvider for T` does the rest. A layer that decorates sessions
/// overrides [`accept_session`](Forward::accept_session) and wraps the receiver it gets in
/// a [`ForwardSession`] type.
///
/// [`inner`]: Forward::inner
#[async_trait]
pub trait Forward: fmt::Debug + Send + Sync + 'static {
    /// The wrapped provider.
    type Inner: QueueProvider + ?Sized;

    /// The wrapped provider.
    fn inner(&self) -> &Self::Inner;

    /// See [`QueueProvider::name`].
    fn name(&self) -> &'static str {
        self.inner().name()
    }

    /// See [`QueueProvider::capabilities`].
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }

    /// See [`QueueProvider::instrumented`].
    fn instrumented(&self) -> bool {
        self.inner().instrumented()
    }

    /// See [`QueueProvider::send`].
    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        self.inner().send(queue, message).await
    }

    /// See [`QueueProvider::send_batch`].
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        self.inner().send_batch(queue, messages).await
    }

    /// See [`QueueProvider::receive`].
    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.inner().receive(queue, options).await
    }

    /// See [`QueueProvider::complete`].
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.inner().complete(receipt).await
    }

    /// See [`QueueProvider::abandon`].
    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        self.inner().abandon(receipt, delay).await
    }

    /// See [`QueueProvider::dead_letter`].
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.inner().dead_letter(receipt, reason).await
    }

    /// See [`QueueProvider::renew_lock`].
    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        self.inner().renew_lock(receipt).await
    }

    /// See [`QueueProvider::accept_session`].
    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        self.inner().accept_session(queue, selector, wait).await
    }

    /// See [`QueueProvider::receive_dead_letters`].
    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.inner().receive_dead_letters(queue, options).await
    }

    /// See [`QueueProvider::check_access`].
    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        self.inner().check_access(queue).await
    }

    /// See [`QueueProvider::create_queue`].
    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        self.inner().create_queue(queue, spec).await
    }

    /// See [`QueueProvider::delete_queue`].
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.inner().delete_queue(queue).await
    }
}

#[async_trait]
impl<T: Forward> QueueProvider for T {
    fn name(&self) -> &'static str {
        Forward::name(self)
    }
    fn capabilities(&self) -> Capabilities {
        Forward::capabilities(self)
    }
    fn instrumented(&self) -> bool {
        Forward::instrumented(self)
    }
    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        Forward::send(self, queue, message).await
    }
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        Forward::send_batch(self, queue, messages).await
    }
    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        Forward::receive(self, queue, options).await
    }
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        Forward::complete(self, receipt).await
    }
    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        Forward::abandon(self, receipt, delay).await
    }
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        Forward::dead_letter(self, receipt, reason).await
    }
    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        Forward::renew_lock(self, receipt).await
    }
    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        Forward::accept_session(self, queue, selector, wait).await
    }
    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        Forward::receive_dead_letters(self, queue, options).await
    }
    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        Forward::check_access(self, queue).await
    }
    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        Forward::create_queue(self, queue, spec).await
    }
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        Forward::delete_queue(self, queue).await
    }
}

/// A session receiver decorator that forwards every call it does not override to
/// [`inner`](ForwardSession::inner); the session counterpart of [`Forward`].
#[async_trait]
pub trait ForwardSession: fmt::Debug + Send + Sync + 'static {
    /// The wrapped receiver.
    fn inner(&self) -> &dyn SessionReceiver;

    /// See [`SessionReceiver::session_id`].
    fn session_id(&self) -> &SessionId {
        self.inner().session_id()
    }

    /// See [`SessionReceiver::queue`].
    fn queue(&self) -> &QueueName {
        self.inner().queue()
    }

    /// See [`SessionReceiver::locked_until`].
    fn locked_until(&self) -> SystemTime {
        self.inner().locked_until()
    }

    /// See [`SessionReceiver::receive`].
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.inner().receive(options).await
    }

    /// See [`SessionReceiver::receive_available`].
    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.inner().receive_available(options).await
    }

    /// See [`SessionReceiver::complete`].
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.inner().complete(receipt).await
    }

    /// See [`SessionReceiver::abandon`].
    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        self.inner().abandon(receipt).await
    }

    /// See [`SessionReceiver::dead_letter`].
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.inner().dead_letter(receipt, reason).await
    }

    /// See [`SessionReceiver::renew_session_lock`].
    async fn renew_session_lock(&self) -> Result<SystemTime> {
        self.inner().renew_session_lock().await
    }

    /// See [`SessionReceiver::get_state`].
    async fn get_state(&self) -> Result<Option<Bytes>> {
        self.inner().get_state().await
    }

    /// See [`SessionReceiver::set_state`].
    async fn set_state(&self, state: Option<Bytes>) -> Result<()> {
        self.inner().set_state(state).await
    }

    /// See [`SessionReceiver::close`].
    async fn close(&self) -> Result<()> {
        self.inner().close().await
    }
}

#[async_trait]
impl<T: ForwardSession> SessionReceiver for T {
    fn session_id(&self) -> &SessionId {
        ForwardSession::session_id(self)
    }
    fn queue(&self) -> &QueueName {
        ForwardSession::queue(self)
    }
    fn locked_until(&self) -> SystemTime {
        ForwardSession::locked_until(self)
    }
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        ForwardSession::receive(self, options).await
    }
    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        ForwardSession::receive_available(self, options).await
    }
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        ForwardSession::complete(self, receipt).await
    }
    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        ForwardSession::abandon(self, receipt).await
    }
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        ForwardSession::dead_letter(self, receipt, reason).await
    }
    async fn renew_session_lock(&self) -> Result<SystemTime> {
        ForwardSession::renew_session_lock(self).await
    }
    async fn get_state(&self) -> Result<Option<Bytes>> {
        ForwardSession::get_state(self).await
    }
    async fn set_state(&self, state: Option<Bytes>) -> Result<()> {
        ForwardSession::set_state(self, state).await
    }
    async fn close(&self) -> Result<()> {
        ForwardSession::close(self).await
    }
}

/// The documented default stack, outermost first: [`Instrumented`] (one span and one set
/// of metrics per call as the caller sees it, retries included), then [`Retrying`], then
/// the provider. Providers built from configuration come wrapped in it.
#[cfg(feature = "layers")]
pub fn default_stack(
    provider: crate::SharedQueueProvider,
    retry: RetryConfig,
) -> crate::SharedQueueProvider {
    let retrying = Retrying::from_arc(provider, retry);
    std::sync::Arc::new(Instrumented::new(retrying))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::error::QueueError;

    /// A provider that answers every call with `Unsupported`, counting calls.
    #[derive(Debug, Default)]
    struct Bottom {
        calls: AtomicUsize,
    }

    impl Bottom {
        fn no(&self, op: &'static str) -> QueueError {
            self.calls.fetch_add(1, Ordering::SeqCst);
            QueueError::unsupported("bottom", op)
        }
    }

    #[async_trait]
    impl QueueProvider for Bottom {
        fn name(&self) -> &'static str {
            "bottom"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                max_batch_size: 7,
                ..Capabilities::default()
            }
        }
        async fn send(&self, _: &QueueName, _: Message) -> Result<MessageId> {
            Err(self.no("send"))
        }
        async fn send_batch(&self, _: &QueueName, _: Vec<Message>) -> Result<Vec<MessageId>> {
            Err(self.no("send_batch"))
        }
        async fn receive(&self, _: &QueueName, _: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
            Err(self.no("receive"))
        }
        async fn complete(&self, _: &Receipt) -> Result<()> {
            Err(self.no("complete"))
        }
        async fn abandon(&self, _: &Receipt, _: Option<Duration>) -> Result<()> {
            Err(self.no("abandon"))
        }
        async fn dead_letter(&self, _: &Receipt, _: DeadLetterReason) -> Result<()> {
            Err(self.no("dead_letter"))
        }
        async fn renew_lock(&self, _: &Receipt) -> Result<SystemTime> {
            Err(self.no("renew_lock"))
        }
        async fn receive_dead_letters(
            &self,
            _: &QueueName,
            _: ReceiveOptions,
        ) -> Result<Vec<ReceivedMessage>> {
            Err(self.no("receive_dead_letters"))
        }
        async fn check_access(&self, _: &QueueName) -> Result<()> {
            Err(self.no("check_access"))
        }
    }

    /// Overrides only `send`; everything else must reach `Bottom`.
    #[derive(Debug)]
    struct OnlySend<P: ?Sized> {
        inner: Arc<P>,
    }

    #[async_trait]
    impl<P: QueueProvider + ?Sized> Forward for OnlySend<P> {
        type Inner = P;
        fn inner(&self) -> &P {
            &self.inner
        }
        async fn send(&self, _: &QueueName, _: Message) -> Result<MessageId> {
            MessageId::new("intercepted")
        }
    }

    fn op(e: QueueError) -> &'static str {
        match e {
            QueueError::Unsupported { operation, .. } => operation,
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn unchanged_calls_reach_the_inner_provider() {
        let bottom = Arc::new(Bottom::default());
        let layer: Arc<dyn QueueProvider> = Arc::new(OnlySend {
            inner: bottom.clone(),
        });
        let q = QueueName::new("q").unwrap();
        let r = Receipt::new("bottom", q.clone(), None, "t");
        let o = ReceiveOptions::default();
        assert_eq!(layer.name(), "bottom");
        assert_eq!(layer.capabilities().max_batch_size, 7);
        let id = layer.send(&q, Message::new("x")).await.unwrap();
        assert_eq!(id.as_str(), "intercepted");
        assert_eq!(bottom.calls.load(Ordering::SeqCst), 0, "send is overridden");
        let got = vec![
            op(layer.send_batch(&q, vec![]).await.unwrap_err()),
            op(layer.receive(&q, o).await.unwrap_err()),
            op(layer.complete(&r).await.unwrap_err()),
            op(layer.abandon(&r, None).await.unwrap_err()),
            op(layer
                .dead_letter(&r, DeadLetterReason::new("a", "b"))
                .await
                .unwrap_err()),
            op(layer.renew_lock(&r).await.unwrap_err()),
            op(layer.receive_dead_letters(&q, o).await.unwrap_err()),
            op(layer.check_access(&q).await.unwrap_err()),
        ];
        let want = [
            "send_batch",
            "receive",
            "complete",
            "abandon",
            "dead_letter",
            "renew_lock",
            "receive_dead_letters",
            "check_access",
        ];
        assert_eq!(got, want);
        assert_eq!(bottom.calls.load(Ordering::SeqCst), want.len());
        // Trait defaults of the inner provider answer the optional methods.
        let session = layer.accept_session(&q, SessionSelector::Next, Duration::ZERO);
        assert_eq!(op(session.await.unwrap_err()), "accept_session");
        let spec = QueueSpec::default();
        assert_eq!(
            op(layer.create_queue(&q, &spec).await.unwrap_err()),
            "create_queue"
        );
        assert_eq!(
            op(layer.delete_queue(&q).await.unwrap_err()),
            "delete_queue"
        );
    }
}
