/work/main/crates/backend-process/guest/target/x86_64-unknown-linux-gnu/release/cell-guest: /work/main/crates/backend-process/guest/src/main.rs
