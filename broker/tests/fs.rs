//! fs: allow, deny and out-of-scope cases; `..`, absolute paths, symlinks and rename races
//! cannot leave the root; size caps.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::{Broker, CellBroker};
use common::{cell, map, s};
use std::path::Path;

const B: &str = "subinterp";

struct Fixture {
    _dir: tempfile::TempDir,
    root: String,
    outside: String,
}

/// `<tmp>/root` (granted) holding `a.txt`, `sub/b.txt`, and `<tmp>/outside/secret.txt`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha").unwrap();
    std::fs::write(root.join("sub/b.txt"), b"beta").unwrap();
    std::fs::write(outside.join("secret.txt"), b"TOP SECRET").unwrap();
    Fixture {
        root: root.to_str().unwrap().into(),
        outside: outside.to_str().unwrap().into(),
        _dir: dir,
    }
}

fn grant(root: &str, access: &str, actions: &str, extra: &str) -> String {
    format!(
        "[[grants]]\ncapability = \"fs\"\nactions = {actions}\nroots = [\"{root}\"]\naccess = \"{access}\"\n{extra}"
    )
}

fn req(c: &CellBroker, action: &str, root: &str, path: &str) -> Result<Value, abi::CellError> {
    c.request(
        B,
        "fs",
        action,
        map(&[("root", s(root)), ("path", s(path))]),
    )
}

#[test]
fn read_write_list_stat_remove_under_a_read_write_root() {
    let f = fixture();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "rw", &grant(&f.root, "read-write", "[\"*\"]", ""));
    assert_eq!(
        req(&c, "read", &f.root, "a.txt"),
        Ok(Value::Bytes(b"alpha".to_vec()))
    );
    assert_eq!(
        req(&c, "read", &f.root, "sub/../sub/b.txt"),
        Ok(Value::Bytes(b"beta".to_vec()))
    );
    assert_eq!(
        c.request(
            B,
            "fs",
            "write",
            map(&[
                ("root", s(&f.root)),
                ("path", s("new.txt")),
                ("data", s("hello"))
            ])
        ),
        Ok(Value::Int(5))
    );
    assert_eq!(
        std::fs::read(Path::new(&f.root).join("new.txt")).unwrap(),
        b"hello"
    );
    // Overwrite truncates.
    c.request(
        B,
        "fs",
        "write",
        map(&[
            ("root", s(&f.root)),
            ("path", s("new.txt")),
            ("data", Value::Bytes(b"x".to_vec())),
        ]),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(Path::new(&f.root).join("new.txt")).unwrap(),
        b"x"
    );
    let Ok(Value::List(entries)) = c.request(B, "fs", "list", map(&[("root", s(&f.root))])) else {
        panic!("list")
    };
    let names: Vec<_> = entries
        .iter()
        .map(|e| match e {
            Value::Map(m) => (m["name"].clone(), m["type"].clone()),
            other => panic!("entry {other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            (s("a.txt"), s("file")),
            (s("new.txt"), s("file")),
            (s("sub"), s("dir"))
        ]
    );
    let Ok(Value::Map(st)) = req(&c, "stat", &f.root, "a.txt") else {
        panic!("stat")
    };
    assert_eq!(st["type"], s("file"));
    assert_eq!(st["size"], Value::Int(5));
    assert_eq!(req(&c, "remove", &f.root, "new.txt"), Ok(Value::Unit));
    assert!(!Path::new(&f.root).join("new.txt").exists());
    assert_eq!(
        req(&c, "read", &f.root, "new.txt").unwrap_err().code,
        ErrorCode::NotFound
    );
    // The root itself cannot be removed.
    assert_eq!(
        req(&c, "remove", &f.root, ".").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn read_only_grants_refuse_writes_and_removes() {
    let f = fixture();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "ro", &grant(&f.root, "read", "[\"*\"]", ""));
    assert!(req(&c, "read", &f.root, "a.txt").is_ok());
    let err = c
        .request(
            B,
            "fs",
            "write",
            map(&[("root", s(&f.root)), ("path", s("a.txt")), ("data", s("x"))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(
        err.message.contains("`fs`") && err.message.contains("default-deny"),
        "{err}"
    );
    assert_eq!(
        req(&c, "remove", &f.root, "a.txt").unwrap_err().code,
        ErrorCode::Denied
    );
    assert_eq!(
        std::fs::read(Path::new(&f.root).join("a.txt")).unwrap(),
        b"alpha"
    );
    // Nothing granted at all.
    let none = cell(&broker, "none", "");
    assert_eq!(
        req(&none, "read", &f.root, "a.txt").unwrap_err().code,
        ErrorCode::Denied
    );
}

#[test]
fn escapes_are_refused_by_the_kernel() {
    let f = fixture();
    let root = Path::new(&f.root);
    std::os::unix::fs::symlink(
        Path::new(&f.outside).join("secret.txt"),
        root.join("abs-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink(&f.outside, root.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("sub/b.txt", root.join("ok-link")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "esc", &grant(&f.root, "read-write", "[\"*\"]", ""));
    let escape = format!("{}/secret.txt", f.outside);
    for path in [
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        escape.as_str(),
        "/etc/passwd",
        "abs-link",
        "rel-link",
        "dir-link/secret.txt",
        "/proc/self/root/etc/passwd",
    ] {
        for action in ["read", "stat"] {
            let err = req(&c, action, &f.root, path).unwrap_err();
            assert_eq!(err.code, ErrorCode::Denied, "{action} {path}: {err}");
            assert!(err.message.contains("outside the granted root"), "{err}");
        }
        let err = c
            .request(
                B,
                "fs",
                "write",
                map(&[
                    ("root", s(&f.root)),
                    ("path", s(path)),
                    ("data", s("pwned")),
                ]),
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied, "write {path}: {err}");
    }
    assert_eq!(
        req(&c, "remove", &f.root, "dir-link/secret.txt")
            .unwrap_err()
            .code,
        ErrorCode::Denied
    );
    // Removing a symlink removes the link, not its target.
    assert_eq!(req(&c, "remove", &f.root, "abs-link"), Ok(Value::Unit));
    assert_eq!(
        std::fs::read(Path::new(&f.outside).join("secret.txt")).unwrap(),
        b"TOP SECRET"
    );
    // A symlink that stays beneath the root is fine.
    assert_eq!(
        req(&c, "read", &f.root, "ok-link"),
        Ok(Value::Bytes(b"beta".to_vec()))
    );
    // Another root than the granted one is out of scope.
    let err = req(&c, "read", &f.outside, "secret.txt").unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("outside the scope"), "{err}");
}

#[test]
fn rename_races_cannot_escape() {
    // A thread keeps swapping `root/race` between a real directory and a symlink to the outside
    // while the cell reads `race/secret.txt`. Every read either finds the inside file or is
    // refused; none returns the outside secret.
    let f = fixture();
    let root = Path::new(&f.root).to_path_buf();
    std::fs::create_dir(root.join("inside")).unwrap();
    std::fs::write(root.join("inside/secret.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(&f.outside, root.join("evil")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "race", &grant(&f.root, "read", "[\"read\"]", ""));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let root = root.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(root.join("inside"), root.join("race"));
                let _ = std::fs::rename(root.join("race"), root.join("inside"));
                let _ = std::fs::rename(root.join("evil"), root.join("race"));
                let _ = std::fs::rename(root.join("race"), root.join("evil"));
            }
        })
    };
    let mut inside = 0;
    for _ in 0..3000 {
        match req(&c, "read", &f.root, "race/secret.txt") {
            Ok(Value::Bytes(b)) => {
                assert_eq!(b, b"inside", "escaped the root through a rename race");
                inside += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => assert!(
                matches!(
                    e.code,
                    ErrorCode::Denied | ErrorCode::NotFound | ErrorCode::CapabilityFailed
                ),
                "{e}"
            ),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!("{inside} of 3000 racing reads found the inside file");
}

#[test]
fn deny_rules_cover_subtrees_however_they_are_named() {
    let f = fixture();
    let root = Path::new(&f.root);
    std::fs::create_dir(root.join("private")).unwrap();
    std::fs::write(root.join("private/key"), b"k").unwrap();
    std::os::unix::fs::symlink("private", root.join("alias")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let text = format!(
        "{}\n[[denies]]\ncapability = \"fs\"\nactions = [\"*\"]\nroots = [\"{}/private\"]",
        grant(&f.root, "read-write", "[\"*\"]", ""),
        f.root
    );
    let c = cell(&broker, "deny", &text);
    for path in [
        "private/key",
        "alias/key",
        "sub/../private/key",
        "private",
        "./private/new",
    ] {
        let err = req(&c, "read", &f.root, path)
            .or_else(|_| req(&c, "stat", &f.root, path))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied, "{path}");
        assert!(err.message.contains("denies[0]"), "{path}: {err}");
    }
    let err = c
        .request(
            B,
            "fs",
            "write",
            map(&[
                ("root", s(&f.root)),
                ("path", s("alias/new")),
                ("data", s("x")),
            ]),
        )
        .unwrap_err();
    assert!(err.message.contains("denies[0]"), "{err}");
    assert!(req(&c, "read", &f.root, "a.txt").is_ok());
}

#[test]
fn size_caps_apply_to_reads_and_writes() {
    let f = fixture();
    std::fs::write(Path::new(&f.root).join("big"), vec![7u8; 100]).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "cap",
        &grant(
            &f.root,
            "read-write",
            "[\"read\", \"write\"]",
            "max_bytes = 10",
        ),
    );
    assert_eq!(
        req(&c, "read", &f.root, "big").unwrap_err().code,
        ErrorCode::LimitValue
    );
    let err = c
        .request(
            B,
            "fs",
            "write",
            map(&[
                ("root", s(&f.root)),
                ("path", s("w")),
                ("data", Value::Bytes(vec![0; 11])),
            ]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue);
    assert!(!Path::new(&f.root).join("w").exists());
    assert!(req(&c, "read", &f.root, "a.txt").is_ok());
}

/// A read is bounded by the largest reply the cell takes as well as by the grant: a file over
/// that reply is refused before it is read, naming the reply's limit (`limit_frame_size`, as
/// the host would give), a file of exactly that size is read, and where the grant's cap is the
/// smaller one the refusal names the grant.
#[test]
fn reads_are_bounded_by_the_largest_reply() {
    let f = fixture();
    std::fs::write(Path::new(&f.root).join("big"), vec![7u8; 100]).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "reply", &grant(&f.root, "read", "[\"read\"]", ""));
    let read = |max_reply: u64| {
        c.request_within(
            B,
            "fs",
            "read",
            map(&[("root", s(&f.root)), ("path", s("big"))]),
            None,
            Some(max_reply),
        )
    };
    let err = read(99).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize, "{err}");
    assert_eq!(
        err.message,
        "fs.read: too large: `big` has 100 bytes, but a reply to this cell carries at most 99 bytes (its channel's max_frame_bytes less the reply's framing)"
    );
    assert_eq!(read(100), Ok(Value::Bytes(vec![7; 100])));
    let small = cell(
        &broker,
        "grant",
        &grant(&f.root, "read", "[\"read\"]", "max_bytes = 10"),
    );
    let err = small
        .request_within(
            B,
            "fs",
            "read",
            map(&[("root", s(&f.root)), ("path", s("big"))]),
            None,
            Some(50),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue, "{err}");
    assert!(
        err.message.ends_with("the grant allows reads of 10"),
        "{err}"
    );
}

/// A listing is bounded by the largest reply too: refused once its entries alone pass it, and
/// returned whole when it fits.
#[test]
fn listings_are_bounded_by_the_largest_reply() {
    let f = fixture();
    let many = Path::new(&f.root).join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..100 {
        std::fs::write(many.join(format!("file-{i:03}")), b"").unwrap();
    }
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "list", &grant(&f.root, "read", "[\"list\"]", ""));
    let list = |max_reply: u64| {
        c.request_within(
            B,
            "fs",
            "list",
            map(&[("root", s(&f.root)), ("path", s("many"))]),
            None,
            Some(max_reply),
        )
    };
    // 100 entries of at least 16 + 8 + 4 bytes each: 2,800 bytes.
    let err = list(2000).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize, "{err}");
    assert!(
        err.message
            .contains("the listing of `many` passes 2000 bytes"),
        "{err}"
    );
    let Value::List(entries) = list(1 << 20).unwrap() else {
        panic!("not a list")
    };
    assert_eq!(entries.len(), 100);
    // The count is from below: the listing's encoding is at least as large (here exact, plus
    // the list's own two bytes), so a refused listing could not have fit.
    let encoded = abi::wire::encoded_len(&Value::List(entries)).unwrap() as u64;
    assert_eq!(encoded, 2802);
    assert_eq!(list(2800).map(|_| ()), Ok(()));
    assert_eq!(list(2799).unwrap_err().code, ErrorCode::LimitFrameSize);
}

/// `max_bytes` past the largest frame (16 MiB) is refused when the rules are checked, for every
/// capability that reads it; 16 MiB itself is accepted.
#[test]
fn max_bytes_is_bounded_by_the_largest_frame() {
    let f = fixture();
    let broker = Broker::builder().build().unwrap();
    let at = cell_broker::MAX_GRANT_BYTES;
    for (grant, ok) in [
        (
            grant(&f.root, "read", "[\"read\"]", &format!("max_bytes = {at}")),
            true,
        ),
        (
            grant(
                &f.root,
                "read",
                "[\"read\"]",
                &format!("max_bytes = {}", at + 1),
            ),
            false,
        ),
        (
            format!(
                "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]\norigins = [\"http://127.0.0.1:9\"]\nmax_bytes = {}",
                at + 1
            ),
            false,
        ),
    ] {
        let checked = broker.check(&common::rules(&grant));
        match (checked, ok) {
            (Ok(()), true) => {}
            (Err(e), false) => assert!(e.to_string().contains("over 16777216 (16 MiB"), "{e}"),
            (other, _) => panic!("{grant}: {other:?}"),
        }
    }
}

fn write_bytes(
    c: &CellBroker,
    root: &str,
    path: &str,
    data: Vec<u8>,
) -> Result<Value, abi::CellError> {
    c.request(
        B,
        "fs",
        "write",
        map(&[
            ("root", s(root)),
            ("path", s(path)),
            ("data", Value::Bytes(data)),
        ]),
    )
}

#[test]
fn a_file_of_exactly_max_bytes_is_read_and_written() {
    let f = fixture();
    let root = Path::new(&f.root);
    std::fs::write(root.join("ten"), [7u8; 10]).unwrap();
    std::fs::write(root.join("eleven"), [7u8; 11]).unwrap();
    let broker = Broker::builder().build().unwrap();
    let grant = grant(
        &f.root,
        "read-write",
        "[\"read\", \"write\"]",
        "max_bytes = 10",
    );
    let c = cell(&broker, "exact", &grant);
    assert_eq!(
        req(&c, "read", &f.root, "ten"),
        Ok(Value::Bytes(vec![7; 10]))
    );
    assert_eq!(
        req(&c, "read", &f.root, "eleven").unwrap_err().code,
        ErrorCode::LimitValue
    );
    assert_eq!(
        write_bytes(&c, &f.root, "w10", vec![1; 10]),
        Ok(Value::Int(10))
    );
    assert_eq!(std::fs::read(root.join("w10")).unwrap(), vec![1; 10]);
    assert_eq!(
        write_bytes(&c, &f.root, "w11", vec![1; 11])
            .unwrap_err()
            .code,
        ErrorCode::LimitValue
    );
    assert!(!root.join("w11").exists());
}

#[test]
fn a_fifo_under_the_root_is_refused_without_blocking() {
    let f = fixture();
    let fifo = Path::new(&f.root).join("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "fifo",
        &grant(&f.root, "read-write", "[\"*\"]", ""),
    );
    // Nobody holds the other end: an open that waited for one would never return.
    let err = req(&c, "read", &f.root, "pipe").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    assert!(err.message.contains("not a regular file"), "{err}");
    // Neither a listing of it nor a path through it opens it: both need a directory.
    for (action, path) in [("list", "pipe"), ("read", "pipe/x"), ("stat", "pipe/x")] {
        let err = req(&c, action, &f.root, path).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidArgument,
            "{action} {path}: {err}"
        );
        assert!(
            err.message.contains("not a directory"),
            "{action} {path}: {err}"
        );
    }
    let err = write_bytes(&c, &f.root, "pipe", b"x".to_vec()).unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed, "{err}");
    let stat = req(&c, "stat", &f.root, "pipe").unwrap();
    let Value::Map(stat) = stat else {
        panic!("stat is a map: {stat:?}")
    };
    assert_eq!(stat["type"], s("other"));
    assert_eq!(
        rustix::fs::FileType::from_raw_mode(rustix::fs::stat(&fifo).unwrap().st_mode),
        rustix::fs::FileType::Fifo
    );
}

#[test]
fn a_write_the_quota_refuses_never_runs() {
    let f = fixture();
    let root = Path::new(&f.root);
    let broker = Broker::builder().build().unwrap();
    let grant = grant(
        &f.root,
        "read-write",
        "[\"write\"]",
        "quota = { requests = 1, bytes = 4096 }",
    );
    let c = cell(&broker, "quota", &grant);
    // Its payload alone is over the byte quota: refused before the capability runs.
    let err = write_bytes(&c, &f.root, "big", vec![1; 5000]).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota, "{err}");
    assert!(!root.join("big").exists(), "a refused write wrote");
    // The refusal did not count: one request still fits, the next does not.
    assert_eq!(
        write_bytes(&c, &f.root, "one", vec![1; 4]),
        Ok(Value::Int(4))
    );
    let err = write_bytes(&c, &f.root, "two", vec![1; 4]).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota, "{err}");
    assert!(!root.join("two").exists(), "a refused write wrote");
}

/// A file whose size says nothing of its contents (procfs reports 0 bytes) is read up to the
/// cap and refused once it holds more, rather than cut short.
#[test]
fn a_file_larger_than_its_reported_size_is_refused_past_the_cap() {
    let root = "/proc/sys/kernel";
    let Ok(text) = std::fs::read(Path::new(root).join("ostype")) else {
        eprintln!(
            "SKIPPED a_file_larger_than_its_reported_size_is_refused_past_the_cap: no {root}/ostype"
        );
        return;
    };
    assert!(
        text.len() > 3
            && std::fs::metadata(Path::new(root).join("ostype"))
                .unwrap()
                .len()
                <= 3
    );
    let broker = Broker::builder().build().unwrap();
    let small = cell(
        &broker,
        "small",
        &grant(root, "read", "[\"read\"]", "max_bytes = 3\n"),
    );
    let err = req(&small, "read", root, "ostype").unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue, "{err}");
    let cap = text.len();
    let exact = cell(
        &broker,
        "exact",
        &grant(root, "read", "[\"read\"]", &format!("max_bytes = {cap}\n")),
    );
    assert_eq!(req(&exact, "read", root, "ostype"), Ok(Value::Bytes(text)));
}

#[test]
fn stat_reports_the_modification_time_in_ms_and_the_permission_bits() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let file = Path::new(&f.root).join("a.txt");
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(1_234_567_891, 987_654_321);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4640)).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "stat", &grant(&f.root, "read", "[\"stat\"]", ""));
    let Ok(Value::Map(st)) = req(&c, "stat", &f.root, "a.txt") else {
        panic!("stat")
    };
    assert_eq!(st["modified_ms"], Value::Int(1_234_567_891_987));
    assert_eq!(st["mode"], Value::Int(0o4640));
}

/// A trailing `/` asks for a directory; `remove` of a symlink removes the link, wherever it
/// points (a directory, nothing) and never what it points to.
#[test]
fn a_trailing_slash_needs_a_directory_and_links_are_removed_not_followed() {
    let f = fixture();
    let root = Path::new(&f.root);
    std::os::unix::fs::symlink("sub", root.join("to-dir")).unwrap();
    std::os::unix::fs::symlink("missing", root.join("dangling")).unwrap();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "rm", &grant(&f.root, "read-write", "[\"*\"]", ""));
    let err = req(&c, "read", &f.root, "a.txt/").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    assert!(err.message.contains("not a directory"), "{err}");
    for link in ["to-dir", "dangling"] {
        assert_eq!(req(&c, "remove", &f.root, link), Ok(Value::Unit), "{link}");
        assert!(
            std::fs::symlink_metadata(root.join(link)).is_err(),
            "{link}"
        );
    }
    assert_eq!(std::fs::read(root.join("sub/b.txt")).unwrap(), b"beta");
}
