//! Prints where the time of one cell start goes (boot / snapshot / pool), step by step.
use std::time::Instant;

use abi::wire;
use abi::{EngineLimits, GuestFrame, Hello, HostFrame};
use cell_backend_microvm::{Recv, Vm, VmConfig};

const MAX: u32 = wire::DEFAULT_MAX_FRAME_LEN;

fn step(vm: &mut Vm, f: &HostFrame) -> u32 {
    step_d(vm, f, None)
}

fn step_d(vm: &mut Vm, f: &HostFrame, d: Option<Instant>) -> u32 {
    vm.send(&wire::encode(f, MAX).unwrap()).unwrap();
    let mut n = 0;
    loop {
        match vm.recv_body(d, MAX).unwrap() {
            Recv::Frame(b) => {
                n += 1;
                let g: GuestFrame = wire::decode_body(&b).unwrap();
                if matches!(g, GuestFrame::Ready(_) | GuestFrame::Done { .. }) {
                    return n;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Median of each phase of `runs` starts: make the VM, handshake, first exec, warm exec, drop.
fn run(label: &str, runs: usize, make: &dyn Fn() -> Vm) {
    let mut phases: [Vec<f64>; 5] = Default::default();
    for _ in 0..runs {
        let mut t = [Instant::now(); 6];
        let mut vm = make();
        t[1] = Instant::now();
        let hello = HostFrame::Hello(Hello::new("b", EngineLimits::default(), vec![]));
        step(&mut vm, &hello);
        t[2] = Instant::now();
        let exec = |id, source: &str| HostFrame::Exec {
            id,
            source: source.into(),
        };
        step(&mut vm, &exec(1, "post(40 + 2)"));
        t[3] = Instant::now();
        step(&mut vm, &exec(2, "40 + 2"));
        t[4] = Instant::now();
        drop(vm);
        t[5] = Instant::now();
        for (i, p) in phases.iter_mut().enumerate() {
            p.push((t[i + 1] - t[i]).as_secs_f64() * 1e6);
        }
        // Let the reaper destroy the VM before the next start, as on an idle host.
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let [start, hello, first, warm, dropped] = phases.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    });
    println!(
        "{label:>8} (median of {runs}): start {start:>6.0} µs  hello {hello:>6.0} µs  \
         first exec {first:>6.0} µs  warm exec {warm:>5.0} µs  drop {dropped:>5.0} µs"
    );
}

/// Best-of-200 warm exec on one VM, with and without a deadline (the timer's cost).
#[allow(dead_code)]
fn deadline_cost(vm: &mut Vm) {
    let d = Some(Instant::now() + std::time::Duration::from_secs(10));
    let mut best = f64::MAX;
    let mut best_nd = f64::MAX;
    for _ in 0..200 {
        let a = Instant::now();
        step_d(
            vm,
            &HostFrame::Exec {
                id: 3,
                source: "40 + 2".into(),
            },
            d,
        );
        best = best.min(a.elapsed().as_secs_f64() * 1e6);
        let a = Instant::now();
        step_d(
            vm,
            &HostFrame::Exec {
                id: 3,
                source: "40 + 2".into(),
            },
            None,
        );
        best_nd = best_nd.min(a.elapsed().as_secs_f64() * 1e6);
    }
    println!("   warm exec min with deadline {best:.1} µs, without {best_nd:.1} µs");
}

fn floors() {
    use cell_backend_microvm::layout::{MODE_FLOOR, MODE_FLOOR_IN};
    for (name, mode) in [("out", MODE_FLOOR), ("in", MODE_FLOOR_IN)] {
        let mut vm = Vm::boot(&VmConfig::new(16 << 20).with_test_mode(mode)).unwrap();
        vm.floor_exits(100).unwrap();
        let mut v: Vec<f64> = (0..2000)
            .map(|_| {
                let a = Instant::now();
                vm.floor_exits(1).unwrap();
                a.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("floor `{name}` exit: median {:.1} µs", v[1000]);
    }
}

fn main() {
    floors();
    pipe_level();
    let cfg = VmConfig::new(64 << 20);
    let t = Instant::now();
    Vm::prepare_snapshot(&cfg).unwrap();
    println!("template: {:.0} µs", t.elapsed().as_secs_f64() * 1e6);
    let mut vm = Vm::from_snapshot(&cfg).unwrap();
    step(
        &mut vm,
        &HostFrame::Hello(Hello::new("b", EngineLimits::default(), vec![])),
    );
    deadline_cost(&mut vm);
    drop(vm);
    run("cold", 25, &|| Vm::boot(&cfg).unwrap());
    run("fresh", 25, &|| Vm::from_snapshot_unpooled(&cfg).unwrap());
    run("pooled", 25, &|| Vm::from_snapshot(&cfg).unwrap());
}

struct Sink;
impl abi::backend::HostSide for Sink {
    fn on_frame(&self, f: GuestFrame) -> abi::backend::Flow {
        if matches!(f, GuestFrame::Ready(_) | GuestFrame::Done { .. }) {
            abi::backend::Flow::Done
        } else {
            abi::backend::Flow::Continue
        }
    }
}

/// Times warm execs through a [`cell_backend_microvm::MicroVmPipe`] on a snapshot VM (not called
/// from `main`; kept to compare with the step-by-step figures).
#[allow(dead_code)]
pub fn pipe_level() {
    use abi::backend::CellPipe;
    let cfg = VmConfig::new(64 << 20);
    let vm = Vm::from_snapshot(&cfg).unwrap();
    let mut pipe = cell_backend_microvm::MicroVmPipe::new(vm, std::sync::Arc::new(Sink), MAX);
    let d = Some(Instant::now() + std::time::Duration::from_secs(10));
    pipe.transact(
        HostFrame::Hello(Hello::new("b", EngineLimits::default(), vec![])),
        d,
    )
    .unwrap();
    let mut samples = Vec::new();
    for _ in 0..500 {
        let a = Instant::now();
        pipe.transact(
            HostFrame::Exec {
                id: 3,
                source: "40 + 2".into(),
            },
            d,
        )
        .unwrap();
        samples.push(a.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "pipe warm exec median {:.1} µs min {:.1}",
        samples[250], samples[0]
    );
}
