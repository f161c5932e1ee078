//! fs deny rules hold on the object a request reaches, however it is named: symlinks (to files,
//! to directories, chains, dangling ones written through), hard links, `..`, rename races and
//! bind mounts; the refusal and the audit record name the rule that decided.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::{Broker, CellBroker, Decision, MemoryAudit};
use common::{cell, map, s};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const B: &str = "subinterp";
const SECRET: &[u8] = b"TOP SECRET";

/// `<tmp>/root` (granted read-write) with `pub/a.txt` and the denied `private/key` and
/// `private/sub/deep`; `other` is a second denied root listed first.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("pub")).unwrap();
        std::fs::create_dir_all(root.join("private/sub")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(root.join("pub/a.txt"), b"alpha").unwrap();
        std::fs::write(root.join("private/key"), SECRET).unwrap();
        std::fs::write(root.join("private/sub/deep"), SECRET).unwrap();
        Fixture { _dir: dir, root }
    }

    fn root(&self) -> &str {
        self.root.to_str().unwrap()
    }

    fn policy(&self) -> String {
        format!(
            "[[grants]]\ncapability = \"fs\"\nactions = [\"*\"]\nroots = [\"{r}\"]\naccess = \"read-write\"\n\
             [[denies]]\ncapability = \"fs\"\nactions = [\"*\"]\nroots = [\"{r}/other\"]\n\
             [[denies]]\ncapability = \"fs\"\nactions = [\"*\"]\nroots = [\"{r}/private\"]\n",
            r = self.root()
        )
    }

    fn cell(&self, broker: &Broker) -> CellBroker {
        cell(broker, "deny", &self.policy())
    }

    fn secret_intact(&self) {
        assert_eq!(
            std::fs::read(self.root.join("private/key")).unwrap(),
            SECRET
        );
        assert_eq!(
            std::fs::read(self.root.join("private/sub/deep")).unwrap(),
            SECRET
        );
    }
}

fn req(c: &CellBroker, action: &str, root: &str, path: &str) -> Result<Value, abi::CellError> {
    c.request(
        B,
        "fs",
        action,
        map(&[("root", s(root)), ("path", s(path))]),
    )
}

fn write(c: &CellBroker, root: &str, path: &str, data: &str) -> Result<Value, abi::CellError> {
    c.request(
        B,
        "fs",
        "write",
        map(&[("root", s(root)), ("path", s(path)), ("data", s(data))]),
    )
}

/// Refused by `denies[1]` (the `private` rule), not by the first deny rule.
fn assert_denied_by_private(result: Result<Value, abi::CellError>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.code, ErrorCode::Denied, "{what}: {err}");
    assert!(err.message.contains("`denies[1]`"), "{what}: {err}");
    assert!(!err.message.contains("denies[0]"), "{what}: {err}");
}

#[test]
fn symlinks_into_a_denied_subtree_are_refused_for_every_action() {
    let f = Fixture::new();
    let r = &f.root;
    symlink("../private/key", r.join("pub/leak")).unwrap();
    symlink("private", r.join("alias")).unwrap();
    symlink("leak", r.join("pub/chain")).unwrap(); // a chain: chain -> leak -> private/key
    symlink("../private/sub", r.join("pub/subdir")).unwrap();
    symlink("../private/fresh", r.join("pub/dangling")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = f.cell(&broker);
    for path in [
        "pub/leak",
        "pub/chain",
        "alias/key",
        "pub/subdir/deep",
        "pub/../private/key",
        "private/key",
        "private/missing",
    ] {
        assert_denied_by_private(req(&c, "read", f.root(), path), &format!("read {path}"));
        assert_denied_by_private(req(&c, "stat", f.root(), path), &format!("stat {path}"));
        assert_denied_by_private(write(&c, f.root(), path, "pwned"), &format!("write {path}"));
    }
    for path in ["pub/subdir", "alias", "private", "private/sub/.."] {
        assert_denied_by_private(req(&c, "list", f.root(), path), &format!("list {path}"));
    }
    // The refusal says which denied subtree the object lies under, found on the object itself
    // (`private/key`) or on the walk up from its directory (`private/sub/deep`).
    for path in ["pub/leak", "pub/subdir/deep"] {
        let err = req(&c, "read", f.root(), path).unwrap_err();
        let under = format!("lies under the denied root `{}/private`", f.root());
        assert!(err.message.contains(&under), "{path}: {err}");
    }
    // Writing through a dangling link would create the file inside the denied subtree.
    assert_denied_by_private(write(&c, f.root(), "pub/dangling", "x"), "write dangling");
    assert!(!r.join("private/fresh").exists());
    assert_denied_by_private(req(&c, "remove", f.root(), "alias/key"), "remove alias/key");
    f.secret_intact();
    // Removing a link removes the link only, so it is allowed; the target stays.
    assert_eq!(req(&c, "remove", f.root(), "pub/leak"), Ok(Value::Unit));
    f.secret_intact();
    // The rest of the root is untouched by the rules.
    assert_eq!(
        req(&c, "read", f.root(), "pub/a.txt"),
        Ok(Value::Bytes(b"alpha".to_vec()))
    );
    assert_eq!(write(&c, f.root(), "pub/new", "ok"), Ok(Value::Int(2)));
    // A listing of the root shows the denied directory's name: denies cover access to objects.
    assert!(req(&c, "list", f.root(), ".").is_ok());
}

#[test]
fn hard_links_to_a_denied_file_are_refused_and_single_links_are_not() {
    let f = Fixture::new();
    let r = &f.root;
    std::fs::hard_link(r.join("private/key"), r.join("pub/hard")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = f.cell(&broker);
    for action in ["read", "stat", "remove"] {
        let err = req(&c, action, f.root(), "pub/hard").unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied, "{action}: {err}");
        assert!(err.message.contains("hard links"), "{action}: {err}");
    }
    let err = write(&c, f.root(), "pub/hard", "pwned").unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied, "{err}");
    f.secret_intact();
    // Once the denied name is gone the file has one link, outside the subtree: readable.
    std::fs::remove_file(r.join("private/key")).unwrap();
    assert_eq!(
        req(&c, "read", f.root(), "pub/hard"),
        Ok(Value::Bytes(SECRET.to_vec()))
    );
}

#[test]
fn the_audit_names_the_rule_that_decided() {
    let f = Fixture::new();
    symlink("../private/key", f.root.join("pub/leak")).unwrap();
    symlink("../other", f.root.join("pub/to-other")).unwrap();
    std::fs::write(f.root.join("other/o"), b"o").unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let broker = Broker::builder().audit(audit.clone()).build().unwrap();
    let c = f.cell(&broker);
    let _ = req(&c, "read", f.root(), "pub/leak");
    let _ = req(&c, "read", f.root(), "pub/to-other/o");
    // Neither deny rule decides these: an escape and a missing file.
    let escape = req(&c, "read", f.root(), "../../etc/passwd").unwrap_err();
    assert_eq!(escape.code, ErrorCode::Denied);
    assert!(
        escape.message.contains("outside the granted root"),
        "{escape}"
    );
    let missing = req(&c, "read", f.root(), "pub/nothing").unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing}");
    let rules: Vec<(Decision, String)> = audit
        .records()
        .into_iter()
        .map(|r| (r.decision, r.rule))
        .collect();
    assert_eq!(
        rules,
        vec![
            (Decision::Deny, "denies[1]".to_string()),
            (Decision::Deny, "denies[0]".to_string()),
            (Decision::Allow, "grants[0]".to_string()),
            (Decision::Allow, "grants[0]".to_string()),
        ]
    );
}

#[test]
fn a_rename_race_never_reaches_the_denied_subtree() {
    // A thread swaps `pub/race` between a directory holding a harmless `key` and a symlink to
    // the denied directory while the cell reads `pub/race/key`: every read finds the harmless
    // file or is refused.
    let f = Fixture::new();
    let r = f.root.clone();
    std::fs::create_dir(r.join("pub/safe")).unwrap();
    std::fs::write(r.join("pub/safe/key"), b"harmless").unwrap();
    symlink("../private", r.join("pub/evil")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = f.cell(&broker);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let r = r.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(r.join("pub/safe"), r.join("pub/race"));
                let _ = std::fs::rename(r.join("pub/race"), r.join("pub/safe"));
                let _ = std::fs::rename(r.join("pub/evil"), r.join("pub/race"));
                let _ = std::fs::rename(r.join("pub/race"), r.join("pub/evil"));
            }
        })
    };
    for _ in 0..2000 {
        match req(&c, "read", f.root(), "pub/race/key") {
            Ok(Value::Bytes(b)) => assert_eq!(b, b"harmless", "reached the denied subtree"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => assert!(
                matches!(e.code, ErrorCode::Denied | ErrorCode::NotFound),
                "{e}"
            ),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    f.secret_intact();
}

/// Unmounts on drop, so a failing assertion does not leave the bind mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_bind_mount_of_a_denied_subdirectory_is_refused() {
    let f = Fixture::new();
    let target = f.root.join("pub/bound");
    std::fs::create_dir(&target).unwrap();
    let mounted = std::process::Command::new("mount")
        .arg("--bind")
        .arg(f.root.join("private/sub"))
        .arg(&target)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED a_bind_mount_of_a_denied_subdirectory_is_refused: cannot bind-mount here ({mounted:?})"
        );
        return;
    }
    let _guard = Mounted(target.clone());
    let broker = Broker::builder().build().unwrap();
    let c = f.cell(&broker);
    for action in ["read", "stat"] {
        assert_denied_by_private(req(&c, action, f.root(), "pub/bound/deep"), action);
    }
    assert_denied_by_private(req(&c, "list", f.root(), "pub/bound"), "list");
    // A bind mount of a directory outside every denied subtree stays readable.
    let open_mount = f.root.join("pub-view");
    std::fs::create_dir(&open_mount).unwrap();
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(f.root.join("pub"))
        .arg(&open_mount)
        .status()
        .unwrap();
    assert!(status.success());
    let _guard2 = Mounted(open_mount);
    assert_eq!(
        req(&c, "read", f.root(), "pub-view/a.txt"),
        Ok(Value::Bytes(b"alpha".to_vec()))
    );
    f.secret_intact();
}

#[test]
fn a_deny_on_the_granted_root_or_above_refuses_everything_under_it() {
    let f = Fixture::new();
    let parent = f.root.parent().unwrap().to_str().unwrap().to_string();
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "above",
        &format!(
            "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"{}\"]\n\
             [[denies]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"{parent}\"]\n",
            f.root()
        ),
    );
    for path in ["pub/a.txt", ".", "pub"] {
        let err = req(&c, "read", f.root(), path).unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied, "{path}");
        assert!(err.message.contains("denies[0]"), "{err}");
    }
}

#[test]
fn deny_rules_take_no_access_or_size_fields() {
    for extra in ["access = \"read\"", "max_bytes = 10"] {
        let text = format!(
            "[[denies]]\ncapability = \"fs\"\nactions = [\"*\"]\nroots = [\"/tmp\"]\n{extra}\n"
        );
        let broker = Broker::builder().build().unwrap();
        let err = broker
            .for_cell("x", &common::rules(&text))
            .expect_err(extra)
            .to_string();
        assert!(
            err.contains("denies[0]") && err.contains("deny rule"),
            "{err}"
        );
    }
    assert!(Path::new("/tmp").is_dir());
}

#[test]
fn writes_racing_a_symlink_swap_never_land_in_the_denied_subtree() {
    // `pub/race` flips between a plain directory and a symlink to the denied directory while
    // the cell writes `pub/race/fresh`: nothing is ever created or changed under `private`.
    let f = Fixture::new();
    let r = f.root.clone();
    std::fs::create_dir(r.join("pub/safe")).unwrap();
    symlink("../private", r.join("pub/evil")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = f.cell(&broker);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let r = r.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(r.join("pub/safe"), r.join("pub/race"));
                let _ = std::fs::rename(r.join("pub/race"), r.join("pub/safe"));
                let _ = std::fs::rename(r.join("pub/evil"), r.join("pub/race"));
                let _ = std::fs::rename(r.join("pub/race"), r.join("pub/evil"));
            }
        })
    };
    for _ in 0..1000 {
        if let Err(e) = write(&c, f.root(), "pub/race/fresh", "x") {
            assert!(
                matches!(e.code, ErrorCode::Denied | ErrorCode::NotFound),
                "{e}"
            );
        }
        let _ = write(&c, f.root(), "pub/race/key", "overwritten");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        !r.join("private/fresh").exists(),
        "a write landed in the denied subtree"
    );
    f.secret_intact();
}

#[test]
fn a_request_a_deny_rule_refuses_does_not_use_the_grants_quota() {
    let f = Fixture::new();
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "quota",
        &f.policy().replacen(
            "access = \"read-write\"\n",
            "access = \"read-write\"\nquota = { requests = 1 }\n",
            1,
        ),
    );
    for _ in 0..3 {
        assert_denied_by_private(req(&c, "read", f.root(), "private/key"), "read private");
    }
    assert_eq!(
        req(&c, "read", f.root(), "pub/a.txt"),
        Ok(Value::Bytes(b"alpha".to_vec()))
    );
    let err = req(&c, "read", f.root(), "pub/a.txt").unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota, "{err}");
}
