/work/main/crates/backend-process/guest/target/x86_64-unknown-linux-gnu/release/cell-probe: /work/main/crates/backend-process/guest/src/probe.rs
