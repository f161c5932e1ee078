//! How a guest's memory is laid out: the quota checks, page tables, GDT and TSS, boot info and
//! the image, written into fresh memory before the first instruction runs. Pure memory writes:
//! no KVM object is involved, so the layout is unit-tested without `/dev/kvm`.
use crate::elf;
use crate::error::VmError;
use crate::layout::*;
use crate::memory::GuestMemory;

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

/// The heap a quota of `quota` bytes (live blocks, as the allocator counts them) is given: half
/// as much again and 1 MiB for the allocator's own overhead (talc's chunk headers and rounding:
/// short strings in an array took about a third more than they ask for, 191,703 filling a
/// 16 MiB heap where the count allows 260,693), so the quota, not the
/// allocator, says where a script stops, as on the other backends. Only the pages the guest
/// writes cost the host memory.
pub fn heap_room(quota: u64) -> u64 {
    quota.saturating_add(quota / 2).saturating_add(1 << 20)
}

/// The guest RAM whose layout leaves a heap of exactly `heap` bytes (rounded down to whole
/// pages) beside the image, the tables and two channel buffers of `frame_cap` bytes each: a
/// cell's memory quota bounds what its scripts allocate, as on the other backends (the
/// engine's heap in-process, the process's memory), not the VMM's own image, stack and
/// buffers. At most [`max_mem_size`] (a quota near the host's RAM gets what is left).
pub fn mem_size_for_heap(heap: u64, frame_cap: u64) -> u64 {
    static IMAGE_END: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let image_end = *IMAGE_END.get_or_init(|| {
        elf::parse(GUEST_ELF, IMAGE_BASE, MAX_MEM_SIZE).map_or(IMAGE_BASE, |img| img.end)
    });
    let heap = heap & !0xfff;
    let (Some(tables_base), Some(cap)) = (align_up(image_end, 4096), align_up(frame_cap, 4096))
    else {
        return max_mem_size();
    };
    // One page directory per GiB after the first: the size depends on itself, so settle it.
    let mut size = 0u64;
    for _ in 0..3 {
        let gibs = size.div_ceil(GIB).max(1);
        size = tables_base
            .saturating_add((gibs - 1) * 4096)
            .saturating_add(heap)
            .saturating_add(cap.saturating_mul(2));
    }
    size.min(max_mem_size())
}

/// The embedded guest image (built by build.rs).
pub static GUEST_ELF: &[u8] = include_bytes!(env!("CELL_MICROVM_GUEST_ELF"));

/// How to build a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM in bytes: the cell's whole memory quota (image, stack, buffers and heap).
    pub mem_size: u64,
    /// Capacity of each channel buffer (largest frame in either direction).
    pub frame_cap: u64,
    /// The most the guest's heap may hold, as its allocator counts its live blocks (0: as
    /// much as the heap's RAM holds): see [`BootInfo::heap_quota`].
    pub heap_quota: u64,
    mode: u32,
}

impl VmConfig {
    /// A runtime VM of `mem_size` bytes of guest RAM with the default frame cap.
    pub fn new(mem_size: u64) -> Self {
        VmConfig {
            mem_size,
            frame_cap: DEFAULT_FRAME_CAP,
            heap_quota: 0,
            mode: MODE_RUNTIME,
        }
    }

    /// A runtime VM whose heap holds `quota` bytes of live blocks, as every backend counts a
    /// cell's memory (the sizes its allocations ask for), with room beside them for the guest
    /// allocator's own overhead ([`heap_room`]), the image, the tables and two channel buffers
    /// of `frame_cap` bytes each.
    pub fn for_heap_quota(quota: u64, frame_cap: u64) -> Self {
        VmConfig {
            mem_size: mem_size_for_heap(heap_room(quota), frame_cap),
            frame_cap,
            heap_quota: quota,
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

/// I/O bitmap offset inside the TSS, and the TSS limit covering the bitmap and its terminator.
const IOMAP_OFF: u64 = 0x68;
pub(crate) const TSS_LIMIT: u64 = IOMAP_OFF + 8192;

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
    if !(MIN_MEM_SIZE..=max).contains(&size) || !size.is_multiple_of(4096) {
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
    // A cold VM maps the image's whole 2 MiB pages copy-on-write from the process's shared file
    // where the host maps that with huge pages (`image.rs`), and copies the rest; its heap (and
    // the copied rest of the image) gets transparent huge pages. The snapshot copies all of it.
    let copied_from = match backing {
        Backing::Anonymous => {
            let mut from = IMAGE_BASE;
            if let Some(head) = crate::image::shared_head(GUEST_ELF, &img) {
                mem.map_file_private(IMAGE_BASE, head.len, &head.fd)?;
                from += head.len as u64;
            }
            mem.advise_huge(from, h2g_base)?;
            from
        }
        Backing::Snapshot => IMAGE_BASE,
    };
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

    // The stack's top pages present in the host, so that KVM maps them all at the first (see
    // `STACK_WARM_BYTES`).
    mem.fill(STACK_TOP - STACK_WARM_BYTES, STACK_WARM_BYTES as usize, 0)?;

    // The image from `copied_from` on (into fresh, zeroed memory: `.bss` needs no writes).
    for s in &img.segments {
        let bytes = GUEST_ELF
            .get(s.offset..s.offset + s.filesz)
            .ok_or(VmError::BadImage(elf::ElfError::BadSegment))?;
        let skip = (copied_from.saturating_sub(s.vaddr) as usize).min(bytes.len());
        mem.write(s.vaddr + skip as u64, &bytes[skip..])?;
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
        heap_quota: cfg.heap_quota,
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
        boot.heap_quota,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the guest's page tables like the MMU: the physical address of `va` with the U bit
    /// set at every level, or None.
    fn translate(mem: &GuestMemory, va: u64) -> Option<u64> {
        const P: u64 = 1;
        const US: u64 = 4;
        const PS: u64 = 0x80;
        let addr = |e: u64| e & 0x000f_ffff_ffff_f000;
        let entry = |table: u64, index: u64| {
            let e = mem.read_u64(table + index * 8).ok()?;
            (e & (P | US) == (P | US)).then_some(e)
        };
        let pml4e = entry(PML4_ADDR, (va >> 39) & 511)?;
        let pdpte = entry(addr(pml4e), (va >> 30) & 511)?;
        let pde = entry(addr(pdpte), (va >> 21) & 511)?;
        if pde & PS != 0 {
            return Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff));
        }
        let pte = entry(addr(pde), (va >> 12) & 511)?;
        Some(addr(pte) | (va & 0xfff))
    }

    #[test]
    fn guests_over_a_gib_are_identity_mapped_to_their_last_byte() {
        let size = (3 << 30) + (6 << 20);
        let mem = GuestMemory::anonymous(size as usize).unwrap();
        let layout = setup_memory(&mem, &VmConfig::new(size), Backing::Snapshot).unwrap();
        let boot = layout.boot;
        let (tables, heap) = layout.extra_tables;
        assert_eq!(
            heap - tables,
            3 * 4096,
            "a page directory for each GiB past the first"
        );
        assert_eq!(boot.heap_base, heap);
        for va in [
            0x1000,
            STACK_BOTTOM,
            STACK_TOP - 8,
            IMAGE_BASE,
            tables,
            heap,
            (1 << 30) + 5,
            (2 << 30) + (2 << 20) + 7,
            boot.h2g_base,
            boot.g2h_base,
            size - 1,
        ] {
            assert_eq!(translate(&mem, va), Some(va), "{va:#x}");
        }
        // Unmapped: the null page and the stack guard (so both fault).
        assert_eq!(translate(&mem, 8), None);
        assert_eq!(translate(&mem, STACK_GUARD_ADDR + 8), None);
        assert!(boot.g2h_base + boot.g2h_cap <= size);
    }

    #[test]
    fn a_small_guest_keeps_its_tables_below_the_stack() {
        let size = 16 << 20;
        let mem = GuestMemory::anonymous(size as usize).unwrap();
        let layout = setup_memory(&mem, &VmConfig::new(size), Backing::Snapshot).unwrap();
        let (tables, heap) = layout.extra_tables;
        assert_eq!(tables, heap, "no page directory after the image");
        assert_eq!(translate(&mem, size - 1), Some(size - 1));
        assert_eq!(mem.read_u64(PDPT_ADDR + 8).unwrap(), 0, "one GiB mapped");
    }

    #[test]
    fn a_quota_sized_guest_has_exactly_that_heap() {
        for (heap, cap) in [
            (8u64 << 20, DEFAULT_FRAME_CAP + 4),
            (32 << 20, DEFAULT_FRAME_CAP + 4),
            (100 << 20, 4096 + 4),
            ((1 << 30) + (5 << 20), DEFAULT_FRAME_CAP + 4),
            ((2 << 30) - 4096, 16 << 20),
        ] {
            let size = mem_size_for_heap(heap, cap);
            let mem = GuestMemory::anonymous(size as usize).unwrap();
            let mut cfg = VmConfig::new(size);
            cfg.frame_cap = cap;
            let layout = setup_memory(&mem, &cfg, Backing::Snapshot).unwrap();
            assert_eq!(layout.boot.heap_size, heap, "{heap} with a cap of {cap}");
        }
        // Past the host's RAM the guest gets what the host has.
        assert_eq!(mem_size_for_heap(u64::MAX / 2, 4096), max_mem_size());
    }

    #[test]
    fn quotas_outside_the_supported_range_are_refused() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        for size in [MIN_MEM_SIZE - 4096, (16 << 20) + 1, max_mem_size() + 4096] {
            assert!(matches!(
                setup_memory(&mem, &VmConfig::new(size), Backing::Snapshot),
                Err(VmError::Config(_))
            ));
        }
    }
}
