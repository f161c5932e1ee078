//! What this host supports, detected once, and the per-process resources shared by
//! every spawn: sealed memfds (for the images), the empty network namespace, the
//! Landlock ruleset and the seccomp program.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use crate::cgroup::Hierarchies;
use crate::error::{Error, Result};
use crate::layers::{Layer, LayerReport, LayerState};
use crate::seccomp::Role;

/// What the host offers, detected once per process.
#[derive(Clone, Debug)]
pub struct HostSupport {
    /// The supervisor runs as root in the initial user namespace.
    pub rootful: bool,
    /// User namespaces can be created by this process.
    pub user_namespaces: bool,
    /// Landlock ABI version (0 = unsupported).
    pub landlock_abi: i32,
    /// seccomp filters are supported.
    pub seccomp: bool,
    pub(crate) cgroups: Hierarchies,
}

/// Host support, detected on first use.
pub fn host_support() -> &'static HostSupport {
    static HOST: OnceLock<HostSupport> = OnceLock::new();
    HOST.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let in_init_userns = std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
            .unwrap_or(false);
        let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let unpriv_clone = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
            .map(|s| s.trim() != "0")
            .unwrap_or(true);
        // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr only queries the ABI.
        let landlock_abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                1u32,
            )
        };
        // SAFETY: PR_GET_SECCOMP only reads this thread's seccomp mode.
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP) } >= 0;
        HostSupport {
            rootful: euid == 0 && in_init_userns,
            user_namespaces: max_userns > 0 && (euid == 0 || unpriv_clone),
            landlock_abi: landlock_abi.max(0) as i32,
            seccomp,
            cgroups: Hierarchies::detect(),
        }
    })
}

impl HostSupport {
    /// The layer states a default spawn gets on this host. (Rootless cells get a
    /// fresh empty network namespace each, as isolated as the shared one but about
    /// 1 ms slower to create.)
    pub fn layers(&self) -> LayerReport {
        let mut states = Vec::new();
        for layer in Layer::ALL {
            let state = match layer {
                Layer::Landlock => landlock_state(self.landlock_abi),
                Layer::Seccomp if !self.seccomp => {
                    LayerState::Inactive("kernel without seccomp filters".into())
                }
                Layer::CgroupMemory | Layer::CgroupPids | Layer::CgroupCpu | Layer::CgroupKill => {
                    self.cgroups
                        .availability()
                        .into_iter()
                        .find(|(l, _)| *l == layer)
                        .map(|(_, s)| s)
                        .expect("cgroup layer")
                }
                _ if !self.user_namespaces => {
                    LayerState::Inactive("user namespaces are disabled".into())
                }
                _ => LayerState::Active,
            };
            states.push((layer, state));
        }
        LayerReport::new(states)
    }
}

pub(crate) fn landlock_state(abi: i32) -> LayerState {
    match abi {
        0 => LayerState::Inactive("kernel without Landlock".into()),
        1..=3 => LayerState::Partial(format!("ABI {abi}: filesystem only, no TCP rules")),
        4 | 5 => LayerState::Partial(format!("ABI {abi}: no signal/abstract-socket scoping")),
        _ => LayerState::Active,
    }
}

/// The layer states of a default spawn on this host, computed once.
pub(crate) fn host_layers() -> &'static LayerReport {
    static LAYERS: OnceLock<LayerReport> = OnceLock::new();
    LAYERS.get_or_init(|| host_support().layers())
}

/// What this host supports, layer by layer (for `cell doctor`).
pub fn doctor() -> LayerReport {
    host_support().layers()
}

/// Moves `fd` to a number >= 16, close-on-exec, so the child can lay out 3 to 11
/// without clobbering anything it still needs.
pub(crate) fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 16 {
        return Ok(fd);
    }
    // SAFETY: fd is a valid open descriptor; F_DUPFD_CLOEXEC returns a new one we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 16) };
    if new < 0 {
        let e = io::Error::last_os_error();
        // EINVAL: no descriptor number 16 exists under this process's RLIMIT_NOFILE.
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => io::Error::from_raw_os_error(libc::EMFILE),
            _ => e,
        });
    }
    // SAFETY: new is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A sealed, close-on-exec memfd holding `bytes`.
pub(crate) fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let cname = CString::new(name).expect("no NUL in image name");
    // SAFETY: valid name; flags are plain constants.
    let raw =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: the fd is valid; F_ADD_SEALS takes an int.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    high_fd(file.into())
}

/// The empty network namespace every rootful cell joins, created once. Rootless
/// processes cannot create one outside a user namespace; they get `None` and each
/// cell gets a fresh namespace instead.
pub(crate) fn empty_netns() -> Result<Option<RawFd>> {
    static NETNS: OnceLock<std::result::Result<Option<OwnedFd>, String>> = OnceLock::new();
    let slot = NETNS.get_or_init(|| {
        if !host_support().rootful {
            return Ok(None);
        }
        // Namespaces belong to threads: a short-lived thread unshares and keeps only
        // a handle to the new namespace.
        std::thread::spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: unshare affects only this (throw-away) thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let f = std::fs::File::open("/proc/thread-self/ns/net")?;
            high_fd(f.into())
        })
        .join()
        .map_err(|_| "netns thread panicked".to_string())?
        .map(Some)
        .map_err(|e| e.to_string())
    });
    match slot {
        Ok(fd) => Ok(fd.as_ref().map(|f| f.as_raw_fd())),
        Err(e) => Err(Error::LayerUnavailable {
            layer: Layer::NetworkNamespace,
            reason: e.clone(),
        }),
    }
}

/// The Landlock ruleset (created once; no rules: nothing is allowed), or `None`
/// when the kernel has no Landlock.
pub(crate) fn landlock_ruleset() -> Option<RawFd> {
    static RULESET: OnceLock<Option<OwnedFd>> = OnceLock::new();
    RULESET
        .get_or_init(|| {
            use landlock::{ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, Scope};
            let abi = ABI::V7;
            let created = Ruleset::default()
                .handle_access(AccessFs::from_all(abi))
                .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
                .and_then(|r| r.scope(Scope::from_all(abi)))
                .and_then(|r| r.create())
                .ok()?;
            let fd: Option<OwnedFd> = created.into();
            fd.and_then(|f| high_fd(f).ok())
        })
        .as_ref()
        .map(|f| f.as_raw_fd())
}

/// The compiled seccomp program for `role` (each built once).
pub(crate) fn seccomp_program(role: Role) -> &'static [libc::sock_filter] {
    static CELL: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    static FORK_SERVER: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    let slot = match role {
        Role::Cell => &CELL,
        Role::ForkServer => &FORK_SERVER,
    };
    slot.get_or_init(|| crate::seccomp::program(role))
}
