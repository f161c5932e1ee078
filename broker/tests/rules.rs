//! Rule parsing and checking: unknown keys, unknown capabilities and actions, fields that do not
//! apply and inconsistent values are refused with errors that name them.

mod common;
use cell_broker::{Broker, ConfigError, Rules};
use common::rules;

fn check(text: &str) -> Result<(), ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace("$DIR", dir.path().to_str().unwrap());
    let broker = Broker::builder().build().unwrap();
    broker.check(&rules(&text))
}

#[test]
fn unknown_keys_are_refused_by_name() {
    for (text, key) in [
        (
            "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nroot = \"/x\"",
            "root",
        ),
        ("[[grant]]\ncapability = \"clock\"", "grant"),
        (
            "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nquota = { request = 1 }",
            "request",
        ),
        (
            "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\naccess = \"write\"",
            "write",
        ),
    ] {
        let err = toml::from_str::<Rules>(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn unknown_capability_and_action_are_named() {
    let err = check("[[grants]]\ncapability = \"fss\"\nactions = [\"read\"]").unwrap_err();
    assert!(
        matches!(err, ConfigError::UnknownCapability { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`fss`") && err.to_string().contains("grants[0]"));
    let err = check("[[denies]]\ncapability = \"clock\"\nactions = [\"sundial\"]").unwrap_err();
    assert!(matches!(err, ConfigError::UnknownAction { .. }), "{err}");
    assert!(err.to_string().contains("denies[0]") && err.to_string().contains("sundial"));
    let err = check("[[grants]]\ncapability = \"clock\"\nactions = []").unwrap_err();
    assert!(err.to_string().contains("`actions` is empty"), "{err}");
}

#[test]
fn fields_of_other_capabilities_are_refused() {
    let err = check(
        "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"$DIR\"]\norigins = [\"http://127.0.0.1:1\"]",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::FieldNotApplicable {
                field: "origins",
                ..
            }
        ),
        "{err}"
    );
    let err = check("[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nmax_bytes = 5")
        .unwrap_err();
    assert!(err.to_string().contains("`max_bytes`"), "{err}");
    let err =
        check("[[grants]]\ncapability = \"random\"\nactions = [\"int\"]\nparams = { a = \"b\" }")
            .unwrap_err();
    assert!(err.to_string().contains("`params`"), "{err}");
}

#[test]
fn inconsistent_values_are_refused() {
    for (text, needle) in [
        (
            "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]",
            "roots",
        ),
        (
            "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"rel\"]",
            "absolute",
        ),
        (
            "[[grants]]\ncapability = \"fs\"\nactions = [\"write\"]\nroots = [\"$DIR\"]",
            "read-write",
        ),
        (
            "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"$DIR/missing\"]",
            "unusable",
        ),
        (
            "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]",
            "origins",
        ),
        (
            "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]\norigins = [\"http://127.0.0.1:1/path\"]",
            "path",
        ),
        (
            "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]\norigins = [\"https://127.0.0.1\"]",
            "tls",
        ),
        (
            "[[grants]]\ncapability = \"secret\"\nactions = [\"read\"]\nnames = [\"nope\"]",
            "not in the supervisor's secrets",
        ),
        (
            "[[grants]]\ncapability = \"kv\"\nactions = [\"get\"]",
            "no kv store configured",
        ),
        (
            "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\ntimeout_ms = 0",
            "timeout_ms",
        ),
        (
            "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nquota = { window_ms = 5 }",
            "quota",
        ),
        (
            "[[denies]]\ncapability = \"clock\"\nactions = [\"wall\"]\nquota = { requests = 5 }",
            "deny rule",
        ),
    ] {
        let err = check(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}\n => {err}");
    }
}

#[test]
fn a_valid_policy_passes() {
    check(
        r#"
        [[grants]]
        capability = "fs"
        actions = ["read", "list", "stat"]
        roots = ["$DIR"]
        access = "read"
        max_bytes = 1024
        quota = { requests = 10, bytes = 4096, window_ms = 1000 }

        [[grants]]
        capability = "http"
        actions = ["get"]
        origins = ["http://127.0.0.1:8080"]
        timeout_ms = 2000

        [[denies]]
        capability = "fs"
        actions = ["*"]
        roots = ["$DIR/private"]
        "#,
    )
    .unwrap();
}

#[test]
fn shape_checks_need_no_host_state() {
    let broker = Broker::builder().build().unwrap();
    // Environment-dependent problems (a missing root, an unconfigured secret) pass the shape
    // check and are refused at spawn; shape problems are refused at once.
    let env = rules(
        "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"/nonexistent/x\"]\n\
         [[grants]]\ncapability = \"secret\"\nactions = [\"read\"]\nnames = [\"nope\"]\n\
         [[grants]]\ncapability = \"third-party\"\nactions = [\"go\"]",
    );
    broker.check_shape(&env).unwrap();
    assert!(broker.for_cell("c", &env).is_err());
    let bad =
        rules("[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\norigins = [\"http://a\"]");
    assert!(matches!(
        broker.check_shape(&bad),
        Err(ConfigError::FieldNotApplicable { .. })
    ));
    let bad = rules("[[grants]]\ncapability = \"third-party\"\nactions = []");
    assert!(broker.check_shape(&bad).is_err());
}

#[test]
fn rules_are_empty_only_without_grants_and_denies() {
    assert!(Rules::default().is_empty());
    let grants = common::rules("[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]");
    assert!(!grants.is_empty());
    let denies = common::rules("[[denies]]\ncapability = \"clock\"\nactions = [\"wall\"]");
    assert!(!denies.is_empty());
}
