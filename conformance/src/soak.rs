//! A soak: many exec/call/post/request cycles, and cells spawned and closed along the way,
//! while the host's open file descriptors and resident memory are measured. What a cell ends
//! must be released: after the warm-up, neither may keep growing.

use crate::driver::TestCell;
use crate::{Harness, Setup};
use abi::{Map, Value};
use std::time::Duration;

/// The host's open file descriptors and resident memory at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Open file descriptors (entries in `/proc/self/fd`).
    pub fds: usize,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

impl Usage {
    /// This process's usage now (Linux `/proc`).
    pub fn now() -> Usage {
        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0);
        let pages: u64 = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        Usage {
            fds,
            rss_bytes: pages * 4096,
        }
    }
}

/// What a soak saw.
#[derive(Clone, Debug)]
pub struct SoakReport {
    /// Cycles run.
    pub cycles: u32,
    /// Cells spawned, the first included.
    pub cells: u32,
    /// After the warm-up, and at the end.
    pub before: Usage,
    /// At the end.
    pub after: Usage,
}

fn soak_setup() -> Setup {
    Setup::default().with_rules_toml(
        r#"
        [[grants]]
        capability = "random"
        actions = ["int"]
        "#,
    )
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
        cell.recv(Some(Duration::from_secs(5))).expect("event");
    }
}

fn fresh(h: &Harness, n: u32) -> TestCell {
    let cell = h.spawn(&format!("soak-{n}"), &soak_setup());
    cell.exec("fn twice(x) { x * 2 }").expect("define");
    cell
}

/// Runs `cycles` cycles on `backend`, replacing the cell every `per_cell` cycles, and measures
/// usage after the first tenth (the warm-up: pools, caches, lazily started threads) and at the
/// end.
pub fn soak(h: &Harness, cycles: u32, per_cell: u32) -> SoakReport {
    let warm_up = cycles / 10;
    let mut cells = 1;
    let mut cell = fresh(h, 0);
    let mut before = Usage::now();
    for i in 0..cycles {
        if i > 0 && i % per_cell == 0 {
            cell.close();
            cell = fresh(h, cells);
            cells += 1;
        }
        cycle(&cell, i);
        if i + 1 == warm_up {
            before = Usage::now();
        }
    }
    cell.close();
    drop(cell);
    SoakReport {
        cycles,
        cells,
        before,
        after: Usage::now(),
    }
}
