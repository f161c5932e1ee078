//! A soak: several threads at once spawn cells, run exec/call/post/request cycles on them and end
//! them in turn by closing, by killing, and by killing an exec while it runs, while the host's
//! threads, child processes, file descriptors, cell cgroup directories and resident memory are
//! measured. What a cell ends must be released: after a warm-up round, none may keep growing.

use crate::driver::{RecvError, TestCell};
use crate::{Harness, Setup};
use abi::{ErrorCode, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// What the host holds at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Threads of this process (entries in `/proc/self/task`).
    pub threads: usize,
    /// Child processes of this process, zombies included (`/proc/self/task/*/children`).
    pub children: usize,
    /// Open file descriptors (entries in `/proc/self/fd`).
    pub fds: usize,
    /// Cell cgroup directories this process made (`cell-<pid>-<n>`, the process backend's
    /// naming) in its own cgroup of every mounted hierarchy.
    pub cgroups: usize,
    /// Resident anonymous memory in bytes (`RssAnon`): the heap and every private page. Not the
    /// whole resident set, which counts a shared file page once per mapping: each microVM maps
    /// its snapshot's 2 MiB file pages, so the resident set moved by megabytes with how many
    /// VMs the pool happened to hold when it was read, for no memory of the machine's.
    pub anon_bytes: u64,
}

fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn children() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .map(|pids| pids.split_whitespace().count())
                .unwrap_or(0)
        })
        .sum()
}

/// This process's own directory in every mounted cgroup hierarchy (v2 and each v1 one).
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
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
        // `/proc/self/cgroup`: `id:controllers:path`, the v2 line with no controllers.
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match fstype {
                "cgroup2" => controllers.is_empty(),
                "cgroup" => controllers
                    .split(',')
                    .any(|c| !c.is_empty() && opts.split(',').any(|o| o == c)),
                _ => false,
            };
            matches.then_some(path)
        });
        if let Some(path) = path {
            let rel = path.strip_prefix(root).unwrap_or(path);
            dirs.push(PathBuf::from(mount_point).join(rel.trim_start_matches('/')));
        }
    }
    dirs
}

fn cell_cgroups() -> usize {
    let prefix = format!("cell-{}-", std::process::id());
    own_cgroup_dirs()
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count()
}

impl Usage {
    /// This process's usage now (Linux `/proc` and the cgroup file systems).
    pub fn now() -> Usage {
        let anon_kib: u64 = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("RssAnon:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        Usage {
            threads: entries("/proc/self/task"),
            children: children(),
            fds: entries("/proc/self/fd"),
            cgroups: cell_cgroups(),
            anon_bytes: anon_kib * 1024,
        }
    }
}

/// How much a soak does.
#[derive(Clone, Copy, Debug)]
pub struct SoakPlan {
    /// Threads spawning and ending cells at once.
    pub threads: u32,
    /// Cells each thread spawns and ends after the warm-up round.
    pub cells_per_thread: u32,
    /// Cells each thread spawns and ends in the warm-up round (pools, caches, lazily started
    /// threads fill up there), before the first measurement.
    pub warm_up_per_thread: u32,
    /// exec/call cycles on each cell before it is ended.
    pub cycles_per_cell: u32,
}

/// What a soak saw.
#[derive(Clone, Debug)]
pub struct SoakReport {
    /// Cells spawned, warm-up included.
    pub cells: u32,
    /// exec/call cycles run.
    pub cycles: u32,
    /// Cells closed.
    pub closed: u32,
    /// Cells killed between transactions.
    pub killed: u32,
    /// Cells killed while an exec ran (the exec returned `cancelled`).
    pub killed_running: u32,
    /// After the warm-up round, with its threads joined.
    pub before: Usage,
    /// At the end, with every soak thread joined.
    pub after: Usage,
}

fn soak_setup() -> Setup {
    let mut setup = Setup::default().with_rules_toml(
        r#"
        [[grants]]
        capability = "random"
        actions = ["int"]
        "#,
    );
    // A cell killed during an exec runs a loop that only the kill ends: no operation limit,
    // and a wall time far past any kill (it would end the exec `timed_out`, not `cancelled`).
    setup.limits.max_operations = 0;
    setup.wall_time = Some(Duration::from_secs(120));
    setup
}

/// One cycle on `cell`: an exec that posts, logs, measures and asks the broker, a call, and
/// every event received. Panics on any unexpected answer.
fn cycle(cell: &TestCell, i: u32) {
    let v = cell
        .exec(&format!(
            r#"post({i}); log("info", "cycle", #{{i: {i}}}); metric("cycle", {i}.0); request("random", "int", #{{min: 1, max: 1}}) + {i}"#
        ))
        .expect("exec");
    assert_eq!(v, Value::Int(i64::from(i) + 1));
    let v = cell
        .call("twice", vec![Value::Int(i64::from(i))], Map::new())
        .expect("call");
    assert_eq!(v, Value::Int(2 * i64::from(i)));
    for _ in 0..3 {
        cell.recv(None).expect("event");
    }
}

/// How a cell is ended.
#[derive(Clone, Copy, Debug)]
enum End {
    Close,
    Kill,
    KillRunning,
}

#[derive(Default)]
struct Counts {
    cells: AtomicU32,
    cycles: AtomicU32,
    closed: AtomicU32,
    killed: AtomicU32,
    killed_running: AtomicU32,
}

/// Kills `cell` while an exec runs on it: the exec posts, then loops until killed; the kill
/// follows the post's arrival, and the exec must come back `cancelled`.
fn kill_running(cell: &TestCell) {
    std::thread::scope(|s| {
        let running = s.spawn(|| cell.exec("post(\"running\"); loop { }"));
        match cell.recv(None) {
            Ok(_) => {}
            Err(RecvError::Closed(e)) => panic!("the cell died before its loop ran: {e:?}"),
            Err(RecvError::Timeout) => unreachable!("recv without a timeout timed out"),
        }
        cell.kill();
        let result = running.join().expect("the exec thread");
        match result {
            Err(e) if e.code == ErrorCode::Cancelled => {}
            other => panic!("an exec killed while running returned {other:?}"),
        }
    });
}

fn one_cell(h: &Harness, name: &str, end: End, cycles: u32, counts: &Counts) {
    let cell = h.spawn(name, &soak_setup());
    cell.exec("fn twice(x) { x * 2 }").expect("define");
    for i in 0..cycles {
        cycle(&cell, i);
    }
    match end {
        End::Close => {
            cell.close();
            counts.closed.fetch_add(1, Ordering::Relaxed);
        }
        End::Kill => {
            cell.kill();
            counts.killed.fetch_add(1, Ordering::Relaxed);
        }
        End::KillRunning => {
            kill_running(&cell);
            counts.killed_running.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(cell);
    counts.cells.fetch_add(1, Ordering::Relaxed);
    counts.cycles.fetch_add(cycles, Ordering::Relaxed);
}

/// `threads` threads at once, each spawning and ending `cells` cells (closed, killed, killed
/// mid-exec, in turn); returns when every thread is joined.
fn round(h: &Harness, round: &str, plan: &SoakPlan, cells: u32, counts: &Counts) {
    std::thread::scope(|s| {
        for t in 0..plan.threads {
            s.spawn(move || {
                for c in 0..cells {
                    let end = [End::Close, End::Kill, End::KillRunning][((t + c) % 3) as usize];
                    let name = format!("soak-{round}-{t}-{c}");
                    one_cell(h, &name, end, plan.cycles_per_cell, counts);
                }
            });
        }
    });
}

/// Runs `plan` on the harness's backend: a warm-up round, a measurement, the soak rounds, and a
/// measurement once every thread is joined and every cell ended.
pub fn soak(h: &Harness, plan: SoakPlan) -> SoakReport {
    let counts = Counts::default();
    round(h, "warm", &plan, plan.warm_up_per_thread, &counts);
    let before = Usage::now();
    round(h, "soak", &plan, plan.cells_per_thread, &counts);
    let after = Usage::now();
    SoakReport {
        cells: counts.cells.into_inner(),
        cycles: counts.cycles.into_inner(),
        closed: counts.closed.into_inner(),
        killed: counts.killed.into_inner(),
        killed_running: counts.killed_running.into_inner(),
        before,
        after,
    }
}
