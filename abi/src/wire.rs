//! The wire format: a frame is a 4-byte little-endian body length followed by the postcard
//! encoding of one [`HostFrame`](crate::HostFrame) or [`GuestFrame`](crate::GuestFrame).
//!
//! The length is checked against a cap before anything is allocated, the body must be consumed
//! exactly, and no byte sequence makes decoding panic.

use alloc::vec::Vec;
use serde::{Serialize, de::DeserializeOwned};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default cap on a frame body: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1 << 20;

/// No configuration may raise the cap above this: 16 MiB.
pub const ABSOLUTE_MAX_FRAME_LEN: u32 = 16 << 20;

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A body over the cap: announced by a length prefix (refused before any allocation) or
    /// produced by [`encode`].
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The body's length, announced or encoded.
        len: u64,
        /// The cap in force.
        max: u32,
    },
    /// A zero-length body: no tag byte to say which frame it is.
    #[error("empty frame body")]
    Empty,
    /// The body does not decode as the frame type (postcard's reason).
    #[error("frame body is malformed: {0}")]
    Malformed(postcard::Error),
    /// The frame decoded with bytes to spare, in a frame that takes no extension.
    #[error("frame body has {0} trailing bytes")]
    TrailingBytes(usize),
    /// Decoding the body would take more than `max` bytes of memory
    /// ([`decode_body_within`]).
    #[error("frame body takes more than {max} bytes of memory to decode")]
    OverMemory {
        /// The memory ceiling in bytes.
        max: usize,
    },
}

/// A frame type the wire decodes. Bytes left after a frame's fields are an error, except in the
/// handshake frames, which carry their extension there (SPEC.md, "Evolution").
pub trait Frame: DeserializeOwned {
    /// Takes the bytes left after the fields this build knows; the default refuses any.
    fn accept_tail(&mut self, tail: &[u8]) -> Result<(), WireError> {
        Err(WireError::TrailingBytes(tail.len()))
    }
}

impl Frame for crate::Value {}

/// Checks a length prefix against `max` (itself clamped to [`ABSOLUTE_MAX_FRAME_LEN`]) and
/// returns the body length. Call this before allocating the body.
pub fn body_len(header: [u8; HEADER_LEN], max: u32) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header);
    let max = max.min(ABSOLUTE_MAX_FRAME_LEN);
    if len > max {
        return Err(WireError::TooLarge {
            len: len.into(),
            max,
        });
    }
    if len == 0 {
        return Err(WireError::Empty);
    }
    Ok(len as usize)
}

/// Encodes one frame with its length prefix, refusing a body larger than `max`.
///
/// ```
/// use cell_abi::{HostFrame, wire};
///
/// let frame = HostFrame::Exec { id: 7, source: "1 + 1".into() };
/// let bytes = wire::encode(&frame, wire::DEFAULT_MAX_FRAME_LEN)?;
/// // 4-byte little-endian body length, then the body; the first body byte is the tag.
/// assert_eq!(bytes[4], frame.kind() as u8);
/// let back: HostFrame = wire::decode(&bytes, wire::DEFAULT_MAX_FRAME_LEN)?;
/// assert_eq!(back, frame);
/// # Ok::<(), wire::WireError>(())
/// ```
pub fn encode<F: Serialize>(frame: &F, max: u32) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut out = postcard::to_extend(frame, out).map_err(WireError::Malformed)?;
    let len = out.len() - HEADER_LEN;
    let max = max.min(ABSOLUTE_MAX_FRAME_LEN);
    if len as u64 > max as u64 {
        return Err(WireError::TooLarge {
            len: len as u64,
            max,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// The body length [`encode`] would produce, without allocating it. In-process pipes use this to
/// enforce the same cap as the byte-stream ones.
pub fn encoded_len<F: Serialize>(frame: &F) -> Result<usize, WireError> {
    postcard::serialize_with_flavor(frame, postcard::ser_flavors::Size::default())
        .map_err(WireError::Malformed)
}

/// Decodes one frame body (without the length prefix). Every byte must be used, by the frame's
/// fields or, in a handshake frame, by its extension.
pub fn decode_body<F: Frame>(body: &[u8]) -> Result<F, WireError> {
    if body.is_empty() {
        return Err(WireError::Empty);
    }
    let (mut frame, rest): (F, _) =
        postcard::take_from_bytes(body).map_err(WireError::Malformed)?;
    if !rest.is_empty() {
        frame.accept_tail(rest)?;
    }
    Ok(frame)
}

/// [`decode_body`] with a ceiling on the memory the decoded frame may take: every value's
/// strings, buffers and map nodes are charged, as estimated by [`crate::memory`], before they
/// are allocated, and a body that needs more than `max_memory` bytes stops decoding there with
/// [`WireError::OverMemory`]. Without it a body of `n` bytes may take ~171 `n` (SPEC.md).
#[cfg(feature = "std")]
pub fn decode_body_within<F: Frame>(body: &[u8], max_memory: usize) -> Result<F, WireError> {
    match crate::budget::within(max_memory, || decode_body(body)) {
        (_, true) => Err(WireError::OverMemory { max: max_memory }),
        (result, false) => result,
    }
}

/// Decodes one whole frame (prefix and body) from a buffer, checking the prefix against `max`
/// and that the buffer holds exactly one frame.
///
/// ```
/// use cell_abi::{HostFrame, wire};
///
/// let bytes = wire::encode(&HostFrame::Shutdown, wire::DEFAULT_MAX_FRAME_LEN)?;
/// assert_eq!(wire::decode::<HostFrame>(&bytes, 1024)?, HostFrame::Shutdown);
/// // A frame with a byte too many is refused, never guessed at.
/// let mut long = bytes.clone();
/// long.push(0);
/// assert!(wire::decode::<HostFrame>(&long, 1024).is_err());
/// # Ok::<(), wire::WireError>(())
/// ```
pub fn decode<F: Frame>(bytes: &[u8], max: u32) -> Result<F, WireError> {
    let (body, rest) = split_first(bytes, max)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    decode_body(body)
}

/// The body of the first frame in `bytes` (frames written one after another, prefixes
/// included), its prefix checked against `max`, and the bytes after it.
///
/// ```
/// use cell_abi::{GuestFrame, Value, wire};
///
/// let mut batch = wire::encode(&GuestFrame::Post(Value::Int(1)), 1024)?;
/// batch.extend(wire::encode(&GuestFrame::Post(Value::Int(2)), 1024)?);
/// let (first, rest) = wire::split_first(&batch, 1024)?;
/// assert_eq!(wire::decode_body::<GuestFrame>(first)?, GuestFrame::Post(Value::Int(1)));
/// let (second, rest) = wire::split_first(rest, 1024)?;
/// assert_eq!(wire::decode_body::<GuestFrame>(second)?, GuestFrame::Post(Value::Int(2)));
/// assert!(rest.is_empty());
/// # Ok::<(), wire::WireError>(())
/// ```
pub fn split_first(bytes: &[u8], max: u32) -> Result<(&[u8], &[u8]), WireError> {
    let Some((header, tail)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Malformed(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    };
    let len = body_len(*header, max)?;
    if tail.len() < len {
        return Err(WireError::Malformed(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    }
    Ok(tail.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestFrame, HostFrame, Value};
    use alloc::string::String;

    #[test]
    fn round_trip_and_cap() {
        let f = GuestFrame::Post(Value::Int(42));
        let bytes = encode(&f, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(bytes, [3, 0, 0, 0, 3, 2, 84]);
        assert_eq!(
            decode::<GuestFrame>(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap(),
            f
        );
        let big = GuestFrame::Post(Value::Str(
            String::from_utf8(alloc::vec![b'x'; 100]).unwrap(),
        ));
        assert!(matches!(encode(&big, 50), Err(WireError::TooLarge { .. })));
    }

    fn post_of_len(len: usize) -> GuestFrame {
        let base = encoded_len(&GuestFrame::Post(Value::Bytes(alloc::vec![]))).unwrap();
        (0..4)
            .map(|extra| GuestFrame::Post(Value::Bytes(alloc::vec![0; len - base - extra])))
            .find(|f| encoded_len(f).unwrap() == len)
            .unwrap()
    }

    #[test]
    fn caps_are_exact_in_both_directions() {
        for max in [100u32, DEFAULT_MAX_FRAME_LEN] {
            assert_eq!(body_len(max.to_le_bytes(), max), Ok(max as usize));
            assert_eq!(
                body_len((max + 1).to_le_bytes(), max),
                Err(WireError::TooLarge {
                    len: max as u64 + 1,
                    max
                })
            );
            let at = post_of_len(max as usize);
            let bytes = encode(&at, max).unwrap();
            assert_eq!(bytes.len(), HEADER_LEN + max as usize);
            assert_eq!(&bytes[..HEADER_LEN], &max.to_le_bytes());
            assert_eq!(decode::<GuestFrame>(&bytes, max).unwrap(), at);
            assert_eq!(
                encode(&post_of_len(max as usize + 1), max),
                Err(WireError::TooLarge {
                    len: max as u64 + 1,
                    max
                })
            );
        }
        // No cap above the absolute one.
        let over = post_of_len(ABSOLUTE_MAX_FRAME_LEN as usize + 1);
        assert!(matches!(
            encode(&over, u32::MAX),
            Err(WireError::TooLarge {
                max: ABSOLUTE_MAX_FRAME_LEN,
                ..
            })
        ));
        let at = post_of_len(ABSOLUTE_MAX_FRAME_LEN as usize);
        assert!(encode(&at, u32::MAX).is_ok());
    }

    #[test]
    fn encoded_len_is_the_body_encode_writes() {
        for f in [
            GuestFrame::Post(Value::Int(42)),
            GuestFrame::Post(Value::Str(String::from("hello"))),
        ] {
            let bytes = encode(&f, DEFAULT_MAX_FRAME_LEN).unwrap();
            assert_eq!(encoded_len(&f).unwrap(), bytes.len() - HEADER_LEN);
        }
    }

    #[test]
    fn short_and_empty_bodies_are_errors() {
        assert_eq!(decode_body::<HostFrame>(&[]), Err(WireError::Empty));
        let bytes = encode(&HostFrame::Shutdown, 100).unwrap();
        // The prefix claims one byte more than there is.
        let mut short = bytes.clone();
        short[0] = 2;
        assert!(matches!(
            decode::<HostFrame>(&short, 100),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<HostFrame>(&bytes[..3], 100),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(decode::<HostFrame>(&bytes, 100), Ok(HostFrame::Shutdown));
    }

    #[test]
    fn header_is_checked_before_allocation() {
        let four_gib = u32::MAX.to_le_bytes();
        assert_eq!(
            body_len(four_gib, DEFAULT_MAX_FRAME_LEN),
            Err(WireError::TooLarge {
                len: u32::MAX as u64,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert_eq!(
            body_len((ABSOLUTE_MAX_FRAME_LEN + 1).to_le_bytes(), u32::MAX),
            Err(WireError::TooLarge {
                len: ABSOLUTE_MAX_FRAME_LEN as u64 + 1,
                max: ABSOLUTE_MAX_FRAME_LEN
            })
        );
        assert_eq!(body_len([0; 4], 10), Err(WireError::Empty));
    }

    #[test]
    fn trailing_and_truncated_bytes_are_errors() {
        let mut bytes = encode(&HostFrame::Shutdown, 100).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<HostFrame>(&bytes, 100),
            Err(WireError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode_body::<HostFrame>(&[4, 0]),
            Err(WireError::TrailingBytes(1))
        ));
        assert!(decode_body::<HostFrame>(&[1]).is_err());
        assert!(decode_body::<HostFrame>(&[99]).is_err());
        // Frames without an extension take no tail.
        assert_eq!(
            decode_body::<Value>(&[0, 0]),
            Err(WireError::TrailingBytes(1))
        );
        // A byte past the prefix's length is refused even where a handshake's extension could
        // take it (an empty feature list).
        let hello = crate::Hello::new("c", crate::EngineLimits::default(), alloc::vec![]);
        let mut bytes = encode(&HostFrame::Hello(hello), 1000).unwrap();
        bytes.push(0);
        assert_eq!(
            decode::<HostFrame>(&bytes, 1000),
            Err(WireError::TrailingBytes(1))
        );
    }
}
