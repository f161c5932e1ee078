//! deploy/: the Kubernetes manifests, the Helm chart (rendered by a small renderer for the
//! subset of the template language it uses) and the Containerfile, parsed and checked against
//! what the server really accepts.

use cell_service::cli::ServeArgs;
use clap::Parser;
use serde_yaml::Value as Y;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn docs(text: &str) -> Vec<Y> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|y: &Y| !y.is_null())
        .collect()
}

#[derive(Parser)]
struct Cell {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Serve(ServeArgs),
}

/// The container's args are a `serve` the CLI accepts.
fn check_args(args: &[String]) -> ServeArgs {
    let argv = std::iter::once("cell".to_string()).chain(args.iter().cloned());
    match Cell::try_parse_from(argv) {
        Ok(Cell {
            command: Sub::Serve(a),
        }) => a,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

fn strings(y: &Y) -> Vec<String> {
    y.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Checks one pod template: probes, limits, security context, grace above the drain grace.
fn check_pod(kind: &str, spec: &Y) {
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let args = check_args(&strings(&c["args"]));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz"),
        "{kind}"
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz"),
        "{kind}"
    );
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "{kind}: a memory limit"
    );
    assert!(
        c["resources"]["limits"]["cpu"].is_string(),
        "{kind}: a CPU limit"
    );
    let sc = &c["securityContext"];
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{kind}"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{kind}");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > args.drain_grace_s,
        "{kind}: the pod's grace must outlast the drain's"
    );
    let env: Vec<&str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"CELL_NODE") && env.contains(&"CELL_PEER_URL"),
        "{kind}: {env:?}"
    );
    let peer = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CELL_PEER_URL")
        .unwrap();
    assert!(peer["value"].as_str().unwrap().contains("{node}"), "{kind}");
    // The config files mounted where the args say.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(args.tenants.unwrap().starts_with("/etc/cell") && mounts.contains(&"/etc/cell"));
}

fn check_manifests(all: &[Y]) {
    let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let headless = all
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    let workload = all
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    assert_eq!(
        workload["spec"]["serviceName"],
        headless["metadata"]["name"]
    );
    for d in all
        .iter()
        .filter(|d| d["kind"] == "StatefulSet" || d["kind"] == "DaemonSet")
    {
        let selector = &d["spec"]["selector"]["matchLabels"];
        assert_eq!(&d["spec"]["template"]["metadata"]["labels"], selector);
        check_pod(d["kind"].as_str().unwrap(), &d["spec"]);
    }
    for cm in all.iter().filter(|d| d["kind"] == "ConfigMap") {
        let policy: toml::Table =
            toml::from_str(cm["data"]["policy.toml"].as_str().unwrap()).unwrap();
        cell_service::Tenants::from_toml(cm["data"]["tenants.toml"].as_str().unwrap(), &policy)
            .unwrap_or_else(|e| panic!("{kinds:?}: {e}"));
    }
}

#[test]
fn kubernetes_manifests_parse_and_hold_together() {
    let dir = deploy().join("kubernetes");
    let mut all = Vec::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        all.extend(docs(&std::fs::read_to_string(&path).unwrap()));
    }
    check_manifests(&all);
    let ds = all
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the microvm DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let kvm = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["hostPath"]["path"] == "/dev/kvm")
        .expect("/dev/kvm");
    assert_eq!(kvm["hostPath"]["type"].as_str(), Some("CharDevice"));
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/dev/kvm")
    );
    assert!(all.iter().any(|d| d["kind"] == "ConfigMap"));
}

/// Renders `{{ .Release.Name }}`, `{{ .Values.a.b }}`, `| quote`, `toYaml X | nindent N` and
/// `X | nindent N` with `{{-` trimming — all the chart uses; anything else fails the test.
fn render(template: &str, values: &Y, release: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let mut before = &rest[..start];
        let body_start = start + 2;
        let end = rest[body_start..].find("}}").unwrap() + body_start;
        let mut expr = rest[body_start..end].trim();
        if let Some(e) = expr.strip_prefix('-') {
            before = before.trim_end();
            expr = e.trim();
        }
        out.push_str(before);
        let lookup = |path: &str| -> Y {
            if path == ".Release.Name" {
                return Y::String(release.into());
            }
            let mut v = values;
            for key in path
                .strip_prefix(".Values.")
                .unwrap_or_else(|| panic!("unknown {path}"))
                .split('.')
            {
                v = &v[key];
            }
            assert!(!v.is_null(), "{path} is not in values.yaml");
            v.clone()
        };
        let scalar = |v: &Y| match v {
            Y::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
        };
        let parts: Vec<&str> = expr.split('|').map(str::trim).collect();
        let text = match parts.as_slice() {
            [p] => scalar(&lookup(p)),
            [p, "quote"] => format!("{:?}", scalar(&lookup(p))),
            [p, n] if n.starts_with("nindent ") => {
                let (to_yaml, p) = match p.strip_prefix("toYaml ") {
                    Some(p) => (true, p.trim()),
                    None => (false, *p),
                };
                let v = lookup(p);
                let text = if to_yaml {
                    serde_yaml::to_string(&v).unwrap()
                } else {
                    scalar(&v)
                };
                let pad = " ".repeat(n["nindent ".len()..].parse().unwrap());
                text.trim_end()
                    .lines()
                    .map(|l| format!("\n{pad}{l}"))
                    .collect()
            }
            _ => panic!("the renderer does not know `{expr}`"),
        };
        out.push_str(&text);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn helm_chart_renders_to_the_same_shape() {
    let chart = deploy().join("helm/cell");
    let meta: Y =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(
        (meta["apiVersion"].as_str(), meta["name"].as_str()),
        (Some("v2"), Some("cell"))
    );
    let values: Y =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let mut all = Vec::new();
    for f in std::fs::read_dir(chart.join("templates")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        all.extend(docs(&render(&text, &values, "cellrel")));
    }
    check_manifests(&all);
    let sts = all.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(sts["metadata"]["name"].as_str(), Some("cellrel"));
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(3));
}

#[test]
fn containerfile_builds_a_binary_that_exists_and_runs_serve() {
    let text = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    let build = text.lines().find(|l| l.contains("cargo build")).unwrap();
    let words: Vec<&str> = build.split_whitespace().collect();
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    let (package, bin) = (after("-p"), after("--bin"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let found = workspace["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| {
            let manifest: toml::Table = toml::from_str(
                &std::fs::read_to_string(root.join(m.as_str().unwrap()).join("Cargo.toml"))
                    .unwrap(),
            )
            .unwrap();
            manifest["package"]["name"].as_str() == Some(package)
                && manifest
                    .get("bin")
                    .and_then(|b| b.as_array())
                    .is_none_or(|bins| bins.iter().any(|b| b["name"].as_str() == Some(bin)))
        });
    assert!(found, "no workspace package {package} with a binary {bin}");
    let cmd = text.lines().find(|l| l.starts_with("CMD")).unwrap();
    let args: Vec<String> = serde_json::from_str(cmd.trim_start_matches("CMD").trim()).unwrap();
    check_args(&args);
    assert!(text.contains("ENTRYPOINT"));
}
