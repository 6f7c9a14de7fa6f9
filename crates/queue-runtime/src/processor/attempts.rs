//! Attempt ledgers: how many times each message's handler has run.
//!
//! A broker's delivery count also counts deliveries whose handler never ran (a message
//! buffered behind its group when the process died, released to keep order, handed back at
//! shutdown), and nothing on the broker says which deliveries those were. The processor
//! therefore counts handler runs itself, in an [`AttemptStore`], and spends attempt budgets
//! on those counts only. See `docs/runtime.md` (*Attempt budgets*).

use std::{
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use queue_core::{MessageId, QueueName};

/// Where the processor records the handler runs of each message.
///
/// The processor calls [`start_run`](Self::start_run) **before** every handler run (so a run
/// that crashes the process still counts), [`runs`](Self::runs) before handing a delivery to
/// the handler (a message whose recorded runs already reached `retry.max_attempts` is
/// dead-lettered `MaxAttemptsExceeded` without running again), and
/// [`forget`](Self::forget) once the message is completed or dead-lettered.
///
/// The calls are made on the processor's tasks and must return quickly (memory, a local
/// file). A store that loses a record (evicted, not shared with another process) makes the
/// processor undercount: the message gets more handler runs, never fewer, and the broker's
/// own redelivery limit stays the backstop.
pub trait AttemptStore: fmt::Debug + Send + Sync + 'static {
    /// Handler runs recorded for `message` of `queue`.
    fn runs(&self, queue: &QueueName, message: &MessageId) -> u32;
    /// Records that a handler run of `message` starts; returns the runs recorded, this one
    /// included.
    fn start_run(&self, queue: &QueueName, message: &MessageId) -> u32;
    /// Forgets `message`: it was completed or dead-lettered.
    fn forget(&self, queue: &QueueName, message: &MessageId);
}

type Key = (QueueName, MessageId);

/// Entries an attempt ledger keeps by default; see [`MemoryAttemptStore::with_capacity`].
pub const DEFAULT_ATTEMPT_CAPACITY: usize = 100_000;

/// The default [`AttemptStore`]: a bounded map in memory.
///
/// It survives a processor being dropped and built again in the same process (pass the same
/// store to both), not the process. Use [`FileAttemptStore`] to keep counts across process
/// restarts. When full, recording a new message evicts another one's record (an
/// undercount: safe, see [`AttemptStore`]).
#[derive(Debug)]
pub struct MemoryAttemptStore {
    runs: Mutex<HashMap<Key, u32>>,
    capacity: usize,
}

impl Default for MemoryAttemptStore {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_ATTEMPT_CAPACITY)
    }
}

impl MemoryAttemptStore {
    /// A store keeping at most `capacity` messages (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            runs: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// Messages with a record.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no message has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, u32>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Increments `key` in `map`, evicting another entry if `map` is at `capacity`.
fn bump(map: &mut HashMap<Key, u32>, key: Key, capacity: usize) -> u32 {
    if map.len() >= capacity
        && !map.contains_key(&key)
        && let Some(victim) = map.keys().next().cloned()
    {
        map.remove(&victim);
    }
    let runs = map.entry(key).or_default();
    *runs = runs.saturating_add(1);
    *runs
}

impl AttemptStore for MemoryAttemptStore {
    fn runs(&self, queue: &QueueName, message: &MessageId) -> u32 {
        let key = (queue.clone(), message.clone());
        self.lock().get(&key).copied().unwrap_or(0)
    }

    fn start_run(&self, queue: &QueueName, message: &MessageId) -> u32 {
        let key = (queue.clone(), message.clone());
        bump(&mut self.lock(), key, self.capacity)
    }

    fn forget(&self, queue: &QueueName, message: &MessageId) {
        self.lock().remove(&(queue.clone(), message.clone()));
    }
}

/// An [`AttemptStore`] that survives process restarts, `kill -9` included: an append-only
/// log in a local file, one line per handler run started (`+ <queue> <message id>`) and per
/// message settled (`- <queue> <message id>`).
///
/// Every record is written (one `write` call) before the handler runs, so it is in the
/// operating system's hands when the process dies; it is not `fsync`ed, so a power loss can
/// lose the last records (an undercount, which is safe). [`open`](Self::open) replays the
/// log and rewrites it compacted; the log is compacted again whenever it holds four times
/// more lines than live records. Queue names and message ids are printable ASCII without
/// spaces, so a line needs no escaping; a torn last line is ignored.
///
/// One file per process: two processes appending to one file would interleave counts of
/// different lives of a message. If writing fails, the error is logged once and counting
/// goes on in memory.
pub struct FileAttemptStore {
    path: PathBuf,
    inner: Mutex<FileLog>,
    write_failed: AtomicBool,
}

struct FileLog {
    runs: HashMap<Key, u32>,
    file: File,
    lines: usize,
}

impl fmt::Debug for FileAttemptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileAttemptStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileAttemptStore {
    /// Opens (or creates) the log at `path`, replays it and compacts it.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let runs = match File::open(&path) {
            Ok(file) => replay(BufReader::new(file))?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(err) => return Err(err),
        };
        let file = compact(&path, &runs)?;
        Ok(Self {
            path,
            inner: Mutex::new(FileLog {
                lines: runs.len(),
                runs,
                file,
            }),
            write_failed: AtomicBool::new(false),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileLog> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, log: &mut FileLog, sign: char, key: &Key) {
        let line = format!("{sign} {} {}\n", key.0.as_str(), key.1.as_str());
        let mut res = log.file.write_all(line.as_bytes());
        log.lines += 1;
        if res.is_ok() && log.lines > 4 * log.runs.len() + 4096 {
            res = compact(&self.path, &log.runs).map(|file| {
                log.file = file;
                log.lines = log.runs.len();
            });
        }
        if let Err(err) = res
            && !self.write_failed.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                path = %self.path.display(),
                error = %err,
                "writing the attempt log failed; attempts are counted in memory only"
            );
        }
    }
}

/// Rebuilds the counts from a log.
fn replay(reader: impl BufRead) -> io::Result<HashMap<Key, u32>> {
    let mut runs = HashMap::new();
    let mut reader = reader;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Some(record) = line.strip_suffix(b"\n") else {
            break; // The last line was torn by a crash: its write never completed.
        };
        let Ok(record) = std::str::from_utf8(record) else {
            continue; // Not ours.
        };
        let mut parts = record.split(' ');
        let (Some(sign), Some(queue), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue; // A torn or foreign line.
        };
        let (Ok(queue), Ok(id)) = (QueueName::new(queue), MessageId::new(id)) else {
            continue;
        };
        match sign {
            "+" => {
                let n: &mut u32 = runs.entry((queue, id)).or_default();
                *n = n.saturating_add(1);
            }
            "-" => {
                runs.remove(&(queue, id));
            }
            _ => {}
        }
    }
    Ok(runs)
}

/// Writes `runs` as a fresh log next to `path`, renames it over `path`, and returns it open
/// for appending.
fn compact(path: &Path, runs: &HashMap<Key, u32>) -> io::Result<File> {
    let tmp = path.with_extension("compacting");
    {
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for ((queue, id), n) in runs {
            for _ in 0..*n {
                writeln!(out, "+ {} {}", queue.as_str(), id.as_str())?;
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

impl AttemptStore for FileAttemptStore {
    fn runs(&self, queue: &QueueName, message: &MessageId) -> u32 {
        let key = (queue.clone(), message.clone());
        self.lock().runs.get(&key).copied().unwrap_or(0)
    }

    fn start_run(&self, queue: &QueueName, message: &MessageId) -> u32 {
        let key = (queue.clone(), message.clone());
        let mut log = self.lock();
        let n = bump(&mut log.runs, key.clone(), usize::MAX);
        self.append(&mut log, '+', &key);
        n
    }

    fn forget(&self, queue: &QueueName, message: &MessageId) {
        let key = (queue.clone(), message.clone());
        let mut log = self.lock();
        if log.runs.remove(&key).is_some() {
            self.append(&mut log, '-', &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> (QueueName, MessageId) {
        (QueueName::new("q").unwrap(), MessageId::new(id).unwrap())
    }

    #[test]
    fn memory_store_counts_forgets_and_stays_bounded() {
        let store = MemoryAttemptStore::with_capacity(2);
        let (q, a) = key("a");
        assert_eq!(store.runs(&q, &a), 0);
        assert_eq!(store.start_run(&q, &a), 1);
        assert_eq!(store.start_run(&q, &a), 2);
        store.forget(&q, &a);
        assert_eq!(store.runs(&q, &a), 0);
        for id in ["b", "c", "d"] {
            store.start_run(&q, &key(id).1);
        }
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn file_store_survives_reopening_and_ignores_torn_lines() {
        let dir = std::env::temp_dir().join(format!("attempts-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("unit.log");
        let _ = fs::remove_file(&path);
        let (q, a) = key("a");
        let b = key("b").1;
        {
            let store = FileAttemptStore::open(&path).unwrap();
            store.start_run(&q, &a);
            store.start_run(&q, &a);
            store.start_run(&q, &b);
            store.forget(&q, &b);
            // Dropped without any shutdown: what a crash leaves.
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"+ q tor").unwrap();
        drop(file);
        let store = FileAttemptStore::open(&path).unwrap();
        assert_eq!(store.runs(&q, &a), 2);
        assert_eq!(store.runs(&q, &b), 0);
        assert_eq!(
            store.runs(&q, &key("tor").1),
            0,
            "a torn line counts nothing"
        );
        assert_eq!(store.start_run(&q, &a), 3);
        fs::remove_dir_all(&dir).unwrap();
    }
}
