//! Tenants and their API keys. Keys are stored only as SHA-256 hashes; the key itself is shown
//! once, when `add_tenant` makes it.
//!
//! ```toml
//! [[tenant]]
//! name = "acme"
//! keys = ["sha256:9f86d081884c7d65..."]
//! backends = ["subinterp", "process"]   # allowed backends (empty: all)
//! default_policy = "small"               # used when a create names none (else the base)
//! [tenant.quotas]
//! live_cells = 100                       # cells held, dead ones until deleted or expired
//! creates_per_minute = 600
//! memory_mib = 4096                      # sum of the live cells' memory limits
//! cpu_time_ms = 600000                   # sum of the live cells' CPU-time limits
//! broker_requests_per_second = 50        # per grant of each cell (see docs/SERVICE.md)
//! execs_in_flight = 8                    # execs and calls running at once, all cells
//! [tenant.policies.small]                # extends the base policy (or `extends = "other"`)
//! limits = { memory_mib = 16 }
//! ```

use crate::inherit::{self, InheritError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use supervisor::Policy;
use toml::Table;

/// Why a tenants file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantsError {
    /// The tenants file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tenants file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file's path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a tenants file.
    #[error("invalid tenants file: {0}")]
    Parse(#[from] toml::de::Error),
    /// A tenant's entry is invalid (its name, a key, its default policy, ...).
    #[error("invalid tenants file: tenant `{tenant}`: {reason}")]
    Invalid {
        /// The tenant's name.
        tenant: String,
        /// What is wrong.
        reason: String,
    },
    /// A tenant's policy could not be resolved.
    #[error("invalid tenants file: tenant `{tenant}`: {source}")]
    Policy {
        /// The tenant's name.
        tenant: String,
        /// Why the policy is invalid.
        source: InheritError,
    },
}

/// A tenant's quotas; each is optional (none: unbounded).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Most cells held at once: live ones, and dead ones until deleted or expired.
    pub live_cells: Option<u64>,
    /// Most creates in any minute (a sliding window).
    pub creates_per_minute: Option<u64>,
    /// Sum of the live cells' memory limits, in MiB.
    pub memory_mib: Option<u64>,
    /// Sum of the live cells' CPU-time limits, in ms (a cell without one is refused).
    pub cpu_time_ms: Option<u64>,
    /// Caps every grant's request rate, per cell.
    pub broker_requests_per_second: Option<u64>,
    /// Most execs and calls (a create's `source` included) running at once over all the
    /// tenant's cells (the node's `execs_per_tenant` bounds it too).
    pub execs_in_flight: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    name: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    default_policy: Option<String>,
    #[serde(default)]
    quotas: Quotas,
    #[serde(default)]
    policies: BTreeMap<String, Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

/// One tenant, its policies resolved.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant's name.
    pub name: String,
    /// Allowed backends; empty allows every backend.
    pub backends: Vec<String>,
    /// The tenant's quotas.
    pub quotas: Quotas,
    /// Policy used when a create names none; else [`Tenant::base`].
    pub default_policy: Option<String>,
    /// The tenant's named policies, each resolved over the base policy.
    pub policies: BTreeMap<String, Policy>,
    /// The base policy (`--policy FILE`) every tenant policy extends.
    pub base: Policy,
}

impl Tenant {
    /// Whether cells of this tenant may run on `backend`.
    pub fn allows_backend(&self, backend: &str) -> bool {
        self.backends.is_empty() || self.backends.iter().any(|b| b == backend)
    }

    /// The policy a create gets: the one it names, else the tenant's default, else the base.
    pub fn policy(&self, name: Option<&str>) -> Option<Policy> {
        let mut policy = match name.or(self.default_policy.as_deref()) {
            Some(n) => self.policies.get(n)?.clone(),
            None => self.base.clone(),
        };
        if let Some(rate) = self.quotas.broker_requests_per_second {
            cap_grant_rates(&mut policy, rate);
        }
        Some(policy)
    }
}

/// Caps every grant's request rate at `rate` per second.
fn cap_grant_rates(policy: &mut Policy, rate: u64) {
    for grant in &mut policy.grants {
        match &mut grant.quota {
            None => {
                grant.quota = Some(
                    toml::from_str(&format!("requests = {rate}\nwindow_ms = 1000"))
                        .expect("a well-formed quota"),
                )
            }
            Some(q) => {
                let cap = if q.window_ms == 0 {
                    // A budget over the cell's life: the tenant's rate still bounds it per
                    // second only through the grant's own count; keep the smaller of the two.
                    rate
                } else {
                    rate.saturating_mul(q.window_ms).div_ceil(1000).max(1)
                };
                q.requests = Some(q.requests.map_or(cap, |r| r.min(cap)));
            }
        }
    }
}

/// Every tenant, by name and by key hash.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    /// Every tenant, by name.
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    /// Tenant name by the SHA-256 digest of a key: a request's key is hashed once and looked up
    /// by its digest, with no text formatting on the request path.
    by_key: HashMap<KeyDigest, String>,
    /// One tenant and no key: every request is that tenant's (a unix socket only).
    open: bool,
}

/// The SHA-256 digest of an API key.
type KeyDigest = [u8; 32];

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// `sha256:<hex>` of a key.
pub fn hash_key(key: &str) -> String {
    use std::fmt::Write;
    digest(key)
        .iter()
        .fold(String::from("sha256:"), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The digest a `sha256:<64 hex digits>` entry of a tenants file names, if it is one.
fn parse_hashed_key(entry: &str) -> Option<KeyDigest> {
    let hex = entry.strip_prefix("sha256:")?.as_bytes();
    // Checked first: `from_str_radix` would also take a sign.
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

impl Tenants {
    /// Parses a tenants file over `base` (the server's base policy as a TOML tree).
    pub fn from_toml(text: &str, base: &Table) -> Result<Tenants, TenantsError> {
        let file: File = toml::from_str(text)?;
        let base_policy = base_policy(base)?;
        let mut out = Tenants::default();
        for t in file.tenant {
            let invalid = |reason: String| TenantsError::Invalid {
                tenant: t.name.clone(),
                reason,
            };
            if t.name.is_empty() || out.tenants.contains_key(&t.name) {
                return Err(invalid("empty or repeated name".into()));
            }
            for key in &t.keys {
                let Some(hashed) = parse_hashed_key(key) else {
                    return Err(invalid(format!(
                        "key `{key}` is not `sha256:` and 64 hex digits"
                    )));
                };
                if let Some(other) = out.by_key.insert(hashed, t.name.clone()) {
                    return Err(invalid(format!("a key is also tenant `{other}`'s")));
                }
            }
            let policies =
                inherit::resolve_all(base, &t.policies).map_err(|source| TenantsError::Policy {
                    tenant: t.name.clone(),
                    source,
                })?;
            if let Some(d) = &t.default_policy
                && !policies.contains_key(d)
            {
                return Err(invalid(format!("default_policy `{d}` is not defined")));
            }
            out.tenants.insert(
                t.name.clone(),
                Arc::new(Tenant {
                    name: t.name,
                    backends: t.backends,
                    quotas: t.quotas,
                    default_policy: t.default_policy,
                    policies,
                    base: base_policy.clone(),
                }),
            );
        }
        Ok(out)
    }

    /// Reads and resolves the tenants file at `path`, its policies extending `base`.
    pub fn load(path: &Path, base: &Table) -> Result<Tenants, TenantsError> {
        let text = supervisor::read_text(path, supervisor::MAX_FILE_BYTES).map_err(|source| {
            TenantsError::Read {
                path: path.display().to_string(),
                source,
            }
        })?;
        Tenants::from_toml(&text, base)
    }

    /// One tenant allowed everything, reached with `key` (no key: unauthenticated, for a unix
    /// socket only).
    pub fn single(key: Option<&str>, base: &Table) -> Result<Tenants, TenantsError> {
        let mut out = Tenants::default();
        let name = "default".to_string();
        match key {
            Some(key) => drop(out.by_key.insert(digest(key), name.clone())),
            None => out.open = true,
        }
        out.tenants.insert(
            name.clone(),
            Arc::new(Tenant {
                name,
                backends: Vec::new(),
                quotas: Quotas::default(),
                default_policy: None,
                policies: BTreeMap::new(),
                base: base_policy(base)?,
            }),
        );
        Ok(out)
    }

    /// The tenant a presented key belongs to.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        self.by_key
            .get(&digest(key))
            .and_then(|n| self.tenants.get(n))
            .cloned()
    }

    /// The tenant of a request that presents no key: only a single tenant without a key.
    pub fn anonymous(&self) -> Option<Arc<Tenant>> {
        if self.open {
            self.tenants.values().next().cloned()
        } else {
            None
        }
    }
}

fn base_policy(base: &Table) -> Result<Policy, TenantsError> {
    Policy::from_toml(&toml::to_string(base).unwrap_or_default()).map_err(|e| {
        TenantsError::Invalid {
            tenant: "(base policy)".into(),
            reason: e.to_string(),
        }
    })
}

/// A fresh random key (`cell_` and 64 hex digits).
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cell_{hex}")
}

/// Adds a key for tenant `name` to the tenants file at `path` (created if missing; the tenant is
/// added if new, with `backends`), checks the result parses, and returns the key — the only time
/// it is ever shown.
pub fn add_tenant(path: &Path, name: &str, backends: &[String]) -> Result<String, TenantsError> {
    let text = match supervisor::read_text(path, supervisor::MAX_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(TenantsError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut doc: Table = toml::from_str(&text)?;
    let key = new_key();
    let list = doc
        .entry("tenant")
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    let Some(list) = list.as_array_mut() else {
        return Err(TenantsError::Invalid {
            tenant: name.into(),
            reason: "`tenant` must be an array of tables".into(),
        });
    };
    let existing = list
        .iter_mut()
        .filter_map(|t| t.as_table_mut())
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name));
    let hash = toml::Value::String(hash_key(&key));
    match existing {
        Some(t) => match t.entry("keys").or_insert(toml::Value::Array(Vec::new())) {
            toml::Value::Array(keys) => keys.push(hash),
            _ => {
                return Err(TenantsError::Invalid {
                    tenant: name.into(),
                    reason: "`keys` must be an array".into(),
                });
            }
        },
        None => {
            let mut t = Table::new();
            t.insert("name".into(), name.into());
            t.insert("keys".into(), toml::Value::Array(vec![hash]));
            t.insert(
                "backends".into(),
                toml::Value::Array(backends.iter().map(|b| b.as_str().into()).collect()),
            );
            list.push(toml::Value::Table(t));
        }
    }
    let out = toml::to_string(&doc).unwrap_or_default();
    Tenants::from_toml(&out, &Table::new())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &out)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TenantsError::Write {
            path: path.display().to_string(),
            source,
        })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let k1 = add_tenant(&path, "acme", &["subinterp".into()]).unwrap();
        let k2 = add_tenant(&path, "acme", &[]).unwrap();
        let k3 = add_tenant(&path, "other", &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for k in [&k1, &k2, &k3] {
            assert!(!text.contains(k.as_str()), "a key is stored in clear");
        }
        let t = Tenants::load(&path, &Table::new()).unwrap();
        assert_eq!(t.authenticate(&k1).unwrap().name, "acme");
        assert_eq!(t.authenticate(&k2).unwrap().name, "acme");
        assert_eq!(t.authenticate(&k3).unwrap().name, "other");
        assert!(t.authenticate("cell_wrong").is_none());
        let acme = &t.tenants["acme"];
        assert!(acme.allows_backend("subinterp") && !acme.allows_backend("process"));
        assert!(t.tenants["other"].allows_backend("process"));
    }

    #[test]
    fn hashed_keys_parse_only_as_64_hex_digits_in_either_case() {
        let key = "cell_example";
        let lower = hash_key(key);
        assert_eq!(lower.len(), "sha256:".len() + 64);
        let upper = format!("sha256:{}", lower["sha256:".len()..].to_ascii_uppercase());
        assert_eq!(parse_hashed_key(&lower), Some(digest(key)));
        assert_eq!(parse_hashed_key(&upper), Some(digest(key)));
        let signed = format!("sha256:+f{}", &lower["sha256:".len() + 2..]);
        for bad in [
            &lower["sha256:".len()..],
            &lower[..lower.len() - 1],
            &format!("{lower}0"),
            &signed,
            &lower.replace("sha256:", "sha1:"),
        ] {
            assert_eq!(parse_hashed_key(bad), None, "{bad}");
        }
        let file = format!("[[tenant]]\nname = \"a\"\nkeys = [\"{upper}\"]");
        let t = Tenants::from_toml(&file, &Table::new()).unwrap();
        assert_eq!(t.authenticate(key).unwrap().name, "a");
        assert!(t.authenticate("cell_other").is_none());
    }

    #[test]
    fn invalid_files_are_refused_naming_the_problem() {
        for (text, needle) in [
            ("[[tenant]]\nname = \"a\"\nkeyz = []", "keyz"),
            ("[[tenant]]\nname = \"a\"\nkeys = [\"plain\"]", "sha256"),
            (
                "[[tenant]]\nname = \"a\"\n[tenant.quotas]\nlive = 1",
                "live",
            ),
            (
                "[[tenant]]\nname = \"a\"\n[[tenant]]\nname = \"a\"",
                "repeated",
            ),
            (
                "[[tenant]]\nname = \"a\"\ndefault_policy = \"p\"",
                "default_policy",
            ),
            (
                "[[tenant]]\nname = \"a\"\n[tenant.policies.p]\nlimits = { memory_mib = 0 }",
                "memory_mib",
            ),
        ] {
            let err = Tenants::from_toml(text, &Table::new())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}\n => {err}");
        }
    }

    #[test]
    fn named_policies_extend_the_base_and_broker_rates_are_capped() {
        let base: Table = toml::from_str("[limits]\nmax_operations = 500").unwrap();
        let text = r#"
            [[tenant]]
            name = "a"
            default_policy = "p"
            [tenant.quotas]
            broker_requests_per_second = 5
            [tenant.policies.p]
            limits = { memory_mib = 8 }
            [[tenant.policies.p.grants]]
            capability = "clock"
            actions = ["wall"]
            [[tenant.policies.p.grants]]
            capability = "random"
            actions = ["bytes"]
            quota = { requests = 100, window_ms = 2000 }
        "#;
        let t = Tenants::from_toml(text, &base).unwrap();
        let p = t.tenants["a"].policy(None).unwrap();
        assert_eq!((p.limits.max_operations, p.limits.memory_mib), (500, 8));
        let q: Vec<_> = p.grants.iter().map(|g| g.quota.clone().unwrap()).collect();
        assert_eq!((q[0].requests, q[0].window_ms), (Some(5), 1000));
        assert_eq!((q[1].requests, q[1].window_ms), (Some(10), 2000));
        assert!(t.tenants["a"].policy(Some("nope")).is_none());
    }
}
