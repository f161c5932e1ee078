//! The process-wide `/dev/kvm` handle and cached supported CPUID (computing it costs ~0.4 ms).
use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use crate::error::VmError;

pub(crate) struct KvmHost {
    pub kvm: Kvm,
    /// What every vCPU is given: the few supported leaves a guest of ours needs (see
    /// [`guest_cpuid`]).
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

/// The supported CPUID leaves a vCPU of ours is given: the vendor and extended-leaf ranges,
/// long mode (`0x8000_0001`, which KVM checks before it accepts `EFER.LME`) and the address
/// widths (`0x8000_0008`); with XSAVE, leaf 1 and leaf `0xd` too, from which KVM derives the
/// XCR0 it accepts. The guest never executes `cpuid` (no instruction in its image), so nothing
/// else is read. Why not all of them: on this host's PVM, `KVM_SET_CPUID2` executes the host's
/// `cpuid` for leaves 1 and `0xd` (each a trap to the outer hypervisor): 105-110 µs per vCPU with
/// the whole supported list, 15-18 µs with this one, measured per call over 100 vCPUs. Fewer
/// features offered is also less for a guest to reach.
fn guest_cpuid(supported: &CpuId, xsave: bool) -> Result<CpuId, VmError> {
    let wanted = |function: u32| match function {
        0 | 0x8000_0000 | 0x8000_0001 | 0x8000_0008 => true,
        1 | 0xd => xsave,
        _ => false,
    };
    let entries: Vec<_> = supported
        .as_slice()
        .iter()
        .filter(|e| wanted(e.function))
        .copied()
        .collect();
    CpuId::from_entries(&entries)
        .map_err(|e| VmError::KvmUnavailable(format!("guest CPUID: {e:?}")))
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
    let cpuid = guest_cpuid(&cpuid, xcr0.is_some())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaves(c: &CpuId) -> Vec<(u32, u32)> {
        c.as_slice().iter().map(|e| (e.function, e.index)).collect()
    }

    #[test]
    fn a_vcpu_gets_only_the_leaves_the_guest_and_kvm_need() {
        let entry = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        };
        let supported = CpuId::from_entries(&[
            entry(0, 0),
            entry(1, 0),
            entry(7, 0),
            entry(0xa, 0),
            entry(0xd, 0),
            entry(0xd, 1),
            entry(0x4000_0000, 0),
            entry(0x8000_0000, 0),
            entry(0x8000_0001, 0),
            entry(0x8000_0008, 0),
        ])
        .unwrap();
        let base = [(0, 0), (0x8000_0000, 0), (0x8000_0001, 0), (0x8000_0008, 0)];
        assert_eq!(leaves(&guest_cpuid(&supported, false).unwrap()), base);
        let with_xsave = [
            (0, 0),
            (1, 0),
            (0xd, 0),
            (0xd, 1),
            (0x8000_0000, 0),
            (0x8000_0001, 0),
            (0x8000_0008, 0),
        ];
        assert_eq!(leaves(&guest_cpuid(&supported, true).unwrap()), with_xsave);
    }
}
