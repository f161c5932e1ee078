//! Policies: what a cell may do and use, loaded from TOML. Unknown keys are errors — a misspelt
//! limit must never silently be no limit.
//!
//! ```toml
//! backend = "subinterp"          # default backend for `cell run`
//! modules = ["math", "json"]     # host modules scripts may import and call
//!
//! [limits]
//! max_operations = 10_000_000    # per exec/call
//! wall_time_ms = 5_000           # per exec/call; past it the cell is killed
//! memory_mib = 64
//!
//! [channel]
//! max_frame_bytes = 1_048_576
//! max_queued_events = 10_000
//!
//! [confinement]
//! require = ["seccomp"]          # refuse to spawn unless these layers are active
//!
//! [[grants]]                     # broker capabilities (see CAPABILITIES.md); deny by default
//! capability = "fs"
//! actions = ["read", "list"]
//! roots = ["/srv/data"]
//! access = "read"
//!
//! [[denies]]                     # a matching deny wins over any grant
//! capability = "fs"
//! actions = ["*"]
//! roots = ["/srv/data/private"]
//! ```

use crate::shown::shown;
use abi::backend::{Resources, SpawnSpec};
use abi::wire::ABSOLUTE_MAX_FRAME_LEN;
use abi::{EngineLimits, Hello};
use broker::{MAX_FILE_BYTES, read_text};
pub use host::Channel;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The least `limits.memory_mib` a policy may set: the process backend's floor and the smallest
/// microVM, so that no backend runs a cell another refuses to spawn.
pub const MIN_MEMORY_MIB: u64 = 8;

/// Everything a cell is allowed, in one place.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Backend used when the caller names none.
    pub backend: Option<String>,
    /// Host-provided modules the cell may import and call.
    pub modules: Vec<String>,
    /// Engine, time and resource limits.
    pub limits: Limits,
    /// Bounds on the channel between the cell and the host.
    pub channel: Channel,
    /// Confinement layers the cell requires.
    pub confinement: Confinement,
    /// Capabilities granted to the cell (`[[grants]]`); nothing is granted by default.
    pub grants: Vec<broker::Rule>,
    /// Requests refused whatever the grants say (`[[denies]]`).
    pub denies: Vec<broker::Rule>,
}

/// Limits on one cell. Engine limits apply per exec/call; the rest to the cell's whole life.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Operations one exec/call may run (0 = unlimited).
    pub max_operations: u64,
    /// Deepest nesting of function calls; at most `MAX_CALL_DEPTH` of the runtime.
    pub max_call_depth: u32,
    /// Deepest expression nesting the parser accepts; at most `MAX_EXPR_DEPTH` of the runtime.
    pub max_expr_depth: u32,
    /// Longest string, in bytes (0 = unlimited).
    pub max_string_len: u32,
    /// Most elements in one array, or bytes in one BLOB (0 = unlimited).
    pub max_array_len: u32,
    /// Most entries in one map (0 = unlimited).
    pub max_map_len: u32,
    /// Wall time of one exec/call, in milliseconds (0 = none). Past it the cell is killed.
    pub wall_time_ms: u64,
    /// Memory of the cell (process and microvm backends), in MiB.
    pub memory_mib: u64,
    /// CPU time over the cell's life (process backend), in milliseconds (0 = none).
    pub cpu_time_ms: u64,
    /// Processes or threads the cell may have (process backend).
    pub max_processes: u32,
    /// Open files (process backend).
    pub max_open_files: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let engine = EngineLimits::default();
        let resources = Resources::default();
        Limits {
            max_operations: engine.max_operations,
            max_call_depth: engine.max_call_depth,
            max_expr_depth: engine.max_expr_depth,
            max_string_len: engine.max_string_len,
            max_array_len: engine.max_array_len,
            max_map_len: engine.max_map_len,
            wall_time_ms: 10_000,
            memory_mib: resources.memory_bytes >> 20,
            cpu_time_ms: resources.cpu_time_ms,
            max_processes: resources.max_processes,
            max_open_files: resources.max_open_files,
        }
    }
}

/// Confinement layers the cell requires (fail closed).
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Confinement {
    /// Layer names (`seccomp`, `landlock`, `kvm`, ...); a backend that cannot provide one refuses
    /// to spawn.
    pub require: Vec<String>,
}

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy is not valid TOML for a policy (an unknown field, a wrong type).
    #[error("invalid policy: {0}")]
    Parse(#[from] toml::de::Error),
    /// A field's value is out of range.
    #[error("invalid policy: `{field}` {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The grants or denies do not check against the broker's capabilities.
    #[error("invalid policy: {0}")]
    Grants(#[from] broker::ConfigError),
}

impl Policy {
    /// Parses and validates a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let text = read_text(path, MAX_FILE_BYTES).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::from_toml(&text)
    }

    /// Checks values a type cannot express.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field, reason: &str| {
            Err(PolicyError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        let c = &self.channel;
        if c.max_frame_bytes < 256 || c.max_frame_bytes > ABSOLUTE_MAX_FRAME_LEN {
            return invalid(
                "channel.max_frame_bytes",
                &format!("must be between 256 and {ABSOLUTE_MAX_FRAME_LEN}"),
            );
        }
        if c.max_frame_memory < c.max_frame_bytes as usize {
            // Less would stop a cell for a frame the channel accepts (a string of the frame's
            // size alone takes that much once decoded).
            return invalid(
                "channel.max_frame_memory",
                &format!("must be at least max_frame_bytes ({})", c.max_frame_bytes),
            );
        }
        if c.max_queued_events == 0 || c.max_queued_bytes == 0 {
            return invalid(
                "channel.max_queued_events",
                "and max_queued_bytes must be positive",
            );
        }
        let l = &self.limits;
        // Depths the engine's stack cannot hold on every backend (runtime::limits).
        if let Err(e) = runtime::limits::check(&self.engine_limits()) {
            let field = match e.field() {
                "max_call_depth" => "limits.max_call_depth",
                _ => "limits.max_expr_depth",
            };
            return Err(PolicyError::Invalid {
                field,
                reason: match e {
                    runtime::limits::LimitError::AboveBound { bound, .. } => format!(
                        "must be at most {bound}, the depth the engine's stack holds on every backend"
                    ),
                    _ => "must be positive".into(),
                },
            });
        }
        if l.memory_mib < MIN_MEMORY_MIB || l.memory_mib > 1 << 20 {
            return invalid(
                "limits.memory_mib",
                "must be between 8 and 1048576 (8 MiB is the least a cell runs in on every \
                 backend: the process backend's floor and the smallest microVM)",
            );
        }
        if l.max_processes == 0 || l.max_open_files < 3 {
            return invalid(
                "limits.max_processes",
                "must be positive and max_open_files at least 3",
            );
        }
        for (i, m) in self.modules.iter().enumerate() {
            // A name the runtime lacks is refused at the handshake, on every backend alike (the
            // conformance suite's `unknown_module_refused`).
            if m.is_empty()
                || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || self.modules[..i].contains(m)
            {
                return invalid(
                    "modules",
                    &format!("has an invalid or repeated entry `{}`", shown(m)),
                );
            }
        }
        // Grants: everything that does not depend on the supervisor's configuration (unknown
        // actions and fields of built-in capabilities, ranges); the rest is checked at spawn.
        broker::Broker::builder()
            .build()?
            .check_shape(&self.rules())?;
        Ok(())
    }

    /// The grants and denies, for the broker.
    pub fn rules(&self) -> broker::Rules {
        broker::Rules {
            grants: self.grants.clone(),
            denies: self.denies.clone(),
        }
    }

    /// The wall-time limit of one exec/call, `None` when `wall_time_ms` is 0.
    pub fn wall_time(&self) -> Option<Duration> {
        (self.limits.wall_time_ms > 0).then(|| Duration::from_millis(self.limits.wall_time_ms))
    }

    /// The engine limits sent to the guest in the handshake.
    pub fn engine_limits(&self) -> EngineLimits {
        let l = &self.limits;
        EngineLimits {
            max_operations: l.max_operations,
            max_call_depth: l.max_call_depth,
            max_expr_depth: l.max_expr_depth,
            max_string_len: l.max_string_len,
            max_array_len: l.max_array_len,
            max_map_len: l.max_map_len,
        }
    }

    /// What a backend needs to spawn a cell named `name` under this policy.
    pub fn spawn_spec(&self, name: &str) -> SpawnSpec {
        let l = &self.limits;
        SpawnSpec {
            hello: Hello::new(name, self.engine_limits(), self.modules.clone()),
            resources: Resources {
                memory_bytes: l.memory_mib << 20,
                cpu_time_ms: l.cpu_time_ms,
                max_processes: l.max_processes,
                max_open_files: l.max_open_files,
            },
            max_frame_len: self.channel.max_frame_bytes,
            required_layers: self.confinement.require.clone(),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backend: None,
            modules: vec!["math".into(), "text".into(), "json".into()],
            limits: Limits::default(),
            channel: Channel::default(),
            confinement: Confinement::default(),
            grants: Vec::new(),
            denies: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_policy_parses() {
        let p = Policy::from_toml(
            r#"
            backend = "subinterp"
            modules = ["math"]
            [limits]
            max_operations = 1000
            wall_time_ms = 50
            [channel]
            max_queued_events = 3
            [confinement]
            require = ["seccomp"]
            "#,
        )
        .unwrap();
        assert_eq!(p.limits.max_operations, 1000);
        assert_eq!(p.channel.max_queued_events, 3);
        assert_eq!(p.spawn_spec("x").required_layers, ["seccomp"]);
        assert_eq!(p.spawn_spec("x").hello.limits.max_operations, 1000);
        assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        for (text, key) in [
            ("max_operatons = 5", "max_operatons"),
            ("[limits]\nmax_operatons = 5", "max_operatons"),
            ("[channel]\nmax_frame = 5", "max_frame"),
            ("[sandbox]\nx = 1", "sandbox"),
        ] {
            let err = Policy::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn grants_parse() {
        let p = Policy::from_toml(
            r#"
            [[grants]]
            capability = "clock"
            actions = ["wall"]
            [[grants]]
            capability = "http"
            actions = ["get"]
            origins = ["http://127.0.0.1:8080"]
            quota = { requests = 10, window_ms = 1000 }
            [[denies]]
            capability = "fs"
            actions = ["*"]
            roots = ["/srv/data/private"]
            "#,
        )
        .unwrap();
        assert_eq!(p.grants.len(), 2);
        assert_eq!(p.grants[1].origins, ["http://127.0.0.1:8080"]);
        assert_eq!(p.denies[0].capability, "fs");
        assert_eq!(p.rules().grants, p.grants);
    }

    #[test]
    fn invalid_grants_are_refused_with_clear_errors() {
        for (text, needle) in [
            // Unknown keys in a grant, a quota, or a misspelt table name.
            (
                "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nrootz = [\"/a\"]",
                "rootz",
            ),
            ("[[grant]]\ncapability = \"fs\"", "grant"),
            (
                "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nquota = { rqsts = 1 }",
                "rqsts",
            ),
            ("[[grants]]\nactions = [\"wall\"]", "capability"),
            (
                "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\naccess = \"all\"",
                "all",
            ),
            // Valid TOML, invalid grants.
            (
                "[[grants]]\ncapability = \"clock\"\nactions = [\"sundial\"]",
                "sundial",
            ),
            (
                "[[grants]]\ncapability = \"clock\"\nactions = []",
                "actions",
            ),
            (
                "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\norigins = [\"http://a\"]",
                "`origins` does not apply to capability `fs`",
            ),
            (
                "[[denies]]\ncapability = \"http\"\nactions = [\"get\"]\nquota = { requests = 1 }",
                "denies[0]",
            ),
            (
                "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]\norigins = [\"http://a/path\"]",
                "path",
            ),
        ] {
            let err = Policy::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}\n => {err}");
            assert!(err.starts_with("invalid policy"), "{err}");
        }
    }

    #[test]
    fn depth_limits_above_what_the_stack_holds_are_refused() {
        use runtime::limits::{MAX_CALL_DEPTH, MAX_EXPR_DEPTH};
        let at = format!(
            "[limits]\nmax_call_depth = {MAX_CALL_DEPTH}\nmax_expr_depth = {MAX_EXPR_DEPTH}"
        );
        assert!(Policy::from_toml(&at).is_ok(), "{at}");
        for (text, field) in [
            (
                format!("[limits]\nmax_call_depth = {}", MAX_CALL_DEPTH + 1),
                "limits.max_call_depth",
            ),
            (
                format!("[limits]\nmax_expr_depth = {}", MAX_EXPR_DEPTH + 1),
                "limits.max_expr_depth",
            ),
            (
                "[limits]\nmax_call_depth = 0".into(),
                "limits.max_call_depth",
            ),
        ] {
            match Policy::from_toml(&text) {
                Err(PolicyError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field, "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let err = Policy::from_toml("[limits]\nmax_call_depth = 100000")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("at most {MAX_CALL_DEPTH}")), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(matches!(
            Policy::from_toml("[limits]\nmax_operations = -1"),
            Err(PolicyError::Parse(_))
        ));
        assert!(matches!(
            Policy::from_toml("[channel]\nmax_frame_bytes = 1"),
            Err(PolicyError::Invalid { .. })
        ));
        assert!(matches!(
            Policy::from_toml("[channel]\nmax_frame_bytes = 4294967295"),
            Err(PolicyError::Invalid { .. })
        ));
        assert!(matches!(
            Policy::from_toml("modules = [\"a b\"]"),
            Err(PolicyError::Invalid {
                field: "modules",
                ..
            })
        ));
        assert!(matches!(
            Policy::from_toml("modules = [\"math\", \"math\"]"),
            Err(PolicyError::Invalid { .. })
        ));
        let long = format!("{} x", "x".repeat(100_000));
        let err = Policy::from_toml(&format!("modules = [\"{long}\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.len() < 300,
            "the entry is quoted whole: {} bytes",
            err.len()
        );
        // A frame the channel accepts must fit the frame memory bound.
        assert!(matches!(
            Policy::from_toml("[channel]\nmax_frame_memory = 0"),
            Err(PolicyError::Invalid {
                field: "channel.max_frame_memory",
                ..
            })
        ));
        assert!(
            Policy::from_toml("[channel]\nmax_frame_bytes = 4096\nmax_frame_memory = 4096").is_ok()
        );
        for low in [0, 1, 7] {
            assert!(matches!(
                Policy::from_toml(&format!("[limits]\nmemory_mib = {low}")),
                Err(PolicyError::Invalid { .. })
            ));
        }
        assert!(Policy::from_toml("[limits]\nmemory_mib = 8").is_ok());
        assert!(matches!(
            Policy::load("/nonexistent/policy.toml"),
            Err(PolicyError::Read { .. })
        ));
    }
}
