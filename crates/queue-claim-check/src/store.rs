//! [`BlobStore`]: where claim-checked bodies live, and how they are named, read and swept.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, path::Path};
use queue_core::MessageId;

use crate::{
    error::ClaimCheckError,
    reference::{BlobReference, is_valid_segment},
};

/// Default key prefix of claim-checked bodies.
pub const DEFAULT_PREFIX: &str = "queue-runtime/claim-check";

/// Default bound on every store call (put, get with its download, delete, one list page).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(60);

/// An object store and the prefix under which claim-checked bodies live.
///
/// Keys are `<prefix>/<message id>/<sha256 hex>`: one object per message and body, so a
/// re-sent message (the same id and body) overwrites its own blob with the same bytes, and
/// the receiving side can check that a reference names exactly the key its message id and
/// digest give. A message id made of other characters than ASCII letters, digits, `-`,
/// `_` and `.` is written as `x` followed by its hex encoding.
///
/// ```
/// use std::sync::Arc;
/// use queue_claim_check::BlobStore;
///
/// let store = BlobStore::new(Arc::new(object_store::memory::InMemory::new()))
///     .with_prefix("bots/claims")?;
/// assert_eq!(store.prefix(), "bots/claims");
/// # Ok::<(), queue_claim_check::ClaimCheckError>(())
/// ```
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's Display names its kind and bucket; its Debug may hold credentials.
        f.debug_struct("BlobStore")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What one orphan sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Objects older than the cut-off that were deleted.
    pub deleted: u64,
    /// Objects older than the cut-off whose deletion failed (they are tried again next time).
    pub failed: u64,
}

impl BlobStore {
    /// Bodies in `store` under [`DEFAULT_PREFIX`], every call bounded by
    /// [`DEFAULT_STORE_TIMEOUT`].
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    /// Sets the key prefix: `/`-separated segments of ASCII letters, digits, `-`, `_`, `.`.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, ClaimCheckError> {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() || !prefix.split('/').all(is_valid_segment) {
            return Err(ClaimCheckError::Config {
                field: "prefix",
                reason: "use `/`-separated segments of ASCII letters, digits, `-`, `_` and `.`"
                    .to_owned(),
            });
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// Bounds every store call (a get includes its download).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The key of the body of message `id` that hashes to `sha256`.
    pub fn key_for(&self, id: &MessageId, sha256: &[u8; 32]) -> String {
        let id = id.as_str();
        let segment = if is_valid_segment(id) {
            id.to_owned()
        } else {
            format!("x{}", hex::encode(id))
        };
        format!("{}/{segment}/{}", self.prefix, hex::encode(sha256))
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, ClaimCheckError>>,
    ) -> Result<T, ClaimCheckError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(ClaimCheckError::Timeout {
                operation,
                after: self.timeout,
            }))
    }

    /// Writes `body` under `key` (one PUT; the same key again overwrites).
    pub(crate) async fn put(&self, key: &str, body: Bytes) -> Result<(), ClaimCheckError> {
        let path = Path::from(key);
        self.bounded("put", async {
            self.store
                .put(&path, PutPayload::from_bytes(body))
                .await
                .map(drop)
                .map_err(|e| ClaimCheckError::store("put", key, e))
        })
        .await
    }

    /// Reads the blob of `reference` and checks it against the reference.
    ///
    /// Allocates at most the declared size: the object's size is compared with it before
    /// the download, and a download that runs past it stops there. The SHA-256 is computed
    /// while the chunks arrive.
    pub(crate) async fn fetch(&self, reference: &BlobReference) -> Result<Bytes, ClaimCheckError> {
        self.bounded("get", self.fetch_unbounded(reference)).await
    }

    async fn fetch_unbounded(&self, reference: &BlobReference) -> Result<Bytes, ClaimCheckError> {
        let key = reference.key.as_str();
        let altered = |what| ClaimCheckError::BlobAltered {
            key: key.to_owned(),
            what,
        };
        let got = self
            .store
            .get(&Path::from(key))
            .await
            .map_err(|e| ClaimCheckError::store("get", key, e))?;
        if got.meta.size != reference.size {
            return Err(altered("size"));
        }
        let declared = usize::try_from(reference.size).map_err(|_| altered("size"))?;
        let mut body = BytesMut::with_capacity(declared);
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClaimCheckError::store("get", key, e))?;
            if chunk.len() > declared - body.len() {
                return Err(altered("size"));
            }
            digest.update(&chunk);
            body.extend_from_slice(&chunk);
        }
        if body.len() != declared {
            return Err(altered("size"));
        }
        if digest.finish().as_ref() != reference.sha256 {
            return Err(altered("SHA-256 digest"));
        }
        Ok(body.freeze())
    }

    /// Deletes the blob at `key`; a blob that is already gone is not an error.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), ClaimCheckError> {
        self.bounded("delete", async {
            match self.store.delete(&Path::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(ClaimCheckError::store("delete", key, e)),
            }
        })
        .await
    }

    /// Deletes every blob under the prefix last modified more than `older_than` ago: the
    /// orphans of sends that crashed or failed between the upload and the send, and blobs
    /// whose message was dead-lettered and never purged.
    ///
    /// `older_than` must exceed the longest time a message can wait in its queue and its
    /// dead-letter queue, or a live message loses its body (see `docs/providers.md`).
    /// Every list page and delete is bounded by the store timeout.
    pub async fn sweep(&self, older_than: Duration) -> Result<SweepReport, ClaimCheckError> {
        let cutoff_ms = unix_ms(SystemTime::now())
            .saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        let prefix = Path::from(self.prefix.as_str());
        let mut listing = self.store.list(Some(&prefix));
        let mut report = SweepReport::default();
        loop {
            let next = tokio::time::timeout(self.timeout, listing.next()).await;
            let meta = match next {
                Err(_) => {
                    return Err(ClaimCheckError::Timeout {
                        operation: "list",
                        after: self.timeout,
                    });
                }
                Ok(None) => break,
                Ok(Some(meta)) => {
                    meta.map_err(|e| ClaimCheckError::store("list", &self.prefix, e))?
                }
            };
            report.listed += 1;
            if meta.last_modified.timestamp_millis() > cutoff_ms {
                continue;
            }
            match self.delete(meta.location.as_ref()).await {
                Ok(()) => report.deleted += 1,
                Err(e) => {
                    tracing::warn!(key = %meta.location, error = %e, "claim-check sweep could not delete an orphan");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// SHA-256 of `body`.
pub(crate) fn sha256(body: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> BlobStore {
        BlobStore::new(Arc::new(object_store::memory::InMemory::new()))
    }

    #[test]
    fn keys_are_per_message_and_digest() {
        let s = store();
        let id = MessageId::new("2f1c-a.b_c").unwrap();
        assert_eq!(
            s.key_for(&id, &[0; 32]),
            format!("{DEFAULT_PREFIX}/2f1c-a.b_c/{}", "00".repeat(32))
        );
        let odd = MessageId::new("a/b:c").unwrap();
        let key = s.key_for(&odd, &[1; 32]);
        assert!(
            key.contains(&format!("/x{}/", hex::encode("a/b:c"))),
            "{key}"
        );
        assert!(BlobReference::parse(&BlobReference::new(key, 1, [1; 32]).to_string()).is_ok());
    }

    #[test]
    fn prefixes_are_validated() {
        assert_eq!(store().with_prefix("/a/b/").unwrap().prefix(), "a/b");
        for bad in ["", "/", "a//b", "a/../b", "a b"] {
            assert!(store().with_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn fetch_checks_size_and_digest() {
        let s = store();
        let body = Bytes::from_static(b"hello claim check");
        let digest = sha256(&body);
        let key = s.key_for(&MessageId::new("m").unwrap(), &digest);
        s.put(&key, body.clone()).await.unwrap();
        let good = BlobReference::new(key.clone(), body.len() as u64, digest);
        assert_eq!(s.fetch(&good).await.unwrap(), body);
        let short = BlobReference::new(key.clone(), 3, digest);
        assert!(matches!(
            s.fetch(&short).await,
            Err(ClaimCheckError::BlobAltered { what: "size", .. })
        ));
        let wrong = BlobReference::new(key.clone(), body.len() as u64, [9; 32]);
        assert!(matches!(
            s.fetch(&wrong).await,
            Err(ClaimCheckError::BlobAltered {
                what: "SHA-256 digest",
                ..
            })
        ));
        s.delete(&key).await.unwrap();
        s.delete(&key).await.expect("deleting twice is fine");
        assert!(matches!(
            s.fetch(&good).await,
            Err(ClaimCheckError::BlobMissing { .. })
        ));
    }

    #[test]
    fn debug_names_the_store_kind_only() {
        let text = format!("{:?}", store());
        assert!(
            text.contains("InMemory") && text.contains(DEFAULT_PREFIX),
            "{text}"
        );
    }
}
