//! One cold VM made ahead of demand: memory laid out, VM and vCPU created, registers set at the
//! guest's entry point, never run. A cold start takes it and runs the guest from its first
//! instruction, as a VM built on the spot would; the host-side half of a cold boot (about half
//! of it here: zeroing the heap's huge page, `KVM_CREATE_VM` and its debugfs directory, the
//! memory slot, the vCPU) is done on this module's thread, off the start's path.
//!
//! Kept only from the second cold boot of a configuration in a process on, so a process that
//! boots one cell (a one-shot `cell run`) makes nothing it does not use. At most one spare per
//! process, for the configuration of the latest cold boot; one of another configuration is
//! destroyed. A spare no cold boot has asked for in [`IDLE`] is destroyed too, so a process
//! that stopped booting cold cells holds no idle VM (≈ 2.1 MiB and the kernel's KVM memory).
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::error::VmError;
use crate::machine::{Machine, set_boot_regs};
use crate::memory::GuestMemory;
use crate::reaper;
use crate::setup::{Backing, Layout, MIN_MEM_SIZE, VmConfig, setup_memory};
use crate::vm::Vm;

/// The host side of a cold boot: everything before the guest's first instruction.
pub(crate) fn build(cfg: &VmConfig) -> Result<(Machine, Layout), VmError> {
    let mem = GuestMemory::anonymous(cfg.mem_size.max(MIN_MEM_SIZE) as usize)?;
    let layout = setup_memory(&mem, cfg, Backing::Anonymous)?;
    let machine = Machine::new(mem)?;
    set_boot_regs(&machine.vcpu, layout.entry)?;
    Ok((machine, layout))
}

/// How long a spare is kept with no cold boot in between.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// The configuration of the latest cold boot, and how many this process made of it.
    latest: Option<(VmConfig, u64)>,
    /// Cold boots so far: whether one came while the spare waited.
    boots: u64,
    /// The spare, made for `latest`.
    ready: Option<(VmConfig, Machine, Layout)>,
    /// The thread is building one.
    building: bool,
    /// A build failed: none is made again until the configuration changes.
    failed: bool,
    /// Spares made and released so far (tests).
    #[cfg(test)]
    made: u64,
    #[cfg(test)]
    released: u64,
}

impl State {
    fn wants_build(&self) -> bool {
        matches!(self.latest, Some((_, n)) if n >= 2)
            && self.ready.is_none()
            && !self.building
            && !self.failed
    }
}

struct Spare {
    state: Mutex<State>,
    /// Wakes the thread: a spare is wanted, or a boot came.
    wanted: Condvar,
    /// How long a spare is kept unasked ([`IDLE`]; shorter in tests).
    idle: Duration,
    /// Wakes those waiting for a build or a release to end (tests).
    #[cfg(test)]
    built: Condvar,
}

impl Spare {
    fn new(idle: Duration) -> Spare {
        Spare {
            state: Mutex::default(),
            wanted: Condvar::new(),
            idle,
            #[cfg(test)]
            built: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thread's loop, for as long as the process runs.
    fn serve(&self) -> ! {
        loop {
            let mut s = self.lock();
            while !s.wants_build() {
                if s.ready.is_none() {
                    s = self.wanted.wait(s).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                // A spare waits: it is released after `idle` with no cold boot at all.
                let seen = s.boots;
                let (guard, waited) = self
                    .wanted
                    .wait_timeout_while(s, self.idle, |s| s.boots == seen)
                    .unwrap_or_else(|p| p.into_inner());
                s = guard;
                if waited.timed_out() {
                    self.release(&mut s);
                }
            }
            let Some((cfg, _)) = s.latest.clone() else {
                continue;
            };
            s.building = true;
            drop(s);
            let built = build(&cfg);
            let mut s = self.lock();
            s.building = false;
            match built {
                Ok((machine, layout)) if s.latest.as_ref().is_some_and(|(c, _)| *c == cfg) => {
                    s.ready = Some((cfg, machine, layout));
                    #[cfg(test)]
                    {
                        s.made += 1;
                    }
                }
                Ok((machine, _)) => reaper::destroy_later(machine),
                Err(_) => s.failed = true,
            }
            #[cfg(test)]
            self.built.notify_all();
        }
    }

    /// Destroys the unasked spare; the next cold boot counts as a process's first again, so a
    /// spare comes back from the second boot after it on.
    fn release(&self, s: &mut State) {
        if let Some((_, machine, _)) = s.ready.take() {
            reaper::destroy_later(machine);
            #[cfg(test)]
            {
                s.released += 1;
            }
        }
        if let Some((_, n)) = &mut s.latest {
            *n = 0;
        }
        #[cfg(test)]
        self.built.notify_all();
    }

    /// Starts the thread that makes the spares.
    fn start(idle: Duration) -> Arc<Spare> {
        let spare = Arc::new(Spare::new(idle));
        let served = spare.clone();
        // Without the thread no spare is ever ready, and every cold boot builds its own.
        let _ = std::thread::Builder::new()
            .name("cell-vm-cold-spare".into())
            .spawn(move || served.serve());
        spare
    }

    /// A cold boot of `cfg`: the spare when one is ready for it, else a VM built now. Either
    /// way the thread is then asked for the next spare (from the second boot of `cfg` on).
    fn boot(&self, cfg: &VmConfig) -> Result<Vm, VmError> {
        let mut s = self.lock();
        s.boots += 1;
        let taken = match s.ready.take() {
            Some((c, machine, layout)) if c == *cfg => Some((machine, layout)),
            Some((_, other, _)) => {
                reaper::destroy_later(other);
                None
            }
            None => None,
        };
        match &mut s.latest {
            Some((c, n)) if c == cfg => *n += 1,
            latest => {
                *latest = Some((cfg.clone(), 1));
                s.failed = false;
            }
        }
        drop(s);
        // Wakes the thread whether or not a spare is wanted: a boot also restarts the idle
        // time of one that waits.
        self.wanted.notify_one();
        let (machine, layout) = match taken {
            Some(made) => made,
            None => build(cfg)?,
        };
        Ok(Vm::cold(machine, layout))
    }
}

fn spare() -> &'static Spare {
    static SPARE: OnceLock<Arc<Spare>> = OnceLock::new();
    SPARE.get_or_init(|| Spare::start(IDLE))
}

/// A cold boot of `cfg`, with this process's spare (see [`Spare::boot`]).
pub(crate) fn boot(cfg: &VmConfig) -> Result<Vm, VmError> {
    spare().boot(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Recv;
    use std::time::{Duration, Instant};

    #[test]
    fn from_the_second_cold_boot_on_a_spare_is_made_ahead_and_runs_like_a_new_vm() {
        if !crate::kvm::kvm_available() {
            eprintln!("SKIPPED: cold spare: /dev/kvm is not usable here");
            return;
        }
        let cfg = VmConfig::new(24 << 20);
        let idle = |vm: &mut Vm| {
            let r = vm.recv(Some(Instant::now() + Duration::from_secs(20)));
            assert!(matches!(r, Ok(Recv::Idle)), "{r:?}");
        };
        let spare = spare();
        let mut first = boot(&cfg).unwrap();
        assert!(!spare.lock().wants_build(), "one boot makes no spare");
        let mut second = boot(&cfg).unwrap();
        let mut s = spare.lock();
        while s.ready.is_none() && !s.failed {
            s = spare.built.wait(s).unwrap();
        }
        assert!(s.ready.as_ref().is_some_and(|(c, _, _)| *c == cfg));
        drop(s);
        let mut third = boot(&cfg).unwrap();
        // The spare was taken, and its guest runs from its entry to engine-ready.
        for vm in [&mut first, &mut second, &mut third] {
            idle(vm);
        }
        // Another configuration replaces it: the next spare is made for the new one only.
        let other = VmConfig::new(32 << 20);
        let mut fourth = boot(&other).unwrap();
        idle(&mut fourth);
        assert!(matches!(spare.lock().latest, Some((ref c, 1)) if *c == other));
    }

    #[test]
    fn a_spare_no_boot_asks_for_is_released_and_made_again_from_the_second_boot_after() {
        if !crate::kvm::kvm_available() {
            eprintln!("SKIPPED: cold spare release: /dev/kvm is not usable here");
            return;
        }
        let cfg = VmConfig::new(24 << 20);
        let spare = Spare::start(Duration::from_millis(50));
        let until = |done: &dyn Fn(&State) -> bool| {
            let mut s = spare.lock();
            while !done(&s) {
                s = spare.built.wait(s).unwrap();
            }
        };
        let vms = [spare.boot(&cfg).unwrap(), spare.boot(&cfg).unwrap()];
        until(&|s| s.made == 1 || s.failed);
        assert!(!spare.lock().failed);
        // No boot comes: the spare is destroyed and the count starts again.
        until(&|s| s.released == 1);
        assert!(spare.lock().ready.is_none());
        assert!(matches!(spare.lock().latest, Some((_, 0))));
        let third = spare.boot(&cfg).unwrap();
        assert!(
            !spare.lock().wants_build(),
            "the first boot after a release makes none"
        );
        let fourth = spare.boot(&cfg).unwrap();
        until(&|s| s.made == 2 || s.failed);
        assert!(!spare.lock().failed);
        drop((vms, third, fourth));
    }
}
