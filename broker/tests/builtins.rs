//! clock, random, secret and kv: allow, deny and out-of-scope cases.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::{Broker, Secrets};
use common::{cell, map, s};

const B: &str = "subinterp";

#[test]
fn clock_allow_deny_and_out_of_scope() {
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "c",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\", \"monotonic\"]",
    );
    let Ok(Value::Int(wall)) = c.request(B, "clock", "wall", Value::Unit) else {
        panic!("wall")
    };
    // 2020-01-01 in ns: the clock reads real time, not zero.
    assert!(wall > 1_577_836_800_000_000_000);
    let Ok(Value::Int(m1)) = c.request(B, "clock", "monotonic", Value::Unit) else {
        panic!("monotonic")
    };
    let Ok(Value::Int(m2)) = c.request(B, "clock", "monotonic", Value::Unit) else {
        panic!("monotonic")
    };
    assert!(m2 >= m1);
    // Out of scope: only `wall` granted.
    let narrow = cell(
        &broker,
        "n",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]",
    );
    let err = narrow
        .request(B, "clock", "monotonic", Value::Unit)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(
        err.message.contains("`clock`") && err.message.contains("default-deny"),
        "{err}"
    );
    // Denied: nothing granted.
    let none = cell(&broker, "x", "");
    assert_eq!(
        none.request(B, "clock", "wall", Value::Unit)
            .unwrap_err()
            .code,
        ErrorCode::Denied
    );
    // Payload shape is checked.
    let err = c
        .request(B, "clock", "wall", map(&[("tz", s("utc"))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

#[test]
fn random_allow_deny_and_out_of_scope() {
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "r",
        "[[grants]]\ncapability = \"random\"\nactions = [\"bytes\", \"int\"]",
    );
    let Ok(Value::Bytes(a)) = c.request(B, "random", "bytes", map(&[("len", Value::Int(32))]))
    else {
        panic!("bytes")
    };
    let Ok(Value::Bytes(b)) = c.request(B, "random", "bytes", map(&[("len", Value::Int(32))]))
    else {
        panic!("bytes")
    };
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "two 256-bit draws from the OS generator collided");
    for _ in 0..200 {
        let Ok(Value::Int(v)) = c.request(
            B,
            "random",
            "int",
            map(&[("min", Value::Int(-3)), ("max", Value::Int(3))]),
        ) else {
            panic!("int")
        };
        assert!((-3..=3).contains(&v));
    }
    let err = c
        .request(B, "random", "bytes", map(&[("len", Value::Int(1 << 30))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let err = c
        .request(
            B,
            "random",
            "int",
            map(&[("min", Value::Int(3)), ("max", Value::Int(1))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let narrow = cell(
        &broker,
        "n",
        "[[grants]]\ncapability = \"random\"\nactions = [\"int\"]",
    );
    let err = narrow
        .request(B, "random", "bytes", map(&[("len", Value::Int(1))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("`random`"));
}

#[test]
fn secret_is_readable_only_by_granted_name() {
    let mut secrets = Secrets::from_toml("db_password = \"hunter2\"\napi_token = \"t0k\"").unwrap();
    secrets.insert("third", "3");
    assert!(
        !format!("{secrets:?}").contains("hunter2"),
        "Debug leaks a secret"
    );
    let broker = Broker::builder().secrets(secrets).build().unwrap();
    let c = cell(
        &broker,
        "s",
        "[[grants]]\ncapability = \"secret\"\nactions = [\"read\"]\nnames = [\"db_password\"]",
    );
    assert_eq!(
        c.request(B, "secret", "read", map(&[("name", s("db_password"))])),
        Ok(s("hunter2"))
    );
    // Out of scope: configured, but not granted to this cell.
    let err = c
        .request(B, "secret", "read", map(&[("name", s("api_token"))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(!err.message.contains("t0k"));
    // Denied outright.
    let none = cell(&broker, "n", "");
    let err = none
        .request(B, "secret", "read", map(&[("name", s("db_password"))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(!err.message.contains("hunter2"));
    // A deny by name wins over the grant.
    let denied = cell(
        &broker,
        "d",
        "[[grants]]\ncapability = \"secret\"\nactions = [\"read\"]\nnames = [\"db_password\"]\n\
         [[denies]]\ncapability = \"secret\"\nactions = [\"read\"]\nnames = [\"db_password\"]",
    );
    let err = denied
        .request(B, "secret", "read", map(&[("name", s("db_password"))]))
        .unwrap_err();
    assert!(err.message.contains("denies[0]"), "{err}");
}

#[test]
fn kv_is_per_cell_or_tenant_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let per_cell = "[[grants]]\ncapability = \"kv\"\nactions = [\"*\"]";
    let tenant = "[[grants]]\ncapability = \"kv\"\nactions = [\"*\"]\nnamespace = \"tenant\"\ntenant = \"acme\"";
    {
        let broker = Broker::builder().kv_dir(dir.path()).build().unwrap();
        let a = cell(&broker, "a", per_cell);
        let b = cell(&broker, "b", per_cell);
        assert_eq!(
            a.request(B, "kv", "get", map(&[("key", s("k"))])),
            Ok(Value::Unit)
        );
        let value = map(&[("n", Value::Int(7)), ("blob", Value::Bytes(vec![1, 2, 3]))]);
        a.request(
            B,
            "kv",
            "put",
            map(&[("key", s("k")), ("value", value.clone())]),
        )
        .unwrap();
        a.request(
            B,
            "kv",
            "put",
            map(&[("key", s("k2")), ("value", Value::Int(1))]),
        )
        .unwrap();
        a.request(
            B,
            "kv",
            "put",
            map(&[("key", s("other")), ("value", Value::Int(1))]),
        )
        .unwrap();
        assert_eq!(
            a.request(B, "kv", "get", map(&[("key", s("k"))])),
            Ok(value)
        );
        // Cell b has its own namespace.
        assert_eq!(
            b.request(B, "kv", "get", map(&[("key", s("k"))])),
            Ok(Value::Unit)
        );
        assert_eq!(
            a.request(B, "kv", "list", map(&[("prefix", s("k"))])),
            Ok(Value::List(vec![s("k"), s("k2")]))
        );
        assert_eq!(
            a.request(B, "kv", "delete", map(&[("key", s("k2"))])),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            a.request(B, "kv", "delete", map(&[("key", s("k2"))])),
            Ok(Value::Bool(false))
        );
        // Two cells of one tenant share a namespace.
        let t1 = cell(&broker, "t1", tenant);
        let t2 = cell(&broker, "t2", tenant);
        t1.request(
            B,
            "kv",
            "put",
            map(&[("key", s("shared")), ("value", s("yes"))]),
        )
        .unwrap();
        assert_eq!(
            t2.request(B, "kv", "get", map(&[("key", s("shared"))])),
            Ok(s("yes"))
        );
        assert_eq!(
            a.request(B, "kv", "get", map(&[("key", s("shared"))])),
            Ok(Value::Unit)
        );
    }
    // A new broker on the same directory (a supervisor restart) sees the data.
    let broker = Broker::builder().kv_dir(dir.path()).build().unwrap();
    let a = cell(&broker, "a", per_cell);
    assert_eq!(
        a.request(B, "kv", "get", map(&[("key", s("k"))])),
        Ok(map(&[
            ("n", Value::Int(7)),
            ("blob", Value::Bytes(vec![1, 2, 3]))
        ]))
    );
    let t = cell(&broker, "t3", tenant);
    assert_eq!(
        t.request(B, "kv", "get", map(&[("key", s("shared"))])),
        Ok(s("yes"))
    );
}

#[test]
fn kv_deny_out_of_scope_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::builder().kv_dir(dir.path()).build().unwrap();
    let ro = cell(
        &broker,
        "ro",
        "[[grants]]\ncapability = \"kv\"\nactions = [\"get\", \"list\"]\nmax_bytes = 16",
    );
    let err = ro
        .request(
            B,
            "kv",
            "put",
            map(&[("key", s("k")), ("value", Value::Int(1))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    let none = cell(&broker, "none", "");
    assert_eq!(
        none.request(B, "kv", "get", map(&[("key", s("k"))]))
            .unwrap_err()
            .code,
        ErrorCode::Denied
    );
    let small = cell(
        &broker,
        "small",
        "[[grants]]\ncapability = \"kv\"\nactions = [\"put\"]\nmax_bytes = 16",
    );
    let err = small
        .request(
            B,
            "kv",
            "put",
            map(&[("key", s("k")), ("value", Value::Bytes(vec![0; 64]))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue);
    let err = small
        .request(
            B,
            "kv",
            "put",
            map(&[("key", s(&"k".repeat(300))), ("value", Value::Int(1))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

/// A stored value larger than the largest reply the asking cell takes is refused before it is
/// decoded, naming that limit; one within it is returned.
#[test]
fn kv_gets_are_bounded_by_the_largest_reply() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::builder().kv_dir(dir.path()).build().unwrap();
    let c = cell(
        &broker,
        "kv-reply",
        "[[grants]]\ncapability = \"kv\"\nactions = [\"get\", \"put\"]",
    );
    let value = Value::Bytes(vec![1; 500]);
    c.request(
        B,
        "kv",
        "put",
        map(&[("key", s("k")), ("value", value.clone())]),
    )
    .unwrap();
    let get = |max_reply: u64| {
        c.request_within(
            B,
            "kv",
            "get",
            map(&[("key", s("k"))]),
            None,
            Some(max_reply),
        )
    };
    let encoded = abi::wire::encoded_len(&value).unwrap() as u64;
    let err = get(encoded - 1).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize, "{err}");
    assert!(
        err.message
            .contains(&format!("the value of `k` encodes to {encoded} bytes")),
        "{err}"
    );
    assert_eq!(get(encoded), Ok(value));
}
