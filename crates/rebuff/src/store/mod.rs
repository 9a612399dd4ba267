//! Embedded persistent state: the jails that must survive a restart.
//!
//! [`Store`] owns `rebuff.db` in the state directory, an append-only log of
//! what happened to each (stream, filter, values) key: pending matches
//! inside a filter's retry window, and triggers whose delayed actions have
//! not all run. It receives [`Record`]s from the tracker, its single owner,
//! which calls it synchronously; it sends back, once, at [`Store::open`],
//! the [`Restored`] state replayed from the log.
//!
//! An append-only log was chosen over redb as simpler and as safe: every
//! record is framed with its length and CRC32, so a torn last write (a
//! crash mid-commit) is detected and dropped; [`Store::append`] only
//! buffers, and [`Store::commit`] writes a whole group with one `write(2)`
//! and, when asked, one `fdatasync(2)`; [`Store::compact`] rewrites the
//! live state to a temporary file and renames it over the log, so the log
//! on disk is at every instant either the old one or the new one.
//!
//! # File format
//!
//! All integers are little-endian.
//!
//! - Header (16 bytes): magic `RBFSTATE`, u32 format version (1), u32
//!   reserved (0). A file whose header differs in any way (short, foreign
//!   magic, newer version, reserved bits set) is never read: it is renamed
//!   to `rebuff.db.unsupported-<unix seconds>` (plus `.N` if taken) and the
//!   store starts empty.
//! - Then frames: u32 payload length (at most 16 MiB), u32 CRC32 of the
//!   payload, the payload.
//! - A payload is a u8 kind and its fields. A string is a u32 byte length
//!   and UTF-8 bytes; a time is a u64 (ms since the Unix epoch); values are
//!   a u16 count and that many strings. Every kind starts with the key:
//!   stream, filter, values.
//!   - 1 Match: key, time.
//!   - 2 Trigger: key, time, u8 replace (0 or 1).
//!   - 3 Done: key, time (of the trigger that has run all its delayed
//!     actions, or was dropped).
//!   - 4 Forget: key (a flush: drop everything about the key).
//!
//! Reading stops at the first frame that is truncated, fails its CRC, has
//! a length over the cap or does not decode (unknown kind, bad UTF-8,
//! trailing bytes); the file is truncated there, so that later appends are
//! not hidden behind the garbage.
//!
//! # A disk that fails
//!
//! A full (`ENOSPC`, `EDQUOT`), read-only (`EROFS`) or failing (`EIO`) disk
//! never stops the daemon: the tracker's memory is the truth, the log only
//! its copy, so the store keeps what it could not write and tries again.
//!
//! - At open, such an error while preparing to write (creating the
//!   directory or the log, writing its header, cutting a torn tail) leaves
//!   the store open on what it could read, with nothing to append to; the
//!   first compaction creates the log. Other errors (permissions, a path
//!   that is not a directory) and any error *reading* the log are
//!   configuration or data problems and fail the open, as does a directory
//!   in use: a log that could not be read must never be rewritten from an
//!   empty memory.
//! - A failed commit is cut back to the last whole frame (`ftruncate`), so
//!   no partial frame is ever followed by good ones; if even that fails,
//!   the next commit cuts it before writing. The records stay buffered and
//!   the commit is retried by later commits, `FIRST_RETRY` after the
//!   failure, doubling up to `MAX_RETRY` (a retry costs one `write(2)`,
//!   and every failure is logged by the tracker).
//! - After a failed `fdatasync` the kernel may have dropped the unwritten
//!   pages, so the end of the log is unknown: the log is *stale*, appends
//!   are dropped, and only a compaction (written from the tracker's memory)
//!   makes it current again. A failed directory sync after a compaction's
//!   rename does the same.
//! - Records waiting for a retry are bounded by `buffer_limit`
//!   (`MIN_COMPACTION`): a backlog that large would make the log due for
//!   a compaction as soon as it was appended, so it is dropped instead
//!   (counted in [`Store::dropped_records`], logged), the log becomes
//!   stale, and the compaction rewrites the same state smaller. Nothing the
//!   tracker holds is lost that way.
//! - A failed compaction leaves the old log whole and in use (the
//!   temporary file is removed); when the log is not stale, the buffered
//!   records are then appended to it instead. Compactions are retried on
//!   the same schedule as commits, but separately: a disk with room for
//!   the appends but not for a second copy of the log keeps its appends.
//!
//! A separate `rebuff.lock` keeps two daemons from sharing a state
//! directory (see the `lock` module). It is a separate file because
//! compaction replaces `rebuff.db`, and a lock on a replaced file protects
//! nothing. It is never deleted: deleting a lock file races with the next
//! process that opens it.

mod codec;
mod lock;

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use rebuff_engine::{Key, Time, Values};
use smallvec::SmallVec;

use lock::{DirLock, Hold, LOCK_WAIT};

const DB_FILE: &str = "rebuff.db";
const TMP_FILE: &str = "rebuff.db.tmp";
const LOCK_FILE: &str = "rebuff.lock";
/// Appending less than this since the last compaction never makes one worth
/// it, however small the live state.
const MIN_COMPACTION: u64 = 8 * 1024 * 1024;
/// The first retry of a failed write comes this long after it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Retries back off up to this: the delay before a store catches up once
/// the disk is back, and the rate of error lines while it is not.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// The values of a record: as text, or as the tracker's compact key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordValues<'a> {
    Text(&'a [String]),
    Key(&'a Key),
}

impl<'a> From<&'a [String]> for RecordValues<'a> {
    fn from(values: &'a [String]) -> Self {
        RecordValues::Text(values)
    }
}

impl<'a> From<&'a Values> for RecordValues<'a> {
    fn from(values: &'a Values) -> Self {
        RecordValues::Text(values)
    }
}

impl<'a> From<&'a Key> for RecordValues<'a> {
    fn from(key: &'a Key) -> Self {
        RecordValues::Key(key)
    }
}

impl RecordValues<'_> {
    pub fn len(&self) -> usize {
        match self {
            RecordValues::Text(values) => values.len(),
            RecordValues::Key(key) => key.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each value's text, in order.
    pub fn for_each(&self, mut f: impl FnMut(&str)) {
        match self {
            RecordValues::Text(values) => values.iter().for_each(|v| f(v)),
            RecordValues::Key(key) => {
                for part in key.parts() {
                    part.with_text(0, &mut f);
                }
            }
        }
    }
}

/// A record as the tracker appends it (borrowed, so the hot path does not
/// clone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    Match {
        stream: &'a str,
        filter: &'a str,
        values: RecordValues<'a>,
        time: Time,
    },
    /// `replace`: an `extend` duplicate; it replaces the key's pending
    /// triggers instead of adding one.
    Trigger {
        stream: &'a str,
        filter: &'a str,
        values: RecordValues<'a>,
        time: Time,
        replace: bool,
    },
    /// The trigger made at `time` has run all its delayed actions, or was
    /// dropped.
    Done {
        stream: &'a str,
        filter: &'a str,
        values: RecordValues<'a>,
        time: Time,
    },
    /// A flush: everything about the key is forgotten.
    Forget {
        stream: &'a str,
        filter: &'a str,
        values: RecordValues<'a>,
    },
}

/// What the log says about one (stream, filter, values) key after
/// replaying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredEntry {
    /// Shared by every entry of the stream (and of the filter): a million
    /// entries do not make a million copies of the names.
    pub stream: Arc<str>,
    pub filter: Arc<str>,
    pub values: Key,
    /// Match times, in the order they were appended.
    pub matches: Times,
    /// Times of the triggers with delayed actions still pending.
    pub triggers: Times,
}

/// Times of one entry: usually one, kept inline.
pub type Times = SmallVec<[Time; 1]>;

/// The state replayed from the log at [`Store::open`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Keys with at least one match or trigger, in first-seen order.
    pub entries: Vec<RestoredEntry>,
    /// Records replayed.
    pub records: u64,
    /// Bytes dropped at the end of the file: a torn last write (crash
    /// mid-commit) or corruption.
    pub dropped_tail_bytes: u64,
    /// Set when the file had an unknown or newer format version (or bad
    /// magic) and was renamed to this path; the store then starts empty.
    pub moved_aside: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory is in use by another process{} (lock held on {})",
        holder.map(|pid| format!(", pid {pid}")).unwrap_or_default(),
        path.display()
    )]
    Locked { path: PathBuf, holder: Option<i32> },
}

/// An I/O error with what was being done, and to what.
fn io_err(action: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Whether `e` says the disk cannot take writes now (full, over quota,
/// read-only, failing), as opposed to a configuration mistake.
fn is_disk_condition(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::ReadOnlyFilesystem
    ) || Errno::from_io_error(e) == Some(Errno::IO)
}

fn is_disk_condition_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if is_disk_condition(source))
}

/// When to try a failed kind of write again.
#[derive(Debug, Default)]
struct Retry {
    /// Failures since the last success.
    failures: u32,
    at: Option<Instant>,
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        self.at.is_none_or(|at| now >= at)
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let delay = FIRST_RETRY
            .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
            .min(MAX_RETRY);
        self.at = Some(now + delay);
    }

    /// Forgets the failures; returns how many there were.
    fn succeeded(&mut self) -> u32 {
        self.at = None;
        std::mem::take(&mut self.failures)
    }
}

/// The open log. Dropping it releases the lock; records appended but not
/// committed are lost.
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    /// Opened in append mode, so every write lands at the end whatever was
    /// truncated before it. `None` while there is no log this store may
    /// append to (see `stale`).
    file: Option<File>,
    lock: DirLock,
    /// Encoded frames appended since the last commit.
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    /// Past this many bytes in `buf` while commits fail, the buffer is
    /// dropped and the log made stale.
    buffer_limit: usize,
    /// Bytes of whole frames (plus the header) in the file.
    size: u64,
    /// Committed bytes not yet covered by an fdatasync.
    unsynced: bool,
    /// A durable commit was asked and has not happened yet.
    sync_wanted: bool,
    /// A failed write may have left part of a frame after `size`, and
    /// truncating it away failed too: it must be cut before the next write.
    torn: bool,
    /// The log may lack records that only the caller's memory holds (a
    /// dropped buffer, a failed sync), or there is no log to append to:
    /// appends are dropped until a compaction rewrites it. Always set when
    /// `file` is `None`.
    stale: bool,
    /// A log in an unsupported format that could not be moved aside yet:
    /// it must be before anything replaces it.
    aside_pending: bool,
    commit_retry: Retry,
    compact_retry: Retry,
    /// Records dropped instead of written one by one (see `stale`).
    dropped_records: u64,
    /// The size right after the last compaction (or what a compaction
    /// would have left at open).
    compacted_size: u64,
    /// Bytes committed since then.
    appended: u64,
    min_compaction: u64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("buffered", &self.buf.len())
            .field("unsynced", &self.unsynced)
            .field("stale", &self.stale)
            .field("commit_failures", &self.commit_retry.failures)
            .field("compact_failures", &self.compact_retry.failures)
            .field("compacted_size", &self.compacted_size)
            .field("appended", &self.appended)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `dir/rebuff.db`, creating the directory (mode 0700) and the
    /// file when missing, locks the directory, and replays every record.
    ///
    /// Fails with [`StoreError::Locked`] when another process (or another
    /// `Store` in this one) holds the directory; another process's lock is
    /// first waited for a few seconds, the time a killed daemon may take to
    /// exit. A full or read-only disk does not fail it (see the module
    /// documentation).
    pub fn open(dir: &Path) -> Result<(Store, Restored), StoreError> {
        Self::open_with(dir, MIN_COMPACTION, LOCK_WAIT)
    }

    /// `open`, with the compaction threshold (and the buffer limit, the
    /// same) and the lock wait as parameters, so that tests need not write
    /// megabytes nor wait.
    fn open_with(
        dir: &Path,
        min_compaction: u64,
        lock_wait: Duration,
    ) -> Result<(Store, Restored), StoreError> {
        let exists = match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if is_disk_condition(&e) => dir.is_dir(),
            Err(e) => return Err(io_err("create state directory", dir, e)),
        };
        let lock = DirLock::acquire(dir, exists, lock_wait)?;
        let path = dir.join(DB_FILE);
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        let mut store = Store {
            dir: dir.to_owned(),
            path,
            file: None,
            lock,
            buf: Vec::new(),
            buffered: 0,
            buffer_limit: usize::try_from(min_compaction).unwrap_or(usize::MAX),
            size: 0,
            unsynced: false,
            sync_wanted: false,
            torn: false,
            stale: true,
            aside_pending: false,
            commit_retry: Retry::default(),
            compact_retry: Retry::default(),
            dropped_records: 0,
            compacted_size: codec::HEADER_LEN as u64,
            appended: 0,
            min_compaction,
        };
        let mut restored = Restored::default();
        if !bytes.is_empty() && !codec::header_supported(&bytes) {
            store.aside_pending = true;
            bytes.clear();
            restored.moved_aside = store.move_aside_if_pending()?;
        }
        if !bytes.is_empty() {
            let replayed = codec::replay(&bytes[codec::HEADER_LEN..]);
            store.size = (codec::HEADER_LEN + replayed.good_len) as u64;
            restored.dropped_tail_bytes = bytes.len() as u64 - store.size;
            restored.records = replayed.records;
            restored.entries = replayed.entries;
            // As if a compaction had just run: otherwise a daemon restarted
            // more often than it appends `MIN_COMPACTION` would never
            // compact, and its log would grow forever.
            let live: u64 = restored.entries.iter().map(codec::live_size).sum();
            store.compacted_size = codec::HEADER_LEN as u64 + live;
            store.appended = store.size.saturating_sub(store.compacted_size);
        }
        if store.lock.hold() == Hold::Exclusive && !store.aside_pending {
            match store.open_for_appends(bytes.is_empty()) {
                Ok(file) => {
                    store.file = Some(file);
                    store.stale = false;
                }
                // The first compaction writes the log; the caller learns
                // why when it fails.
                Err(e) if is_disk_condition_error(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((store, restored))
    }

    /// Removes a compaction's leftover and opens the log for appending,
    /// writing its header when `empty`, or cutting a torn tail.
    fn open_for_appends(&mut self, empty: bool) -> Result<File, StoreError> {
        // A compaction interrupted before its rename: the log itself is
        // still whole, and the temporary file is worthless.
        remove_if_present(&self.dir.join(TMP_FILE))?;
        let file = open_append(&self.path, false)?;
        if empty {
            file.set_len(0)
                .and_then(|()| (&file).write_all(&codec::header()))
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err("write", &self.path, e))?;
            sync_dir(&self.dir)?;
            self.size = codec::HEADER_LEN as u64;
            self.compacted_size = self.size;
            self.appended = 0;
        } else if file
            .metadata()
            .map_err(|e| io_err("inspect", &self.path, e))?
            .len()
            > self.size
        {
            file.set_len(self.size)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_err("truncate", &self.path, e))?;
        }
        Ok(file)
    }

    /// Moves a log in an unsupported format aside, if one is waiting for
    /// it and this store may write; returns where it went.
    fn move_aside_if_pending(&mut self) -> Result<Option<PathBuf>, StoreError> {
        if !self.aside_pending || self.lock.hold() != Hold::Exclusive {
            return Ok(None);
        }
        let aside = aside_path(&self.path, unix_seconds())?;
        match fs::rename(&self.path, &aside) {
            Ok(()) => {
                self.aside_pending = false;
                Ok(Some(aside))
            }
            Err(e) if is_disk_condition(&e) => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "the state file was written by an unknown format version and cannot be moved aside now; rebuff starts with an empty state and moves it aside before writing"
                );
                Ok(None)
            }
            Err(e) => Err(io_err("move aside", &self.path, e)),
        }
    }

    /// Buffers a record in memory; nothing reaches the file before
    /// [`commit`](Self::commit).
    ///
    /// A record that cannot be framed (over 65535 values, or over 16 MiB)
    /// is dropped with a warning: a reader would stop at its frame and
    /// lose every record after it. So is every record while the log is
    /// stale: the next compaction writes the state it belongs to.
    pub fn append(&mut self, record: &Record<'_>) {
        if self.stale {
            self.dropped_records += 1;
            return;
        }
        if encode_or_warn(&mut self.buf, record, &self.path) {
            self.buffered += 1;
        }
        if self.commit_retry.failures > 0 && self.buf.len() > self.buffer_limit {
            tracing::warn!(
                records = self.buffered,
                bytes = self.buf.len(),
                "the state records waiting for the disk reached their limit; they are dropped, and the next compaction writes the whole state from memory"
            );
            self.make_stale();
        }
    }

    /// Writes the buffered records with one `write(2)`, then
    /// `fdatasync(2)`s the file when `durable`, and returns the number of
    /// bytes written.
    ///
    /// When `durable`, every record committed so far is on disk on
    /// success, including earlier non-durable commits. On error the
    /// records stay buffered, and the file is cut back to its last whole
    /// frame. After an error, commits write nothing and return `Ok(0)`
    /// until the retry is due (a durable one is remembered); so do they
    /// while the log is stale, which only a compaction cures
    /// ([`needs_compaction`](Self::needs_compaction) says when).
    pub fn commit(&mut self, durable: bool) -> Result<u64, StoreError> {
        self.commit_at(durable, Instant::now())
    }

    fn commit_at(&mut self, durable: bool, now: Instant) -> Result<u64, StoreError> {
        self.sync_wanted |= durable;
        if self.stale || !self.commit_retry.due(now) {
            return Ok(0);
        }
        match self.write_buffered() {
            Ok(written) => {
                let failures = self.commit_retry.succeeded();
                self.recovered("commit", failures);
                Ok(written)
            }
            Err(e) => {
                self.commit_retry.failed(now);
                Err(e)
            }
        }
    }

    fn write_buffered(&mut self) -> Result<u64, StoreError> {
        let Some(file) = self.file.as_mut() else {
            // Never without `stale`; nothing to append to anyway.
            return Ok(0);
        };
        if self.torn {
            file.set_len(self.size)
                .map_err(|e| io_err("truncate", &self.path, e))?;
            self.torn = false;
        }
        let written = self.buf.len() as u64;
        if written > 0 {
            if let Err(e) = file.write_all(&self.buf) {
                // Part of the buffer may be in the file; a later frame
                // written after that part would be unreadable.
                self.torn = file.set_len(self.size).is_err();
                return Err(io_err("write", &self.path, e));
            }
            self.buf.clear();
            self.buffered = 0;
            self.size += written;
            self.appended += written;
            self.unsynced = true;
        }
        if self.sync_wanted && self.unsynced {
            if let Err(e) = file.sync_data() {
                // The kernel may have dropped the pages it could not
                // write: the end of the log is unknown, and frames
                // appended after a hole would never be read back.
                self.make_stale();
                return Err(io_err("sync", &self.path, e));
            }
            self.unsynced = false;
        }
        self.sync_wanted = false;
        Ok(written)
    }

    /// Drops the buffered records: only a compaction can bring the log up
    /// to date now.
    fn make_stale(&mut self) {
        self.dropped_records += self.buffered;
        self.buf = Vec::new();
        self.buffered = 0;
        self.stale = true;
    }

    /// Logs the end of a run of failures.
    fn recovered(&self, what: &str, failures: u32) {
        if failures > 0 {
            tracing::info!(
                path = %self.path.display(),
                after = what,
                failures,
                dropped_records = self.dropped_records,
                "state writes succeed again"
            );
        }
    }

    /// Whether something waits to reach the disk: buffered records, a
    /// wanted sync, or a stale log. The owner retries while this holds, so
    /// an idle daemon catches up once the disk can be written again.
    pub fn has_backlog(&self) -> bool {
        !self.buf.is_empty() || self.sync_wanted || self.stale || self.torn
    }

    /// Whether a compaction is due: the log is stale (once its retry is
    /// due), or it grew enough since the last compaction that rewriting it
    /// is worth it: more than the larger of 8 MiB and twice the size the
    /// last compaction left.
    pub fn needs_compaction(&self) -> bool {
        self.needs_compaction_at(Instant::now())
    }

    fn needs_compaction_at(&self, now: Instant) -> bool {
        self.compact_retry.due(now)
            && (self.stale || self.appended > self.min_compaction.max(2 * self.compacted_size))
    }

    /// Rewrites the log with only `live`, the caller's current state as
    /// `Match` and `Trigger` (with `replace: false`) records. `live` must
    /// include the effect of every record appended so far: the buffered
    /// ones are not written after a successful rewrite.
    ///
    /// Every `Trigger` is written before every `Match`, so a key's matches
    /// survive the replay of its triggers whatever order `live` gives them
    /// in. `Done` and `Forget` describe changes, not state, and are
    /// skipped.
    ///
    /// The new file is written as `rebuff.db.tmp`, fsync'ed, renamed over
    /// `rebuff.db`, and the directory fsync'ed; appends continue in it. If
    /// the rewrite fails, the old log is untouched and the buffered records
    /// are appended to it instead (unless it is stale). A compaction is
    /// always attempted when called, whatever the retry schedule.
    pub fn compact<'a>(
        &mut self,
        live: impl Iterator<Item = Record<'a>>,
    ) -> Result<(), StoreError> {
        self.compact_at(live, Instant::now())
    }

    fn compact_at<'a>(
        &mut self,
        live: impl Iterator<Item = Record<'a>>,
        now: Instant,
    ) -> Result<(), StoreError> {
        match self.rewrite(live) {
            Ok(()) => {
                let failures = self.compact_retry.succeeded() + self.commit_retry.succeeded();
                self.recovered("compaction", failures);
                Ok(())
            }
            Err(e) => {
                self.compact_retry.failed(now);
                if !self.stale && !self.buf.is_empty() {
                    // Keep the old log current if it can be, whatever the
                    // retry schedule: this may be the last chance before
                    // the daemon stops.
                    match self.write_buffered() {
                        Ok(_) => {
                            let failures = self.commit_retry.succeeded();
                            self.recovered("commit", failures);
                        }
                        Err(_) => self.commit_retry.failed(now),
                    }
                }
                Err(e)
            }
        }
    }

    fn rewrite<'a>(&mut self, live: impl Iterator<Item = Record<'a>>) -> Result<(), StoreError> {
        self.ensure_writable()?;
        let mut triggers = Vec::from(codec::header());
        let mut matches = Vec::new();
        for record in live {
            let buf = match record {
                Record::Trigger { .. } => &mut triggers,
                Record::Match { .. } => &mut matches,
                Record::Done { .. } | Record::Forget { .. } => continue,
            };
            encode_or_warn(buf, &record, &self.path);
        }

        let tmp = self.dir.join(TMP_FILE);
        // Left by an earlier compaction that failed and could not clean up.
        remove_if_present(&tmp)?;
        let written = open_append(&tmp, true).and_then(|mut file| {
            file.write_all(&triggers)
                .and_then(|()| file.write_all(&matches))
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err("write", &tmp, e))?;
            fs::rename(&tmp, &self.path).map_err(|e| io_err("rename", &tmp, e))?;
            Ok(file)
        });
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                // The old log is untouched; the next open removes what is
                // left of the temporary file anyway.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // From the rename on, the new file is the log, and it holds
        // everything: switch to it before anything else can fail.
        self.file = Some(file);
        self.size = (triggers.len() + matches.len()) as u64;
        self.compacted_size = self.size;
        self.appended = 0;
        self.buf.clear();
        self.buffered = 0;
        self.unsynced = false;
        self.sync_wanted = false;
        self.torn = false;
        self.stale = false;
        if let Err(e) = sync_dir(&self.dir) {
            // The rename may not survive a crash, and what is appended
            // after it would go with it.
            self.make_stale();
            return Err(e);
        }
        Ok(())
    }

    /// Makes sure a compaction may write: the directory exists, this store
    /// holds its exclusive lock, and a log in an unsupported format is out
    /// of the way.
    fn ensure_writable(&mut self) -> Result<(), StoreError> {
        if self.lock.hold() != Hold::Exclusive {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| io_err("create state directory", &self.dir, e))?;
            let path = self.lock.path().to_owned();
            self.lock
                .exclusive()
                .map_err(|refused| refused.into_error(&path))?;
        }
        if let Some(aside) = self.move_aside_if_pending()? {
            tracing::error!(
                path = %aside.display(),
                "the state file written by an unknown format version was moved aside"
            );
        }
        if self.aside_pending {
            return Err(io_err(
                "move aside",
                &self.path,
                io::Error::other("the file is in an unsupported format"),
            ));
        }
        Ok(())
    }

    /// The log's path, `<state directory>/rebuff.db`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file (header and committed records), for metrics.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Records dropped rather than written one by one while the disk
    /// failed: each time the waiting records reached their limit, and all
    /// those appended while the log was stale. The compaction that ends a
    /// stale log writes the state they belong to.
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records
    }
}

/// Appends `record` to `buf`; whether it could be framed.
fn encode_or_warn(buf: &mut Vec<u8>, record: &Record<'_>, path: &Path) -> bool {
    match codec::encode(buf, record) {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!(?why, path = %path.display(), "state record too large to persist; dropped");
            false
        }
    }
}

/// Opens `path` for appending (and reading), creating it mode 0600;
/// `fresh`: it must not exist yet.
fn open_append(path: &Path, fresh: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(!fresh)
        .create_new(fresh)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err("open", path, e))
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path, e)),
        _ => Ok(()),
    }
}

/// Makes renames and file creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync", dir, e))
}

/// The first free `rebuff.db.unsupported-<secs>[.N]` beside `path`.
fn aside_path(path: &Path, secs: u64) -> Result<PathBuf, StoreError> {
    let mut base = path.as_os_str().to_owned();
    base.push(format!(".unsupported-{secs}"));
    for n in 0u32.. {
        let mut candidate = base.clone();
        if n > 0 {
            candidate.push(format!(".{n}"));
        }
        let candidate = PathBuf::from(candidate);
        match fs::symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
            Err(e) => return Err(io_err("inspect", &candidate, e)),
            Ok(_) => {}
        }
    }
    Err(io_err("move aside", path, io::Error::other("no free name")))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn open(dir: &Path) -> (Store, Restored) {
        Store::open(dir).expect("open store")
    }

    fn matched<'a>(values: &'a [String], time: Time) -> Record<'a> {
        Record::Match {
            stream: "ssh",
            filter: "failed",
            values: values.into(),
            time,
        }
    }

    fn triggered<'a>(values: &'a [String], time: Time, replace: bool) -> Record<'a> {
        Record::Trigger {
            stream: "ssh",
            filter: "failed",
            values: values.into(),
            time,
            replace,
        }
    }

    fn done<'a>(values: &'a [String], time: Time) -> Record<'a> {
        Record::Done {
            stream: "ssh",
            filter: "failed",
            values: values.into(),
            time,
        }
    }

    fn forget<'a>(values: &'a [String]) -> Record<'a> {
        Record::Forget {
            stream: "ssh",
            filter: "failed",
            values: values.into(),
        }
    }

    fn entry(values: &[String], matches: &[Time], triggers: &[Time]) -> RestoredEntry {
        RestoredEntry {
            stream: "ssh".into(),
            filter: "failed".into(),
            values: Key::from_values(values),
            matches: matches.into(),
            triggers: triggers.into(),
        }
    }

    fn append_all(store: &mut Store, records: &[Record<'_>]) {
        for record in records {
            store.append(record);
        }
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).expect("stat").len()
    }

    #[test]
    fn records_round_trip_through_reopen_with_the_replay_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c, d) = (
            values(&["1.1.1.1"]),
            values(&["2.2.2.2"]),
            values(&["3.3.3.3"]),
            values(&["4.4.4.4"]),
        );
        let (mut store, restored) = open(dir.path());
        assert_eq!(restored, Restored::default());
        let other_filter = Record::Match {
            stream: "ssh",
            filter: "invalid",
            values: a.as_slice().into(),
            time: 9,
        };
        let records = [
            // a: a trigger uses up the matches before it, not those after.
            matched(&a, 1),
            matched(&a, 2),
            triggered(&a, 3, false),
            matched(&a, 4),
            // b: triggers add up until a replacing one; done removes one.
            triggered(&b, 1, false),
            triggered(&b, 2, false),
            triggered(&b, 3, true),
            triggered(&b, 5, false),
            triggered(&b, 5, false),
            done(&b, 5),
            done(&b, 99),
            // c: forgotten, then seen again: it comes back as a new key.
            matched(&c, 1),
            triggered(&c, 2, false),
            forget(&c),
            forget(&d),
            // d: every trigger done, nothing left: not returned.
            triggered(&d, 1, false),
            done(&d, 1),
            other_filter,
            matched(&c, 7),
        ];
        append_all(&mut store, &records);
        assert!(store.commit(true).expect("commit") > 0);
        assert_eq!(store.size(), file_len(store.path()));
        drop(store);

        let (_store, restored) = open(dir.path());
        let mut other = entry(&a, &[9], &[]);
        other.filter = "invalid".into();
        assert_eq!(
            restored.entries,
            vec![
                entry(&a, &[4], &[3]),
                entry(&b, &[], &[3, 5]),
                other,
                entry(&c, &[7], &[]),
            ]
        );
        assert_eq!(restored.records, records.len() as u64);
        assert_eq!(restored.dropped_tail_bytes, 0);
        assert_eq!(restored.moved_aside, None);
    }

    #[test]
    fn a_torn_last_frame_loses_only_that_record_and_later_appends_are_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        append_all(&mut store, &[matched(&v, 1), matched(&v, 2)]);
        store.commit(false).expect("commit");
        let before_last = store.size();
        store.append(&matched(&v, 3));
        store.commit(true).expect("commit");
        let full = store.size();
        let path = store.path().to_owned();
        drop(store);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(full - 3))
            .expect("truncate");

        let (mut store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[1, 2], &[])]);
        assert_eq!(restored.records, 2);
        assert_eq!(restored.dropped_tail_bytes, full - 3 - before_last);
        assert_eq!(file_len(&path), before_last);
        store.append(&matched(&v, 4));
        store.commit(true).expect("commit");
        drop(store);

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[1, 2, 4], &[])]);
        assert_eq!(restored.dropped_tail_bytes, 0);
    }

    #[test]
    fn a_flipped_byte_drops_the_rest_of_the_file_and_counts_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        store.append(&matched(&v, 1));
        store.commit(false).expect("commit");
        let first_end = store.size();
        store.append(&matched(&v, 2));
        store.commit(false).expect("commit");
        let second_end = store.size();
        store.append(&matched(&v, 3));
        store.commit(true).expect("commit");
        let full = store.size();
        let path = store.path().to_owned();
        drop(store);
        let mut bytes = fs::read(&path).expect("read");
        let middle = usize::try_from((first_end + second_end) / 2).expect("small");
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).expect("write");

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[1], &[])]);
        assert_eq!(restored.records, 1);
        assert_eq!(restored.dropped_tail_bytes, full - first_end);
        assert_eq!(file_len(&path), first_end);
    }

    #[test]
    fn a_frame_with_a_valid_crc_but_an_unknown_kind_ends_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        store.append(&matched(&v, 1));
        store.commit(true).expect("commit");
        let good = store.size();
        let path = store.path().to_owned();
        drop(store);
        let payload = [9u8, 0, 0, 0, 0];
        let mut frame = Vec::new();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let mut more = Vec::new();
        codec::encode(&mut more, &matched(&v, 2)).expect("encode");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&frame).expect("write");
        file.write_all(&more).expect("write");
        drop(file);

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[1], &[])]);
        assert_eq!(
            restored.dropped_tail_bytes,
            (frame.len() + more.len()) as u64
        );
        assert_eq!(file_len(&path), good);
    }

    fn assert_moved_aside_and_empty(content: &[u8]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        fs::write(&path, content).expect("write");

        let (store, restored) = open(dir.path());
        let aside = restored.moved_aside.clone().expect("moved aside");
        assert!(
            aside
                .to_str()
                .expect("utf-8 path")
                .contains("rebuff.db.unsupported-"),
            "{aside:?}"
        );
        assert_eq!(fs::read(&aside).expect("read aside"), content);
        assert_eq!(restored.entries, []);
        assert_eq!(restored.records, 0);
        assert_eq!(store.size(), codec::HEADER_LEN as u64);
        assert_eq!(fs::read(&path).expect("read"), codec::header());
        drop(store);

        let (_store, restored) = open(dir.path());
        assert_eq!(restored, Restored::default());
    }

    #[test]
    fn a_newer_format_version_is_moved_aside_unread_and_the_store_starts_empty() {
        let v = values(&["1.1.1.1"]);
        let mut content = codec::header().to_vec();
        content[8..12].copy_from_slice(&2u32.to_le_bytes());
        // A frame this build could decode: it must not be read anyway.
        codec::encode(&mut content, &matched(&v, 1)).expect("encode");
        assert_moved_aside_and_empty(&content);
    }

    #[test]
    fn a_file_with_foreign_magic_a_short_header_or_reserved_bits_is_moved_aside() {
        assert_moved_aside_and_empty(b"SQLite format 3\0 and then some more bytes");
        assert_moved_aside_and_empty(b"RBF");
        let mut reserved = codec::header();
        reserved[12] = 1;
        assert_moved_aside_and_empty(&reserved);
    }

    #[test]
    fn moving_aside_picks_the_first_free_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let first = aside_path(&path, 42).expect("name");
        assert_eq!(first, dir.path().join("rebuff.db.unsupported-42"));
        fs::write(&first, b"x").expect("write");
        fs::write(dir.path().join("rebuff.db.unsupported-42.1"), b"x").expect("write");
        assert_eq!(
            aside_path(&path, 42).expect("name"),
            dir.path().join("rebuff.db.unsupported-42.2")
        );
    }

    #[test]
    fn a_second_open_of_the_same_directory_fails_with_locked_while_the_first_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        match Store::open(dir.path()) {
            Err(StoreError::Locked { path, .. }) => assert_eq!(path, dir.path().join(LOCK_FILE)),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(store);
        open(dir.path());
    }

    #[test]
    fn a_missing_state_directory_is_created_private_with_a_header_only_log() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("var").join("rebuff");
        let (store, restored) = open(&state);
        assert_eq!(restored, Restored::default());
        let mode = fs::metadata(&state).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(store.path(), state.join(DB_FILE));
        assert_eq!(fs::read(store.path()).expect("read"), codec::header());
    }

    #[test]
    fn a_temporary_file_left_by_an_interrupted_compaction_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        store.append(&matched(&v, 1));
        store.commit(true).expect("commit");
        drop(store);
        fs::write(dir.path().join(TMP_FILE), b"half a compaction").expect("write");

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[1], &[])]);
        assert!(!dir.path().join(TMP_FILE).exists());
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records_and_later_appends_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (
            values(&["1.1.1.1"]),
            values(&["2.2.2.2"]),
            values(&["3.3.3.3"]),
        );
        let (mut store, _) = open(dir.path());
        for time in 0..200 {
            append_all(
                &mut store,
                &[
                    matched(&c, time),
                    triggered(&c, time, false),
                    done(&c, time),
                ],
            );
        }
        store.commit(true).expect("commit");
        // Buffered, not committed: the live state covers it.
        store.append(&matched(&a, 1000));
        let before = store.size();

        // A key's match given before its trigger must survive the replay.
        let live = [matched(&b, 7), triggered(&b, 5, false), matched(&a, 1000)];
        store.compact(live.into_iter()).expect("compact");
        assert!(store.size() < before, "{} < {before}", store.size());
        assert_eq!(store.size(), file_len(store.path()));
        assert!(!dir.path().join(TMP_FILE).exists());
        store.append(&matched(&c, 2000));
        store.commit(true).expect("commit");
        drop(store);

        let (_store, restored) = open(dir.path());
        assert_eq!(
            restored.entries,
            vec![
                entry(&b, &[7], &[5]),
                entry(&a, &[1000], &[]),
                entry(&c, &[2000], &[]),
            ]
        );
        assert_eq!(restored.records, 4);
    }

    #[test]
    fn the_lock_still_holds_after_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = open(dir.path());
        store.compact(std::iter::empty()).expect("compact");
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
    }

    #[test]
    fn non_ascii_empty_and_many_values_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let odd = values(&["ünïcødé 🚫", "", "tab\there", "\0"]);
        let many: Vec<String> = (0..1000).map(|i| format!("v{i}")).collect();
        let none: Vec<String> = Vec::new();
        let (mut store, _) = open(dir.path());
        append_all(
            &mut store,
            &[
                matched(&odd, 1),
                triggered(&many, 2, true),
                Record::Match {
                    stream: "",
                    filter: "фильтр",
                    values: none.as_slice().into(),
                    time: Time::MAX,
                },
            ],
        );
        store.commit(true).expect("commit");
        drop(store);

        let (_store, restored) = open(dir.path());
        let empty_key = RestoredEntry {
            stream: "".into(),
            filter: "фильтр".into(),
            values: Key::from_values::<&str>(&[]),
            matches: [Time::MAX].into(),
            triggers: Times::new(),
        };
        assert_eq!(
            restored.entries,
            vec![entry(&odd, &[1], &[]), entry(&many, &[], &[2]), empty_key]
        );
    }

    #[test]
    fn a_record_too_large_to_frame_is_dropped_without_harming_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let too_many = vec![String::new(); usize::from(u16::MAX) + 1];
        let (mut store, _) = open(dir.path());
        store.append(&matched(&too_many, 1));
        assert_eq!(store.commit(true).expect("commit"), 0);
        store.append(&matched(&v, 2));
        store.commit(true).expect("commit");
        drop(store);

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[2], &[])]);
        assert_eq!(restored.dropped_tail_bytes, 0);
    }

    #[test]
    fn commit_reports_the_bytes_it_wrote_and_size_follows_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        assert_eq!(store.commit(true).expect("commit"), 0);
        store.append(&matched(&v, 1));
        let mut expected = Vec::new();
        codec::encode(&mut expected, &matched(&v, 1)).expect("encode");
        assert_eq!(store.commit(false).expect("commit"), expected.len() as u64);
        assert_eq!(store.size(), (codec::HEADER_LEN + expected.len()) as u64);
        assert_eq!(store.size(), file_len(store.path()));
    }

    #[test]
    fn needs_compaction_becomes_true_after_enough_appends_and_false_after_compacting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = Store::open_with(dir.path(), 1024, Duration::ZERO).expect("open");
        assert!(!store.needs_compaction());
        let mut appended = 0;
        let mut time = 0;
        while !store.needs_compaction() {
            store.append(&matched(&v, time));
            appended += store.commit(false).expect("commit");
            time += 1;
        }
        assert!(appended > 1024, "{appended}");
        assert!(time > 1, "one record alone should not be enough");

        let live = [matched(&v, 0)];
        store.compact(live.into_iter()).expect("compact");
        assert!(!store.needs_compaction());
    }

    #[test]
    fn a_reopened_log_that_is_mostly_dead_records_needs_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        for time in 0..100 {
            store.append(&matched(&v, time));
        }
        store.append(&forget(&v));
        store.commit(true).expect("commit");
        drop(store);

        let (store, restored) = Store::open_with(dir.path(), 1024, Duration::ZERO).expect("open");
        assert_eq!(restored.entries, []);
        assert!(store.needs_compaction());
    }

    /// A small tmpfs mounted on a fresh directory for the life of the
    /// value; `None`, after printing why, when it cannot be (not root, no
    /// mount).
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            if !rustix::process::geteuid().is_root() {
                eprintln!("skipped: mounting a tmpfs needs root");
                return None;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let status = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir.path())
                .status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("skipped: cannot mount a tmpfs ({status:?})");
                return None;
            }
            Some(Tmpfs { dir })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn remount(&self, how: &str) {
            let status = std::process::Command::new("mount")
                .args(["-o", &format!("remount,{how}")])
                .arg(self.path())
                .status()
                .expect("run mount");
            assert!(status.success(), "remount {how}");
        }

        /// Takes every free byte of the filesystem with a `filler` file.
        fn fill(&self) -> PathBuf {
            let path = self.path().join("filler");
            let mut file = File::create(&path).expect("create filler");
            let chunk = vec![0u8; 4096];
            loop {
                match file.write(&chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
                        break;
                    }
                }
            }
            path
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.path())
                .status();
        }
    }

    /// Swaps the store's log descriptor for `path` opened for appending
    /// (`/dev/full` fails every write, `/dev/null` every sync); returns the
    /// real one.
    fn swap_log(store: &mut Store, path: &str) -> Option<File> {
        let file = OpenOptions::new().append(true).open(path).expect("open");
        store.file.replace(file)
    }

    #[test]
    fn a_failed_commit_keeps_its_records_backs_off_and_writes_them_whole_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(dir.path());
        let t0 = Instant::now();
        store.append(&matched(&v, 1));
        store.commit_at(true, t0).expect("commit");
        let good = store.size();
        append_all(&mut store, &[matched(&v, 2), triggered(&v, 3, false)]);
        let real = swap_log(&mut store, "/dev/full").expect("a log");
        assert!(store.commit_at(true, t0).is_err());
        // Not retried before its time, and kept meanwhile.
        store.append(&matched(&v, 4));
        assert_eq!(
            store.commit_at(false, t0 + FIRST_RETRY / 2).expect("wait"),
            0
        );
        store.file = Some(real);
        assert!(store.commit_at(false, t0 + FIRST_RETRY).expect("retry") > 0);
        assert_eq!(store.size(), file_len(store.path()));
        assert!(
            !store.unsynced,
            "the durable commit asked during the failure syncs"
        );
        assert_eq!(store.dropped_records(), 0);
        assert!(good < store.size());
        drop(store);

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[4], &[3])]);
        assert_eq!(restored.records, 4);
        assert_eq!(restored.dropped_tail_bytes, 0);
    }

    #[test]
    fn retries_back_off_to_a_cap_and_a_success_resets_them() {
        let mut retry = Retry::default();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..8 {
            retry.failed(t0);
            delays.push(retry.at.expect("scheduled") - t0);
        }
        assert_eq!(delays[0], FIRST_RETRY);
        assert_eq!(delays[1], 2 * FIRST_RETRY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(delays[7], MAX_RETRY);
        assert!(!retry.due(t0 + MAX_RETRY / 2));
        assert!(retry.due(t0 + MAX_RETRY));
        assert_eq!(retry.succeeded(), 8);
        assert!(retry.due(t0));
    }

    #[test]
    fn a_partial_write_on_a_full_disk_is_cut_back_and_later_frames_follow_it() {
        let Some(fs) = Tmpfs::mount("64k") else {
            return;
        };
        let v = values(&["2001:db8::1"]);
        let (mut store, _) = open(fs.path());
        store.append(&matched(&v, 0));
        store.commit(true).expect("commit");
        let filler = fs.fill();
        let t0 = Instant::now();
        // More than the slack of the log's last page: part of it fits.
        let records: Vec<Record<'_>> = (1..400).map(|t| matched(&v, t)).collect();
        append_all(&mut store, &records);
        let before = store.size();
        let err = store.commit_at(true, t0).expect_err("the disk is full");
        assert!(format!("{err}").contains("cannot write"), "{err}");
        assert_eq!(file_len(store.path()), before, "no partial frame is left");

        fs::remove_file(&filler).expect("free space");
        store.append(&matched(&v, 400));
        store
            .commit_at(true, t0 + FIRST_RETRY)
            .expect("commit once there is room");
        assert_eq!(file_len(store.path()), store.size());
        drop(store);
        let (_store, restored) = open(fs.path());
        let times: Vec<Time> = (0..=400).collect();
        assert_eq!(restored.entries, vec![entry(&v, &times, &[])]);
        assert_eq!(restored.dropped_tail_bytes, 0);
    }

    #[test]
    fn a_failed_sync_makes_the_log_stale_until_a_compaction_rewrites_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (values(&["1.1.1.1"]), values(&["2.2.2.2"]));
        let (mut store, _) = open(dir.path());
        let t0 = Instant::now();
        store.append(&matched(&a, 1));
        swap_log(&mut store, "/dev/null");
        let err = store.commit_at(true, t0).expect_err("sync fails");
        assert!(format!("{err}").contains("cannot sync"), "{err}");
        // Appending after what may be a hole would hide the new frames.
        store.append(&triggered(&b, 2, false));
        assert_eq!(store.dropped_records(), 1);
        assert_eq!(store.commit_at(true, t0 + MAX_RETRY).expect("nothing"), 0);
        assert!(store.needs_compaction_at(t0));

        let live = [triggered(&b, 2, false), matched(&a, 1)];
        store.compact_at(live.into_iter(), t0).expect("compact");
        assert!(!store.needs_compaction_at(t0));
        store.append(&matched(&b, 3));
        assert!(store.commit_at(true, t0).expect("appends again") > 0);
        drop(store);
        let (_store, restored) = open(dir.path());
        assert_eq!(
            restored.entries,
            vec![entry(&b, &[3], &[2]), entry(&a, &[1], &[])]
        );
    }

    #[test]
    fn waiting_records_past_the_limit_are_dropped_and_the_compaction_writes_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = Store::open_with(dir.path(), 1024, Duration::ZERO).expect("open");
        let t0 = Instant::now();
        store.append(&matched(&v, 0));
        swap_log(&mut store, "/dev/full");
        assert!(store.commit_at(false, t0).is_err());
        let mut time = 1;
        while !store.stale {
            store.append(&matched(&v, time));
            time += 1;
        }
        assert!(store.buf.is_empty());
        assert_eq!(store.dropped_records(), time);
        assert!(store.needs_compaction_at(t0));

        // The compaction writes a new file: the broken descriptor is gone.
        let live = [matched(&v, time - 1)];
        store.compact_at(live.into_iter(), t0).expect("compact");
        drop(store);
        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries, vec![entry(&v, &[time - 1], &[])]);
    }

    #[test]
    fn a_failed_compaction_leaves_the_old_log_whole_in_use_and_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = Store::open_with(dir.path(), 1024, Duration::ZERO).expect("open");
        let t0 = Instant::now();
        store.append(&matched(&v, 1));
        store.commit_at(true, t0).expect("commit");
        // The temporary file cannot be made.
        let tmp = dir.path().join(TMP_FILE);
        fs::create_dir(&tmp).expect("mkdir");
        store.append(&matched(&v, 2));
        let live = [matched(&v, 1), matched(&v, 2)];
        assert!(store.compact_at(live.into_iter(), t0).is_err());
        // The buffered record went to the old log instead.
        assert!(store.buf.is_empty());
        assert_eq!(store.size(), file_len(store.path()));
        store.append(&matched(&v, 3));
        store.commit_at(true, t0).expect("appends go on");
        while store.appended <= 1024 {
            store.append(&matched(&v, 4));
            store.commit_at(false, t0).expect("commit");
        }
        assert!(!store.needs_compaction_at(t0), "backing off");
        assert!(store.needs_compaction_at(t0 + FIRST_RETRY));
        drop(store);
        fs::remove_dir(&tmp).expect("rmdir");

        let (_store, restored) = open(dir.path());
        assert_eq!(restored.entries[0].matches[..3], [1, 2, 3]);
        assert_eq!(restored.dropped_tail_bytes, 0);
    }

    #[test]
    fn a_read_only_state_is_restored_and_written_once_the_disk_is_writable() {
        let Some(fs) = Tmpfs::mount("1m") else {
            return;
        };
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(fs.path());
        append_all(&mut store, &[matched(&v, 1), triggered(&v, 2, false)]);
        store.commit(true).expect("commit");
        drop(store);
        fs.remount("ro");

        let (mut store, restored) = open(fs.path());
        assert_eq!(restored.entries, vec![entry(&v, &[], &[2])]);
        assert_eq!(store.lock.hold(), Hold::Shared);
        assert!(matches!(
            Store::open(fs.path()),
            Err(StoreError::Locked { .. })
        ));
        store.append(&matched(&v, 3));
        assert_eq!(store.commit(true).expect("nothing to append to"), 0);
        assert!(store.needs_compaction());
        let live = || [triggered(&v, 2, false), matched(&v, 3)].into_iter();
        let err = store.compact(live()).expect_err("read-only");
        assert!(format!("{err:#}").contains("rebuff.lock"), "{err:#}");

        fs.remount("rw");
        store.compact(live()).expect("compact");
        assert_eq!(store.lock.hold(), Hold::Exclusive);
        store.append(&matched(&v, 4));
        store.commit(true).expect("commit");
        drop(store);
        let (_store, restored) = open(fs.path());
        assert_eq!(restored.entries, vec![entry(&v, &[3, 4], &[2])]);
    }

    #[test]
    fn a_state_directory_that_cannot_be_created_opens_empty_and_is_made_later() {
        let Some(fs) = Tmpfs::mount("1m") else {
            return;
        };
        fs.remount("ro");
        let state = fs.path().join("state");
        let v = values(&["1.1.1.1"]);
        let (mut store, restored) = open(&state);
        assert_eq!(restored, Restored::default());
        assert_eq!(store.lock.hold(), Hold::None);
        let err = store
            .compact([matched(&v, 1)].into_iter())
            .expect_err("read-only");
        assert!(format!("{err}").contains("create state directory"), "{err}");

        fs.remount("rw");
        store
            .compact([matched(&v, 1)].into_iter())
            .expect("compact");
        assert!(matches!(
            Store::open(&state),
            Err(StoreError::Locked { .. })
        ));
        drop(store);
        let (_store, restored) = open(&state);
        assert_eq!(restored.entries, vec![entry(&v, &[1], &[])]);
    }

    #[test]
    fn a_full_disk_at_open_keeps_the_log_and_the_first_compaction_that_fits_rewrites_it() {
        let Some(fs) = Tmpfs::mount("64k") else {
            return;
        };
        let v = values(&["1.1.1.1"]);
        let (mut store, _) = open(fs.path());
        let records: Vec<Record<'_>> = (0..100).map(|t| matched(&v, t)).collect();
        append_all(&mut store, &records);
        store.commit(true).expect("commit");
        drop(store);
        let filler = fs.fill();

        let (mut store, restored) = open(fs.path());
        assert_eq!(restored.entries[0].matches.len(), 100);
        let live = || (0..100).map(|t| matched(&v, t));
        assert!(store.compact(live()).is_err());
        assert!(!fs.path().join(TMP_FILE).exists());
        drop(store);
        let (mut store, restored) = open(fs.path());
        assert_eq!(
            restored.entries[0].matches.len(),
            100,
            "the old log is whole"
        );

        fs::remove_file(filler).expect("free space");
        store.compact(live()).expect("compact");
        drop(store);
        let (_store, restored) = open(fs.path());
        assert_eq!(restored.entries[0].matches.len(), 100);
    }

    /// Content for a `rebuff.db`: raw bytes, a good header then raw bytes,
    /// or a good header then frames with valid CRCs around arbitrary
    /// payloads (so the payload decoder is exercised, not just the CRC).
    fn any_file() -> impl Strategy<Value = Vec<u8>> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..200);
        prop_oneof![
            bytes(),
            bytes().prop_map(|tail| [codec::header().as_slice(), &tail].concat()),
            proptest::collection::vec(bytes(), 0..8).prop_map(|payloads| {
                let mut file = codec::header().to_vec();
                for payload in payloads {
                    file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
                    file.extend_from_slice(&payload);
                }
                file
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_file_content_opens_without_panic_and_reopens_clean(content in any_file()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(DB_FILE);
            fs::write(&path, &content).expect("write");

            let (store, restored) = open(dir.path());
            let len = content.len() as u64;
            if let Some(aside) = &restored.moved_aside {
                prop_assert_eq!(fs::read(aside).expect("read aside"), content.clone());
                prop_assert_eq!(store.size(), codec::HEADER_LEN as u64);
            } else if content.is_empty() {
                prop_assert_eq!(store.size(), codec::HEADER_LEN as u64);
            } else {
                prop_assert_eq!(store.size(), len - restored.dropped_tail_bytes);
            }
            prop_assert_eq!(store.size(), file_len(&path));
            drop(store);

            let (_store, again) = open(dir.path());
            prop_assert_eq!(again.dropped_tail_bytes, 0);
            prop_assert_eq!(again.moved_aside, None);
            prop_assert_eq!(again.entries, restored.entries);
        }
    }
}
