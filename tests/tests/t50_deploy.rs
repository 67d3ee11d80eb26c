//! Syntax and consistency checks of `deploy/`: files that can't run here
//! (compose, Kubernetes, systemd) are checked with the tools that exist.
//!
//! - every YAML file parses (python3 + PyYAML, installed by
//!   scripts/setup-debian.sh), and the compose file and Kubernetes manifests
//!   have the shape the docs promise;
//! - every TOML config embedded in or next to them parses (python3 tomllib)
//!   and uses only keys of the fully commented examples deploy/agent.toml and
//!   deploy/coordinator.toml (which the crates' own tests parse with
//!   `deny_unknown_fields`);
//! - `kubectl kustomize deploy/k8s` builds, where kubectl exists;
//! - `systemd-analyze verify` accepts the units without a single warning;
//! - `bash -n` accepts the demo and the scripts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every YAML document of `path`, as JSON (python3 + PyYAML `safe_load_all`).
fn yaml_docs(path: &Path) -> anyhow::Result<Vec<Value>> {
    const PY: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
        print(json.dumps(docs))";
    let out = run(Command::new("python3").args(["-c", PY]).arg(path)).with_context(|| {
        format!(
            "parse {} as YAML (needs python3-yaml: bash scripts/setup-debian.sh)",
            path.display()
        )
    })?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The top-level keys and `[table]` keys of a TOML text, as "key" and
/// "table.key" (python3 tomllib); fails on a syntax error.
fn toml_keys(text: &str, what: &str) -> anyhow::Result<Vec<String>> {
    const PY: &str = "import json, sys, tomllib\n\
        t = tomllib.loads(sys.stdin.read())\n\
        keys = []\n\
        for k, v in t.items():\n\
        \x20   keys += [k + '.' + s for s in v] if isinstance(v, dict) else [k]\n\
        print(json.dumps(keys))";
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run python3")?;
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{what} is not valid TOML:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Checks that `text` parses and uses only keys of the commented example.
fn check_config(text: &str, what: &str, example: &str) -> anyhow::Result<()> {
    let allowed = toml_keys(&std::fs::read_to_string(repo().join(example))?, example)?;
    for key in toml_keys(text, what)? {
        ensure!(
            allowed.contains(&key),
            "{what}: key `{key}` is not in {example} (known: {allowed:?})"
        );
    }
    Ok(())
}

fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, exts, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

#[test]
fn every_yaml_file_under_deploy_parses() -> anyhow::Result<()> {
    let mut files = Vec::new();
    files_under(&repo().join("deploy"), &["yml", "yaml"], &mut files)?;
    ensure!(
        files.len() >= 4,
        "expected the compose file and the k8s manifests, found {files:?}"
    );
    for f in &files {
        let docs = yaml_docs(f)?;
        ensure!(!docs.is_empty(), "{} has no YAML document", f.display());
        eprintln!("{}: {} document(s)", f.display(), docs.len());
    }
    Ok(())
}

#[test]
fn compose_runs_three_coordinators_and_an_agent_sidecar_per_database() -> anyhow::Result<()> {
    let dir = repo().join("deploy/compose");
    let docs = yaml_docs(&dir.join("docker-compose.yml"))?;
    let services = docs[0].get("services").context("no services")?;
    for i in 1..=3 {
        let coord = services
            .get(format!("coordinator{i}"))
            .with_context(|| format!("no coordinator{i}"))?;
        let cmd = coord["command"].to_string();
        ensure!(
            cmd.contains("lockstep-coordinator") && cmd.contains(&format!("\"--id\",\"{i}\"")),
            "coordinator{i} command: {cmd}"
        );
        let db = services
            .get(format!("db{i}"))
            .with_context(|| format!("no db{i}"))?;
        ensure!(
            db.get("networks").and_then(|n| n.get("lockstep")).is_some(),
            "db{i} is not on the lockstep network"
        );
        let agent = services
            .get(format!("agent{i}"))
            .with_context(|| format!("no agent{i}"))?;
        ensure!(
            agent["network_mode"] == format!("service:db{i}"),
            "agent{i} is not db{i}'s sidecar"
        );
        let cmd = agent["command"].to_string();
        ensure!(
            cmd.contains(&format!("\"--advertise\",\"http://db{i}:7400\"")),
            "agent{i} must advertise db{i}'s service name: {cmd}"
        );
    }
    check_config(
        &std::fs::read_to_string(dir.join("coordinator.toml"))?,
        "deploy/compose/coordinator.toml",
        "deploy/coordinator.toml",
    )?;
    check_config(
        &std::fs::read_to_string(dir.join("agent.toml"))?,
        "deploy/compose/agent.toml",
        "deploy/agent.toml",
    )?;
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile"))?;
    ensure!(
        dockerfile.lines().any(|l| l.starts_with("FROM debian:")),
        "Dockerfile: not a Debian base"
    );
    for bin in ["lockstep", "lockstep-agent", "lockstep-coordinator"] {
        ensure!(
            dockerfile.contains(&format!("target/release/{bin} "))
                || dockerfile.contains(&format!("target/release/{bin}\n")),
            "Dockerfile does not copy {bin}"
        );
    }
    Ok(())
}

#[test]
fn k8s_manifests_have_the_statefulsets_services_and_configmaps() -> anyhow::Result<()> {
    let dir = repo().join("deploy/k8s");
    let mut files = Vec::new();
    files_under(&dir, &["yaml"], &mut files)?;
    let mut objects = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        for doc in yaml_docs(f)? {
            let kind = str_at(&doc, &["kind"])
                .with_context(|| format!("{}: a document without kind", f.display()))?;
            ensure!(
                str_at(&doc, &["apiVersion"]).is_some(),
                "{}: {kind} without apiVersion",
                f.display()
            );
            ensure!(
                str_at(&doc, &["metadata", "name"]).is_some(),
                "{}: {kind} without a name",
                f.display()
            );
            objects.push(doc);
        }
    }
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .with_context(|| format!("no {kind} {name}"))
    };
    let coord = find("StatefulSet", "lockstep-coordinator")?;
    ensure!(coord["spec"]["replicas"] == 3, "coordinators: 3 replicas");
    let svc = find(
        "Service",
        coord["spec"]["serviceName"].as_str().unwrap_or_default(),
    )?;
    ensure!(
        svc["spec"]["clusterIP"] == "None",
        "the coordinators' Service must be headless"
    );
    let db = find("StatefulSet", "mariadb")?;
    let containers = db["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?;
    ensure!(
        containers
            .iter()
            .any(|c| c["args"].to_string().contains("lockstep-agent"))
            && containers.iter().any(|c| c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("mariadb"))),
        "the mariadb pods need MariaDB and the agent sidecar"
    );
    ensure!(
        containers
            .iter()
            .any(|c| c["args"].to_string().contains("http://$(POD_IP):7400")),
        "the agent sidecar must advertise its pod IP"
    );
    for (cm, key, example) in [
        (
            "lockstep-coordinator",
            "coordinator.toml",
            "deploy/coordinator.toml",
        ),
        ("lockstep-agent", "agent.toml", "deploy/agent.toml"),
    ] {
        let text = find("ConfigMap", cm)?["data"][key]
            .as_str()
            .with_context(|| format!("ConfigMap {cm} has no {key}"))?;
        check_config(text, &format!("ConfigMap {cm}"), example)?;
    }
    // Coordinator peers must name the StatefulSet's pods through the headless Service.
    let toml = find("ConfigMap", "lockstep-coordinator")?["data"]["coordinator.toml"]
        .as_str()
        .unwrap_or_default();
    for i in 0..3 {
        let host = format!(
            "{}={}",
            i + 1,
            format_args!("http://lockstep-coordinator-{i}.lockstep-coordinator:7300")
        );
        ensure!(toml.contains(&host), "coordinator peers lack {host}");
    }

    if have("kubectl") {
        let out = run(Command::new("kubectl").arg("kustomize").arg(&dir))?;
        let built = String::from_utf8(out.stdout)?;
        ensure!(
            built.matches("\nkind: StatefulSet").count() == 2,
            "kustomize output lacks the StatefulSets:\n{built}"
        );
    } else {
        eprintln!(
            "kubectl not installed: `kubectl kustomize deploy/k8s` not run (the YAML checks above did)"
        );
    }
    Ok(())
}

#[test]
fn systemd_units_verify_without_warnings() -> anyhow::Result<()> {
    if !have("systemd-analyze") {
        bail!(
            "systemd-analyze is missing (Debian package `systemd`); it checks deploy/systemd/*.service"
        );
    }
    let tmp = tempfile::tempdir()?;
    // systemd-analyze verify needs ExecStart's binary: point it at a stand-in.
    let stand_in = tmp.path().join("bin");
    std::fs::create_dir(&stand_in)?;
    let mut units = Vec::new();
    files_under(&repo().join("deploy/systemd"), &["service"], &mut units)?;
    ensure!(
        units.len() >= 2,
        "expected the agent and coordinator units, found {units:?}"
    );
    for unit in &units {
        let text = std::fs::read_to_string(unit)?;
        ensure!(
            text.contains("/usr/local/bin/"),
            "{}: ExecStart is not under /usr/local/bin",
            unit.display()
        );
        for bin in ["lockstep-agent", "lockstep-coordinator"] {
            let p = stand_in.join(bin);
            std::fs::write(&p, "#!/bin/sh\n")?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        let copy = tmp.path().join(unit.file_name().context("unit name")?);
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/", &format!("{}/", stand_in.display())),
        )?;
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {} ({}):\n{stderr}",
            unit.display(),
            out.status
        );
        let config = text
            .split_whitespace()
            .skip_while(|w| *w != "--config")
            .nth(1)
            .with_context(|| format!("{}: ExecStart has no --config", unit.display()))?;
        ensure!(
            config.starts_with("/etc/lockstep/"),
            "{}: config {config}",
            unit.display()
        );
    }
    Ok(())
}

#[test]
fn shell_scripts_parse() -> anyhow::Result<()> {
    let mut scripts = Vec::new();
    files_under(&repo().join("deploy"), &["sh"], &mut scripts)?;
    files_under(&repo().join("scripts"), &["sh"], &mut scripts)?;
    ensure!(
        scripts.iter().any(|s| s.ends_with("deploy/demo.sh")),
        "no deploy/demo.sh"
    );
    for s in &scripts {
        run(Command::new("bash").arg("-n").arg(s))?;
    }
    Ok(())
}
