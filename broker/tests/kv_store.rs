//! kv: several supervisors (brokers, processes) share one store directory, and the store is
//! bounded per namespace and per store, refusing a write past a bound before writing anything.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::{Broker, CellBroker, KvLimits};
use common::{cell, map, s};
use std::path::Path;

const B: &str = "subinterp";
const GRANT: &str = "[[grants]]\ncapability = \"kv\"\nactions = [\"*\"]";
/// Set in the child process the two-process test starts from this test binary.
const CHILD_ENV: &str = "CELL_BROKER_KV_CHILD_DIR";

fn put(c: &CellBroker, key: &str, value: Value) -> Result<Value, abi::CellError> {
    c.request(B, "kv", "put", map(&[("key", s(key)), ("value", value)]))
}

fn get(c: &CellBroker, key: &str) -> Value {
    c.request(B, "kv", "get", map(&[("key", s(key))]))
        .expect("get")
}

fn keys(c: &CellBroker) -> Vec<Value> {
    match c.request(B, "kv", "list", Value::Unit).expect("list") {
        Value::List(keys) => keys,
        other => panic!("list gave {other:?}"),
    }
}

fn broker(dir: &Path, limits: KvLimits) -> Broker {
    Broker::builder()
        .kv_dir(dir)
        .kv_limits(limits)
        .build()
        .expect("the store opens while another broker has it")
}

#[test]
fn two_brokers_on_one_directory_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let first = broker(dir.path(), KvLimits::default());
    let second = broker(dir.path(), KvLimits::default());
    let a = cell(&first, "shared", GRANT);
    let b = cell(&second, "shared", GRANT);
    assert_eq!(put(&a, "from-a", Value::Int(1)), Ok(Value::Unit));
    assert_eq!(put(&b, "from-b", Value::Int(2)), Ok(Value::Unit));
    assert_eq!(get(&b, "from-a"), Value::Int(1));
    assert_eq!(get(&a, "from-b"), Value::Int(2));
    assert_eq!(keys(&a), vec![s("from-a"), s("from-b")]);
}

/// The child half of the two-process test: writes its keys into the directory it is given.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when started by the parent test
    };
    let c = cell(
        &broker(Path::new(&dir), KvLimits::default()),
        "shared",
        GRANT,
    );
    for i in 0..10 {
        put(&c, &format!("child-{i:02}"), Value::Int(i)).expect("child put");
    }
}

#[test]
fn two_processes_write_one_store_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let parent = broker(dir.path(), KvLimits::default());
    let c = cell(&parent, "shared", GRANT);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .spawn()
        .unwrap();
    for i in 0..10 {
        put(&c, &format!("parent-{i:02}"), Value::Int(i)).expect("parent put");
    }
    assert!(child.wait().unwrap().success(), "the child's writes failed");
    let all = keys(&c);
    assert_eq!(all.len(), 20, "{all:?}");
    assert_eq!(get(&c, "child-09"), Value::Int(9));
    assert_eq!(get(&c, "parent-09"), Value::Int(9));
}

#[test]
fn a_namespace_past_its_key_limit_refuses_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = KvLimits {
        namespace_keys: 3,
        ..KvLimits::default()
    };
    let b = broker(dir.path(), limits);
    let c = cell(&b, "small", GRANT);
    for key in ["k1", "k2", "k3"] {
        assert_eq!(put(&c, key, Value::Int(1)), Ok(Value::Unit));
    }
    let err = put(&c, "k4", Value::Int(1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota, "{err}");
    assert!(err.message.contains("namespace `cell:small`"), "{err}");
    assert!(err.message.contains("keys"), "{err}");
    assert_eq!(get(&c, "k4"), Value::Unit, "the refused write happened");
    // Replacing a key adds none; deleting one makes room.
    assert_eq!(put(&c, "k3", s("replaced")), Ok(Value::Unit));
    assert_eq!(get(&c, "k3"), s("replaced"));
    assert_eq!(
        c.request(B, "kv", "delete", map(&[("key", s("k1"))])),
        Ok(Value::Bool(true))
    );
    assert_eq!(put(&c, "k4", Value::Int(1)), Ok(Value::Unit));
    // Another namespace has its own count.
    let other = cell(&b, "other", GRANT);
    assert_eq!(put(&other, "k1", Value::Int(1)), Ok(Value::Unit));
}

#[test]
fn byte_limits_hold_per_namespace_and_per_store() {
    let dir = tempfile::tempdir().unwrap();
    // Each entry below is a 2-byte key plus a 102-byte encoded value (tag, length, 100 bytes).
    let limits = KvLimits {
        namespace_bytes: 250,
        store_bytes: 400,
        ..KvLimits::default()
    };
    let b = broker(dir.path(), limits);
    let one = cell(&b, "one", GRANT);
    let two = cell(&b, "two", GRANT);
    let big = || Value::Bytes(vec![0; 100]);
    assert_eq!(put(&one, "a1", big()), Ok(Value::Unit));
    assert_eq!(put(&one, "a2", big()), Ok(Value::Unit));
    let err = put(&one, "a3", big()).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota, "{err}");
    assert!(err.message.contains("namespace `cell:one`") && err.message.contains("bytes"));
    // A smaller value under an existing key shrinks the count instead of adding to it.
    assert_eq!(put(&one, "a2", Value::Int(0)), Ok(Value::Unit));
    assert_eq!(put(&one, "a3", big()), Ok(Value::Unit));
    assert_eq!(put(&two, "b1", big()), Ok(Value::Unit));
    let err = put(&two, "b2", big()).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota, "{err}");
    assert!(err.message.contains("the store"), "{err}");
    assert_eq!(get(&two, "b2"), Value::Unit);
    // The bound holds across brokers: a second one sees the same totals.
    let again = cell(&broker(dir.path(), limits), "two", GRANT);
    assert_eq!(
        put(&again, "b2", big()).unwrap_err().code,
        ErrorCode::LimitQuota
    );
}

#[test]
fn the_store_key_limit_counts_every_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let limits = KvLimits {
        store_keys: 2,
        ..KvLimits::default()
    };
    let b = broker(dir.path(), limits);
    assert_eq!(
        put(&cell(&b, "x", GRANT), "k", Value::Int(1)),
        Ok(Value::Unit)
    );
    assert_eq!(
        put(&cell(&b, "y", GRANT), "k", Value::Int(1)),
        Ok(Value::Unit)
    );
    let err = put(&cell(&b, "z", GRANT), "k", Value::Int(1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota);
    assert!(err.message.contains("the store") && err.message.contains("keys"));
}

#[test]
fn a_store_written_before_usage_was_kept_is_counted_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    {
        const OLD: redb::TableDefinition<(&str, &str), &[u8]> = redb::TableDefinition::new("kv");
        let db = redb::Database::create(dir.path().join("kv.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(OLD).unwrap();
            for key in ["a", "b"] {
                let v = postcard::to_allocvec(&Value::Int(1)).unwrap();
                t.insert(("cell:old", key), v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let limits = KvLimits {
        namespace_keys: 2,
        ..KvLimits::default()
    };
    let c = cell(&broker(dir.path(), limits), "old", GRANT);
    assert_eq!(get(&c, "a"), Value::Int(1));
    assert_eq!(
        put(&c, "c", Value::Int(1)).unwrap_err().code,
        ErrorCode::LimitQuota
    );
}
