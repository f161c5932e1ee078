// The host <-> guest contract of the microvm backend: fixed addresses, ports and the boot info.
// This file is compiled into the guest (`#[path] mod layout`) and into the host (`include!`), so
// both sides always agree; it lives on the host's side so that the published crate carries it. It must stay free of dependencies and of `std`/`alloc`.

/// Guest-physical (= guest-virtual, identity mapped) address of [`BootInfo`].
pub const BOOT_INFO_ADDR: u64 = 0x1000;
/// Address of [`Mailbox`], in the same page as the boot info.
pub const MAILBOX_ADDR: u64 = 0x1800;
/// Global descriptor table.
pub const GDT_ADDR: u64 = 0x2000;
/// PML4, PDPT, PD (1 GiB of 2 MiB pages), and one PT splitting the first 2 MiB into 4 KiB pages.
pub const PML4_ADDR: u64 = 0x3000;
/// Page-directory-pointer table (one entry: the first GiB).
pub const PDPT_ADDR: u64 = 0x4000;
/// Page directory: 512 2 MiB pages.
pub const PD_ADDR: u64 = 0x5000;
/// Page table splitting the first 2 MiB into 4 KiB pages (so the guard page can be unmapped).
pub const PT_ADDR: u64 = 0x6000;
/// 64-bit TSS followed by an all-zero I/O permission bitmap (8 KiB + terminator): port I/O
/// from CPL3 must not fault on hypervisors that consult the bitmap rather than IOPL (PVM);
/// every port still exits to the host, which rejects undefined ones.
pub const TSS_ADDR: u64 = 0x7000;
/// Unmapped page below the stack: an overflow faults (no IDT, so it triple-faults), and the host
/// tells that fault from others by the stack pointer the vCPU stopped with (see
/// [`is_stack_overflow`]).
pub const STACK_GUARD_ADDR: u64 = 0xa000;
/// Lowest stack address; the stack grows down from [`STACK_TOP`].
pub const STACK_BOTTOM: u64 = 0xb000;
/// Top of the stack (exclusive): where the stack pointer starts.
pub const STACK_TOP: u64 = 0x20_0000;
/// The top of the stack the host touches before the first entry: KVM's shadow MMU, faulting one
/// guest page in, also maps the aligned group of eight around it whose host pages are present,
/// so the four stack pages a start writes cost one KVM fault instead of four.
pub const STACK_WARM_BYTES: u64 = 8 * 4096;
/// Stack the guest keeps free below the engine: the engine's progress callback stops a script
/// (`limit_call_depth`) once less than this remains, so the guard page is reached only by code
/// that never calls back (the parser, deep native recursion).
pub const STACK_PROBE_RESERVE: u64 = 128 * 1024;
/// Stack the agent loop itself uses above the engine (frame handling, encoding).
pub const STACK_AGENT_RESERVE: u64 = 64 * 1024;

/// Whether a vCPU that stopped with stack pointer `rsp` ran off the bottom of the stack: a fault
/// in the guard page leaves `rsp` in it, or just above it when a frame's first write below the
/// stack faulted (frames under a page are not probed; larger ones probe page by page).
pub const fn is_stack_overflow(rsp: u64) -> bool {
    rsp >= STACK_GUARD_ADDR && rsp < STACK_BOTTOM + 4096
}

/// Engine stack available to scripts: the stack minus what the probe and the agent keep.
pub const fn engine_stack_bytes() -> u64 {
    STACK_TOP - STACK_BOTTOM - STACK_PROBE_RESERVE - STACK_AGENT_RESERVE
}
/// Where the image is linked (see link.ld).
pub const IMAGE_BASE: u64 = 0x20_0000;

/// [`BootInfo::magic`]: the guest refuses a boot info without it.
pub const BOOT_MAGIC: u64 = 0x4345_4C4C_564D_0001;

/// Guest hands a frame to the host (mailbox `g2h_len` > 0) or waits for one (`g2h_len` == 0).
/// Executed as `in eax, dx`; the value read is meaningless.
pub const PORT_DOORBELL: u16 = 0x3f0;
/// `out` with the length of a UTF-8 panic message in the guest→host buffer.
pub const PORT_PANIC: u16 = 0x3f1;
/// `out` after an allocation failure; mailbox `oom_size` holds the failed request. The host
/// reports it as the cell's memory limit (`limit_memory`), not as a crash.
pub const PORT_OOM: u16 = 0x3f2;
/// Floor-benchmark port: the host counts the exit and resumes. Only accepted in floor mode.
pub const PORT_NOP: u16 = 0x3f3;
/// The guest's entry returned (it never should in runtime mode).
pub const PORT_EXIT: u16 = 0x3f4;

/// Guest modes. Only the host's test/bench API selects a mode other than [`MODE_RUNTIME`]:
/// nothing a script does can reach the boot info.
///
/// The normal guest: the agent loop running scripts.
pub const MODE_RUNTIME: u32 = 0;
/// Floor benchmark: exits on [`PORT_NOP`] in a loop (measures the bare exit cost).
pub const MODE_FLOOR: u32 = 1;
/// Test: executes `ud2` with no IDT, so the vCPU triple-faults.
pub const MODE_TRIPLE_FAULT: u32 = 2;
/// Test: writes beyond guest RAM (the host sees an MMIO exit).
pub const MODE_WRITE_OUTSIDE: u32 = 3;
/// Test: spins forever (for deadlines and kill).
pub const MODE_SPIN: u32 = 4;
/// Test: allocates until the heap runs out (reports on [`PORT_OOM`]).
pub const MODE_HEAP_EXHAUST: u32 = 5;
/// Test: sends frames of junk bytes.
pub const MODE_GARBAGE_FRAME: u32 = 6;
/// Test: announces a frame length far over any cap.
pub const MODE_ABSURD_LENGTH: u32 = 7;
/// Test: writes to a port the contract does not define.
pub const MODE_UNDEFINED_PORT: u32 = 8;
/// Test: sends back every frame it receives, reversed.
pub const MODE_ECHO: u32 = 9;
/// Test: panics (reports on [`PORT_PANIC`]).
pub const MODE_PANIC: u32 = 10;
/// Test: recurses until it runs off the stack into the guard page.
pub const MODE_STACK_OVERFLOW: u32 = 11;
/// Floor variant exiting with `in` instead of `out` (compares the two exit kinds).
pub const MODE_FLOOR_IN: u32 = 12;
/// Test: hands over one batch holding a valid post and then a prefix far over any cap.
pub const MODE_BATCH_GARBAGE: u32 = 13;
/// Test: claims an absurd count of placed bytes without ringing, then spins.
pub const MODE_PLACE_ABSURD: u32 = 14;
/// Test: places one post without ringing, then spins (only a stop from outside ends it).
pub const MODE_PLACE_AND_SPIN: u32 = 15;

/// Boot parameters the host writes at [`BOOT_INFO_ADDR`] before the vCPU starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// Always [`BOOT_MAGIC`].
    pub magic: u64,
    /// Which guest to run: one of the `MODE_*` constants.
    pub mode: u32,
    /// Padding to keep the layout the same on both sides.
    pub _pad: u32,
    /// Total guest memory in bytes.
    pub mem_size: u64,
    /// Start of the guest's heap.
    pub heap_base: u64,
    /// Size of the heap in bytes.
    pub heap_size: u64,
    /// Start of the host→guest frame buffer.
    pub h2g_base: u64,
    /// Capacity of the host→guest buffer: the largest frame the host may place.
    pub h2g_cap: u64,
    /// Start of the guest→host frame buffer.
    pub g2h_base: u64,
    /// Capacity of the guest→host buffer: the largest frame the guest may place.
    pub g2h_cap: u64,
    /// The most the heap's live blocks may take, as its allocator counts them (the sizes asked
    /// for): the cell's memory quota, below `heap_size`, which leaves room for the allocator's
    /// own overhead (0: the whole heap).
    pub heap_quota: u64,
}

/// The shared page through which host and guest hand frames over, at [`MAILBOX_ADDR`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mailbox {
    /// Length of the frame the host placed in the host→guest buffer; the guest zeroes it once read.
    pub h2g_len: u32,
    /// Length of the frame the guest placed in the guest→host buffer (0: "waiting for a frame").
    pub g2h_len: u32,
    /// Size of the allocation that failed (with [`PORT_OOM`]).
    pub oom_size: u64,
    /// Non-zero: the host asks the running exec/call to stop (`cancelled`). Written by the host
    /// from any thread while the guest runs, cleared by the host at the start of each
    /// transaction; the guest only reads it, from the engine's progress callback.
    pub interrupt: u32,
    /// Padding to keep the layout the same on both sides.
    pub _pad: u32,
    /// Bytes of the guest heap's live blocks, as the guest's allocator counts them, published
    /// at every exit and every few thousand operations; the host reads it (from any thread,
    /// while the guest runs) as the cell's memory use. Written by the guest alone, so the host takes it as a claim: it is
    /// never more than the guest's memory.
    pub heap_in_use: u64,
}

/// Offsets of the mailbox fields (the host reads and writes them by address).
pub const MAILBOX_H2G_LEN: u64 = MAILBOX_ADDR;
/// Address of [`Mailbox::g2h_len`].
pub const MAILBOX_G2H_LEN: u64 = MAILBOX_ADDR + 4;
/// Address of [`Mailbox::oom_size`].
pub const MAILBOX_OOM_SIZE: u64 = MAILBOX_ADDR + 8;
/// Address of [`Mailbox::interrupt`].
pub const MAILBOX_INTERRUPT: u64 = MAILBOX_ADDR + 16;
/// Address of [`Mailbox::heap_in_use`].
pub const MAILBOX_HEAP_IN_USE: u64 = MAILBOX_ADDR + 24;

// The offsets above are what the host uses; they must match the struct the guest uses.
const _: () = {
    assert!(core::mem::offset_of!(Mailbox, h2g_len) as u64 == MAILBOX_H2G_LEN - MAILBOX_ADDR);
    assert!(core::mem::offset_of!(Mailbox, g2h_len) as u64 == MAILBOX_G2H_LEN - MAILBOX_ADDR);
    assert!(core::mem::offset_of!(Mailbox, oom_size) as u64 == MAILBOX_OOM_SIZE - MAILBOX_ADDR);
    assert!(core::mem::offset_of!(Mailbox, interrupt) as u64 == MAILBOX_INTERRUPT - MAILBOX_ADDR);
    assert!(
        core::mem::offset_of!(Mailbox, heap_in_use) as u64 == MAILBOX_HEAP_IN_USE - MAILBOX_ADDR
    );
    assert!(MAILBOX_ADDR + core::mem::size_of::<Mailbox>() as u64 <= GDT_ADDR);
    assert!(BOOT_INFO_ADDR + core::mem::size_of::<BootInfo>() as u64 <= MAILBOX_ADDR);
    assert!(STACK_GUARD_ADDR + 4096 == STACK_BOTTOM && STACK_BOTTOM < STACK_TOP);
    assert!(STACK_TOP <= IMAGE_BASE);
    assert!(engine_stack_bytes() > STACK_PROBE_RESERVE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stack_pointer_at_the_guard_is_an_overflow() {
        assert!(!is_stack_overflow(STACK_GUARD_ADDR - 1));
        assert!(is_stack_overflow(STACK_GUARD_ADDR));
        assert!(is_stack_overflow(STACK_BOTTOM - 8), "a push into the guard");
        assert!(
            is_stack_overflow(STACK_BOTTOM + 64),
            "a small frame's first write below"
        );
        assert!(!is_stack_overflow(STACK_BOTTOM + 4096));
        assert!(
            !is_stack_overflow(STACK_TOP - 8),
            "a fault with a healthy stack"
        );
        assert!(!is_stack_overflow(0));
    }

    #[test]
    fn the_fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_INFO_ADDR, MAILBOX_ADDR),
            (
                MAILBOX_ADDR,
                MAILBOX_ADDR + core::mem::size_of::<Mailbox>() as u64,
            ),
            (GDT_ADDR, GDT_ADDR + 9 * 8),
            (PML4_ADDR, PT_ADDR + 4096),
            (TSS_ADDR, STACK_GUARD_ADDR),
            (STACK_GUARD_ADDR, STACK_BOTTOM),
            (STACK_BOTTOM, STACK_TOP),
        ];
        for w in areas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:#x?} overlaps {:#x?}", w[0], w[1]);
        }
    }
}
