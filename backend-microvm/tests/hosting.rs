//! VM hosts: cells whose VMs live in helper processes. Where cells go (the supervisor's share,
//! then hosts of a bounded size), that a hosted cell answers exactly as a local one (hostile
//! guests included), and that a host's death is a typed error for its cells only.
//!
//! The tests take one lock: hosts and the count of local cells are per process, and each test
//! asserts where its own cells went.
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use abi::backend::{Backend, CellPipe, PipeError};
use abi::{ErrorCode, GuestFrame, HostFrame, Value};
use cell_backend_microvm::layout::*;
use cell_backend_microvm::{MicroVm, MicroVmPipe, StartMode};
use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn started(backend: &MicroVm) -> (MicroVmPipe, Arc<Recorder>) {
    let host = Arc::new(Recorder::default());
    let mut pipe = backend.spawn_pipe(&spec(), host.clone()).expect("spawn");
    pipe.transact(HostFrame::Hello(spec().hello), soon())
        .expect("handshake");
    (pipe, host)
}

fn exec(pipe: &mut MicroVmPipe, host: &Recorder, source: &str) -> Result<Value, PipeError> {
    pipe.transact(
        HostFrame::Exec {
            id: 1,
            source: source.into(),
        },
        soon(),
    )?;
    match host.last() {
        Some(GuestFrame::Done { result, .. }) => Ok(result.expect("the script ran")),
        other => panic!("no result: {other:?}"),
    }
}

#[test]
fn past_its_share_the_default_start_puts_cells_in_hosts_of_bounded_size() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let backend = MicroVm::new().with_hosting(2, 3);
    let mut cells: Vec<_> = (0..8).map(|_| started(&backend)).collect();
    let places: Vec<Option<u32>> = cells.iter().map(|(p, _)| p.host_pid()).collect();
    assert_eq!(
        places[..2],
        [None, None],
        "the first two stay in this process"
    );
    // Every cell reports its usage wherever it lives; only a hosted cell can end between
    // transactions (its host killed).
    for (pipe, _) in &cells {
        let probe = pipe.usage().expect("every microvm cell has a usage probe");
        assert!(probe.memory_bytes().is_some() && probe.cpu_time().is_some());
        assert!(!probe.ended());
    }
    let mut per_host: HashMap<u32, usize> = HashMap::new();
    for pid in places[2..].iter() {
        *per_host
            .entry(pid.expect("past the share, a cell is hosted"))
            .or_default() += 1;
    }
    assert!(per_host.values().all(|&n| n <= 3), "{per_host:?}");
    assert!(
        per_host.len() >= 2,
        "six hosted cells need two hosts of three"
    );
    let children = cell_backend_microvm::host_children();
    for pid in per_host.keys() {
        assert!(children.contains(pid), "{pid} is not a child: {children:?}");
        assert_ne!(*pid, std::process::id());
    }
    // Every cell keeps its own state, wherever it lives.
    for (i, (pipe, host)) in cells.iter_mut().enumerate() {
        exec(pipe, host, &format!("let x = {i};")).unwrap();
    }
    for (i, (pipe, host)) in cells.iter_mut().enumerate() {
        assert_eq!(
            exec(pipe, host, "x * 10 + 2").unwrap(),
            Value::Int(i as i64 * 10 + 2)
        );
    }
    // Closed cells make room: every emptied host but one ends (the one stays for the next burst)
    // and new cells go to the one that stays.
    let ours: Vec<u32> = per_host.keys().copied().collect();
    let pidfds: Vec<_> = ours.iter().map(|&pid| pidfd(pid)).collect();
    drop(cells);
    let ended = exits(&pidfds, ours.len() - 1);
    assert_eq!(ended.len(), ours.len() - 1, "emptied hosts end, but one");
    let survivor = ours
        .iter()
        .enumerate()
        .find(|(i, _)| !ended.contains(i))
        .map(|(_, pid)| *pid)
        .unwrap();
    let backend = MicroVm::hosted().with_hosting(0, 3);
    let again: Vec<_> = (0..3).map(|_| started(&backend)).collect();
    for (pipe, _) in &again {
        assert_eq!(pipe.host_pid(), Some(survivor), "no host was added");
    }
}

/// A pidfd of `pid` (a process not yet reaped).
fn pidfd(pid: u32) -> std::os::fd::OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just returned to us, owned from here on.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

/// Waits (at most 30 s, woken by each exit) until `want` of the processes behind `fds` have
/// ended; returns the indexes of those that did.
fn exits(fds: &[std::os::fd::OwnedFd], want: usize) -> Vec<usize> {
    use std::os::fd::AsRawFd;
    let end = Instant::now() + Duration::from_secs(30);
    let mut ended = Vec::new();
    while ended.len() < want {
        // Only those still running: an ended one stays readable.
        let waiting: Vec<usize> = (0..fds.len()).filter(|i| !ended.contains(i)).collect();
        let mut polled: Vec<libc::pollfd> = waiting
            .iter()
            .map(|&i| libc::pollfd {
                fd: fds[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let left = end.saturating_duration_since(Instant::now()).as_millis() as i32;
        // SAFETY: a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as _, left) };
        if n <= 0 {
            break;
        }
        for (p, &i) in polled.iter().zip(&waiting) {
            if p.revents & libc::POLLIN != 0 {
                ended.push(i);
            }
        }
    }
    ended
}

/// The outcome of a hostile guest's handshake and of one more transaction after it.
fn hostile_outcome(backend: &MicroVm) -> (String, ErrorCode, String) {
    let mut pipe = backend
        .spawn(&spec(), Arc::new(Recorder::default()))
        .expect("spawn");
    // A deadline ends the guest that places an absurd count and never rings.
    let first = pipe
        .transact(
            HostFrame::Hello(spec().hello),
            Some(Instant::now() + Duration::from_secs(1)),
        )
        .expect_err("a hostile guest cannot complete a handshake");
    let then = pipe
        .transact(
            HostFrame::Exec {
                id: 1,
                source: "1".into(),
            },
            soon(),
        )
        .expect_err("a stopped VM stays stopped");
    (
        first.to_string(),
        first.to_cell_error().code,
        then.to_string(),
    )
}

#[test]
fn a_hosted_hostile_guest_gives_the_answer_a_local_one_gives() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    for mode in [
        MODE_TRIPLE_FAULT,
        MODE_WRITE_OUTSIDE,
        MODE_HEAP_EXHAUST,
        MODE_GARBAGE_FRAME,
        MODE_ABSURD_LENGTH,
        MODE_UNDEFINED_PORT,
        MODE_PANIC,
        MODE_STACK_OVERFLOW,
        MODE_BATCH_GARBAGE,
        MODE_PLACE_ABSURD,
    ] {
        let local = hostile_outcome(&MicroVm::with_test_mode(mode));
        let hosted = hostile_outcome(&MicroVm::with_test_mode(mode).started(StartMode::Hosted));
        assert_eq!(hosted, local, "mode {mode}");
    }
    // A spinning guest: the deadline, then a kill, as in this process.
    let mut pipe = MicroVm::with_test_mode(MODE_SPIN)
        .started(StartMode::Hosted)
        .spawn_pipe(&spec(), Arc::new(Recorder::default()))
        .unwrap();
    assert!(pipe.host_pid().is_some());
    let r = pipe.transact(
        HostFrame::Hello(spec().hello),
        Some(Instant::now() + Duration::from_millis(50)),
    );
    assert!(matches!(r, Err(PipeError::TimedOut)), "{r:?}");
    let killer = pipe.killer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        killer.kill();
    });
    // Resumes the spin with no deadline: only the kill ends it.
    let r = pipe.transact(HostFrame::Shutdown, None);
    t.join().unwrap();
    assert!(matches!(r, Err(PipeError::Killed)), "{r:?}");
}

#[test]
fn a_dead_host_is_a_typed_error_for_its_cells_and_is_replaced() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let backend = MicroVm::hosted().with_hosting(0, 2);
    let (mut a, ha) = started(&backend);
    let (mut b, hb) = started(&backend);
    let (mut c, hc) = started(&backend);
    let victim = a.host_pid().unwrap();
    assert_eq!(b.host_pid(), Some(victim));
    assert_ne!(c.host_pid(), Some(victim));
    let probes = [&a, &b, &c].map(|p| p.usage().expect("a hosted cell has a probe"));
    assert!(probes.iter().all(|p| !p.ended()), "all hosts are alive");
    // SAFETY: pidfd_open of our own child, which is not reaped yet (its pid is not reused).
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, victim as i32, 0) } as i32;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a plain kill(2) of the same child.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    // Its exit is told through the pidfd once its descriptors are closed (the kernel closes
    // them first); bounded, as a SIGKILL makes the exit certain.
    let mut fd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the pidfd is closed right after.
    let ready = unsafe { libc::poll(&mut fd, 1, 10_000) };
    assert_eq!(ready, 1, "the host exited");
    // SAFETY: our own descriptor, used no more.
    unsafe { libc::close(pidfd) };
    // Between transactions, before any exec fails: the cells of the dead host are seen ended,
    // the other host's is not.
    assert_eq!(probes.each_ref().map(|p| p.ended()), [true, true, false]);
    for (pipe, host) in [(&mut a, &ha), (&mut b, &hb)] {
        let e = exec(pipe, host, "1").expect_err("its host is dead");
        assert!(
            matches!(e, PipeError::Crashed(ref m) if m.contains("VM host")),
            "{e:?}"
        );
        assert_eq!(e.to_cell_error().code, ErrorCode::CellCrashed);
        // Kill and interrupt of a cell whose host is gone do nothing harmful.
        pipe.killer().kill();
        pipe.interrupter().unwrap().interrupt();
    }
    // The other host's cell is untouched, and a new cell lands in a live host.
    assert_eq!(exec(&mut c, &hc, "6 * 7").unwrap(), Value::Int(42));
    let (mut d, hd) = started(&backend);
    assert_ne!(d.host_pid(), Some(victim));
    assert_eq!(exec(&mut d, &hd, "6 * 7").unwrap(), Value::Int(42));
    // A cell this process killed did not end on its own.
    let probe = d.usage().unwrap();
    d.killer().kill();
    assert!(!probe.ended(), "a kill is not an end on its own");
    assert!(!probes[2].ended());
    drop((a, b));
    assert!(
        !cell_backend_microvm::host_children().contains(&victim),
        "the dead host was reaped"
    );
}

/// What a cell's usage probe says: the live heap bytes of its guest and the CPU time of its
/// vCPU, the same in a VM host as in this process.
fn usage_through(pipe: &mut MicroVmPipe, host: &Recorder) {
    let probe = pipe.usage().expect("a microvm cell has a usage probe");
    let heap = |p: &dyn abi::backend::UsageProbe| p.memory_bytes().expect("the heap is counted");
    let start = heap(&*probe);
    assert!(start > 0, "the engine itself lives on the heap");
    assert!(start < spec().resources.memory_bytes, "{start}");
    // Four strings of a million bytes kept in the cell's state are counted, and given back
    // when dropped.
    let keep = "let big = []; for i in 0..4 { let s = \"y\"; s.pad(1000000, 'y'); big.push(s); }";
    exec(pipe, host, keep).unwrap();
    let held = heap(&*probe);
    assert!(held >= start + 4_000_000, "{start} -> {held}");
    exec(pipe, host, "big = ();").unwrap();
    let after = heap(&*probe);
    assert!(after < held - 3_000_000, "{held} -> {after}");
    // Work in the guest is CPU time; a cell that does none adds little.
    let before = probe.cpu_time().unwrap();
    exec(pipe, host, "let s = 0; for i in 0..300000 { s += i; } s").unwrap();
    let used = probe.cpu_time().unwrap();
    assert!(used > before, "{before:?} -> {used:?}");
    assert!(
        used - before >= Duration::from_millis(1),
        "300,000 rounds of a loop in the guest: {:?}",
        used - before
    );
}

#[test]
fn a_cells_heap_and_cpu_time_are_reported_in_this_process_and_in_a_host() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let (mut local, hl) = started(&MicroVm::new().with_hosting(1, 4));
    assert_eq!(local.host_pid(), None);
    usage_through(&mut local, &hl);
    let (mut hosted, hh) = started(&MicroVm::hosted().with_hosting(0, 4));
    assert!(hosted.host_pid().is_some());
    usage_through(&mut hosted, &hh);
    // Once closed, a cell's VM memory is no longer its own: nothing is read from it.
    for mut pipe in [local, hosted] {
        let probe = pipe.usage().unwrap();
        pipe.shutdown().unwrap();
        drop(pipe);
        assert_eq!(probe.memory_bytes(), None);
        assert!(
            probe.cpu_time().unwrap() > Duration::ZERO,
            "the total stays"
        );
    }
}

#[test]
fn a_cells_heap_and_cpu_time_move_while_its_exec_runs() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let (mut pipe, _host) = started(&MicroVm::new().with_hosting(1, 4));
    let probe = pipe.usage().expect("a microvm cell has a usage probe");
    let killer = pipe.killer();
    let (heap_before, cpu_before) = (probe.memory_bytes().unwrap(), probe.cpu_time().unwrap());
    // About 4 MB of strings, then a loop that never ends by itself.
    let running = std::thread::spawn(move || {
        let source = r#"let a = []; for i in 0..40 { let s = ""; s.pad(100000, "x"); a.push(s); }
            let n = 0; loop { n += 1 }"#;
        pipe.transact(
            HostFrame::Exec {
                id: 1,
                source: source.into(),
            },
            soon(),
        )
    });
    // The guest publishes its heap count every 4,096 operations and the running vCPU's clock is
    // read live, so both move before the exec ends (no event says when: the reads are repeated
    // until they do, within the cell's own hang guard).
    let give_up = Instant::now() + Duration::from_secs(50);
    loop {
        let heap = probe.memory_bytes().unwrap_or(0);
        let cpu = probe.cpu_time().unwrap();
        if heap >= heap_before + 4_000_000 && cpu >= cpu_before + Duration::from_millis(50) {
            eprintln!("while running: heap {heap} bytes (from {heap_before}), CPU {cpu:?}");
            break;
        }
        assert!(
            Instant::now() < give_up,
            "heap {heap} (from {heap_before}), CPU {cpu:?}: not seen moving"
        );
        std::thread::yield_now();
    }
    assert!(
        !running.is_finished(),
        "the figures were read while the exec ran"
    );
    killer.kill();
    assert!(
        running.join().unwrap().is_err(),
        "the endless exec ends killed"
    );
}

#[test]
fn concurrent_spawns_from_many_threads_respect_the_host_bound() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let backend = Arc::new(MicroVm::hosted().with_hosting(0, 4));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let backend = backend.clone();
            std::thread::spawn(move || {
                (0..4)
                    .map(|i| {
                        let (mut pipe, host) = started(&backend);
                        let v = exec(&mut pipe, &host, &format!("{t} * 100 + {i}")).unwrap();
                        assert_eq!(v, Value::Int(t * 100 + i));
                        pipe
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let pipes: Vec<MicroVmPipe> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut per_host: HashMap<u32, usize> = HashMap::new();
    for p in &pipes {
        *per_host.entry(p.host_pid().unwrap()).or_default() += 1;
    }
    assert!(per_host.values().all(|&n| n <= 4), "{per_host:?}");
    assert_eq!(per_host.values().sum::<usize>(), 24);
}

/// The child half of `hosts_end_with_their_supervisor`: a supervisor holding a hosted cell, which
/// prints its host's pid and waits to be killed.
#[test]
#[ignore = "run by hosts_end_with_their_supervisor as a child process"]
fn supervisor_child() {
    if std::env::var_os("CELL_TEST_SUPERVISOR_CHILD").is_none() {
        return;
    }
    let (pipe, _) = started(&MicroVm::hosted());
    println!("host {}", pipe.host_pid().unwrap());
    let mut line = String::new();
    // Blocks until the parent kills this process.
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn hosts_end_with_their_supervisor() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    if !kvm() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "supervisor_child", "--ignored", "--nocapture"])
        .env("CELL_TEST_SUPERVISOR_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let host: u32 = out
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("host ").and_then(|p| p.parse().ok()))
        .expect("the child names its VM host");
    let watch = pidfd(host);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        exits(&[watch], 1),
        vec![0],
        "the VM host {host} outlived its supervisor"
    );
}

#[test]
fn an_executable_that_cannot_host_keeps_the_default_start_in_this_process() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    // `true` exits at once: it never says hello, as a binary without this crate would not.
    let backend = MicroVm::new()
        .with_hosting(0, 4)
        .with_host_executable("/bin/true");
    let mut cells: Vec<_> = (0..3).map(|_| started(&backend)).collect();
    for (pipe, host) in cells.iter_mut() {
        assert_eq!(pipe.host_pid(), None);
        assert_eq!(exec(pipe, host, "6 * 7").unwrap(), Value::Int(42));
    }
    let refused = MicroVm::hosted()
        .with_host_executable("/bin/true")
        .spawn(&spec(), Arc::new(Recorder::default()));
    match refused {
        Err(abi::backend::SpawnError::Other(why)) => {
            assert!(
                why.contains("/bin/true") && why.contains("VM host"),
                "{why}"
            )
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a hosted cell needs a host"),
    }
}

#[test]
fn a_host_runs_without_privileges() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let (mut pipe, host) = started(&MicroVm::hosted());
    let pid = pipe.host_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "a seccomp filter is installed");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(field("Uid"), "65534 65534 65534 65534");
        assert_eq!(field("Gid"), "65534 65534 65534 65534");
        assert_eq!(field("Groups"), "");
    }
    // Confined, it still runs its cells.
    assert_eq!(exec(&mut pipe, &host, "6 * 7").unwrap(), Value::Int(42));
}

/// Rounds of many cells started and closed: descriptors do not grow with the rounds and the
/// hosts a round needed end again (all but the one kept idle).
#[test]
fn rounds_of_cells_leave_no_descriptors_or_hosts_behind() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let backend = MicroVm::new().with_hosting(4, 4);
    let mut after_first = None;
    for round in 0..3 {
        let mut cells: Vec<_> = (0..20).map(|_| started(&backend)).collect();
        for (i, (pipe, host)) in cells.iter_mut().enumerate() {
            assert_eq!(
                exec(pipe, host, &format!("{i} + 1")).unwrap(),
                Value::Int(i as i64 + 1)
            );
        }
        let hosts: Vec<u32> = {
            let mut pids: Vec<u32> = cells.iter().filter_map(|(p, _)| p.host_pid()).collect();
            pids.sort_unstable();
            pids.dedup();
            pids
        };
        assert!(
            hosts.len() >= 4,
            "16 hosted cells need four hosts of four: {hosts:?}"
        );
        let watch: Vec<_> = hosts.iter().map(|&pid| pidfd(pid)).collect();
        drop(cells);
        assert_eq!(
            exits(&watch, hosts.len() - 1).len(),
            hosts.len() - 1,
            "round {round}: emptied hosts end but one"
        );
        let now = fds();
        let first = *after_first.get_or_insert(now);
        // Pooled VMs hold descriptors too; a leak per cell would add 20 or more a round.
        assert!(
            now <= first + 8,
            "round {round}: {now} descriptors, {first} after the first"
        );
    }
}

/// Interrupts its cell's transaction when the script posts (from inside the transaction).
#[derive(Default)]
struct InterruptOnPost {
    frames: Recorder,
    interrupter: std::sync::OnceLock<Arc<dyn abi::backend::Interrupter>>,
}

impl abi::backend::HostSide for InterruptOnPost {
    fn on_frame(&self, frame: GuestFrame) -> abi::backend::Flow {
        if matches!(frame, GuestFrame::Post(_)) {
            self.interrupter.get().unwrap().interrupt();
        }
        self.frames.on_frame(frame)
    }
}

/// An interrupt while a hosted cell is idle cancels nothing, however its record and the next
/// request race to the host (a CI run saw the next exec interrupted before transactions were
/// numbered); one during a transaction cancels that transaction only.
#[test]
fn an_idle_interrupt_never_reaches_the_next_hosted_transaction() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let host = Arc::new(InterruptOnPost::default());
    let mut pipe = MicroVm::hosted().spawn_pipe(&spec(), host.clone()).unwrap();
    pipe.transact(HostFrame::Hello(spec().hello), soon())
        .unwrap();
    let interrupter = pipe.interrupter().unwrap();
    assert!(host.interrupter.set(interrupter.clone()).is_ok());
    for i in 0..300 {
        interrupter.interrupt();
        assert_eq!(
            exec(&mut pipe, &host.frames, &format!("{i}")).unwrap(),
            Value::Int(i)
        );
    }
    // The post reaches the host side while the loop runs; its interrupt stops the loop.
    let stopped = pipe.transact(
        HostFrame::Exec {
            id: 2,
            source: "post(1); loop {}".into(),
        },
        soon(),
    );
    assert!(
        stopped.is_ok(),
        "the interrupt is the script's error: {stopped:?}"
    );
    assert!(
        matches!(host.frames.last(), Some(GuestFrame::Done { result: Err(ref e), .. }) if e.code == ErrorCode::Cancelled),
        "{:?}",
        host.frames.last()
    );
    assert_eq!(exec(&mut pipe, &host.frames, "7").unwrap(), Value::Int(7));
}

/// A kill ends the wait for a host's answer even when the host gives none (here it is stopped
/// with SIGSTOP, as a hung or hostile host would be), and the host, once it runs again, survives
/// answering on the socket the kill shut (its other cell still answers). Before, the kill
/// returned only once the host ran again.
#[test]
fn a_kill_does_not_wait_for_a_host_that_never_answers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    if !kvm() {
        return;
    }
    let _serial = serial();
    let backend = MicroVm::hosted().with_hosting(0, 2);
    let (mut spinner, _) = started(&backend);
    let (mut other, other_host) = started(&backend);
    let pid = spinner.host_pid().unwrap();
    assert_eq!(other.host_pid(), Some(pid));
    let killer = spinner.killer();
    let resumed = Arc::new(AtomicBool::new(false));
    let guard = {
        let resumed = resumed.clone();
        std::thread::spawn(move || {
            // Let the spin start, stop the host, kill the cell; resume the host only later (a
            // bound on this test should the kill wait for the host).
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: plain kill(2) of our own child host, not yet reaped.
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
            killer.kill();
            std::thread::sleep(Duration::from_secs(5));
            resumed.store(true, Ordering::SeqCst);
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        })
    };
    let r = spinner.transact(
        HostFrame::Exec {
            id: 1,
            source: "loop {}".into(),
        },
        None,
    );
    assert!(matches!(r, Err(PipeError::Killed)), "{r:?}");
    assert!(
        !resumed.load(Ordering::SeqCst),
        "the kill returned only once the host ran again"
    );
    drop(spinner);
    guard.join().unwrap();
    assert_eq!(
        exec(&mut other, &other_host, "6 * 7").unwrap(),
        Value::Int(42)
    );
    assert_eq!(other.host_pid(), Some(pid), "the same host, still alive");
}

/// A host that never answers (stopped with SIGSTOP, as a hung or hostile host would be) cannot
/// hold a transaction past its deadline: the supervisor stops waiting a moment after it, and the
/// cell ends timed out as after any deadline. Before, the exec waited for the host for ever.
#[test]
fn a_host_that_never_answers_cannot_hold_an_exec_past_its_deadline() {
    if !kvm() {
        return;
    }
    let _serial = serial();
    let backend = MicroVm::hosted().with_hosting(0, 2);
    let (mut stuck, _) = started(&backend);
    let pid = stuck.host_pid().unwrap();
    // SAFETY: plain kill(2) of our own child host, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let r = stuck.transact(
        HostFrame::Exec {
            id: 1,
            source: "40 + 2".into(),
        },
        Some(std::time::Instant::now() + Duration::from_millis(200)),
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(matches!(r, Err(PipeError::TimedOut)), "{r:?}");
}

/// A host being started (here an executable that never says hello, as a hung one would not)
/// holds up neither a spawn into a host with room nor a close. Before, the start held the host
/// list's lock for as long as it waited (up to the 30 s hello bound).
#[test]
fn a_host_start_under_way_holds_up_no_other_spawn_or_close() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !kvm() {
        return;
    }
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cell-hang-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hang = dir.join("hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let working = MicroVm::hosted().with_hosting(0, 8);
    let (first, _) = started(&working);
    let hung = MicroVm::hosted().with_host_executable(&hang);
    let returned = Arc::new(AtomicBool::new(false));
    let waiter = {
        let returned = returned.clone();
        std::thread::spawn(move || {
            let r = hung.spawn_pipe(&spec(), Arc::new(Recorder::default()));
            returned.store(true, Ordering::SeqCst);
            r.map(drop)
        })
    };
    // The hung start is under way once its process runs.
    let sleeper = loop {
        if let Some(pid) = cell_backend_microvm::children_named("sleep").first() {
            break *pid;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (mut second, second_host) = started(&working);
    assert_eq!(
        exec(&mut second, &second_host, "6 * 7").unwrap(),
        Value::Int(42)
    );
    drop(first);
    drop(second);
    assert!(
        !returned.load(Ordering::SeqCst),
        "the hung start ended first: the spawn and the close waited for it"
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(sleeper as i32, libc::SIGKILL) };
    assert!(
        waiter.join().unwrap().is_err(),
        "a host that never said hello"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
