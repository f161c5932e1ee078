//! Capacity, verified by hand (ignored by default: it holds thousands of processes):
//! `cargo test -p cell-backend-process --release --lib capacity -- --ignored --nocapture`
//! (`CELL_CAPACITY` sets the number of cells, 5000 by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::HostFrame;
use abi::backend::CellPipe;

use crate::pipe_tests::{Recorder, abi_spec};
use crate::*;

/// Bytes charged to the memory cgroup of process `pid` (v1 or v2).
fn cgroup_memory(pid: i32) -> Option<u64> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()));
    let file = match v1 {
        Some(path) => format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"),
        None => return None,
    };
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore]
fn capacity_holds_thousands_of_live_process_cells() {
    let n: usize = std::env::var("CELL_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // Two descriptors per cell (pidfd, channel): lift the soft limit to the hard one.
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    let spec = abi_spec();
    let backend = ProcessBackend::new();
    let start = |pipes: &mut Vec<ProcessPipe>| {
        let host = Arc::new(Recorder::default());
        let cell = ProcessCell::spawn(&backend.spawn_spec(&spec).unwrap()).expect("spawn");
        let mut pipe = ProcessPipe::new(cell, host, spec.max_frame_len);
        pipe.transact(
            HostFrame::Hello(spec.hello.clone()),
            Some(Instant::now() + Duration::from_secs(30)),
        )
        .expect("handshake");
        pipes.push(pipe);
    };
    let mut pipes = Vec::with_capacity(n + 1);
    start(&mut pipes); // the server runs
    let server = crate::fork_server::test_hooks::server_pid(crate::image::Image::Guest).unwrap();
    let server_before = cgroup_memory(server);
    let available_before = mem_available_kib();
    let t0 = Instant::now();
    for i in 1..n {
        start(&mut pipes);
        if i % 1000 == 0 {
            eprintln!("{i} cells, {:?}", t0.elapsed());
        }
    }
    let elapsed = t0.elapsed();
    let server_after = cgroup_memory(server);
    let available_after = mem_available_kib();
    let sample: Vec<u64> = pipes
        .iter()
        .step_by(50)
        .map(|p| pss_kib(p.cell().pid()))
        .collect();
    let pss = sample.iter().sum::<u64>() / sample.len() as u64;
    // Every cell still answers, and the server still forks.
    for pipe in pipes.iter_mut().step_by(97) {
        pipe.transact(
            HostFrame::Exec {
                id: 1,
                source: "40 + 2".into(),
            },
            Some(Instant::now() + Duration::from_secs(30)),
        )
        .expect("a live cell answers");
    }
    start(&mut pipes);
    assert_eq!(
        crate::fork_server::test_hooks::server_pid(crate::image::Image::Guest),
        Some(server),
        "the fork server was replaced (killed?)"
    );
    let per_cell_server = server_after
        .zip(server_before)
        .map(|(a, b)| a.saturating_sub(b) / (n as u64 - 1));
    println!(
        "{n} live process cells: spawn + handshake {:?} per cell ({elapsed:?} in all); \
         cell PSS {pss} KiB (mean of {} sampled); charged to the fork server's cgroup per cell: \
         {per_cell_server:?} bytes (server cgroup {server_before:?} -> {server_after:?}); \
         host MemAvailable down {} KiB per cell",
        elapsed / (n as u32 - 1),
        sample.len(),
        available_before.saturating_sub(available_after) / (n as u64 - 1),
    );
    for pipe in &mut pipes {
        let _ = pipe.shutdown();
    }
}
