//! `memory_mib` on subinterp cells, with the accounting allocator installed as a program using
//! this backend installs it: a cell past its limit is stopped and gone with the code and words
//! the other backends give, and the host's heap does not grow past the limit because of it.

mod common;

use abi::backend::{Backend, Resources};
use abi::{EngineLimits, ErrorCode};
use cell_backend_subinterp::{AccountingAllocator, Subinterp, memory};
use common::spawn;

#[global_allocator]
static ALLOCATOR: AccountingAllocator = AccountingAllocator;

/// Size limits off: only `memory_mib` stands between the script and the host's memory.
fn limited(memory_mib: u64) -> common::TestCell {
    let limits = EngineLimits {
        max_operations: 0,
        max_string_len: 0,
        max_array_len: 0,
        max_map_len: 0,
        ..EngineLimits::default()
    };
    spawn(
        limits,
        Resources {
            memory_bytes: memory_mib << 20,
            ..Resources::default()
        },
    )
}

/// The test program's resident set.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn the_allocator_is_seen_and_the_layer_is_active() {
    assert!(memory::installed());
    let layers = Subinterp.host_layers();
    let layer = layers
        .iter()
        .find(|l| l.name == "memory-accounting")
        .expect("the layer is listed");
    assert!(layer.active, "{layer:?}");
}

#[test]
fn doubling_a_string_is_stopped_at_the_limit_and_the_cell_is_gone() {
    let mut c = limited(32);
    let e = c
        .exec(r#"let s = "0123456789abcdef"; loop { s += s; }"#)
        .expect_err("doubling forever cannot finish");
    assert_eq!(e.code, ErrorCode::LimitMemory, "{e}");
    assert_eq!(e.message, "the cell ran out of memory: its limit is 32 MiB");
    assert!(!c.alive(), "a cell past its memory is gone");
}

#[test]
fn many_small_blocks_are_counted_as_well_as_one_large_one() {
    let mut c = limited(24);
    let before = resident_bytes();
    let e = c
        .exec(r#"let a = []; loop { a.push(`item ${a.len()}`); }"#)
        .expect_err("growing forever cannot finish");
    assert_eq!(e.code, ErrorCode::LimitMemory, "{e}");
    // Stopped near the limit, not gigabytes later (the machine's memory is the only other bound).
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 256 << 20, "the host grew by {} MiB", grown >> 20);
}

#[test]
fn padding_with_copies_of_a_collection_is_stopped_near_the_limit() {
    // One native call made every copy: 1,000 copies of a 1.6 MB array grew the host by 1.6 GB
    // for a 24 MiB cell before the next operation saw the limit.
    let mut c = limited(24);
    let before = resident_bytes();
    let e = c
        .exec(
            "let a = []; for i in 0..100 { a.push(i) } let b = []; for i in 0..1000 { b.push(a) }
             let c = []; c.pad(1000, b); c.len()",
        )
        .expect_err("1.6 GB of copies cannot fit in 24 MiB");
    assert_eq!(e.code, ErrorCode::LimitMemory, "{e}");
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 256 << 20, "the host grew by {} MiB", grown >> 20);
}

#[test]
fn state_kept_across_execs_adds_up_to_the_limit() {
    let mut c = limited(16);
    c.exec("let kept = [];").unwrap();
    let mut rounds = 0;
    let e = loop {
        match c.exec(r#"let s = "x"; for j in 0..18 { s += s; } kept.push(s); kept.len()"#) {
            Ok(_) => rounds += 1,
            Err(e) => break e,
        }
        assert!(rounds < 1000, "256 MiB kept and no limit came");
    };
    assert_eq!(e.code, ErrorCode::LimitMemory, "{e}");
    // 16 MiB holds about 64 strings of 256 KiB, less the engine itself.
    assert!((40..=64).contains(&rounds), "{rounds} rounds");
}

#[test]
fn memory_given_back_is_not_charged_again() {
    let mut c = limited(16);
    // 256 MiB allocated over the exec, never more than 1 MiB at a time.
    let r = c.exec(
        r#"let n = 0; for i in 0..256 { let s = "x"; for j in 0..20 { s += s; } n += s.len; } n"#,
    );
    assert_eq!(r, Ok(abi::Value::Int(256 * 1048576)));
    assert!(c.alive());
}

#[test]
fn a_cell_without_a_limit_is_only_counted() {
    let mut c = limited(0);
    let r = c.exec(r#"let s = "x"; for j in 0..26 { s += s; } s.len"#);
    assert_eq!(r, Ok(abi::Value::Int(64 << 20)));
}

#[test]
fn the_usage_probe_reads_the_cell_heap_live() {
    let mut c = limited(64);
    let probe = c.pipe.usage().expect("subinterp has a usage probe");
    let idle = probe
        .memory_bytes()
        .expect("counted with the allocator installed");
    assert!(idle > 1024, "an engine takes more than 1 KiB: {idle}");
    c.exec(r#"let kept = "x"; for j in 0..22 { kept += kept; }"#)
        .unwrap();
    let holding = probe.memory_bytes().unwrap();
    assert!(holding >= idle + (4 << 20), "{idle} -> {holding}");
    c.exec(r#"kept = "";"#).unwrap();
    let after = probe.memory_bytes().unwrap();
    assert!(after < idle + (1 << 20), "given back: {idle} -> {after}");
    assert!(probe.cpu_time().is_some());
}

#[test]
fn blocks_that_outlive_their_account_are_refunded_on_any_thread() {
    let account = memory::Account::new(0);
    let blocks: Vec<Vec<u8>> = account.charge(|| (0..64).map(|i| vec![i as u8; 1000]).collect());
    assert!(account.live_bytes() >= 64 * 1000);
    let kept = account.charge(|| vec![7u8; 4096]);
    let before = account.live_bytes();
    drop(blocks);
    assert!(
        account.live_bytes() <= before - 64 * 1000,
        "freed blocks are refunded"
    );
    // The account goes first; its blocks are freed later on another thread, the last one
    // taking the account's ledger with it.
    drop(account);
    std::thread::spawn(move || {
        assert_eq!(kept.iter().map(|&b| b as usize).sum::<usize>(), 7 * 4096)
    })
    .join()
    .unwrap();
}
