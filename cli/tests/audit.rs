//! The CLI's broker flags: the audit log, the kv store and secrets files.

use std::process::Command;

#[test]
fn the_cli_writes_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\n",
    )
    .unwrap();
    let script = dir.path().join("s.rhai");
    std::fs::write(
        &script,
        "post(type_of(request(\"clock\", \"wall\")));\n\
         try { request(\"random\", \"int\") } catch (e) { post(e.name) }\n\
         request(\"kv\", \"put\", #{key: \"a\", value: 1})",
    )
    .unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, "token = \"s3cr3t\"\n").unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["run", "--name", "cli-cell", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .arg("--kv-dir")
        .arg(dir.path().join("kv"))
        .arg("--secrets")
        .arg(&secrets)
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"i64\"") && stdout.contains("\"denied\""),
        "{stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the uncaught denial is a script error: {stdout}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<_> = lines
        .iter()
        .map(|l| {
            format!(
                "{} {}.{} {} {}",
                l["cell"].as_str().unwrap(),
                l["capability"].as_str().unwrap(),
                l["action"].as_str().unwrap(),
                l["decision"].as_str().unwrap(),
                l["rule"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "cli-cell clock.wall allow grants[0]",
            "cli-cell random.int deny default-deny",
            "cli-cell kv.put deny default-deny",
        ]
    );
    // A secrets file that does not parse is a configuration error (exit 3).
    std::fs::write(&secrets, "token = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["run", "--secrets"])
        .arg(&secrets)
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}
