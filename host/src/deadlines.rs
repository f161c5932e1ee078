//! Ends the broker requests that outlive their transaction's deadline.
//!
//! A request runs on the pipe's thread, inside `HostSide::on_frame`, so no pipe can time it out:
//! the pipe waits for the host side. While a request with a deadline is in flight the host arms
//! it here; one shared thread sleeps until the earliest armed deadline and then calls the
//! handler's [`RequestHandler::cancel`], which fails the request at once. That is the cell's
//! end anyway: a transaction past its deadline ends `timed_out`, which kills the cell.

use crate::requests::RequestHandler;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

#[derive(Default)]
struct Armed {
    entries: BTreeMap<(Instant, u64), Arc<dyn RequestHandler>>,
    next: u64,
}

#[derive(Default)]
struct Wheel {
    armed: Mutex<Armed>,
    /// Signalled when an entry becomes the earliest.
    changed: Condvar,
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, Armed> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until the earliest deadline, or until an earlier one is armed; cancels the due.
    fn run(&self) {
        let mut armed = self.lock();
        loop {
            let now = Instant::now();
            let due = armed.entries.first_key_value().map(|(k, _)| *k);
            armed = match due {
                None => self.changed.wait(armed).unwrap_or_else(|e| e.into_inner()),
                Some(key) if key.0 <= now => {
                    let handler = armed.entries.remove(&key);
                    drop(armed);
                    if let Some(handler) = handler {
                        handler.cancel();
                    }
                    self.lock()
                }
                Some((at, _)) => {
                    self.changed
                        .wait_timeout(armed, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// The shared wheel, its thread started on first use (`None` if it could not be).
fn wheel() -> Option<&'static Wheel> {
    static WHEEL: OnceLock<Option<&'static Wheel>> = OnceLock::new();
    *WHEEL.get_or_init(|| {
        let wheel: &'static Wheel = Box::leak(Box::default());
        match std::thread::Builder::new()
            .name("cell-request-deadlines".into())
            .spawn(move || wheel.run())
        {
            Ok(_) => Some(wheel),
            Err(e) => {
                tracing::error!("cannot start the request deadline thread: {e}; requests in flight are not cut at their deadline");
                None
            }
        }
    })
}

/// A deadline armed for a request in flight; dropping it disarms it.
pub(crate) struct Guard(Option<(Instant, u64)>);

/// Calls `handler.cancel()` at `deadline` unless the returned guard is dropped first.
pub(crate) fn arm(deadline: Instant, handler: Arc<dyn RequestHandler>) -> Guard {
    Guard(wheel().map(|wheel| wheel.arm(deadline, handler)))
}

impl Wheel {
    /// Adds an entry, waking the thread if it is now the earliest.
    fn arm(&self, deadline: Instant, handler: Arc<dyn RequestHandler>) -> (Instant, u64) {
        let mut armed = self.lock();
        let key = (deadline, armed.next);
        armed.next += 1;
        let earliest = armed
            .entries
            .first_key_value()
            .is_none_or(|(first, _)| key < *first);
        armed.entries.insert(key, handler);
        drop(armed);
        if earliest {
            self.changed.notify_one();
        }
        key
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let (Some(key), Some(wheel)) = (self.0, wheel()) {
            wheel.lock().entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::DenyAll;
    use std::time::Duration;

    fn armed(key: (Instant, u64)) -> bool {
        wheel().unwrap().lock().entries.contains_key(&key)
    }

    /// Whether arming `deadline` on a wheel whose thread waits for a change wakes that thread.
    fn wakes(wheel: &'static Wheel, deadline: Instant) -> bool {
        let (ready, waiting) = std::sync::mpsc::channel();
        let (woke, woken) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let armed = wheel.lock();
            ready.send(()).unwrap();
            // Releases the lock only once waiting, so the arm below comes after.
            let _armed = wheel.changed.wait(armed).unwrap();
            let _ = woke.send(());
        });
        waiting.recv().unwrap();
        wheel.arm(deadline, Arc::new(DenyAll));
        // Bounded only so a wheel that never wakes fails instead of hanging.
        woken.recv_timeout(Duration::from_secs(20)).is_ok()
    }

    #[test]
    fn an_entry_earlier_than_all_others_wakes_the_thread() {
        let wheel: &'static Wheel = Box::leak(Box::default());
        let now = Instant::now();
        assert!(
            wakes(wheel, now + Duration::from_secs(600)),
            "the first entry"
        );
        assert!(
            wakes(wheel, now + Duration::from_secs(60)),
            "an earlier one"
        );
        assert_eq!(wheel.lock().entries.len(), 2);
    }

    #[test]
    fn a_dropped_guard_disarms_and_keys_stay_distinct() {
        let at = Instant::now() + Duration::from_secs(600);
        let first = arm(at, Arc::new(DenyAll));
        let second = arm(at, Arc::new(DenyAll));
        let (Some(k1), Some(k2)) = (first.0, second.0) else {
            panic!("the deadline thread runs")
        };
        assert_ne!(k1, k2, "two requests with one deadline are two entries");
        assert!(armed(k1) && armed(k2));
        drop(first);
        assert!(!armed(k1) && armed(k2));
        drop(second);
        assert!(!armed(k2));
    }
}
