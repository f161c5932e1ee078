//! Guest RAM: one host mapping, accessed only through bounds-checked copies.
//!
//! The vCPU runs only on the thread that holds `&mut Vm`, so the host never reads guest memory
//! while the guest is running; still, every offset and length coming from the guest is checked
//! against the mapping before any access.
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::VmError;

/// Size of a huge page (a 2 MiB guest page).
pub(crate) const HUGE_PAGE: usize = 2 * 1024 * 1024;

pub(crate) struct GuestMemory {
    ptr: *mut u8,
    len: usize,
    /// Private mapping of a snapshot file: `MADV_DONTNEED` reverts it to the snapshot.
    private_file: bool,
}

// SAFETY: the mapping is owned by this value and only accessed through `&self`/`&mut self`
// methods of the VM that owns it; moving it to another thread is fine.
unsafe impl Send for GuestMemory {}

fn mmap(len: usize, prot: i32, flags: i32, fd: i32) -> Result<*mut u8, VmError> {
    // SAFETY: a fresh mapping at a kernel-chosen address; no existing memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(VmError::Memory(format!(
            "mmap of {len} bytes failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    // Guest memory is never a forked child's: a process cell cloned from this process while a
    // snapshot is being built would otherwise hold a writable shared mapping of the memfd until
    // it execs, and sealing the snapshot fails with EBUSY meanwhile. (Nor does a child need a
    // copy-on-write share of every VM's memory.)
    // SAFETY: advice on the whole mapping just made; it changes no contents.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: the mapping just made, used by nothing yet.
        unsafe { libc::munmap(p, len) };
        return Err(VmError::Memory(format!(
            "keeping {len} bytes of guest memory from forks: {e}"
        )));
    }
    Ok(p.cast())
}

impl GuestMemory {
    /// Zeroed anonymous memory, 2 MiB aligned so that parts of it can be backed by transparent
    /// huge pages (see [`Self::advise_huge`]): a guest 2 MiB page maps to one host huge page only
    /// when the guest-physical and host addresses agree modulo 2 MiB.
    pub fn anonymous(len: usize) -> Result<Self, VmError> {
        let slack = HUGE_PAGE;
        let raw = mmap(
            len + slack,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        let head = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
        // SAFETY: `raw..raw + len + slack` is the mapping just made; `ptr..ptr + len` stays inside
        // it (head < slack), and only the unused head and tail are unmapped.
        let ptr = unsafe {
            let ptr = raw.add(head);
            if head > 0 {
                libc::munmap(raw.cast(), head);
            }
            if slack - head > 0 {
                libc::munmap(ptr.add(len).cast(), slack - head);
            }
            ptr
        };
        Ok(GuestMemory {
            ptr,
            len,
            private_file: false,
        })
    }

    /// Map `fd` shared (writes go to the file: used to build a snapshot) or private
    /// (copy-on-write clone of the snapshot, 2 MiB aligned like [`Self::anonymous`], so that
    /// where the file's pages are 2 MiB folios the host, and then KVM, map a guest 2 MiB page at
    /// once: see [`Self::map_file_private`]).
    pub fn from_fd(fd: &OwnedFd, len: usize, shared: bool) -> Result<Self, VmError> {
        if !shared {
            let mut mem = Self::anonymous(len)?;
            mem.map_file_private(0, len, fd)?;
            mem.private_file = true;
            return Ok(mem);
        }
        let ptr = mmap(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
        )?;
        // Where the node lets shmem use transparent huge pages on advice
        // (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `advise`), the snapshot is
        // written into 2 MiB pages and each new VM's read faults map 2 MiB at once, so KVM's
        // shadow MMU takes one fault per huge page instead of one per 4 KiB page (the first
        // exec of a new VM went from ≈ 4.0 to ≈ 0.8 ms here). Writes still copy 4 KiB pages.
        // Advice only: with `never`, nothing changes.
        // SAFETY: advice on the whole mapping just made; it changes no contents.
        unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        Ok(GuestMemory {
            ptr,
            len,
            private_file: false,
        })
    }

    /// Replaces guest memory `[addr, addr + len)` (page aligned, inside the mapping) with a
    /// private, copy-on-write mapping of `fd` from offset 0, advised for huge pages: reads see
    /// the file's pages (shared with every other mapping of it), a write copies the page it
    /// touches into memory of this mapping alone, and the file never changes. Only for memory no
    /// VM uses yet (before the VM is created): the old contents of the range are dropped.
    pub fn map_file_private(&self, addr: u64, len: usize, fd: &OwnedFd) -> Result<(), VmError> {
        let start = self.range(addr, len)?;
        if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
            return Err(VmError::GuestAddress {
                addr,
                len: len as u64,
            });
        }
        // SAFETY: `[ptr + start, ptr + start + len)` lies inside this value's own mapping
        // (checked above), so MAP_FIXED replaces only memory we own; no reference into that range
        // is held (all access goes through bounds-checked copies) and no VM maps it yet.
        let p = unsafe {
            libc::mmap(
                self.ptr.add(start).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VmError::Memory(format!(
                "mapping {len} bytes of a file into guest memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        // The new mapping does not inherit the rest's advice: keep it from forks too (see `mmap`).
        // SAFETY: advice on the range just mapped; it changes no contents.
        if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
            return Err(VmError::Memory(format!(
                "keeping {len} bytes of guest memory from forks: {}",
                std::io::Error::last_os_error()
            )));
        }
        // Advised for huge pages: where the file's page cache holds 2 MiB folios, a read fault
        // maps 2 MiB at once (in the host, and so in KVM's MMU). Advice only.
        // SAFETY: advice on the range just mapped; it changes no contents.
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        Ok(())
    }

    /// Read-only shared view of `fd` (the sealed snapshot), used as the source of resets.
    pub fn read_only_view(fd: &OwnedFd, len: usize) -> Result<Self, VmError> {
        let ptr = mmap(len, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd())?;
        Ok(GuestMemory {
            ptr,
            len,
            private_file: false,
        })
    }

    /// Advises `[start, end)` (page aligned, inside the mapping) for transparent huge pages.
    ///
    /// Why: every first touch of a guest page costs a host page fault and, under shadow paging
    /// (this host's PVM), a KVM fault too. When the host backs a 2 MiB range with a huge page
    /// and the guest maps it with a 2 MiB page, KVM maps all of it at once: a cold boot touches
    /// ≈ 700 pages of image and heap, so this is the difference between ≈ 700 faults and a
    /// handful. Only worth it where the guest touches much of each 2 MiB (a huge page is zeroed
    /// whole on first touch). Advice only: without THP this stays plain anonymous memory.
    pub fn advise_huge(&self, start: u64, end: u64) -> Result<(), VmError> {
        let n = end.saturating_sub(start) as usize;
        let start = self.range(start, n)?;
        if n > 0 && start % PAGE == 0 {
            // SAFETY: advice on a page-aligned range inside our own mapping (checked above); it
            // changes no contents. Refusal (THP disabled) is harmless, so the result is ignored.
            unsafe { libc::madvise(self.ptr.add(start).cast(), n, libc::MADV_HUGEPAGE) };
        }
        Ok(())
    }

    /// Makes the private copies of the pages in `runs` (page index, count) now, as the guest's
    /// writes would (`MADV_POPULATE_WRITE`), so they are present and writable in the host.
    ///
    /// Why: KVM's shadow MMU, faulting one guest page in, also maps the aligned group of eight
    /// around it whose host pages are present *and writable*; a copy-on-write page the guest
    /// writes first costs two KVM faults (read mapping, then the write), one written after its
    /// neighbour was copied here costs none. Advice only: a refusal leaves the faults as they were.
    pub fn populate_write(&self, runs: &[(usize, usize)]) {
        for &(start, n) in runs {
            let (off, len) = (start * PAGE, n * PAGE);
            if off.checked_add(len).is_none_or(|end| end > self.len) {
                continue;
            }
            // SAFETY: a page-aligned range inside our own private mapping (checked above); the
            // populate makes private copies equal to what they copy and changes no contents.
            unsafe { libc::madvise(self.ptr.add(off).cast(), len, libc::MADV_POPULATE_WRITE) };
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    fn range(&self, addr: u64, n: usize) -> Result<usize, VmError> {
        let start = usize::try_from(addr).map_err(|_| VmError::GuestAddress {
            addr,
            len: n as u64,
        })?;
        match start.checked_add(n) {
            Some(end) if end <= self.len => Ok(start),
            _ => Err(VmError::GuestAddress {
                addr,
                len: n as u64,
            }),
        }
    }

    /// Guest-physical addresses of the pages resident in host memory (`mincore`).
    pub fn resident_pages(&self) -> Result<Vec<u64>, VmError> {
        let mut vec = vec![0u8; self.len.div_ceil(PAGE)];
        // SAFETY: `ptr..ptr+len` is our own page-aligned mapping and `vec` has one byte per page.
        let r = unsafe { libc::mincore(self.ptr.cast(), self.len, vec.as_mut_ptr()) };
        if r != 0 {
            return Err(VmError::Memory(format!(
                "mincore: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(vec
            .iter()
            .enumerate()
            .filter(|(_, b)| **b & 1 != 0)
            .map(|(i, _)| (i * PAGE) as u64)
            .collect())
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), VmError> {
        let start = self.range(addr, buf.len())?;
        // SAFETY: [start, start+len) is inside the mapping (checked above); buf is a distinct
        // host allocation, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), VmError> {
        let start = self.range(addr, data.len())?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(start), data.len()) };
        Ok(())
    }

    pub fn fill(&self, addr: u64, n: usize, byte: u8) -> Result<(), VmError> {
        let start = self.range(addr, n)?;
        // SAFETY: [start, start+n) is inside the mapping (checked above).
        unsafe { std::ptr::write_bytes(self.ptr.add(start), byte, n) };
        Ok(())
    }

    pub fn read_u32(&self, addr: u64) -> Result<u32, VmError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write_u32(&self, addr: u64, v: u32) -> Result<(), VmError> {
        self.write(addr, &v.to_le_bytes())
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, VmError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u64(&self, addr: u64, v: u64) -> Result<(), VmError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// A word of guest memory shared with another thread of the host while the guest may run
    /// (the interrupt word): accessed only atomically on the host side.
    pub fn atomic_u32(&self, addr: u64) -> Result<&std::sync::atomic::AtomicU32, VmError> {
        let start = self.range(addr, 4)?;
        if start % 4 != 0 {
            return Err(VmError::GuestAddress { addr, len: 4 });
        }
        // SAFETY: 4 aligned bytes inside the mapping (checked above), which lives as long as
        // `&self`; the host accesses this word only through atomics.
        Ok(unsafe { std::sync::atomic::AtomicU32::from_ptr(self.ptr.add(start).cast()) })
    }
}

const PAGE: usize = 4096;

/// Opens this process's page map now (a VM host opens it before it gives up file access).
pub(crate) fn open_pagemap() {
    let _ = pagemap();
}

fn pagemap() -> Option<&'static std::fs::File> {
    static PAGEMAP: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    PAGEMAP
        .get_or_init(|| std::fs::File::open("/proc/self/pagemap").ok())
        .as_ref()
}

/// `struct page_region` of `PAGEMAP_SCAN` (linux/fs.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` of `PAGEMAP_SCAN` (linux/fs.h, Linux 6.7+).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

impl PmScanArg {
    /// A filter for the pages that have the categories `want` and none of `not`.
    fn matching(want: u64, not: u64) -> PmScanArg {
        PmScanArg {
            category_inverted: not,
            category_mask: want | not,
            return_mask: want | not,
            ..Default::default()
        }
    }
}

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_HUGE: u64 = 1 << 6;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

impl GuestMemory {
    /// Runs (page index, count) of this private file mapping that hold private copies: with
    /// `PAGEMAP_SCAN` where the kernel has it, else from the page map.
    pub(crate) fn written_runs(&self) -> Result<Vec<(usize, usize)>, VmError> {
        self.private_runs_scan().or_else(|_| self.private_runs())
    }

    /// Like [`Self::private_runs`], with the `PAGEMAP_SCAN` ioctl: the kernel returns only the
    /// matching ranges (present or swapped, and not file pages), much faster than reading one
    /// pagemap entry per page.
    fn private_runs_scan(&self) -> Result<Vec<(usize, usize)>, VmError> {
        self.scan(
            PmScanArg {
                category_inverted: PAGE_IS_FILE,
                category_mask: PAGE_IS_FILE,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
                ..Default::default()
            },
            0,
            self.len,
        )
    }

    /// Whether all of `[addr, addr + n)` is mapped in the host by huge pages (PMD entries), from
    /// `PAGEMAP_SCAN`; false where that cannot be told.
    pub fn huge_mapped(&self, addr: u64, n: usize) -> bool {
        self.all_pages_are(addr, n, PAGE_IS_HUGE | PAGE_IS_PRESENT)
    }

    /// Whether all of `[addr, addr + n)` is mapped and maps file pages (none is a private copy).
    #[cfg(test)]
    pub fn file_mapped(&self, addr: u64, n: usize) -> bool {
        self.all_pages_are(addr, n, PAGE_IS_FILE | PAGE_IS_PRESENT)
    }

    /// Whether all of `[addr, addr + n)` is anonymous memory mapped by huge pages.
    fn anonymous_huge_mapped(&self, addr: u64, n: usize) -> bool {
        self.all_pages_match(addr, n, PAGE_IS_HUGE | PAGE_IS_PRESENT, PAGE_IS_FILE)
    }

    fn all_pages_are(&self, addr: u64, n: usize, categories: u64) -> bool {
        self.all_pages_match(addr, n, categories, 0)
    }

    /// Whether every page of `[addr, addr + n)` has the categories `want` and none of `not`.
    fn all_pages_match(&self, addr: u64, n: usize, want: u64, not: u64) -> bool {
        let Ok(start) = self.range(addr, n) else {
            return false;
        };
        match self.scan(PmScanArg::matching(want, not), start, n) {
            Ok(runs) => runs.iter().map(|&(_, pages)| pages * PAGE).sum::<usize>() == n,
            Err(_) => false,
        }
    }

    /// Runs (first page, pages) of `[offset, offset + n)` of this mapping whose pages match
    /// `filter`'s categories, with the `PAGEMAP_SCAN` ioctl.
    fn scan(
        &self,
        filter: PmScanArg,
        offset: usize,
        n: usize,
    ) -> Result<Vec<(usize, usize)>, VmError> {
        use std::os::fd::AsRawFd;
        let file = pagemap().ok_or_else(|| VmError::Memory("no /proc/self/pagemap".into()))?;
        let base = self.ptr as u64;
        let end = base + (offset + n) as u64;
        let mut regions = vec![PageRegion::default(); 256];
        let mut runs = Vec::new();
        let mut start = base + offset as u64;
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                ..filter
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions into
            // `regions`, which outlives the call; it only inspects our own address space.
            let n = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                return Err(VmError::Memory(format!(
                    "PAGEMAP_SCAN: {}",
                    std::io::Error::last_os_error()
                )));
            }
            for r in &regions[..(n as usize).min(regions.len())] {
                let (s, e) = (r.start.max(base), r.end.min(end));
                if s < e {
                    runs.push((
                        ((s - base) as usize) / PAGE,
                        ((e - s) as usize).div_ceil(PAGE),
                    ));
                }
            }
            if arg.walk_end <= start {
                break;
            }
            start = arg.walk_end;
        }
        Ok(runs)
    }

    /// Runs of pages of this private file mapping that hold private copies (written by the guest
    /// or the host since the mapping was made), from `/proc/self/pagemap`.
    fn private_runs(&self) -> Result<Vec<(usize, usize)>, VmError> {
        use std::os::unix::fs::FileExt;
        let file = pagemap().ok_or_else(|| VmError::Memory("no /proc/self/pagemap".into()))?;
        let pages = self.len / PAGE;
        let mut raw = vec![0u8; pages * 8];
        let offset = (self.ptr as u64 / PAGE as u64) * 8;
        file.read_exact_at(&mut raw, offset)
            .map_err(|e| VmError::Memory(format!("reading pagemap: {e}")))?;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, chunk) in raw.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let e = u64::from_le_bytes(b);
            let present = e & (1 << 63) != 0;
            let swapped = e & (1 << 62) != 0;
            let file_or_shared = e & (1 << 61) != 0;
            if (present && !file_or_shared) || swapped {
                match runs.last_mut() {
                    Some((start, n)) if *start + *n == i => *n += 1,
                    _ => runs.push((i, 1)),
                }
            }
        }
        Ok(runs)
    }

    /// Make this private mapping equal to `source` again by copying back only the pages that
    /// hold private copies. The pages stay mapped (in the host and in KVM's MMU), so the next
    /// cell does not fault them in again. Returns the number of pages copied, or `None` when
    /// the pages cannot be listed.
    ///
    /// Returns `None` (and copies nothing) when a page in `unrestorable` holds a private copy:
    /// those pages (the guest's page tables and descriptor tables) are cached by KVM's shadow MMU,
    /// which a host-side copy would not resynchronise, so such a VM must not be reused.
    pub fn restore_from(
        &self,
        source: &GuestMemory,
        unrestorable: std::ops::Range<u64>,
    ) -> Result<Option<usize>, VmError> {
        if !self.private_file || source.len != self.len {
            return Err(VmError::Memory(
                "restore needs a private snapshot mapping".into(),
            ));
        }
        let runs = match self.written_runs() {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        let touches = |&(start, n): &(usize, usize)| {
            let (a, b) = ((start * PAGE) as u64, ((start + n) * PAGE) as u64);
            a < unrestorable.end && unrestorable.start < b
        };
        if runs.iter().any(touches) {
            return Ok(None);
        }
        let mut copied = 0;
        for (start, n) in runs {
            let (off, len) = (start * PAGE, n * PAGE);
            if off + len > self.len {
                continue;
            }
            // SAFETY: both ranges lie inside their own live mappings of equal length (checked
            // above); they are distinct mappings, so they do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(source.ptr.add(off), self.ptr.add(off), len) };
            copied += n;
        }
        Ok(Some(copied))
    }
}

impl GuestMemory {
    /// A second handle on this mapping that never unmaps it, for the idle trim's thread
    /// (`trim.rs`).
    ///
    /// # Safety
    ///
    /// The alias must not be used once this value is dropped: the trim drops it under its VM's
    /// lock when the machine leaves the VM, before the machine can be destroyed.
    pub(crate) unsafe fn alias(&self) -> ManuallyDrop<GuestMemory> {
        ManuallyDrop::new(GuestMemory {
            ptr: self.ptr,
            len: self.len,
            private_file: self.private_file,
        })
    }

    /// The 2 MiB-aligned guest addresses in `[from, to)` whose 2 MiB are anonymous memory mapped
    /// by one huge page (one `PAGEMAP_SCAN` over the range; empty where that cannot be told).
    pub(crate) fn anonymous_huge_pages(&self, from: u64, to: u64) -> Vec<u64> {
        let huge = HUGE_PAGE as u64;
        let (from, to) = (from.next_multiple_of(huge), to / huge * huge);
        let Ok(start) = self.range(from, to.saturating_sub(from) as usize) else {
            return Vec::new();
        };
        let filter = PmScanArg::matching(PAGE_IS_HUGE | PAGE_IS_PRESENT, PAGE_IS_FILE);
        let Ok(runs) = self.scan(filter, start, to.saturating_sub(from) as usize) else {
            return Vec::new();
        };
        let mut pages = Vec::new();
        for (first, n) in runs {
            let (a, b) = ((first * PAGE) as u64, ((first + n) * PAGE) as u64);
            pages.extend((a.next_multiple_of(huge)..b / huge * huge).step_by(HUGE_PAGE));
        }
        pages
    }

    /// Replaces the anonymous huge page at `addr` (2 MiB aligned), if at least half of its
    /// 4 KiB pages are zero, by 4 KiB pages holding only its non-zero pages; returns the bytes
    /// given back to the host (0 where it was left whole or is not such a page).
    ///
    /// Why: a cold VM's heap comes in 2 MiB huge pages, so a boot costs one KVM fault for them
    /// where 4 KiB pages cost one per page or per eight (`advise_huge`), but a small cell writes
    /// only a few dozen of those pages. Dropping only the zero pages of a huge page would free
    /// nothing until the kernel splits it under memory pressure, so the whole huge page goes
    /// (`MADV_DONTNEED` of all of it frees it at once) and the written pages are copied back
    /// into 4 KiB pages (`MADV_NOHUGEPAGE` keeps them so, and keeps `khugepaged` from collapsing
    /// them again). A zero page reads as zero afterwards, so the guest sees the same memory; its
    /// next touch of the range costs KVM faults again.
    ///
    /// `small` is the range earlier splits of this mapping advised `MADV_NOHUGEPAGE` (`None`
    /// before the first): it grows to take in this page, so the mapping keeps one such range,
    /// and two more VMAs, however many pages are split. Advice for each page alone would let a
    /// guest that leaves every other huge page of a large heap sparse cut its mapping into a VMA
    /// per page, against the whole process's `vm.max_map_count`. The pages in between are
    /// anonymous heap too (the image's shared file mapping lies below the heap); those already
    /// mapped whole stay so, and the others come in 4 KiB pages when first touched.
    ///
    /// Only while nothing else reads or writes the range: the trim's lock keeps the vCPU out.
    pub(crate) fn split_if_sparse(&self, addr: u64, small: &mut Option<Range<u64>>) -> usize {
        if !addr.is_multiple_of(HUGE_PAGE as u64) || !self.anonymous_huge_mapped(addr, HUGE_PAGE) {
            return 0;
        }
        // The non-zero pages: their addresses, and their bytes one after another.
        let (mut kept, mut bytes) = (Vec::new(), Vec::new());
        let mut page = [0u8; PAGE];
        for p in (addr..addr + HUGE_PAGE as u64).step_by(PAGE) {
            if self.read(p, &mut page).is_err() {
                return 0;
            }
            if page.iter().any(|&b| b != 0) {
                kept.push(p);
                bytes.extend_from_slice(&page);
            }
        }
        let zero = HUGE_PAGE / PAGE - kept.len();
        if zero < HUGE_PAGE / PAGE / 2 {
            return 0;
        }
        let end = addr + HUGE_PAGE as u64;
        let advised = match small {
            Some(r) => r.start.min(addr)..r.end.max(end),
            None => addr..end,
        };
        let (Ok(start), Ok(advised_start)) = (
            self.range(addr, HUGE_PAGE),
            self.range(advised.start, (advised.end - advised.start) as usize),
        ) else {
            return 0;
        };
        // SAFETY: advice on a range inside our own mapping (checked above); it changes no
        // contents.
        let r = unsafe {
            libc::madvise(
                self.ptr.add(advised_start).cast(),
                (advised.end - advised.start) as usize,
                libc::MADV_NOHUGEPAGE,
            )
        };
        if r != 0 {
            return 0;
        }
        *small = Some(advised);
        // SAFETY: the same range of our own private anonymous mapping; its non-zero pages were
        // copied out above and are written back below before anyone reads the range (the caller
        // holds the vCPU off), and its zero pages read as zero afterwards.
        let r =
            unsafe { libc::madvise(self.ptr.add(start).cast(), HUGE_PAGE, libc::MADV_DONTNEED) };
        if r != 0 {
            return 0;
        }
        for (&p, page) in kept.iter().zip(bytes.chunks_exact(PAGE)) {
            if self.write(p, page).is_err() {
                break;
            }
        }
        zero * PAGE
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns; nothing references it after drop
        // (the VM's memory slot is torn down before, since the VM fd is dropped first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn snapshot_fd(len: usize) -> OwnedFd {
        // SAFETY: valid NUL-terminated name; the fd is checked and then owned.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own fd.
        let resized = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
        assert_eq!(resized, 0);
        fd
    }

    /// The `VmFlags` line of the mapping that starts at `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn snapshot_mappings_are_advised_for_huge_pages() {
        let len = 4 * HUGE_PAGE;
        let fd = snapshot_fd(len);
        for shared in [true, false] {
            let mem = GuestMemory::from_fd(&fd, len, shared).unwrap();
            let flags = vm_flags(mem.host_addr());
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "shared={shared}: {flags}"
            );
        }
    }

    /// A snapshot of `len` bytes, each `byte`.
    fn filled_snapshot(len: usize, byte: u8) -> OwnedFd {
        let fd = snapshot_fd(len);
        GuestMemory::from_fd(&fd, len, true)
            .unwrap()
            .fill(0, len, byte)
            .unwrap();
        fd
    }

    #[test]
    fn scan_and_pagemap_agree_and_restore_reverts_exactly_the_written_pages() {
        let len = 64 * PAGE;
        let fd = filled_snapshot(len, 0x11);
        let view = GuestMemory::read_only_view(&fd, len).unwrap();
        let private = GuestMemory::from_fd(&fd, len, false).unwrap();
        let mut b = [0u8; 1];
        private.read(5 * PAGE as u64, &mut b).unwrap(); // read-only touch: stays a file page
        private.write(3 * PAGE as u64, &[1, 2, 3]).unwrap();
        private.write(4 * PAGE as u64 + 100, &[4]).unwrap();
        private.write(40 * PAGE as u64, &[5]).unwrap();
        let pagemap = private.private_runs().unwrap();
        assert_eq!(pagemap, vec![(3, 2), (40, 1)]);
        if let Ok(scan) = private.private_runs_scan() {
            assert_eq!(scan, pagemap);
        }
        let tables = 3 * PAGE as u64..4 * PAGE as u64;
        assert_eq!(private.restore_from(&view, tables).unwrap(), None);
        let elsewhere = 8 * PAGE as u64..9 * PAGE as u64;
        assert_eq!(private.restore_from(&view, elsewhere).unwrap(), Some(3));
        let mut all = vec![0u8; len];
        private.read(0, &mut all).unwrap();
        assert!(all.iter().all(|&x| x == 0x11));
    }

    #[test]
    fn populated_pages_become_private_copies_of_the_same_bytes() {
        let len = 64 * PAGE;
        let fd = filled_snapshot(len, 0x22);
        let private = GuestMemory::from_fd(&fd, len, false).unwrap();
        // The last run reaches past the mapping: skipped, not an error.
        private.populate_write(&[(2, 3), (30, 1), (63, 2)]);
        assert_eq!(private.private_runs().unwrap(), vec![(2, 3), (30, 1)]);
        let mut all = vec![0u8; len];
        private.read(0, &mut all).unwrap();
        assert!(all.iter().all(|&x| x == 0x22));
        // The file itself is untouched by the copies.
        let view = GuestMemory::read_only_view(&fd, len).unwrap();
        view.read(0, &mut all).unwrap();
        assert!(all.iter().all(|&x| x == 0x22));
    }
}
