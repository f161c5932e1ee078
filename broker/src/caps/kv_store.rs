//! The `kv` store on disk: one `redb` file shared by every supervisor pointed at the directory,
//! bounded per namespace and per store.
//!
//! redb holds an exclusive lock on its file for as long as a `Database` is open, so a store kept
//! open by one supervisor refuses every other ("Database already open"). The store is opened
//! under an exclusive `flock` on a separate lock file and given up when idle or when another
//! opener waits (see `kv_session`). Usage (keys and
//! bytes per namespace and for the whole store) lives in the store itself, updated in the same
//! transaction as the data, so every opener sees the same totals and a refused write changes
//! nothing.

use super::kv_session::Session;
use crate::error::{CapabilityError, ConfigError};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;

/// (namespace, key) → encoded value.
const TABLE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// namespace → (keys, bytes); [`STORE_ROW`] holds the whole store's totals.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("kv_usage");
/// The usage row of the whole store (no namespace is empty).
const STORE_ROW: &str = "";
/// File name of the store inside the kv directory.
pub const KV_FILE: &str = "kv.redb";

/// Bounds of a kv store. A write that would pass one is refused (`limit_quota`) before anything
/// is written. Bytes count keys plus encoded values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Most keys in one namespace (one cell's or one tenant's store).
    pub namespace_keys: u64,
    /// Most bytes in one namespace.
    pub namespace_bytes: u64,
    /// Most keys in the whole store, all namespaces together.
    pub store_keys: u64,
    /// Most bytes in the whole store.
    pub store_bytes: u64,
}

impl Default for KvLimits {
    /// 10,000 keys and 64 MiB per namespace; 1,000,000 keys and 1 GiB per store.
    fn default() -> Self {
        KvLimits {
            namespace_keys: 10_000,
            namespace_bytes: 64 << 20,
            store_keys: 1_000_000,
            store_bytes: 1 << 30,
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::failed(format!("kv store: {e}"))
}

/// The store in one directory.
#[derive(Debug)]
pub(crate) struct Store {
    session: Session,
    limits: KvLimits,
}

impl Store {
    /// Creates the directory and the store if needed, and counts usage of a store written
    /// before usage was kept.
    pub(crate) fn open(dir: &Path, limits: KvLimits) -> Result<Store, ConfigError> {
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
            what: format!("cannot create kv directory {}", dir.display()),
            source,
        })?;
        let store = Store {
            session: Session::new(dir, KV_FILE),
            limits,
        };
        store.with_db(count_usage).map_err(|e| {
            ConfigError::Broker(format!(
                "cannot open kv store {}: {e}",
                dir.join(KV_FILE).display()
            ))
        })?;
        Ok(store)
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, CapabilityError>,
    ) -> Result<T, CapabilityError> {
        self.session.with_db(f)
    }

    pub(crate) fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, CapabilityError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = match txn.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db_err(e)),
            };
            Ok(table
                .get((ns, key))
                .map_err(db_err)?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Stores `value` under `key`, or refuses with `QuotaExceeded` before writing anything.
    pub(crate) fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), CapabilityError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(TABLE).map_err(db_err)?;
                let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                let old = table
                    .get((ns, key))
                    .map_err(db_err)?
                    .map(|v| (key.len() + v.value().len()) as u64);
                let new = (key.len() + value.len()) as u64;
                let (add_keys, old_bytes) = match old {
                    Some(bytes) => (0, bytes),
                    None => (1, 0),
                };
                let row = |name: &str| -> Result<(u64, u64), CapabilityError> {
                    Ok(usage
                        .get(name)
                        .map_err(db_err)?
                        .map_or((0, 0), |v| v.value()))
                };
                let (ns_keys, ns_bytes) = row(ns)?;
                let (all_keys, all_bytes) = row(STORE_ROW)?;
                let ns_after = (ns_keys + add_keys, ns_bytes - old_bytes.min(ns_bytes) + new);
                let all_after = (
                    all_keys + add_keys,
                    all_bytes - old_bytes.min(all_bytes) + new,
                );
                self.check(ns, ns_after, all_after)?;
                table.insert((ns, key), value).map_err(db_err)?;
                usage.insert(ns, ns_after).map_err(db_err)?;
                usage.insert(STORE_ROW, all_after).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
    }

    /// Refuses usage past a limit: `ns_after` and `all_after` are (keys, bytes) after the write.
    fn check(
        &self,
        ns: &str,
        ns_after: (u64, u64),
        all_after: (u64, u64),
    ) -> Result<(), CapabilityError> {
        let l = &self.limits;
        let over = |what: &str, used: u64, max: u64, unit: &str| {
            CapabilityError::QuotaExceeded(format!(
                "kv: this write would bring {what} to {used} {unit}, past its limit of {max}"
            ))
        };
        let namespace = format!("namespace `{ns}`");
        if ns_after.0 > l.namespace_keys {
            return Err(over(&namespace, ns_after.0, l.namespace_keys, "keys"));
        }
        if ns_after.1 > l.namespace_bytes {
            return Err(over(&namespace, ns_after.1, l.namespace_bytes, "bytes"));
        }
        if all_after.0 > l.store_keys {
            return Err(over("the store", all_after.0, l.store_keys, "keys"));
        }
        if all_after.1 > l.store_bytes {
            return Err(over("the store", all_after.1, l.store_bytes, "bytes"));
        }
        Ok(())
    }

    /// Removes `key`; whether it existed.
    pub(crate) fn delete(&self, ns: &str, key: &str) -> Result<bool, CapabilityError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let existed = {
                let mut table = txn.open_table(TABLE).map_err(db_err)?;
                let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                let removed = table
                    .remove((ns, key))
                    .map_err(db_err)?
                    .map(|v| (key.len() + v.value().len()) as u64);
                if let Some(bytes) = removed {
                    for name in [ns, STORE_ROW] {
                        let (keys, total) = usage
                            .get(name)
                            .map_err(db_err)?
                            .map_or((0, 0), |v| v.value());
                        usage
                            .insert(name, (keys.saturating_sub(1), total.saturating_sub(bytes)))
                            .map_err(db_err)?;
                    }
                }
                removed.is_some()
            };
            txn.commit().map_err(db_err)?;
            Ok(existed)
        })
    }

    /// Keys of `ns` starting with `prefix`, sorted, at most `limit`.
    pub(crate) fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, CapabilityError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = match txn.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_err(e)),
            };
            let mut keys = Vec::new();
            for entry in table.range((ns, prefix)..).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (entry_ns, key) = k.value();
                if entry_ns != ns || !key.starts_with(prefix) || keys.len() >= limit {
                    break;
                }
                keys.push(key.to_string());
            }
            Ok(keys)
        })
    }

    /// Keys and bytes `ns` holds now.
    pub(crate) fn usage(&self, ns: &str) -> Result<(u64, u64), CapabilityError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let usage = match txn.open_table(USAGE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
                Err(e) => return Err(db_err(e)),
            };
            Ok(usage.get(ns).map_err(db_err)?.map_or((0, 0), |v| v.value()))
        })
    }
}

/// Fills the usage table from the data when it has no store row (a store from before usage
/// was kept, or a new one).
fn count_usage(db: &Database) -> Result<(), CapabilityError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let table = txn.open_table(TABLE).map_err(db_err)?;
        let mut usage = txn.open_table(USAGE).map_err(db_err)?;
        if usage.get(STORE_ROW).map_err(db_err)?.is_some() {
            return Ok(());
        }
        let mut rows: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let (ns, key) = k.value();
            let bytes = (key.len() + v.value().len()) as u64;
            for name in [ns, STORE_ROW] {
                let row = rows.entry(name.to_string()).or_default();
                row.0 += 1;
                row.1 += bytes;
            }
        }
        rows.entry(STORE_ROW.to_string()).or_default();
        for (name, row) in rows {
            usage.insert(name.as_str(), row).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}
