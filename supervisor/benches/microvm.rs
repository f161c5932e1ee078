//! `microvm` figures beside their floor, measured in the same run: the floors are a raw
//! `KVM_CREATE_VM` and a bare `out` exit round trip on a minimal guest; the figures are cold
//! cell → first `post(40 + 2)` (cold boot, from the snapshot in a new VM, from the snapshot in a
//! pooled reset VM), warm exec and call round trips (unpinned and pinned to one CPU), and host
//! memory per idle cell. This host's KVM is PVM (software virtualization; the guest runs at CPL3).

mod common;

use backend_microvm::layout::MODE_FLOOR;
use backend_microvm::{
    MicroVm, StartMode, Vm, VmConfig, bench_create_vm, bench_create_vm_vcpu, kvm_available,
};
use cell_supervisor::{Map, Policy, Supervisor, Value};
use common::memory::{mem_available, pss_of};
use common::{Row, fresh_name, pin, print_summary, rss_bytes};
use criterion::BenchmarkId;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: &str = "microvm";

/// Proportional set size of this process, in bytes (guest memory is mapped here).
fn pss_bytes() -> u64 {
    pss_of(std::process::id())
}

/// How long each settled pooled start waits for the previous cell's VM to be reset.
const SETTLE: Duration = Duration::from_millis(1);

fn main() {
    if !kvm_available() {
        eprintln!("SKIPPED: /dev/kvm absent: no microvm benchmark");
        return;
    }
    let mut c = common::criterion();
    let supervisor = Supervisor::new();
    supervisor.register_backend(Arc::new(MicroVm::new()));
    let backends = [
        ("microvm-cold", StartMode::Cold),
        ("microvm-fresh", StartMode::SnapshotFresh),
        ("microvm-hosted", StartMode::Hosted),
    ];
    for (name, start) in backends {
        let backend = MicroVm::with_start(start);
        supervisor.register_backend(Arc::new(Named(name, backend)));
    }
    let policy = Policy::default();
    // Build the snapshot template before measuring (once per process).
    supervisor
        .spawn(&fresh_name(), "microvm", &policy)
        .unwrap()
        .close();

    for (suffix, cpu) in [("", None), ("_pinned", Some(0))] {
        pin(cpu);
        let mut g = c.benchmark_group(GROUP);
        g.bench_function(
            BenchmarkId::new(format!("floor_create_vm{suffix}"), ""),
            |b| b.iter(|| bench_create_vm().unwrap()),
        );
        // The least a start in a new VM pays before its first instruction: the VM and its
        // vCPU (teardown left out, as the backend's reaper thread takes it off the path).
        g.bench_function(BenchmarkId::new(format!("floor_new_vm{suffix}"), ""), |b| {
            b.iter_with_large_drop(|| bench_create_vm_vcpu().unwrap())
        });
        let mut floor = Vm::boot(&VmConfig::new(16 << 20).with_test_mode(MODE_FLOOR)).unwrap();
        g.bench_function(
            BenchmarkId::new(format!("floor_out_exit{suffix}"), ""),
            |b| b.iter(|| floor.floor_exits(1).unwrap()),
        );
        drop(floor);
        // A pooled start after a pause (the reset thread has reset the last cell's VM, as for
        // any start that is not one of thousands back to back), and back to back.
        common::bench_cold_settled(
            &mut g,
            &format!("snapshot_pooled_post_42{suffix}"),
            &supervisor,
            "microvm",
            &policy,
            SETTLE,
        );
        for (id, backend) in [
            ("cold_post_42", "microvm-cold"),
            ("snapshot_fresh_post_42", "microvm-fresh"),
            ("snapshot_pooled_post_42_back_to_back", "microvm"),
        ] {
            common::bench_cold(
                &mut g,
                &format!("{id}{suffix}"),
                &supervisor,
                backend,
                &policy,
            );
        }
        common::bench_warm(&mut g, suffix, &supervisor, "microvm", &policy);
        // The same exec through the backend contract alone (no supervisor), for comparison.
        let mut pipe = backend_pipe();
        g.bench_function(
            BenchmarkId::new(format!("pipe_warm_exec{suffix}"), ""),
            |b| {
                b.iter(|| {
                    pipe.transact(
                        abi::HostFrame::Exec {
                            id: 1,
                            source: "40 + 2".into(),
                        },
                        Some(Instant::now() + Duration::from_secs(10)),
                    )
                    .unwrap()
                })
            },
        );
        drop(pipe);
        g.finish();
    }
    pin(None);
    let script_rows = common::bench_scripts(&supervisor, "microvm", &policy);

    // Memory: idle cells after their handshake and one exec, all alive at once (so none shares a
    // pooled VM), growth per cell: (RSS, PSS, MemAvailable drop) in KiB.
    const CELLS: usize = 40;
    // Cold cells are measured twice: at once, and once idle for the trim's idle time (their heap's
    // unwritten pages given back, `backend_microvm::trim`).
    let idle_memory = |backend: &str, settle: bool| {
        let (rss0, pss0, avail0) = (rss_bytes(), pss_bytes(), mem_available());
        let cells: Vec<_> = (0..CELLS)
            .map(|_| {
                let cell = supervisor.spawn(&fresh_name(), backend, &policy).unwrap();
                cell.exec("let x = 1;").unwrap();
                cell
            })
            .collect();
        let per = |now: u64, before: u64| now.saturating_sub(before) as f64 / CELLS as f64 / 1024.0;
        let grown = || {
            (
                per(rss_bytes(), rss0),
                per(pss_bytes(), pss0),
                avail0.saturating_sub(mem_available()) as f64 / CELLS as f64 / 1024.0,
            )
        };
        let at_once = grown();
        // Once idle, also the first exec after the trim against one before it (medians over
        // the cells, µs): the trimmed pages cost KVM faults again.
        let exec_each = || {
            let times = cells.iter().map(|cell| {
                let t = Instant::now();
                cell.exec("let y = 2;").unwrap();
                t.elapsed().as_nanos() as f64 / 1e3
            });
            common::median(times.collect())
        };
        let idle = settle.then(|| {
            let before = exec_each();
            backend_microvm::trim::settle();
            let memory = grown();
            (memory, before, exec_each())
        });
        for cell in cells {
            cell.close();
        }
        (at_once, idle)
    };
    // The pool's reset thread is still copying back the pages the script rows' cells dirtied
    // (megabytes each); measured while it worked, the PSS growth per cell came out 2.3x higher.
    std::thread::sleep(Duration::from_secs(2));
    let ((rss, pss, sys), _) = idle_memory("microvm-fresh", false);

    // The same ratio measured interleaved in one loop (robust against a noisy, shared machine):
    // one bare `out` exit, one warm exec, one warm call, repeated.
    let warm = supervisor.spawn(&fresh_name(), "microvm", &policy).unwrap();
    warm.exec("fn add(a, b) { a + b }").unwrap();
    // A cell in a VM host process: the same exit plus a socket round trip to the host.
    let hosted = supervisor
        .spawn(&fresh_name(), "microvm-hosted", &policy)
        .unwrap();
    let mut floor = Vm::boot(&VmConfig::new(16 << 20).with_test_mode(MODE_FLOOR)).unwrap();
    // The guest image (from IMAGE_BASE up to the heap); a cold VM maps its whole 2 MiB pages
    // from a file shared by the process's cold VMs (where the host maps it in huge pages) and
    // copies the rest.
    let image_kib = (floor.boot_info().heap_base - backend_microvm::layout::IMAGE_BASE) / 1024;
    let (mut f, mut e, mut k, mut h) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3000 {
        let t = Instant::now();
        floor.floor_exits(1).unwrap();
        f.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        black_box(warm.exec("40 + 2").unwrap());
        e.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        black_box(
            warm.call("add", vec![Value::Int(40), Value::Int(2)], Map::new())
                .unwrap(),
        );
        k.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        black_box(hosted.exec("40 + 2").unwrap());
        h.push(t.elapsed().as_nanos() as f64);
    }
    warm.close();
    hosted.close();
    // Cold cells share the image's first 2 MiB (one file's page cache) and have the rest of it
    // and their heap in a transparent huge page of their own: PSS is the per-cell cost (RSS counts
    // the shared pages whole in every cell). Measured last: destroying 40 VMs keeps the reaper
    // thread busy for a while.
    let ((cold_rss, cold_pss, cold_sys), trimmed) = idle_memory("microvm-cold", true);
    let ((trim_rss, trim_pss, trim_sys), exec_untrimmed, exec_trimmed) =
        trimmed.unwrap_or_default();
    let (f, e, k, h) = (
        common::median(f),
        common::median(e),
        common::median(k),
        common::median(h),
    );

    c.final_summary();
    let mut rows = script_rows;
    for (suffix, label) in [("", "unpinned"), ("_pinned", "pinned to CPU 0")] {
        for (fig, key, target) in [
            (
                "cold boot spawn→post(40+2)→recv→close",
                "cold_post_42",
                "≤ 1 ms",
            ),
            (
                "snapshot (new VM) spawn→post(40+2)→close",
                "snapshot_fresh_post_42",
                "≤ 500 µs",
            ),
            (
                "snapshot (pooled VM) spawn→post(40+2)→close",
                "snapshot_pooled_post_42",
                "≤ 100 µs",
            ),
            (
                "snapshot (pooled VM), back to back",
                "snapshot_pooled_post_42_back_to_back",
                "≤ 100 µs",
            ),
        ] {
            rows.push(Row::of(
                GROUP,
                suffix,
                format!("{fig}, {label}"),
                key,
                "raw KVM_CREATE_VM",
                "floor_create_vm",
                target,
            ));
            // A new VM (cold or from the snapshot) also pays its vCPU; a pooled one reuses both.
            if !key.starts_with("snapshot_pooled") {
                rows.push(Row::of(
                    GROUP,
                    suffix,
                    format!("{fig}, {label}"),
                    key,
                    "KVM_CREATE_VM + KVM_CREATE_VCPU",
                    "floor_new_vm",
                    target,
                ));
            } else {
                rows.push(Row::of(
                    GROUP,
                    suffix,
                    format!("{fig}, {label}"),
                    key,
                    "bare `out` exit round trip",
                    "floor_out_exit",
                    target,
                ));
            }
        }
        for op in ["exec", "call"] {
            rows.push(Row::of(
                GROUP,
                suffix,
                format!("warm {op} round trip, {label}"),
                &format!("warm_{op}"),
                "bare `out` exit round trip",
                "floor_out_exit",
                "≤ 2× floor",
            ));
        }
        rows.push(Row::of(
            GROUP,
            suffix,
            format!("warm exec, backend contract only, {label}"),
            "pipe_warm_exec",
            "bare `out` exit round trip",
            "floor_out_exit",
            "(diagnostic)",
        ));
    }
    print_summary(
        "microvm (KVM here is PVM: guest at CPL3)",
        &rows,
        &[
            format!(
                "interleaved in one loop (3000 rounds, unpinned): bare `out` exit {:.1} µs, warm exec {:.1} µs ({:.2}x), warm call {:.1} µs ({:.2}x)   target ≤ 2x",
                f / 1e3,
                e / 1e3,
                e / f,
                k / 1e3,
                k / f
            ),
            format!(
                "interleaved in the same loop: warm exec of a cell in a VM host process {:.1} µs ({:.2}x the exit, {:.2}x the in-process exec)   target ≤ 2x",
                h / 1e3,
                h / f,
                h / e
            ),
            format!(
                "host memory per idle cell ({CELLS} cells from the snapshot): RSS {rss:.0} KiB, PSS {pss:.0} KiB, \
             MemAvailable drop (incl. kernel KVM memory) {sys:.0} KiB   target < 8 MiB"
            ),
            format!(
                "host memory per cold-booted cell ({CELLS} cells) right after its exec: PSS {cold_pss:.0} KiB (RSS {cold_rss:.0} KiB, \
             counting the shared image pages whole in each), MemAvailable drop (incl. kernel KVM memory) \
             {cold_sys:.0} KiB; the guest image is {image_kib} KiB, its first 2 MiB shared"
            ),
            format!(
                "host memory per idle cold-booted cell ({CELLS} cells, idle {:.0} s: the heap's unwritten pages given back): \
             PSS {trim_pss:.0} KiB (RSS {trim_rss:.0} KiB), MemAvailable drop (incl. kernel KVM memory) {trim_sys:.0} KiB   target ≤ 1 MiB",
                backend_microvm::trim::IDLE.as_secs_f64()
            ),
            format!(
                "the first exec of those cells after the trim: {exec_trimmed:.1} µs (median of {CELLS}; the exec before it {exec_untrimmed:.1} µs)"
            ),
        ],
    );
}

/// Accepts every guest frame; a transaction ends at Ready or Done.
struct Sink;

impl abi::backend::HostSide for Sink {
    fn on_frame(&self, frame: abi::GuestFrame) -> abi::backend::Flow {
        match frame {
            abi::GuestFrame::Ready(_) | abi::GuestFrame::Done { .. } => abi::backend::Flow::Done,
            _ => abi::backend::Flow::Continue,
        }
    }
}

/// A microvm cell driven directly through `abi::backend`, after its handshake.
fn backend_pipe() -> Box<dyn abi::backend::CellPipe> {
    use abi::backend::Backend;
    let spec = abi::backend::SpawnSpec {
        hello: abi::Hello::new("pipe", abi::EngineLimits::default(), vec![]),
        resources: abi::backend::Resources::default(),
        max_frame_len: abi::wire::DEFAULT_MAX_FRAME_LEN,
        required_layers: vec![],
    };
    let mut pipe = MicroVm::new().spawn(&spec, Arc::new(Sink)).unwrap();
    pipe.transact(abi::HostFrame::Hello(spec.hello.clone()), None)
        .unwrap();
    pipe
}

/// Registers a [`MicroVm`] variant under another name so the bench can compare start modes.
struct Named(&'static str, MicroVm);

impl abi::backend::Backend for Named {
    fn name(&self) -> &str {
        self.0
    }
    fn available(&self) -> Result<(), String> {
        self.1.available()
    }
    fn spawn(
        &self,
        spec: &abi::backend::SpawnSpec,
        host: Arc<dyn abi::backend::HostSide>,
    ) -> Result<Box<dyn abi::backend::CellPipe>, abi::backend::SpawnError> {
        self.1.spawn(spec, host)
    }
}
