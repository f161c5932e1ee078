/work/main/crates/backend-process/guest/target/x86_64-unknown-linux-gnu/release/deps/cell_probe-94505dfcfa91d7f6.d: src/probe.rs

/work/main/crates/backend-process/guest/target/x86_64-unknown-linux-gnu/release/deps/cell_probe-94505dfcfa91d7f6: src/probe.rs

src/probe.rs:
