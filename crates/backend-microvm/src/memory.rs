//! Guest RAM: one host mapping, accessed only through bounds-checked copies.
//!
//! The vCPU runs only on the thread that holds `&mut Vm`, so the host never reads guest memory
//! while the guest is running; still, every offset and length coming from the guest is checked
//! against the mapping before any access.
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::VmError;

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
    Ok(p.cast())
}

impl GuestMemory {
    /// Zeroed anonymous memory.
    pub fn anonymous(len: usize) -> Result<Self, VmError> {
        let ptr = mmap(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        Ok(GuestMemory {
            ptr,
            len,
            private_file: false,
        })
    }

    /// Map `fd` shared (writes go to the file: used to build a snapshot) or private
    /// (copy-on-write clone of the snapshot).
    pub fn from_fd(fd: &OwnedFd, len: usize, shared: bool) -> Result<Self, VmError> {
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE | libc::MAP_NORESERVE
        };
        let ptr = mmap(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd.as_raw_fd(),
        )?;
        Ok(GuestMemory {
            ptr,
            len,
            private_file: !shared,
        })
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

    /// Revert a private file mapping to the file's contents (drops every page the guest dirtied).
    pub fn revert_to_file(&self) -> Result<(), VmError> {
        if !self.private_file {
            return Err(VmError::Memory("not a private snapshot mapping".into()));
        }
        // SAFETY: the range is exactly our own mapping; MADV_DONTNEED on a private file mapping
        // discards private copies so later accesses see the file again.
        let r = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(VmError::Memory(format!(
                "madvise failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

const PAGE: usize = 4096;

fn pagemap() -> Option<&'static std::fs::File> {
    static PAGEMAP: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    PAGEMAP
        .get_or_init(|| std::fs::File::open("/proc/self/pagemap").ok())
        .as_ref()
}

impl GuestMemory {
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
    /// cell does not fault them in again. Falls back to dropping every page (`MADV_DONTNEED`).
    /// Returns the number of pages copied.
    pub fn restore_from(&self, source: &GuestMemory) -> Result<usize, VmError> {
        if !self.private_file || source.len != self.len {
            return Err(VmError::Memory(
                "restore needs a private snapshot mapping".into(),
            ));
        }
        let runs = match self.private_runs() {
            Ok(r) => r,
            Err(_) => {
                self.revert_to_file()?;
                return Ok(0);
            }
        };
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
        Ok(copied)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns; nothing references it after drop
        // (the VM's memory slot is torn down before, since the VM fd is dropped first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
