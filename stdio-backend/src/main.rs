//! A cell backend as a plain program: frames in on stdin, frames out on stdout, each a 4-byte
//! little-endian length and a postcard body (`abi/SPEC.md`). The guest runtime does the rest.
//! It confines nothing: it shows the protocol a backend in any language speaks to the
//! conformance suite's stdio adapter (`cell_conformance::StdioBackend`), and passes the suite
//! (but for the scenarios that need confinement or an interrupter, which show as ignored).
//!
//! The frame cap comes from `CELL_MAX_FRAME_LEN` (default 1 MiB). A frame the script would send
//! over it fails in the script (`limit_frame_size`); a bad host frame ends the program.
#![forbid(unsafe_code)]

use abi::wire::{self, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use abi::{GuestFrame, HostFrame};
use runtime::{NeverInterrupt, Transport, TransportError};
use std::io::{BufReader, BufWriter, Read, Stdin, Stdout, Write};
use std::process::ExitCode;
use std::sync::Arc;

/// The guest end of the channel over this process's stdin and stdout.
struct Stdio {
    input: BufReader<Stdin>,
    output: BufWriter<Stdout>,
    max_frame_len: u32,
}

impl Transport for Stdio {
    fn send(&mut self, frame: GuestFrame) -> Result<(), TransportError> {
        let bytes = runtime::encode_frame(&frame, self.max_frame_len)?;
        self.output
            .write_all(&bytes)
            .and_then(|()| self.output.flush())
            .map_err(|_| TransportError::Closed)
    }

    fn recv(&mut self) -> Result<HostFrame, TransportError> {
        let mut header = [0; HEADER_LEN];
        self.input
            .read_exact(&mut header)
            .map_err(|_| TransportError::Closed)?;
        let len = wire::body_len(header, self.max_frame_len).map_err(|e| {
            TransportError::Aborted(abi::CellError::new(
                abi::ErrorCode::LimitFrameSize,
                format!("bad host frame: {e}"),
            ))
        })?;
        let mut body = vec![0; len];
        self.input
            .read_exact(&mut body)
            .map_err(|_| TransportError::Closed)?;
        runtime::decode_frame(&body)
    }
}

fn main() -> ExitCode {
    let max_frame_len = std::env::var("CELL_MAX_FRAME_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_FRAME_LEN);
    let transport = Stdio {
        input: BufReader::new(std::io::stdin()),
        output: BufWriter::new(std::io::stdout()),
        max_frame_len,
    };
    match runtime::agent::serve(Box::new(transport), Arc::new(NeverInterrupt)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cell-stdio-backend: {e}");
            ExitCode::FAILURE
        }
    }
}
