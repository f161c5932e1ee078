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

/// The body of a host frame (prefix included in `bytes`), once its prefix is valid for `max`
/// and agrees with the bytes the host placed.
pub fn host_frame_body(bytes: &[u8], max: u32) -> Result<&[u8], &'static str> {
    let Some((head, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err("host frame shorter than its prefix");
    };
    let n = wire::body_len(*head, max).map_err(|_| "bad host frame prefix")?;
    if n != body.len() {
        return Err("host frame prefix does not match its length");
    }
    Ok(body)
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
    fn a_host_frame_is_accepted_only_when_its_prefix_matches_its_bytes() {
        let frame = wire::encode(&HostFrame::Shutdown, 1024).unwrap();
        let body = host_frame_body(&frame, 1024).unwrap();
        assert_eq!(body, &frame[HEADER_LEN..]);
        assert_eq!(
            wire::decode_body::<HostFrame>(body).unwrap(),
            HostFrame::Shutdown
        );
        assert!(host_frame_body(&frame[..2], 1024).is_err(), "short prefix");
        assert!(
            host_frame_body(&frame[..frame.len() - 1], 1024).is_err(),
            "truncated"
        );
        let mut long = frame.clone();
        long.push(0);
        assert!(host_frame_body(&long, 1024).is_err(), "trailing bytes");
        assert!(host_frame_body(&frame, 0).is_err(), "over the cap");
    }
}
