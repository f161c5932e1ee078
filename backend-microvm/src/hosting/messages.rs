//! What crosses between the supervisor and a VM host: control records on the host's
//! `SOCK_SEQPACKET` socket, and length-prefixed postcard messages on each cell's stream socket.
//!
//! A host runs hostile guests, so the supervisor reads what it sends like anything else from a
//! cell: every length is checked before anything is allocated, and a frame still goes through the
//! host side's frame rules after it arrives.
use std::io::{self, Read, Write};

use abi::CellError;
use abi::backend::{PipeError, Resource};
use abi::wire::{ABSOLUTE_MAX_FRAME_LEN, HEADER_LEN, WireError};
use serde::{Deserialize, Serialize};

/// The environment variable that makes a process a VM host; its value is the supervisor's pid.
pub(crate) const HOST_ENV: &str = "CELL_MICROVM_VM_HOST";
/// The first record a host sends on its control socket: its entry ran, it is ready.
pub(crate) const HELLO: &[u8] = b"cell-vm-host ready";
/// Largest control record.
pub(crate) const MAX_CONTROL: usize = 256;
/// Largest message on a cell's socket: the biggest frame, a few frames queued for the guest,
/// and room for the message's own fields.
pub(crate) const MAX_MESSAGE: usize = 4 * (ABSOLUTE_MAX_FRAME_LEN as usize + HEADER_LEN) + 4096;

/// How a hosted cell starts, as [`crate::StartMode`] says (the host never overflows further).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Start {
    /// From the host's snapshot, a pooled VM when one is free.
    Snapshot,
    /// Boots the image (also every test mode).
    Cold,
}

/// Supervisor → host, one record per datagram on the control socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Start cell `cell`; its stream socket comes with the record (`SCM_RIGHTS`), and the host
    /// answers on that socket with [`FromVm::Started`] or [`FromVm::SpawnFailed`].
    Spawn {
        cell: u64,
        start: Start,
        mem_size: u64,
        frame_cap: u64,
        heap_quota: u64,
        mode: u32,
        cpu_time_ms: u64,
    },
    /// Kill cell `cell` (wherever its vCPU is).
    Kill { cell: u64 },
    /// Interrupt transaction `txn` of cell `cell` (only that one: sent while it runs, it may
    /// arrive before the host has started it, or after it ended).
    Interrupt { cell: u64, txn: u64 },
}

/// Supervisor → host, on a cell's socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToVm {
    /// Queue `frames` for the guest (whole wire frames), then run it until it hands over a frame,
    /// waits idle, `timeout_us` passes, or it stops; part of transaction `txn` (numbered from 1
    /// by the supervisor), which `starts` (the guest's interrupt word is cleared first).
    Run {
        txn: u64,
        starts: bool,
        frames: Vec<Vec<u8>>,
        timeout_us: Option<u64>,
        max_len: u32,
    },
    /// The host side refused what the guest did: the VM never runs again.
    Abort(CellError),
}

/// Host → supervisor, on a cell's socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromVm {
    /// The VM is built; its guest RAM in bytes, and the guest's answer to a handshake when it is
    /// known without running the guest (a VM at its template's snapshot point: `greeting`).
    Started {
        mem_size: u64,
        answer: Option<Vec<u8>>,
        used: Used,
    },
    /// The VM could not be built (`unavailable`: KVM is missing in the host).
    SpawnFailed { unavailable: bool, reason: String },
    /// One frame body the guest handed over.
    Frame(Vec<u8>),
    /// The guest waits for a host frame and none is queued.
    Idle,
    /// The deadline passed; the guest is paused.
    TimedOut,
    /// The VM stopped: the pipe error the supervisor reports.
    Stop(Stop),
}

/// Host → supervisor, on a cell's socket: the answer to a [`ToVm::Run`], with what the cell
/// had used by then.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub used: Used,
    pub reply: FromVm,
}

/// What a hosted cell uses, as its VM counts it ([`crate::Usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Used {
    /// Live bytes of the guest's heap (`None`: the VM's memory is no longer the cell's).
    pub heap_bytes: Option<u64>,
    /// CPU time the vCPU spent in the guest, in nanoseconds.
    pub cpu_ns: u64,
}

impl Used {
    pub(crate) fn of(usage: &crate::Usage) -> Used {
        Used {
            heap_bytes: usage.heap_bytes(),
            cpu_ns: u64::try_from(usage.cpu_time().as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

/// A [`PipeError`] as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Stop {
    Killed,
    TimedOut,
    Closed,
    Crashed(String),
    TooLarge {
        len: u64,
        max: u32,
    },
    Empty,
    Malformed(postcard::Error),
    TrailingBytes(u64),
    OverMemory(u64),
    Aborted(CellError),
    Exhausted {
        resource: ExhaustedResource,
        detail: String,
    },
}

/// [`Resource`] as it crosses the socket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum ExhaustedResource {
    Memory,
    CpuTime,
    Stack,
}

impl From<PipeError> for Stop {
    fn from(e: PipeError) -> Stop {
        match e {
            PipeError::Killed => Stop::Killed,
            PipeError::TimedOut => Stop::TimedOut,
            PipeError::Closed => Stop::Closed,
            PipeError::Crashed(s) => Stop::Crashed(s),
            PipeError::Wire(w) => match w {
                WireError::TooLarge { len, max } => Stop::TooLarge { len, max },
                WireError::Empty => Stop::Empty,
                WireError::Malformed(p) => Stop::Malformed(p),
                WireError::TrailingBytes(n) => Stop::TrailingBytes(n as u64),
                WireError::OverMemory { max } => Stop::OverMemory(max as u64),
                other => Stop::Crashed(other.to_string()),
            },
            PipeError::Aborted(c) => Stop::Aborted(c),
            PipeError::Io(e) => Stop::Crashed(format!("channel i/o failed: {e}")),
            PipeError::Exhausted { resource, detail } => Stop::Exhausted {
                resource: match resource {
                    Resource::Memory => ExhaustedResource::Memory,
                    Resource::CpuTime => ExhaustedResource::CpuTime,
                    _ => ExhaustedResource::Stack,
                },
                detail,
            },
            other => Stop::Crashed(other.to_string()),
        }
    }
}

impl From<Stop> for PipeError {
    fn from(s: Stop) -> PipeError {
        match s {
            Stop::Killed => PipeError::Killed,
            Stop::TimedOut => PipeError::TimedOut,
            Stop::Closed => PipeError::Closed,
            Stop::Crashed(s) => PipeError::Crashed(s),
            Stop::TooLarge { len, max } => PipeError::Wire(WireError::TooLarge { len, max }),
            Stop::Empty => PipeError::Wire(WireError::Empty),
            Stop::Malformed(p) => PipeError::Wire(WireError::Malformed(p)),
            Stop::TrailingBytes(n) => PipeError::Wire(WireError::TrailingBytes(n as usize)),
            Stop::OverMemory(max) => PipeError::Wire(WireError::OverMemory { max: max as usize }),
            Stop::Aborted(c) => PipeError::Aborted(c),
            Stop::Exhausted { resource, detail } => PipeError::Exhausted {
                resource: match resource {
                    ExhaustedResource::Memory => Resource::Memory,
                    ExhaustedResource::CpuTime => Resource::CpuTime,
                    ExhaustedResource::Stack => Resource::Stack,
                },
                detail,
            },
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer closed the socket at a message boundary.
    #[error("the peer closed the socket")]
    Closed,
    /// A length over [`MAX_MESSAGE`], a message that does not decode, or a short read.
    #[error("bad message: {0}")]
    Bad(String),
    #[error("reading a message: {0}")]
    Io(#[from] io::Error),
}

/// Writes one message: a 4-byte little-endian length, then its postcard encoding.
pub(crate) fn write_message<T: Serialize>(out: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut buf = postcard::to_extend(msg, std::mem::take(&mut buf))
        .map_err(|e| io::Error::other(format!("encoding a message: {e}")))?;
    let len = u32::try_from(buf.len() - HEADER_LEN)
        .ok()
        .filter(|&n| n as usize <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::other("a message over the hosting cap"))?;
    buf[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    out.write_all(&buf)
}

/// Room in an answer besides the frame body it carries (its tag and length, or a stop's text,
/// of which the longest is a guest panic message of at most 4 KiB).
pub(crate) const ANSWER_ROOM: usize = 8192;

/// Reads one message, refusing a length over [`MAX_MESSAGE`] before allocating.
pub(crate) fn read_message<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> Result<T, ReadError> {
    read_message_within(input, MAX_MESSAGE)
}

/// Reads one message, refusing a length over `cap` before allocating: the supervisor reads a
/// host's answers within what the request allows (a host runs hostile guests).
pub(crate) fn read_message_within<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
    cap: usize,
) -> Result<T, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    // The first byte tells a close between messages from one inside a message. A vCPU kick
    // (installed without SA_RESTART) can interrupt the wait: that is no error.
    loop {
        match input.read(&mut head[..1]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    input
        .read_exact(&mut head[1..])
        .map_err(|e| ReadError::Bad(format!("a cut length: {e}")))?;
    let len = u32::from_le_bytes(head) as usize;
    if len == 0 || len > cap.min(MAX_MESSAGE) {
        return Err(ReadError::Bad(format!("a message of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .map_err(|e| ReadError::Bad(format!("a cut message: {e}")))?;
    postcard::from_bytes(&body).map_err(|e| ReadError::Bad(e.to_string()))
}

/// Encodes a control record (small, fixed-size fields only).
pub(crate) fn encode_control(c: &Control) -> Vec<u8> {
    postcard::to_allocvec(c).expect("a control record always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::ErrorCode;

    #[test]
    fn every_stop_crosses_as_the_pipe_error_it_was() {
        let errors = [
            PipeError::Killed,
            PipeError::TimedOut,
            PipeError::Closed,
            PipeError::Crashed("triple fault".into()),
            PipeError::Wire(WireError::TooLarge { len: 9, max: 4 }),
            PipeError::Wire(WireError::Empty),
            PipeError::Wire(WireError::TrailingBytes(3)),
            PipeError::Wire(WireError::OverMemory { max: 77 }),
            PipeError::Aborted(CellError::new(ErrorCode::LimitEventQueue, "flood")),
            PipeError::Exhausted {
                resource: Resource::CpuTime,
                detail: "spent".into(),
            },
            PipeError::Exhausted {
                resource: Resource::Stack,
                detail: "deep".into(),
            },
        ];
        for e in errors {
            let text = e.to_string();
            let stop: Stop = e.into();
            let mut bytes = Vec::new();
            write_message(&mut bytes, &FromVm::Stop(stop)).unwrap();
            let FromVm::Stop(back) = read_message(&mut bytes.as_slice()).unwrap() else {
                panic!("not a stop");
            };
            assert_eq!(PipeError::from(back).to_string(), text);
        }
    }

    #[test]
    fn lengths_over_the_cap_zero_and_cut_messages_are_refused_before_allocating() {
        let over = ((MAX_MESSAGE + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_message::<FromVm>(&mut over.as_slice()),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_message::<FromVm>(&mut [0u8, 0, 0, 0].as_slice()),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_message::<FromVm>(&mut [9u8, 0, 0, 0, 1].as_slice()),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_message::<FromVm>(&mut [1u8, 0].as_slice()),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_message::<FromVm>(&mut [].as_slice()),
            Err(ReadError::Closed)
        ));
        // A length that fits but a body that is no message.
        assert!(matches!(
            read_message::<FromVm>(&mut [1u8, 0, 0, 0, 0xff].as_slice()),
            Err(ReadError::Bad(_))
        ));
    }

    #[test]
    fn an_answer_over_what_the_request_allows_is_refused_before_allocating() {
        let mut bytes = Vec::new();
        write_message(&mut bytes, &FromVm::Frame(vec![7; 100])).unwrap();
        assert!(matches!(
            read_message_within::<FromVm>(&mut bytes.as_slice(), 50),
            Err(ReadError::Bad(_))
        ));
        assert!(read_message_within::<FromVm>(&mut bytes.as_slice(), 200).is_ok());
    }

    #[test]
    fn a_run_round_trips() {
        let msg = ToVm::Run {
            txn: 1,
            starts: true,
            frames: vec![vec![1, 2, 3], vec![]],
            timeout_us: Some(5),
            max_len: 1 << 20,
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &msg).unwrap();
        let back: ToVm = read_message(&mut bytes.as_slice()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{msg:?}"));
    }

    /// A read interrupted by a signal (the vCPU kick has no SA_RESTART) before the first byte.
    struct InterruptedOnce<'a>(bool, &'a [u8]);

    impl Read for InterruptedOnce<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !std::mem::replace(&mut self.0, true) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.1.read(buf)
        }
    }

    #[test]
    fn a_wait_interrupted_by_a_signal_goes_on() {
        let mut bytes = Vec::new();
        write_message(&mut bytes, &FromVm::Idle).unwrap();
        let got = read_message::<FromVm>(&mut InterruptedOnce(false, &bytes)).unwrap();
        assert!(matches!(got, FromVm::Idle));
    }

    proptest::proptest! {
        /// Whatever a (compromised) host writes on a cell's socket, reading it gives a message
        /// or a typed error, never a panic, and never more than the bytes that arrived plus the
        /// cap's check.
        #[test]
        fn arbitrary_bytes_read_as_a_message_or_a_typed_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let mut input = bytes.as_slice();
            match read_message::<FromVm>(&mut input) {
                Ok(_) | Err(ReadError::Closed) | Err(ReadError::Bad(_)) => {}
                Err(ReadError::Io(e)) => proptest::prop_assert!(false, "a slice read failed: {e}"),
            }
            let mut input = bytes.as_slice();
            let _ = read_message::<ToVm>(&mut input);
            // What the supervisor reads in answer to a run.
            let mut input = bytes.as_slice();
            match read_message::<Answer>(&mut input) {
                Ok(_) | Err(ReadError::Closed) | Err(ReadError::Bad(_)) => {}
                Err(ReadError::Io(e)) => proptest::prop_assert!(false, "a slice read failed: {e}"),
            }
        }

        /// Frames of any size up to the cap cross in order, each message exactly as written.
        #[test]
        fn runs_and_frames_round_trip(
            frames in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..4),
            timeout in proptest::option::of(proptest::prelude::any::<u64>()),
            heap_bytes in proptest::option::of(proptest::prelude::any::<u64>()),
            cpu_ns in proptest::prelude::any::<u64>(),
        ) {
            let run = ToVm::Run { txn: 3, starts: false, frames: frames.clone(), timeout_us: timeout, max_len: 7 };
            let mut bytes = Vec::new();
            write_message(&mut bytes, &run).unwrap();
            let used = Used { heap_bytes, cpu_ns };
            for f in &frames {
                write_message(&mut bytes, &Answer { used, reply: FromVm::Frame(f.clone()) }).unwrap();
            }
            let mut input = bytes.as_slice();
            let back: ToVm = read_message(&mut input).unwrap();
            proptest::prop_assert_eq!(format!("{back:?}"), format!("{run:?}"));
            for f in &frames {
                let answer = read_message::<Answer>(&mut input).unwrap();
                proptest::prop_assert_eq!(answer.used, used);
                match answer.reply {
                    FromVm::Frame(b) => proptest::prop_assert_eq!(&b, f),
                    other => proptest::prop_assert!(false, "{other:?}"),
                }
            }
            proptest::prop_assert!(matches!(read_message::<Answer>(&mut input), Err(ReadError::Closed)));
        }
    }
}
