//! Holding the kv store open between requests without shutting other supervisors out.
//!
//! Opening and closing a redb file costs a few `fsync`s (it marks the file in use and clean
//! again), far more than a transaction. So a supervisor keeps the store open while it uses it,
//! under an exclusive `flock` on `kv.lock`, and gives it up when either
//! * it has been idle for [`LINGER`] (a closer thread waits for exactly that instant), or
//! * another opener is waiting and the holder has had the store for [`SLICE`]: a waiter holds a
//!   shared `flock` on `kv.want` while it waits for `kv.lock`, and the holder probes `kv.want`
//!   with a non-blocking exclusive lock before reusing the store; a probe that fails means
//!   someone waits, and the holder closes the store first.

use crate::error::CapabilityError;
use redb::Database;
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an idle store stays open.
pub(crate) const LINGER: Duration = Duration::from_millis(20);
/// How long a holder keeps the store before it yields to a waiter: each hand-over costs an
/// open and a close, so a slice spreads that cost over many requests under contention.
pub(crate) const SLICE: Duration = Duration::from_millis(100);
/// File whose `flock` the holder of the store has.
pub const LOCK_FILE: &str = "kv.lock";
/// File on which waiters for the store hold a shared `flock`.
pub const WANT_FILE: &str = "kv.want";

fn db_err(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::failed(format!("kv store: {e}"))
}

fn flock(file: &File, op: FlockOperation) -> Result<(), Errno> {
    loop {
        match rustix::fs::flock(file, op) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// The open store; `db` is declared first so it closes before the lock is released.
struct Held {
    db: Database,
    _lock: File,
    since: Instant,
}

struct State {
    held: Option<Held>,
    last_used: Instant,
    /// Whether the store may stay open after a request (false once the session is dropped, or
    /// when no closer thread could start).
    keep: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// One opener of the store in `dir`.
pub(crate) struct Session {
    dir: PathBuf,
    file: PathBuf,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("dir", &self.dir).finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    pub(crate) fn new(dir: &Path, file: &str) -> Session {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                held: None,
                last_used: Instant::now(),
                keep: true,
            }),
            changed: Condvar::new(),
        });
        let closer = shared.clone();
        // Without the closer an idle store would stay open until the next request; the
        // session then closes after every request instead.
        if let Err(e) = std::thread::Builder::new()
            .name("kv-closer".into())
            .spawn(move || closer.close_when_idle())
        {
            tracing::warn!(
                "cannot start the kv closer thread ({e}); the store closes after each request"
            );
            lock(&shared.state).keep = false;
        }
        Session {
            dir: dir.to_path_buf(),
            file: dir.join(file),
            shared,
        }
    }

    fn open_file(&self, name: &str) -> Result<File, CapabilityError> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(name))
            .map_err(|e| db_err(format!("cannot open {name}: {e}")))
    }

    /// Waits for the store's lock (announcing the wait on `kv.want`) and opens the database.
    fn acquire(&self) -> Result<Held, CapabilityError> {
        let want = self.open_file(WANT_FILE)?;
        flock(&want, FlockOperation::LockShared)
            .map_err(|e| db_err(format!("cannot announce a wait: {e}")))?;
        let lock = self.open_file(LOCK_FILE)?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| db_err(format!("cannot lock the store: {e}")))?;
        drop(want);
        let db = Database::create(&self.file).map_err(db_err)?;
        Ok(Held {
            db,
            _lock: lock,
            since: Instant::now(),
        })
    }

    /// Whether another opener waits for the store (it holds `kv.want` shared).
    fn someone_waits(&self) -> bool {
        let Ok(want) = self.open_file(WANT_FILE) else {
            return true;
        };
        match rustix::fs::flock(&want, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => false, // closing `want` releases the probe
            Err(_) => true,
        }
    }

    /// Runs `f` on the open database, opening it first if needed.
    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, CapabilityError>,
    ) -> Result<T, CapabilityError> {
        let mut s = lock(&self.shared.state);
        if s.held.as_ref().is_some_and(|h| h.since.elapsed() >= SLICE) && self.someone_waits() {
            s.held = None; // let the waiter in; this request then queues behind it
        }
        let held = match s.held.take() {
            Some(held) => held,
            None => self.acquire()?,
        };
        let result = f(&held.db);
        s.last_used = Instant::now();
        // After a failure the store is reopened: a broken handle is not kept.
        if s.keep && !matches!(result, Err(CapabilityError::Failed(_))) {
            s.held = Some(held);
        }
        drop(s);
        self.shared.changed.notify_all();
        result
    }
}

impl Shared {
    /// Closes the store once it has been idle for [`LINGER`]; ends when the session is dropped.
    fn close_when_idle(&self) {
        let mut s = lock(&self.state);
        loop {
            if !s.keep {
                s.held = None;
                return;
            }
            if s.held.is_none() {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let due = s.last_used + LINGER;
            let now = Instant::now();
            if now >= due {
                s.held = None;
                continue;
            }
            s = self
                .changed
                .wait_timeout(s, due - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.state);
        s.keep = false;
        s.held = None;
        drop(s);
        self.shared.changed.notify_all();
    }
}
