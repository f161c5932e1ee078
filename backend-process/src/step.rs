//! The failure vocabulary of the confinement sequence ([`crate::confine`]): every step,
//! its stable code, and how a child reports the step it failed. Shared word for word by
//! the host and the guest program (`guest/src/fork_server.rs` includes this file).
//!
//! A failed step ends the child with the exit status [`Step::exit_status`]; a child that
//! still holds a status pipe (a direct spawn) first writes the [`record`] `(step, errno)`
//! on it. The host decodes either into an error naming the step.

#![allow(dead_code)] // each side uses its part

use core::ffi::c_int;

/// A step of the confinement sequence. The codes are stable (append only): they travel
/// in status records and exit statuses from a child to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Step {
    /// Placing the descriptors the child keeps at their fixed numbers.
    ArrangeFds = 1,
    /// Joining the cell's cgroup-v1 hierarchies.
    JoinCgroup = 2,
    /// A new cgroup namespace.
    UnshareCgroupNamespace = 3,
    /// Joining the empty network namespace.
    JoinNetworkNamespace = 4,
    /// Opening `/proc/self` (for the id maps).
    OpenProc = 5,
    /// Making every mount private.
    MakeMountsPrivate = 6,
    /// Mounting the empty read-only root.
    MountRoot = 7,
    /// `pivot_root` into the empty root.
    PivotRoot = 8,
    /// Detaching the old root.
    DetachOldRoot = 9,
    /// Setting the hostname.
    SetHostname = 10,
    /// Dropping to the cell's host uid and gid.
    DropHostIds = 11,
    /// A new user namespace.
    UnshareUserNamespace = 12,
    /// Writing the user namespace's id maps.
    WriteIdMaps = 13,
    /// Clearing (or, for the fork server, reducing) the capability sets.
    DropCapabilities = 14,
    /// A new session.
    NewSession = 15,
    /// Setting the rlimits.
    SetRlimits = 16,
    /// `no_new_privs`.
    NoNewPrivs = 17,
    /// Entering the Landlock domain.
    Landlock = 18,
    /// Arming the parent-death signal.
    ParentDeathSignal = 19,
    /// Closing inherited descriptors.
    CloseFds = 20,
    /// Installing the seccomp filter.
    Seccomp = 21,
    /// Executing the guest image.
    Exec = 22,
    /// Emptying the capability bounding set.
    DropBoundingSet = 23,
    /// A forked cell taking a uid and gid of its own.
    TakeIds = 24,
    /// A forked cell reading the host's `PLACED` byte and go record.
    GoRecord = 25,
    /// Arming the cell's CPU-time timer.
    CpuTimer = 26,
}

/// A failed step's exit status is this plus its code: above the guest's own statuses
/// (`fork_protocol::exit`), below those a shell gives signals.
pub const STEP_EXIT_BASE: i32 = 160;

/// Length of a status record: the step's code (u32) and the errno (i32), little-endian.
pub const RECORD_LEN: usize = 8;

impl Step {
    /// Every step, in code order.
    pub const ALL: [Step; 26] = [
        Step::ArrangeFds,
        Step::JoinCgroup,
        Step::UnshareCgroupNamespace,
        Step::JoinNetworkNamespace,
        Step::OpenProc,
        Step::MakeMountsPrivate,
        Step::MountRoot,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::SetHostname,
        Step::DropHostIds,
        Step::UnshareUserNamespace,
        Step::WriteIdMaps,
        Step::DropCapabilities,
        Step::NewSession,
        Step::SetRlimits,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::ParentDeathSignal,
        Step::CloseFds,
        Step::Seccomp,
        Step::Exec,
        Step::DropBoundingSet,
        Step::TakeIds,
        Step::GoRecord,
        Step::CpuTimer,
    ];

    /// The step's stable code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The step with `code`, if there is one.
    pub fn from_code(code: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| u32::from(s.code()) == code)
    }

    /// The exit status of a child that failed this step.
    pub const fn exit_status(self) -> i32 {
        STEP_EXIT_BASE + self as i32
    }

    /// The step an exit status names, if it names one.
    pub fn from_exit_status(status: i32) -> Option<Step> {
        let code = status.checked_sub(STEP_EXIT_BASE)?;
        Step::from_code(u32::try_from(code).ok()?)
    }

    /// The step's name, as error messages show it.
    pub const fn name(self) -> &'static str {
        match self {
            Step::ArrangeFds => "arrange-fds",
            Step::JoinCgroup => "join-cgroup",
            Step::UnshareCgroupNamespace => "unshare-cgroup-namespace",
            Step::JoinNetworkNamespace => "join-network-namespace",
            Step::OpenProc => "open-proc",
            Step::MakeMountsPrivate => "make-mounts-private",
            Step::MountRoot => "mount-root",
            Step::PivotRoot => "pivot-root",
            Step::DetachOldRoot => "detach-old-root",
            Step::SetHostname => "set-hostname",
            Step::DropHostIds => "drop-host-ids",
            Step::UnshareUserNamespace => "unshare-user-namespace",
            Step::WriteIdMaps => "write-id-maps",
            Step::DropCapabilities => "drop-capabilities",
            Step::NewSession => "new-session",
            Step::SetRlimits => "set-rlimits",
            Step::NoNewPrivs => "no-new-privs",
            Step::Landlock => "landlock",
            Step::ParentDeathSignal => "parent-death-signal",
            Step::CloseFds => "close-fds",
            Step::Seccomp => "seccomp",
            Step::Exec => "exec",
            Step::DropBoundingSet => "drop-bounding-set",
            Step::TakeIds => "take-ids",
            Step::GoRecord => "go-record",
            Step::CpuTimer => "cpu-timer",
        }
    }

    /// What the step does, for error messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Step::ArrangeFds => "placing its descriptors",
            Step::JoinCgroup => "joining its cgroups",
            Step::UnshareCgroupNamespace => "entering a new cgroup namespace",
            Step::JoinNetworkNamespace => "joining the empty network namespace",
            Step::OpenProc => "opening /proc/self",
            Step::MakeMountsPrivate => "making its mounts private",
            Step::MountRoot => "mounting its empty root",
            Step::PivotRoot => "pivoting into its empty root",
            Step::DetachOldRoot => "detaching the old root",
            Step::SetHostname => "setting its hostname",
            Step::DropHostIds => "dropping to its host uid and gid",
            Step::UnshareUserNamespace => "entering a new user namespace",
            Step::WriteIdMaps => "writing its id maps",
            Step::DropCapabilities => "dropping its capabilities",
            Step::NewSession => "starting a new session",
            Step::SetRlimits => "setting its rlimits",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "entering its Landlock domain",
            Step::ParentDeathSignal => "arming its parent-death signal",
            Step::CloseFds => "closing inherited descriptors",
            Step::Seccomp => "installing its seccomp filter",
            Step::Exec => "executing the guest image",
            Step::DropBoundingSet => "emptying its capability bounding set",
            Step::TakeIds => "taking its own uid and gid",
            Step::GoRecord => "reading its go record",
            Step::CpuTimer => "arming its CPU-time timer",
        }
    }
}

/// The status record of `(step, errno)`.
pub fn record(step: Step, errno: i32) -> [u8; RECORD_LEN] {
    let mut buf = [0u8; RECORD_LEN];
    buf[..4].copy_from_slice(&u32::from(step.code()).to_le_bytes());
    buf[4..].copy_from_slice(&errno.to_le_bytes());
    buf
}

/// A status record's raw step code and errno.
pub fn decode_record(buf: [u8; RECORD_LEN]) -> (u32, i32) {
    let [a, b, c, d, e, f, g, h] = buf;
    (
        u32::from_le_bytes([a, b, c, d]),
        i32::from_le_bytes([e, f, g, h]),
    )
}

/// The errno a step made to fail by [`Reporter::fault`] reports.
pub const INJECTED_ERRNO: i32 = libc::ECANCELED;

/// How a child being confined reports a failed step.
#[derive(Clone, Copy, Debug)]
pub struct Reporter {
    /// The status pipe, or -1 (a forked cell: its exit status alone names the step).
    pub status_fd: c_int,
    /// The code of a step made to fail (fault injection for tests; 0: none).
    pub fault: u8,
}

impl Reporter {
    /// Reports by exit status alone, with no step made to fail.
    pub const EXIT_ONLY: Reporter = Reporter {
        status_fd: -1,
        fault: 0,
    };

    /// Starts `step`: fails it at once when it is the step made to fail.
    pub fn enter(self, step: Step) {
        if self.fault == step.code() {
            self.fail_with(step, INJECTED_ERRNO)
        }
    }

    /// Fails `step` when a system call of it returned `ret` < 0.
    pub fn check(self, step: Step, ret: i64) {
        if ret < 0 {
            self.fail(step)
        }
    }

    /// Fails `step` with the calling thread's errno.
    pub fn fail(self, step: Step) -> ! {
        self.fail_with(step, errno())
    }

    /// Reports `(step, errno)` on the status pipe, if any, and exits with the step's
    /// status.
    pub fn fail_with(self, step: Step, errno: i32) -> ! {
        let buf = record(step, errno);
        // SAFETY: write and _exit are raw calls on this process's own descriptor and a
        // live buffer; a failed write changes nothing (the exit status names the step).
        unsafe {
            if self.status_fd >= 0 {
                libc::write(self.status_fd, buf.as_ptr().cast(), RECORD_LEN);
            }
            libc::_exit(step.exit_status())
        }
    }
}

fn errno() -> i32 {
    // SAFETY: errno's location is thread-local and always valid.
    unsafe { *libc::__errno_location() }
}
