//! The channel's framing rules, without I/O: what fits a buffer and how a host frame's prefix is
//! checked before its body is decoded. Compiled into the guest and into the host crate's unit
//! tests (the guest image itself has no test harness).
use abi::wire::{self, HEADER_LEN};

/// Largest frame body both buffers carry (each holds the 4-byte prefix too).
pub fn max_body_len(h2g_cap: usize, g2h_cap: usize) -> u32 {
    let cap = h2g_cap.min(g2h_cap).saturating_sub(HEADER_LEN);
    cap.min(u32::MAX as usize) as u32
}

/// Whether a guest frame of `len` bytes can be handed over in a buffer of `cap` bytes (the
/// doorbell carries a non-zero `u32`: zero means "waiting for a frame").
pub fn fits_buffer(len: usize, cap: usize) -> bool {
    len != 0 && len <= cap && len <= u32::MAX as usize
}

/// The first host frame of a batch the host placed (`bytes`, prefixes included): its body and
/// the bytes after it, once its prefix is valid for `max` and the batch holds the whole body.
/// The host places one frame, or the handshake and the first transaction's frame together.
pub fn next_host_frame(bytes: &[u8], max: u32) -> Result<(&[u8], &[u8]), &'static str> {
    if bytes.len() < HEADER_LEN {
        return Err("host frame shorter than its prefix");
    }
    wire::split_first(bytes, max).map_err(|e| match e {
        wire::WireError::Malformed(_) => "host frame longer than the bytes placed",
        _ => "bad host frame prefix",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::HostFrame;

    #[test]
    fn buffers_carry_their_capacity_less_the_prefix() {
        assert_eq!(max_body_len(1024, 4096), 1020);
        assert_eq!(max_body_len(2, 4096), 0);
        assert_eq!(max_body_len(usize::MAX, usize::MAX), u32::MAX);
        assert!(fits_buffer(1, 1) && fits_buffer(4096, 4096));
        assert!(
            !fits_buffer(0, 4096),
            "an empty frame would read as 'waiting'"
        );
        assert!(!fits_buffer(4097, 4096));
        assert!(!fits_buffer(u32::MAX as usize + 1, usize::MAX));
    }

    #[test]
    fn host_frames_are_taken_one_by_one_each_prefix_checked() {
        let frame = wire::encode(&HostFrame::Shutdown, 1024).unwrap();
        let (body, rest) = next_host_frame(&frame, 1024).unwrap();
        assert_eq!(body, &frame[HEADER_LEN..]);
        assert!(rest.is_empty());
        assert_eq!(
            wire::decode_body::<HostFrame>(body).unwrap(),
            HostFrame::Shutdown
        );
        assert!(next_host_frame(&frame[..2], 1024).is_err(), "short prefix");
        assert!(
            next_host_frame(&frame[..frame.len() - 1], 1024).is_err(),
            "truncated"
        );
        assert!(next_host_frame(&frame, 0).is_err(), "over the cap");
        // A batch: the handshake and the first exec, placed together.
        let exec = HostFrame::Exec {
            id: 1,
            source: "1".into(),
        };
        let mut batch = frame.clone();
        batch.extend(wire::encode(&exec, 1024).unwrap());
        let (first, rest) = next_host_frame(&batch, 1024).unwrap();
        assert_eq!(
            wire::decode_body::<HostFrame>(first).unwrap(),
            HostFrame::Shutdown
        );
        let (second, rest) = next_host_frame(rest, 1024).unwrap();
        assert_eq!(wire::decode_body::<HostFrame>(second).unwrap(), exec);
        assert!(rest.is_empty());
        // Trailing bytes that are not a whole frame are refused when they are read.
        batch.push(7);
        let (_, rest) = next_host_frame(&batch, 1024).unwrap();
        let (_, rest) = next_host_frame(rest, 1024).unwrap();
        assert!(next_host_frame(rest, 1024).is_err());
    }

    proptest::proptest! {
        /// Any batch of whole frames splits back into exactly those frames, in order; cut
        /// anywhere inside its last frame, the batch yields the frames before it and then an
        /// error, never a frame made of the wrong bytes.
        #[test]
        fn a_batch_splits_into_its_frames_and_a_cut_one_is_refused(
            sources in proptest::collection::vec("[ -~]{0,40}", 1..6),
            cut in 1usize..64,
        ) {
            let frames: Vec<Vec<u8>> = sources
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    wire::encode(&HostFrame::Exec { id: i as u64, source: s.clone() }, 4096).unwrap()
                })
                .collect();
            let batch = frames.concat();
            let mut rest = &batch[..];
            for frame in &frames {
                let (body, after) = next_host_frame(rest, 4096).unwrap();
                proptest::prop_assert_eq!(body, &frame[HEADER_LEN..]);
                rest = after;
            }
            proptest::prop_assert!(rest.is_empty());
            let last = frames.last().unwrap().len();
            let cut = cut.min(last);
            let mut rest = &batch[..batch.len() - cut];
            for _ in 0..frames.len() - 1 {
                rest = next_host_frame(rest, 4096).unwrap().1;
            }
            proptest::prop_assert!(next_host_frame(rest, 4096).is_err());
        }
    }
}
