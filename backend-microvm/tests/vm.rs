//! Phase-1 integration tests against real KVM: boot, channel, errors, kill, snapshot, reset.
use std::time::{Duration, Instant};

use abi::wire;
use abi::{EngineLimits, GuestFrame, Hello, HostFrame, Value};
use cell_backend_microvm::layout::*;
use cell_backend_microvm::{Recv, Vm, VmConfig, VmError, kvm_available};

const MEM: u64 = 32 * 1024 * 1024;
const MAX: u32 = wire::DEFAULT_MAX_FRAME_LEN;

fn kvm() -> bool {
    if kvm_available() {
        true
    } else {
        eprintln!("SKIPPED: /dev/kvm absent");
        false
    }
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(20))
}

fn mode(m: u32) -> Vm {
    Vm::boot(&VmConfig::new(MEM).with_test_mode(m)).expect("boot")
}

fn frame(vm: &mut Vm) -> Vec<u8> {
    match vm.recv(deadline()).expect("recv") {
        Recv::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn send(vm: &mut Vm, f: &HostFrame) {
    vm.send(&wire::encode(f, MAX).unwrap()).expect("send");
}

fn next(vm: &mut Vm) -> GuestFrame {
    next_by(vm, deadline())
}

fn next_by(vm: &mut Vm, deadline: Option<Instant>) -> GuestFrame {
    match vm.recv_body(deadline, MAX).expect("recv") {
        Recv::Frame(body) => wire::decode_body(&body).expect("decode"),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn handshake(vm: &mut Vm) {
    handshake_with(vm, EngineLimits::default());
}

fn handshake_with(vm: &mut Vm, limits: EngineLimits) {
    send(vm, &HostFrame::Hello(Hello::new("test", limits, vec![])));
    assert!(matches!(next(vm), GuestFrame::Ready(_)));
}

/// A guest whose scripts may run forever (no operation limit): only the host stops them.
fn unlimited() -> Vm {
    let mut vm = Vm::boot(&VmConfig::new(MEM)).unwrap();
    let limits = EngineLimits {
        max_operations: 0,
        ..EngineLimits::default()
    };
    handshake_with(&mut vm, limits);
    vm
}

/// The VM stopped for good: every later receive says so.
fn assert_dead(vm: &mut Vm) {
    assert!(matches!(
        vm.recv_body(deadline(), MAX),
        Err(VmError::Dead(_))
    ));
}

/// Run `src`; returns the posts it made and its result.
fn exec(vm: &mut Vm, id: u64, src: &str) -> (Vec<Value>, Result<Value, abi::CellError>) {
    exec_by(vm, id, src, deadline())
}

/// [`exec`] with every frame awaited under `deadline`.
fn exec_by(
    vm: &mut Vm,
    id: u64,
    src: &str,
    deadline: Option<Instant>,
) -> (Vec<Value>, Result<Value, abi::CellError>) {
    send(
        vm,
        &HostFrame::Exec {
            id,
            source: src.into(),
        },
    );
    let mut posts = Vec::new();
    loop {
        match next_by(vm, deadline) {
            GuestFrame::Post(v) => posts.push(v),
            GuestFrame::Done { id: got, result } => {
                assert_eq!(got, id);
                return (posts, result);
            }
            _ => {}
        }
    }
}

fn eval(vm: &mut Vm, src: &str) -> Result<Value, abi::CellError> {
    exec(vm, 7, src).1
}

fn idle(vm: &mut Vm) {
    assert_eq!(vm.recv(deadline()).expect("recv"), Recv::Idle);
}

#[test]
fn cold_boot_reaches_engine_and_evaluates() {
    if !kvm() {
        return;
    }
    let mut vm = Vm::boot(&VmConfig::new(MEM)).unwrap();
    idle(&mut vm);
    handshake(&mut vm);
    let (posts, result) = exec(&mut vm, 1, "post(40 + 2); 5");
    assert_eq!(posts, vec![Value::Int(42)]);
    assert_eq!(result, Ok(Value::Int(5)));
    assert_eq!(
        eval(&mut vm, "fn answer() { 42 } answer()"),
        Ok(Value::Int(42))
    );
    assert_eq!(
        eval(&mut vm, "answer() - 1"),
        Ok(Value::Int(41)),
        "functions persist in one cell"
    );
    assert!(eval(&mut vm, "nope(").is_err());
    idle(&mut vm);
}

/// One allocation larger than a growth step (a 12 MB string), then many small ones (40 strings of
/// 100 KB): the heap grows to fit. Needs a string limit over 12 MB.
fn heap_grows(vm: &mut Vm) {
    assert_eq!(
        eval(vm, "let s = \"\"; s.pad(12000000, 'x'); s.len()"),
        Ok(Value::Int(12_000_000))
    );
    assert_eq!(
        eval(
            vm,
            "let a = []; for i in 0..40 { let s = \"\"; s.pad(100000, 'y'); a.push(s); } a.len()"
        ),
        Ok(Value::Int(40))
    );
}

#[test]
fn heap_grows_on_demand_and_a_small_cell_leaves_the_top_of_its_heap_untouched() {
    if !kvm() {
        return;
    }
    let mut vm = Vm::boot(&VmConfig::new(MEM)).unwrap();
    let limits = EngineLimits {
        max_string_len: 16 << 20,
        ..EngineLimits::default()
    };
    send(
        &mut vm,
        &HostFrame::Hello(Hello::new("test", limits, vec![])),
    );
    assert!(matches!(next(&mut vm), GuestFrame::Ready(_)));
    assert_eq!(eval(&mut vm, "40 + 2"), Ok(Value::Int(42)));
    // The heap's top is untouched: nothing resident from 4 MiB above its start up to the
    // channel buffers at the top of RAM.
    let info = vm.boot_info();
    let untouched = info.heap_base + 4 * 1024 * 1024..info.h2g_base;
    let touched: Vec<u64> = vm
        .debug_resident_pages()
        .unwrap()
        .into_iter()
        .filter(|a| untouched.contains(a))
        .collect();
    assert!(
        touched.is_empty(),
        "a small cell touched {} pages at the top of its heap, from {:#x}",
        touched.len(),
        touched[0]
    );
    heap_grows(&mut vm);
}

/// Pages of guest memory `range` resident in the host.
fn resident_in(vm: &Vm, range: std::ops::Range<u64>) -> usize {
    let pages = vm.debug_resident_pages().unwrap();
    pages.into_iter().filter(|a| range.contains(a)).count()
}

#[test]
fn an_idle_cold_vm_gives_back_its_unwritten_heap_and_keeps_what_it_wrote() {
    if !kvm() {
        return;
    }
    let mut vm = Vm::boot(&VmConfig::new(MEM)).unwrap();
    handshake_with(
        &mut vm,
        EngineLimits {
            max_string_len: 16 << 20,
            ..EngineLimits::default()
        },
    );
    assert_eq!(
        eval(
            &mut vm,
            "let keep = \"\"; keep.pad(60000, 'k'); fn twice(x) { 2 * x } keep.len()"
        ),
        Ok(Value::Int(60_000))
    );
    // The huge page holding the heap's start (with the image's `.data` and `.bss`).
    let huge = 2 * 1024 * 1024;
    let start = vm.boot_info().heap_base & !(huge - 1);
    let first = start..start + huge;
    let before = resident_in(&vm, first.clone());
    // Returns once every VM idle now has been idle for the trim's idle time, and visited.
    let (_, trimmed) = cell_backend_microvm::trim::settle();
    let after = resident_in(&vm, first.clone());
    eprintln!(
        "pages of the heap's first huge page resident: {before} before the trim, {after} after"
    );
    if before < 512 {
        eprintln!("SKIPPED: the heap got no huge page here ({before} pages resident)");
    } else {
        assert!(trimmed > 0, "no VM was trimmed");
        assert!(
            after < 256,
            "{after} of 512 pages still resident after the trim"
        );
    }
    // The guest sees the same memory: what it wrote, and zeroes where it wrote nothing.
    assert_eq!(
        eval(
            &mut vm,
            "keep.len() == 60000 && !keep.contains('x') && keep[59999] == 'k' && twice(21) == 42"
        ),
        Ok(Value::Bool(true))
    );
    // And it grows as before.
    heap_grows(&mut vm);
}

#[test]
fn echo_channel_carries_frames_both_ways() {
    if !kvm() {
        return;
    }
    let mut vm = mode(MODE_ECHO);
    for len in [1usize, 7, 4096, 100_000, vm.frame_cap()] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        vm.send(&data).unwrap();
        let mut back = frame(&mut vm);
        back.reverse();
        assert_eq!(back, data, "len {len}");
    }
    // Several frames queued before the guest runs are delivered in order.
    for i in 1..=5u8 {
        vm.send(&[i; 3]).unwrap();
    }
    for i in 1..=5u8 {
        assert_eq!(frame(&mut vm), vec![i; 3]);
    }
    idle(&mut vm);
    let cap = vm.frame_cap();
    assert!(matches!(
        vm.send(&vec![0u8; cap + 1]),
        Err(VmError::HostFrameTooLarge { .. })
    ));
    assert!(matches!(
        vm.send(&[]),
        Err(VmError::HostFrameTooLarge { .. })
    ));
}

fn expect_err(m: u32) -> VmError {
    let mut vm = mode(m);
    let e = match vm.recv(deadline()) {
        Err(e) => e,
        Ok(r) => panic!("mode {m}: expected an error, got {r:?}"),
    };
    // The VM is dead afterwards and says why.
    assert!(matches!(vm.recv(deadline()), Err(VmError::Dead(_))));
    assert!(matches!(vm.send(b"x"), Err(VmError::Dead(_))));
    e
}

#[test]
fn triple_fault_is_reported() {
    if !kvm() {
        return;
    }
    assert_eq!(expect_err(MODE_TRIPLE_FAULT), VmError::TripleFault);
}

#[test]
fn stack_overflow_hits_guard_page() {
    if !kvm() {
        return;
    }
    // Told from other triple faults (the `ud2` one above) by the stack pointer at the guard.
    match expect_err(MODE_STACK_OVERFLOW) {
        VmError::StackOverflow { rsp } => assert!(is_stack_overflow(rsp), "{rsp:#x}"),
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn write_outside_memory_is_reported() {
    if !kvm() {
        return;
    }
    match expect_err(MODE_WRITE_OUTSIDE) {
        VmError::OutsideMemory { addr, write } => {
            assert!(write);
            assert_eq!(addr, MEM + 0x1000);
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn undefined_port_is_reported() {
    if !kvm() {
        return;
    }
    assert_eq!(
        expect_err(MODE_UNDEFINED_PORT),
        VmError::UndefinedPort {
            port: 0x80,
            write: true
        }
    );
}

#[test]
fn absurd_doorbell_length_is_rejected_before_allocation() {
    if !kvm() {
        return;
    }
    match expect_err(MODE_ABSURD_LENGTH) {
        VmError::FrameTooLarge { len, cap } => {
            assert_eq!(len, 0xffff_fff0);
            assert_eq!(cap, cell_backend_microvm::DEFAULT_FRAME_CAP);
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn heap_exhaustion_is_reported() {
    if !kvm() {
        return;
    }
    match expect_err(MODE_HEAP_EXHAUST) {
        VmError::GuestOutOfMemory { requested, limit } => {
            assert!(requested > 0);
            // The limit is the heap: what the RAM holds beside the image, stack and buffers.
            assert_eq!(limit, mode(MODE_HEAP_EXHAUST).heap_size());
            assert!(limit < MEM);
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn guest_panic_message_reaches_host() {
    if !kvm() {
        return;
    }
    match expect_err(MODE_PANIC) {
        VmError::GuestPanic(msg) => assert!(msg.contains("guest panic requested"), "{msg}"),
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn garbage_frames_are_rejected() {
    if !kvm() {
        return;
    }
    // As raw bytes it is within the cap; as a wire frame its prefix is rejected before any
    // allocation of the announced body, and the VM is dead.
    let mut vm = mode(MODE_GARBAGE_FRAME);
    assert_eq!(frame(&mut vm).len(), 200);
    let mut vm = mode(MODE_GARBAGE_FRAME);
    match vm.recv_body(deadline(), MAX) {
        Err(VmError::BadFrame(_)) => {}
        other => panic!("expected a bad frame, got {other:?}"),
    }
    assert_dead(&mut vm);
}

/// Posts are placed without an exit of their own and handed over in batches: every one
/// arrives, in order, before the exec's result, whether the batch ends at the buffer's end or
/// at the result.
#[test]
fn posts_batched_by_the_guest_all_arrive_in_order() {
    if !kvm() {
        return;
    }
    let mut vm = Vm::boot(&VmConfig::new(MEM)).unwrap();
    handshake(&mut vm);
    // 20,000 posts of ~10 bytes overflow the buffer many times over.
    let (posts, result) = exec(&mut vm, 1, "for i in 0..20000 { post(i) } 7");
    assert_eq!(result, Ok(Value::Int(7)));
    assert_eq!(posts, (0..20000).map(Value::Int).collect::<Vec<_>>());
    // Large and small frames mixed: a frame that does not fit after the others goes next time.
    let (posts, _) = exec(
        &mut vm,
        2,
        "for i in 0..50 { post(i); let s = \"x\"; s.pad(100000, 'y'); post(s); } 0",
    );
    assert_eq!(posts.len(), 100);
    for (i, pair) in posts.chunks(2).enumerate() {
        assert_eq!(pair[0], Value::Int(i as i64));
        assert!(matches!(&pair[1], Value::Str(s) if s.len() == 100000));
    }
}

/// A guest that may run forever (no operation limit), already running `src`.
fn running_unlimited(src: &str) -> Vm {
    let mut vm = unlimited();
    send(
        &mut vm,
        &HostFrame::Exec {
            id: 1,
            source: src.into(),
        },
    );
    vm
}

/// A post the guest placed before it was stopped from outside is handed over before the stop:
/// a spinning script's post arrives even though the script never reaches another exit.
#[test]
fn a_post_placed_before_a_stop_is_handed_over_first() {
    if !kvm() {
        return;
    }
    let mut vm = running_unlimited("post(1); loop {}");
    // Under the flush interval or not, the post comes before the deadline's stop.
    let soon = Some(Instant::now() + Duration::from_millis(200));
    let mut got = Vec::new();
    loop {
        match vm.recv_body(soon, MAX).unwrap() {
            Recv::Frame(body) => got.push(wire::decode_body::<GuestFrame>(&body).unwrap()),
            Recv::TimedOut => break,
            Recv::Idle => panic!("the guest is running; got {got:?}"),
        }
    }
    assert_eq!(got, vec![GuestFrame::Post(Value::Int(1))]);
    // The same when the script is killed right after its post: the post, then the kill.
    let mut vm = running_unlimited("post(2); loop {}");
    let killer = vm.killer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        killer.kill();
    });
    assert_eq!(next_by(&mut vm, None), GuestFrame::Post(Value::Int(2)));
    assert_eq!(vm.recv_body(None, MAX), Err(VmError::Killed));
    t.join().unwrap();
    // And when the guest runs out of memory a few operations after its post (well within the
    // flush interval, so the post is still placed, not handed over): the post, then the stop.
    let mut vm = running_unlimited("post(3); let a = []; loop { a.push(blob(100000)); }");
    assert_eq!(next(&mut vm), GuestFrame::Post(Value::Int(3)));
    let second = vm.recv_body(deadline(), MAX);
    assert!(
        matches!(second, Err(VmError::GuestOutOfMemory { .. })),
        "{second:?}"
    );
    assert_dead(&mut vm);
}

/// A frame placed without ringing by a guest that then never exits on its own is taken when
/// the host stops the guest (its deadline here), before the stop is reported: the path a
/// runtime guest's post takes when a stop comes before its flush.
#[test]
fn a_frame_placed_without_ringing_is_taken_at_the_stop() {
    if !kvm() {
        return;
    }
    let mut vm = mode(MODE_PLACE_AND_SPIN);
    let soon = Some(Instant::now() + Duration::from_millis(50));
    assert_eq!(next_by(&mut vm, soon), GuestFrame::Post(Value::Int(1)));
    assert_eq!(vm.recv_body(soon, MAX), Ok(Recv::TimedOut));
    // Resumed, it places nothing more: the taken frame is not handed over twice.
    let later = Some(Instant::now() + Duration::from_millis(50));
    assert_eq!(vm.recv_body(later, MAX), Ok(Recv::TimedOut));
}

/// A batch whose second frame announces more than any cap: the first frame is handed over,
/// then the VM stops with a wire error, before anything is allocated for the second.
#[test]
fn a_batch_with_a_bad_frame_hands_over_the_good_one_then_stops() {
    if !kvm() {
        return;
    }
    let mut vm = mode(MODE_BATCH_GARBAGE);
    assert_eq!(next(&mut vm), GuestFrame::Post(Value::Int(1)));
    let second = vm.recv_body(deadline(), MAX);
    assert!(
        matches!(
            second,
            Err(VmError::BadFrame(wire::WireError::TooLarge { .. }))
        ),
        "{second:?}"
    );
    assert_dead(&mut vm);
}

/// A guest that claims to have placed an absurd number of bytes and never rings is stopped
/// at the next stop from outside (here its deadline) with a typed error, nothing read.
#[test]
fn an_absurd_count_placed_without_ringing_is_refused_at_the_next_stop() {
    if !kvm() {
        return;
    }
    let mut vm = mode(MODE_PLACE_ABSURD);
    let r = vm.recv_body(Some(Instant::now() + Duration::from_millis(50)), MAX);
    assert!(
        matches!(
            r,
            Err(VmError::FrameTooLarge {
                len: 0xffff_fff0,
                ..
            })
        ),
        "{r:?}"
    );
    assert_dead(&mut vm);
}

#[test]
fn deadline_pauses_a_spinning_guest_and_kill_stops_it() {
    if !kvm() {
        return;
    }
    let mut vm = mode(MODE_SPIN);
    let r = vm
        .recv(Some(Instant::now() + Duration::from_millis(50)))
        .unwrap();
    assert_eq!(r, Recv::TimedOut);
    // Still alive: it can be resumed, and times out again.
    let r = vm
        .recv(Some(Instant::now() + Duration::from_millis(20)))
        .unwrap();
    assert_eq!(r, Recv::TimedOut);
    // Kill from another thread while the vCPU spins on this one (no deadline at all).
    let killer = vm.killer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        killer.kill();
    });
    assert_eq!(vm.recv(None), Err(VmError::Killed));
    t.join().unwrap();
    assert!(vm.recv(None).is_err());
}

#[test]
fn deadlines_of_vms_on_different_threads_are_independent() {
    if !kvm() {
        return;
    }
    // A later deadline set first on another thread does not hide an earlier one set after it.
    let far = std::thread::spawn(|| {
        let mut vm = mode(MODE_SPIN);
        vm.recv(Some(Instant::now() + Duration::from_millis(400)))
    });
    let mut near = mode(MODE_SPIN);
    let r = near.recv(Some(Instant::now() + Duration::from_millis(30)));
    assert_eq!(r, Ok(Recv::TimedOut));
    assert_eq!(far.join().unwrap(), Ok(Recv::TimedOut));
}

#[test]
fn a_call_that_finishes_in_time_never_times_out_while_deadlines_move_forward() {
    if !kvm() {
        return;
    }
    // Each call's deadline is later than the last: the watchdog wakes at stale deadlines and
    // must not stop a call whose own deadline has not passed.
    let mut vm = Vm::boot(&VmConfig::new(MEM)).unwrap();
    handshake(&mut vm);
    let period = Duration::from_millis(150);
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < 3 * period || calls < 100 {
        let d = Some(Instant::now() + period);
        assert_eq!(
            exec_by(&mut vm, calls, "40 + 2", d),
            (vec![], Ok(Value::Int(42)))
        );
        calls += 1;
    }
}

#[test]
fn frames_a_guest_never_takes_are_bounded() {
    if !kvm() {
        return;
    }
    // One frame waits in the buffer, a bounded number in the host queue, then the VM fails.
    let mut vm = mode(MODE_SPIN);
    let results: Vec<_> = (0..100).map(|_| vm.send(&[1, 2, 3])).collect();
    let accepted = results.iter().take_while(|r| r.is_ok()).count();
    assert!((2..100).contains(&accepted), "accepted {accepted}");
    assert!(matches!(
        results[accepted],
        Err(VmError::Backpressure { .. })
    ));
    assert!(vm.send(&[1]).is_err());
}

#[test]
fn kill_before_run_is_observed() {
    if !kvm() {
        return;
    }
    let mut vm = mode(MODE_SPIN);
    vm.killer().kill();
    assert_eq!(vm.recv(None), Err(VmError::Killed));
}

#[test]
fn other_cells_keep_working_after_a_fault() {
    if !kvm() {
        return;
    }
    let mut good = Vm::boot(&VmConfig::new(MEM)).unwrap();
    handshake(&mut good);
    let _ = expect_err(MODE_TRIPLE_FAULT);
    let _ = expect_err(MODE_HEAP_EXHAUST);
    assert_eq!(eval(&mut good, "6 * 7"), Ok(Value::Int(42)));
}

#[test]
fn memory_quota_is_validated() {
    if !kvm() {
        return;
    }
    assert!(matches!(
        Vm::boot(&VmConfig::new(1024 * 1024)),
        Err(VmError::Config(_))
    ));
    assert!(matches!(
        Vm::boot(&VmConfig::new(MEM + 1)),
        Err(VmError::Config(_))
    ));
    assert!(matches!(
        Vm::boot(&VmConfig::new(
            cell_backend_microvm::MAX_MEM_SIZE + (1 << 30)
        )),
        Err(VmError::Config(_))
    ));
    // The heap is what remains of the quota: a bigger quota means a bigger heap.
    let small = Vm::boot(&VmConfig::new(16 << 20)).unwrap();
    let big = Vm::boot(&VmConfig::new(64 << 20)).unwrap();
    assert_eq!(big.heap_size() - small.heap_size(), 48 << 20);
}

#[test]
fn snapshot_start_evaluates() {
    if !kvm() {
        return;
    }
    let cfg = VmConfig::new(24 << 20);
    let mut vm = Vm::from_snapshot(&cfg).unwrap();
    handshake(&mut vm);
    assert_eq!(eval(&mut vm, "40 + 2"), Ok(Value::Int(42)));
    assert!(!Vm::from_snapshot_unpooled(&cfg).unwrap().is_reused());
    let mut vm2 = Vm::from_snapshot_unpooled(&cfg).unwrap();
    handshake(&mut vm2);
    assert_eq!(eval(&mut vm2, "20 + 22"), Ok(Value::Int(42)));
}

#[test]
fn pooled_reset_leaves_no_state_behind() {
    if !kvm() {
        return;
    }
    // A size no other test uses, so the pool is ours.
    let cfg = VmConfig::new(26 << 20);
    let info;
    {
        let mut a = Vm::from_snapshot(&cfg).unwrap();
        info = a.boot_info();
        handshake(&mut a);
        assert_eq!(
            eval(&mut a, "fn secret() { 1234 } secret()"),
            Ok(Value::Int(1234))
        );
        assert_eq!(eval(&mut a, "secret() + 1"), Ok(Value::Int(1235)));
        idle(&mut a);
        // The guest will not run again: scribble over its heap and buffer from the host side.
        a.debug_write(info.heap_base + 4096, &[0xab; 4096]).unwrap();
        a.debug_write(info.h2g_base, b"previous cell data").unwrap();
    } // returned to the pool
    let (mut b, _ahead) = reused_start(&cfg);
    // Byte for byte, the reused VM's memory equals the pristine snapshot (a new VM that never ran).
    let pristine = Vm::from_snapshot_unpooled(&cfg).unwrap();
    let size = cfg.mem_size as usize;
    let (mut got, mut want) = (vec![0u8; size], vec![0u8; size]);
    b.debug_read(0, &mut got).unwrap();
    pristine.debug_read(0, &mut want).unwrap();
    let first_diff = got.iter().zip(&want).position(|(x, y)| x != y);
    assert_eq!(
        first_diff, None,
        "reset left bytes of the previous cell behind"
    );
    drop(pristine);
    let mut buf = [0u8; 4096];
    b.debug_read(info.heap_base + 4096, &mut buf).unwrap();
    assert_ne!(buf, [0xab; 4096], "heap page reverted to the snapshot");
    let mut buf = [0u8; 18];
    b.debug_read(info.h2g_base, &mut buf).unwrap();
    assert_ne!(&buf, b"previous cell data");
    handshake(&mut b);
    let r = eval(&mut b, "secret()");
    assert!(r.is_err(), "function of the previous cell leaked: {r:?}");
    assert_eq!(eval(&mut b, "40 + 2"), Ok(Value::Int(42)));
}

/// Starts until one takes a reset VM of an earlier cell: VMs built ahead of demand (the pool
/// builds them once a start found it empty) may come first; they are kept alive (returned) so
/// that each start takes another.
fn reused_start(cfg: &VmConfig) -> (Vm, Vec<Vm>) {
    let mut ahead = Vec::new();
    loop {
        let vm = Vm::from_snapshot(cfg).unwrap();
        if vm.is_reused() {
            return (vm, ahead);
        }
        assert!(
            !vm.is_fresh(),
            "a start built a VM while a reset one was waiting"
        );
        assert!(ahead.len() < 16, "the earlier cell's VM never came back");
        ahead.push(vm);
    }
}

/// Cells closed and started from several threads at once: each VM is reset by the reset thread
/// or by the start that takes it, never both, and every cell sees only its own state.
#[test]
fn concurrent_starts_and_closes_share_the_pool_safely() {
    if !kvm() {
        return;
    }
    let cfg = VmConfig::new(30 << 20); // a size no other test uses: the pool is ours
    let reused: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4i64)
            .map(|t| {
                let cfg = &cfg;
                s.spawn(move || {
                    let mut reused = 0;
                    for i in 0..15i64 {
                        let mut vm = Vm::from_snapshot(cfg).unwrap();
                        reused += usize::from(!vm.is_fresh());
                        handshake(&mut vm);
                        let r = eval(&mut vm, "if is_def_var(\"mine\") { -1 } else { 0 }");
                        assert_eq!(r, Ok(Value::Int(0)), "a variable of a previous cell leaked");
                        let v = t * 100 + i;
                        assert_eq!(
                            eval(&mut vm, &format!("let mine = {v}; mine")),
                            Ok(Value::Int(v))
                        );
                        // The variable lives on in this cell: the check above could see it.
                        assert_eq!(eval(&mut vm, "mine"), Ok(Value::Int(v)));
                    }
                    reused
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(reused >= 40, "only {reused} of 60 starts took a pooled VM");
}

#[test]
fn floor_guest_exits_and_resumes() {
    if !kvm() {
        return;
    }
    for m in [MODE_FLOOR, MODE_FLOOR_IN] {
        let mut vm = mode(m);
        vm.floor_exits(100).unwrap();
    }
    // Anywhere else the floor port is undefined: the runtime guest never uses it.
    let mut vm = mode(MODE_FLOOR);
    assert_eq!(
        vm.recv(deadline()),
        Err(VmError::UndefinedPort {
            port: PORT_NOP,
            write: true
        })
    );
}

#[test]
fn a_vm_whose_page_tables_were_written_is_not_reused() {
    if !kvm() {
        return;
    }
    let cfg = VmConfig::new(22 << 20); // a size no other test uses: the pool is ours
    {
        let mut a = Vm::from_snapshot(&cfg).unwrap();
        handshake(&mut a);
        // Clear the writable bit of one page-table entry, as a guest rewriting its page tables
        // would (the guest does not run again, so nothing faults).
        let mut pte = [0u8; 8];
        a.debug_read(PT_ADDR + 8, &mut pte).unwrap();
        pte[0] &= !2;
        a.debug_write(PT_ADDR + 8, &pte).unwrap();
    }
    let mut b = Vm::from_snapshot(&cfg).unwrap();
    assert!(
        !b.is_reused(),
        "a VM with written page tables must be replaced, not reset"
    );
    handshake(&mut b);
    assert_eq!(eval(&mut b, "40 + 2"), Ok(Value::Int(42)));
    drop(b);
    let (c, _ahead) = reused_start(&cfg);
    assert!(c.is_reused(), "a healthy VM is reused");
}
