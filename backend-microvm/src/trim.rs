//! Idle trim: a cold VM's heap is given back to the host, but for the pages the guest wrote, once
//! the VM has not run for [`IDLE`].
//!
//! A cold boot backs the heap with 2 MiB huge pages: KVM then maps each with one fault, where
//! 4 KiB pages cost a fault per page or per eight on this host's shadow paging (≈ 0.3-0.45 ms a
//! boot). A small cell writes only a few dozen pages of its first huge page, so an idle cold cell
//! held ≈ 2 MiB. One process-wide thread keeps a deadline per cold VM; at a VM's deadline, if it
//! has not run since, it rewrites each of its huge pages that is at least half zero as 4 KiB
//! pages holding only the written ones (`GuestMemory::split_if_sparse`). The boot keeps
//! its speed, the idle cell its memory, and a cell that runs again pays the KVM faults of the
//! pages it touches once.
//!
//! The VM's vCPU holds the VM's lock while it runs ([`Trim::running`]) and the trim holds it
//! while it rewrites memory, so the guest never sees memory in between. The host itself never
//! touches the range while the VM lives (its buffers and mailbox lie outside it).
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use crate::layout::IMAGE_BASE;
use crate::memory::GuestMemory;
use crate::setup::Layout;

/// How long a cold VM must not have run before its memory is trimmed.
pub const IDLE: Duration = Duration::from_secs(1);

/// One VM's part of the trim: held by the VM, visited by the trimmer's thread.
pub(crate) struct Trim {
    state: Mutex<VmState>,
    trimmer: Arc<Trimmer>,
    me: Weak<Trim>,
}

/// What the trim knows of a VM, under the lock its vCPU holds while it runs.
pub(crate) struct VmState {
    /// The VM's memory until the machine leaves the VM ([`Trim::release`]).
    mem: Option<ManuallyDrop<GuestMemory>>,
    /// The guest-physical range the trim may rewrite.
    range: (u64, u64),
    /// When the vCPU last started running.
    last_run: Instant,
    /// The huge pages the trim has read (their guest addresses).
    examined: BTreeSet<u64>,
    /// The range advised to stay in 4 KiB pages (`GuestMemory::split_if_sparse`).
    small: Option<Range<u64>>,
    /// Whether the trimmer holds a deadline for this VM: it drops it once the VM is trimmed, and
    /// the VM's next run gives it a new one.
    queued: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Trim {
    /// Starts trimming the heap of a cold VM of `layout` in `mem` when it is idle: from the
    /// image's base (its first 2 MiB are a shared file mapping or 4 KiB pages, never trimmed)
    /// to the host->guest buffer. None where the trimmer's thread cannot start.
    ///
    /// # Safety
    ///
    /// [`Trim::release`] must be called before `mem` is unmapped.
    pub(crate) unsafe fn start(mem: &GuestMemory, layout: &Layout) -> Option<Arc<Trim>> {
        let trimmer = trimmer()?;
        // SAFETY: the caller releases the trim before `mem` goes (see above).
        let alias = unsafe { mem.alias() };
        let range = (IMAGE_BASE, layout.boot.h2g_base);
        Some(trimmer.watch(alias, range))
    }

    /// Held while the vCPU runs: the trim waits for it, and the VM's idle time starts again.
    pub(crate) fn running(&self) -> MutexGuard<'_, VmState> {
        let mut st = lock(&self.state);
        st.last_run = Instant::now();
        if !st.queued {
            st.queued = true;
            self.trimmer
                .push(st.last_run + self.trimmer.idle, self.me.clone());
        }
        st
    }

    /// The machine leaves the VM: its memory is never touched by the trim again.
    pub(crate) fn release(&self) {
        lock(&self.state).mem = None;
    }

    /// At a deadline: trims the VM if it has not run for the idle time, else says when to look
    /// again. One huge page per hold of the lock, so a run that comes meanwhile waits for one
    /// page's trim at most (≈ 0.3 ms), not for a whole large heap's.
    fn visit(&self, now: Instant, idle: Duration) -> Visit {
        // The huge pages not read yet, found at the first hold, last first (popped in order).
        let mut pages: Option<Vec<u64>> = None;
        loop {
            let mut st = match self.state.try_lock() {
                Ok(st) => st,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // Running now: not idle.
                Err(TryLockError::WouldBlock) => return Visit::Again(now + idle),
            };
            let st = &mut *st;
            let Some(mem) = &st.mem else {
                return Visit::Gone;
            };
            let due = st.last_run + idle;
            if due > now {
                return Visit::Again(due);
            }
            let pages = pages.get_or_insert_with(|| {
                let mut found = mem.anonymous_huge_pages(st.range.0, st.range.1);
                found.retain(|a| !st.examined.contains(a));
                found.reverse();
                found
            });
            let Some(page) = pages.pop() else {
                st.queued = false;
                return Visit::Trimmed;
            };
            // Read once in the VM's life, split or left whole: a guest that runs and idles in
            // turn cannot make this thread read its whole memory again each time.
            st.examined.insert(page);
            let freed = mem.split_if_sparse(page, &mut st.small);
            self.trimmer
                .freed
                .fetch_add(freed as u64, AtomicOrdering::Relaxed);
        }
    }
}

enum Visit {
    Again(Instant),
    Trimmed,
    Gone,
}

/// A VM's deadline; the heap's top is the earliest.
struct Entry {
    at: Instant,
    vm: Weak<Trim>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

#[derive(Default)]
struct Queue {
    deadlines: BinaryHeap<Entry>,
    /// The thread is visiting a VM it took from `deadlines`.
    visiting: bool,
    /// VMs trimmed so far (tests and benches).
    trimmed: u64,
}

/// The process's trimmer: the deadlines and the thread that keeps them.
pub(crate) struct Trimmer {
    queue: Mutex<Queue>,
    /// Wakes the thread: a deadline earlier than the one it waits for.
    wake: Condvar,
    /// Wakes those waiting for the trim to settle.
    settled: Condvar,
    idle: Duration,
    /// Bytes given back so far (tests and benches).
    freed: AtomicU64,
}

fn trimmer() -> Option<Arc<Trimmer>> {
    static TRIMMER: OnceLock<Option<Arc<Trimmer>>> = OnceLock::new();
    TRIMMER.get_or_init(|| Trimmer::start(IDLE)).clone()
}

impl Trimmer {
    fn start(idle: Duration) -> Option<Arc<Trimmer>> {
        let t = Arc::new(Trimmer {
            queue: Mutex::default(),
            wake: Condvar::new(),
            settled: Condvar::new(),
            idle,
            freed: AtomicU64::new(0),
        });
        let run = t.clone();
        std::thread::Builder::new()
            .name("cell-vm-trim".into())
            .spawn(move || run.run())
            .ok()?;
        Some(t)
    }

    fn watch(self: &Arc<Self>, mem: ManuallyDrop<GuestMemory>, range: (u64, u64)) -> Arc<Trim> {
        let now = Instant::now();
        let trim = Arc::new_cyclic(|me| Trim {
            state: Mutex::new(VmState {
                mem: Some(mem),
                range,
                last_run: now,
                examined: BTreeSet::new(),
                small: None,
                queued: true,
            }),
            trimmer: self.clone(),
            me: me.clone(),
        });
        self.push(now + self.idle, Arc::downgrade(&trim));
        trim
    }

    fn push(&self, at: Instant, vm: Weak<Trim>) {
        let mut q = lock(&self.queue);
        let earliest = q.deadlines.peek().is_none_or(|top| at < top.at);
        q.deadlines.push(Entry { at, vm });
        if earliest {
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let mut q = lock(&self.queue);
        loop {
            let now = Instant::now();
            let Some(top) = q.deadlines.peek() else {
                q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            if top.at > now {
                // Late by up to a tenth of the idle time, so that one wake-up serves every VM
                // due within it: cells started back to back would otherwise wake this thread once
                // each (a context switch per cell on the other CPU).
                let wait = top.at - now + self.idle / 10;
                q = self
                    .wake
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let Some(entry) = q.deadlines.pop() else {
                continue;
            };
            q.visiting = true;
            drop(q);
            let visit = match entry.vm.upgrade() {
                Some(vm) => vm.visit(now, self.idle),
                None => Visit::Gone,
            };
            q = lock(&self.queue);
            q.visiting = false;
            match visit {
                Visit::Again(at) => q.deadlines.push(Entry { at, vm: entry.vm }),
                Visit::Trimmed => q.trimmed += 1,
                Visit::Gone => {}
            }
            self.settled.notify_all();
        }
    }

    /// Returns once every VM idle now has been visited: when none is due before the idle time
    /// from now and none is being visited (at most the idle time and a tenth of it). Returns the
    /// bytes freed and the VMs trimmed so far.
    fn settle(&self) -> (u64, u64) {
        let by = Instant::now() + self.idle;
        let mut q = lock(&self.queue);
        while q.visiting || q.deadlines.peek().is_some_and(|top| top.at <= by) {
            q = self.settled.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        (self.freed.load(AtomicOrdering::Relaxed), q.trimmed)
    }
}

/// Bench and test only: waits until every cold VM of this process that is idle now has been
/// trimmed (at most [`IDLE`] and a tenth, and the trims themselves), and returns the bytes given
/// back and the VMs trimmed since the process started.
#[doc(hidden)]
pub fn settle() -> (u64, u64) {
    trimmer().map_or((0, 0), |t| t.settle())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::HUGE_PAGE;

    /// An anonymous memory like a cold VM's heap: advised for huge pages, `pages` of its second
    /// 2 MiB written with a pattern. None where the host gives it no huge page.
    fn sparse_heap(pages: usize) -> Option<GuestMemory> {
        let mem = GuestMemory::anonymous(3 * HUGE_PAGE).unwrap();
        mem.advise_huge(HUGE_PAGE as u64, 3 * HUGE_PAGE as u64)
            .unwrap();
        for i in 0..pages {
            let addr = (HUGE_PAGE + i * 8 * 4096) as u64;
            mem.write(addr, &[i as u8 + 1; 100]).unwrap();
        }
        if !mem.huge_mapped(HUGE_PAGE as u64, HUGE_PAGE) {
            eprintln!("SKIPPED: this host maps no transparent huge page for advised memory");
            return None;
        }
        Some(mem)
    }

    fn heap_pages_resident(mem: &GuestMemory) -> usize {
        let heap = HUGE_PAGE as u64..2 * HUGE_PAGE as u64;
        mem.resident_pages()
            .unwrap()
            .into_iter()
            .filter(|a| heap.contains(a))
            .count()
    }

    #[test]
    fn a_sparse_huge_page_keeps_only_its_written_pages_with_their_bytes() {
        let Some(mem) = sparse_heap(20) else { return };
        let all = 3 * HUGE_PAGE as u64;
        assert_eq!(mem.anonymous_huge_pages(0, all), vec![HUGE_PAGE as u64]);
        let freed = mem.split_if_sparse(HUGE_PAGE as u64, &mut None);
        assert_eq!(freed, (512 - 20) * 4096);
        assert!(!mem.huge_mapped(HUGE_PAGE as u64, HUGE_PAGE));
        assert_eq!(heap_pages_resident(&mem), 20);
        for i in 0..20 {
            let addr = (HUGE_PAGE + i * 8 * 4096) as u64;
            let mut b = [0u8; 4096];
            mem.read(addr, &mut b).unwrap();
            assert!(b[..100].iter().all(|&x| x == i as u8 + 1), "page {i}");
            assert!(b[100..].iter().all(|&x| x == 0));
        }
        // A later write makes a 4 KiB page, not a huge page again.
        mem.write(HUGE_PAGE as u64 + 4096, &[7]).unwrap();
        assert_eq!(heap_pages_resident(&mem), 21);
        assert!(mem.anonymous_huge_pages(0, all).is_empty());
        assert_eq!(mem.split_if_sparse(HUGE_PAGE as u64, &mut None), 0);
    }

    /// 60 of every eighth page and the rest of the first half written: more than half in use.
    fn dense_heap() -> Option<GuestMemory> {
        let mem = sparse_heap(60)?;
        for i in 0..256 {
            mem.write((HUGE_PAGE + i * 4096 + 200) as u64, &[9])
                .unwrap();
        }
        Some(mem)
    }

    #[test]
    fn a_mostly_written_huge_page_is_left_whole() {
        let Some(mem) = dense_heap() else { return };
        assert_eq!(mem.split_if_sparse(HUGE_PAGE as u64, &mut None), 0);
        assert!(mem.huge_mapped(HUGE_PAGE as u64, HUGE_PAGE));
        // Not a huge page's address, or not a huge page: nothing.
        assert_eq!(mem.split_if_sparse(HUGE_PAGE as u64 + 4096, &mut None), 0);
        assert_eq!(mem.split_if_sparse(0, &mut None), 0);
    }

    /// The mappings (VMAs) of this process that lie in `mem`.
    fn vmas_in(mem: &GuestMemory) -> usize {
        let (lo, hi) = (mem.host_addr(), mem.host_addr() + mem.len() as u64);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|l| l.split(['-', ' ']).next())
            .filter_map(|a| u64::from_str_radix(a, 16).ok())
            .filter(|a| (lo..hi).contains(a))
            .count()
    }

    #[test]
    fn however_many_pages_are_split_the_mapping_keeps_one_small_page_range() {
        // Five huge pages: the 2nd and 4th sparse, the 3rd written whole.
        let mem = GuestMemory::anonymous(5 * HUGE_PAGE).unwrap();
        let (h, all) = (HUGE_PAGE as u64, 5 * HUGE_PAGE as u64);
        mem.advise_huge(h, all).unwrap();
        mem.write(h, &[1]).unwrap();
        mem.fill(2 * h, HUGE_PAGE, 0xff).unwrap();
        mem.write(3 * h, &[3]).unwrap();
        if mem.anonymous_huge_pages(0, all) != [h, 2 * h, 3 * h] {
            eprintln!("SKIPPED: this host maps no transparent huge page for advised memory");
            return;
        }
        let before = vmas_in(&mem);
        let mut small = None;
        for page in [h, 2 * h, 3 * h] {
            mem.split_if_sparse(page, &mut small);
        }
        assert_eq!(small, Some(h..4 * h));
        // One range advised for 4 KiB pages, the 2nd to the 4th page, where advice per split
        // page would have cut the advised heap into five: one boundary more (at the 5th), not
        // three.
        assert_eq!(vmas_in(&mem), before + 1);
        // The dense page in between stays mapped whole; the split ones hold what was written.
        assert!(mem.huge_mapped(2 * h, HUGE_PAGE));
        assert_eq!(mem.anonymous_huge_pages(0, all), [2 * h]);
        let mut b = [0u8; 1];
        mem.read(3 * h, &mut b).unwrap();
        assert_eq!(b, [3]);
    }

    #[test]
    fn a_vms_huge_page_is_read_once_in_its_life() {
        let Some(mem) = dense_heap() else { return };
        let trimmer = Trimmer::start(Duration::from_millis(20)).unwrap();
        // SAFETY: the trim is released below, before `mem` is dropped.
        let trim = trimmer.watch(unsafe { mem.alias() }, (0, 3 * HUGE_PAGE as u64));
        assert_eq!(trimmer.settle().1, 1);
        assert!(mem.huge_mapped(HUGE_PAGE as u64, HUGE_PAGE));
        // Zeroed since and run again: the trim does not read that page again.
        mem.fill(HUGE_PAGE as u64, HUGE_PAGE, 0).unwrap();
        drop(trim.running());
        assert_eq!(trimmer.settle().1, 2);
        assert!(mem.huge_mapped(HUGE_PAGE as u64, HUGE_PAGE));
        trim.release();
    }

    #[test]
    fn an_idle_vm_is_trimmed_once_and_again_after_it_ran() {
        let Some(mem) = sparse_heap(10) else { return };
        let trimmer = Trimmer::start(Duration::from_millis(20)).unwrap();
        // SAFETY: the trim is released below, before `mem` is dropped.
        let trim = trimmer.watch(unsafe { mem.alias() }, (0, 3 * HUGE_PAGE as u64));
        assert_eq!(trimmer.settle(), ((512 - 10) * 4096, 1));
        assert_eq!(heap_pages_resident(&mem), 10);
        // Nothing to trim and no deadline while it does not run.
        assert!(lock(&trimmer.queue).deadlines.is_empty());
        // A run (the vCPU's lock) gives it a deadline again; a huge page made since is trimmed.
        drop(trim.running());
        mem.advise_huge(2 * HUGE_PAGE as u64, 3 * HUGE_PAGE as u64)
            .unwrap();
        mem.write(2 * HUGE_PAGE as u64, &[1]).unwrap();
        let (freed, trimmed) = trimmer.settle();
        assert_eq!(trimmed, 2);
        if mem.resident_pages().unwrap().len() == 11 {
            assert_eq!(freed, (2 * 512 - 11) * 4096);
        }
        trim.release();
        drop(trim.running());
        trimmer.settle();
        assert_eq!(
            lock(&trimmer.queue).trimmed,
            2,
            "a released VM is not trimmed"
        );
    }

    #[test]
    fn a_vm_that_runs_is_not_trimmed() {
        let Some(mem) = sparse_heap(10) else { return };
        let trimmer = Trimmer::start(Duration::from_secs(3600)).unwrap();
        // SAFETY: the trim is released below, before `mem` is dropped.
        let trim = trimmer.watch(unsafe { mem.alias() }, (0, 3 * HUGE_PAGE as u64));
        // Its deadline passes while the vCPU holds the lock: the trim waits for another.
        let running = trim.running();
        let visit = trim.visit(Instant::now() + Duration::from_secs(7200), trimmer.idle);
        assert!(matches!(visit, Visit::Again(_)));
        drop(running);
        // Ran within the idle time: not due yet.
        let visit = trim.visit(Instant::now(), trimmer.idle);
        assert!(matches!(visit, Visit::Again(_)));
        assert!(mem.huge_mapped(HUGE_PAGE as u64, HUGE_PAGE));
        trim.release();
    }
}
