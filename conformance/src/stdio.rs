//! The stdio adapter: a backend written in any language is a program that speaks the wire
//! format (a 4-byte little-endian length, then the postcard body; `abi/SPEC.md`) on its standard
//! input and output. The suite spawns one process per cell, writes host frames to its stdin and
//! reads guest frames from its stdout; its stderr is passed through. The cell's frame cap is in
//! the environment variable `CELL_MAX_FRAME_LEN`. A kill, a wall-time overrun or a protocol
//! violation ends the process (SIGKILL); a clean shutdown sends `Shutdown` and waits for it.
//!
//! The containment boundary is the program's business: the adapter checks the protocol, not the
//! confinement.

use abi::backend::{
    Backend, CellPipe, FrameIo, HostSide, Killer, PipeError, SpawnError, SpawnSpec, drive,
};
use abi::{HostFrame, wire};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The environment variable that tells a stdio backend its cell's frame cap.
pub const MAX_FRAME_LEN_VAR: &str = "CELL_MAX_FRAME_LEN";

/// A backend that is a program speaking frames on stdin/stdout.
#[derive(Clone, Debug)]
pub struct StdioBackend {
    name: String,
    program: PathBuf,
    args: Vec<String>,
}

impl StdioBackend {
    /// The program at `program`, run with `args` for every cell, named `name` in transcripts'
    /// diagnostics and the broker's audit.
    ///
    /// A backend written in another language is certified from a Rust test target
    /// (`harness = false`) that names its program:
    ///
    /// ```no_run
    /// use cell_conformance::{StdioBackend, conformance_main};
    ///
    /// conformance_main!(StdioBackend::new("mine", "./my-backend", vec!["--stdio".into()]));
    /// ```
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        StdioBackend {
            name: name.into(),
            program: program.into(),
            args,
        }
    }
}

/// Kills the cell's process; its pipes then close and a blocked read returns.
struct ProcessKiller(Mutex<Option<Child>>);

impl Killer for ProcessKiller {
    fn kill(&self) {
        let mut child = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = child.as_mut() {
            let _ = child.kill();
        }
    }
}

struct Io {
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Io {
    /// Reads exactly `buf.len()` bytes, waiting for each chunk no later than `deadline`.
    fn read_exact_until(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<(), PipeError> {
        let mut filled = 0;
        while filled < buf.len() {
            wait_readable(&self.stdout, deadline)?;
            match self.stdout.read(&mut buf[filled..]) {
                Ok(0) => return Err(PipeError::Closed),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PipeError::Io(e)),
            }
        }
        Ok(())
    }
}

/// Blocks until `fd` is readable (or closed), or `deadline` passes.
fn wait_readable(fd: &impl AsFd, deadline: Option<Instant>) -> Result<(), PipeError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(PipeError::TimedOut);
                }
                Some(Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                }))
            }
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => continue, // the deadline check above ends it
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(PipeError::Io(e.into())),
        }
    }
}

impl FrameIo for Io {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        self.stdin
            .write_all(frame)
            .and_then(|()| self.stdin.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => PipeError::Closed,
                _ => PipeError::Io(e),
            })
    }

    fn recv_frame(
        &mut self,
        deadline: Option<Instant>,
        max_len: u32,
    ) -> Result<Vec<u8>, PipeError> {
        let mut header = [0; wire::HEADER_LEN];
        self.read_exact_until(&mut header, deadline)?;
        let len = wire::body_len(header, max_len)?;
        let mut body = vec![0; len];
        self.read_exact_until(&mut body, deadline)
            .map_err(|e| match e {
                PipeError::Closed => PipeError::Crashed("the program died mid-frame".into()),
                other => other,
            })?;
        Ok(body)
    }
}

struct Pipe {
    io: Io,
    host: Arc<dyn HostSide>,
    killer: Arc<ProcessKiller>,
    max_len: u32,
}

impl CellPipe for Pipe {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        drive(&mut self.io, &*self.host, &frame, deadline, self.max_len)
    }

    fn killer(&self) -> Arc<dyn Killer> {
        self.killer.clone()
    }

    fn shutdown(&mut self) -> Result<(), PipeError> {
        let frame = wire::encode(&HostFrame::Shutdown, self.max_len)?;
        let _ = self.io.send_frame(&frame);
        let child = self
            .killer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            // The program exits on Shutdown; the pipes closing ends it otherwise. Reaped here,
            // so no zombie outlives the cell.
            let _ = child.wait();
        }
        Ok(())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let child = self
            .killer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Backend for StdioBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn available(&self) -> Result<(), String> {
        match std::fs::metadata(&self.program) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(format!("{} is not a file", self.program.display())),
            Err(e) => Err(format!("{}: {e}", self.program.display())),
        }
    }

    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env(MAX_FRAME_LEN_VAR, spec.max_frame_len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Other("the program's stdio is not piped".into()));
        };
        Ok(Box::new(Pipe {
            io: Io { stdin, stdout },
            host,
            killer: Arc::new(ProcessKiller(Mutex::new(Some(child)))),
            max_len: spec.max_frame_len,
        }))
    }
}
