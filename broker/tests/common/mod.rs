//! Helpers shared by the broker's integration tests.
#![allow(dead_code)]

use abi::{Map, Value};
use cell_broker::{Broker, CellBroker, Rules};

pub fn map(entries: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in entries {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Map(m)
}

pub fn s(text: &str) -> Value {
    Value::Str(text.into())
}

pub fn rules(toml_text: &str) -> Rules {
    toml::from_str(toml_text).expect("test rules parse")
}

pub fn cell(broker: &Broker, name: &str, toml_text: &str) -> CellBroker {
    broker
        .for_cell(name, &rules(toml_text))
        .expect("test rules are valid")
}
