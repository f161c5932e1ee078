//! The handshake placed with the first transaction.
//!
//! A VM taken at the snapshot point has not run since its template's guest waited for its first
//! frame, so its answer to a `Hello` it accepts is known: the template recorded it when it warmed
//! its first VM (`Ready` names the guest's build, not the cell). The guest refuses a `Hello` only
//! for another ABI version or schema or a module it does not provide ([`accepts`]); any other it
//! answers with that record. The pipe then answers the handshake from the record and places the
//! `Hello` in front of the first transaction's frame:
//! the guest reads both from one batch, and the two cost one VM exit instead of two. The guest's
//! own answer comes first among that transaction's frames and is checked byte for byte against
//! the record; any other answer stops the cell.
use std::sync::Arc;
use std::time::Instant;

use abi::backend::{FrameIo, PipeError};
use abi::{CellError, ErrorCode, GuestFrame, Hello, Ready, wire};

/// Whether the guest that answered `ready` accepts `hello`: the same ABI version and schema, and
/// only modules a runtime of this ABI provides (the guest runtime's own checks, which are all the
/// ways its handshake can be refused).
pub(crate) fn accepts(ready: &Ready, hello: &Hello) -> bool {
    ready.abi_version == hello.abi_version
        && ready.schema == hello.schema
        && hello
            .modules
            .iter()
            .all(|m| abi::HOST_MODULES.contains(&m.as_str()))
}

/// What the pipe still owes the guest of a deferred handshake: the `Hello` not placed yet, then
/// the guest's answer not checked yet.
#[derive(Default)]
pub(crate) struct Greeting {
    hello: Option<Vec<u8>>,
    answer: Option<Arc<[u8]>>,
}

impl Greeting {
    /// A handshake answered from the record: `hello` (encoded, prefix included) goes with the
    /// next frame sent, and the guest's first frame must be `answer` (a frame body).
    pub(crate) fn deferred(hello: Vec<u8>, answer: Arc<[u8]>) -> Self {
        Greeting {
            hello: Some(hello),
            answer: Some(answer),
        }
    }

    /// Whether part of a deferred handshake is still to be done.
    pub(crate) fn is_owed(&self) -> bool {
        self.hello.is_some() || self.answer.is_some()
    }
}

/// [`FrameIo`] over `io` that places the owed `Hello` with the first frame sent (in one batch
/// when both fit `cap` bytes) and checks, then drops, the guest's answer before handing over
/// the frames after it.
pub(crate) struct Greeted<'a, I: ?Sized> {
    pub(crate) io: &'a mut I,
    pub(crate) greeting: &'a mut Greeting,
    pub(crate) cap: usize,
}

impl<I: FrameIo + ?Sized> FrameIo for Greeted<'_, I> {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        match self.greeting.hello.take() {
            None => self.io.send_frame(frame),
            Some(mut batch) if batch.len() + frame.len() <= self.cap => {
                batch.extend_from_slice(frame);
                self.io.send_frame(&batch)
            }
            Some(hello) => {
                self.io.send_frame(&hello)?;
                self.io.send_frame(frame)
            }
        }
    }

    fn recv_frame(
        &mut self,
        deadline: Option<Instant>,
        max_len: u32,
    ) -> Result<Vec<u8>, PipeError> {
        let body = self.io.recv_frame(deadline, max_len)?;
        let Some(answer) = self.greeting.answer.take() else {
            return Ok(body);
        };
        if *body == *answer {
            return self.io.recv_frame(deadline, max_len);
        }
        Err(PipeError::Aborted(
            match wire::decode_body::<GuestFrame>(&body) {
                Ok(GuestFrame::Refused(err)) => err,
                _ => CellError::new(
                    ErrorCode::ProtocolViolation,
                    "the guest answered the handshake otherwise than its image does",
                ),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::{EngineLimits, HostFrame, Value};
    use std::collections::VecDeque;

    /// Frames sent and frame bodies to hand back, in order.
    #[derive(Default)]
    struct Script {
        sent: Vec<Vec<u8>>,
        replies: VecDeque<Vec<u8>>,
    }

    impl FrameIo for Script {
        fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn recv_frame(&mut self, _: Option<Instant>, _: u32) -> Result<Vec<u8>, PipeError> {
            self.replies.pop_front().ok_or(PipeError::Closed)
        }
    }

    fn frame(f: &HostFrame) -> Vec<u8> {
        wire::encode(f, 1 << 20).unwrap()
    }

    fn body(f: &GuestFrame) -> Vec<u8> {
        wire::encode(f, 1 << 20).unwrap()[wire::HEADER_LEN..].to_vec()
    }

    fn setup() -> (Vec<u8>, Vec<u8>, Arc<[u8]>) {
        let hello = frame(&HostFrame::Hello(Hello::new(
            "c",
            EngineLimits::default(),
            vec![],
        )));
        let exec = frame(&HostFrame::Exec {
            id: 1,
            source: "post(1)".into(),
        });
        let ready = body(&GuestFrame::Ready(Ready::new("rhai", "1")));
        (hello, exec, ready.into())
    }

    #[test]
    fn the_hello_goes_with_the_first_frame_and_the_answer_is_dropped() {
        let (hello, exec, ready) = setup();
        let post = body(&GuestFrame::Post(Value::Int(1)));
        let mut io = Script {
            replies: [ready.to_vec(), post.clone(), post.clone()].into(),
            ..Script::default()
        };
        let mut greeting = Greeting::deferred(hello.clone(), ready);
        let mut g = Greeted {
            io: &mut io,
            greeting: &mut greeting,
            cap: 1 << 20,
        };
        g.send_frame(&exec).unwrap();
        assert_eq!(g.recv_frame(None, 1 << 20).unwrap(), post);
        // Later frames pass through untouched, in both directions.
        g.send_frame(&exec).unwrap();
        assert_eq!(g.recv_frame(None, 1 << 20).unwrap(), post);
        assert!(!greeting.is_owed());
        assert_eq!(io.sent, vec![[hello, exec.clone()].concat(), exec]);
    }

    #[test]
    fn a_pair_over_the_buffer_goes_as_two_frames() {
        let (hello, exec, ready) = setup();
        let mut io = Script::default();
        let mut greeting = Greeting::deferred(hello.clone(), ready);
        let cap = hello.len() + exec.len() - 1;
        let mut g = Greeted {
            io: &mut io,
            greeting: &mut greeting,
            cap,
        };
        g.send_frame(&exec).unwrap();
        assert_eq!(io.sent, vec![hello, exec]);
    }

    #[test]
    fn only_a_hello_the_guest_accepts_is_deferred() {
        let ready = Ready::new("rhai", "1");
        let modules = abi::HOST_MODULES.iter().map(|m| m.to_string()).collect();
        let hello = Hello::new("c", EngineLimits::default(), modules);
        assert!(accepts(&ready, &hello));
        let mut other = hello.clone();
        other.abi_version += 1;
        assert!(!accepts(&ready, &other), "another ABI version");
        let mut other = hello.clone();
        other.schema.push('x');
        assert!(!accepts(&ready, &other), "another schema");
        let mut other = hello;
        other.modules.push("fs".into());
        assert!(!accepts(&ready, &other), "a module no runtime provides");
    }

    #[test]
    fn another_answer_stops_the_transaction() {
        let (hello, exec, ready) = setup();
        let refused = CellError::new(ErrorCode::VersionMismatch, "no");
        let other_ready = body(&GuestFrame::Ready(Ready::new("rhai", "2")));
        let post = body(&GuestFrame::Post(Value::Int(1)));
        for (answer, code) in [
            (body(&GuestFrame::Refused(refused.clone())), refused.code),
            (other_ready, ErrorCode::ProtocolViolation),
            (post, ErrorCode::ProtocolViolation),
            (vec![0xff; 3], ErrorCode::ProtocolViolation),
        ] {
            let mut io = Script {
                replies: [answer].into(),
                ..Script::default()
            };
            let mut greeting = Greeting::deferred(hello.clone(), ready.clone());
            let mut g = Greeted {
                io: &mut io,
                greeting: &mut greeting,
                cap: 1 << 20,
            };
            g.send_frame(&exec).unwrap();
            match g.recv_frame(None, 1 << 20) {
                Err(PipeError::Aborted(e)) => assert_eq!(e.code, code),
                other => panic!("expected an abort, got {other:?}"),
            }
        }
    }
}
