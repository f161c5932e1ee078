//! VM hosts: microVM cells held in helper processes instead of the supervisor's own.
//!
//! Every VM registers a KVM MMU notifier on its process's address space, and the kernel calls
//! every registered notifier at each page-table invalidation of that process (a copy-on-write
//! break of a snapshot page, an `munmap`); registering one locks every mapping of the process.
//! Both grow with the VMs alive in one process, so a process holding thousands of VMs starts each
//! new one more slowly than the last, and each VM also holds two descriptors of the process's
//! `RLIMIT_NOFILE`. A VM host is the same executable started again (`/proc/self/exe`) that runs
//! [`vm_host`] instead of `main`, holding a bounded number of VMs ([`HOST_CELLS`]): past the supervisor's own
//! share, cells go to hosts and the cost of a start stays flat however many cells live.
//!
//! * [`messages`]: what crosses between the supervisor and a host.
//! * [`vm_host`]: the host process (a thread per cell running its VM as the supervisor would).
//! * [`confine`]: what a host gives up before it runs a guest.
//! * [`hosted`]: the supervisor's side (starting hosts, a cell's frame I/O, kill and interrupt).
mod confine;
pub(crate) mod hosted;
pub(crate) mod messages;
pub(crate) mod vm_host;

/// Most cells one VM host process holds, unless the backend says otherwise.
pub(crate) const HOST_CELLS: usize = 128;

/// Most cells the supervisor's own process holds before new ones go to VM hosts (in the default
/// start mode), unless the backend says otherwise.
pub(crate) const IN_PROCESS_CELLS: usize = 128;

/// The pids of this process's live VM host children (for tests and diagnostics: a host's
/// command name is `cell-vm-host`).
#[doc(hidden)]
pub fn host_children() -> Vec<u32> {
    children_named("cell-vm-host")
}

/// The pids of this process's live (not zombie) children whose command name is `name`.
#[doc(hidden)]
pub fn children_named(name: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            // pid (comm) state ppid ...
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.split_once(") ").is_some_and(|(comm, rest)| {
                    comm.strip_prefix(&format!("{pid} (")) == Some(name)
                        && rest.split(' ').nth(1) == Some(me.as_str())
                        && !rest.starts_with('Z')
                })
            })
        })
        .collect()
}
