//! `kv`: a persistent key-value store per cell or per tenant, on `redb` (an embedded, crash-safe
//! B-tree store). Values are any ABI value, stored in the ABI's own postcard encoding.

use super::kv_store::{KvLimits, Store};
use crate::capability::{Call, Capability, Payload, check_max_bytes};
use crate::error::{CapabilityError, ConfigError};
use crate::rules::{Namespace, Rule, RuleKind};
use abi::Value;
use std::path::Path;

/// Value size cap (encoded) when the grant sets no `max_bytes` (64 KiB).
pub const DEFAULT_MAX_VALUE: u64 = 64 << 10;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Most keys one `list` returns.
pub const MAX_LIST_KEYS: i64 = 1000;

/// `get`, `put`, `delete`, `list`.
#[derive(Debug)]
pub struct Kv {
    store: Option<Store>,
}

fn db_err(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::failed(format!("kv store: {e}"))
}

impl Kv {
    /// Opens (creating) the store in `dir`, bounded by `limits`. Other supervisors may use the
    /// same directory at the same time.
    pub fn open(dir: &Path, limits: KvLimits) -> Result<Kv, ConfigError> {
        Ok(Kv {
            store: Some(Store::open(dir, limits)?),
        })
    }

    /// A `kv` with no store: every `kv` rule is refused at spawn, saying why.
    pub fn unconfigured() -> Kv {
        Kv { store: None }
    }

    fn namespace(call: &Call) -> String {
        match (call.rule.namespace, &call.rule.tenant) {
            (Some(Namespace::Tenant), Some(tenant)) => format!("tenant:{tenant}"),
            _ => format!("cell:{}", call.cell),
        }
    }

    /// Keys and bytes (keys plus encoded values) the namespace of `cell` (or of `tenant`, given
    /// as `tenant:NAME`) holds: for operators and tests.
    pub fn usage(&self, namespace: &str) -> Result<(u64, u64), CapabilityError> {
        match &self.store {
            Some(store) => store.usage(namespace),
            None => Ok((0, 0)),
        }
    }
}

fn check_key(key: &str) -> Result<(), CapabilityError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(CapabilityError::invalid(format!(
            "kv: keys have 1 to {MAX_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

impl Capability for Kv {
    fn name(&self) -> &str {
        "kv"
    }

    fn actions(&self) -> &[&str] {
        &["get", "put", "delete", "list"]
    }

    fn scope_fields(&self) -> &[&str] {
        &["namespace", "tenant", "max_bytes"]
    }

    fn check_rule(&self, _: &Rule, kind: RuleKind) -> Result<(), String> {
        if kind == RuleKind::Grant && self.store.is_none() {
            return Err(
                "the supervisor has no kv store configured (give it a kv directory, e.g. `cell --kv-dir DIR`)"
                    .into(),
            );
        }
        Ok(())
    }

    fn check_shape(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        if kind == RuleKind::Deny {
            if !rule.set_scope_fields().is_empty() {
                return Err(
                    "a `kv` deny rule has no scope: name only capability and actions".into(),
                );
            }
            return Ok(());
        }
        match (rule.namespace.unwrap_or(Namespace::Cell), &rule.tenant) {
            (Namespace::Cell, None) => {}
            (Namespace::Cell, Some(_)) => {
                return Err("`tenant` needs `namespace = \"tenant\"`".into());
            }
            (Namespace::Tenant, None) => {
                return Err("`namespace = \"tenant\"` needs a `tenant` name".into());
            }
            (Namespace::Tenant, Some(t)) => {
                if t.is_empty()
                    || t.len() > 64
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!(
                        "tenant `{t}` is invalid: use 1 to 64 letters, digits, `-`, `_` or `.`"
                    ));
                }
            }
        }
        check_max_bytes(rule)?;
        Ok(())
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| CapabilityError::failed("kv store not configured"))?;
        let ns = Self::namespace(call);
        let p = Payload::new(&call.payload, "kv")?;
        match call.action.as_str() {
            "get" => {
                p.only(&["key"])?;
                let key = p.str("key")?;
                check_key(key)?;
                match store.get(&ns, key)? {
                    None => Ok(Value::Unit),
                    Some(bytes) => {
                        // A value encodes to its stored bytes: one past the largest reply is
                        // refused before it is decoded.
                        if let Some(max) = call.max_reply_bytes
                            && bytes.len() as u64 > max
                        {
                            return Err(CapabilityError::ReplyTooLarge {
                                what: format!(
                                    "the value of `{key}` encodes to {} bytes",
                                    bytes.len()
                                ),
                                max,
                            });
                        }
                        postcard::from_bytes::<Value>(&bytes)
                            .map_err(|e| db_err(format!("stored value of `{key}` is corrupt: {e}")))
                    }
                }
            }
            "put" => {
                p.only(&["key", "value"])?;
                let key = p.str("key")?;
                check_key(key)?;
                let value = p.get("value").cloned().unwrap_or(Value::Unit);
                let encoded = postcard::to_allocvec(&value).map_err(db_err)?;
                let max = call.rule.max_bytes.unwrap_or(DEFAULT_MAX_VALUE);
                if encoded.len() as u64 > max {
                    return Err(CapabilityError::TooLarge(format!(
                        "kv value of {} bytes encoded, the grant allows {max}",
                        encoded.len()
                    )));
                }
                store.put(&ns, key, &encoded)?;
                Ok(Value::Unit)
            }
            "delete" => {
                p.only(&["key"])?;
                let key = p.str("key")?;
                check_key(key)?;
                Ok(Value::Bool(store.delete(&ns, key)?))
            }
            _ => {
                p.only(&["prefix", "limit"])?;
                let prefix = p.opt_str("prefix")?.unwrap_or("");
                let limit = p.opt_int("limit")?.unwrap_or(MAX_LIST_KEYS);
                if !(1..=MAX_LIST_KEYS).contains(&limit) {
                    return Err(CapabilityError::invalid(format!(
                        "kv.list: `limit` must be between 1 and {MAX_LIST_KEYS}"
                    )));
                }
                let keys = store.list(&ns, prefix, limit as usize)?;
                Ok(Value::List(keys.into_iter().map(Value::Str).collect()))
            }
        }
    }
}
