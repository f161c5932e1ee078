//! Shared-memory + doorbell channel, guest side.
use crate::framing;
use crate::layout::*;
use alloc::vec::Vec;
use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

/// Raw frame channel over the boot-info buffers and the doorbell.
pub struct Transport {
    h2g: *const u8,
    h2g_cap: usize,
    g2h: *mut u8,
    g2h_cap: usize,
}

fn mailbox() -> *mut Mailbox {
    MAILBOX_ADDR as *mut Mailbox
}

fn doorbell() {
    // SAFETY: IOPL=3 makes `in` legal at CPL3; it only causes a VM exit. The value is ignored.
    unsafe {
        asm!("in eax, dx", in("dx") PORT_DOORBELL, out("eax") _, options(nostack, preserves_flags))
    }
}

// SAFETY: the guest is single-threaded (one vCPU, no threads); the pointers name fixed
// guest-physical buffers that live as long as the VM.
unsafe impl Send for Transport {}

impl Transport {
    /// Largest frame body the buffers carry (each buffer holds the 4-byte prefix too).
    pub fn max_frame_len(&self) -> u32 {
        framing::max_body_len(self.h2g_cap, self.g2h_cap)
    }

    pub fn new(info: &BootInfo) -> Self {
        Transport {
            h2g: info.h2g_base as *const u8,
            h2g_cap: info.h2g_cap as usize,
            g2h: info.g2h_base as *mut u8,
            g2h_cap: info.g2h_cap as usize,
        }
    }

    /// Hand one frame to the host. A frame larger than the buffer is a guest bug: panic (reported).
    pub fn send(&mut self, frame: &[u8]) {
        if !framing::fits_buffer(frame.len(), self.g2h_cap) {
            panic!(
                "guest frame of {} bytes does not fit the {} byte buffer",
                frame.len(),
                self.g2h_cap
            );
        }
        // SAFETY: g2h..g2h+g2h_cap is guest RAM reserved by the host for this buffer.
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), self.g2h, frame.len()) };
        self.send_raw_len(frame.len() as u32);
    }

    /// Ring the doorbell claiming `len` bytes are ready (test modes use absurd values).
    pub fn send_raw_len(&mut self, len: u32) {
        // SAFETY: the mailbox lives in the boot page, mapped and writable.
        unsafe { write_volatile(&raw mut (*mailbox()).g2h_len, len) };
        doorbell();
    }

    /// Wait for the next host frame.
    pub fn recv(&mut self) -> Vec<u8> {
        loop {
            // SAFETY: the mailbox lives in the boot page, mapped and writable.
            let n = unsafe { read_volatile(&raw const (*mailbox()).h2g_len) } as usize;
            if n != 0 {
                let n = n.min(self.h2g_cap);
                let mut v = Vec::with_capacity(n);
                // SAFETY: h2g..h2g+h2g_cap is guest RAM reserved for this buffer; n <= h2g_cap.
                unsafe {
                    core::ptr::copy_nonoverlapping(self.h2g, v.as_mut_ptr(), n);
                    v.set_len(n);
                    write_volatile(&raw mut (*mailbox()).h2g_len, 0);
                }
                return v;
            }
            // SAFETY: as above.
            unsafe { write_volatile(&raw mut (*mailbox()).g2h_len, 0) };
            doorbell();
        }
    }
}

/// `runtime::Transport` over [`Transport`]: wire-encoded frames, prefix included.
pub struct Framed {
    raw: Transport,
    max: u32,
}

impl Framed {
    pub fn new(raw: Transport, max: u32) -> Self {
        Framed { raw, max }
    }
}

impl runtime::Transport for Framed {
    fn send(&mut self, frame: abi::GuestFrame) -> Result<(), runtime::TransportError> {
        let bytes = runtime::encode_frame(&frame, self.max)?;
        self.raw.send(&bytes);
        Ok(())
    }

    fn recv(&mut self) -> Result<abi::HostFrame, runtime::TransportError> {
        let bytes = self.raw.recv();
        let violation = |m: &str| {
            runtime::TransportError::Aborted(abi::CellError::new(
                abi::ErrorCode::ProtocolViolation,
                m,
            ))
        };
        let body = framing::host_frame_body(&bytes, self.max).map_err(violation)?;
        runtime::decode_frame(body)
    }
}

/// Transport of the pre-warm cell, which never talks to anyone.
pub struct Unconnected;

impl runtime::Transport for Unconnected {
    fn send(&mut self, _: abi::GuestFrame) -> Result<(), runtime::TransportError> {
        Err(runtime::TransportError::Closed)
    }

    fn recv(&mut self) -> Result<abi::HostFrame, runtime::TransportError> {
        Err(runtime::TransportError::Closed)
    }
}
