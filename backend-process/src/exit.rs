//! What a cell's end means: a limit it reached (with that limit's error code), a
//! confinement step a forked cell failed, a panic, a crash, or a clean exit.

use abi::backend::{PipeError, Resource};

use crate::cell::{ExitStatus, Termination};
use crate::fork_protocol::exit;
use crate::limits::Limits;
use crate::step::Step;

/// The error a transaction reports for a cell that ended with `t` (not killed by the
/// host), given the limits it ran under and, for a panic, the message the guest left.
pub(crate) fn classify(t: &Termination, limits: &Limits, panic: Option<&str>) -> PipeError {
    if t.killed_by_host {
        return PipeError::Killed;
    }
    // Limits used up: the host side words these the same for every backend.
    let memory = || PipeError::Exhausted {
        resource: Resource::Memory,
        detail: format!(
            "the process ran out of memory (limit {} MiB)",
            limits.memory_bytes >> 20
        ),
    };
    if t.oom_killed {
        return memory();
    }
    let cpu = || PipeError::Exhausted {
        resource: Resource::CpuTime,
        detail: format!(
            "the process used up its CPU time ({} ms over its life)",
            limits.cpu_time_ms
        ),
    };
    match t.status {
        ExitStatus::Exited(0) => PipeError::Closed,
        ExitStatus::Exited(exit::OUT_OF_MEMORY) => memory(),
        ExitStatus::Exited(exit::CPU_TIME) => cpu(),
        ExitStatus::Exited(exit::STACK_OVERFLOW) => PipeError::Exhausted {
            resource: Resource::Stack,
            detail: "the guest's stack guard page was hit".into(),
        },
        // Worded as the microVM backend words its guest's panic.
        ExitStatus::Exited(exit::PANICKED) => PipeError::Crashed(match panic {
            Some(message) => format!("guest panicked: {message}"),
            None => "guest panicked (its message did not reach the host)".into(),
        }),
        // The RLIMIT_CPU backstop (SIGXCPU at the soft limit, SIGKILL at the hard one;
        // the host's own kills and OOM kills are told apart above).
        ExitStatus::Signaled(libc::SIGXCPU) => cpu(),
        ExitStatus::Signaled(libc::SIGKILL) if limits.cpu_time_ms > 0 => cpu(),
        ExitStatus::Signaled(sig) => {
            PipeError::Crashed(format!("cell process killed by signal {sig}"))
        }
        ExitStatus::Exited(code) => match Step::from_exit_status(code) {
            Some(step) => PipeError::Crashed(format!(
                "the cell process failed confinement step `{}` ({}, exit status {code})",
                step.name(),
                step.describe()
            )),
            None => PipeError::Crashed(format!("cell process exited with status {code}")),
        },
    }
}
