//! A transaction's deadline on a cell's channel, enforced by the process-wide watchdog
//! ([`abi::backend::watchdog`]) instead of a `poll` before every read: once the deadline
//! passes, the watchdog shuts the read side of the host's end of the channel, so a read
//! blocked on it returns at once and the pipe reports the timeout.
//!
//! Why: a `poll` with a timeout before each blocking `read` is one more syscall per frame
//! (a warm exec is write, read on each side: the `poll` made it five syscalls against four).
//!
//! A channel whose read side was shut is done for: the transaction that hit its deadline ends
//! `timed_out`, which kills the cell.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use abi::backend::watchdog::{Watchdog, Watched};

struct Slot {
    due: Option<Instant>,
    /// The host's end of the channel; valid while `open`.
    fd: RawFd,
    /// Cleared (under this lock) before the descriptor closes, so the watchdog never shuts a
    /// descriptor number that was reused.
    open: bool,
    /// The watchdog shut the read side: every later read ends at once.
    fired: bool,
}

/// The deadline of the transaction in flight on one channel.
pub(crate) struct ChannelDeadline {
    slot: Mutex<Slot>,
    registered: Mutex<bool>,
}

fn watchdog() -> Option<&'static Watchdog> {
    static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();
    *WATCHDOG.get_or_init(|| Watchdog::start("cell-process-watchdog").ok())
}

impl ChannelDeadline {
    /// A deadline for the channel `fd`, or `None` where the watchdog thread could not start
    /// (the pipe then polls before each read).
    pub(crate) fn new(fd: RawFd) -> Option<Arc<ChannelDeadline>> {
        watchdog()?;
        Some(Arc::new(ChannelDeadline {
            slot: Mutex::new(Slot {
                due: None,
                fd,
                open: true,
                fired: false,
            }),
            registered: Mutex::new(false),
        }))
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms the deadline for the transaction starting now (`None`: no deadline).
    pub(crate) fn arm(self: &Arc<Self>, at: Option<Instant>) {
        let (Some(at), Some(dog)) = (at, watchdog()) else {
            return;
        };
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        dog.arm(self, &mut registered, at, || self.slot().due = Some(at));
    }

    /// Disarms it at the end of the transaction; true if the deadline passed first (the read
    /// side is shut: the transaction timed out, whatever it read before).
    pub(crate) fn disarm(&self) -> bool {
        let mut slot = self.slot();
        slot.due = None;
        slot.fired
    }

    /// Whether the watchdog shut the read side.
    pub(crate) fn fired(&self) -> bool {
        self.slot().fired
    }

    /// The descriptor is about to close: never touch it again.
    pub(crate) fn close(&self) {
        self.slot().open = false;
    }
}

impl Watched for ChannelDeadline {
    fn due(&self) -> Option<Instant> {
        self.slot().due
    }

    fn expire(&self) {
        let mut slot = self.slot();
        if slot.due.is_none_or(|d| d > Instant::now()) {
            return;
        }
        slot.due = None;
        if !slot.open {
            return;
        }
        slot.fired = true;
        // SAFETY: `fd` is the host's end of the channel, open while `open` is set, which is
        // cleared under this lock before it closes. Shutting the read side only makes reads of
        // it return end-of-file.
        unsafe { libc::shutdown(slot.fd, libc::SHUT_RD) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn a_blocked_read_ends_at_the_deadline_and_a_disarmed_one_does_not() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        // A bound on the test itself, should the watchdog never act.
        host.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let d = ChannelDeadline::new(host.as_raw_fd()).expect("the watchdog starts");
        // Disarmed before it passes: nothing happens to the channel.
        d.arm(Some(Instant::now() + Duration::from_secs(3600)));
        assert!(!d.disarm());
        // Armed for now: the blocked read returns end-of-file, and the deadline says so.
        d.arm(Some(Instant::now()));
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        assert!(d.fired());
        assert!(d.disarm(), "the transaction timed out");
        drop(guest);
    }

    #[test]
    fn a_closed_channel_is_never_touched() {
        let (mut host, _guest) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let d = ChannelDeadline::new(host.as_raw_fd()).unwrap();
        // Due, but its descriptor is closing (the number may be reused): left alone.
        d.close();
        d.slot().due = Some(Instant::now());
        d.expire();
        assert!(!d.fired() && d.slot().due.is_none());
        let mut buf = [0u8; 1];
        assert_eq!(
            host.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the read side is still open"
        );
    }
}
