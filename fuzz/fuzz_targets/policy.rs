//! Fuzz target `policy`: see `cell_fuzz_replay::policy` for what it checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_fuzz_replay::policy(data));
