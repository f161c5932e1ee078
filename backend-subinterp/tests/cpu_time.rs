//! The CPU-time limit on subinterp cells: the same code and words the other backends give.

mod common;

use abi::backend::Resources;
use abi::{EngineLimits, ErrorCode};
use common::spawn;

fn limited(cpu_time_ms: u64) -> common::TestCell {
    let limits = EngineLimits {
        max_operations: 0,
        ..EngineLimits::default()
    };
    spawn(
        limits,
        Resources {
            cpu_time_ms,
            ..Resources::default()
        },
    )
}

#[test]
fn an_endless_script_is_stopped_at_its_cpu_time_limit() {
    let mut c = limited(200);
    let e = c
        .exec("loop {}")
        .expect_err("an endless loop cannot finish");
    assert_eq!(e.code, ErrorCode::LimitCpu, "{e}");
    assert_eq!(e.message, "the cell used up its CPU time limit of 200 ms");
    assert!(!c.alive(), "a cell past its CPU time is gone");
}

#[test]
fn cpu_time_adds_up_over_the_life_of_a_cell() {
    let mut c = limited(300);
    let mut completed = 0;
    let err = loop {
        match c.exec("let x = 0; for i in 0..5000 { x += i } x") {
            Ok(_) => completed += 1,
            Err(e) => break e,
        }
        assert!(completed < 10_000, "the CPU limit never came");
    };
    assert!(completed >= 2, "only {completed} execs before the limit");
    assert_eq!(err.code, ErrorCode::LimitCpu, "{err}");
}

#[test]
fn without_a_limit_the_cell_still_counts_its_cpu_time() {
    let mut c = limited(0);
    let probe = c.pipe.usage().expect("subinterp has a usage probe");
    let mut last = probe.cpu_time().expect("counted");
    for _ in 0..3 {
        c.exec("let x = 0; for i in 0..200000 { x += i } x")
            .expect("no CPU limit");
        let now = probe.cpu_time().unwrap();
        assert!(now > last, "{last:?} -> {now:?}");
        last = now;
    }
}
