//! The embedded programs a cell can run, each copied once per supervisor process into
//! a sealed memfd that children execute.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use crate::error::{Result, host};
use crate::host::sealed_memfd;

/// The guest program, built by build.rs from `guest/` as a static binary.
pub(crate) static GUEST_IMAGE: &[u8] = include_bytes!(env!("CELL_GUEST_BIN"));
/// The escape probe: only unit tests embed it.
#[cfg(test)]
pub(crate) static PROBE_IMAGE: &[u8] = include_bytes!(env!("CELL_PROBE_BIN"));

/// Which embedded program a cell runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Image {
    /// The guest program (the cell runtime, or the fork server).
    Guest,
    /// The escape probe (tests only).
    #[cfg(test)]
    Probe,
}

/// The guest image memfd (created once).
pub(crate) fn image_fd(image: Image) -> Result<RawFd> {
    static GUEST: OnceLock<std::result::Result<OwnedFd, String>> = OnceLock::new();
    #[cfg(test)]
    static PROBE: OnceLock<std::result::Result<OwnedFd, String>> = OnceLock::new();
    let (slot, name, bytes) = match image {
        Image::Guest => (&GUEST, "cell-guest", GUEST_IMAGE),
        #[cfg(test)]
        Image::Probe => (&PROBE, "cell-probe", PROBE_IMAGE),
    };
    slot.get_or_init(|| sealed_memfd(name, bytes).map_err(|e| e.to_string()))
        .as_ref()
        .map(|f| f.as_raw_fd())
        .map_err(|e| host("creating the guest image memfd")(io::Error::other(e.clone())))
}
