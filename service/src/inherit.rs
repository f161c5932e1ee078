//! Policy inheritance: a tenant's named policy is a partial policy laid over its parent (another
//! named policy through `extends`, else the server's base policy).
//!
//! Merge rules, applied to the TOML trees before the result is parsed and validated as a whole:
//! * a table (`[limits]`, `[channel]`, `[confinement]`) merges key by key, recursively;
//! * a scalar or an array replaces the parent's, except
//! * `denies` and `confinement.require`, which are appended to the parent's: a child can add a
//!   deny or a required layer, never drop one its parent set;
//! * `extends` names the parent; it is not part of the policy itself. A cycle is refused.

use std::collections::BTreeMap;
use supervisor::Policy;
use toml::{Table, Value};

/// Keys whose arrays accumulate down the chain instead of being replaced.
const APPENDED: &[&[&str]] = &[&["denies"], &["confinement", "require"]];

/// Why a policy's `extends` chain could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum InheritError {
    /// A policy extends a name that is not defined.
    #[error("policy `{0}` is not defined")]
    Unknown(String),
    /// A policy extends itself, through the chain given.
    #[error("policy `{0}` extends itself through {1}")]
    Cycle(String, String),
    /// `extends` is not a string.
    #[error("`extends` of policy `{0}` must be a string")]
    BadExtends(String),
    /// The merged policy does not parse as a policy.
    #[error("policy `{name}` is invalid: {reason}")]
    Invalid {
        /// The policy's name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Lays `child` over `parent` by the rules above.
pub fn merge(parent: &Table, child: &Table) -> Table {
    merge_at(parent, child, &mut Vec::new())
}

fn merge_at(parent: &Table, child: &Table, path: &mut Vec<String>) -> Table {
    let mut out = parent.clone();
    for (key, value) in child {
        if key == "extends" && path.is_empty() {
            continue;
        }
        path.push(key.clone());
        let merged = match (out.get(key), value) {
            (Some(Value::Table(p)), Value::Table(c)) => Value::Table(merge_at(p, c, path)),
            (Some(Value::Array(p)), Value::Array(c)) if appended(path) => {
                let mut all = p.clone();
                all.extend(c.iter().cloned());
                Value::Array(all)
            }
            _ => value.clone(),
        };
        path.pop();
        out.insert(key.clone(), merged);
    }
    out
}

fn appended(path: &[String]) -> bool {
    APPENDED
        .iter()
        .any(|p| p.len() == path.len() && p.iter().zip(path).all(|(a, b)| a == b))
}

/// Resolves named policies over `base`, each to a validated [`Policy`].
pub fn resolve_all(
    base: &Table,
    named: &BTreeMap<String, Table>,
) -> Result<BTreeMap<String, Policy>, InheritError> {
    named
        .keys()
        .map(|name| {
            let table = resolve(base, named, name)?;
            let policy =
                Policy::from_toml(&toml::to_string(&table).unwrap_or_default()).map_err(|e| {
                    InheritError::Invalid {
                        name: name.clone(),
                        reason: e.to_string(),
                    }
                })?;
            Ok((name.clone(), policy))
        })
        .collect()
}

/// The merged tree of policy `name`: its chain of parents applied from the base down.
pub fn resolve(
    base: &Table,
    named: &BTreeMap<String, Table>,
    name: &str,
) -> Result<Table, InheritError> {
    let mut chain: Vec<&str> = Vec::new();
    let mut at = name;
    loop {
        if chain.contains(&at) {
            chain.push(at);
            return Err(InheritError::Cycle(name.into(), chain.join(" → ")));
        }
        let table = named
            .get(at)
            .ok_or_else(|| InheritError::Unknown(at.into()))?;
        chain.push(at);
        match table.get("extends") {
            None => break,
            Some(Value::String(parent)) => at = parent,
            Some(_) => return Err(InheritError::BadExtends(at.into())),
        }
    }
    Ok(chain
        .iter()
        .rev()
        .fold(base.clone(), |acc, n| merge(&acc, &named[*n])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn tables_merge_key_by_key_and_scalars_replace() {
        let base =
            t("modules = [\"math\", \"json\"]\n[limits]\nmax_operations = 100\nmemory_mib = 64");
        let child = t("modules = [\"math\"]\n[limits]\nmemory_mib = 16");
        let m = merge(&base, &child);
        assert_eq!(
            m,
            t("modules = [\"math\"]\n[limits]\nmax_operations = 100\nmemory_mib = 16")
        );
    }

    #[test]
    fn denies_and_required_layers_accumulate_grants_replace() {
        let base = t(r#"
            [confinement]
            require = ["seccomp"]
            [[grants]]
            capability = "clock"
            actions = ["wall"]
            [[denies]]
            capability = "fs"
            actions = ["*"]
            roots = ["/secret"]
        "#);
        let child = t(r#"
            [confinement]
            require = ["landlock"]
            [[grants]]
            capability = "random"
            actions = ["bytes"]
            [[denies]]
            capability = "fs"
            actions = ["*"]
            roots = ["/other"]
        "#);
        let m = merge(&base, &child);
        let req = m["confinement"]["require"].as_array().unwrap();
        assert_eq!(req.len(), 2, "{m}");
        assert_eq!(m["denies"].as_array().unwrap().len(), 2);
        let grants = m["grants"].as_array().unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0]["capability"].as_str(), Some("random"));
    }

    #[test]
    fn chains_resolve_from_the_base_down() {
        let base = t("[limits]\nmax_operations = 100\nmemory_mib = 64\nwall_time_ms = 5");
        let named: BTreeMap<String, Table> = [
            ("small".to_string(), t("[limits]\nmemory_mib = 16")),
            (
                "tiny".to_string(),
                t("extends = \"small\"\n[limits]\nmax_operations = 10"),
            ),
        ]
        .into();
        let all = resolve_all(&base, &named).unwrap();
        let tiny = &all["tiny"].limits;
        assert_eq!(
            (tiny.max_operations, tiny.memory_mib, tiny.wall_time_ms),
            (10, 16, 5)
        );
        assert_eq!(all["small"].limits.max_operations, 100);
    }

    #[test]
    fn cycles_unknown_parents_and_invalid_results_are_refused() {
        let base = Table::new();
        let cyc: BTreeMap<String, Table> = [
            ("a".to_string(), t("extends = \"b\"")),
            ("b".to_string(), t("extends = \"a\"")),
        ]
        .into();
        assert!(matches!(
            resolve(&base, &cyc, "a"),
            Err(InheritError::Cycle(..))
        ));
        let unknown: BTreeMap<String, Table> = [("a".to_string(), t("extends = \"zz\""))].into();
        assert_eq!(
            resolve(&base, &unknown, "a"),
            Err(InheritError::Unknown("zz".into()))
        );
        let bad: BTreeMap<String, Table> = [("a".to_string(), t("[limits]\nmemory_mb = 3"))].into();
        let err = resolve_all(&base, &bad).unwrap_err().to_string();
        assert!(err.contains("memory_mb"), "{err}");
    }
}
