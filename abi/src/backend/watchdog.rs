//! Deadlines for waits a backend cannot time out cheaply itself: one thread per kind of
//! boundary sleeps until the earliest deadline among what it watches and expires what is due
//! (the microvm backend kicks a vCPU out of `KVM_RUN`; the process backend shuts the read side
//! of a channel a reader blocks on).
//!
//! Why a shared thread, not a timer or a `poll` per wait: arming here is a store under an
//! uncontended lock, with no syscall. The thread is woken only when a wait brings a deadline
//! earlier than the one it sleeps to; deadlines of successive transactions usually move
//! forward, so it wakes about once per deadline period, finds the new deadline and sleeps again.

use std::boxed::Box;
use std::string::String;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;
use std::vec::Vec;

/// Something whose deadline a [`Watchdog`] enforces.
pub trait Watched: Send + Sync {
    /// When it is due, if armed.
    fn due(&self) -> Option<Instant>;
    /// Called on the watchdog's thread, under the watchdog's lock, once `due` has passed. It
    /// must re-check its own state: it may have been disarmed since `due` was read.
    fn expire(&self);
}

struct State {
    watched: Vec<Weak<dyn Watched>>,
    /// When the thread wakes next (`None`: only when armed).
    next_wake: Option<Instant>,
}

/// A thread that expires [`Watched`] items when they are due. It lives as long as the process.
pub struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

impl Watchdog {
    /// Starts a watchdog on a thread named `name`.
    pub fn start(name: &str) -> std::io::Result<&'static Watchdog> {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            state: Mutex::new(State {
                watched: Vec::new(),
                next_wake: None,
            }),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name(String::from(name))
            .spawn(move || dog.run())?;
        Ok(dog)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) -> ! {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            state.watched.retain(|w| match w.upgrade() {
                None => false,
                Some(item) => {
                    match item.due() {
                        Some(d) if d <= now => item.expire(),
                        Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                        None => {}
                    }
                    true
                }
            });
            state.next_wake = next;
            state = match next {
                Some(t) => {
                    let wait = t.saturating_duration_since(Instant::now());
                    self.wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Arms `item` for `at`: runs `set` (which makes `item.due()` say `at`) under the
    /// watchdog's lock and makes sure the thread wakes by then. `registered` is the item's own
    /// flag: it is added to the watched list once, and leaves it when dropped.
    pub fn arm<T: Watched + 'static>(
        &self,
        item: &Arc<T>,
        registered: &mut bool,
        at: Instant,
        set: impl FnOnce(),
    ) {
        let mut state = self.lock();
        set();
        if !*registered {
            let weak: Weak<dyn Watched> = Arc::downgrade(item) as Weak<dyn Watched>;
            state.watched.push(weak);
            *registered = true;
        }
        if state.next_wake.is_none_or(|w| at < w) {
            state.next_wake = Some(at);
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Item {
        due: Mutex<Option<Instant>>,
        expired: Mutex<mpsc::Sender<&'static str>>,
        name: &'static str,
    }

    impl Watched for Item {
        fn due(&self) -> Option<Instant> {
            *self.due.lock().unwrap()
        }
        fn expire(&self) {
            if self.due.lock().unwrap().take().is_some() {
                self.expired.lock().unwrap().send(self.name).unwrap();
            }
        }
    }

    fn item(name: &'static str, tx: &mpsc::Sender<&'static str>) -> (Arc<Item>, bool) {
        let item = Arc::new(Item {
            due: Mutex::new(None),
            expired: Mutex::new(tx.clone()),
            name,
        });
        (item, false)
    }

    fn arm(dog: &Watchdog, (item, registered): &mut (Arc<Item>, bool), at: Instant) {
        dog.arm(item, registered, at, || {
            *item.due.lock().unwrap() = Some(at)
        });
    }

    #[test]
    fn an_earlier_deadline_wakes_the_thread_and_dropped_items_leave() {
        let dog = Watchdog::start("test-watchdog").unwrap();
        let (tx, rx) = mpsc::channel();
        let mut late = item("late", &tx);
        let mut never = item("never", &tx);
        let mut now = item("now", &tx);
        // The thread sleeps towards an hour from now; an item due now must wake it.
        arm(dog, &mut late, Instant::now() + Duration::from_secs(3600));
        arm(dog, &mut never, Instant::now() + Duration::from_secs(3600));
        arm(dog, &mut now, Instant::now());
        assert_eq!(rx.recv().unwrap(), "now");
        // Re-armed, an item expires again; a disarmed one is not expired; a dropped one leaves
        // the list at the next wake.
        *never.0.due.lock().unwrap() = None;
        drop(never);
        arm(dog, &mut now, Instant::now());
        assert_eq!(rx.recv().unwrap(), "now");
        assert_eq!(dog.lock().watched.len(), 2, "late and now; `never` left");
        assert!(rx.try_recv().is_err(), "nothing else expired");
    }
}
