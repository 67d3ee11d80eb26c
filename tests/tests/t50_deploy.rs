//! Syntax and consistency checks of `deploy/`: files that can't run here
//! (compose, Kubernetes, systemd) are checked with the tools that exist.
//!
//! - every YAML file parses (python3 + PyYAML, installed by
//!   scripts/setup-debian.sh), and the compose file and Kubernetes manifests
//!   have the shape the docs promise;
//! - every TOML config embedded in or next to them parses (python3 tomllib)
//!   and uses only keys of the fully commented examples deploy/agent.toml and
//!   deploy/coordinator.toml (set or commented out there; the crates' own
//!   tests parse the examples with `deny_unknown_fields`); agent configs also
//!   parse as the agent's own `ServeConfig`, and every `[tls]` table as
//!   `TlsOptions`;
//! - every lockstep process of compose and Kubernetes runs with mutual TLS
//!   (its own identity's certificate from the shared volume or the Secret),
//!   connects to MariaDB as the least-privilege user `lockstep` with the
//!   password in its environment (no `root@`, no password on a command line),
//!   and Kubernetes has the NetworkPolicies the docs describe;
//! - `kubectl kustomize deploy/k8s` builds, where kubectl exists;
//! - `systemd-analyze verify` accepts the units without a single warning;
//! - `bash -n` accepts the demo and the scripts.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use lockstep_tests::deploy::{
    AGENT_GRANTS, MARIADB_INIT, agent_config, check_config, files_under, have, repo, run,
    secret_in, str_at, tls_table, toml_keys, uncommented, yaml_docs,
};
use serde_json::Value;

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
    let tls_mount = |svc: &Value, name: &str| -> anyhow::Result<()> {
        ensure!(
            svc["volumes"]
                .as_array()
                .is_some_and(|v| v.iter().any(|m| m == "tls:/var/lib/lockstep/tls:ro")),
            "{name} does not mount the certificates (tls volume, read-only)"
        );
        Ok(())
    };
    // The certificate and key a service's command passes.
    let own_certificate = |cmd: &str, identity: &str, name: &str| -> anyhow::Result<()> {
        for (flag, file) in [("--tls-cert", "pem"), ("--tls-key", "key")] {
            ensure!(
                cmd.contains(&format!(
                    "\"{flag}\",\"/var/lib/lockstep/tls/{identity}.{file}\""
                )),
                "{name} must pass {flag} for {identity}: {cmd}"
            );
        }
        Ok(())
    };
    let certs_done = |svc: &Value, name: &str| -> anyhow::Result<()> {
        ensure!(
            svc["depends_on"]["certs"]["condition"] == "service_completed_successfully",
            "{name} must wait for the certs service: {}",
            svc["depends_on"]
        );
        Ok(())
    };
    for i in 1..=3 {
        let name = format!("coordinator{i}");
        let coord = services.get(&name).with_context(|| format!("no {name}"))?;
        let cmd = coord["command"].to_string();
        ensure!(
            cmd.contains("lockstep-coordinator") && cmd.contains(&format!("\"--id\",\"{i}\"")),
            "{name} command: {cmd}"
        );
        own_certificate(&cmd, &format!("coordinator-{i}"), &name)?;
        tls_mount(coord, &name)?;
        certs_done(coord, &name)?;
        let db = services
            .get(format!("db{i}"))
            .with_context(|| format!("no db{i}"))?;
        ensure!(
            db.get("networks").and_then(|n| n.get("lockstep")).is_some(),
            "db{i} is not on the lockstep network"
        );
        ensure!(
            db["volumes"].as_array().is_some_and(|v| v
                .iter()
                .any(|m| m == "./mariadb-init:/docker-entrypoint-initdb.d:ro")),
            "db{i} does not create the agent's user (mariadb-init)"
        );
        ensure!(
            db["environment"]["LOCKSTEP_MYSQL_PASSWORD"].is_string(),
            "db{i} needs LOCKSTEP_MYSQL_PASSWORD for the agent's user"
        );
        let name = format!("agent{i}");
        let agent = services.get(&name).with_context(|| format!("no {name}"))?;
        ensure!(
            agent["network_mode"] == format!("service:db{i}"),
            "{name} is not db{i}'s sidecar"
        );
        let cmd = agent["command"].to_string();
        ensure!(
            cmd.contains(&format!("\"--advertise\",\"http://db{i}:7400\"")),
            "{name} must advertise db{i}'s service name: {cmd}"
        );
        own_certificate(&cmd, &format!("agent-db{i}"), &name)?;
        tls_mount(agent, &name)?;
        certs_done(agent, &name)?;
        let env = &agent["environment"];
        ensure!(
            env["LOCKSTEP_MYSQL_PASSWORD"].is_string() && env.get("LOCKSTEP_MYSQL").is_none(),
            "{name}: the password goes in LOCKSTEP_MYSQL_PASSWORD, the URL (without it) in agent.toml: {env}"
        );
    }
    // The certs service issues each identity for its own service name.
    let certs = services.get("certs").context("no certs service")?;
    let script = certs["command"].to_string();
    for needle in [
        "--identity coordinator-$$i --host coordinator$$i",
        "--agent db$$i --host db$$i",
        "ca.key",
    ] {
        ensure!(
            script.contains(needle),
            "certs service lacks `{needle}`: {script}"
        );
    }
    let cli = services.get("cli").context("no cli service")?;
    ensure!(
        cli["environment"]["LOCKSTEP_TLS_CERT"] == "/var/lib/lockstep/tls/operator.pem",
        "the cli service must be the operator: {}",
        cli["environment"]
    );
    for (name, svc) in services.as_object().context("services")? {
        for field in ["command", "environment", "entrypoint"] {
            let text = svc[field].to_string();
            ensure!(
                secret_in(&text).is_none(),
                "{name}'s {field} holds a password or root@: {text}"
            );
        }
    }

    let coordinator = std::fs::read_to_string(dir.join("coordinator.toml"))?;
    check_config(
        &coordinator,
        "deploy/compose/coordinator.toml",
        "deploy/coordinator.toml",
    )?;
    let agent = std::fs::read_to_string(dir.join("agent.toml"))?;
    check_config(&agent, "deploy/compose/agent.toml", "deploy/agent.toml")?;
    for (text, what) in [
        (&coordinator, "deploy/compose/coordinator.toml"),
        (&agent, "deploy/compose/agent.toml"),
    ] {
        let tls = tls_table(text, what)?;
        ensure!(
            tls.ca.as_deref() == Some(Path::new("/var/lib/lockstep/tls/ca.pem")),
            "{what}: [tls] ca {:?}",
            tls.ca
        );
    }
    let parsed = agent_config(&agent, "deploy/compose/agent.toml")?;
    ensure!(
        parsed.mysql == "mysql://lockstep@127.0.0.1:3306",
        "compose agents must connect as lockstep, without a password in the URL: {}",
        parsed.mysql
    );
    let init = std::fs::read_to_string(repo().join(MARIADB_INIT))?;
    ensure!(
        init.contains(AGENT_GRANTS),
        "{MARIADB_INIT} must grant exactly:\n{AGENT_GRANTS}"
    );

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
    ensure!(
        dockerfile.contains("/var/lib/lockstep/tls")
            && dockerfile.contains("/var/lib/lockstep/pki"),
        "Dockerfile: the tls and pki volumes need their directories (owned by lockstep)"
    );

    let compose_ok = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if compose_ok {
        run(Command::new("docker")
            .args(["compose", "-f"])
            .arg(dir.join("docker-compose.yml"))
            .args(["config", "--quiet"]))?;
    } else {
        eprintln!(
            "docker compose not installed: `docker compose config` not run (the checks above did)"
        );
    }
    Ok(())
}

/// The examples' commented-out settings are real keys: switched on, the
/// agent's parses as its `ServeConfig`, and both `[tls]` tables as
/// `TlsOptions`.
#[test]
fn the_examples_commented_tls_settings_are_real_keys() -> anyhow::Result<()> {
    for example in ["deploy/agent.toml", "deploy/coordinator.toml"] {
        let text = uncommented(&std::fs::read_to_string(repo().join(example))?);
        let tls = tls_table(&text, example)?;
        ensure!(
            tls.cert.is_some() && tls.key.is_some() && tls.ca.is_some(),
            "{example}: the commented [tls] needs cert, key and ca: {tls:?}"
        );
        let keys = toml_keys(&text, example)?;
        ensure!(
            keys.iter().any(|k| k == "insecure_plaintext"),
            "{example}: insecure_plaintext is not documented"
        );
    }
    let text = uncommented(&std::fs::read_to_string(repo().join("deploy/agent.toml"))?);
    let agent = agent_config(&text, "deploy/agent.toml with its comments switched on")?;
    ensure!(
        agent.access.coordinators == ["coordinator-*"] && agent.access.agents == ["agent-*"],
        "deploy/agent.toml: [access] shows the defaults: {:?}",
        agent.access
    );
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
        containers.iter().any(|c| c["args"]
            .to_string()
            .contains("http://$(POD_NAME).mariadb:7400")),
        "the agent sidecar must advertise its pod's DNS name (its certificate's)"
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

    k8s_workloads_use_tls_and_the_least_privileged_user(&objects)?;
    k8s_network_policies_allow_only_lockstep_paths(&objects)?;
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))?;
    for file in ["networkpolicy.yaml", "tls.yaml"] {
        ensure!(
            kustomization.contains(&format!("  - {file}")),
            "kustomization.yaml lacks {file}"
        );
    }

    if have("kubectl") {
        let out = run(Command::new("kubectl").arg("kustomize").arg(&dir))?;
        let built = String::from_utf8(out.stdout)?;
        ensure!(
            built.matches("\nkind: StatefulSet").count() == 2,
            "kustomize output lacks the StatefulSets:\n{built}"
        );
        ensure!(
            built.matches("\nkind: NetworkPolicy").count() >= 4,
            "kustomize output lacks the NetworkPolicies:\n{built}"
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
        ensure!(
            text.contains("\nExecReload=/bin/kill -HUP $MAINPID\n")
                && text.contains("#Environment=LOCKSTEP_TLS_CERT="),
            "{}: `systemctl reload` must send SIGHUP (reloads the TLS files), and the TLS settings be shown",
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

/// Every lockstep container of the StatefulSets starts through tls-sync.sh
/// with its own identity, mounts the Secret lockstep-tls, and its config's
/// `[tls]` names the files tls-sync.sh writes; nothing passes `root@` or a
/// password on a command line; the agent connects as `lockstep` with the
/// password from a Secret; the MariaDB init script is the compose one.
fn k8s_workloads_use_tls_and_the_least_privileged_user(objects: &[Value]) -> anyhow::Result<()> {
    let config_of = |name: &str, key: &str| -> anyhow::Result<String> {
        objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
            .and_then(|o| o["data"][key].as_str())
            .map(str::to_string)
            .with_context(|| format!("no ConfigMap {name} with {key}"))
    };
    let mut lockstep_containers = 0;
    for set in objects.iter().filter(|o| o["kind"] == "StatefulSet") {
        let set_name = set["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &set["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().context("volumes")?;
        let volume = |name: &str| volumes.iter().find(|v| v["name"] == name);
        for c in pod["containers"].as_array().context("containers")? {
            let what = format!("{set_name}/{}", c["name"].as_str().unwrap_or_default());
            let line = format!("{} {}", c["command"], c["args"]);
            ensure!(
                secret_in(&line).is_none(),
                "{what}: a password or root@ on the command line: {line}"
            );
            for env in c["env"].as_array().into_iter().flatten() {
                ensure!(
                    env["value"].as_str().is_none_or(|v| secret_in(v).is_none()),
                    "{what}: a password or root@ in env {env}"
                );
                ensure!(
                    env["name"] != "LOCKSTEP_MYSQL",
                    "{what}: the MySQL URL belongs in agent.toml, its password in LOCKSTEP_MYSQL_PASSWORD"
                );
            }
            if !c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("lockstep"))
            {
                continue;
            }
            lockstep_containers += 1;
            let (identity, config_map, key) = if line.contains("lockstep-coordinator ") {
                (
                    "coordinator-$id",
                    "lockstep-coordinator",
                    "coordinator.toml",
                )
            } else {
                ("agent-$(POD_NAME)", "lockstep-agent", "agent.toml")
            };
            ensure!(
                line.contains(&format!("/etc/lockstep/tls-sync/tls-sync.sh {identity}"))
                    || line.contains(&format!(
                        "\"/etc/lockstep/tls-sync/tls-sync.sh\",\"{identity}\""
                    )),
                "{what} must start through tls-sync.sh as {identity}: {line}"
            );
            let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
            let mount_of = |path: &str| {
                mounts
                    .iter()
                    .find(|m| m["mountPath"] == path)
                    .and_then(|m| volume(m["name"].as_str().unwrap_or_default()))
            };
            ensure!(
                mount_of("/etc/lockstep/tls-secret")
                    .is_some_and(|v| v["secret"]["secretName"] == "lockstep-tls"),
                "{what} does not mount the Secret lockstep-tls at /etc/lockstep/tls-secret"
            );
            ensure!(
                mount_of("/run/lockstep/tls").is_some_and(|v| v["emptyDir"]["medium"] == "Memory"),
                "{what}: tls-sync.sh copies to /run/lockstep/tls, an in-memory emptyDir"
            );
            ensure!(
                mount_of("/etc/lockstep/tls-sync")
                    .is_some_and(|v| v["configMap"]["name"] == "lockstep-tls-sync"),
                "{what} does not mount tls-sync.sh"
            );
            let text = config_of(config_map, key)?;
            let tls = tls_table(&text, &format!("ConfigMap {config_map}"))?;
            ensure!(
                tls.cert.as_deref() == Some(Path::new("/run/lockstep/tls/tls.pem"))
                    && tls.key.as_deref() == Some(Path::new("/run/lockstep/tls/tls.key"))
                    && tls.ca.as_deref() == Some(Path::new("/run/lockstep/tls/ca.pem")),
                "ConfigMap {config_map}: [tls] must name tls-sync.sh's files: {tls:?}"
            );
            if config_map == "lockstep-agent" {
                let agent = agent_config(&text, "ConfigMap lockstep-agent")?;
                ensure!(
                    agent.mysql == "mysql://lockstep@127.0.0.1:3306",
                    "the agent must connect as lockstep without a password in the URL: {}",
                    agent.mysql
                );
                let password = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["name"] == "LOCKSTEP_MYSQL_PASSWORD")
                    .with_context(|| format!("{what}: no LOCKSTEP_MYSQL_PASSWORD"))?;
                ensure!(
                    password["valueFrom"]["secretKeyRef"]["name"] == "lockstep-mysql",
                    "{what}: the password must come from the Secret lockstep-mysql: {password}"
                );
            }
        }
    }
    ensure!(
        lockstep_containers == 2,
        "expected the coordinator and the agent sidecar, found {lockstep_containers} lockstep containers"
    );
    let init = config_of("mariadb-init", "lockstep-user.sh")?;
    ensure!(
        init == std::fs::read_to_string(repo().join(MARIADB_INIT))?,
        "ConfigMap mariadb-init must carry {MARIADB_INIT} unchanged"
    );
    let sync = config_of("lockstep-tls-sync", "tls-sync.sh")?;
    run(Command::new("sh").args(["-n", "-c", &sync]))
        .context("tls-sync.sh (ConfigMap lockstep-tls-sync) is not valid sh")?;
    Ok(())
}

/// The NetworkPolicies: a default deny, and only the lockstep paths open.
fn k8s_network_policies_allow_only_lockstep_paths(objects: &[Value]) -> anyhow::Result<()> {
    let policy = |name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == name)
            .with_context(|| format!("no NetworkPolicy {name}"))
    };
    let deny = &policy("default-deny")?["spec"];
    ensure!(
        deny["podSelector"] == serde_json::json!({})
            && deny["policyTypes"] == serde_json::json!(["Ingress", "Egress"])
            && deny.get("ingress").is_none()
            && deny.get("egress").is_none(),
        "default-deny must select every pod and allow nothing: {deny}"
    );
    let coordinators = serde_json::json!({"app.kubernetes.io/name": "lockstep-coordinator"});
    let agents = serde_json::json!({"lockstep/agent": "true"});
    let cli = serde_json::json!({"lockstep/cli": "true"});
    // The pod labels a rule's peers select, and its ports.
    let rule = |r: &Value, peers: &str| -> (Vec<Value>, Vec<Value>) {
        let labels = r[peers]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                if p.get("namespaceSelector").is_some() && p.get("podSelector").is_none() {
                    serde_json::json!({"namespace": p["namespaceSelector"]["matchLabels"]})
                } else {
                    p["podSelector"]["matchLabels"].clone()
                }
            })
            .collect();
        let ports = r["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["port"].clone())
            .collect();
        (labels, ports)
    };
    let allows = |name: &str, dir: &str, from: &Value, port: u16| -> anyhow::Result<bool> {
        let spec = &policy(name)?["spec"];
        let peers = if dir == "ingress" { "from" } else { "to" };
        Ok(spec[dir].as_array().into_iter().flatten().any(|r| {
            let (labels, ports) = rule(r, peers);
            labels.contains(from) && ports.contains(&serde_json::json!(port))
        }))
    };
    for (name, dir, peer, port) in [
        ("lockstep-coordinator", "ingress", &coordinators, 7300),
        ("lockstep-coordinator", "ingress", &agents, 7300),
        ("lockstep-coordinator", "ingress", &cli, 7300),
        (
            "lockstep-coordinator",
            "ingress",
            &serde_json::json!({"namespace": {"lockstep/operators": "true"}}),
            7300,
        ),
        ("lockstep-coordinator", "egress", &coordinators, 7300),
        ("lockstep-coordinator", "egress", &agents, 7400),
        ("lockstep-agent", "ingress", &coordinators, 7400),
        ("lockstep-agent", "ingress", &agents, 7400),
        ("lockstep-agent", "egress", &coordinators, 7300),
        ("lockstep-agent", "egress", &agents, 7400),
        (
            "mariadb-clients",
            "ingress",
            &serde_json::json!({"lockstep/mariadb-client": "true"}),
            3306,
        ),
        ("lockstep-cli", "egress", &coordinators, 7300),
    ] {
        ensure!(
            allows(name, dir, peer, port)?,
            "NetworkPolicy {name} must allow {dir} {peer} on {port}"
        );
    }
    // Nothing else: every port any policy opens is one of lockstep's (or DNS).
    for p in objects.iter().filter(|o| o["kind"] == "NetworkPolicy") {
        for dir in ["ingress", "egress"] {
            for r in p["spec"][dir].as_array().into_iter().flatten() {
                let (_, ports) = rule(r, if dir == "ingress" { "from" } else { "to" });
                ensure!(
                    !ports.is_empty()
                        && ports
                            .iter()
                            .all(|p| [7300, 7400, 3306, 53].contains(&p.as_u64().unwrap_or(0))),
                    "NetworkPolicy {}: {dir} rule opens {ports:?}",
                    p["metadata"]["name"]
                );
            }
        }
    }
    // MariaDB's port: nobody but the labelled application.
    for p in objects.iter().filter(|o| o["kind"] == "NetworkPolicy") {
        for r in p["spec"]["ingress"].as_array().into_iter().flatten() {
            let (labels, ports) = rule(r, "from");
            if ports.contains(&serde_json::json!(3306)) {
                ensure!(
                    labels == [serde_json::json!({"lockstep/mariadb-client": "true"})],
                    "3306 is open to {labels:?} in {}",
                    p["metadata"]["name"]
                );
            }
        }
    }
    let mariadb = objects
        .iter()
        .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == "mariadb")
        .context("no StatefulSet mariadb")?;
    ensure!(
        mariadb["spec"]["template"]["metadata"]["labels"]["lockstep/agent"] == "true",
        "the mariadb pods run an agent: they need the label lockstep/agent=true"
    );
    Ok(())
}
