//! The cell ABI: the single source of truth shared by the host and every guest.
//!
//! * [`op`] — the seven frozen operations and the descriptor that says what is (not) one;
//! * [`version`] — the ABI version and schema key, pinned by compile-time tripwires;
//! * [`error`] — stable numeric error codes and the error carried on the wire;
//! * [`value`] — the value model with explicit limits (alloc);
//! * [`memory`] — what a value holds in memory, estimated from its shape (alloc);
//! * [`frame`] — the frames in both directions (alloc);
//! * [`wire`] — postcard in a length-prefixed frame with a hard size cap (alloc);
//! * [`backend`] — the contract a backend implements, and the generic framed pipe (std).
//!
//! See `SPEC.md` next to this crate for the byte layout of every frame.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod error;
pub mod op;
pub mod version;

#[cfg(feature = "alloc")]
mod budget;
#[cfg(feature = "alloc")]
mod decode;

#[cfg(feature = "std")]
pub mod backend;
#[cfg(feature = "alloc")]
pub mod frame;
#[cfg(feature = "alloc")]
pub mod memory;
#[cfg(feature = "alloc")]
pub mod value;
#[cfg(feature = "alloc")]
pub mod wire;

pub use error::ErrorCode;
pub use op::Op;
pub use version::{ABI_VERSION, SCHEMA_KEY};

#[cfg(feature = "alloc")]
pub use error::CellError;
#[cfg(feature = "alloc")]
pub use frame::{
    EngineLimits, GuestFrame, HOST_MODULES, Hello, HostFrame, Level, MAX_METRIC_NAME_LEN, Ready,
};
#[cfg(feature = "alloc")]
pub use value::{Map, Value};
