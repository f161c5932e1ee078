//! JSON renderings of values and events, for the CLI's JSON lines and transcripts.
//! Unit is `null`, bytes are `{"$bytes": "<hex>"}`, non-finite floats are the strings `"inf"`,
//! `"-inf"` and `"NaN"` wherever a float appears (posts, results, log fields, metric values).

use abi::{CellError, Value};
use host::Event;
use serde_json::{Value as J, json};

/// A value as JSON: unit is `null`, bytes are `{"$bytes": "<hex>"}`, non-finite floats strings.
pub fn value(v: &Value) -> J {
    match v {
        Value::Unit => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(x) => float(*x),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => {
            json!({ "$bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>() })
        }
        Value::List(items) => J::Array(items.iter().map(value).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), value(v))).collect()),
    }
}

/// A float as JSON: a number when finite, else `"inf"`, `"-inf"` or `"NaN"` (JSON has no
/// non-finite numbers, and `null` would lose which one it was).
pub fn float(x: f64) -> J {
    serde_json::Number::from_f64(x)
        .map(J::Number)
        .unwrap_or_else(|| J::String(x.to_string()))
}

/// JSON → value, for arguments given on the command line or over HTTP: integers stay integers,
/// and `{"$bytes": "<hex>"}` (what [`value`] writes for bytes) is bytes again, so a value read
/// back keeps its type. Non-finite floats stay the strings they were written as.
pub fn parse_value(j: &J) -> Value {
    if let J::Object(m) = j
        && m.len() == 1
        && let Some(J::String(hex)) = m.get("$bytes")
        && let Some(bytes) = from_hex(hex)
    {
        return Value::Bytes(bytes);
    }
    match j {
        J::Null => Value::Unit,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        J::String(s) => Value::Str(s.clone()),
        J::Array(items) => Value::List(items.iter().map(parse_value).collect()),
        J::Object(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), parse_value(v))).collect()),
    }
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    // Hex digits only: `from_str_radix` also takes a sign, so `"+1"` was read as the byte 1.
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An event as one JSON object, tagged by `"event"` (`post`, `log`, `metric`).
pub fn event(e: &Event) -> J {
    match e {
        Event::Post(v) => json!({ "event": "post", "value": value(v) }),
        Event::Log {
            level,
            message,
            fields,
        } => json!({
            "event": "log", "level": level.name(), "message": message,
            "fields": value(&Value::Map(fields.clone())),
        }),
        Event::Metric { name, value, tags } => {
            json!({ "event": "metric", "name": name, "value": float(*value), "tags": tags })
        }
        // An event kind added after this build: named, never dropped silently.
        other => json!({ "event": other.kind() }),
    }
}

/// An exec/call outcome as a `result` or `error` event.
pub fn result(r: &Result<Value, CellError>) -> J {
    match r {
        Ok(v) => json!({ "event": "result", "value": value(v) }),
        Err(e) => error(e),
    }
}

/// An error as an `error` event with its code name and message.
pub fn error(e: &CellError) -> J {
    json!({ "event": "error", "code": e.code.name(), "message": e.message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_render_alike_in_posts_and_metrics() {
        for (x, text) in [
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "NaN"),
        ] {
            let post = event(&Event::Post(Value::Float(x)));
            let metric = event(&Event::Metric {
                name: "m".into(),
                value: x,
                tags: Default::default(),
            });
            assert_eq!(post["value"], text);
            assert_eq!(metric["value"], text);
        }
        assert_eq!(value(&Value::Float(1.5)), 1.5);
    }

    #[test]
    fn values_read_back_keep_their_type() {
        let mut m = abi::Map::new();
        m.insert("b".into(), Value::Bytes(vec![0, 1, 0xff]));
        m.insert("e".into(), Value::Bytes(vec![]));
        let v = Value::List(vec![
            Value::Map(m),
            Value::Float(-0.0),
            Value::Int(-3),
            Value::Unit,
        ]);
        assert!(parse_value(&value(&v)).bit_eq(&v));
        // Not hex, or beside other keys: a map as written.
        for j in [
            json!({"$bytes": "0g"}),
            json!({"$bytes": "abc"}),
            json!({"$bytes": "00", "x": 1}),
            json!({"$bytes": "+1"}),
            json!({"$bytes": "-1"}),
        ] {
            assert!(matches!(parse_value(&j), Value::Map(_)), "{j}");
        }
    }
}
