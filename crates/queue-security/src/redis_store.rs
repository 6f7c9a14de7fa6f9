//! [`RedisReplayStore`]: a [`ReplayStore`] on a Redis server, shared by every consumer
//! process that reads the same queues.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use queue_core::BoxError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::replay::{ReplayStore, ReplayVerdict};

/// Default bound on one Redis round trip (connecting included).
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Default prefix of every key the store writes.
pub const DEFAULT_REDIS_PREFIX: &str = "queue-runtime:replay:";

/// A [`ReplayStore`] on Redis: one key per nonce, written with a single atomic
/// `SET key identity NX PX ttl GET` (Redis 7.0 or later). The command either creates the
/// key with its expiry (first sighting) or returns the identity already stored, so two
/// consumers that see the same nonce at once cannot both win, and Redis drops the key when
/// its window ends.
///
/// Every round trip is bounded by a timeout ([`DEFAULT_REDIS_TIMEOUT`]); a timeout or a
/// connection failure is an error, and what the gate does with it is the gate's explicit
/// policy ([`crate::ReplayStoreFailure`]: reject, the default, or allow).
///
/// The connection URL may hold a password; it is never shown (`Debug` prints the prefix
/// and timeout only) and connection errors are redacted.
#[derive(Clone)]
pub struct RedisReplayStore {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl RedisReplayStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`) within
    /// [`DEFAULT_REDIS_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<Self, BoxError> {
        Self::connect_with(url, DEFAULT_REDIS_TIMEOUT).await
    }

    /// Connects to `url`, bounding the connection and every later round trip by `timeout`.
    pub async fn connect_with(url: &str, timeout: Duration) -> Result<Self, BoxError> {
        let client = redis::Client::open(url).map_err(redacted)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| format!("connecting to Redis took longer than {timeout:?}"))?
                .map_err(redacted)?;
        Ok(Self {
            connection,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            timeout,
        })
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Uses `prefix` for every key (default [`DEFAULT_REDIS_PREFIX`]); give each
    /// environment sharing one Redis its own.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

fn redacted(err: redis::RedisError) -> BoxError {
    crate::redact::redact_error(&err).into()
}

#[async_trait]
impl ReplayStore for RedisReplayStore {
    async fn check_and_record(
        &self,
        nonce: &str,
        identity: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<ReplayVerdict, BoxError> {
        let ttl_ms = expires_at.duration_since(now).map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{nonce}", self.prefix))
            .arg(identity)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET");
        let mut connection = self.connection.clone();
        let previous: Option<String> =
            tokio::time::timeout(self.timeout, cmd.query_async(&mut connection))
                .await
                .map_err(|_| format!("Redis did not answer within {:?}", self.timeout))?
                .map_err(redacted)?;
        Ok(match previous {
            None => ReplayVerdict::First,
            Some(seen) if seen == identity => ReplayVerdict::Redelivery,
            Some(_) => ReplayVerdict::Replay,
        })
    }
}

impl fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
