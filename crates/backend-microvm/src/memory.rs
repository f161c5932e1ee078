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

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns; nothing references it after drop
        // (the VM's memory slot is torn down before, since the VM fd is dropped first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
