//! The JSON rendering of values in transcripts: unit is `null`, bytes are `{"$bytes": "<hex>"}`,
//! non-finite floats are strings (the rendering the `cell` CLI prints, so transcripts read alike).

use abi::Value;
use serde_json::{Value as J, json};

/// `v` as JSON.
pub fn value(v: &Value) -> J {
    match v {
        Value::Unit => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(x) => serde_json::Number::from_f64(*x)
            .map(J::Number)
            .unwrap_or_else(|| J::String(x.to_string())),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => {
            json!({ "$bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>() })
        }
        Value::List(items) => J::Array(items.iter().map(value).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), value(v))).collect()),
    }
}
