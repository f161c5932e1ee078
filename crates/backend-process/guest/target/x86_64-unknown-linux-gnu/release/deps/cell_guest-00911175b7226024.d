/work/main/crates/backend-process/guest/target/x86_64-unknown-linux-gnu/release/deps/cell_guest-00911175b7226024.d: src/main.rs

/work/main/crates/backend-process/guest/target/x86_64-unknown-linux-gnu/release/deps/cell_guest-00911175b7226024: src/main.rs

src/main.rs:
