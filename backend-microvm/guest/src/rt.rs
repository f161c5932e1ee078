//! Freestanding runtime support: allocator, mem* functions, panic reporting, unwinding stubs.
use crate::layout::*;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::asm;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use talc::DefaultBinning;
use talc::base::Talc;
use talc::base::binning::Binning;
use talc::cell::TalcCell;
use talc::source::Source;

use crate::growth::{HEAP_STEP, grow_to};

/// Hands the heap to talc a 2 MiB page at a time instead of all at once.
///
/// Why: talc keeps the size of a free chunk at its end, so claiming the whole heap up front writes
/// the last page of guest RAM. Each page the guest touches first costs a host fault and a zeroed
/// (huge) page, and under shadow paging a KVM fault too; growing on demand keeps a cell's memory
/// compact, so a small cell touches only the pages it uses.
#[derive(Clone, Debug)]
struct Grow {
    /// Current end of the heap (None before `init_heap`).
    end: Option<NonNull<u8>>,
    /// End of the memory the host reserved for the heap.
    limit: usize,
}

// SAFETY: `acquire` only calls `extend` on the `Talc` it is given, for memory the host reserved
// as heap and nothing else uses; it never allocates.
unsafe impl Source for Grow {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        let end = talc.source.end.ok_or(())?;
        let from = end.as_ptr() as usize;
        // talc asks again if that was not enough, and fails the allocation once we return Err.
        let want = grow_to(from, layout.size(), layout.align(), talc.source.limit).ok_or(())?;
        // SAFETY: `from..want` lies inside the heap the host reserved (bounded by `limit`) and
        // nothing else uses it; `end` is this heap's current end.
        let new_end = unsafe { talc.extend(end, want as *mut u8) };
        if new_end == end {
            return Err(());
        }
        talc.source.end = Some(new_end);
        Ok(())
    }
}

struct GuestAlloc(TalcCell<Grow, DefaultBinning>);

// SAFETY: the guest has a single vCPU, no threads, no interrupts and no signal handlers, so the
// allocator is never entered concurrently.
unsafe impl Sync for GuestAlloc {}

static LAST_FAILED: AtomicU64 = AtomicU64::new(0);

/// Live bytes of the heap, kept here at every allocation and free and published to
/// [`Mailbox::heap_in_use`] by [`publish_heap`]. Kept in the mailbox itself at every allocation,
/// a start in a new VM measured 1.57-2.15 ms against 1.38-1.42 ms without the count (three
/// alternating runs; the cause was not traced); published this way, 1.49-1.60 ms.
static HEAP_IN_USE: AtomicU64 = AtomicU64::new(0);

/// The most [`HEAP_IN_USE`] may reach: the cell's memory quota (from the boot page; 0, as
/// before `init_heap` and where the host gives none: no bound but the heap's RAM). An
/// allocation past it fails as one the heap cannot hold would, so the quota, counted as every
/// backend counts a cell's heap, says where a script stops, and the heap's room beyond it
/// takes the allocator's own overhead. Zero-initialised: in `.bss`, beside the count every
/// allocation writes anyway.
static HEAP_QUOTA: AtomicU64 = AtomicU64::new(0);

/// Whether `more` bytes of live blocks stay within the quota.
#[inline(always)]
fn within_quota(more: usize) -> bool {
    let quota = HEAP_QUOTA.load(Ordering::Relaxed);
    quota == 0
        || HEAP_IN_USE
            .load(Ordering::Relaxed)
            .saturating_add(more as u64)
            <= quota
}

#[inline(always)]
fn account(taken: usize, freed: usize) {
    // One vCPU, no threads: a load and a store, not a locked add.
    let live = HEAP_IN_USE.load(Ordering::Relaxed);
    HEAP_IN_USE.store(
        live.wrapping_sub(freed as u64).wrapping_add(taken as u64),
        Ordering::Relaxed,
    );
}

/// Publishes the heap's live bytes to the mailbox, where the host reads them: at every exit to
/// the host and every few thousand operations of a running script.
pub fn publish_heap() {
    // SAFETY: the mailbox lives in the boot page, mapped and writable; the guest alone writes
    // this field (the host only reads it), from its single vCPU.
    unsafe {
        core::ptr::write_volatile(
            &raw mut (*(MAILBOX_ADDR as *mut Mailbox)).heap_in_use,
            HEAP_IN_USE.load(Ordering::Relaxed),
        );
    }
}

impl GuestAlloc {
    /// Before a block at `ptr` grows to `size` bytes: extends the heap, if the grown block would
    /// end past it, up to where it would end (whole steps, within the limit). A block at the top
    /// of the heap (a string or array growing while nothing was allocated after it) then grows
    /// in place, so it needs its new size and not its old one as well, as a host allocator's
    /// `realloc` (`mremap`) does: a growing string reaches the same size under the same quota
    /// on every backend. Elsewhere the extension is what the copy to a new block would have
    /// taken anyway.
    fn extend_under(&self, ptr: usize, size: usize, align: usize) {
        let Grow {
            end: Some(end),
            limit,
        } = self.0.clone_source()
        else {
            return;
        };
        let from = end.as_ptr() as usize;
        let Some(past) = ptr.checked_add(size).and_then(|e| e.checked_sub(from)) else {
            return; // ends inside the heap already
        };
        let Some(want) = grow_to(from, past, align, limit) else {
            return;
        };
        // SAFETY: `from..want` lies inside the heap the host reserved (bounded by `limit`) and
        // nothing else uses it; `end` is this heap's current end.
        let new_end = unsafe { self.0.extend(end, want as *mut u8) };
        if new_end != end {
            self.0.replace_source(Grow {
                end: Some(new_end),
                limit,
            });
        }
    }
}

// SAFETY: delegates to talc; only records failed requests on the side.
unsafe impl GlobalAlloc for GuestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = if within_quota(layout.size()) {
            // SAFETY: caller upholds GlobalAlloc's contract.
            unsafe { self.0.alloc(layout) }
        } else {
            core::ptr::null_mut()
        };
        if p.is_null() {
            LAST_FAILED.store(layout.size() as u64, Ordering::Relaxed);
        } else {
            account(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(0, layout.size());
        // SAFETY: caller upholds GlobalAlloc's contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            if !within_quota(new_size - layout.size()) {
                LAST_FAILED.store(new_size as u64, Ordering::Relaxed);
                return core::ptr::null_mut();
            }
            self.extend_under(ptr as usize, new_size, layout.align());
        }
        // SAFETY: caller upholds GlobalAlloc's contract.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if p.is_null() {
            LAST_FAILED.store(new_size as u64, Ordering::Relaxed);
        } else {
            account(new_size, layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: GuestAlloc = GuestAlloc(TalcCell::new(Grow {
    end: None,
    limit: 0,
}));

/// Gives the allocator `[base, base+size)`: claimed up to the end of the 2 MiB page holding
/// `base` (at least 256 KiB, about what the runtime needs to start), the rest as it is needed;
/// its live blocks may take `quota` bytes (0: as much as the heap holds).
pub fn init_heap(base: u64, size: u64, quota: u64) {
    HEAP_QUOTA.store(quota, Ordering::Relaxed);
    let (base, limit) = (base as usize, base.saturating_add(size) as usize);
    let first = base
        .saturating_add(256 * 1024)
        .next_multiple_of(HEAP_STEP)
        .min(limit);
    // SAFETY: the host reserved [base, limit) as heap: RAM used by nothing else; first <= limit.
    let end = unsafe { ALLOC.0.claim(base as *mut u8, first - base) };
    let Some(end) = end else {
        fatal("heap too small")
    };
    ALLOC.0.replace_source(Grow {
        end: Some(end),
        limit,
    });
}

/// Report a fatal condition without allocating, then never return.
pub fn fatal(msg: &str) -> ! {
    // The message goes where deferred frames wait: they go first.
    crate::transport::flush_deferred();
    let info = crate::boot_info();
    let n = msg.len().min(info.g2h_cap as usize);
    // SAFETY: the g2h buffer is guest RAM reserved by the host; n <= its capacity.
    unsafe { core::ptr::copy_nonoverlapping(msg.as_ptr(), info.g2h_base as *mut u8, n) };
    loop {
        crate::port_out(PORT_PANIC, n as u32);
    }
}

/// A fixed buffer formatter (panics may happen with the heap exhausted).
struct Buf {
    data: [u8; 1024],
    len: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.data.len() {
                break;
            }
            self.data[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let failed = LAST_FAILED.load(Ordering::Relaxed);
    let mut buf = Buf {
        data: [0; 1024],
        len: 0,
    };
    let _ = write!(buf, "{}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(buf, " at {}:{}", loc.file(), loc.line());
    }
    if failed != 0 && buf.data[..buf.len].starts_with(b"memory allocation of") {
        // SAFETY: the mailbox lives in the boot page, mapped and writable.
        unsafe {
            core::ptr::write_volatile(&raw mut (*(MAILBOX_ADDR as *mut Mailbox)).oom_size, failed)
        };
        loop {
            crate::port_out(PORT_OOM, failed.min(u32::MAX as u64) as u32);
        }
    }
    // Cut at a char boundary so the message stays valid UTF-8.
    let mut n = buf.len;
    while n > 0 && core::str::from_utf8(&buf.data[..n]).is_err() {
        n -= 1;
    }
    let s = core::str::from_utf8(&buf.data[..n]).unwrap_or("panic");
    fatal(s)
}

#[inline(never)]
pub fn recurse(n: u64) -> u64 {
    let mut pad = [0u8; 512];
    // SAFETY: volatile write keeps the frame alive so each level really uses stack.
    unsafe { core::ptr::write_volatile(&mut pad[0], n as u8) };
    if n == 0 {
        0
    } else {
        recurse(n - 1).wrapping_add(pad[0] as u64)
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    fatal("_Unwind_Resume called with panic=abort")
}

#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

// The mem* functions. `rep movsb/stosb` cannot be turned back into calls to themselves.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees valid, non-overlapping ranges of n bytes.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    };
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dst is before src or the ranges do not overlap.
        // SAFETY: caller guarantees valid ranges of n bytes.
        unsafe {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
                 options(nostack, preserves_flags))
        };
    } else {
        // SAFETY: caller guarantees valid ranges; copy backwards with DF set, then clear it.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack))
        };
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees a valid range of n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: caller guarantees valid ranges of n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
