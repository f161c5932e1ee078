//! Fuzz target `broker_payload`: see `cell_fuzz_replay::broker_payload` for what it checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_fuzz_replay::broker_payload(data));
