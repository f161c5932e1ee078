//! How far the guest's heap grows for one allocation, without touching memory. Compiled into
//! the guest and into the host crate's unit tests.

/// Heap growth step and alignment: one guest 2 MiB page.
pub const HEAP_STEP: usize = 2 * 1024 * 1024;

/// The new end of a heap ending at `from` (bounded by `limit`) for an allocation of `size`
/// bytes aligned to `align`: enough for it plus chunk overhead, rounded up to whole steps, never
/// past `limit`. `None` when the heap cannot grow at all.
pub fn grow_to(from: usize, size: usize, align: usize, limit: usize) -> Option<usize> {
    let want = from
        .checked_add(size)
        .and_then(|w| w.checked_add(align + 64))
        .and_then(|w| w.checked_next_multiple_of(HEAP_STEP))
        .unwrap_or(usize::MAX)
        .min(limit);
    (want > from).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_grows_in_whole_steps_up_to_its_limit() {
        let base = 8 * HEAP_STEP;
        let limit = 20 * HEAP_STEP;
        assert_eq!(grow_to(base, 1, 8, limit), Some(base + HEAP_STEP));
        assert_eq!(
            grow_to(base, HEAP_STEP, 8, limit),
            Some(base + 2 * HEAP_STEP)
        );
        // Past the limit: as much as there is; at the limit: nothing.
        assert_eq!(grow_to(base, 100 * HEAP_STEP, 8, limit), Some(limit));
        assert_eq!(grow_to(limit, 1, 8, limit), None);
        // Absurd requests saturate instead of wrapping around.
        assert_eq!(grow_to(base, usize::MAX, 8, limit), Some(limit));
        assert_eq!(
            grow_to(base, usize::MAX - base, usize::MAX / 2, limit),
            Some(limit)
        );
    }
}
