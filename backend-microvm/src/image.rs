//! The part of the guest image that cold VMs share: its first whole 2 MiB pages (text and most
//! of rodata), laid out once per process in an unnamed file exactly as they sit in guest memory
//! from [`IMAGE_BASE`], and mapped copy-on-write at that place in every cold VM instead of being
//! copied into memory of its own. Read pages are the same page-cache pages in every cold VM of
//! the process; a page the guest writes becomes its own (the file never changes).
//!
//! Only worth it where the host maps the file with 2 MiB pages: under shadow paging (this host's
//! PVM) every 4 KiB guest page a VM first touches costs a KVM fault (≈ 25-40 µs here); with the
//! image in 4 KiB pages a cold boot took ≈ 365 of them and 15-20 ms instead of 1.5 ms, while a
//! 2 MiB host mapping lets KVM map the guest's 2 MiB page at once.
//! Shared memory (`memfd`) gets 2 MiB pages only where the node allows shmem huge pages
//! (`shmem_enabled`, `never` by default); a filesystem with large folios (ext4, xfs) gives them to
//! an advised mapping of a plain file. So the file is an `O_TMPFILE` in the temporary directory
//! (never visible in it, gone with its last descriptor and mapping), and it is used only if a
//! probe mapping of it is found mapped with 2 MiB pages; otherwise (and in a VM host, which may
//! open no file) cold VMs copy the image as before.
use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::elf;
use crate::layout::IMAGE_BASE;
use crate::memory::{GuestMemory, HUGE_PAGE};

/// The shared head of the image: a read-only descriptor of a file of `len` bytes (whole 2 MiB
/// pages) holding guest memory `[IMAGE_BASE, IMAGE_BASE + len)`.
pub(crate) struct SharedImage {
    pub fd: OwnedFd,
    pub len: usize,
}

/// This process's shared image head for `img` (parsed from `elf_bytes`, the embedded image),
/// made at the second cold boot of the process; `None` for the first (it copies the image as
/// before: a one-shot process such as `cell run` boots one cell, and making the file costs
/// ≈ 1.1-1.4 ms, more than the copy it saves) and where the file cannot be made or the host
/// would not map it with huge pages.
pub(crate) fn shared_head(elf_bytes: &[u8], img: &elf::Image) -> Option<&'static SharedImage> {
    static BOOTS: AtomicUsize = AtomicUsize::new(0);
    static HEAD: OnceLock<Option<SharedImage>> = OnceLock::new();
    if let Some(head) = HEAD.get() {
        return head.as_ref();
    }
    if BOOTS.fetch_add(1, Ordering::Relaxed) == 0 {
        return None;
    }
    HEAD.get_or_init(|| {
        let head = make(elf_bytes, img)?;
        huge_when_mapped(&head.fd, head.len, 0..head.len / HUGE_PAGE).then_some(head)
    })
    .as_ref()
}

/// The image's whole 2 MiB pages laid out in a new unnamed file; `None` if the image has none
/// or the file cannot be made.
fn make(elf_bytes: &[u8], img: &elf::Image) -> Option<SharedImage> {
    let len = usize::try_from(img.end.checked_sub(IMAGE_BASE)?).ok()? & !(HUGE_PAGE - 1);
    if len == 0 {
        return None;
    }
    // The file's bytes in order: each segment's file bytes inside the head, zeros between them.
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut segments: Vec<&elf::Segment> = img.segments.iter().collect();
    segments.sort_by_key(|s| s.vaddr);
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut at = 0usize;
    let zeros = |parts: &mut Vec<&[u8]>, mut n: usize| {
        while n > 0 {
            let k = n.min(ZEROS.len());
            parts.push(&ZEROS[..k]);
            n -= k;
        }
    };
    for s in segments {
        let start = usize::try_from(s.vaddr.checked_sub(IMAGE_BASE)?).ok()?;
        if start >= len {
            break;
        }
        let n = s.filesz.min(len - start);
        zeros(&mut parts, start.checked_sub(at)?);
        parts.push(elf_bytes.get(s.offset..s.offset.checked_add(n)?)?);
        at = start + n;
    }
    zeros(&mut parts, len - at);
    // One vectored write where it can (the page cache then holds the file in folios as large as
    // the filesystem allows, which is what a 2 MiB mapping needs), no copy of the image.
    let fd = read_only_tmpfile(|file| {
        let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match file.write_vectored(rest)? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => IoSlice::advance_slices(&mut rest, n),
            }
        }
        Ok(())
    })?;
    Some(SharedImage { fd, len })
}

/// A new unnamed file in the temporary directory (`O_TMPFILE | O_EXCL`: never visible there,
/// never linkable into it, gone with its last descriptor and mapping) filled by `write`, of which
/// only a read-only descriptor is kept, its mode set to owner-read-only first: afterwards nothing
/// in the process holds a descriptor that can write it, and reopening it for writing through
/// `/proc` needs a deliberate `fchmod` or `CAP_DAC_OVERRIDE` (unlike a sealed memfd, the kernel
/// does not refuse such a writer). `None` where it cannot be made (no temporary directory, or a
/// VM host, which may open no file).
pub(crate) fn read_only_tmpfile(
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Option<OwnedFd> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_EXCL | libc::O_CLOEXEC)
        .open(std::env::temp_dir())
        .ok()?;
    write(&mut file).ok()?;
    file.set_permissions(std::fs::Permissions::from_mode(0o400))
        .ok()?;
    let read_only = std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    Some(read_only.into())
}

/// Maps `fd` (`len` bytes) as a VM would (copy-on-write, 2 MiB aligned, advised for huge pages),
/// touches each 2 MiB page of it that `chunks` lists (by index), and tells whether the host
/// mapped all of them with 2 MiB pages.
pub(crate) fn huge_when_mapped(
    fd: &OwnedFd,
    len: usize,
    chunks: impl IntoIterator<Item = usize>,
) -> bool {
    let Ok(probe) = GuestMemory::from_fd(fd, len, false) else {
        return false;
    };
    let mut byte = [0u8; 1];
    for chunk in chunks {
        let at = (chunk * HUGE_PAGE) as u64;
        // A read fault maps the file's page (a byte the compiler may not elide).
        if probe.read(at, &mut byte).is_err() {
            return false;
        }
        std::hint::black_box(byte);
        if !probe.huge_mapped(at, HUGE_PAGE.min(len - chunk * HUGE_PAGE)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{Backing, GUEST_ELF, VmConfig, setup_memory};
    use std::os::unix::fs::FileExt;

    fn parsed() -> elf::Image {
        elf::parse(GUEST_ELF, IMAGE_BASE, 1 << 30).unwrap()
    }

    /// Reads the image's loaded bytes back from guest memory and compares them with the ELF.
    fn assert_holds_the_image(mem: &GuestMemory, img: &elf::Image) {
        for s in &img.segments {
            let mut got = vec![0u8; s.memsz as usize];
            mem.read(s.vaddr, &mut got).unwrap();
            assert_eq!(got[..s.filesz], GUEST_ELF[s.offset..s.offset + s.filesz]);
            assert!(got[s.filesz..].iter().all(|&b| b == 0), ".bss is zero");
        }
    }

    #[test]
    fn the_file_holds_the_image_as_laid_out_in_guest_memory() {
        let img = parsed();
        let head = make(GUEST_ELF, &img).expect("a temporary file");
        assert_eq!(head.len % HUGE_PAGE, 0);
        assert!(head.len > 0 && head.len as u64 <= img.end - IMAGE_BASE);
        let file = std::fs::File::from(head.fd.try_clone().unwrap());
        let mut bytes = vec![0u8; head.len];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let mut expected = vec![0u8; head.len];
        for s in img
            .segments
            .iter()
            .filter(|s| s.vaddr < IMAGE_BASE + head.len as u64)
        {
            let at = (s.vaddr - IMAGE_BASE) as usize;
            let n = s.filesz.min(head.len - at);
            expected[at..at + n].copy_from_slice(&GUEST_ELF[s.offset..s.offset + n]);
        }
        assert!(bytes == expected, "segments in place, zeros between them");
        // The descriptor kept cannot write the file.
        assert!(Write::write(&mut &file, b"x").is_err());
    }

    /// Cold guest memories after the first hold the same image; where the host maps the shared
    /// file with huge pages their image heads are its page-cache pages, and a write into one
    /// (as a guest's write would be) stays in that memory alone.
    #[test]
    fn cold_memories_share_the_image_head_and_keep_writes_private() {
        let cfg = VmConfig::new(16 << 20);
        let img = parsed();
        let mems: Vec<GuestMemory> = (0..3)
            .map(|_| {
                let mem = GuestMemory::anonymous(16 << 20).unwrap();
                setup_memory(&mem, &cfg, Backing::Anonymous).unwrap();
                mem
            })
            .collect();
        for mem in &mems {
            assert_holds_the_image(mem, &img);
        }
        let Some(head) = shared_head(GUEST_ELF, &img) else {
            eprintln!("SKIPPED: this host does not map the image file with huge pages");
            return;
        };
        let (a, b) = (&mems[1], &mems[2]);
        for mem in [a, b] {
            assert!(
                mem.file_mapped(IMAGE_BASE, head.len),
                "the head is the file's"
            );
            assert!(mem.huge_mapped(IMAGE_BASE, head.len), "in 2 MiB pages");
        }
        let at = IMAGE_BASE + 0x1234;
        let mut was = [0u8; 1];
        b.read(at, &mut was).unwrap();
        a.write(at, &[!was[0]]).unwrap();
        let mut seen = [0u8; 1];
        a.read(at, &mut seen).unwrap();
        assert_eq!(seen[0], !was[0]);
        b.read(at, &mut seen).unwrap();
        assert_eq!(seen[0], was[0], "not in the other memory");
        let file = std::fs::File::from(head.fd.try_clone().unwrap());
        file.read_exact_at(&mut seen, at - IMAGE_BASE).unwrap();
        assert_eq!(seen[0], was[0], "not in the file");
        assert!(
            !a.file_mapped(IMAGE_BASE, head.len),
            "the written page is a's own"
        );
        assert!(b.file_mapped(IMAGE_BASE, head.len));
        let fresh = GuestMemory::anonymous(16 << 20).unwrap();
        setup_memory(&fresh, &cfg, Backing::Anonymous).unwrap();
        assert_holds_the_image(&fresh, &img);
    }
}
