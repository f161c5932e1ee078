//! Spawn cost against the number of live cells: spawn → handshake → drop of one subinterp cell
//! while 1 000 and then 30 000 other cells stay alive. The name table is a hash map touched
//! once per spawn and once per drop, so the two figures should be close.

mod common;

use cell_supervisor::{Policy, Supervisor};
use common::fmt_ns;
use criterion::BenchmarkId;
use std::hint::black_box;

const GROUP: &str = "spawn";
const LIVE: [usize; 2] = [1_000, 30_000];

fn main() {
    let mut c = common::criterion();
    let supervisor = Supervisor::new();
    let policy = Policy::default();
    let mut live = Vec::new();
    for &n in &LIVE {
        while live.len() < n {
            let name = format!("live-{}", live.len());
            live.push(supervisor.spawn(&name, "subinterp", &policy).unwrap());
        }
        let mut g = c.benchmark_group(GROUP);
        g.bench_function(BenchmarkId::new("spawn_drop_with_live", n), |b| {
            b.iter(|| black_box(supervisor.spawn("probe", "subinterp", &policy).unwrap()))
        });
        g.finish();
    }
    c.final_summary();
    println!("\n== spawn → handshake → drop of one subinterp cell, by live cells ==");
    for n in LIVE {
        let median = common::median_ns(GROUP, &format!("spawn_drop_with_live/{n}"));
        println!(
            "{n:>7} live: {}",
            median.map(fmt_ns).unwrap_or_else(|| "n/a".into())
        );
    }
}
