//! Settlement through `$management` `update-disposition`, coalesced.
//!
//! `Ok` from a settlement means the broker accepted it, which is why it goes through a
//! request/response call (fe2o3-amqp 0.18 cannot await the broker's disposition on the
//! receive link). To keep that affordable, settlements are group-committed: while one
//! `update-disposition` for an entity is in flight, the completions (or abandons) that
//! arrive meanwhile queue up and go together in the next request, one lock-token array for
//! all. If a request with several tokens is refused (one lock may be lost while the
//! others are fine), each token of it is retried alone, so every caller gets the verdict
//! for its own message.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use fe2o3_amqp::types::primitives::{Array, Value};
use tokio::sync::oneshot;

use crate::{amqp::Amqp, error::Failure};

/// What a group of settlements shares: they can go in one request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Group {
    pub(crate) entity: String,
    /// `completed` or `abandoned`.
    pub(crate) status: &'static str,
    pub(crate) session: Option<String>,
    pub(crate) associated_link: Option<String>,
}

type Waiter = (uuid::Uuid, oneshot::Sender<Result<(), Failure>>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// A flusher task is running for this group.
    flushing: bool,
}

/// Group-commits settlements per [`Group`].
#[derive(Default)]
pub(crate) struct Coalescer {
    groups: Mutex<HashMap<Group, Queue>>,
}

/// Most lock tokens in one request (the SDKs' batch limit for settlement calls).
const MAX_TOKENS: usize = 100;

impl Coalescer {
    /// Settles `token` with the others of its group; resolves with the broker's verdict.
    pub(crate) async fn settle(
        self: &Arc<Self>,
        amqp: &Arc<Amqp>,
        group: Group,
        token: uuid::Uuid,
    ) -> Result<(), Failure> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let q = groups.entry(group.clone()).or_default();
            q.waiting.push((token, tx));
            !std::mem::replace(&mut q.flushing, true)
        };
        if start {
            tokio::spawn(self.clone().flush(amqp.clone(), group));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Failure::ConnectionLost(
                "the settlement was dropped before an answer".into(),
            ))
        })
    }

    /// Sends the group's queued settlements, batch after batch, until none is left.
    async fn flush(self: Arc<Self>, amqp: Arc<Amqp>, group: Group) {
        loop {
            let batch = {
                let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
                let Some(q) = groups.get_mut(&group) else {
                    return;
                };
                if q.waiting.is_empty() {
                    groups.remove(&group);
                    return;
                }
                let n = q.waiting.len().min(MAX_TOKENS);
                q.waiting.drain(..n).collect::<Vec<_>>()
            };
            settle_batch(&amqp, &group, batch).await;
        }
    }
}

async fn settle_batch(amqp: &Arc<Amqp>, group: &Group, batch: Vec<Waiter>) {
    let tokens: Vec<uuid::Uuid> = batch.iter().map(|(t, _)| *t).collect();
    match update_disposition(amqp, group, &tokens).await {
        Ok(()) => batch.into_iter().for_each(|(_, tx)| {
            let _ = tx.send(Ok(()));
        }),
        Err(f) if batch.len() == 1 || crate::amqp::is_connection_loss(&f) => {
            batch.into_iter().for_each(|(_, tx)| {
                let _ = tx.send(Err(f.clone()));
            });
        }
        Err(_) => {
            for (token, tx) in batch {
                let _ = tx.send(update_disposition(amqp, group, &[token]).await);
            }
        }
    }
}

/// One `update-disposition` request for `tokens`.
pub(crate) async fn update_disposition(
    amqp: &Arc<Amqp>,
    group: &Group,
    tokens: &[uuid::Uuid],
) -> Result<(), Failure> {
    let tokens: Vec<Value> = tokens
        .iter()
        .map(|t| crate::provider::uuid_value(*t))
        .collect();
    let mut body = vec![
        ("disposition-status", Value::String(group.status.into())),
        ("lock-tokens", Value::Array(Array::from(tokens))),
    ];
    if let Some(s) = &group.session {
        body.push(("session-id", Value::String(s.clone())));
    }
    amqp.manage(
        &group.entity,
        "com.microsoft:update-disposition",
        body,
        group.associated_link.as_deref(),
    )
    .await
    .map(|_| ())
}
