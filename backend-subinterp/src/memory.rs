//! The heap a cell's engine holds, counted block by block, so `memory_mib` binds in-process.
//!
//! An in-process cell shares the host's allocator, so no kernel limit can separate its memory
//! from the host's. [`AccountingAllocator`], installed as the program's global allocator,
//! stamps every block with the account that was current on its thread when it was allocated
//! (the running cell's, or none) and gives the bytes back to that account when the block is
//! freed, on whatever thread and however late (a value the host keeps after the cell ran is
//! still the cell's until it is dropped). The backend makes a cell's account current while its
//! engine runs (except while the host side handles a frame, whose own allocations are the
//! host's) and stops the script at the next operation once the account is past its limit:
//! the cell is then gone with `limit_memory`, as a process or microVM cell whose memory ran out.
//!
//! What one operation allocates is bounded by the string, array and map limits, so a script
//! overshoots its limit by at most that much before it is stopped. Without the allocator
//! installed nothing is counted: [`installed`] says so, `cell doctor` shows the
//! `memory-accounting` layer inactive and a policy can require it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The global allocator that makes `memory_mib` bind on in-process cells: the system
/// allocator plus a word per block naming the account that pays for it.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: cell_backend_subinterp::AccountingAllocator =
///     cell_backend_subinterp::AccountingAllocator;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct AccountingAllocator;

/// The bytes one cell's blocks take, against its limit. Kept alive by its own blocks: a block
/// that outlives its cell still knows where to give its bytes back.
#[derive(Debug)]
pub struct Account {
    live: AtomicUsize,
    limit: usize,
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The account this thread's allocations are charged to (null: none). A raw pointer in a
    /// `const` cell: reading it never allocates, so the allocator itself may.
    static CURRENT: Cell<*const Account> = const { Cell::new(ptr::null()) };
}

/// Whether [`AccountingAllocator`] is the program's global allocator (it has allocated).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

impl Account {
    /// An empty account that may hold `limit` bytes (0: no limit, only counting).
    pub fn new(limit: u64) -> Arc<Account> {
        Arc::new(Account {
            live: AtomicUsize::new(0),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        })
    }

    /// Bytes its live blocks take (with the allocator's word per block).
    pub fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether its blocks take more than its limit.
    pub fn over_limit(&self) -> bool {
        self.limit != 0 && self.live_bytes() > self.limit
    }

    /// Runs `f` with this account current on this thread: what `f` allocates is charged here.
    pub fn charge<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        let _current = Current::set(Arc::as_ptr(self));
        f()
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the engine's heap holds {} KiB against a limit of {} KiB",
            self.live_bytes() >> 10,
            self.limit >> 10
        )
    }
}

/// Runs `f` with no account current on this thread: what it allocates is the host's.
pub fn uncharged<R>(f: impl FnOnce() -> R) -> R {
    let _current = Current::set(ptr::null());
    f()
}

/// Makes an account current and restores the previous one when dropped (also on unwind).
struct Current(*const Account);

impl Current {
    fn set(account: *const Account) -> Current {
        Current(CURRENT.with(|c| c.replace(account)))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

fn current() -> *const Account {
    CURRENT.try_with(Cell::get).unwrap_or(ptr::null())
}

/// Bytes in front of every block: room for the account pointer, a multiple of the alignment
/// so that the block after it keeps the alignment asked for.
fn header(layout: Layout) -> usize {
    layout.align().max(size_of::<*const Account>())
}

/// The layout asked of the system allocator for `layout`: the header, then the block.
fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let header = header(layout);
    let size = layout.size().checked_add(header)?;
    Some((Layout::from_size_align(size, layout.align()).ok()?, header))
}

/// Charges `bytes` to the current account and returns it (null: none) for the block's header.
fn charge_current(bytes: usize) -> *const Account {
    let account = current();
    if !account.is_null() {
        // SAFETY: a current account is kept alive by the `Arc` its `charge` borrows; the
        // count taken here is the block's own, given back when the block is freed.
        unsafe {
            Arc::increment_strong_count(account);
            (*account).live.fetch_add(bytes, Ordering::Relaxed);
        }
    }
    account
}

/// Gives `bytes` back to `account` (null: none) and drops the block's count on it.
///
/// # Safety
/// `account` is null or a pointer a block's header holds, whose count this gives back.
unsafe fn refund(account: *const Account, bytes: usize) {
    if !account.is_null() {
        // SAFETY: the block's count keeps the account alive until this decrement.
        unsafe {
            (*account).live.fetch_sub(bytes, Ordering::Relaxed);
            Arc::decrement_strong_count(account);
        }
    }
}

impl AccountingAllocator {
    /// Writes the header in front of a fresh system block and returns the caller's pointer.
    ///
    /// # Safety
    /// `base` is null or a system block of `outer` bytes with `header` bytes of header room.
    unsafe fn finish(base: *mut u8, outer: Layout, header: usize) -> *mut u8 {
        if base.is_null() {
            return base;
        }
        INSTALLED.store(true, Ordering::Relaxed);
        let account = charge_current(outer.size());
        // SAFETY: the block is at least `header` bytes long and `header` is a multiple of the
        // alignment, at least a pointer's size; the pointer sits right before the user block.
        unsafe {
            let user = base.add(header);
            user.cast::<*const Account>()
                .sub(1)
                .write_unaligned(account);
            user
        }
    }

    /// The account a block's header names.
    ///
    /// # Safety
    /// `user` came from this allocator and is live.
    unsafe fn account_of(user: *mut u8) -> *const Account {
        // SAFETY: `finish` wrote the pointer right before the user block.
        unsafe { user.cast::<*const Account>().sub(1).read_unaligned() }
    }
}

// SAFETY: every block is a system block with a header in front; the pointers handed out keep
// the requested alignment (the header is a multiple of it) and size, and every method maps a
// caller's pointer back to the system block it came from.
unsafe impl GlobalAlloc for AccountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = outer(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (the header) and the caller's alignment.
        unsafe { Self::finish(System.alloc(outer), outer, header) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = outer(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: as in `alloc`.
        unsafe { Self::finish(System.alloc_zeroed(outer), outer, header) }
    }

    unsafe fn dealloc(&self, user: *mut u8, layout: Layout) {
        // SAFETY: the block came from `alloc` with this layout, so `outer` succeeded then.
        unsafe {
            let (outer, header) = outer(layout).unwrap_unchecked();
            refund(Self::account_of(user), outer.size());
            System.dealloc(user.sub(header), outer);
        }
    }

    unsafe fn realloc(&self, user: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the block came from `alloc` with this layout; the system block moves with
        // its header (same alignment, so the same header size) and keeps its account, which
        // is charged or refunded the difference.
        unsafe {
            let (old, header) = outer(layout).unwrap_unchecked();
            let Some(new_outer) = new_size.checked_add(header) else {
                return ptr::null_mut();
            };
            if Layout::from_size_align(new_outer, layout.align()).is_err() {
                return ptr::null_mut();
            }
            let account = Self::account_of(user);
            let base = System.realloc(user.sub(header), old, new_outer);
            if base.is_null() {
                return base;
            }
            if !account.is_null() {
                if new_outer >= old.size() {
                    (*account)
                        .live
                        .fetch_add(new_outer - old.size(), Ordering::Relaxed);
                } else {
                    (*account)
                        .live
                        .fetch_sub(old.size() - new_outer, Ordering::Relaxed);
                }
            }
            base.add(header)
        }
    }
}
