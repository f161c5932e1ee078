//! `process` figures beside their floors, measured in the same run, with every
//! confinement layer on: cold cell → first `post(40 + 2)` → close, warm exec and call
//! round trips (unpinned and pinned to one CPU), host memory per idle cell. Floors: a
//! bare fork+exec of the same guest binary, a raw 64-byte socketpair round trip, and
//! `bwrap --unshare-all` starting the same binary (skipped with a note when bwrap is
//! absent).

mod common;

use backend_process::{ProcessBackend, ProcessCell, SpawnSpec, doctor, guest_image};
use cell_supervisor::{Policy, Supervisor};
use common::{Row, fresh_name, memory, pin, print_summary, rss_bytes};
use criterion::BenchmarkId;
use nix::libc;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

const GROUP: &str = "process";

/// The embedded guest, written out once so plain fork+exec and bwrap can start it.
fn guest_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("cell-process-guest-{}", std::process::id()));
    std::fs::write(&path, guest_image()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn bwrap() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("bwrap"))
        .find(|p| p.is_file())
}

/// How long each cold start waits for the previous one's background work to settle.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(4);

/// The echo end of a floor socketpair: a thread, or a forked process.
enum Echo {
    Thread(std::thread::JoinHandle<()>),
    Process(i32),
}

impl Echo {
    fn start(mut end: UnixStream, to_process: bool) -> Echo {
        if !to_process {
            return Echo::Thread(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while end.read_exact(&mut buf).is_ok() {
                    if end.write_all(&buf).is_err() {
                        break;
                    }
                }
            }));
        }
        // SAFETY: the child only makes raw read/write/_exit calls (async-signal-safe)
        // on memory it owns, so forking this multi-threaded process is sound.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                // Keep only the echo end: a copy of the parent's end would hide its EOF.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&end);
                libc::dup2(fd, 3);
                let fd = 3;
                libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
                let mut buf = [0u8; 64];
                loop {
                    let mut got = 0;
                    while got < 64 {
                        let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), 64 - got);
                        if n <= 0 {
                            libc::_exit(0);
                        }
                        got += n as usize;
                    }
                    if libc::write(fd, buf.as_ptr().cast(), 64) != 64 {
                        libc::_exit(0);
                    }
                }
            }
            Echo::Process(pid)
        }
    }

    fn stop(self) {
        match self {
            Echo::Thread(t) => t.join().unwrap(),
            Echo::Process(pid) => {
                // SAFETY: waiting for our own child, which exits on EOF.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
        }
    }
}

fn main() {
    let mut c = common::criterion();
    let supervisor = Supervisor::new();
    supervisor.register_backend(Arc::new(ProcessBackend::new()));
    // The same backend confining a fresh child of the supervisor for every cell.
    let direct = Supervisor::new();
    direct.register_backend(Arc::new(ProcessBackend {
        fork_server: false,
        ..ProcessBackend::new()
    }));
    let policy = Policy::default();
    println!("process layers on this host:\n{}", doctor());
    let guest = guest_file();
    let bwrap = bwrap();
    if bwrap.is_none() {
        println!("NOTE: bwrap not found on PATH: the bubblewrap floor is skipped");
    }
    // Warm the lazily created shared resources (image memfd, netns, Landlock ruleset,
    // the fork server).
    for s in [&supervisor, &direct] {
        s.spawn(&fresh_name(), "process", &policy).unwrap().close();
    }

    let mut engine = rhai::Engine::new_raw();
    engine.register_global_module(rhai::packages::Package::as_shared_module(
        &rhai::packages::StandardPackage::new(),
    ));
    for (suffix, cpu) in [("", None), ("_pinned", Some(0))] {
        pin(cpu);
        let mut g = c.benchmark_group(GROUP);
        g.bench_function(
            BenchmarkId::new(format!("floor_fork_exec{suffix}"), ""),
            |b| {
                b.iter(|| {
                    let status = Command::new(&guest)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap();
                    black_box(status)
                })
            },
        );
        if let Some(bwrap) = &bwrap {
            g.bench_function(BenchmarkId::new(format!("floor_bwrap{suffix}"), ""), |b| {
                b.iter(|| {
                    let status = Command::new(bwrap)
                        .args(["--unshare-all", "--die-with-parent", "--ro-bind"])
                        .arg(&guest)
                        .args(["/guest", "/guest"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap();
                    black_box(status)
                })
            });
        }
        // Floors: a 64-byte round trip over a socketpair to another process (the
        // boundary a cell's channel crosses) and, for scale, to another thread.
        for (id, to_process) in [
            ("floor_socketpair", true),
            ("floor_socketpair_thread", false),
        ] {
            let (mut a, b_end) = UnixStream::pair().unwrap();
            let echo = Echo::start(b_end, to_process);
            let mut buf = [7u8; 64];
            g.bench_function(BenchmarkId::new(format!("{id}{suffix}"), ""), |b| {
                b.iter(|| {
                    a.write_all(&buf).unwrap();
                    a.read_exact(&mut buf).unwrap();
                })
            });
            drop(a);
            echo.stop();
        }
        // What the guest's own engine spends on the same exec, in this process: with the
        // socketpair round trip, the least a warm exec can cost (a sum of two floors).
        g.bench_function(
            BenchmarkId::new(format!("floor_rhai_eval{suffix}"), ""),
            |b| b.iter(|| black_box(engine.eval::<i64>("40 + 2").unwrap())),
        );
        for (id, fork_server) in [("confined_spawn_kill", true), ("direct_spawn_kill", false)] {
            let mut spec = SpawnSpec::default();
            spec.fork_server = fork_server;
            g.bench_function(BenchmarkId::new(format!("{id}{suffix}"), ""), |b| {
                b.iter(|| drop(black_box(ProcessCell::spawn(&spec).unwrap())))
            });
        }
        common::bench_cold_settled(
            &mut g,
            &format!("cold_post_42{suffix}"),
            &supervisor,
            "process",
            &policy,
            SETTLE,
        );
        common::bench_cold(
            &mut g,
            &format!("cold_post_42_back_to_back{suffix}"),
            &supervisor,
            "process",
            &policy,
        );
        common::bench_cold_settled(
            &mut g,
            &format!("direct_cold_post_42{suffix}"),
            &direct,
            "process",
            &policy,
            SETTLE,
        );
        common::bench_warm(&mut g, suffix, &supervisor, "process", &policy);
        g.finish();
    }
    pin(None);
    let script_rows = common::bench_scripts(&supervisor, "process", &policy);

    // Memory: idle cells after their handshake and one exec, all alive at once. The growth of
    // the PSS summed over this process and every process it started (fork server, spares,
    // cells) from the 10th cell to the 30th, per cell: the guest image the cells share is
    // counted once, as it is held once, and cells closed earlier are gone by then. The cells'
    // own PSS summed is printed beside it: it also holds each cell's share of that image,
    // which shrinks as cells are added.
    const CELLS: usize = 30;
    const FIRST: usize = 10;
    let before = memory::children_of(std::process::id());
    let rss0 = rss_bytes();
    let mut tree_at_first = 0;
    let cells: Vec<_> = (0..CELLS)
        .map(|i| {
            if i == FIRST {
                tree_at_first = memory::tree_pss().0;
            }
            let cell = supervisor.spawn(&fresh_name(), "process", &policy).unwrap();
            cell.exec("let x = 1;").unwrap();
            cell
        })
        .collect();
    let per_cell =
        memory::tree_pss().0.saturating_sub(tree_at_first) as f64 / (CELLS - FIRST) as f64 / 1024.0;
    let pids: Vec<u32> = memory::children_of(std::process::id())
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let child_pss: u64 = pids.iter().map(|&p| memory::pss_of(p)).sum();
    let per_child = child_pss as f64 / pids.len().max(1) as f64 / 1024.0;
    let host_side = rss_bytes().saturating_sub(rss0) as f64 / CELLS as f64 / 1024.0;
    for cell in cells {
        cell.close();
    }
    let _ = std::fs::remove_file(&guest);

    c.final_summary();
    let mut rows = script_rows;
    for (suffix, label) in [("", "unpinned"), ("_pinned", "pinned to CPU 0")] {
        for (id, how, target) in [
            ("cold_post_42", "fork server", "≤ 300 µs"),
            (
                "cold_post_42_back_to_back",
                "fork server, back to back",
                "≤ 500 µs",
            ),
            ("direct_cold_post_42", "direct", "< 1.5 ms"),
        ] {
            for (floor_name, floor) in [
                ("bare fork+exec of the guest", "floor_fork_exec"),
                ("bwrap --unshare-all, same binary", "floor_bwrap"),
            ] {
                rows.push(Row::of(
                    GROUP,
                    suffix,
                    format!("cold spawn→post(40+2)→recv→close ({how}), {label}"),
                    id,
                    floor_name,
                    floor,
                    target,
                ));
            }
        }
        for (id, how) in [
            ("confined_spawn_kill", "fork server"),
            ("direct_spawn_kill", "direct"),
        ] {
            rows.push(Row::of(
                GROUP,
                suffix,
                format!("confined spawn (all layers) + kill ({how}), {label}"),
                id,
                "bare fork+exec of the guest",
                "floor_fork_exec",
                "-",
            ));
        }
        for op in ["exec", "call"] {
            rows.push(Row::of(
                GROUP,
                suffix,
                format!("warm {op} round trip, {label}"),
                &format!("warm_{op}"),
                "socketpair round trip to a process",
                "floor_socketpair",
                "≤ 1.2× floor",
            ));
            rows.push(Row::of(
                GROUP,
                suffix,
                format!("warm {op} round trip, {label}"),
                &format!("warm_{op}"),
                "socketpair round trip to a thread",
                "floor_socketpair_thread",
                "-",
            ));
        }
    }
    let mut extra = vec![format!(
        "host memory per idle cell: PSS growth of the whole process tree from {FIRST} to {CELLS} \
         cells {per_cell:.0} KiB (each cell's own PSS {per_child:.0} KiB over {} cells, with its share of \
         the image; supervisor RSS growth {host_side:.0} KiB)   target ≤ 256 KiB",
        pids.len()
    )];
    for (suffix, label) in [("", "unpinned"), ("_pinned", "pinned to CPU 0")] {
        let floor = |id: &str| common::median_ns(GROUP, &format!("{id}{suffix}/"));
        if let (Some(pair), Some(eval), Some(m)) = (
            floor("floor_socketpair"),
            floor("floor_rhai_eval"),
            floor("warm_exec"),
        ) {
            extra.push(format!(
                "warm exec, {label}: {} = {:.2}x the socketpair round trip {} plus the same \
                 eval on a bare engine {} ({})",
                common::fmt_ns(m),
                m / (pair + eval),
                common::fmt_ns(pair),
                common::fmt_ns(eval),
                common::fmt_ns(pair + eval)
            ));
        }
    }
    print_summary("process (every layer on)", &rows, &extra);
}
