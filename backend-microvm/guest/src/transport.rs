//! Shared-memory + doorbell channel, guest side.
use crate::framing;
use crate::layout::*;
use alloc::vec::Vec;
use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering, compiler_fence};

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
    crate::rt::publish_heap();
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

    /// Hand one frame to the host now, with every frame placed before it.
    pub fn send(&mut self, frame: &[u8]) {
        self.place(frame);
        flush();
    }

    /// Hand one frame to the host at the next exit: with a frame that needs the host now, when the
    /// buffer is full, or once the script has run [`FLUSH_EVERY_OPS`] operations past it
    /// ([`flush_if_due`]). A one-way frame (post, log, metric) need not cost an exit of its own.
    pub fn send_later(&mut self, frame: &[u8]) {
        self.place(frame);
        DEFERRED.store(true, Ordering::Relaxed);
    }

    /// Append `frame` to the frames the host has not taken yet (making room first if it does not
    /// fit after them). A frame larger than the buffer is a guest bug: panic (reported).
    fn place(&mut self, frame: &[u8]) {
        if !framing::fits_buffer(frame.len(), self.g2h_cap) {
            panic!(
                "guest frame of {} bytes does not fit the {} byte buffer",
                frame.len(),
                self.g2h_cap
            );
        }
        let mut used = placed();
        if used > self.g2h_cap - frame.len() {
            flush();
            used = placed();
        }
        // SAFETY: g2h..g2h+g2h_cap is guest RAM reserved by the host for this buffer, and
        // used + frame.len() <= g2h_cap (checked above; the host zeroes the count it took).
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), self.g2h.add(used), frame.len()) };
        // The host reads the count whenever the vCPU stops, even between two instructions of
        // this function: the bytes must be in place before the count that covers them.
        compiler_fence(Ordering::SeqCst);
        // SAFETY: the mailbox lives in the boot page, mapped and writable.
        unsafe { write_volatile(&raw mut (*mailbox()).g2h_len, (used + frame.len()) as u32) };
    }

    /// Ring the doorbell claiming `len` bytes are ready (test modes use absurd values).
    pub fn send_raw_len(&mut self, len: u32) {
        // SAFETY: the mailbox lives in the boot page, mapped and writable.
        unsafe { write_volatile(&raw mut (*mailbox()).g2h_len, len) };
        doorbell();
    }

    /// Wait for the next host frame (handing over the frames placed before, if any).
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
            // A doorbell with no frame placed says "waiting"; with frames, the host takes them
            // and resumes this loop, which then rings again to wait.
            flush();
        }
    }
}

/// Bytes of frames placed in the g2h buffer and not yet taken by the host (it zeroes the count
/// at a doorbell).
fn placed() -> usize {
    // SAFETY: the mailbox lives in the boot page, mapped and writable.
    unsafe { read_volatile(&raw const (*mailbox()).g2h_len) as usize }
}

/// Operations a script may run past a deferred frame before it is handed over: well under a
/// millisecond of script, so a host waiting for a post sees it promptly.
pub const FLUSH_EVERY_OPS: u64 = 4096;

/// Whether frames wait in the buffer for the next exit.
static DEFERRED: AtomicBool = AtomicBool::new(false);
/// The operation count at which deferred frames are handed over (0: not set yet).
static FLUSH_AT: AtomicU64 = AtomicU64::new(0);

/// Rings the doorbell: the host takes every frame placed (or, with none, sees the guest wait).
pub fn flush() {
    DEFERRED.store(false, Ordering::Relaxed);
    FLUSH_AT.store(0, Ordering::Relaxed);
    doorbell();
}

/// Called with the script's operation count on every operation: hands deferred frames over once
/// the script ran [`FLUSH_EVERY_OPS`] operations past them. One load when nothing is deferred.
#[inline(always)]
pub fn flush_if_due(operations: u64) {
    if !DEFERRED.load(Ordering::Relaxed) {
        return;
    }
    match FLUSH_AT.load(Ordering::Relaxed) {
        0 => FLUSH_AT.store(
            operations.saturating_add(FLUSH_EVERY_OPS),
            Ordering::Relaxed,
        ),
        at if operations >= at => flush(),
        _ => {}
    }
}

/// A [`runtime::Interrupt`] that also hands deferred frames over when they are due.
pub struct Flushing<I>(pub I);

impl<I: runtime::Interrupt> runtime::Interrupt for Flushing<I> {
    #[inline(always)]
    fn check(&self, operations: u64) -> Option<abi::ErrorCode> {
        flush_if_due(operations);
        self.0.check(operations)
    }
}

/// Hands over any deferred frames before the buffer is reused for something else (a panic
/// message).
pub fn flush_deferred() {
    if placed() != 0 {
        flush();
    }
}

/// `runtime::Transport` over [`Transport`]: wire-encoded frames, prefix included.
pub struct Framed {
    raw: Transport,
    max: u32,
    /// The host's last batch and how much of it was read: one frame, or the handshake and the
    /// first transaction's frame placed together (one exit for both).
    batch: Vec<u8>,
    read: usize,
}

impl Framed {
    pub fn new(raw: Transport, max: u32) -> Self {
        Framed {
            raw,
            max,
            batch: Vec::new(),
            read: 0,
        }
    }
}

impl runtime::Transport for Framed {
    fn send(&mut self, frame: abi::GuestFrame) -> Result<(), runtime::TransportError> {
        let bytes = runtime::encode_frame(&frame, self.max)?;
        match frame {
            // Ready is always followed by a wait for the next frame, which rings (or finds that
            // frame already placed): it need not ring on its own.
            abi::GuestFrame::Ready(_)
            | abi::GuestFrame::Post(_)
            | abi::GuestFrame::Log { .. }
            | abi::GuestFrame::Metric { .. } => self.raw.send_later(&bytes),
            _ => self.raw.send(&bytes),
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<abi::HostFrame, runtime::TransportError> {
        if self.read >= self.batch.len() {
            self.batch = self.raw.recv();
            self.read = 0;
        }
        let violation = |m: &str| {
            runtime::TransportError::Aborted(abi::CellError::new(
                abi::ErrorCode::ProtocolViolation,
                m,
            ))
        };
        let (body, rest) =
            framing::next_host_frame(&self.batch[self.read..], self.max).map_err(violation)?;
        self.read = self.batch.len() - rest.len();
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
