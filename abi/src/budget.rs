//! A ceiling on the memory one decode may take, charged as the value is built and before each
//! allocation: the decoder's shapes can hold ~171x the body (SPEC.md, "Decoding memory"), so a
//! receiver that cares bounds them with [`crate::wire::decode_body_within`]. The sizes charged
//! are the estimates of [`crate::memory`]; growing lists charge every buffer they take.
//!
//! With `std` the budget is per thread (one decode runs on one thread); without it there is no
//! ceiling and charging always succeeds.

#[cfg(feature = "std")]
mod imp {
    use std::cell::Cell;

    std::thread_local! {
        /// Bytes the decode in progress on this thread may still take (`None`: no ceiling).
        static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
        /// Whether a charge failed in the decode in progress.
        static EXCEEDED: Cell<bool> = const { Cell::new(false) };
    }

    /// Takes `bytes` from the budget; `false` (and the decode must fail) if it has not got them.
    pub(crate) fn charge(bytes: usize) -> bool {
        LEFT.with(|left| match left.get() {
            None => true,
            Some(n) if n >= bytes => {
                left.set(Some(n - bytes));
                true
            }
            Some(_) => {
                EXCEEDED.with(|e| e.set(true));
                false
            }
        })
    }

    /// Runs `decode` with a ceiling of `max` bytes; also says whether it was hit.
    pub(crate) fn within<R>(max: usize, decode: impl FnOnce() -> R) -> (R, bool) {
        struct Reset(Option<usize>, bool);
        impl Drop for Reset {
            fn drop(&mut self) {
                LEFT.with(|l| l.set(self.0));
                EXCEEDED.with(|e| e.set(self.1));
            }
        }
        // Restores the outer state even if `decode` unwinds.
        let _reset = Reset(LEFT.with(Cell::get), EXCEEDED.with(Cell::get));
        LEFT.with(|l| l.set(Some(max)));
        EXCEEDED.with(|e| e.set(false));
        let out = decode();
        (out, EXCEEDED.with(Cell::get))
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    pub(crate) fn charge(_: usize) -> bool {
        true
    }
}

pub(crate) use imp::*;
