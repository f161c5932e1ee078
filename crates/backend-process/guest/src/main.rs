//! Guest program of a `process` cell (phase 1: frame echo over the channel).
#![no_main]

const CHANNEL: i32 = 3;

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: buf is a valid writable buffer of the given length.
        let n = unsafe { libc::read(CHANNEL, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return 0;
        }
        let mut off = 0usize;
        while off < n as usize {
            // SAFETY: the range off..n lies inside buf.
            let w = unsafe { libc::write(CHANNEL, buf[off..].as_ptr().cast(), n as usize - off) };
            if w <= 0 {
                return 1;
            }
            off += w as usize;
        }
    }
}
