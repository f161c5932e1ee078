//! Host-provided modules. A cell sees a module only if its policy lists it: then scripts may
//! `import "name" as n;` or call `name::f(...)`, and the host may `call("name.f", ...)`.

use crate::convert::{from_dynamic, to_dynamic};
use crate::errors::throw;
use crate::text::Text;
use abi::{CellError, ErrorCode, Value};
use alloc::{boxed::Box, format, string::String, vec::Vec};
use rhai::{Array, Dynamic, EvalAltResult, FLOAT, INT, Module, NativeCallContext, Shared};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Names of every module the host can provide.
pub const AVAILABLE: &[&str] = &["math", "text", "json"];

/// The module with this name, built once per process and shared by every cell.
pub fn get(name: &str) -> Option<Shared<Module>> {
    static MATH: spin::Once<Shared<Module>> = spin::Once::new();
    static TEXT: spin::Once<Shared<Module>> = spin::Once::new();
    static JSON: spin::Once<Shared<Module>> = spin::Once::new();
    match name {
        "math" => Some(MATH.call_once(|| ready("math", math())).clone()),
        "text" => Some(TEXT.call_once(|| ready("text", text())).clone()),
        "json" => Some(JSON.call_once(|| ready("json", json())).clone()),
        _ => None,
    }
}

/// Named and indexed once: an engine takes such a module as it is, where it would clone and
/// index one that is not, for every cell (a third of a cold spawn with two modules).
fn ready(name: &str, mut module: Module) -> Shared<Module> {
    module.set_id(name);
    module.build_index();
    module.into()
}

/// A set of modules of [`AVAILABLE`], by position: what a cell's policy allows. A bit set,
/// not a list of names, so a cell's spawn copies no names (its handshake has them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowed(u8);

const _: () = assert!(AVAILABLE.len() <= 8, "Allowed holds one bit per module");

impl Allowed {
    /// The bit of module `name`, if the host has it.
    fn bit(name: &str) -> Option<u8> {
        AVAILABLE.iter().position(|m| *m == name).map(|i| 1 << i)
    }

    /// Adds the module `name`; false (and nothing added) if the host has no such module.
    pub fn insert(&mut self, name: &str) -> bool {
        Self::bit(name).inspect(|bit| self.0 |= bit).is_some()
    }

    /// Whether `name` is allowed.
    pub fn contains(&self, name: &str) -> bool {
        Self::bit(name).is_some_and(|bit| self.0 & bit != 0)
    }
}

/// Resolves `import "name"` to a host module, only for the names the policy allows.
pub struct PolicyResolver {
    allowed: Allowed,
}

impl PolicyResolver {
    /// A resolver that allows exactly the modules in `allowed` (the handshake's `modules`).
    pub fn new(allowed: Allowed) -> Self {
        PolicyResolver { allowed }
    }
}

impl rhai::ModuleResolver for PolicyResolver {
    fn resolve(
        &self,
        _: &rhai::Engine,
        _: Option<&str>,
        path: &str,
        pos: rhai::Position,
    ) -> Res<Shared<Module>> {
        match get(path) {
            Some(module) if self.allowed.contains(path) => Ok(module),
            _ => Err(Box::new(EvalAltResult::ErrorModuleNotFound(
                path.into(),
                pos,
            ))),
        }
    }
}

fn numbers(items: &Array) -> Res<Vec<FLOAT>> {
    items
        .iter()
        .map(|d| {
            d.as_float()
                .or_else(|_| d.as_int().map(|i| i as FLOAT))
                .map_err(|t| {
                    throw(CellError::new(
                        ErrorCode::InvalidArgument,
                        format!("expected numbers, found {t}"),
                    ))
                })
        })
        .collect()
}

fn math() -> Module {
    let mut m = Module::new();
    m.set_native_fn("clamp", |x: INT, lo: INT, hi: INT| Ok(x.max(lo).min(hi)));
    m.set_native_fn("clamp", |x: FLOAT, lo: FLOAT, hi: FLOAT| {
        Ok(x.max(lo).min(hi))
    });
    m.set_native_fn("sqrt", |x: FLOAT| Ok(libm::sqrt(x)));
    m.set_native_fn("sqrt", |x: INT| Ok(libm::sqrt(x as FLOAT)));
    m.set_native_fn("sum", |items: Array| {
        Ok(numbers(&items)?.iter().sum::<FLOAT>())
    });
    m.set_native_fn("mean", |items: Array| {
        let xs = numbers(&items)?;
        if xs.is_empty() {
            return Err(throw(CellError::new(
                ErrorCode::InvalidArgument,
                "mean of an empty list",
            )));
        }
        Ok(xs.iter().sum::<FLOAT>() / xs.len() as FLOAT)
    });
    m.set_native_fn("max", |items: Array| {
        numbers(&items)?
            .into_iter()
            .reduce(FLOAT::max)
            .ok_or_else(|| {
                throw(CellError::new(
                    ErrorCode::InvalidArgument,
                    "max of an empty list",
                ))
            })
    });
    m.set_native_fn("min", |items: Array| {
        numbers(&items)?
            .into_iter()
            .reduce(FLOAT::min)
            .ok_or_else(|| {
                throw(CellError::new(
                    ErrorCode::InvalidArgument,
                    "min of an empty list",
                ))
            })
    });
    m.set_var("PI", core::f64::consts::PI);
    m.set_var("E", core::f64::consts::E);
    m
}

fn text() -> Module {
    let mut m = Module::new();
    m.set_native_fn("upper", |s: &str| Ok(s.to_uppercase()));
    m.set_native_fn("lower", |s: &str| Ok(s.to_lowercase()));
    m.set_native_fn("trim", |s: &str| Ok(String::from(s.trim())));
    m.set_native_fn("words", |s: &str| {
        Ok(s.split_whitespace()
            .map(|w| Dynamic::from(String::from(w)))
            .collect::<Array>())
    });
    m.set_native_fn(
        "join",
        |ctx: NativeCallContext, items: Array, sep: &str| -> Res<String> {
            // Stops past the string limit (the result's size check refuses it then) or when
            // the cell is stopped: see `Text`.
            let mut text = Text::new(&ctx, usize::MAX);
            for (i, item) in items.iter().enumerate() {
                if (i > 0 && !text.push(&sep)) || !text.push(item) {
                    break;
                }
            }
            Ok(text.into_string())
        },
    );
    m.set_native_fn("chars", |s: &str| Ok(s.chars().count() as INT));
    m.set_native_fn("starts_with", |s: &str, p: &str| Ok(s.starts_with(p)));
    m.set_native_fn("ends_with", |s: &str, p: &str| Ok(s.ends_with(p)));
    m
}

fn json() -> Module {
    let mut m = Module::new();
    m.set_native_fn("encode", |v: Dynamic| {
        let value = from_dynamic(v).map_err(throw)?;
        serde_json::to_string(&to_json(value)).map_err(|e| {
            throw(CellError::new(
                ErrorCode::InvalidArgument,
                format!("cannot encode as JSON: {e}"),
            ))
        })
    });
    m.set_native_fn("decode", |s: &str| {
        let json: serde_json::Value = serde_json::from_str(s).map_err(|e| {
            throw(CellError::new(
                ErrorCode::InvalidArgument,
                format!("invalid JSON: {e}"),
            ))
        })?;
        Ok(to_dynamic(from_json(json)))
    });
    m
}

/// ABI value → JSON: unit is null, bytes are an array of numbers.
pub fn to_json(value: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Unit => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::Int(i) => J::from(i),
        Value::Float(x) => serde_json::Number::from_f64(x)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Str(s) => J::String(s),
        Value::Bytes(b) => J::Array(b.into_iter().map(J::from).collect()),
        Value::List(items) => J::Array(items.into_iter().map(to_json).collect()),
        Value::Map(map) => J::Object(map.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
    }
}

/// JSON → ABI value: integers that fit i64 stay integers.
pub fn from_json(json: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Unit,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        J::String(s) => Value::Str(s),
        J::Array(items) => Value::List(items.into_iter().map(from_json).collect()),
        J::Object(map) => Value::Map(map.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_holds_exactly_the_modules_inserted() {
        let mut allowed = Allowed::default();
        assert!(AVAILABLE.iter().all(|m| !allowed.contains(m)));
        assert!(allowed.insert("json"));
        assert!(!allowed.insert("fs"), "no such module");
        assert!(allowed.contains("json"));
        assert!(!allowed.contains("math") && !allowed.contains("text"));
        assert!(!allowed.contains("fs") && !allowed.contains(""));
        for m in AVAILABLE {
            allowed.insert(m);
        }
        assert!(AVAILABLE.iter().all(|m| allowed.contains(m)));
    }
}
