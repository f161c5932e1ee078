//! Errors of the process backend.

use crate::layers::Layer;
use crate::step::Step;

/// Errors of the process backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy requires a layer this host (or this spawn) cannot provide.
    #[error("required confinement layer `{layer}` is not available: {reason}")]
    LayerUnavailable {
        /// The layer.
        layer: Layer,
        /// Why it is missing.
        reason: String,
    },
    /// A confinement step failed in the cell's process (before its first script).
    #[error(
        "confinement step `{}` failed in the cell process ({}): {source}",
        step.name(),
        step.describe()
    )]
    Confinement {
        /// The step.
        step: Step,
        /// The error of its system call, or the exit status that named it.
        #[source]
        source: std::io::Error,
    },
    /// The child died before reporting (killed, or the status pipe was garbled).
    #[error("cell child failed before exec: {0}")]
    ChildLost(String),
    /// Preparing the spawn on the host side failed.
    #[error("{what}: {source}")]
    Host {
        /// What the host was doing.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The fork server died or broke its protocol (it is replaced on the next spawn).
    #[error("fork server: {0}")]
    ForkServer(String),
    /// Invalid limits in the spawn specification.
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
}

pub(crate) fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Host { what, source }
}

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
