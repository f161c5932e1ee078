//! The whole conformance suite against this program, through the suite's stdio adapter.
conformance::conformance_main!(conformance::StdioBackend::new(
    "stdio",
    env!("CARGO_BIN_EXE_cell-stdio-backend"),
    Vec::new()
));
