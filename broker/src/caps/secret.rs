//! `secret`: named secrets from the supervisor's configuration, readable only when a grant
//! names them.

use crate::capability::{Call, Capability, Payload};
use crate::error::{CapabilityError, ConfigError};
use crate::rules::{Rule, RuleKind};
use abi::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Secret values by name. `Debug` never prints a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the secret `name`.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    /// The names of the secrets held (never their values).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Parses a TOML table of string values: `db_password = "..."`.
    pub fn from_toml(text: &str) -> Result<Secrets, ConfigError> {
        let values: BTreeMap<String, String> =
            toml::from_str(text).map_err(|e| ConfigError::Broker(format!("secrets: {e}")))?;
        Ok(Secrets { values })
    }

    /// Reads a secrets file (see [`Secrets::from_toml`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Secrets, ConfigError> {
        let path = path.as_ref();
        let text =
            crate::read_text(path, crate::MAX_FILE_BYTES).map_err(|source| ConfigError::Io {
                what: format!("cannot read secrets file {}", path.display()),
                source,
            })?;
        Secrets::from_toml(&text)
    }
}

/// `read {name}` → Str.
#[derive(Debug)]
pub struct SecretStore {
    secrets: Secrets,
}

impl SecretStore {
    /// The `secret` capability, reading from `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        SecretStore { secrets }
    }
}

impl Capability for SecretStore {
    fn name(&self) -> &str {
        "secret"
    }

    fn actions(&self) -> &[&str] {
        &["read"]
    }

    fn scope_fields(&self) -> &[&str] {
        &["names"]
    }

    fn check_shape(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        if kind == RuleKind::Grant && rule.names.is_empty() {
            return Err("a `secret` grant must list the secret `names` it exposes".into());
        }
        Ok(())
    }

    fn check_rule(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        if kind == RuleKind::Grant {
            for name in &rule.names {
                if !self.secrets.values.contains_key(name) {
                    return Err(format!(
                        "secret `{name}` is not in the supervisor's secrets configuration"
                    ));
                }
            }
        }
        Ok(())
    }

    fn covers(
        &self,
        rule: &Rule,
        _: RuleKind,
        _: &str,
        payload: &Value,
    ) -> Result<bool, CapabilityError> {
        let p = Payload::new(payload, "secret.read")?;
        p.only(&["name"])?;
        let name = p.str("name")?;
        Ok(rule.names.is_empty() || rule.names.iter().any(|n| n == name))
    }

    fn is_quick(&self) -> bool {
        true
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        let name = Payload::new(&call.payload, "secret.read")?.str("name")?;
        self.secrets
            .values
            .get(name)
            .map(|v| Value::Str(v.clone()))
            .ok_or_else(|| CapabilityError::NotFound(format!("secret `{name}` is not configured")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_file_that_does_not_end_is_refused_not_read_until_memory_runs_out() {
        match Secrets::load("/dev/zero") {
            Err(ConfigError::Io { what, source }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge, "{source}");
                assert!(what.contains("/dev/zero"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "db = \"s3cret\"\n").unwrap();
        let secrets = Secrets::load(&path).unwrap();
        assert_eq!(secrets.names().collect::<Vec<_>>(), ["db"]);
    }
}
