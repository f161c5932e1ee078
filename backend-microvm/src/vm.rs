//! One KVM virtual machine with one vCPU, run on the calling thread.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::cpu::{CpuBudget, thread_cpu_time};
use crate::elf;
use crate::error::VmError;
use crate::kvm;
use crate::layout::*;
use crate::memory::GuestMemory;
use crate::signal;
use crate::snapshot::Template;
use crate::watchdog::{self, Deadline};

/// Default capacity of each of the two channel buffers.
pub const DEFAULT_FRAME_CAP: u64 = 1024 * 1024;
/// Smallest accepted guest memory.
pub const MIN_MEM_SIZE: u64 = 8 * 1024 * 1024;
/// Largest guest memory the VMM lays out: one page-directory-pointer table maps 512 GiB with
/// 2 MiB pages (a page directory per GiB). Guest RAM is sparse (only touched pages cost host
/// memory), but KVM's shadow MMU keeps 8 bytes of reverse map per 4 KiB of a memory slot, so a
/// cell of N GiB costs N × 2 MiB of kernel memory; [`max_mem_size`] also caps at the host's RAM.
pub const MAX_MEM_SIZE: u64 = 512 << 30;
const GIB: u64 = 1 << 30;

/// The largest guest memory (a cell's `memory_bytes`) this host supports: [`MAX_MEM_SIZE`], or
/// the host's physical RAM if that is smaller (a cell may use all of what the host has, not
/// more). Policy validation refuses larger quotas.
pub fn max_mem_size() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(host_mem_cap)
}

fn host_mem_cap() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ram = if pages > 0 && page > 0 {
        (pages as u64).saturating_mul(page as u64) & !0xfff
    } else {
        MAX_MEM_SIZE
    };
    ram.clamp(MIN_MEM_SIZE, MAX_MEM_SIZE)
}
/// Smallest heap left after image and buffers.
const MIN_HEAP: u64 = 1024 * 1024;
/// Cap on frames queued for a guest that does not consume them.
const MAX_QUEUED: usize = 64;
/// Longest guest panic message copied out.
const MAX_PANIC_MSG: usize = 4096;

/// The embedded guest image (built by build.rs).
pub static GUEST_ELF: &[u8] = include_bytes!(env!("CELL_MICROVM_GUEST_ELF"));

/// How to build a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM in bytes: the cell's whole memory quota (image, stack, buffers and heap).
    pub mem_size: u64,
    /// Capacity of each channel buffer (largest frame in either direction).
    pub frame_cap: u64,
    mode: u32,
}

impl VmConfig {
    pub fn new(mem_size: u64) -> Self {
        VmConfig {
            mem_size,
            frame_cap: DEFAULT_FRAME_CAP,
            mode: MODE_RUNTIME,
        }
    }

    /// Test/bench only: boot the guest in one of its non-runtime modes (see `layout::MODE_*`).
    /// Nothing a cell's script does can select a mode.
    #[doc(hidden)]
    pub fn with_test_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub(crate) fn mode(&self) -> u32 {
        self.mode
    }
}

/// Addresses the host chose for one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub entry: u64,
    pub boot: BootInfo,
    /// Page directories of the memory above the first GiB (empty for smaller guests), between
    /// the image and the heap.
    pub extra_tables: (u64, u64),
}

/// Outcome of [`Vm::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// One whole frame the guest sent (at most `frame_cap` bytes).
    Frame(Vec<u8>),
    /// The guest is waiting for a host frame and none is queued: nothing can arrive.
    Idle,
    /// The deadline passed while the guest was running; it is paused and resumes on the next call.
    TimedOut,
}

pub(crate) struct KillShared {
    killed: AtomicBool,
    /// Thread currently inside this VM's run step.
    tid: Mutex<Option<libc::pid_t>>,
    /// When the watchdog kicks the vCPU: the earlier of the call's deadline and the earliest
    /// instant the cell's CPU budget can be spent.
    pub(crate) deadline: Deadline,
    /// Host address of the guest's interrupt word while the VM's memory is this cell's (0 once
    /// the memory went back to the pool or the reaper).
    interrupt_word: Mutex<usize>,
}

impl KillShared {
    /// Kicks the vCPU out of `KVM_RUN` if a thread is in this VM's run step. The signal is sent
    /// under the lock that thread publishes and clears its tid with, so it lands while the
    /// thread is still in its run step, where the handler's `immediate_exit` pointer is set.
    pub(crate) fn kick_if_running(&self) {
        let tid = self.tid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = *tid {
            signal::kick(t);
        }
    }
}

/// Kills a VM from any thread: the running `KVM_RUN` is interrupted promptly and every later
/// operation fails with [`VmError::Killed`].
#[derive(Clone)]
pub struct Killer(Arc<KillShared>);

impl Killer {
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.kick_if_running();
    }

    pub fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::SeqCst)
    }
}

/// Ends the exec/call running in a VM from any thread without killing it: sets the guest's
/// interrupt word, which the engine's progress callback polls (no VM exit). The guest answers
/// the transaction with `cancelled` and stays usable; the host clears the word when the next
/// transaction starts, so an interrupt that arrives while nothing runs cancels nothing.
#[derive(Clone)]
pub struct Interrupter(Arc<KillShared>);

impl Interrupter {
    pub fn interrupt(&self) {
        let word = self
            .0
            .interrupt_word
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *word != 0 {
            // SAFETY: the address is the 4-byte aligned interrupt word inside this VM's guest
            // memory, which stays mapped while it is registered: the VM clears the registration
            // under this lock before its memory is released. The guest reads it from another
            // CPU; the host only ever accesses it atomically.
            unsafe { AtomicU32::from_ptr(*word as *mut u32) }.store(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupter").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Killer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Killer")
            .field("killed", &self.is_killed())
            .finish()
    }
}

enum Wait {
    Frame(u64),
    Idle,
    TimedOut,
}

enum Exit {
    Doorbell,
    Panic(u32),
    Oom,
    Nop,
    Returned,
    Interrupted,
    Fatal(VmError),
}

/// The KVM objects plus memory; field order is drop order (vCPU, VM, then memory).
pub(crate) struct Machine {
    pub vcpu: VcpuFd,
    /// Kept alive for the vCPU and memory slot; never used after setup.
    pub _vm: VmFd,
    pub mem: GuestMemory,
}

impl Machine {
    pub fn new(mem: GuestMemory) -> Result<Machine, VmError> {
        let host = kvm::host()?;
        signal::install()?;
        let vm = host
            .kvm
            .create_vm()
            .map_err(|e| VmError::kvm("KVM_CREATE_VM", e))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.len() as u64,
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: the region is exactly `mem`'s live mapping, which outlives the VM (Machine
        // drops the VM before the memory).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| VmError::kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| VmError::kvm("KVM_CREATE_VCPU", e))?;
        vcpu.set_cpuid2(&host.cpuid)
            .map_err(|e| VmError::kvm("KVM_SET_CPUID2", e))?;
        Ok(Machine { vcpu, _vm: vm, mem })
    }

    /// Complete a pending port-I/O exit without running guest code (KVM applies its side
    /// effects only on the next KVM_RUN), so the register state is consistent.
    pub fn flush_pending_io(&mut self) -> Result<(), VmError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run();
        let res = match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(VmError::kvm("KVM_RUN(immediate_exit)", e)),
            Ok(_) => Err(VmError::UnexpectedExit(
                "exit while flushing pending I/O".into(),
            )),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        res
    }
}

fn seg(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

const USER_CS: u16 = 0x33;
const USER_DS: u16 = 0x2b;
const TSS_SEL: u16 = 0x38;
/// I/O bitmap offset inside the TSS, its size and the TSS limit covering it plus terminator.
const IOMAP_OFF: u64 = 0x68;
const TSS_LIMIT: u64 = IOMAP_OFF + 8192;

/// Program the registers for a first entry at `entry`, CPL3, long mode.
pub(crate) fn set_boot_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), VmError> {
    let host = kvm::host()?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| VmError::kvm("KVM_GET_SREGS", e))?;
    sregs.cs = seg(USER_CS, true);
    let ds = seg(USER_DS, false);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: TSS_LIMIT as u32,
        selector: TSS_SEL,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (9 * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4_ADDR;
    // PE | MP | ET | NE | WP | PG
    sregs.cr0 = 0x1 | 0x2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
    // PAE | OSFXSR | OSXMMEXCPT (| OSXSAVE)
    sregs.cr4 = 0x20 | 0x200 | 0x400 | if host.xcr0.is_some() { 0x4_0000 } else { 0 };
    // LME | LMA
    sregs.efer = 0x100 | 0x400;
    vcpu.set_sregs(&sregs)
        .map_err(|e| VmError::kvm("KVM_SET_SREGS", e))?;
    if let Some(xcr0) = host.xcr0 {
        let mut xcrs = kvm_bindings::kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = xcr0;
        vcpu.set_xcrs(&xcrs)
            .map_err(|e| VmError::kvm("KVM_SET_XCRS", e))?;
    }
    let regs = kvm_regs {
        rip: entry,
        // As if `call`ed: (rsp + 8) is 16-byte aligned at function entry.
        rsp: STACK_TOP - 8,
        // IOPL=3: `in`/`out` are legal at CPL3 and still exit.
        rflags: 0x3002,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| VmError::kvm("KVM_SET_REGS", e))?;
    Ok(())
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v & !(a - 1))
}

/// How [`setup_memory`] treats the mapping.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backing {
    /// Anonymous memory of this VM alone: image and heap get transparent huge pages.
    Anonymous,
    /// The snapshot file: left as it is.
    Snapshot,
}

/// Write page tables, GDT, boot info and the image into fresh (zeroed) guest memory.
///
/// Layout above the first 2 MiB: the image, then the heap, then the two channel buffers at the
/// top of RAM. Image and heap start are what a cell touches most, so they share as few 2 MiB
/// pages as possible (each one huge page, zeroed and mapped once); the buffers, of which a
/// transaction touches a page or two, stay in 4 KiB pages at the top.
pub(crate) fn setup_memory(
    mem: &GuestMemory,
    cfg: &VmConfig,
    backing: Backing,
) -> Result<Layout, VmError> {
    let size = cfg.mem_size;
    let max = max_mem_size();
    if !(MIN_MEM_SIZE..=max).contains(&size) || size % 4096 != 0 {
        return Err(VmError::Config(format!(
            "guest memory must be a multiple of 4 KiB in [{MIN_MEM_SIZE}, {max}], got {size}"
        )));
    }
    if cfg.frame_cap < 16 || cfg.frame_cap > 64 * 1024 * 1024 {
        return Err(VmError::Config(format!(
            "frame cap {} out of range",
            cfg.frame_cap
        )));
    }
    let img = elf::parse(GUEST_ELF, IMAGE_BASE, size)?;
    let cap = align_up(cfg.frame_cap, 4096).ok_or_else(|| VmError::Config("frame cap".into()))?;
    // One page directory per GiB: the first sits with the other tables below the stack, the
    // others (guests over 1 GiB only) right after the image.
    let gibs = size.div_ceil(GIB).max(1);
    let tables_base = align_up(img.end, 4096).ok_or_else(|| VmError::Config("image end".into()))?;
    let heap_base = tables_base + (gibs - 1) * 4096;
    let g2h_base = size.saturating_sub(cap);
    let h2g_base = g2h_base.saturating_sub(cap);
    if heap_base.saturating_add(MIN_HEAP) > h2g_base {
        return Err(VmError::Config(format!(
            "guest memory of {size} bytes leaves no heap (the image ends at {heap_base:#x}, \
             the buffers start at {h2g_base:#x})"
        )));
    }
    if backing == Backing::Anonymous {
        mem.advise_huge(IMAGE_BASE, h2g_base)?;
    }
    // Page tables: identity map of every GiB the RAM reaches (at least one) with the U bit;
    // 4 KiB pages in the first 2 MiB so that page 0 and the stack guard page stay unmapped.
    // Addresses past the RAM but inside the last mapped GiB exit to the host as MMIO. Accessed and dirty are preset: with
    // shadow paging (PVM) KVM otherwise takes an extra fault on the first write to each page
    // just to set the dirty bit; the guest never reads them, and hardware ignores a preset bit.
    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const A: u64 = 0x20;
    const D: u64 = 0x40;
    const PS: u64 = 0x80;
    mem.write_u64(PML4_ADDR, PDPT_ADDR | P | RW | US | A)?;
    mem.write_u64(PDPT_ADDR, PD_ADDR | P | RW | US | A)?;
    mem.write_u64(PD_ADDR, PT_ADDR | P | RW | US | A)?;
    for i in 1..512u64 {
        mem.write_u64(PD_ADDR + i * 8, (i << 21) | P | RW | US | A | D | PS)?;
    }
    for g in 1..gibs {
        let pd = tables_base + (g - 1) * 4096;
        mem.write_u64(PDPT_ADDR + g * 8, pd | P | RW | US | A)?;
        for i in 0..512u64 {
            let addr = g * GIB + (i << 21);
            mem.write_u64(pd + i * 8, addr | P | RW | US | A | D | PS)?;
        }
    }
    for j in 0..512u64 {
        let addr = j << 12;
        let entry = if addr == 0 || addr == STACK_GUARD_ADDR {
            0
        } else {
            addr | P | RW | US | A | D
        };
        mem.write_u64(PT_ADDR + j * 8, entry)?;
    }
    // GDT: null, kernel code/data (unused), user data 0x2b, user code 0x33, TSS 0x38.
    let gdt: [u64; 7] = [
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0,
        0,
        0x00cf_f200_0000_ffff,
        0x00af_fa00_0000_ffff,
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(GDT_ADDR + i as u64 * 8, *d)?;
    }
    let tss_lo = (TSS_LIMIT & 0xffff)
        | ((TSS_LIMIT >> 16) << 48)
        | ((TSS_ADDR & 0xff_ffff) << 16)
        | (0x89u64 << 40)
        | (((TSS_ADDR >> 24) & 0xff) << 56);
    mem.write_u64(GDT_ADDR + 7 * 8, tss_lo)?;
    mem.write_u64(GDT_ADDR + 8 * 8, TSS_ADDR >> 32)?;
    // I/O map base; the bitmap itself is zero (fresh memory) and ends with the 0xff terminator.
    mem.fill(TSS_ADDR, (TSS_LIMIT + 1) as usize, 0)?;
    mem.write_u32(TSS_ADDR + 0x64, (IOMAP_OFF as u32) << 16)?;
    mem.write(TSS_ADDR + TSS_LIMIT, &[0xff])?;

    for s in &img.segments {
        let bytes = GUEST_ELF
            .get(s.offset..s.offset + s.filesz)
            .ok_or(VmError::BadImage(elf::ElfError::BadSegment))?;
        mem.write(s.vaddr, bytes)?;
        let zero_from = s.vaddr + s.filesz as u64;
        mem.fill(zero_from, (s.memsz - s.filesz as u64) as usize, 0)?;
    }
    let boot = BootInfo {
        magic: BOOT_MAGIC,
        mode: cfg.mode(),
        _pad: 0,
        mem_size: size,
        heap_base,
        heap_size: h2g_base - heap_base,
        h2g_base,
        h2g_cap: cfg.frame_cap,
        g2h_base,
        g2h_cap: cfg.frame_cap,
    };
    let fields = [
        boot.magic,
        boot.mode as u64,
        boot.mem_size,
        boot.heap_base,
        boot.heap_size,
        boot.h2g_base,
        boot.h2g_cap,
        boot.g2h_base,
        boot.g2h_cap,
    ];
    for (i, v) in fields.iter().enumerate() {
        mem.write_u64(BOOT_INFO_ADDR + i as u64 * 8, *v)?;
    }
    Ok(Layout {
        entry: img.entry,
        boot,
        extra_tables: (tables_base, heap_base),
    })
}

const H2G_LEN: u64 = MAILBOX_H2G_LEN;
const G2H_LEN: u64 = MAILBOX_G2H_LEN;
const OOM_SIZE: u64 = MAILBOX_OOM_SIZE;

/// A running (or paused) guest. The vCPU runs only inside [`Vm::recv`], on the calling thread.
pub struct Vm {
    pub(crate) machine: Option<Machine>,
    pub(crate) layout: Layout,
    kill: Arc<KillShared>,
    queue: VecDeque<Vec<u8>>,
    /// Whether the watchdog knows this VM (it is added once, at its first deadline).
    watched: bool,
    idle: bool,
    dead: Option<VmError>,
    cpu: CpuBudget,
    pub(crate) template: Option<Arc<Template>>,
    pub(crate) reused: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mem_size", &self.layout.boot.mem_size)
            .field("idle", &self.idle)
            .field("dead", &self.dead)
            .finish()
    }
}

impl Vm {
    /// Cold boot: new VM, fresh memory, the guest starts at its entry point.
    pub fn boot(cfg: &VmConfig) -> Result<Vm, VmError> {
        let mem = GuestMemory::anonymous(cfg.mem_size.max(MIN_MEM_SIZE) as usize)?;
        let layout = setup_memory(&mem, cfg, Backing::Anonymous)?;
        let machine = Machine::new(mem)?;
        set_boot_regs(&machine.vcpu, layout.entry)?;
        Ok(Vm::from_parts(machine, layout, None))
    }

    pub(crate) fn from_parts(
        machine: Machine,
        layout: Layout,
        template: Option<Arc<Template>>,
    ) -> Vm {
        let word = machine.mem.host_addr() + MAILBOX_INTERRUPT;
        Vm {
            machine: Some(machine),
            layout,
            kill: Arc::new(KillShared {
                killed: AtomicBool::new(false),
                tid: Mutex::new(None),
                deadline: Deadline::default(),
                interrupt_word: Mutex::new(word as usize),
            }),
            queue: VecDeque::new(),
            watched: false,
            idle: false,
            dead: None,
            cpu: CpuBudget::default(),
            template,
            reused: false,
        }
    }

    /// Takes the machine out of this VM; its interrupt word is unregistered first, so no
    /// [`Interrupter`] writes into memory that is no longer this cell's.
    pub(crate) fn take_machine(&mut self) -> Option<Machine> {
        *self
            .kill
            .interrupt_word
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = 0;
        self.machine.take()
    }

    /// Limits the CPU time the guest may spend running over the VM's life (None: unlimited).
    /// Past it the VM stops with [`VmError::CpuTimeExceeded`].
    pub fn set_cpu_limit(&mut self, limit: Option<Duration>) {
        self.cpu.set_limit(limit);
    }

    /// CPU time the guest has spent running (counted only while a CPU limit is set).
    pub fn cpu_used(&self) -> Duration {
        self.cpu.used()
    }

    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.kill.clone())
    }

    /// Clears the guest's interrupt word: an interrupt only cancels the transaction it arrives
    /// in. One store into guest memory; the guest is not running.
    pub fn clear_interrupt(&self) -> Result<(), VmError> {
        self.machine()?
            .mem
            .atomic_u32(MAILBOX_INTERRUPT)?
            .store(0, Ordering::SeqCst);
        Ok(())
    }

    pub fn mem_size(&self) -> u64 {
        self.layout.boot.mem_size
    }

    /// Largest frame accepted in either direction.
    pub fn frame_cap(&self) -> usize {
        self.layout.boot.h2g_cap.min(self.layout.boot.g2h_cap) as usize
    }

    /// Heap bytes the guest allocator manages.
    pub fn heap_size(&self) -> u64 {
        self.layout.boot.heap_size
    }

    pub fn killer(&self) -> Killer {
        Killer(self.kill.clone())
    }

    /// The error that stopped this VM, if it is dead.
    pub fn dead_reason(&self) -> Option<&VmError> {
        self.dead.as_ref()
    }

    fn machine(&self) -> Result<&Machine, VmError> {
        self.machine
            .as_ref()
            .ok_or_else(|| VmError::Dead(Box::new(VmError::Killed)))
    }

    fn check_alive(&self) -> Result<(), VmError> {
        if let Some(e) = &self.dead {
            return Err(VmError::Dead(Box::new(e.clone())));
        }
        if self.kill.killed.load(Ordering::SeqCst) {
            return Err(VmError::Killed);
        }
        Ok(())
    }

    fn fail<T>(&mut self, e: VmError) -> Result<T, VmError> {
        if self.dead.is_none() {
            self.dead = Some(e.clone());
        }
        Err(e)
    }

    /// Queue one frame for the guest; it is delivered when the guest next asks for one.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), VmError> {
        self.check_alive()?;
        let cap = self.layout.boot.h2g_cap;
        if frame.is_empty() || frame.len() as u64 > cap {
            return Err(VmError::HostFrameTooLarge {
                len: frame.len() as u64,
                cap,
            });
        }
        if self.queue.len() >= MAX_QUEUED {
            return self.fail(VmError::Backpressure {
                queued: self.queue.len(),
            });
        }
        // Usually the buffer is free and nothing is queued: place the frame without a copy.
        if self.queue.is_empty() && self.place(frame)? {
            return Ok(());
        }
        self.queue.push_back(frame.to_vec());
        self.pump()
    }

    /// Put `frame` in the host->guest buffer if the guest consumed the last one.
    fn place(&self, frame: &[u8]) -> Result<bool, VmError> {
        let mem = &self.machine()?.mem;
        if mem.read_u32(H2G_LEN)? != 0 {
            return Ok(false);
        }
        mem.write(self.layout.boot.h2g_base, frame)?;
        mem.write_u32(H2G_LEN, frame.len() as u32)?;
        Ok(true)
    }

    /// Move the next queued frame into the host->guest buffer if the guest consumed the last.
    fn pump(&mut self) -> Result<(), VmError> {
        if let Some(f) = self.queue.front()
            && self.place(f)?
        {
            self.queue.pop_front();
        }
        Ok(())
    }

    fn run_once(&mut self) -> Exit {
        let Some(m) = self.machine.as_mut() else {
            return Exit::Fatal(VmError::Killed);
        };
        // Order matters (see `watchdog`): the handler's pointer first, then the tid a kick is
        // aimed at, then the checks a kick sent before the tid was visible would have missed.
        let ie: *mut u8 = &mut m.vcpu.get_kvm_run().immediate_exit;
        let guard = signal::RunGuard::new(ie);
        *self.kill.tid.lock().unwrap_or_else(|p| p.into_inner()) = Some(watchdog::current_tid());
        let exit = if self.kill.killed.load(Ordering::SeqCst) {
            Exit::Fatal(VmError::Killed)
        } else if self.kill.deadline.passed() {
            Exit::Interrupted
        } else {
            let start = self.cpu.is_limited().then(thread_cpu_time);
            let run = m.vcpu.run();
            if let Some(start) = start {
                self.cpu.charge(thread_cpu_time().saturating_sub(start));
            }
            match run {
                Ok(VcpuExit::IoIn(PORT_DOORBELL, _)) => Exit::Doorbell,
                Ok(VcpuExit::IoIn(PORT_NOP, _)) => Exit::Nop,
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut v = [0u8; 4];
                    let n = data.len().min(4);
                    v[..n].copy_from_slice(&data[..n]);
                    let value = u32::from_le_bytes(v);
                    match port {
                        PORT_PANIC => Exit::Panic(value),
                        PORT_OOM => Exit::Oom,
                        PORT_NOP => Exit::Nop,
                        PORT_EXIT => Exit::Returned,
                        p => Exit::Fatal(VmError::UndefinedPort {
                            port: p,
                            write: true,
                        }),
                    }
                }
                Ok(VcpuExit::IoIn(port, _)) => {
                    Exit::Fatal(VmError::UndefinedPort { port, write: false })
                }
                Ok(VcpuExit::MmioRead(addr, _)) => {
                    Exit::Fatal(VmError::OutsideMemory { addr, write: false })
                }
                Ok(VcpuExit::MmioWrite(addr, _)) => {
                    Exit::Fatal(VmError::OutsideMemory { addr, write: true })
                }
                Ok(VcpuExit::Shutdown) => Exit::Fatal(match m.vcpu.get_regs() {
                    Ok(regs) if is_stack_overflow(regs.rsp) => {
                        VmError::StackOverflow { rsp: regs.rsp }
                    }
                    _ => VmError::TripleFault,
                }),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the exit union.
                    let sub = unsafe { m.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    if sub == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                        Exit::Fatal(VmError::EmulationFailure)
                    } else {
                        Exit::Fatal(VmError::InternalError { suberror: sub })
                    }
                }
                Ok(VcpuExit::FailEntry(reason, _)) => Exit::Fatal(VmError::FailEntry { reason }),
                Ok(VcpuExit::Intr) => Exit::Interrupted,
                Ok(other) => Exit::Fatal(VmError::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Exit::Interrupted
                }
                Err(e) => Exit::Fatal(VmError::kvm("KVM_RUN", e)),
            }
        };
        *self.kill.tid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(guard);
        m.vcpu.set_kvm_immediate_exit(0);
        exit
    }

    /// Run the guest on this thread until it hands over a frame, waits idle, the deadline
    /// passes, or it stops (typed error; the VM is then dead).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Recv, VmError> {
        match self.wait(deadline)? {
            Wait::Frame(len) => {
                let mut buf = vec![0u8; len as usize];
                self.machine()?
                    .mem
                    .read(self.layout.boot.g2h_base, &mut buf)?;
                Ok(Recv::Frame(buf))
            }
            Wait::Idle => Ok(Recv::Idle),
            Wait::TimedOut => Ok(Recv::TimedOut),
        }
    }

    /// Like [`Vm::recv`] for wire frames: the 4-byte length prefix is read from guest memory and
    /// checked against `max_len` and against the doorbell length before the body is allocated;
    /// returns the body without its prefix. A bad prefix kills the VM (typed as a wire error).
    pub fn recv_body(&mut self, deadline: Option<Instant>, max_len: u32) -> Result<Recv, VmError> {
        let len = match self.wait(deadline)? {
            Wait::Frame(len) => len,
            Wait::Idle => return Ok(Recv::Idle),
            Wait::TimedOut => return Ok(Recv::TimedOut),
        };
        let base = self.layout.boot.g2h_base;
        if len < abi::wire::HEADER_LEN as u64 {
            return self.fail(VmError::BadFrame(abi::wire::WireError::Empty));
        }
        let mut head = [0u8; abi::wire::HEADER_LEN];
        self.machine()?.mem.read(base, &mut head)?;
        let n = match abi::wire::body_len(head, max_len) {
            Ok(n) => n as u64,
            Err(e) => return self.fail(VmError::BadFrame(e)),
        };
        let avail = len - abi::wire::HEADER_LEN as u64;
        if n != avail {
            let e = if avail > n {
                abi::wire::WireError::TrailingBytes((avail - n) as usize)
            } else {
                abi::wire::WireError::Malformed(postcard::Error::DeserializeUnexpectedEnd)
            };
            return self.fail(VmError::BadFrame(e));
        }
        let mut body = vec![0u8; n as usize];
        self.machine()?
            .mem
            .read(base + abi::wire::HEADER_LEN as u64, &mut body)?;
        Ok(Recv::Frame(body))
    }

    /// Arms the watchdog for the earlier of `deadline` and the instant the CPU budget could be
    /// spent at the earliest.
    fn arm(&mut self, deadline: Option<Instant>) -> Result<(), VmError> {
        let kick = match (deadline, self.cpu.earliest_end(Instant::now())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        watchdog::set_deadline(&self.kill, &mut self.watched, kick)
    }

    fn cpu_exhausted(&mut self) -> Result<(), VmError> {
        match self.cpu.exhausted() {
            Some((limit, used)) => self.fail(VmError::CpuTimeExceeded {
                limit_ms: limit.as_millis() as u64,
                used_ms: used.as_millis() as u64,
            }),
            None => Ok(()),
        }
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<Wait, VmError> {
        self.check_alive()?;
        self.cpu_exhausted()?;
        self.arm(deadline)?;
        loop {
            self.pump()?;
            if self.idle {
                if self.machine()?.mem.read_u32(H2G_LEN)? == 0 {
                    return Ok(Wait::Idle);
                }
                self.idle = false;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Wait::TimedOut);
            }
            match self.run_once() {
                Exit::Doorbell => {
                    self.cpu_exhausted()?;
                    let mem = &self.machine()?.mem;
                    let len = mem.read_u32(G2H_LEN)? as u64;
                    mem.write_u32(G2H_LEN, 0)?;
                    if len == 0 {
                        self.idle = true;
                        continue;
                    }
                    let cap = self.layout.boot.g2h_cap;
                    if len > cap {
                        return self.fail(VmError::FrameTooLarge { len, cap });
                    }
                    return Ok(Wait::Frame(len));
                }
                Exit::Interrupted => {
                    if self.kill.killed.load(Ordering::SeqCst) {
                        return self.fail(VmError::Killed);
                    }
                    self.cpu_exhausted()?;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Wait::TimedOut);
                    }
                    if self.cpu.is_limited() {
                        // The kick came at the earliest instant the budget could be spent, but
                        // the thread also ran host code or waited: aim at the new earliest end.
                        self.arm(deadline)?;
                    }
                }
                Exit::Panic(len) => {
                    let n = (len as usize)
                        .min(MAX_PANIC_MSG)
                        .min(self.layout.boot.g2h_cap as usize);
                    let mut buf = vec![0u8; n];
                    self.machine()?
                        .mem
                        .read(self.layout.boot.g2h_base, &mut buf)?;
                    let msg = String::from_utf8_lossy(&buf).into_owned();
                    return self.fail(VmError::GuestPanic(msg));
                }
                Exit::Oom => {
                    let requested = self.machine()?.mem.read_u64(OOM_SIZE)?;
                    let limit = self.layout.boot.mem_size;
                    return self.fail(VmError::GuestOutOfMemory { requested, limit });
                }
                Exit::Nop => {
                    return self.fail(VmError::UndefinedPort {
                        port: PORT_NOP,
                        write: true,
                    });
                }
                Exit::Returned => return self.fail(VmError::GuestExited),
                Exit::Fatal(e) => return self.fail(e),
            }
        }
    }

    /// Bench only: `n` round trips of the floor guest (each a bare `out` exit and re-entry).
    #[doc(hidden)]
    pub fn floor_exits(&mut self, n: u64) -> Result<(), VmError> {
        self.check_alive()?;
        for _ in 0..n {
            match self.run_once() {
                Exit::Nop => {}
                Exit::Interrupted => {}
                Exit::Fatal(e) => return self.fail(e),
                _ => return self.fail(VmError::UnexpectedExit("floor guest left its loop".into())),
            }
        }
        Ok(())
    }

    /// Test only: copy guest memory out (bounds checked).
    #[doc(hidden)]
    pub fn debug_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), VmError> {
        self.machine()?.mem.read(addr, buf)
    }

    /// Test only: write guest memory (bounds checked).
    #[doc(hidden)]
    pub fn debug_write(&self, addr: u64, data: &[u8]) -> Result<(), VmError> {
        self.machine()?.mem.write(addr, data)
    }

    /// Test only: guest-physical addresses of the guest pages resident in host memory.
    #[doc(hidden)]
    pub fn debug_resident_pages(&self) -> Result<Vec<u64>, VmError> {
        self.machine()?.mem.resident_pages()
    }

    /// Whether this VM came from the pool (a reset VM of an earlier cell).
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Test only: the boot info the host wrote.
    #[doc(hidden)]
    pub fn boot_info(&self) -> BootInfo {
        self.layout.boot
    }

    /// Stops the VM because the host side refused what the guest did: every later operation
    /// fails with [`VmError::Aborted`], and the guest never runs again.
    pub fn abort(&mut self, reason: abi::CellError) {
        let _ = self.fail::<()>(VmError::Aborted(reason));
    }

    pub(crate) fn reusable(&self) -> bool {
        self.dead.is_none() && !self.kill.killed.load(Ordering::SeqCst)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let Some(m) = self.take_machine() else { return };
        match self.template.clone() {
            Some(t) if self.reusable() => crate::snapshot::release(t, m),
            _ => crate::reaper::destroy_later(m),
        }
    }
}
