//! Tests against real confined children. The escape probes run the test-only
//! `cell-probe` image under exactly the confinement of a real cell.

use std::io::Read;
use std::time::Duration;

use crate::image::Image;
use crate::*;

fn probe_spec(name: &str) -> SpawnSpec {
    SpawnSpec {
        image: Image::Probe,
        args: vec![name.to_owned()],
        ..SpawnSpec::default()
    }
}

pub(crate) fn spawn_probe(name: &str) -> ProcessCell {
    ProcessCell::spawn(&probe_spec(name)).expect("spawn probe")
}

/// Both ways a cell starts: forked by the fork server, and confined directly.
pub(crate) const PATHS: [bool; 2] = [true, false];

pub(crate) fn spawn_probe_via(name: &str, fork_server: bool) -> ProcessCell {
    let spec = SpawnSpec {
        fork_server,
        ..probe_spec(name)
    };
    ProcessCell::spawn(&spec).expect("spawn probe")
}

/// Reads the probe's report: everything until EOF or the first newline-terminated line.
fn read_line(cell: &ProcessCell) -> String {
    let mut ch = cell.channel();
    ch.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = ch.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run_probe(name: &str, fork_server: bool) -> (String, Termination) {
    let mut cell = spawn_probe_via(name, fork_server);
    let line = read_line(&cell);
    let t = cell.wait().unwrap();
    (line, t)
}

fn assert_probe(name: &str, expected: &str) {
    for fork_server in PATHS {
        let (line, t) = run_probe(name, fork_server);
        assert_eq!(line, expected, "probe {name}, fork server {fork_server}");
        assert_eq!(t.status, ExitStatus::Exited(0), "probe {name}");
    }
}

#[test]
fn doctor_reports_every_layer() {
    let report = doctor();
    assert_eq!(report.iter().count(), Layer::ALL.len());
    for layer in Layer::ALL {
        assert_eq!(Layer::from_name(layer.name()), Some(layer));
    }
}

#[test]
fn a_panicking_cell_leaves_its_last_words_and_exits_with_the_panic_status() {
    use crate::fork_protocol::{exit, last_words};
    for fork_server in PATHS {
        let mut cell = spawn_probe_via("panic", fork_server);
        let mut ch = cell.channel();
        ch.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut words = Vec::new();
        ch.read_to_end(&mut words).unwrap();
        let text = last_words::decode(&words).map(String::from_utf8_lossy);
        assert!(
            text.as_ref()
                .is_some_and(|t| t.starts_with("probe panic requested (7) at ")),
            "fork server {fork_server}: {text:?} from {words:?}"
        );
        let t = cell.wait().unwrap();
        assert_eq!(t.status, ExitStatus::Exited(exit::PANICKED), "{t:?}");
        assert!(t.panicked(), "{t:?}");
    }
}

#[test]
fn environment_is_empty() {
    assert_probe("env", "ok 0");
}

#[test]
fn guest_is_unprivileged_pid_1_in_its_own_session() {
    // An unprivileged uid/gid in the namespace (1000 for a directly spawned cell; one of
    // its own above 1000 for a fork-server cell of a root supervisor), pid 1 of its pid
    // namespace, session leader, and no capability left.
    for fork_server in PATHS {
        let (line, t) = run_probe("ids", fork_server);
        assert_eq!(t.status, ExitStatus::Exited(0));
        let id = cell_id(&line);
        assert_eq!(
            line,
            format!("uid {id} gid {id} pid 1 sid 1 capget 0 eff 00 perm 00"),
            "fork server {fork_server}"
        );
        if fork_server && host_support().rootful {
            assert!(
                id > CELL_UID && id < CELL_UID + crate::direct::SERVER_ID_SPAN,
                "{id}"
            );
        } else {
            assert_eq!(id, CELL_UID);
        }
    }
}

/// The uid an "ids" probe reported.
fn cell_id(line: &str) -> u32 {
    line.strip_prefix("uid ")
        .and_then(|r| r.split(' ').next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("not an ids report: {line}"))
}

#[test]
fn fork_server_cells_of_a_root_supervisor_have_host_ids_of_their_own() {
    if !host_support().rootful {
        eprintln!("SKIPPED: needs a root supervisor (rootless servers map one id)");
        return;
    }
    let cells: Vec<ProcessCell> = (0..3).map(|_| spawn_probe("sleep")).collect();
    let mut uids: Vec<String> = cells
        .iter()
        .map(|c| {
            assert_eq!(read_line(c), "ok");
            let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            let host_uid: u32 = uid.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(host_uid >= HOST_UID_BASE, "unprivileged on the host: {uid}");
            host_uid.to_string()
        })
        .collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "one host uid per cell");
}

#[test]
fn only_the_channel_fd_is_open() {
    assert_probe("fds", "open [3]");
}

#[test]
fn reading_host_files_is_refused() {
    assert_probe("open_read", &format!("errno {}", libc::EPERM));
}

#[test]
fn writing_host_files_is_refused() {
    assert_probe("open_write", &format!("errno {}", libc::EPERM));
}

#[test]
fn exec_is_refused() {
    // execve: seccomp. execveat on the image fd: closed on exec. On another fd: seccomp.
    assert_probe(
        "exec",
        &format!(
            "execve -1 {} execveat4 -1 {} execveat3 -1 {}",
            libc::EPERM,
            libc::EBADF,
            libc::EPERM
        ),
    );
}

#[test]
fn sockets_cannot_be_created() {
    assert_probe("socket_inet", &format!("errno {}", libc::EPERM));
    assert_probe("socket_unix", &format!("errno {}", libc::EPERM));
    assert_probe("socketpair", &format!("errno {}", libc::EPERM));
}

#[test]
fn connect_is_refused() {
    assert_probe("connect", &format!("errno {}", libc::EPERM));
}

#[test]
fn ptrace_is_refused() {
    assert_probe("ptrace", &format!("errno {}", libc::EPERM));
}

#[test]
fn mount_is_refused() {
    assert_probe("mount", &format!("errno {}", libc::EPERM));
}

#[test]
fn unshare_is_refused() {
    assert_probe("unshare", &format!("errno {}", libc::EPERM));
}

#[test]
fn setns_is_refused() {
    assert_probe("setns", &format!("errno {}", libc::EPERM));
}

#[test]
fn clone_with_namespace_flags_is_refused_and_clone3_is_enosys() {
    assert_probe("clone_newuser", &format!("errno {}", libc::EPERM));
    assert_probe("clone3", &format!("errno {}", libc::ENOSYS));
}

#[test]
fn io_uring_is_refused() {
    assert_probe("io_uring", &format!("errno {}", libc::EPERM));
}

#[test]
fn bpf_userfaultfd_keyring_and_perf_are_refused() {
    for name in ["bpf", "userfaultfd", "keyctl", "perf_event_open"] {
        assert_probe(name, &format!("errno {}", libc::EPERM));
    }
}

#[test]
fn tiocsti_is_refused() {
    assert_probe(
        "tiocsti",
        &format!("fd3 -1 {} fd0 -1 {}", libc::EPERM, libc::EPERM),
    );
}

fn assert_killed_by_seccomp(name: &str) {
    for fork_server in PATHS {
        let mut cell = spawn_probe_via(name, fork_server);
        assert_eq!(read_line(&cell), "trying");
        let rest = read_line(&cell);
        assert_eq!(rest, "", "probe {name} survived: {rest}");
        let t = cell.wait().unwrap();
        assert_eq!(t.status, ExitStatus::Signaled(libc::SIGSYS), "probe {name}");
        assert!(t.crashed());
    }
}

#[test]
fn fork_server_cells_are_separate_processes_in_separate_namespaces() {
    let mut cells: Vec<ProcessCell> = (0..3).map(|_| spawn_probe("ids")).collect();
    let mut pids: Vec<i32> = cells.iter().map(|c| c.pid()).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "distinct host processes");
    for cell in &mut cells {
        // Each is pid 1 of a pid namespace of its own.
        assert!(read_line(cell).contains(" pid 1 "));
        assert!(
            cell.layers().first_missing(&Layer::ALWAYS).is_none(),
            "{}",
            cell.layers()
        );
        let t = cell.wait().unwrap();
        assert_eq!(t.status, ExitStatus::Exited(0));
    }
    let ns = |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    // The namespaces of live cells differ from each other and from the supervisor's.
    let a = spawn_probe("sleep");
    let b = spawn_probe("sleep");
    for kind in ["pid_for_children", "mnt", "ipc", "uts"] {
        let (na, nb) = (ns(a.pid(), kind), ns(b.pid(), kind));
        assert!(na.is_some() && na != nb, "{kind}: {na:?} vs {nb:?}");
        assert_ne!(na, ns(std::process::id() as i32, kind), "{kind}");
    }
}

#[test]
fn a_fork_server_that_dies_is_replaced() {
    // Held throughout, so that only this test's kill replaces the server (another test
    // dropping the last lease would retire it).
    let _lease = crate::fork_server::PoolLease::new();
    drop(spawn_probe("sleep")); // the server runs
    let server =
        crate::fork_server::test_hooks::server_pid(Image::Probe).expect("a running server");
    // SAFETY: signalling the fork server process this test's backend started.
    unsafe { libc::kill(server, libc::SIGKILL) };
    // Spares forked before the kill still work; after them the keeper starts a new server.
    for _ in 0..crate::fork_server::SPARES + 2 {
        let (line, t) = run_probe("ids", true);
        assert_eq!(t.status, ExitStatus::Exited(0));
        assert!(
            line.ends_with(" pid 1 sid 1 capget 0 eff 00 perm 00"),
            "{line}"
        );
    }
    let replaced =
        crate::fork_server::test_hooks::server_pid(Image::Probe).expect("a running server");
    assert_ne!(replaced, server);
}

#[test]
fn i386_syscall_entry_kills_the_cell() {
    assert_killed_by_seccomp("i386");
}

#[test]
fn x32_syscalls_kill_the_cell() {
    assert_killed_by_seccomp("x32");
}

#[test]
fn fork_bomb_is_stopped_by_the_process_limit() {
    let mut spec = probe_spec("fork_bomb");
    spec.limits.max_processes = 8;
    let mut cell = ProcessCell::spawn(&spec).unwrap();
    let line = read_line(&cell);
    let count: u32 = line
        .strip_prefix(&format!("errno {} after ", libc::EAGAIN))
        .unwrap_or_else(|| panic!("unexpected fork bomb report {line:?}"))
        .parse()
        .unwrap();
    assert!(
        count < 8,
        "{count} forks succeeded with a limit of 8 processes"
    );
    cell.kill();
    assert!(cell.wait().unwrap().killed_by_host);
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn kill_leaves_no_process_cgroup_or_mount_behind_including_grandchildren() {
    let mounts_before = mount_count();
    let mut cell = spawn_probe("grandchildren");
    let line = read_line(&cell);
    assert!(line.starts_with("ok "), "{line}");
    let dirs = cell.cgroup_dirs();
    assert!(
        !dirs.is_empty(),
        "this test needs cgroups (layers: {})",
        cell.layers()
    );
    // Wait until the grandchild exists (the child reports before forking it).
    let mut pids = Vec::new();
    for _ in 0..2000 {
        pids = cell.host_pids().expect("pids cgroup");
        if pids.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(pids.len(), 3, "init, child and grandchild: {pids:?}");
    // The child joined each v1 cgroup through `tasks` (its one thread): the whole process
    // and everything it forked later must be in every cgroup of the cell.
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let mut listed: Vec<i32> = procs.lines().filter_map(|p| p.parse().ok()).collect();
        listed.sort_unstable();
        let mut want = pids.clone();
        want.sort_unstable();
        assert_eq!(listed, want, "processes of cgroup {}", dir.display());
    }
    let killer = cell.killer();
    std::thread::spawn(move || killer.kill()).join().unwrap();
    let t = cell.wait().unwrap();
    assert!(t.killed_by_host);
    assert_eq!(t.status, ExitStatus::Signaled(libc::SIGKILL));
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            !uid_line.contains(&HOST_UID_BASE.to_string()[..4]),
            "process {pid} of the cell survived: {uid_line}"
        );
    }
    // Each cgroup is removed, or emptied and kept for a later cell (which may hold it by now:
    // none of this cell's processes is in it).
    for dir in dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        assert!(
            !dir.exists()
                || crate::cgroup::is_kept(&dir)
                || !procs
                    .lines()
                    .any(|p| pids.iter().any(|q| p.trim() == q.to_string())),
            "cgroup {} left behind with the cell's processes",
            dir.display()
        );
    }
    assert_eq!(mount_count(), mounts_before);
}

#[test]
fn memory_past_the_limit_is_refused_or_killed() {
    let mut spec = probe_spec("memory");
    spec.limits.memory_bytes = 64 << 20;
    let mut cell = ProcessCell::spawn(&spec).unwrap();
    let mut ch = cell.channel();
    ch.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    let _ = ch.read_to_end(&mut out);
    let mib = out.iter().filter(|&&b| b == b'+').count() as u64;
    let text = String::from_utf8_lossy(&out).replace('+', "");
    let t = cell.wait().unwrap();
    assert!(!text.contains("unbounded"), "allocation was unbounded");
    let bound = (spec.limits.memory_bytes + Limits::ADDRESS_SPACE_SLACK) >> 20;
    assert!(mib <= bound, "{mib} MiB touched with a {bound} MiB bound");
    let refused = text.starts_with(&format!("errno {}", libc::ENOMEM));
    let oom = t.oom_killed && t.status == ExitStatus::Signaled(libc::SIGKILL);
    assert!(
        refused || oom,
        "neither refused nor OOM-killed: {text:?} {t:?}"
    );
    assert!(!t.killed_by_host);
}

#[test]
fn cpu_past_the_limit_is_killed() {
    let mut spec = probe_spec("cpu");
    spec.limits.cpu_time_ms = 1000;
    let mut cell = ProcessCell::spawn(&spec).unwrap();
    assert_eq!(read_line(&cell), "spinning");
    let t = cell.wait().unwrap();
    assert_eq!(t.status, ExitStatus::Signaled(libc::SIGKILL));
    assert!(!t.killed_by_host);
    assert!(t.crashed());
}

#[test]
fn crash_mid_frame_is_reported_as_a_crash() {
    let mut cell = spawn_probe("crash_mid_frame");
    let mut ch = cell.channel();
    ch.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    ch.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"\x64\x00\x00\x00abc");
    let t = cell.wait().unwrap();
    assert_eq!(t.status, ExitStatus::Signaled(libc::SIGSEGV));
    assert!(t.crashed());
}

#[test]
fn invalid_limits_are_refused() {
    let spec = SpawnSpec {
        limits: Limits {
            memory_bytes: 1,
            ..Limits::default()
        },
        ..SpawnSpec::default()
    };
    assert!(matches!(
        ProcessCell::spawn(&spec),
        Err(Error::InvalidLimit(_))
    ));
}

/// Rootless: the same test binary re-run as an unprivileged user (uid 65534),
/// which has no writable cgroup and must build everything from user namespaces.
#[test]
fn rootless_cells_work_and_missing_layers_fail_closed() {
    if std::env::var_os("CELL_ROOTLESS_CHILD").is_some() {
        return rootless_child();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return rootless_child();
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    let copy = std::env::temp_dir().join(format!("cell-rootless-test-{}", std::process::id()));
    std::fs::copy(&exe, &copy).unwrap();
    let out = std::process::Command::new(&copy)
        .args([
            "--exact",
            "tests::rootless_cells_work_and_missing_layers_fail_closed",
            "--nocapture",
        ])
        .env("CELL_ROOTLESS_CHILD", "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rootless run failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "rootless test did not run:\n{text}"
    );
}

fn rootless_child() {
    let hs = host_support();
    assert!(!hs.rootful);
    let mut cell = ProcessCell::spawn(&probe_spec("ids")).expect("rootless spawn");
    for layer in Layer::ALWAYS {
        assert!(
            cell.layers().get(layer).is_active(),
            "{layer}: {}",
            cell.layers().get(layer)
        );
    }
    assert_eq!(
        read_line(&cell),
        "uid 1000 gid 1000 pid 1 sid 1 capget 0 eff 00 perm 00"
    );
    assert_eq!(cell.wait().unwrap().status, ExitStatus::Exited(0));
    drop(cell);
    assert_probe("open_read", &format!("errno {}", libc::EPERM));
    // No writable cgroup for this user: requiring a memory cgroup fails closed.
    let spec = SpawnSpec {
        require: vec![Layer::CgroupMemory],
        ..SpawnSpec::default()
    };
    match ProcessCell::spawn(&spec) {
        Err(Error::LayerUnavailable {
            layer: Layer::CgroupMemory,
            ..
        }) => {}
        other => panic!("expected a refusal naming cgroup-memory, got {other:?}"),
    }
}

/// Diagnostics, not a test of behaviour: prints where spawn time goes.
/// Run with `cargo test --release --lib spawn_phase_costs -- --ignored --nocapture`.
#[test]
#[ignore]
fn spawn_phase_costs() {
    use std::time::Instant;
    let hs = host_support();
    let mut rows: Vec<(&str, Vec<std::time::Duration>)> = Vec::new();
    let mut cg_t = Vec::new();
    for i in 0..60 {
        let t0 = Instant::now();
        let (mut cg, _) = crate::cgroup::CellCgroups::create(
            &hs.cgroups,
            &format!("diag-{i}"),
            &Limits::default(),
        );
        cg.remove().unwrap();
        cg_t.push(t0.elapsed());
    }
    rows.push(("cgroups create+remove", cg_t));
    for fork_server in [false, true] {
        let spec = SpawnSpec {
            fork_server,
            ..SpawnSpec::default()
        };
        drop(ProcessCell::spawn(&spec).unwrap()); // starts the fork server
        let (mut spawn_t, mut kill_t) = (Vec::new(), Vec::new());
        for _ in 0..60 {
            let t0 = Instant::now();
            let cell = ProcessCell::spawn(&spec).unwrap();
            spawn_t.push(t0.elapsed());
            let t0 = Instant::now();
            drop(cell);
            kill_t.push(t0.elapsed());
        }
        let (s, k) = if fork_server {
            ("spawn (fork server)", "kill+reap (fork server)")
        } else {
            ("spawn (direct)", "kill+reap (direct)")
        };
        rows.push((s, spawn_t));
        rows.push((k, kill_t));
    }
    for (name, v) in &mut rows {
        v.sort();
        println!(
            "{name:<26} median {:?}  p10 {:?}  p90 {:?}",
            v[v.len() / 2],
            v[v.len() / 10],
            v[v.len() * 9 / 10]
        );
    }
}

#[test]
fn cgroups_of_supervisors_that_are_gone_are_swept_and_live_ones_kept() {
    let h = &host_support().cgroups;
    let parents: Vec<&std::path::PathBuf> = [&h.v2, &h.v1_memory, &h.v1_pids, &h.v1_cpu]
        .into_iter()
        .flatten()
        .filter(|p| std::fs::create_dir(p.join("cell-sweep-probe")).is_ok())
        .collect();
    for p in &parents {
        std::fs::remove_dir(p.join("cell-sweep-probe")).unwrap();
    }
    if parents.is_empty() {
        eprintln!("SKIPPED: no writable cgroup hierarchy on this host");
        return;
    }
    // A pid that has certainly ended: a child this test reaped.
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale: Vec<_> = parents
        .iter()
        .map(|p| p.join(format!("cell-{dead}-sweep")))
        .collect();
    let live: Vec<_> = parents
        .iter()
        .map(|p| p.join(format!("cell-{}-sweep", std::process::id())))
        .collect();
    for dir in stale.iter().chain(&live) {
        std::fs::create_dir(dir).unwrap();
    }
    crate::cgroup::sweep_stale(h);
    for dir in &stale {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    for dir in &live {
        assert!(
            dir.exists(),
            "{} of a live supervisor removed",
            dir.display()
        );
        std::fs::remove_dir(dir).unwrap();
    }
}
