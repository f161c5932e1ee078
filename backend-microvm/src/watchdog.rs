//! Deadlines for running vCPUs: one process-wide watchdog thread kicks a vCPU whose deadline
//! passed while it is inside `KVM_RUN`.
//!
//! Why not a POSIX timer per call: arming and disarming one costs two `timer_settime` syscalls
//! per transaction (≈ 4 µs here, a tenth of a whole warm round trip). Here a transaction only
//! stores its deadline in the VM's shared state under an uncontended lock; the watchdog sleeps
//! until the earliest deadline it knows and is woken only when a call brings a deadline earlier
//! than that. Deadlines of successive calls usually move forward, so it wakes about once per
//! deadline period, finds the new deadline, and sleeps again.
//!
//! No kick is lost: a vCPU thread publishes its tid only after its `immediate_exit` pointer is
//! set for the signal handler, and re-checks the deadline after publishing it (see
//! `Vm::run_once`). The watchdog reads the tid under the same lock and sends the signal while
//! holding it, so the thread is still inside its run step when the signal arrives.
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

use crate::control::Control;
use crate::error::VmError;

struct State {
    watched: Vec<Weak<Control>>,
    /// When the watchdog wakes up next (None: only when notified).
    next_wake: Option<Instant>,
}

struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

fn watchdog() -> Result<&'static Watchdog, VmError> {
    static WATCHDOG: OnceLock<Result<&'static Watchdog, VmError>> = OnceLock::new();
    WATCHDOG
        .get_or_init(|| {
            let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
                state: Mutex::new(State {
                    watched: Vec::new(),
                    next_wake: None,
                }),
                wake: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("cell-vm-watchdog".into())
                .spawn(move || dog.run())
                .map_err(|e| VmError::Memory(format!("starting the VM watchdog: {e}")))?;
            Ok(dog)
        })
        .clone()
}

impl Watchdog {
    fn run(&self) -> ! {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            state.watched.retain(|w| match w.upgrade() {
                None => false,
                Some(vm) => {
                    match vm.deadline.get() {
                        Some(d) if d <= now => vm.kick_if_running(),
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
}

/// Sets `vm`'s deadline (None clears it) and makes sure the watchdog wakes by then.
/// `registered` is the VM's own flag: it is added to the watchdog's list once.
pub(crate) fn set_deadline(
    vm: &Arc<Control>,
    registered: &mut bool,
    deadline: Option<Instant>,
) -> Result<(), VmError> {
    let Some(d) = deadline else {
        vm.deadline.clear();
        return Ok(());
    };
    let dog = watchdog()?;
    let mut state = dog.state.lock().unwrap_or_else(|p| p.into_inner());
    vm.deadline.set(d);
    if !*registered {
        state.watched.push(Arc::downgrade(vm));
        *registered = true;
    }
    if state.next_wake.is_none_or(|w| d < w) {
        state.next_wake = Some(d);
        dog.wake.notify_one();
    }
    Ok(())
}
