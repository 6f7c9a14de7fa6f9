//! Attempt ledgers: how many times each message's handler has run.
//!
//! A broker's delivery count also counts deliveries whose handler never ran (a message
//! buffered behind its group when the process died, released to keep order, handed back at
//! shutdown), and nothing on the broker says which deliveries those were. The processor
//! therefore counts handler runs itself, in an [`AttemptStore`], and spends attempt budgets
//! on those counts only. See `docs/runtime.md` (*Attempt budgets*).

use std::{
    collections::{HashMap, hash_map::Entry},
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

    /// Records that a handler run of `message` starts, unless `max` runs are recorded
    /// already: returns `Ok` with the runs recorded, this one included, or `Err` with the
    /// runs recorded (and records nothing).
    ///
    /// The processor calls it instead of [`runs`](Self::runs) then
    /// [`start_run`](Self::start_run) when no gate runs in between. The default does
    /// exactly that; the stores of this crate look the message up once.
    fn try_start_run(&self, queue: &QueueName, message: &MessageId, max: u32) -> Result<u32, u32> {
        let runs = self.runs(queue, message);
        if runs >= max {
            return Err(runs);
        }
        Ok(self.start_run(queue, message))
    }
}

/// Fast, randomly seeded per map (message ids come from senders: a fixed hash would let
/// one pick colliding ids).
type Hasher = foldhash::fast::RandomState;

/// Handler runs per message, per queue. Looked up by reference (no key is built or cloned
/// to read, bump or forget a message: issue 18).
#[derive(Default)]
struct Ledger {
    queues: HashMap<QueueName, HashMap<MessageId, u32, Hasher>, Hasher>,
    len: usize,
}

impl Ledger {
    fn get(&self, queue: &QueueName, message: &MessageId) -> u32 {
        self.queues
            .get(queue)
            .and_then(|q| q.get(message))
            .copied()
            .unwrap_or(0)
    }

    /// [`AttemptStore::try_start_run`] on this ledger (`max` = `u32::MAX`: no limit). One
    /// look-up of the message, unless the ledger is full and the message new.
    fn try_bump(
        &mut self,
        queue: &QueueName,
        message: &MessageId,
        max: u32,
        capacity: usize,
    ) -> Result<u32, u32> {
        if self.len >= capacity && self.get(queue, message) == 0 {
            if max == 0 {
                return Err(0);
            }
            self.evict_one();
        }
        let messages = match self.queues.get_mut(queue) {
            Some(messages) => messages,
            None => self.queues.entry(queue.clone()).or_default(),
        };
        match messages.entry(message.clone()) {
            Entry::Occupied(runs) if *runs.get() >= max => Err(*runs.get()),
            Entry::Occupied(mut runs) => {
                let runs = runs.get_mut();
                *runs = runs.saturating_add(1);
                Ok(*runs)
            }
            Entry::Vacant(_) if max == 0 => Err(0),
            Entry::Vacant(slot) => {
                slot.insert(1);
                self.len += 1;
                Ok(1)
            }
        }
    }

    /// Counts one more run of `message`, evicting another message's record first if the
    /// ledger holds `capacity` messages.
    fn bump(&mut self, queue: &QueueName, message: &MessageId, capacity: usize) -> u32 {
        match self.try_bump(queue, message, u32::MAX, capacity) {
            Ok(runs) | Err(runs) => runs,
        }
    }

    fn evict_one(&mut self) {
        let victim = self
            .queues
            .iter()
            .find_map(|(q, m)| m.keys().next().map(|id| (q.clone(), id.clone())));
        if let Some((queue, id)) = victim {
            self.remove(&queue, &id);
        }
    }

    /// Forgets `message`; returns whether it had a record.
    fn remove(&mut self, queue: &QueueName, message: &MessageId) -> bool {
        let Some(messages) = self.queues.get_mut(queue) else {
            return false;
        };
        if messages.remove(message).is_none() {
            return false;
        }
        // An emptied queue keeps its (small) map: a processor settling one message at a
        // time would otherwise build and free it for every message.
        self.len -= 1;
        true
    }

    fn iter(&self) -> impl Iterator<Item = (&QueueName, &MessageId, u32)> {
        self.queues
            .iter()
            .flat_map(|(q, m)| m.iter().map(move |(id, n)| (q, id, *n)))
    }
}

/// Entries an attempt ledger keeps by default; see [`MemoryAttemptStore::with_capacity`].
pub const DEFAULT_ATTEMPT_CAPACITY: usize = 100_000;

/// The default [`AttemptStore`]: a bounded map in memory.
///
/// It survives a processor being dropped and built again in the same process (pass the same
/// store to both), not the process. Use [`FileAttemptStore`] to keep counts across process
/// restarts. When full, recording a new message evicts another one's record (an
/// undercount: safe, see [`AttemptStore`]).
pub struct MemoryAttemptStore {
    runs: Mutex<Ledger>,
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
        self.lock().len
    }

    /// Whether no message has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for MemoryAttemptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAttemptStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl AttemptStore for MemoryAttemptStore {
    fn runs(&self, queue: &QueueName, message: &MessageId) -> u32 {
        self.lock().get(queue, message)
    }

    fn start_run(&self, queue: &QueueName, message: &MessageId) -> u32 {
        self.lock().bump(queue, message, self.capacity)
    }

    fn forget(&self, queue: &QueueName, message: &MessageId) {
        self.lock().remove(queue, message);
    }

    fn try_start_run(&self, queue: &QueueName, message: &MessageId, max: u32) -> Result<u32, u32> {
        self.lock().try_bump(queue, message, max, self.capacity)
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
    runs: Ledger,
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
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ledger::default(),
            Err(err) => return Err(err),
        };
        let file = compact(&path, &runs)?;
        Ok(Self {
            path,
            inner: Mutex::new(FileLog {
                lines: runs.len,
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

    fn append(&self, log: &mut FileLog, sign: char, queue: &QueueName, message: &MessageId) {
        let line = format!("{sign} {} {}\n", queue.as_str(), message.as_str());
        let mut res = log.file.write_all(line.as_bytes());
        log.lines += 1;
        if res.is_ok() && log.lines > 4 * log.runs.len + 4096 {
            res = compact(&self.path, &log.runs).map(|file| {
                log.file = file;
                log.lines = log.runs.len;
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
fn replay(reader: impl BufRead) -> io::Result<Ledger> {
    let mut runs = Ledger::default();
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
                runs.bump(&queue, &id, usize::MAX);
            }
            "-" => {
                runs.remove(&queue, &id);
            }
            _ => {}
        }
    }
    Ok(runs)
}

/// Writes `runs` as a fresh log next to `path`, renames it over `path`, and returns it open
/// for appending.
fn compact(path: &Path, runs: &Ledger) -> io::Result<File> {
    let tmp = path.with_extension("compacting");
    {
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for (queue, id, n) in runs.iter() {
            for _ in 0..n {
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
        self.lock().runs.get(queue, message)
    }

    fn start_run(&self, queue: &QueueName, message: &MessageId) -> u32 {
        let mut log = self.lock();
        let n = log.runs.bump(queue, message, usize::MAX);
        self.append(&mut log, '+', queue, message);
        n
    }

    fn forget(&self, queue: &QueueName, message: &MessageId) {
        let mut log = self.lock();
        if log.runs.remove(queue, message) {
            self.append(&mut log, '-', queue, message);
        }
    }

    fn try_start_run(&self, queue: &QueueName, message: &MessageId, max: u32) -> Result<u32, u32> {
        let mut log = self.lock();
        let n = log.runs.try_bump(queue, message, max, usize::MAX)?;
        self.append(&mut log, '+', queue, message);
        Ok(n)
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
        let (q, e) = key("e");
        assert_eq!(store.try_start_run(&q, &e, 2), Ok(1));
        assert_eq!(store.try_start_run(&q, &e, 2), Ok(2));
        assert_eq!(
            store.try_start_run(&q, &e, 2),
            Err(2),
            "nothing recorded at the limit"
        );
        assert_eq!(store.runs(&q, &e), 2);
        assert_eq!(store.try_start_run(&q, &key("f").1, 0), Err(0));
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
        assert_eq!(store.try_start_run(&q, &a, 3), Err(3));
        assert_eq!(store.try_start_run(&q, &b, 3), Ok(1));
        drop(store);
        let store = FileAttemptStore::open(&path).unwrap();
        assert_eq!(
            store.runs(&q, &b),
            1,
            "a run started by try_start_run is logged"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
