//! Deadlines for running vCPUs: the process-wide watchdog ([`abi::backend::watchdog`]) kicks a
//! vCPU whose deadline passed while it is inside `KVM_RUN`.
//!
//! Why not a POSIX timer per call: arming and disarming one costs two `timer_settime` syscalls
//! per transaction (≈ 4 µs here, a tenth of a whole warm round trip); arming the watchdog is a
//! store under an uncontended lock.
//!
//! No kick is lost: a vCPU thread publishes its tid only after its `immediate_exit` pointer is
//! set for the signal handler, and re-checks the deadline after publishing it (see
//! `Vm::run_once`). The watchdog reads the tid under the same lock and sends the signal while
//! holding it, so the thread is still inside its run step when the signal arrives.
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use abi::backend::watchdog::{Watchdog, Watched};

use crate::control::Control;
use crate::error::VmError;

impl Watched for Control {
    fn due(&self) -> Option<Instant> {
        self.deadline.get()
    }

    fn expire(&self) {
        self.kick_if_running();
    }
}

fn watchdog() -> Result<&'static Watchdog, VmError> {
    static WATCHDOG: OnceLock<Result<&'static Watchdog, String>> = OnceLock::new();
    WATCHDOG
        .get_or_init(|| Watchdog::start("cell-vm-watchdog").map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| VmError::Memory(format!("starting the VM watchdog: {e}")))
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
    watchdog()?.arm(vm, registered, d, || vm.deadline.set(d));
    Ok(())
}
