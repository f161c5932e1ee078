//! Grant and deny rules as they appear in a policy file.
//!
//! ```toml
//! [[grants]]
//! capability = "fs"
//! actions = ["read", "list", "stat"]
//! roots = ["/srv/data"]
//! access = "read"
//! max_bytes = 1_048_576
//! quota = { requests = 1000, bytes = 67_108_864, window_ms = 60_000 }
//!
//! [[grants]]
//! capability = "http"
//! actions = ["get"]
//! origins = ["http://127.0.0.1:8080"]
//! timeout_ms = 2_000
//!
//! [[denies]]
//! capability = "fs"
//! actions = ["*"]
//! roots = ["/srv/data/private"]
//! ```
//!
//! Every table refuses unknown keys. Fields a capability does not read (e.g. `origins` on `fs`)
//! are refused by name when the rules are checked against the broker's registry.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One `[[grants]]` or `[[denies]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The capability's registered name (`fs`, `http`, ...).
    pub capability: String,
    /// Actions this rule covers; `"*"` covers every action of the capability.
    pub actions: Vec<String>,
    /// `fs`: directories the rule covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<PathBuf>,
    /// `fs`: `read` (the default) or `read-write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// `http`: origins (`scheme://host[:port]`) the rule covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
    /// `secret`: names of the secrets the rule covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// `kv`: whose store, `cell` (the default: one namespace per cell name) or `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Namespace>,
    /// `kv` with `namespace = "tenant"`: the tenant whose namespace is shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Size cap of one read, write, value or body, in bytes (capability-specific default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Time limit of one request, in milliseconds (broker default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Rate and byte quota of requests allowed by this grant, per cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Scope parameters of third-party capabilities; built-ins refuse it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl Rule {
    /// A rule for `capability` covering `actions`, with no scope fields set.
    pub fn new(capability: &str, actions: &[&str]) -> Rule {
        Rule {
            capability: capability.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            roots: Vec::new(),
            access: None,
            origins: Vec::new(),
            names: Vec::new(),
            namespace: None,
            tenant: None,
            max_bytes: None,
            timeout_ms: None,
            quota: None,
            params: BTreeMap::new(),
        }
    }

    /// Whether the rule names `action` (or `*`).
    pub fn names_action(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action || a == "*")
    }

    /// Scope fields that are set, by their TOML key.
    pub fn set_scope_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.roots.is_empty() {
            out.push("roots");
        }
        if self.access.is_some() {
            out.push("access");
        }
        if !self.origins.is_empty() {
            out.push("origins");
        }
        if !self.names.is_empty() {
            out.push("names");
        }
        if self.namespace.is_some() {
            out.push("namespace");
        }
        if self.tenant.is_some() {
            out.push("tenant");
        }
        if self.max_bytes.is_some() {
            out.push("max_bytes");
        }
        if !self.params.is_empty() {
            out.push("params");
        }
        out
    }
}

/// `fs` access level of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// The reading actions only (the default).
    Read,
    /// The reading and the writing actions.
    ReadWrite,
}

/// Whose `kv` store a grant opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Namespace {
    /// The cell's own namespace (the default).
    Cell,
    /// The namespace of the tenant named in the rule, shared by its cells.
    Tenant,
}

/// Rate and byte quota of one grant, per cell. A quota that is used up refuses further requests
/// with `limit_quota` until its window rolls over (`window_ms = 0`: the cell's whole life).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Payload plus result bytes (strings and byte strings) per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Window length in milliseconds; 0 = the cell's life.
    #[serde(default)]
    pub window_ms: u64,
}

/// The grants and denies of one cell. Deny by default; a matching deny wins over any grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Rules that allow requests.
    #[serde(default)]
    pub grants: Vec<Rule>,
    /// Rules that refuse requests; a match wins over any grant.
    #[serde(default)]
    pub denies: Vec<Rule>,
}

impl Rules {
    /// Whether there are neither grants nor denies.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.denies.is_empty()
    }
}

/// Whether a rule grants or denies; part of its label in errors and audit records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// A `[[grants]]` entry.
    Grant,
    /// A `[[denies]]` entry.
    Deny,
}

impl RuleKind {
    /// `grants[3]` / `denies[0]`.
    pub fn label(self, index: usize) -> String {
        match self {
            RuleKind::Grant => format!("grants[{index}]"),
            RuleKind::Deny => format!("denies[{index}]"),
        }
    }
}
