//! Queues: looking them up (cached), creating them with their dead-letter queue, deleting.

use std::{collections::HashMap, sync::Arc, time::Duration};

use aws_sdk_sqs::{error::ProvideErrorMetadata, types::QueueAttributeName};
use queue_core::{NameKind, QueueError, QueueName, QueueSpec, Result, RetryClass};

use super::{MAX_VISIBILITY, SqsProvider, ceil_secs};
use crate::{
    PROVIDER,
    codec::{Limits, MAX_MESSAGE_SIZE},
    error::map_sdk,
};

/// SQS keeps messages at most 14 days; dead-letter queues get this retention.
const MAX_RETENTION_SECS: u64 = 14 * 24 * 60 * 60;

/// What the provider knows about one queue (cached after the first use).
#[derive(Debug)]
pub(super) struct QueueInfo {
    pub(super) name: QueueName,
    pub(super) url: String,
    pub(super) fifo: bool,
    pub(super) visibility: Duration,
    pub(super) max_size: usize,
    pub(super) content_dedup: bool,
    pub(super) dlq: Option<DlqInfo>,
}

/// The queue's dead-letter queue, as its redrive policy names it.
#[derive(Debug)]
pub(super) struct DlqInfo {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) fifo: bool,
    pub(super) visibility: Duration,
    pub(super) max_size: usize,
}

type Attrs = HashMap<QueueAttributeName, String>;

impl SqsProvider {
    pub(super) async fn queue_info(
        &self,
        queue: &QueueName,
        op: &'static str,
    ) -> Result<Arc<QueueInfo>> {
        if let Some(info) = self
            .inner
            .queues
            .read()
            .ok()
            .and_then(|m| m.get(queue).cloned())
        {
            return Ok(info);
        }
        let info = Arc::new(self.load_queue_info(queue, op).await?);
        if let Ok(mut map) = self.inner.queues.write() {
            map.insert(queue.clone(), info.clone());
        }
        Ok(info)
    }

    pub(super) async fn queue_url(&self, name: &str, op: &'static str) -> Result<String> {
        let out = self
            .inner
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| map_sdk(e, self.ctx(op, name)))?;
        out.queue_url.ok_or_else(|| QueueError::QueueNotFound {
            provider: PROVIDER,
            queue: name.to_owned(),
            operation: op,
        })
    }

    async fn queue_attributes(&self, name: &str, url: &str, op: &'static str) -> Result<Attrs> {
        let out = self
            .inner
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| map_sdk(e, self.ctx(op, name)))?;
        Ok(out.attributes.unwrap_or_default())
    }

    pub(super) async fn load_queue_info(
        &self,
        queue: &QueueName,
        op: &'static str,
    ) -> Result<QueueInfo> {
        let url = self.queue_url(queue.as_str(), op).await?;
        let attrs = self.queue_attributes(queue.as_str(), &url, op).await?;
        let target =
            redrive_target(&attrs).or_else(|| dlq_name(queue).ok().map(|q| q.as_str().to_owned()));
        let dlq = match target {
            Some(name) => self.load_dlq_info(name, op).await?,
            None => None,
        };
        Ok(QueueInfo {
            name: queue.clone(),
            fifo: queue.is_fifo() || is_true(&attrs, QueueAttributeName::FifoQueue),
            visibility: visibility_of(&attrs),
            max_size: max_size_of(&attrs),
            content_dedup: is_true(&attrs, QueueAttributeName::ContentBasedDeduplication),
            url,
            dlq,
        })
    }

    /// The dead-letter queue `name`, or `None` when it does not exist.
    async fn load_dlq_info(&self, name: String, op: &'static str) -> Result<Option<DlqInfo>> {
        let url = match self.queue_url(&name, op).await {
            Ok(url) => url,
            Err(QueueError::QueueNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let attrs = self.queue_attributes(&name, &url, op).await?;
        Ok(Some(DlqInfo {
            fifo: name.ends_with(".fifo"),
            visibility: visibility_of(&attrs),
            max_size: max_size_of(&attrs),
            name,
            url,
        }))
    }

    pub(super) fn limits(&self, info: &QueueInfo) -> Limits {
        Limits {
            fifo: info.fifo,
            max_size: info.max_size,
            content_dedup: self.inner.content_dedup && info.content_dedup,
        }
    }

    /// `create_queue`: the whole spec is checked before anything is created, so an invalid
    /// spec never leaves an orphan dead-letter queue behind.
    pub(super) async fn create(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        const OP: &str = "create_queue";
        let dlq = validate_spec(queue, spec)?;
        let fifo = queue.is_fifo();
        let dl_url = self
            .create_one(dlq.as_str(), dlq_attributes(spec, fifo), OP)
            .await?;
        let dl_arn = self
            .queue_attributes(dlq.as_str(), &dl_url, OP)
            .await?
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| QueueError::Provider {
                provider: PROVIDER,
                operation: OP,
                class: RetryClass::Transient,
                source: "SQS returned no QueueArn for the dead-letter queue".into(),
            })?;
        let attrs = self.queue_attributes_for(spec, fifo, &dl_arn);
        self.create_one(queue.as_str(), attrs, OP).await?;
        self.forget(queue);
        Ok(())
    }

    fn queue_attributes_for(&self, spec: &QueueSpec, fifo: bool, dl_arn: &str) -> Attrs {
        let mut attrs = HashMap::new();
        attrs.insert(
            QueueAttributeName::VisibilityTimeout,
            ceil_secs(spec.lock_duration).to_string(),
        );
        attrs.insert(
            QueueAttributeName::MaximumMessageSize,
            MAX_MESSAGE_SIZE.to_string(),
        );
        attrs.insert(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({
                "deadLetterTargetArn": dl_arn,
                "maxReceiveCount": spec.max_delivery_count,
            })
            .to_string(),
        );
        if let Some(ttl) = spec.default_ttl {
            let secs = ceil_secs(ttl).clamp(60, MAX_RETENTION_SECS);
            attrs.insert(QueueAttributeName::MessageRetentionPeriod, secs.to_string());
        }
        if fifo {
            attrs.insert(QueueAttributeName::FifoQueue, "true".to_owned());
            if self.inner.content_dedup {
                attrs.insert(
                    QueueAttributeName::ContentBasedDeduplication,
                    "true".to_owned(),
                );
            }
        }
        attrs
    }

    /// `delete_queue`: the queue and its dead-letter queue; missing ones are fine.
    pub(super) async fn delete(&self, queue: &QueueName) -> Result<()> {
        const OP: &str = "delete_queue";
        self.forget(queue);
        let mut names = vec![queue.as_str().to_owned()];
        if let Ok(dlq) = dlq_name(queue) {
            names.push(dlq.as_str().to_owned());
        }
        for name in names {
            let url = match self.queue_url(&name, OP).await {
                Ok(url) => url,
                Err(QueueError::QueueNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Err(e) = self.inner.client.delete_queue().queue_url(url).send().await {
                match map_sdk(e, self.ctx(OP, &name)) {
                    QueueError::QueueNotFound { .. } => {}
                    other => return Err(other),
                }
            }
        }
        Ok(())
    }

    /// Creates one queue; an existing queue of that name is fine (its settings stay).
    async fn create_one(&self, name: &str, attrs: Attrs, op: &'static str) -> Result<String> {
        let answer = self
            .inner
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attrs))
            .send()
            .await;
        match answer {
            Ok(out) => match out.queue_url {
                Some(url) => Ok(url),
                None => self.queue_url(name, op).await,
            },
            Err(e) => {
                let exists = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .is_some_and(|c| c == "QueueNameExists" || c == "QueueAlreadyExists");
                if !exists {
                    return Err(map_sdk(e, self.ctx(op, name)));
                }
                tracing::warn!(
                    queue = name,
                    "queue exists with other settings; keeping them"
                );
                self.queue_url(name, op).await
            }
        }
    }
}

/// Checks everything SQS would refuse, and names the dead-letter queue, before any call.
fn validate_spec(queue: &QueueName, spec: &QueueSpec) -> Result<QueueName> {
    let fifo = queue.is_fifo();
    if spec.requires_session && !fifo {
        return Err(QueueError::InvalidName {
            kind: NameKind::Queue,
            reason: format!(
                "`{queue}`: ordered (session) queues on SQS are FIFO queues, whose names end in `.fifo`"
            ),
        });
    }
    if spec.max_delivery_count == 0 || spec.max_delivery_count > 1000 {
        return Err(QueueError::config(
            "queue_spec.max_delivery_count",
            "SQS's maxReceiveCount must be between 1 and 1000",
        ));
    }
    if spec.lock_duration > MAX_VISIBILITY {
        return Err(QueueError::config(
            "queue_spec.lock_duration",
            "SQS's visibility timeout is at most 12 hours",
        ));
    }
    if !fifo && spec.duplicate_detection_window.is_some() {
        return Err(QueueError::unsupported(
            PROVIDER,
            "duplicate detection on a standard queue (only FIFO queues, `.fifo`, de-duplicate)",
        ));
    }
    dlq_name(queue)
}

fn dlq_attributes(spec: &QueueSpec, fifo: bool) -> Attrs {
    let mut attrs = HashMap::new();
    attrs.insert(
        QueueAttributeName::MessageRetentionPeriod,
        MAX_RETENTION_SECS.to_string(),
    );
    attrs.insert(
        QueueAttributeName::MaximumMessageSize,
        MAX_MESSAGE_SIZE.to_string(),
    );
    attrs.insert(
        QueueAttributeName::VisibilityTimeout,
        ceil_secs(spec.lock_duration).to_string(),
    );
    if fifo {
        attrs.insert(QueueAttributeName::FifoQueue, "true".to_owned());
    }
    attrs
}

/// The dead-letter queue named by the queue's redrive policy.
fn redrive_target(attrs: &Attrs) -> Option<String> {
    let policy = attrs.get(&QueueAttributeName::RedrivePolicy)?;
    let value = serde_json::from_str::<serde_json::Value>(policy).ok()?;
    let arn = value.get("deadLetterTargetArn")?.as_str()?;
    arn.rsplit(':').next().map(str::to_owned)
}

fn is_true(attrs: &Attrs, name: QueueAttributeName) -> bool {
    attrs.get(&name).is_some_and(|v| v == "true")
}

fn visibility_of(attrs: &Attrs) -> Duration {
    attrs
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

fn max_size_of(attrs: &Attrs) -> usize {
    attrs
        .get(&QueueAttributeName::MaximumMessageSize)
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(MAX_MESSAGE_SIZE, |s| s.min(MAX_MESSAGE_SIZE))
}

/// The dead-letter queue name [`QueueProvider::create_queue`] uses: `<name>-dlq`, or
/// `<stem>-dlq.fifo` for a FIFO queue.
///
/// [`QueueProvider::create_queue`]: queue_core::QueueProvider::create_queue
pub fn dlq_name(queue: &QueueName) -> Result<QueueName> {
    let name = queue.as_str();
    let dlq = match name.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}-dlq.fifo"),
        None => format!("{name}-dlq"),
    };
    QueueName::new(&dlq).map_err(|_| QueueError::InvalidName {
        kind: NameKind::Queue,
        reason: format!(
            "`{name}` leaves no room for its dead-letter queue `{dlq}` within SQS's 80 characters"
        ),
    })
}

/// The error for a queue without a dead-letter queue.
pub(super) fn missing_dlq(queue: &QueueName, op: &'static str) -> QueueError {
    QueueError::QueueNotFound {
        provider: PROVIDER,
        queue: dlq_name(queue).map_or_else(
            |_| format!("{queue} (dead-letter queue)"),
            |q| q.as_str().to_owned(),
        ),
        operation: op,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QueueName {
        QueueName::new(s).unwrap()
    }

    #[test]
    fn dead_letter_queue_names() {
        assert_eq!(dlq_name(&q("jobs")).unwrap().as_str(), "jobs-dlq");
        assert_eq!(dlq_name(&q("jobs.fifo")).unwrap().as_str(), "jobs-dlq.fifo");
        let long = "a".repeat(77);
        let err = dlq_name(&q(&long)).unwrap_err();
        assert!(matches!(err, QueueError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn every_spec_problem_is_found_before_any_call() {
        let dedup = QueueSpec::default().with_duplicate_detection(Duration::from_secs(60));
        let err = validate_spec(&q("jobs"), &dedup).unwrap_err();
        assert!(matches!(err, QueueError::Unsupported { .. }), "{err}");
        assert!(validate_spec(&q("jobs.fifo"), &dedup).is_ok());
        let err = validate_spec(&q("jobs"), &QueueSpec::default().with_sessions(true));
        assert!(matches!(err, Err(QueueError::InvalidName { .. })));
        let err = validate_spec(&q("jobs"), &QueueSpec::default().with_max_delivery_count(0));
        assert!(matches!(err, Err(QueueError::Config { .. })));
        let long = QueueSpec::default().with_lock_duration(MAX_VISIBILITY * 2);
        assert!(matches!(
            validate_spec(&q("jobs"), &long),
            Err(QueueError::Config { .. })
        ));
        let err = validate_spec(&q(&"a".repeat(77)), &QueueSpec::default());
        assert!(matches!(err, Err(QueueError::InvalidName { .. })));
    }

    #[test]
    fn redrive_target_reads_the_policy() {
        let mut attrs = Attrs::new();
        attrs.insert(
            QueueAttributeName::RedrivePolicy,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123:jobs-dlq","maxReceiveCount":5}"#
                .to_owned(),
        );
        assert_eq!(redrive_target(&attrs).as_deref(), Some("jobs-dlq"));
        assert_eq!(redrive_target(&Attrs::new()), None);
    }
}
