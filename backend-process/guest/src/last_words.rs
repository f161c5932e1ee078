//! What a panic does in a cell: it writes the cell's last words on the channel (the
//! record `fork_protocol::last_words`: the panic's message and where it happened), then
//! ends the process with `exit::PANICKED`, which the host reports as `cell_crashed` naming
//! the panic, as the microVM guest's panic port does. Without it the abort that
//! `panic = "abort"` makes raises `SIGABRT`, which the kernel drops for the init of a pid
//! namespace (no handler): glibc's `abort` then falls back to a faulting instruction, and
//! the cell died of `SIGSEGV` with nothing said.
//!
//! The hook allocates nothing (the message is cut into a buffer on its stack) and makes
//! two system calls the cell's filter already allows: `sendto` and `exit_group`. It never
//! returns, so nothing runs after a panic.

use core::fmt::Write;

use crate::fork_server::fork_protocol::{exit, last_words};

/// The channel a cell's process holds (`CHANNEL` in the guest program).
const CHANNEL: i32 = 3;

/// A record being written: the head, then as much of the message as fits.
struct Record {
    bytes: [u8; last_words::HEAD_LEN + last_words::MAX_TEXT],
    len: usize,
}

impl Write for Record {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Whole chars only, so the message stays valid UTF-8.
        for c in s.chars() {
            let mut utf8 = [0u8; 4];
            let c = c.encode_utf8(&mut utf8).as_bytes();
            let Some(slot) = self.bytes.get_mut(self.len..self.len + c.len()) else {
                return Err(core::fmt::Error);
            };
            slot.copy_from_slice(c);
            self.len += c.len();
        }
        Ok(())
    }
}

/// The record for a panic with `message` at `location`.
fn record(message: &str, location: Option<&core::panic::Location<'_>>) -> Record {
    let mut r = Record {
        bytes: [0; last_words::HEAD_LEN + last_words::MAX_TEXT],
        len: last_words::HEAD_LEN,
    };
    let _ = r.write_str(message);
    if let Some(loc) = location {
        let _ = write!(r, " at {}:{}", loc.file(), loc.line());
    }
    let text = (r.len - last_words::HEAD_LEN) as u16;
    r.bytes[..4].copy_from_slice(&last_words::MARKER);
    r.bytes[4..last_words::HEAD_LEN].copy_from_slice(&text.to_le_bytes());
    r
}

fn report(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a value that is not text");
    let r = record(message, info.location());
    let mut off = 0;
    while off < r.len {
        // SAFETY: the range lies inside the record; MSG_NOSIGNAL: a closed channel is EPIPE.
        let n = unsafe {
            libc::send(
                CHANNEL,
                r.bytes[off..r.len].as_ptr().cast(),
                r.len - off,
                libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            off += n as usize;
            continue;
        }
        // SAFETY: errno is thread-local and always valid.
        if n == 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            break;
        }
    }
    // SAFETY: plain exit; nothing of the process runs after a panic.
    unsafe { libc::_exit(exit::PANICKED) }
}

/// Makes every later panic of this process report itself and exit. Call in a cell only,
/// once its channel sits at [`CHANNEL`] (the fork server's fd 3 is its control socket).
pub fn install() {
    std::panic::set_hook(Box::new(report));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_carries_message_and_place_and_decodes() {
        let r = record("boom", None);
        assert_eq!(last_words::decode(&r.bytes[..r.len]), Some(&b"boom"[..]));
        // Incomplete: nothing yet.
        assert_eq!(last_words::decode(&r.bytes[..r.len - 1]), None);
        let here = core::panic::Location::caller();
        let r = record("x", Some(here));
        let text = core::str::from_utf8(last_words::decode(&r.bytes[..r.len]).unwrap()).unwrap();
        assert!(
            text.starts_with("x at ") && text.contains(here.file()),
            "{text}"
        );
    }

    #[test]
    fn a_long_message_is_cut_at_a_char_boundary() {
        let long = "é".repeat(last_words::MAX_TEXT);
        let r = record(&long, None);
        let text = last_words::decode(&r.bytes[..r.len]).unwrap();
        assert!(text.len() <= last_words::MAX_TEXT && text.len() >= last_words::MAX_TEXT - 1);
        assert!(core::str::from_utf8(text).is_ok());
    }
}
