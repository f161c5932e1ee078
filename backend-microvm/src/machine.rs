//! The KVM objects of one VM (VM, one vCPU, guest memory) and the vCPU state of a first entry.
use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::error::VmError;
use crate::kvm;
use crate::layout::*;
use crate::memory::GuestMemory;
use crate::setup::TSS_LIMIT;
use crate::signal;

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

/// Where the machine of a healthy VM goes when its cell is dropped (the snapshot's pool); VMs
/// without one, or that died, go to the reaper.
pub(crate) trait Recycle: Send + Sync {
    fn recycle(&self, machine: Machine);
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
