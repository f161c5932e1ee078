//! The capability trait: how a built-in or third-party capability plugs into the broker.
//!
//! A capability is a name, a fixed set of actions and a scope it reads from rules (`roots`,
//! `origins`, `names`, `params`, ...). The broker does everything else once, for all of them:
//! it checks rules at spawn, decides each request host-side (deny by default, denies win),
//! enforces quotas and timeouts, turns panics into errors and writes the audit record. Because
//! requests travel as `request(capability, action, payload)` in the frozen ABI, a registered
//! capability is usable from every backend with no change anywhere else.

use crate::error::CapabilityError;
use crate::rules::{Rule, RuleKind};
use abi::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// A capability behind `request`. Implementations must be cheap to share across threads.
pub trait Capability: Send + Sync + 'static {
    /// The name rules and scripts use.
    fn name(&self) -> &str;

    /// Every action the capability has.
    fn actions(&self) -> &[&str];

    /// The rule fields (TOML keys) this capability reads; any other scope field set on one of
    /// its rules is refused by name.
    fn scope_fields(&self) -> &[&str] {
        &[]
    }

    /// Checks a rule's scope values beyond their types, without looking at the host or the
    /// supervisor's configuration (called when a policy is loaded, and again at spawn).
    fn check_shape(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        let _ = (rule, kind);
        Ok(())
    }

    /// Checks what depends on this host or supervisor (a root exists, a secret is configured);
    /// called once per rule at spawn, after [`Capability::check_shape`].
    fn check_rule(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        let _ = (rule, kind);
        Ok(())
    }

    /// Whether the request falls within `rule`'s scope. For a deny rule, scope fields left
    /// empty cover everything. Errors here are the payload's fault (wrong shape).
    fn covers(
        &self,
        rule: &Rule,
        kind: RuleKind,
        action: &str,
        payload: &Value,
    ) -> Result<bool, CapabilityError> {
        let _ = (rule, kind, action, payload);
        Ok(true)
    }

    /// Whether `execute` is quick and never blocks (then it runs on the caller's thread, with
    /// no thread hop). Blocking capabilities run on a worker the broker can abandon on timeout
    /// or kill.
    fn is_quick(&self) -> bool {
        false
    }

    /// Runs a request the broker allowed under `call.rule`.
    fn execute(&self, call: &Call) -> Result<Value, CapabilityError>;
}

/// One allowed request, as a capability sees it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The cell's name.
    pub cell: String,
    /// The backend the cell runs on.
    pub backend: String,
    /// The action asked for (one of [`Capability::actions`]).
    pub action: String,
    /// The request's argument, as the guest sent it.
    pub payload: Value,
    /// The grant that allowed the request.
    pub rule: Arc<Rule>,
    /// How long the request may take; capabilities with their own I/O timeouts use it.
    pub timeout: Duration,
    /// The deny rules naming this capability and action that [`Capability::covers`] did not
    /// settle. A capability that can only decide them on the object it opens (`fs`: the file a
    /// path resolves to) checks them there and fails with [`CapabilityError::Denied`].
    pub denies: Vec<PendingDeny>,
    /// The largest reply the cell takes, in bytes of data (the host's frame cap less the reply's
    /// framing); `None` when the caller set none. A capability reading data clips or refuses
    /// its read to it before allocating: see [`Call::read_limit`].
    pub max_reply_bytes: Option<u64>,
}

/// Largest `max_bytes` a grant may set (16 MiB): no request or reply frame is larger, so a
/// read, write, value or body past it could never cross to or from a cell.
pub const MAX_GRANT_BYTES: u64 = abi::wire::ABSOLUTE_MAX_FRAME_LEN as u64;

/// Checks a grant's `max_bytes`: positive and at most [`MAX_GRANT_BYTES`].
pub(crate) fn check_max_bytes(rule: &Rule) -> Result<(), String> {
    match rule.max_bytes {
        Some(0) => Err("`max_bytes` must be positive".into()),
        Some(n) if n > MAX_GRANT_BYTES => Err(format!(
            "`max_bytes` is {n}, over {MAX_GRANT_BYTES} (16 MiB, the largest frame a cell sends or takes)"
        )),
        _ => Ok(()),
    }
}

/// The most bytes one read may return, and which limit set it (for the refusal's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimit {
    /// The bytes allowed.
    pub max: u64,
    /// Set by the largest reply the cell takes, not by the grant.
    pub by_reply: bool,
}

impl ReadLimit {
    /// The refusal of a read of `what` over this limit: [`CapabilityError::TooLarge`] naming
    /// the grant's cap, or [`CapabilityError::ReplyTooLarge`] naming the reply's.
    pub fn exceeded(&self, what: String) -> CapabilityError {
        if self.by_reply {
            CapabilityError::ReplyTooLarge {
                what,
                max: self.max,
            }
        } else {
            CapabilityError::TooLarge(format!("{what}, the grant allows reads of {}", self.max))
        }
    }
}

impl Call {
    /// The most bytes a read may return: the grant's cap `grant_max`, clipped to
    /// [`Call::max_reply_bytes`].
    pub fn read_limit(&self, grant_max: u64) -> ReadLimit {
        match self.max_reply_bytes {
            Some(reply) if reply < grant_max => ReadLimit {
                max: reply,
                by_reply: true,
            },
            _ => ReadLimit {
                max: grant_max,
                by_reply: false,
            },
        }
    }
}

/// A deny rule left to the capability, with the label (`denies[i]`) its refusal names.
#[derive(Clone, Debug)]
pub struct PendingDeny {
    /// The rule's label (`denies[i]`).
    pub label: String,
    /// The deny rule itself.
    pub rule: Arc<Rule>,
}

/// Reading fields out of a payload, with errors that name the field.
pub struct Payload<'a> {
    map: Option<&'a Map>,
    what: &'a str,
}

impl<'a> Payload<'a> {
    /// A view of `payload`, which must be a map (or unit, which reads as an empty map).
    pub fn new(payload: &'a Value, what: &'a str) -> Result<Self, CapabilityError> {
        match payload {
            Value::Map(map) => Ok(Payload {
                map: Some(map),
                what,
            }),
            Value::Unit => Ok(Payload { map: None, what }),
            other => Err(CapabilityError::invalid(format!(
                "{what} expects a map payload, got {}",
                other.type_name()
            ))),
        }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key))
    }

    /// Refuses keys other than `allowed`, so a misspelt option is an error, not a default.
    pub fn only(&self, allowed: &[&str]) -> Result<(), CapabilityError> {
        if let Some(map) = self.map
            && let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str()))
        {
            return Err(CapabilityError::invalid(format!(
                "{} has no field `{k}` (fields: {})",
                self.what,
                allowed.join(", ")
            )));
        }
        Ok(())
    }

    /// The string at `key`; an error names the key if it is missing or not a string.
    pub fn str(&self, key: &str) -> Result<&'a str, CapabilityError> {
        match self.get(key) {
            Some(Value::Str(s)) => Ok(s),
            Some(other) => Err(self.wrong(key, "a string", other)),
            None => Err(self.missing(key)),
        }
    }

    /// The string at `key`, or `None` when it is missing or unit.
    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, CapabilityError> {
        match self.get(key) {
            None | Some(Value::Unit) => Ok(None),
            Some(_) => self.str(key).map(Some),
        }
    }

    /// The integer at `key`; an error names the key if it is missing or not an integer.
    pub fn int(&self, key: &str) -> Result<i64, CapabilityError> {
        match self.get(key) {
            Some(Value::Int(i)) => Ok(*i),
            Some(other) => Err(self.wrong(key, "an integer", other)),
            None => Err(self.missing(key)),
        }
    }

    /// The integer at `key`, or `None` when it is missing or unit.
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, CapabilityError> {
        match self.get(key) {
            None | Some(Value::Unit) => Ok(None),
            Some(_) => self.int(key).map(Some),
        }
    }

    /// Bytes, or a string taken as its UTF-8 bytes.
    pub fn bytes(&self, key: &str) -> Result<&'a [u8], CapabilityError> {
        match self.get(key) {
            Some(Value::Bytes(b)) => Ok(b),
            Some(Value::Str(s)) => Ok(s.as_bytes()),
            Some(other) => Err(self.wrong(key, "bytes or a string", other)),
            None => Err(self.missing(key)),
        }
    }

    fn missing(&self, key: &str) -> CapabilityError {
        CapabilityError::invalid(format!("{} needs the field `{key}`", self.what))
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> CapabilityError {
        CapabilityError::invalid(format!(
            "{}: `{key}` must be {expected}, got {}",
            self.what,
            got.type_name()
        ))
    }
}

/// Bytes of strings and byte strings in a value (map keys included): what byte quotas count.
pub fn value_bytes(value: &Value) -> u64 {
    match value {
        Value::Str(s) => s.len() as u64,
        Value::Bytes(b) => b.len() as u64,
        Value::List(items) => items.iter().map(value_bytes).sum(),
        Value::Map(map) => map
            .iter()
            .map(|(k, v)| k.len() as u64 + value_bytes(v))
            .sum(),
        _ => 0,
    }
}
