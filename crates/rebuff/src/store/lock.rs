//! The state directory's lock: one daemon per state directory.
//!
//! `rebuff.lock` carries a POSIX record lock (`fcntl(F_SETLK)`) over the
//! whole file. Such a lock belongs to the process; flock(2) and OFD locks
//! belong to the open file description, which a forked child shares until
//! it execs. With those, the stream and action children a SIGKILLed daemon
//! had just forked kept its lock alive for a while, and a restart failed
//! with "in use". A process lock is never inherited by a fork: once the
//! daemon is gone, so is its lock, whatever its children do.
//!
//! Process locks have two pitfalls, both handled here:
//! - they never conflict within one process, so the lock files this
//!   process holds are also kept in a process-wide set, and a second
//!   [`Store`](super::Store) on one of them is refused from that set;
//! - closing *any* descriptor of the file releases the process's lock on
//!   it, so a descriptor of a held lock file is never closed before the
//!   lock is given up, and the file is not opened again while this process
//!   holds it.
//!
//! A SIGKILLed daemon still holds its lock until its last thread has
//! exited (a thread in fdatasync(2) first waits for the disk), and a script
//! that runs `kill -9 PID; rebuff start` does not wait for that: a lock held
//! by another process is retried for up to [`LOCK_WAIT`] at open before
//! the directory is declared in use.
//!
//! On a read-only filesystem the file cannot be opened for writing; a
//! shared lock on a read-only descriptor still keeps out a daemon that
//! could write, and is upgraded to an exclusive one once the filesystem is
//! writable again, before anything is written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;
use rustix::process::{Flock, FlockType};

use super::{LOCK_FILE, StoreError, io_err, is_disk_condition};

/// How long a lock held by another process is waited for at open: the
/// time a SIGKILLed daemon may still take to exit. Only a daemon refused
/// because another one really runs pays it.
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(5);
const LOCK_POLL: Duration = Duration::from_millis(20);

/// (device, inode) of every lock file this process holds a lock on.
static HELD: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

fn held() -> MutexGuard<'static, Vec<(u64, u64)>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// The lock file neither exists nor can be created (read-only or
    /// missing state directory): no other daemon can hold it either.
    None,
    /// Read-only filesystem: writers are kept out, nothing may be written.
    Shared,
    Exclusive,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub(super) enum Refused {
    /// Another process holds it (its pid when the kernel says).
    Busy(Option<i32>),
    /// Another `Store` in this process holds it.
    Here,
    Io(&'static str, io::Error),
}

impl Refused {
    pub(super) fn into_error(self, path: &Path) -> StoreError {
        match self {
            Refused::Busy(holder) => StoreError::Locked {
                path: path.to_owned(),
                holder,
            },
            Refused::Here => StoreError::Locked {
                path: path.to_owned(),
                holder: i32::try_from(std::process::id()).ok(),
            },
            Refused::Io(action, source) => io_err(action, path, source),
        }
    }
}

/// A state directory's lock; dropping it releases the lock.
#[derive(Debug)]
pub(super) struct DirLock {
    path: PathBuf,
    hold: Hold,
    /// Set (and in [`HELD`]) while `hold` is not `None`.
    key: Option<(u64, u64)>,
    /// The read-only descriptor of a shared lock.
    reader: Option<File>,
    /// The read-write descriptor: of the exclusive lock, or opened while
    /// holding a shared one and kept, since closing it would release that.
    writer: Option<File>,
}

impl DirLock {
    /// Locks `dir` at open: exclusively when the lock file can be opened
    /// for writing, shared when the filesystem does not allow that, not at
    /// all when `dir` does not exist. Another process's lock is waited for
    /// up to `wait`.
    pub(super) fn acquire(dir: &Path, exists: bool, wait: Duration) -> Result<DirLock, StoreError> {
        let mut lock = DirLock {
            path: dir.join(LOCK_FILE),
            hold: Hold::None,
            key: None,
            reader: None,
            writer: None,
        };
        if !exists {
            return Ok(lock);
        }
        let deadline = Instant::now() + wait;
        let mut announced = false;
        loop {
            let attempt = match lock.exclusive() {
                Err(Refused::Io(_, e)) if is_disk_condition(&e) => lock.shared(),
                other => other,
            };
            match attempt {
                Ok(()) => return Ok(lock),
                Err(Refused::Busy(holder)) if Instant::now() < deadline => {
                    if !announced {
                        announced = true;
                        tracing::info!(
                            path = %lock.path.display(),
                            holder = holder.unwrap_or(0),
                            wait_ms = wait.as_millis() as u64,
                            "the state directory is locked by another process; waiting for it to exit"
                        );
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(refused) => return Err(refused.into_error(&lock.path)),
            }
        }
    }

    pub(super) fn hold(&self) -> Hold {
        self.hold
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Takes (or upgrades to) the exclusive lock, without waiting.
    pub(super) fn exclusive(&mut self) -> Result<(), Refused> {
        if self.hold == Hold::Exclusive {
            return Ok(());
        }
        let mut held = held();
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => {
                if self.hold == Hold::None && self.held_here(&held) {
                    return Err(Refused::Here);
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(|e| Refused::Io("open", e))?;
                if self.hold == Hold::None {
                    self.check_not_held(file, &held)?
                } else {
                    file
                }
            }
        };
        let result = rustix::fs::fcntl_lock(&writer, FlockOperation::NonBlockingLockExclusive);
        let refused = match result {
            Ok(()) => {
                if self.hold == Hold::None {
                    self.register(&writer, &mut held)?;
                }
                self.writer = Some(writer);
                self.hold = Hold::Exclusive;
                return Ok(());
            }
            Err(Errno::AGAIN | Errno::ACCESS) => {
                Refused::Busy(holder(&writer, FlockType::WriteLock))
            }
            Err(e) => Refused::Io("lock", e.into()),
        };
        if self.hold != Hold::None {
            // Closing it would release the shared lock.
            self.writer = Some(writer);
        }
        Err(refused)
    }

    /// Takes a shared lock through a read-only descriptor; no lock at all
    /// when the lock file does not exist.
    fn shared(&mut self) -> Result<(), Refused> {
        if self.hold != Hold::None {
            return Ok(());
        }
        let mut held = held();
        if self.held_here(&held) {
            return Err(Refused::Here);
        }
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Refused::Io("open", e)),
        };
        let file = self.check_not_held(file, &held)?;
        match rustix::fs::fcntl_lock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                self.register(&file, &mut held)?;
                self.reader = Some(file);
                self.hold = Hold::Shared;
                Ok(())
            }
            Err(Errno::AGAIN | Errno::ACCESS) => {
                Err(Refused::Busy(holder(&file, FlockType::ReadLock)))
            }
            Err(e) => Err(Refused::Io("lock", e.into())),
        }
    }

    /// Whether the lock file, as it is now, is one this process holds.
    fn held_here(&self, held: &[(u64, u64)]) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|meta| held.contains(&(meta.dev(), meta.ino())))
    }

    /// `file`, unless it is a lock file this process holds: then it is
    /// leaked rather than closed, since closing it would release that lock
    /// (only possible if the file was replaced under our feet).
    fn check_not_held(&self, file: File, held: &[(u64, u64)]) -> Result<File, Refused> {
        let meta = file.metadata().map_err(|e| Refused::Io("inspect", e))?;
        if held.contains(&(meta.dev(), meta.ino())) {
            std::mem::forget(file);
            return Err(Refused::Here);
        }
        Ok(file)
    }

    fn register(&mut self, file: &File, held: &mut Vec<(u64, u64)>) -> Result<(), Refused> {
        let meta = file.metadata().map_err(|e| Refused::Io("inspect", e))?;
        let key = (meta.dev(), meta.ino());
        held.push(key);
        self.key = Some(key);
        Ok(())
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut held = held();
        // Closed before the key leaves the set: until then no other `Store`
        // of this process can open the file (and have its lock released by
        // these closes).
        self.reader = None;
        self.writer = None;
        if let Some(key) = self.key.take()
            && let Some(i) = held.iter().position(|k| *k == key)
        {
            held.swap_remove(i);
        }
    }
}

/// The pid of the process whose lock blocks a lock of type `typ`.
fn holder(file: &File, typ: FlockType) -> Option<i32> {
    rustix::process::fcntl_getlk(file, &Flock::from(typ))
        .ok()
        .flatten()
        .and_then(|lock| lock.pid)
        .map(|pid| pid.as_raw_nonzero().get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_child_that_inherited_the_lock_descriptor_does_not_hold_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = DirLock::acquire(dir.path(), true, Duration::ZERO).expect("lock");
        assert_eq!(lock.hold(), Hold::Exclusive);
        // What a child forked to run an action has until it execs: the
        // lock file's descriptor. Here it keeps it across exec for good.
        let fd = lock.writer.as_ref().expect("a descriptor").as_fd();
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).expect("clear CLOEXEC");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).expect("set CLOEXEC");
        drop(lock);

        let relocked = DirLock::acquire(dir.path(), true, Duration::ZERO);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(relocked.expect("lock again").hold(), Hold::Exclusive);
    }

    #[test]
    fn a_lock_this_process_holds_is_refused_at_once_and_free_once_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = DirLock::acquire(dir.path(), true, LOCK_WAIT).expect("lock");
        match DirLock::acquire(dir.path(), true, LOCK_WAIT) {
            Err(StoreError::Locked { path, holder }) => {
                assert_eq!(path, dir.path().join(LOCK_FILE));
                assert_eq!(holder, i32::try_from(std::process::id()).ok());
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // The refused attempt closed nothing of the first lock's.
        assert!(DirLock::acquire(dir.path(), true, Duration::ZERO).is_err());
        drop(lock);
        DirLock::acquire(dir.path(), true, Duration::ZERO).expect("free");
    }
}
