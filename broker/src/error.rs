//! Typed errors: configuration errors (refused before a cell runs) and capability errors (one
//! request fails; the cell and the supervisor carry on).

use abi::{CellError, ErrorCode};

/// Why a set of grant/deny rules (or the broker's own configuration) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A rule names a capability nobody registered.
    #[error("{rule}: unknown capability `{capability}` (known: {known})")]
    UnknownCapability {
        /// The rule's label (`grants[i]`/`denies[i]`).
        rule: String,
        /// The capability it names.
        capability: String,
        /// The capabilities registered, comma-separated.
        known: String,
    },
    /// A rule names an action the capability does not have.
    #[error("{rule}: capability `{capability}` has no action `{action}` (actions: {known})")]
    UnknownAction {
        /// The rule's label.
        rule: String,
        /// The capability it names.
        capability: String,
        /// The action it names.
        action: String,
        /// The capability's actions, comma-separated.
        known: String,
    },
    /// A rule sets a field that means nothing for its capability (e.g. `origins` on `fs`).
    #[error("{rule}: field `{field}` does not apply to capability `{capability}`")]
    FieldNotApplicable {
        /// The rule's label.
        rule: String,
        /// The rule's capability.
        capability: String,
        /// The field set.
        field: &'static str,
    },
    /// A rule's value is out of range or inconsistent.
    #[error("{rule}: {reason}")]
    Invalid {
        /// The rule's label and capability.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker's own configuration (kv directory, secrets file, audit log) is unusable.
    #[error("broker configuration: {0}")]
    Broker(String),
    /// An I/O error on a file the broker's configuration names.
    #[error("broker configuration: {what}: {source}")]
    Io {
        /// What the broker was doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one request failed after (or while) the broker decided on it. Converted to the
/// [`CellError`] the guest sees by [`CapabilityError::to_cell_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapabilityError {
    /// The payload has the wrong shape.
    #[error("invalid payload: {0}")]
    InvalidArgument(String),
    /// The request left the scope of the grant that allowed it (a path escaping its root, a
    /// redirect to another origin, ...).
    #[error("out of scope: {0}")]
    OutOfScope(String),
    /// A size cap of the grant was exceeded.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The data asked for is larger than the largest reply the cell takes (its channel's
    /// `max_frame_bytes` less the reply's framing): refused before it is read, with the code
    /// the host gives an over-cap reply.
    #[error(
        "too large: {what}, but a reply to this cell carries at most {max} bytes (its channel's max_frame_bytes less the reply's framing)"
    )]
    ReplyTooLarge {
        /// What was too large.
        what: String,
        /// The largest reply, in bytes of data.
        max: u64,
    },
    /// The thing asked for does not exist (a file, a key).
    #[error("not found: {0}")]
    NotFound(String),
    /// The capability failed (I/O error, connection refused, ...).
    #[error("{0}")]
    Failed(String),
    /// The capability ran past its time limit.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// A bound of the capability's own store or service was reached (kv keys or bytes); the
    /// request changed nothing.
    #[error("quota: {0}")]
    QuotaExceeded(String),
    /// A deny rule the capability settled on the object it opened (see [`crate::Call::denies`]):
    /// `rule` is that rule's label (`denies[i]`), which the audit record names.
    #[error("denied by rule `{rule}`: {reason}")]
    Denied {
        /// The deny rule's label (`denies[i]`).
        rule: String,
        /// What it refused.
        reason: String,
    },
}

impl CapabilityError {
    /// A [`CapabilityError::InvalidArgument`] with `msg`.
    pub fn invalid(msg: impl Into<String>) -> Self {
        CapabilityError::InvalidArgument(msg.into())
    }

    /// A [`CapabilityError::Failed`] with `msg`.
    pub fn failed(msg: impl Into<String>) -> Self {
        CapabilityError::Failed(msg.into())
    }

    /// The stable code the guest sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            CapabilityError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            CapabilityError::OutOfScope(_) | CapabilityError::Denied { .. } => ErrorCode::Denied,
            CapabilityError::TooLarge(_) => ErrorCode::LimitValue,
            CapabilityError::ReplyTooLarge { .. } => ErrorCode::LimitFrameSize,
            CapabilityError::QuotaExceeded(_) => ErrorCode::LimitQuota,
            CapabilityError::NotFound(_) => ErrorCode::NotFound,
            CapabilityError::Failed(_) => ErrorCode::CapabilityFailed,
            // Not `TimedOut`: that code is fatal to the cell, and a slow capability is not the
            // cell's fault. The cell keeps running and may retry.
            CapabilityError::TimedOut(_) => ErrorCode::CapabilityFailed,
        }
    }

    /// The error as it crosses to the guest, prefixed with the capability and action.
    pub fn to_cell_error(&self, capability: &str, action: &str) -> CellError {
        CellError::new(self.code(), format!("{capability}.{action}: {self}"))
    }
}
