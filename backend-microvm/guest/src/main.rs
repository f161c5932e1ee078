//! Freestanding guest image of the microvm backend.
//!
//! Runs at CPL3 in long mode, identity mapped, with no IDT: any CPU exception triple-faults and the
//! host sees a shutdown. It talks to the host only through the mailbox in the boot page, two
//! shared-memory buffers and port I/O (see `layout.rs`, shared with the host).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

mod control;
mod framing;
mod growth;
// Shared with the host, which alone uses the table addresses and the overflow test.
#[allow(dead_code)]
#[path = "../../src/layout.rs"]
mod layout;
mod rt;
mod transport;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::arch::asm;
use layout::*;

/// The boot info, as written by the host before the first instruction ran.
fn boot_info() -> BootInfo {
    // SAFETY: the host maps and fills the boot page at BOOT_INFO_ADDR before entry; a volatile
    // read of a plain-old-data struct is sound whatever bytes are there.
    unsafe { core::ptr::read_volatile(BOOT_INFO_ADDR as *const BootInfo) }
}

pub(crate) fn port_out(port: u16, value: u32) {
    // SAFETY: IOPL=3 makes `out` legal at CPL3; it only causes a VM exit.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

/// The entry point the host's boot registers jump to: reads the boot page, sets up the heap and
/// serves the cell until the host stops the VM.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
pub extern "C" fn _start() -> ! {
    let info = boot_info();
    if info.magic != BOOT_MAGIC {
        rt::fatal("bad boot magic");
    }
    rt::init_heap(info.heap_base, info.heap_size, info.heap_quota);
    let mut t = transport::Transport::new(&info);
    match info.mode {
        MODE_RUNTIME => runtime_main(t),
        MODE_FLOOR => loop {
            port_out(PORT_NOP, 0);
        },
        MODE_FLOOR_IN => loop {
            // SAFETY: IOPL=3 and the TSS bitmap make `in` legal at CPL3; it only exits.
            unsafe {
                asm!("in eax, dx", in("dx") PORT_NOP, out("eax") _, options(nostack, preserves_flags))
            }
        },
        MODE_TRIPLE_FAULT => {
            // SAFETY: deliberately faulting (test mode): `ud2` raises #UD, no IDT -> triple fault.
            unsafe { asm!("ud2", options(noreturn)) }
        }
        MODE_WRITE_OUTSIDE => {
            // Mapped by the page tables (the first GiB is), but beyond guest RAM: the host sees MMIO.
            let addr = info.mem_size + 0x1000;
            // SAFETY: deliberately touching memory the VM does not have (test mode).
            unsafe { core::ptr::write_volatile(addr as *mut u64, 0xdead_beef) };
            rt::fatal("write outside memory did not exit");
        }
        MODE_SPIN => {
            let mut x: u64 = 0;
            loop {
                x = x.wrapping_add(1);
                // SAFETY: empty asm keeps the loop from being optimised away.
                unsafe { asm!("", in("rax") x, options(nomem, nostack)) };
            }
        }
        MODE_HEAP_EXHAUST => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut v = Vec::with_capacity(64 * 1024);
                v.resize(64 * 1024, 1u8);
                hoard.push(v);
            }
        }
        MODE_GARBAGE_FRAME => loop {
            let junk: Vec<u8> = (0..200u32)
                .map(|i| (i.wrapping_mul(167) ^ 0x5a) as u8)
                .collect();
            t.send(&junk);
        },
        MODE_ABSURD_LENGTH => loop {
            t.send_raw_len(0xffff_fff0);
        },
        MODE_UNDEFINED_PORT => loop {
            port_out(0x80, 0x1234);
        },
        MODE_ECHO => loop {
            let mut f = t.recv();
            f.reverse();
            t.send(&f);
        },
        MODE_BATCH_GARBAGE => {
            let mut batch = test_post(&t);
            batch.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
            loop {
                t.send(&batch);
            }
        }
        MODE_PLACE_ABSURD => {
            // SAFETY: the mailbox lives in the boot page, mapped and writable.
            unsafe {
                core::ptr::write_volatile(
                    &raw mut (*(MAILBOX_ADDR as *mut Mailbox)).g2h_len,
                    0xffff_fff0,
                )
            };
            loop {
                core::hint::spin_loop();
            }
        }
        MODE_PLACE_AND_SPIN => {
            t.send_later(&test_post(&t));
            loop {
                core::hint::spin_loop();
            }
        }
        MODE_PANIC => panic!("guest panic requested by test mode"),
        MODE_STACK_OVERFLOW => {
            let n = rt::recurse(u64::MAX);
            rt::fatal(if n == 0 {
                "impossible"
            } else {
                "stack overflow did not fault"
            });
        }
        _ => rt::fatal("unknown mode"),
    }
}

/// `post(1)` as a wire frame, for the test modes that hand over frames of their own.
fn test_post(t: &transport::Transport) -> Vec<u8> {
    let post = abi::GuestFrame::Post(abi::Value::Int(1));
    runtime::encode_frame(&post, t.max_frame_len())
        .unwrap_or_else(|_| rt::fatal("cannot encode the test post"))
}

/// The cell runtime over the shared-memory channel. Before the first host frame (the snapshot
/// point) one throwaway cell is built so the shared standard library is already in memory.
fn runtime_main(t: transport::Transport) -> ! {
    let max = t.max_frame_len();
    {
        let hello = abi::Hello::new("prewarm", abi::EngineLimits::default(), Vec::new());
        let _ = runtime::Cell::new(
            &hello,
            Box::new(transport::Unconnected),
            Arc::new(runtime::NeverInterrupt),
        );
    }
    let res = runtime::agent::serve(
        Box::new(transport::Framed::new(t, max)),
        Arc::new(transport::Flushing(control::GuestControl)),
    );
    match res {
        Ok(()) => loop {
            port_out(PORT_EXIT, 0);
        },
        Err(e) => {
            let msg = alloc::format!("agent stopped: {e}");
            rt::fatal(&msg)
        }
    }
}
