//! `cell run --backend process`, hundreds of times: every run must reach EOF on its stdout
//! and stderr (nothing it started may hold them open after it exits), and afterwards no
//! process it started, no cgroup it made and no descriptor of this test may be left.
//!
//! This guards the fork server's pool: a child cloned for it that outlived the CLI
//! (re-parented to init, unconfined, holding the CLI's stdio) made a caller reading to EOF
//! hang in about 1-2 % of runs.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const RUNS: usize = 300;

/// The tests here count this process's descriptors and children: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const PARALLEL: usize = 6;
/// Hang guard per run (a run takes well under a second).
const HANG_GUARD: Duration = Duration::from_secs(60);

struct Run {
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Cgroup directories named after this run, right after it exited.
    cgroups_left: Vec<PathBuf>,
}

/// The cgroup directories cells are made in: children of this process's own cgroup in each
/// hierarchy (the CLI runs in the same cgroup as this test).
fn cgroup_parents() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut parents = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, mount_point, fstype, opts) = (pre[3], pre[4], post[0], post[2]);
        let wanted: Vec<Option<&str>> = match fstype {
            "cgroup2" => vec![None],
            "cgroup" => ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| opts.split(',').any(|o| o == *c))
                .map(Some)
                .collect(),
            _ => continue,
        };
        for controller in wanted {
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
                let hit = match controller {
                    None => ctls.is_empty(),
                    Some(c) => ctls.split(',').any(|x| x == c),
                };
                hit.then(|| path.to_owned())
            });
            if let Some(path) = path {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let dir = Path::new(mount_point).join(rel.trim_start_matches('/'));
                if !parents.contains(&dir) {
                    parents.push(dir);
                }
            }
        }
    }
    parents
}

/// Cell cgroups (`cell-<supervisor pid>-<n>`) of any of `pids`.
fn cell_cgroups_of(parents: &[PathBuf], pids: &HashSet<u32>) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.strip_prefix("cell-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(|p| pids.contains(&p)) {
                left.push(entry.path());
            }
        }
    }
    left
}

/// Processes left by the runs: in a cell cgroup of one of them, or a clone of the `cell`
/// binary (a child not yet confined) whose parent is gone.
fn processes_left(cli: &Path, runs: &HashSet<u32>) -> Vec<String> {
    let mut left = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return left;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        let in_ours = cgroup.lines().any(|l| {
            l.rsplit('/').any(|part| {
                part.strip_prefix("cell-")
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| runs.contains(&p))
            })
        });
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let exe = std::fs::read_link(dir.join("exe")).ok();
        let orphaned_clone = ppid == Some(1) && exe.as_deref() == Some(cli);
        if in_ours || orphaned_clone {
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            left.push(format!(
                "pid {pid} ppid {ppid:?} exe {exe:?} cmdline {:?} cgroup {cgroup:?}",
                String::from_utf8_lossy(&cmdline)
            ));
        }
    }
    left
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn run_once(script: &Path, parents: &[PathBuf]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["run", "--backend", "process"])
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cell");
    let pid = child.id();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err_pipe.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let stderr = err_reader.join().unwrap();
    let code = child.wait().expect("wait for cell").code();
    let cgroups_left = cell_cgroups_of(parents, &HashSet::from([pid]));
    Run {
        pid,
        code,
        stdout,
        stderr,
        cgroups_left,
    }
}

#[test]
fn process_runs_leave_no_process_cgroup_or_descriptor_and_always_reach_eof() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !backend_process::host_support().user_namespaces {
        eprintln!("SKIPPED: the process backend needs user namespaces");
        return;
    }
    let dir = std::env::temp_dir().join(format!("cell-leaks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("short.rhai");
    std::fs::write(&script, "post(40 + 2); 7").unwrap();
    let cli = std::fs::canonicalize(env!("CARGO_BIN_EXE_cell")).unwrap();
    let parents = cgroup_parents();
    let fds_before = open_fds();

    let (tx, rx) = mpsc::channel::<Run>();
    let mut workers = Vec::new();
    for w in 0..PARALLEL {
        let tx = tx.clone();
        let script = script.clone();
        let parents = parents.clone();
        workers.push(std::thread::spawn(move || {
            for _ in (w..RUNS).step_by(PARALLEL) {
                if tx.send(run_once(&script, &parents)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);

    let mut pids = HashSet::new();
    let mut failures = Vec::new();
    for done in 0..RUNS {
        let run = match rx.recv_timeout(HANG_GUARD) {
            Ok(run) => run,
            Err(_) => panic!(
                "after {done} runs, a `cell run` did not reach EOF on its output within \
                 {HANG_GUARD:?}; left: {:#?}",
                processes_left(&cli, &pids)
            ),
        };
        pids.insert(run.pid);
        if run.code != Some(0) || !run.stdout.contains("42") {
            failures.push(format!(
                "run {} exited {:?}: stdout {:?} stderr {:?}",
                run.pid, run.code, run.stdout, run.stderr
            ));
        }
        if !run.cgroups_left.is_empty() {
            failures.push(format!(
                "run {} left cgroups {:?}",
                run.pid, run.cgroups_left
            ));
        }
    }
    for worker in workers {
        worker.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);

    assert!(failures.is_empty(), "{failures:#?}");
    let left = processes_left(&cli, &pids);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    let cgroups = cell_cgroups_of(&parents, &pids);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:#?}");
    // No more than before (an earlier test's cells may still be closing theirs).
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before,
        "descriptors left open in the test: {fds_before} before, {fds_after} after"
    );
}

/// Fork servers that are children of this process (`cell --fork-server`).
fn fork_servers() -> Vec<i32> {
    let me = std::process::id();
    let mut servers = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        // The cells it forks share its command line, but each is in a pid namespace of
        // its own (two pids in NSpid).
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let own_pid_ns = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| ids.split_whitespace().count() > 1);
        if ppid == Some(me) && cmdline.ends_with(b"--fork-server\0") && !own_pid_ns {
            servers.push(pid);
        }
    }
    servers
}

#[test]
fn dropping_the_supervisor_shuts_its_fork_server_down() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !backend_process::host_support().user_namespaces {
        eprintln!("SKIPPED: the process backend needs user namespaces");
        return;
    }
    let supervisor = supervisor::Supervisor::new();
    let cell = supervisor
        .spawn("main", "process", &supervisor::Policy::default())
        .expect("spawn a process cell");
    assert_eq!(cell.exec("40 + 2").unwrap(), supervisor::Value::Int(42));
    let servers = fork_servers();
    assert_eq!(servers.len(), 1, "one fork server: {servers:?}");
    // SAFETY: pidfd_open of a child of this process.
    let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, servers[0], 0) } as i32;
    assert!(pidfd >= 0);
    cell.close();
    drop(cell);
    drop(supervisor);
    // The server ends (the pidfd becomes readable); 30 s is only a hang guard.
    let mut pfd = nix::libc::pollfd {
        fd: pidfd,
        events: nix::libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { nix::libc::poll(&mut pfd, 1, 30_000) };
    // SAFETY: closing the pidfd opened above.
    unsafe { nix::libc::close(pidfd) };
    assert_eq!(
        ready, 1,
        "the fork server outlived the supervisor that used it"
    );
}
