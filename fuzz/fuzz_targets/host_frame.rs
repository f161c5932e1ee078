//! Fuzz target `host_frame`: see `cell_fuzz_replay::host_frame` for what it checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_fuzz_replay::host_frame(data));
