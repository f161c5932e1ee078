//! The host's read buffer for one cell's channel: bytes read ahead of the frame being decoded,
//! so that a small frame costs one `read` (header and body together).
//!
//! It starts small and doubles after a read that filled it (more was likely waiting), up to
//! [`MAX`]. Most cells only ever get small frames, and a live cell's buffer is host memory for
//! as long as it lives: 64 KiB from the start was 128 MB of the host's heap for 2,000 idle
//! process cells.

/// The first size.
const FIRST: usize = 4 << 10;
/// The largest size: a bigger frame is read through it in parts.
pub(crate) const MAX: usize = 64 << 10;

pub(crate) struct ReadBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last read filled the buffer: it grows before the next one.
    filled: bool,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: vec![0; FIRST].into_boxed_slice(),
            start: 0,
            end: 0,
            filled: false,
        }
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops the first `n` unread bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consumed past what was read");
        self.start += n;
    }

    /// Where the next read goes, made room for first (empty only while [`MAX`] bytes are unread).
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        self.make_room();
        &mut self.buf[self.end..]
    }

    /// Records that a read put `n` bytes into [`Self::spare`].
    pub(crate) fn filled_by(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "read past the spare room");
        self.end += n;
        self.filled = n > 0 && self.end == self.buf.len();
    }

    /// Grows the buffer when the last read filled it; else moves the unread bytes to the front
    /// when they reach its end.
    fn make_room(&mut self) {
        if self.filled && self.buf.len() < MAX {
            let unread = self.end - self.start;
            let mut grown = vec![0; (self.buf.len() * 2).min(MAX)].into_boxed_slice();
            grown[..unread].copy_from_slice(self.unread());
            self.buf = grown;
            (self.start, self.end) = (0, unread);
        } else if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        self.filled = false;
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads `input` through the buffer, `chunk` bytes at most per read, consuming `take`
    /// bytes whenever that many are there (or all there is, once the input is read or the
    /// buffer is full, as a frame's body is); returns what came out and the largest size.
    fn pass(input: &[u8], chunk: usize, take: usize) -> (Vec<u8>, usize) {
        let mut rb = ReadBuf::new();
        let (mut out, mut fed, mut largest) = (Vec::new(), 0, 0);
        while out.len() < input.len() {
            let mut full = false;
            if fed < input.len() {
                let spare = rb.spare();
                full = spare.is_empty();
                let n = spare.len().min(chunk).min(input.len() - fed);
                spare[..n].copy_from_slice(&input[fed..fed + n]);
                rb.filled_by(n);
                fed += n;
            }
            largest = largest.max(rb.capacity());
            let have = rb.unread().len();
            if have >= take || fed == input.len() || full {
                let n = have.min(take);
                out.extend_from_slice(&rb.unread()[..n]);
                rb.consume(n);
            }
        }
        (out, largest)
    }

    #[test]
    fn small_frames_keep_the_first_size() {
        let (out, largest) = pass(&[7; 10_000], 100, 100);
        assert_eq!(out, vec![7; 10_000]);
        assert_eq!(largest, FIRST);
    }

    #[test]
    fn reads_that_fill_it_grow_it_to_the_maximum_and_no_further() {
        let input: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let (out, largest) = pass(&input, usize::MAX, usize::MAX);
        assert_eq!(out, input);
        assert_eq!(largest, MAX);
    }

    proptest! {
        #[test]
        fn bytes_come_out_in_order_and_the_size_stays_bounded(
            input in proptest::collection::vec(any::<u8>(), 0..100_000),
            chunk in 1usize..100_000,
            take in 1usize..100_000,
        ) {
            let (out, largest) = pass(&input, chunk, take);
            prop_assert_eq!(out, input);
            prop_assert!((FIRST..=MAX).contains(&largest));
        }
    }
}
