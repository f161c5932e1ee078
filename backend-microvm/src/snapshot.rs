//! Fast start: a template VM booted once per (memory size, frame cap) to "engine ready", its
//! memory sealed in a memfd (copied into a read-only file where the host maps that in 2 MiB
//! pages, [`huge_copy`]) and its registers captured. Cells start as copy-on-write private
//! mappings of that snapshot, either in a new KVM VM or in a pooled one whose dirtied pages are
//! copied back from the snapshot and registers reset (by the template's reset thread, see
//! `pool`).
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave};

use crate::error::VmError;
use crate::image;
use crate::machine::{Machine, Recycle, set_boot_regs};
use crate::memory::{GuestMemory, HUGE_PAGE};
use crate::pool::Pool;
use crate::reaper;
use crate::setup::{Backing, Layout, VmConfig, setup_memory};
use crate::vm::{Recv, Vm};

/// How long the template may take to reach "engine ready".
const TEMPLATE_BOOT_LIMIT: Duration = Duration::from_secs(10);

/// A PROT_READ mapping of the snapshot (the sealed memfd, or its read-only copy in a file, see
/// [`huge_copy`]): nothing writes it (for the memfd the kernel refuses both writes through it
/// and any new writable shared mapping; of the file no writable descriptor exists), so sharing it
/// between threads is sound.
struct SnapshotView(GuestMemory);

// SAFETY: see above: the mapping is not written for its whole life; only reads happen through it.
unsafe impl Sync for SnapshotView {}

pub(crate) struct Template {
    key: (u64, u64, u64),
    /// What new VMs map copy-on-write: the sealed memfd, or its copy in a file where the host
    /// maps that with 2 MiB pages ([`huge_copy`]).
    snapshot: OwnedFd,
    layout: Layout,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: Box<kvm_xsave>,
    xcrs: kvm_xcrs,
    /// Read-only view of the snapshot: the source of pooled resets.
    view: SnapshotView,
    pool: Pool<Machine>,
    /// The guest's answer to a handshake (a `Ready` frame body), recorded by the first warm-up:
    /// it names the guest's build, so it is the same for every `Hello` this host sends.
    ready: OnceLock<Arc<[u8]>>,
    /// The pages a start writes (runs of page index and count), recorded by the first warm-up:
    /// a new VM makes their private copies before its first entry (see
    /// [`GuestMemory::populate_write`]).
    written: OnceLock<Vec<(usize, usize)>>,
}

fn memfd(len: u64) -> Result<OwnedFd, VmError> {
    let name = c"cell-microvm-snapshot";
    // SAFETY: valid NUL-terminated name; returns a new fd or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(VmError::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own fd.
    if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as libc::off_t) } != 0 {
        return Err(VmError::Memory(format!(
            "ftruncate: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

fn seal(fd: &OwnedFd) -> Result<(), VmError> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own fd.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            libc::F_ADD_SEALS,
            seals,
        )
    } != 0
    {
        return Err(VmError::Memory(format!(
            "sealing snapshot: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The sealed snapshot `memfd` (`len` bytes) copied into a read-only unnamed file
/// ([`image::read_only_tmpfile`]), each 2 MiB page that holds data written whole (so the page
/// cache holds it as one 2 MiB folio) and the others left as holes, if a VM's mapping of it is
/// mapped with 2 MiB pages by the host; `None` otherwise (the temporary directory on `tmpfs`, a
/// VM host, which may open no file): new VMs then map the memfd as before.
///
/// Why: shmem is mapped in 4 KiB pages unless the node allows shmem huge pages
/// (`shmem_enabled`, `never` by default), and under shadow paging (this host's PVM) every 4 KiB
/// page a new VM first touches is a KVM fault of ≈ 25-40 µs; from a 2 MiB host mapping KVM maps
/// the guest's 2 MiB page at once. A guest write still copies a 4 KiB page (and splits the host's
/// 2 MiB mapping into 4 KiB entries: the pool's reset finds the copies as before).
fn huge_copy(memfd: &OwnedFd, len: usize) -> Option<OwnedFd> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let source = std::fs::File::from(memfd.try_clone().ok()?);
    // A guest's RAM is its heap quota plus the image, tables and buffers: rarely a multiple of
    // 2 MiB. Its last, partial 2 MiB page is copied too but cannot be mapped whole.
    let chunks = len.div_ceil(HUGE_PAGE);
    if len < HUGE_PAGE {
        return None;
    }
    // The 2 MiB pages that hold data, found by `SEEK_DATA` (reading holes would allocate nothing,
    // but walking gigabytes of them would take long).
    let mut data = Vec::new();
    let mut chunk = 0;
    while chunk < chunks {
        let at = (chunk * HUGE_PAGE) as libc::off_t;
        // SAFETY: lseek on a descriptor we own; it changes only the file offset of that (cloned)
        // descriptor, which nothing else uses (all reads are positioned).
        let next = unsafe { libc::lseek(source.as_raw_fd(), at, libc::SEEK_DATA) };
        if next < 0 {
            break; // ENXIO: no data past `at`
        }
        chunk = next as usize / HUGE_PAGE;
        if chunk < chunks {
            data.push(chunk);
        }
        chunk += 1;
    }
    let mut buf = vec![0u8; HUGE_PAGE];
    let mut written = Vec::new();
    let file = image::read_only_tmpfile(|file| {
        for &chunk in &data {
            let at = chunk * HUGE_PAGE;
            let piece = &mut buf[..HUGE_PAGE.min(len - at)];
            source.read_exact_at(piece, at as u64)?;
            if piece.iter().any(|&b| b != 0) {
                file.write_all_at(piece, at as u64)?;
                if piece.len() == HUGE_PAGE {
                    written.push(chunk);
                }
            }
        }
        file.set_len(len as u64)
    })?;
    image::huge_when_mapped(&file, len, written).then_some(file)
}

impl Template {
    fn boot(cfg: &VmConfig) -> Result<Template, VmError> {
        let fd = memfd(cfg.mem_size)?;
        let (layout, regs, sregs, xsave, xcrs) = {
            let mem = GuestMemory::from_fd(&fd, cfg.mem_size as usize, true)?;
            let layout = setup_memory(&mem, cfg, Backing::Snapshot)?;
            let machine = Machine::new(mem)?;
            set_boot_regs(&machine.vcpu, layout.entry)?;
            let mut vm = Vm::from_parts(machine, layout, None);
            match vm.recv(Some(Instant::now() + TEMPLATE_BOOT_LIMIT))? {
                Recv::Idle => {}
                other => {
                    return Err(VmError::UnexpectedExit(format!(
                        "template guest did not reach engine-ready: {other:?}"
                    )));
                }
            }
            let mut m = vm.take_machine().ok_or(VmError::Killed)?;
            m.flush_pending_io()?;
            let regs = m
                .vcpu
                .get_regs()
                .map_err(|e| VmError::kvm("KVM_GET_REGS", e))?;
            let sregs = m
                .vcpu
                .get_sregs()
                .map_err(|e| VmError::kvm("KVM_GET_SREGS", e))?;
            let xsave = Box::new(
                m.vcpu
                    .get_xsave()
                    .map_err(|e| VmError::kvm("KVM_GET_XSAVE", e))?,
            );
            let xcrs = m
                .vcpu
                .get_xcrs()
                .map_err(|e| VmError::kvm("KVM_GET_XCRS", e))?;
            (layout, regs, sregs, xsave, xcrs)
            // machine (and the shared writable mapping) dropped here
        };
        seal(&fd)?;
        let len = cfg.mem_size as usize;
        // The memfd (and its memory) goes once its copy is made.
        let snapshot = huge_copy(&fd, len).unwrap_or(fd);
        let view = SnapshotView(GuestMemory::read_only_view(&snapshot, len)?);
        Ok(Template {
            view,
            key: (cfg.mem_size, cfg.frame_cap, cfg.heap_quota),
            snapshot,
            layout,
            regs,
            sregs,
            xsave,
            xcrs,
            pool: Pool::default(),
            ready: OnceLock::new(),
            written: OnceLock::new(),
        })
    }

    fn restore(&self, m: &Machine) -> Result<(), VmError> {
        m.vcpu
            .set_sregs(&self.sregs)
            .map_err(|e| VmError::kvm("KVM_SET_SREGS", e))?;
        if crate::kvm::host()?.xcr0.is_some() {
            m.vcpu
                .set_xcrs(&self.xcrs)
                .map_err(|e| VmError::kvm("KVM_SET_XCRS", e))?;
        }
        // SAFETY: the xsave area was produced by KVM_GET_XSAVE on a vCPU of this same host with
        // the same CPUID, so its size and features match.
        unsafe { m.vcpu.set_xsave(&self.xsave) }.map_err(|e| VmError::kvm("KVM_SET_XSAVE", e))?;
        m.vcpu
            .set_regs(&self.regs)
            .map_err(|e| VmError::kvm("KVM_SET_REGS", e))?;
        Ok(())
    }

    fn fresh_machine(&self) -> Result<Machine, VmError> {
        let mem = GuestMemory::from_fd(&self.snapshot, self.key.0 as usize, false)?;
        if let Some(runs) = self.written.get() {
            mem.populate_write(runs);
        }
        let m = Machine::new(mem)?;
        self.restore(&m)?;
        Ok(m)
    }

    /// A new machine that has served one handshake and one exec (so the pages a cell touches
    /// are mapped in KVM's MMU), reset to the snapshot: what the reset thread keeps ready ahead
    /// of demand. `None` when any step fails (the machine is destroyed).
    fn warm_machine(&self) -> Option<Machine> {
        use abi::{EngineLimits, GuestFrame, Hello, HostFrame};
        let max = (self.key.1 as usize)
            .saturating_sub(abi::wire::HEADER_LEN)
            .min(abi::wire::ABSOLUTE_MAX_FRAME_LEN as usize) as u32;
        let mut vm = Vm::from_parts(self.fresh_machine().ok()?, self.layout, None);
        let end = Instant::now() + TEMPLATE_BOOT_LIMIT;
        let frames = [
            HostFrame::Hello(Hello::new("warm", EngineLimits::default(), vec![])),
            HostFrame::Exec {
                id: 0,
                source: "()".into(),
            },
        ];
        for frame in &frames {
            vm.send(&abi::wire::encode(frame, max).ok()?).ok()?;
            loop {
                let Ok(Recv::Frame(body)) = vm.recv_body(Some(end), max) else {
                    return None;
                };
                match abi::wire::decode_body::<GuestFrame>(&body).ok()? {
                    GuestFrame::Ready(_) => {
                        let _ = self.ready.get_or_init(|| body.into());
                        break;
                    }
                    GuestFrame::Done { .. } => break,
                    GuestFrame::Refused(_) => return None,
                    _ => {}
                }
            }
        }
        // Dropping `vm` without its machine destroys nothing; a failure above destroys it.
        let m = vm.take_machine()?;
        if self.written.get().is_none()
            && let Ok(runs) = m.mem.written_runs()
        {
            let _ = self.written.set(prefetch_groups(&runs));
        }
        self.reset(m)
    }

    /// Resets a closed cell's machine to the snapshot: its pending exit completed (KVM would
    /// apply it on the next run, over the restored registers), its tables checked, its dirtied
    /// pages copied back, its registers restored. A machine that fails any step is destroyed.
    fn reset(&self, mut m: Machine) -> Option<Machine> {
        let reusable = m.flush_pending_io().is_ok()
            && tables_unchanged(&m.mem, &self.view.0, &self.layout).unwrap_or(false)
            && matches!(m.mem.restore_from(&self.view.0, 0..0), Ok(Some(_)))
            && self.restore(&m).is_ok();
        if reusable {
            Some(m)
        } else {
            reaper::destroy_later(m);
            None
        }
    }
}

/// KVM's shadow MMU maps, with a faulting page, the present and writable host pages of the
/// aligned group of this many around it, from the group's first page on, stopping at the first
/// page that is not.
const PREFETCH_GROUP: usize = 8;

/// `runs` (page index, count) each widened down to the start of its prefetch group, so that
/// the first fault in a group maps every page written up to the last; merged, in order. Not
/// widened up: pages past the last written one would be copies that nothing uses.
fn prefetch_groups(runs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &(start, n) in runs {
        let lo = start / PREFETCH_GROUP * PREFETCH_GROUP;
        let hi = start + n;
        match out.last_mut() {
            Some((s, len)) if *s + *len >= lo => *len = (*len).max(hi - *s),
            _ => out.push((lo, hi - lo)),
        }
    }
    out
}

type Templates = Mutex<HashMap<(u64, u64, u64), Arc<Template>>>;
static TEMPLATES: OnceLock<Templates> = OnceLock::new();

fn template(cfg: &VmConfig) -> Result<Arc<Template>, VmError> {
    if cfg.mode() != crate::layout::MODE_RUNTIME {
        return Err(VmError::Config(
            "snapshots exist only for the runtime guest".into(),
        ));
    }
    let map = TEMPLATES.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (cfg.mem_size, cfg.frame_cap, cfg.heap_quota);
    // Held while booting: concurrent first spawns of one size wait for one template boot.
    let mut guard = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = guard.get(&key) {
        return Ok(t.clone());
    }
    let t = Arc::new(Template::boot(cfg)?);
    // One warm-up now records the guest's handshake answer, which lets every start from this
    // template place its handshake with its first transaction (`greeting`); the warmed machine
    // is the pool's first.
    if let Some(m) = t.warm_machine() {
        t.recycle(m);
    }
    guard.insert(key, t.clone());
    let served = t.clone();
    let thread = std::thread::Builder::new()
        .name("cell-vm-reset".into())
        .spawn(move || {
            served
                .pool
                .serve(|m| served.reset(m), || served.warm_machine())
        });
    // Without the thread, starts reset the machines they take themselves (`Pool::take`).
    drop(thread);
    Ok(t)
}

impl Recycle for Template {
    /// Returns a machine from a dropped cell to the pool; the reset thread resets it.
    fn recycle(&self, m: Machine) {
        if let Some(unheld) = self.pool.put(m) {
            reaper::destroy_later(unheld);
        }
    }
}

/// Whether the guest's page tables, GDT and TSS still say what the snapshot says, ignoring the
/// bits the CPU/KVM set by themselves (PTE accessed/dirty, descriptor accessed/busy). The runtime
/// guest never writes them; if anything else changed, KVM's shadow MMU may cache translations that
/// copying the snapshot back would not reset, so such a VM is not reused.
fn tables_unchanged(
    mem: &GuestMemory,
    snap: &GuestMemory,
    layout: &Layout,
) -> Result<bool, VmError> {
    use crate::layout::{GDT_ADDR, PML4_ADDR, STACK_GUARD_ADDR, TSS_ADDR};
    const PTE_AD: u64 = (1 << 5) | (1 << 6); // PTE accessed / dirty
    let same = |range: std::ops::Range<u64>| -> Result<bool, VmError> {
        let mut addr = range.start;
        while addr < range.end {
            let ignore = if addr < PML4_ADDR {
                (1u64 << 40) | (1 << 41) // descriptor accessed / TSS busy
            } else if !(TSS_ADDR..STACK_GUARD_ADDR).contains(&addr) {
                PTE_AD
            } else {
                0
            };
            if (mem.read_u64(addr)? ^ snap.read_u64(addr)?) & !ignore != 0 {
                return Ok(false);
            }
            addr += 8;
        }
        Ok(true)
    };
    let (extra_start, extra_end) = layout.extra_tables;
    Ok(same(GDT_ADDR..STACK_GUARD_ADDR)? && same(extra_start..extra_end)?)
}

impl Vm {
    /// Build the template for `cfg` now (otherwise the first snapshot start pays for it).
    pub fn prepare_snapshot(cfg: &VmConfig) -> Result<(), VmError> {
        template(cfg).map(|_| ())
    }

    /// Start a cell from the snapshot: a pooled VM reset to the snapshot when one is free,
    /// otherwise a new VM mapping the snapshot copy-on-write.
    pub fn from_snapshot(cfg: &VmConfig) -> Result<Vm, VmError> {
        let t = template(cfg)?;
        let (m, fresh, reused) = match t.pool.take(|m| t.reset(m)) {
            Some((m, served)) => (m, false, served),
            None => (t.fresh_machine()?, true, false),
        };
        let layout = t.layout;
        let answer = t.ready.get().cloned();
        let mut vm = Vm::from_parts(m, layout, Some(t));
        vm.fresh = fresh;
        vm.reused = reused;
        vm.known_answer = answer;
        Ok(vm)
    }

    /// Start a cell from the snapshot in a new KVM VM, never from the pool (bench/test).
    pub fn from_snapshot_unpooled(cfg: &VmConfig) -> Result<Vm, VmError> {
        let t = template(cfg)?;
        let m = t.fresh_machine()?;
        let layout = t.layout;
        let answer = t.ready.get().cloned();
        let mut vm = Vm::from_parts(m, layout, Some(t));
        vm.known_answer = answer;
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_runs_widen_down_to_their_prefetch_group_and_merge() {
        assert_eq!(prefetch_groups(&[]), vec![]);
        assert_eq!(
            prefetch_groups(&[
                (1, 1),
                (509, 3),
                (1084, 1),
                (1120, 1),
                (1123, 2),
                (15872, 1)
            ]),
            vec![(0, 2), (504, 8), (1080, 5), (1120, 5), (15872, 1)]
        );
        // A run crossing groups keeps its length past the first group.
        assert_eq!(prefetch_groups(&[(6, 4), (10, 1)]), vec![(0, 11)]);
    }

    /// A child forked while the snapshot's writable mapping exists (a process cell cloned from
    /// the same supervisor) must not keep the snapshot from being sealed.
    #[test]
    fn a_fork_during_the_build_does_not_block_the_seal() {
        let len = 2 << 20;
        let fd = memfd(len as u64).unwrap();
        let mem = GuestMemory::from_fd(&fd, len, true).unwrap();
        let mut hold = [0; 2];
        // SAFETY: a pipe into a valid two-descriptor array.
        assert_eq!(unsafe { libc::pipe(hold.as_mut_ptr()) }, 0);
        // SAFETY: the child only calls async-signal-safe functions (read, _exit).
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            let mut b = 0u8;
            // SAFETY: closes its copy of the write end, then reads one byte into a local: ends
            // when the parent closes the pipe.
            unsafe {
                libc::close(hold[1]);
                libc::read(hold[0], (&raw mut b).cast(), 1);
                libc::_exit(0);
            }
        }
        drop(mem);
        // The child lives, holding whatever it inherited, while the snapshot is sealed.
        let sealed = seal(&fd);
        // SAFETY: our own pipe ends; the child sees end-of-file and exits; we reap it.
        unsafe {
            libc::close(hold[1]);
            libc::close(hold[0]);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        sealed.expect("the forked child holds no writable mapping of the snapshot");
    }

    /// The file copy of a snapshot holds its bytes exactly, leaves its empty 2 MiB pages as holes
    /// and can be written by no descriptor of ours; where the host maps it with 2 MiB pages, a
    /// write into one VM's mapping (splitting that huge mapping) stays in that mapping, and the
    /// pool's reset finds the copied page and reverts it.
    #[test]
    fn the_file_copy_is_the_snapshot_and_writes_to_it_stay_private_and_are_reset() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileExt, MetadataExt};
        const PAGE: usize = 4096;
        // Not a multiple of 2 MiB, as a guest's RAM (its heap quota beside the image) rarely is:
        // the last page holds data too.
        let len = 4 * HUGE_PAGE + 5 * PAGE;
        let fd = memfd(len as u64).unwrap();
        {
            let build = GuestMemory::from_fd(&fd, len, true).unwrap();
            build.fill(3 * PAGE as u64, PAGE, 0x11).unwrap(); // in the first 2 MiB page
            build.fill(HUGE_PAGE as u64, PAGE, 0).unwrap(); // allocated, all zero
            build
                .write((2 * HUGE_PAGE + 7 * PAGE) as u64, b"snapshot")
                .unwrap();
            // the last whole 2 MiB page is never touched: a hole
            build.write((4 * HUGE_PAGE + PAGE) as u64, b"tail").unwrap();
        }
        seal(&fd).unwrap();
        // Whether this host maps a file with 2 MiB pages at all, asked apart from the copy, so
        // that a copy refused on a host that could hold it fails instead of skipping.
        let host_maps_files_huge = image::read_only_tmpfile(|f| f.write_all_at(&[1; HUGE_PAGE], 0))
            .is_some_and(|f| image::huge_when_mapped(&f, HUGE_PAGE, [0]));
        let Some(file) = huge_copy(&fd, len) else {
            assert!(
                !host_maps_files_huge,
                "this host maps files with 2 MiB pages, yet the snapshot was not copied into one"
            );
            eprintln!("SKIPPED: this host does not map the snapshot file with huge pages");
            return;
        };
        let (memfd, copy) = (std::fs::File::from(fd), std::fs::File::from(file));
        let (mut want, mut got) = (vec![0u8; len], vec![0u8; len]);
        memfd.read_exact_at(&mut want, 0).unwrap();
        copy.read_exact_at(&mut got, 0).unwrap();
        assert!(got == want, "the copy holds the snapshot's bytes");
        let data_from = |at: usize| {
            // SAFETY: lseek on our own descriptor.
            unsafe { libc::lseek(copy.as_raw_fd(), at as libc::off_t, libc::SEEK_DATA) }
        };
        assert_eq!(
            data_from(HUGE_PAGE),
            2 * HUGE_PAGE as libc::off_t,
            "empty: a hole"
        );
        assert_eq!(
            data_from(3 * HUGE_PAGE),
            4 * HUGE_PAGE as libc::off_t,
            "untouched: a hole, then the partial last page"
        );
        assert_eq!(copy.metadata().unwrap().mode() & 0o777, 0o400);
        assert!(
            std::io::Write::write(&mut &copy, b"x").is_err(),
            "read-only"
        );
        let copy = OwnedFd::from(copy);
        let (a, b) = (
            GuestMemory::from_fd(&copy, len, false).unwrap(),
            GuestMemory::from_fd(&copy, len, false).unwrap(),
        );
        let at = (2 * HUGE_PAGE + 7 * PAGE) as u64;
        let mut word = [0u8; 8];
        for m in [&a, &b] {
            m.read(at, &mut word).unwrap();
            assert_eq!(&word, b"snapshot");
            assert!(
                m.huge_mapped(2 * HUGE_PAGE as u64, HUGE_PAGE),
                "in a 2 MiB page"
            );
            assert!(
                m.file_mapped(2 * HUGE_PAGE as u64, HUGE_PAGE),
                "the file's page"
            );
        }
        a.write(at, b"private!").unwrap();
        a.read(at, &mut word).unwrap();
        assert_eq!(&word, b"private!");
        b.read(at, &mut word).unwrap();
        assert_eq!(&word, b"snapshot", "not in another mapping");
        std::fs::File::from(copy.try_clone().unwrap())
            .read_exact_at(&mut word, at)
            .unwrap();
        assert_eq!(&word, b"snapshot", "not in the file");
        let view = GuestMemory::read_only_view(&copy, len).unwrap();
        assert_eq!(
            a.restore_from(&view, 0..0).unwrap(),
            Some(1),
            "one page copied"
        );
        a.read(0, &mut got).unwrap();
        assert!(got == want, "reset to the snapshot");
    }
}
