//! The process-wide `/dev/kvm` handle and cached supported CPUID (computing it costs ~0.4 ms).
use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use crate::error::VmError;

pub(crate) struct KvmHost {
    pub kvm: Kvm,
    pub cpuid: CpuId,
    /// XCR0 to program, or None when the CPU has no XSAVE.
    pub xcr0: Option<u64>,
    /// One idle vCPU kept for the life of the process (see [`anchor`]); never run.
    _anchor: Option<(VmFd, VcpuFd)>,
}

/// Creates an empty VM with one vCPU that is never run.
///
/// Why: x86 KVM counts vCPUs without an in-kernel local APIC (ours: there is no irqchip) in a
/// static key, and switching a static key between zero and one patches kernel code on every
/// CPU (`text_poke`, an IPI to each). Without a vCPU that outlives the cells, a process that
/// starts and closes cells one at a time pays that twice per cell, on creation and again on
/// destruction. Measured here: cold boot → `post(40+2)` → drop in a loop, 1.48–1.88 ms per cell
/// without the anchor and 1.28–1.40 ms with it, `text_poke` gone from the profile. Costs one
/// idle VM's kernel memory per process.
fn anchor(kvm: &Kvm) -> Option<(VmFd, VcpuFd)> {
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    Some((vm, vcpu))
}

static HOST: OnceLock<Result<KvmHost, VmError>> = OnceLock::new();

fn open() -> Result<KvmHost, VmError> {
    let kvm = Kvm::new().map_err(|e| VmError::KvmUnavailable(format!("open /dev/kvm: {e}")))?;
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::KvmUnavailable(format!("{name} not supported")));
        }
    }
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmError::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let entries = cpuid.as_slice();
    let has_xsave = entries
        .iter()
        .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
    let xcr0 = if has_xsave {
        let supported = entries
            .iter()
            .find(|e| e.function == 0xd && e.index == 0)
            .map(|e| e.eax as u64)
            .unwrap_or(3);
        // x87 | SSE always, AVX when available: exactly what the guest's codegen may use.
        Some((supported & 0x7) | 0x3)
    } else {
        None
    };
    let _anchor = anchor(&kvm);
    Ok(KvmHost {
        kvm,
        cpuid,
        xcr0,
        _anchor,
    })
}

/// The process-wide KVM handle, opened once.
pub(crate) fn host() -> Result<&'static KvmHost, VmError> {
    HOST.get_or_init(open).as_ref().map_err(Clone::clone)
}

/// Whether KVM is usable in this process (opens `/dev/kvm` on first call).
pub fn kvm_available() -> bool {
    host().is_ok()
}

/// Bench only: create and destroy one empty VM (the `KVM_CREATE_VM` floor).
#[doc(hidden)]
pub fn bench_create_vm() -> Result<(), VmError> {
    let vm = host()?
        .kvm
        .create_vm()
        .map_err(|e| VmError::kvm("KVM_CREATE_VM", e))?;
    drop(vm);
    Ok(())
}

/// Bench only: create one empty VM and its one vCPU, the least any new VM costs before its
/// first instruction (the floor of a start in a new VM). Returned undropped, so a bench can
/// leave the teardown out of its timing, as the backend's reaper thread does.
#[doc(hidden)]
pub fn bench_create_vm_vcpu() -> Result<Box<dyn std::any::Any + Send>, VmError> {
    let vm = host()?
        .kvm
        .create_vm()
        .map_err(|e| VmError::kvm("KVM_CREATE_VM", e))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| VmError::kvm("KVM_CREATE_VCPU", e))?;
    // The vCPU first: it holds a reference to the VM in the kernel anyway.
    Ok(Box::new((vcpu, vm)))
}
