//! `kv`: a persistent key-value store per cell or per tenant, on `redb` (an embedded, crash-safe
//! B-tree store). Values are any ABI value, stored in the ABI's own postcard encoding.

use crate::capability::{Call, Capability, Payload};
use crate::error::{CapabilityError, ConfigError};
use crate::rules::{Namespace, Rule, RuleKind};
use abi::Value;
use redb::{Database, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// (namespace, key) → encoded value.
const TABLE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// File name of the store inside the kv directory.
pub const KV_FILE: &str = "kv.redb";
/// Value size cap (encoded) when the grant sets no `max_bytes` (64 KiB).
pub const DEFAULT_MAX_VALUE: u64 = 64 << 10;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Most keys one `list` returns.
pub const MAX_LIST_KEYS: i64 = 1000;

/// `get`, `put`, `delete`, `list`.
pub struct Kv {
    db: Option<Arc<Database>>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("configured", &self.db.is_some())
            .finish()
    }
}

fn db_err(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::failed(format!("kv store: {e}"))
}

impl Kv {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Kv, ConfigError> {
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
            what: format!("cannot create kv directory {}", dir.display()),
            source,
        })?;
        let path = dir.join(KV_FILE);
        let db = Database::create(&path).map_err(|e| {
            ConfigError::Broker(format!("cannot open kv store {}: {e}", path.display()))
        })?;
        Ok(Kv {
            db: Some(Arc::new(db)),
        })
    }

    /// A `kv` with no store: every `kv` rule is refused at spawn, saying why.
    pub fn unconfigured() -> Kv {
        Kv { db: None }
    }

    fn namespace(call: &Call) -> String {
        match (call.rule.namespace, &call.rule.tenant) {
            (Some(Namespace::Tenant), Some(tenant)) => format!("tenant:{tenant}"),
            _ => format!("cell:{}", call.cell),
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
        if kind == RuleKind::Grant && self.db.is_none() {
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
        if rule.max_bytes == Some(0) {
            return Err("`max_bytes` must be positive".into());
        }
        Ok(())
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| CapabilityError::failed("kv store not configured"))?;
        let ns = Self::namespace(call);
        let p = Payload::new(&call.payload, "kv")?;
        match call.action.as_str() {
            "get" => {
                p.only(&["key"])?;
                let key = p.str("key")?;
                check_key(key)?;
                let txn = db.begin_read().map_err(db_err)?;
                let table = match txn.open_table(TABLE) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Value::Unit),
                    Err(e) => return Err(db_err(e)),
                };
                match table.get((ns.as_str(), key)).map_err(db_err)? {
                    None => Ok(Value::Unit),
                    Some(bytes) => postcard::from_bytes::<Value>(bytes.value())
                        .map_err(|e| db_err(format!("stored value of `{key}` is corrupt: {e}"))),
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
                let txn = db.begin_write().map_err(db_err)?;
                {
                    let mut table = txn.open_table(TABLE).map_err(db_err)?;
                    table
                        .insert((ns.as_str(), key), encoded.as_slice())
                        .map_err(db_err)?;
                }
                txn.commit().map_err(db_err)?;
                Ok(Value::Unit)
            }
            "delete" => {
                p.only(&["key"])?;
                let key = p.str("key")?;
                check_key(key)?;
                let txn = db.begin_write().map_err(db_err)?;
                let existed = {
                    let mut table = txn.open_table(TABLE).map_err(db_err)?;
                    table.remove((ns.as_str(), key)).map_err(db_err)?.is_some()
                };
                txn.commit().map_err(db_err)?;
                Ok(Value::Bool(existed))
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
                let txn = db.begin_read().map_err(db_err)?;
                let table = match txn.open_table(TABLE) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Value::List(vec![])),
                    Err(e) => return Err(db_err(e)),
                };
                let mut keys = Vec::new();
                for entry in table.range((ns.as_str(), prefix)..).map_err(db_err)? {
                    let (k, _) = entry.map_err(db_err)?;
                    let (entry_ns, key) = k.value();
                    if entry_ns != ns || !key.starts_with(prefix) || keys.len() as i64 >= limit {
                        break;
                    }
                    keys.push(Value::Str(key.to_string()));
                }
                Ok(Value::List(keys))
            }
        }
    }
}
