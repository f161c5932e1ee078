//! Errors of the process backend.

use crate::layers::Layer;

/// A step of the confinement sequence run in the child before the guest starts.
/// The numeric values travel over the spawn status pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u32)]
pub enum Step {
    ArrangeFds = 1,
    JoinCgroup,
    UnshareCgroupNamespace,
    JoinNetworkNamespace,
    OpenProc,
    MakeMountsPrivate,
    MountRoot,
    PivotRoot,
    DetachOldRoot,
    SetHostname,
    DropHostIds,
    UnshareUserNamespace,
    WriteIdMaps,
    DropCapabilities,
    NewSession,
    SetRlimits,
    NoNewPrivs,
    Landlock,
    ParentDeathSignal,
    CloseFds,
    Seccomp,
    Exec,
    DropBoundingSet,
}

impl Step {
    const ALL: [Step; 23] = [
        Step::ArrangeFds,
        Step::JoinCgroup,
        Step::UnshareCgroupNamespace,
        Step::JoinNetworkNamespace,
        Step::OpenProc,
        Step::MakeMountsPrivate,
        Step::MountRoot,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::SetHostname,
        Step::DropHostIds,
        Step::UnshareUserNamespace,
        Step::WriteIdMaps,
        Step::DropCapabilities,
        Step::NewSession,
        Step::SetRlimits,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::ParentDeathSignal,
        Step::CloseFds,
        Step::Seccomp,
        Step::Exec,
        Step::DropBoundingSet,
    ];

    pub(crate) fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == v)
    }
}

/// Errors of the process backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy requires a layer this host (or this spawn) cannot provide.
    #[error("required confinement layer `{layer}` is not available: {reason}")]
    LayerUnavailable { layer: Layer, reason: String },
    /// A confinement step failed in the child; the guest never ran.
    #[error("confinement step {step:?} failed in the cell child: {source}")]
    Confinement {
        step: Step,
        #[source]
        source: std::io::Error,
    },
    /// The child died before reporting (killed, or the status pipe was garbled).
    #[error("cell child failed before exec: {0}")]
    ChildLost(String),
    /// Preparing the spawn on the host side failed.
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
