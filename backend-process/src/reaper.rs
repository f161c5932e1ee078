//! Reaps killed cells and removes their cgroups on a background thread, so a caller
//! that drops a cell does not wait for the kernel to tear the process down.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::cgroup::CellCgroups;

/// A killed cell still to be reaped.
pub(crate) struct Remains {
    pub pidfd: Arc<OwnedFd>,
    pub cgroups: CellCgroups,
}

/// Cells handed over and not yet reaped, so that the exit clean-up can wait for them.
static PENDING: Mutex<usize> = Mutex::new(0);
static REAPED: Condvar = Condvar::new();

/// Waits up to `limit` until every cell handed to the reaper is reaped and its cgroups
/// removed.
pub(crate) fn wait_idle(limit: Duration) {
    let pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = REAPED
        .wait_timeout_while(pending, limit, |n| *n > 0)
        .unwrap_or_else(PoisonError::into_inner);
}

/// How long a normal exit waits for the cells handed over before it to be reaped.
pub(crate) const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Hands a killed cell to the reaper thread (started on first use). A process that exits
/// normally first waits for what was handed over (see [`wait_at_exit`]).
pub(crate) fn reap_later(remains: Remains) {
    static REAPER: OnceLock<Mutex<Sender<Remains>>> = OnceLock::new();
    let sender = REAPER.get_or_init(|| {
        wait_at_exit();
        let (tx, rx) = channel::<Remains>();
        std::thread::Builder::new()
            .name("cell-process-reaper".into())
            .spawn(move || {
                for mut remains in rx {
                    wait_for_exit(&remains.pidfd);
                    let _ = remains.cgroups.release();
                    *PENDING.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
                    REAPED.notify_all();
                }
            })
            .expect("spawning the process reaper thread");
        Mutex::new(tx)
    });
    *PENDING.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    if sender
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(remains)
        .is_err()
    {
        *PENDING.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
    }
}

/// Makes a normal exit wait (up to [`EXIT_WAIT`]) until every cell handed to the reaper is
/// reaped and its cgroups removed: the reaper is a thread of this process, and an exit that
/// did not wait would leave the cgroups of the last cells closed (a program that closes its
/// cells and returns from `main`, as `cell run` does) behind.
fn wait_at_exit() {
    extern "C" fn wait() {
        wait_idle(EXIT_WAIT);
    }
    // SAFETY: registers a plain function with no arguments; it takes one lock and waits on a
    // condvar with a bound.
    unsafe { libc::atexit(wait) };
}

/// Waits until the process behind `pidfd` has ended, and reaps it.
fn wait_for_exit(pidfd: &OwnedFd) {
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter; P_PIDFD with a live pidfd.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        // EINTR: again; anything else (ECHILD: already reaped) ends the wait.
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}
