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
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The global allocator that makes `memory_mib` bind on in-process cells: the system
/// allocator plus a word per block naming the account that pays for it.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOCATOR: cell_backend_subinterp::AccountingAllocator =
///     cell_backend_subinterp::AccountingAllocator;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct AccountingAllocator;

/// One cell's account: the bytes its blocks take, against its limit. The cell holds it; a
/// block that outlives the cell still knows where to give its bytes back, so what the account
/// counts ([`Ledger`]) lives until the cell is gone and its last block is freed.
#[derive(Debug)]
pub struct Account {
    ledger: NonNull<Ledger>,
}

/// What an account counts: the bytes its live blocks asked for plus [`OWNED`] while its [`Account`]
/// exists. Whoever brings that to zero (the account's drop, or the refund of its last block)
/// frees it: one atomic update per block allocated and per block freed.
#[derive(Debug)]
struct Ledger {
    live: AtomicUsize,
    limit: usize,
}

/// Set in [`Ledger::live`] while the [`Account`] exists; no count of bytes reaches it.
const OWNED: usize = 1 << (usize::BITS - 1);

// SAFETY: the ledger is shared only through atomics and freed exactly once (see `Ledger`).
unsafe impl Send for Account {}
// SAFETY: as for `Send`.
unsafe impl Sync for Account {}

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The ledger this thread's allocations are charged to (null: none). A raw pointer in a
    /// `const` cell: reading it never allocates, so the allocator itself may.
    static CURRENT: Cell<*const Ledger> = const { Cell::new(ptr::null()) };
}

/// Whether [`AccountingAllocator`] is the program's global allocator (it has allocated).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

impl Account {
    /// An empty account that may hold `limit` bytes (0: no limit, only counting).
    pub fn new(limit: u64) -> Account {
        let ledger = Ledger {
            live: AtomicUsize::new(OWNED),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        };
        // Uncharged: the ledger may outlive whatever account is current now.
        let ledger = uncharged(|| NonNull::from(Box::leak(Box::new(ledger))));
        Account { ledger }
    }

    fn ledger(&self) -> &Ledger {
        // SAFETY: the ledger lives at least as long as its account (its OWNED bit).
        unsafe { self.ledger.as_ref() }
    }

    /// Bytes its live blocks asked for (the allocator's word per block left out).
    pub fn live_bytes(&self) -> usize {
        self.ledger().live.load(Ordering::Relaxed) & !OWNED
    }

    /// Whether its blocks take more than its limit.
    pub fn over_limit(&self) -> bool {
        let limit = self.ledger().limit;
        limit != 0 && self.live_bytes() > limit
    }

    /// Runs `f` with this account current on this thread: what `f` allocates is charged here.
    pub fn charge<R>(&self, f: impl FnOnce() -> R) -> R {
        let _current = Current::set(self.ledger.as_ptr());
        f()
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        // SAFETY: this account's OWNED bit kept the ledger alive until now; it is freed here
        // only if no block holds bytes on it, else by the refund of its last block.
        unsafe { release(self.ledger.as_ptr(), OWNED) }
    }
}

/// Takes `amount` off `ledger` and frees it if that was the last of it.
///
/// # Safety
/// `ledger` is live and `amount` is a share of it its caller holds (a block's bytes or the
/// account's OWNED bit), given up here.
unsafe fn release(ledger: *const Ledger, amount: usize) {
    // SAFETY: the caller's share keeps the ledger alive until this update; the update that
    // brings it to zero is the only one that sees zero, and it frees the ledger once.
    unsafe {
        if (*ledger).live.fetch_sub(amount, Ordering::AcqRel) == amount {
            drop(Box::from_raw(ledger.cast_mut()));
        }
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the engine's heap holds {} KiB against a limit of {} KiB",
            self.live_bytes() >> 10,
            self.ledger().limit >> 10
        )
    }
}

/// Runs `f` with no account current on this thread: what it allocates is the host's.
pub fn uncharged<R>(f: impl FnOnce() -> R) -> R {
    let _current = Current::set(ptr::null());
    f()
}

/// Makes a ledger current and restores the previous one when dropped (also on unwind).
struct Current(*const Ledger);

impl Current {
    fn set(account: *const Ledger) -> Current {
        Current(CURRENT.with(|c| c.replace(account)))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

fn current() -> *const Ledger {
    CURRENT.try_with(Cell::get).unwrap_or(ptr::null())
}

/// Bytes in front of every block: room for the account pointer, a multiple of the alignment
/// so that the block after it keeps the alignment asked for.
fn header(layout: Layout) -> usize {
    layout.align().max(size_of::<*const Ledger>())
}

/// The layout asked of the system allocator for `layout`: the header, then the block.
fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let header = header(layout);
    let size = layout.size().checked_add(header)?;
    Some((Layout::from_size_align(size, layout.align()).ok()?, header))
}

/// Charges `bytes` to the current ledger and returns it (null: none) for the block's header.
fn charge_current(bytes: usize) -> *const Ledger {
    let ledger = current();
    if !ledger.is_null() {
        // SAFETY: a current ledger's account is alive (its `charge` borrows it); the bytes
        // added here are the block's share, which keeps the ledger alive until it is freed.
        unsafe { (*ledger).live.fetch_add(bytes, Ordering::Relaxed) };
    }
    ledger
}

/// Gives `bytes` back to `ledger` (null: none).
///
/// # Safety
/// `ledger` is null or the pointer a live block's header holds, `bytes` that block's share.
unsafe fn refund(ledger: *const Ledger, bytes: usize) {
    if !ledger.is_null() {
        // SAFETY: as the caller promises.
        unsafe { release(ledger, bytes) }
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
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        // The size asked for, as the process and microvm guests count their heaps (the header
        // is the allocator's overhead, as theirs is theirs): a script stops at the same size on
        // every backend. GlobalAlloc is never asked for zero bytes, so every block holds a
        // share of its ledger.
        let account = charge_current(outer.size() - header);
        // SAFETY: the block is at least `header` bytes long and `header` is a multiple of the
        // alignment, at least a pointer's size; the pointer sits right before the user block.
        unsafe {
            let user = base.add(header);
            user.cast::<*const Ledger>().sub(1).write_unaligned(account);
            user
        }
    }

    /// The account a block's header names.
    ///
    /// # Safety
    /// `user` came from this allocator and is live.
    unsafe fn account_of(user: *mut u8) -> *const Ledger {
        // SAFETY: `finish` wrote the pointer right before the user block.
        unsafe { user.cast::<*const Ledger>().sub(1).read_unaligned() }
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
            refund(Self::account_of(user), outer.size() - header);
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
