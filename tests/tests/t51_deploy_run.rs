//! The scripts of `deploy/` run, with the real binaries and a real MariaDB:
//!
//! - the compose `certs` service issues each identity once, for its own
//!   service name, and keeps the CA's key out of the shared volume;
//! - `deploy/k8s/tls-secret.sh` makes the two Secrets with per-pod names and
//!   without the CA's key (where kubectl is installed);
//! - `tls-sync.sh` (ConfigMap lockstep-tls-sync) gives a coordinator its
//!   key from a group-readable "Secret" the coordinator itself refuses, and
//!   a changed Secret reaches the running coordinator through SIGHUP: it
//!   serves the new certificate without a restart, and the script's loop
//!   ends with the coordinator;
//! - the MariaDB init script creates `lockstep` with exactly the least
//!   grants (a quote and a backslash in the password survive), a dump works
//!   as that user with the password in `LOCKSTEP_MYSQL_PASSWORD`, and
//!   writing does not.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lockstep_tests::agent::run_cli_env;
use lockstep_tests::deploy::{have, repo, yaml_text_docs};
use lockstep_tests::{ChildProcess, MariaDb, MariaDbOptions, bin_path, init_tracing, ports, step};
use serde_json::Value;

/// Runs `cmd`, failing with its output unless it succeeds; its stdout.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// PATH with the lockstep binaries first.
fn path_with_binaries() -> anyhow::Result<String> {
    let bin = bin_path("lockstep")?;
    let dir = bin.parent().context("the binaries' directory")?;
    Ok(format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}

/// The DNS names a certificate is valid for (openssl).
fn dns_names(cert: &Path) -> anyhow::Result<Vec<String>> {
    ensure!(
        have("openssl"),
        "openssl is missing (Debian package openssl; bash scripts/setup-debian.sh)"
    );
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert))?;
    Ok(out
        .split([',', '\n'])
        .filter_map(|s| s.trim().strip_prefix("DNS:"))
        .map(str::to_string)
        .collect())
}

/// The SHA-256 fingerprint of a PEM certificate file.
fn fingerprint(pem: &Path) -> anyhow::Result<String> {
    Ok(run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem))?
    .trim()
    .to_string())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

/// The compose `certs` service's script, run twice with the real `lockstep`
/// in a temp dir standing for /var/lib/lockstep: each coordinator and agent
/// certificate is valid for its own service name only, keys are 0600, the
/// CA's key stays in the pki volume, and the second run changes nothing.
#[test]
fn compose_certs_service_issues_each_identity_once_for_its_service_name() -> anyhow::Result<()> {
    init_tracing();
    let compose = std::fs::read_to_string(repo().join("deploy/compose/docker-compose.yml"))?;
    let docs = yaml_text_docs(&compose)?;
    let command = docs[0]["services"]["certs"]["command"]
        .as_array()
        .context("certs: command")?;
    ensure!(
        command[0] == "/bin/sh" && command[1] == "-ec",
        "certs: {command:?}"
    );
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let script = command[2]
        .as_str()
        .context("certs: the script")?
        .replace("$$", "$")
        .replace("/var/lib/lockstep", &root.display().to_string());
    std::fs::create_dir(root.join("tls"))?;
    let path = path_with_binaries()?;
    let read_all = || -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut files = Vec::new();
        for dir in ["pki", "tls"] {
            for entry in std::fs::read_dir(root.join(dir))? {
                let p = entry?.path();
                files.push((p.display().to_string(), std::fs::read(&p)?));
            }
        }
        files.sort();
        Ok(files)
    };

    step!("run the certs service's script");
    run(Command::new("/bin/sh")
        .args(["-ec", &script])
        .env("PATH", &path))?;
    let tls = root.join("tls");
    ensure!(
        !tls.join("ca.key").exists() && root.join("pki/ca.key").exists(),
        "the CA's key must stay in the pki volume"
    );
    for (identity, host) in [
        ("coordinator-1", "coordinator1"),
        ("coordinator-2", "coordinator2"),
        ("coordinator-3", "coordinator3"),
        ("agent-db1", "db1"),
        ("agent-db2", "db2"),
        ("agent-db3", "db3"),
        ("operator", "localhost"),
        ("viewer", "localhost"),
    ] {
        let names = dns_names(&tls.join(format!("{identity}.pem")))?;
        ensure!(
            names == [host],
            "{identity} is valid for {names:?}, not just {host}"
        );
        let key = tls.join(format!("{identity}.key"));
        ensure!(
            mode(&key)? == 0o600,
            "{}: mode {:o}",
            key.display(),
            mode(&key)?
        );
    }
    ensure!(tls.join("ca.pem").exists(), "no ca.pem in the tls volume");

    step!("run it again: nothing is issued twice");
    let before = read_all()?;
    run(Command::new("/bin/sh")
        .args(["-ec", &script])
        .env("PATH", &path))?;
    ensure!(
        read_all()? == before,
        "a second run changed the certificates"
    );
    Ok(())
}

/// `tls-secret.sh PKI` prints the Secrets lockstep-tls (the CA certificate,
/// every coordinator's and agent's certificate and key, each valid for its
/// own pod's DNS names) and lockstep-operator; the CA's key is in neither,
/// and a second run issues nothing.
#[test]
fn k8s_tls_secret_script_makes_the_secrets_without_the_ca_key() -> anyhow::Result<()> {
    init_tracing();
    if !have("kubectl") {
        eprintln!("kubectl not installed: deploy/k8s/tls-secret.sh not run");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let pki = tmp.path().join("pki");
    let script = repo().join("deploy/k8s/tls-secret.sh");
    let lockstep = bin_path("lockstep")?;

    step!("tls-secret.sh {}", pki.display());
    let out = run(Command::new("bash")
        .arg(&script)
        .arg(&pki)
        .env("LOCKSTEP", &lockstep))?;
    let docs = yaml_text_docs(&out)?;
    ensure!(docs.len() == 2, "expected two Secrets:\n{out}");
    let keys = |name: &str| -> anyhow::Result<Vec<String>> {
        let secret = docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
            .with_context(|| format!("no Secret {name}:\n{out}"))?;
        ensure!(
            secret["metadata"]["namespace"] == "lockstep",
            "{name}: namespace"
        );
        let mut keys: Vec<String> = secret["data"]
            .as_object()
            .context("data")?
            .keys()
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    };
    let mut expected = vec!["ca.pem".to_string()];
    for i in 0..3 {
        for id in [
            format!("coordinator-{}", i + 1),
            format!("agent-mariadb-{i}"),
        ] {
            expected.push(format!("{id}.key"));
            expected.push(format!("{id}.pem"));
        }
    }
    expected.sort();
    ensure!(
        keys("lockstep-tls")? == expected,
        "lockstep-tls holds {:?}",
        keys("lockstep-tls")?
    );
    ensure!(
        keys("lockstep-operator")? == ["ca.pem", "operator.key", "operator.pem"],
        "lockstep-operator holds {:?}",
        keys("lockstep-operator")?
    );
    for (identity, pod, service) in [
        (
            "coordinator-1",
            "lockstep-coordinator-0",
            "lockstep-coordinator",
        ),
        (
            "coordinator-3",
            "lockstep-coordinator-2",
            "lockstep-coordinator",
        ),
        ("agent-mariadb-1", "mariadb-1", "mariadb"),
    ] {
        let names = dns_names(&pki.join(format!("{identity}.pem")))?;
        let want = [
            format!("{pod}.{service}"),
            format!("{pod}.{service}.lockstep.svc"),
            format!("{pod}.{service}.lockstep.svc.cluster.local"),
        ];
        ensure!(
            names == want,
            "{identity} is valid for {names:?}, want {want:?}"
        );
    }

    step!("run it again: the same certificates");
    let again = run(Command::new("bash")
        .arg(&script)
        .arg(&pki)
        .env("LOCKSTEP", &lockstep))?;
    ensure!(again == out, "a second run issued new certificates");
    Ok(())
}

/// Waits until `check` returns `Some`, polling every 200 ms, or fails
/// naming `what` after `timeout`.
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The certificate a TLS server on 127.0.0.1:`port` presents (openssl
/// s_client as `operator`), as its fingerprint.
fn served_fingerprint(port: u16, pki: &Path) -> anyhow::Result<String> {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -cert {pki}/operator.pem -key {pki}/operator.key \
         -CAfile {pki}/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        pki = pki.display()
    );
    Ok(run(Command::new("sh").args(["-c", &script]))?
        .trim()
        .to_string())
}

/// A Kubernetes Secret volume with fsGroup makes the key group-readable,
/// which lockstep refuses; tls-sync.sh copies it to 0600 and runs the
/// coordinator, which then serves mutual TLS as coordinator-1. A new
/// certificate in the "Secret" is copied and signalled within seconds: the
/// same process serves the new certificate. When the coordinator is gone,
/// the script's watch loop ends too.
#[tokio::test]
async fn tls_sync_gives_the_coordinator_its_key_and_reloads_a_new_one() -> anyhow::Result<()> {
    init_tracing();
    let tmp = tempfile::tempdir()?;
    let (pki, secret, dst) = (
        tmp.path().join("pki"),
        tmp.path().join("secret"),
        tmp.path().join("run"),
    );
    std::fs::create_dir(&secret)?;
    std::fs::create_dir(&dst)?;
    let lockstep = bin_path("lockstep")?;
    let coordinator = bin_path("lockstep-coordinator")?;
    run(Command::new(&lockstep)
        .args(["certs", "init"])
        .arg(&pki)
        .args(["--coordinators", "1"]))?;
    // What kubelet does: files swapped in whole, group-readable (fsGroup).
    let publish = || -> anyhow::Result<()> {
        for f in ["coordinator-1.pem", "coordinator-1.key", "ca.pem"] {
            let staged = secret.join(format!(".{f}"));
            std::fs::copy(pki.join(f), &staged)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o640))?;
            std::fs::rename(&staged, secret.join(f))?;
        }
        Ok(())
    };
    publish()?;

    step!("the coordinator refuses the Secret's group-readable key itself");
    let port = ports::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut direct = Command::new(&coordinator);
    direct
        .args(["--id", "1", "--listen", &listen, "--data-dir"])
        .arg(tmp.path().join("direct"))
        .arg("--tls-cert")
        .arg(secret.join("coordinator-1.pem"))
        .arg("--tls-key")
        .arg(secret.join("coordinator-1.key"))
        .arg("--tls-ca")
        .arg(secret.join("ca.pem"));
    let out = direct.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("readable by group or others"),
        "the coordinator should refuse a group-readable key ({}): {stderr}",
        out.status
    );

    step!("through tls-sync.sh it starts and serves mutual TLS as coordinator-1");
    let tls_yaml = std::fs::read_to_string(repo().join("deploy/k8s/tls.yaml"))?;
    let sync = yaml_text_docs(&tls_yaml)?
        .iter()
        .find_map(|d| d["data"]["tls-sync.sh"].as_str().map(str::to_string))
        .context("tls.yaml has no tls-sync.sh")?;
    let sync_path = tmp.path().join("tls-sync.sh");
    std::fs::write(&sync_path, &sync)?;
    let mut cmd = Command::new("sh");
    cmd.arg(&sync_path)
        .arg("coordinator-1")
        .arg(&coordinator)
        .args(["--id", "1", "--listen", &listen, "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--tls-cert")
        .arg(dst.join("tls.pem"))
        .arg("--tls-key")
        .arg(dst.join("tls.key"))
        .arg("--tls-ca")
        .arg(dst.join("ca.pem"))
        .env("LOCKSTEP_TLS_SECRET", &secret)
        .env("LOCKSTEP_TLS_DIR", &dst)
        .env("LOCKSTEP_TLS_SYNC_SECONDS", "1")
        .env("LOCKSTEP_LOG", "info");
    let mut proc = ChildProcess::spawn(
        "tls-sync coordinator-1",
        cmd,
        tmp.path().join("coordinator.log"),
    )?;
    let pid = proc.pid();
    let operator: Vec<(String, String)> = [
        ("LOCKSTEP_TLS_CERT", "operator.pem"),
        ("LOCKSTEP_TLS_KEY", "operator.key"),
        ("LOCKSTEP_TLS_CA", "ca.pem"),
    ]
    .iter()
    .map(|(k, f)| (k.to_string(), pki.join(f).display().to_string()))
    .collect();
    let url = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = run_cli_env(
            &lockstep,
            &["--coordinators", &url, "--json", "coordinator", "status"],
            &operator,
            Duration::from_secs(10),
        )
        .await?;
        if out.status.success() {
            break serde_json::from_str::<Value>(&out.stdout)?;
        }
        ensure!(
            proc.is_running() && Instant::now() < deadline,
            "the coordinator did not answer: {}\n{}",
            out.stderr,
            proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        status["members"][0]["transport"] == "mutual TLS as coordinator-1",
        "{status}"
    );
    ensure!(
        mode(&dst.join("tls.key"))? == 0o600,
        "the copied key must be 0600"
    );
    let old = fingerprint(&pki.join("coordinator-1.pem"))?;
    ensure!(
        served_fingerprint(port, &pki)? == old,
        "the coordinator does not serve coordinator-1.pem"
    );

    step!("a new certificate in the Secret: copied, SIGHUP, served by the same process");
    run(Command::new(&lockstep)
        .args(["certs", "init"])
        .arg(&pki)
        .args(["--coordinators", "1", "--replace"]))?;
    let new = fingerprint(&pki.join("coordinator-1.pem"))?;
    ensure!(new != old, "--replace issued the same certificate");
    publish()?;
    let log = proc.log_path().to_path_buf();
    wait_for("the reload", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log)?;
        Ok(
            (text.contains("tls-sync: the certificate files of coordinator-1 changed")
                && text.contains("SIGHUP: TLS certificates reloaded"))
            .then_some(()),
        )
    })
    .await
    .with_context(|| proc.log_tail(20))?;
    ensure!(
        served_fingerprint(port, &pki)? == new,
        "the coordinator still serves the old certificate"
    );
    ensure!(
        proc.is_running() && proc.pid() == pid,
        "the coordinator restarted"
    );

    step!("the coordinator stops: the watch loop ends with it");
    proc.kill()?;
    let marker = sync_path.display().to_string();
    wait_for("the watch loop to end", Duration::from_secs(10), || {
        let alive = Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .context("pgrep")?;
        Ok((!alive.status.success()).then_some(()))
    })
    .await?;
    Ok(())
}

/// The privileges `SHOW GRANTS` lists for 'lockstep'@'127.0.0.1'.
const GRANTS: &str = "GRANT SELECT, RELOAD, PROCESS, BINLOG MONITOR, SHOW VIEW, EVENT, TRIGGER ON *.* TO `lockstep`@`127.0.0.1`";

/// The init script of compose and Kubernetes, sourced as the MariaDB
/// image's entrypoint sources it (its two helpers defined as there),
/// against a real server: `lockstep` gets exactly the least grants, a
/// password with a quote and a backslash works, a consistent dump as
/// `lockstep` succeeds, and `lockstep` can neither write nor create. Without
/// the password the script fails and creates nobody.
#[tokio::test]
async fn mariadb_init_script_creates_the_least_privileged_backup_user() -> anyhow::Result<()> {
    init_tracing();
    let server = MariaDb::start(MariaDbOptions::named("dinit")).await?;
    let script = repo().join("deploy/compose/mariadb-init/lockstep-user.sh");
    // The entrypoint's helpers (mariadb-docker's docker-entrypoint.sh).
    let source = format!(
        "set -e\n\
         docker_process_sql() {{ mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P{port} -uroot \"$@\"; }}\n\
         docker_sql_escape_string_literal() {{\n\
         \tlocal newline=$'\\n'\n\
         \tlocal escaped=${{1//\\\\/\\\\\\\\}}\n\
         \tescaped=\"${{escaped//$newline/\\\\n}}\"\n\
         \techo \"${{escaped//\\'/\\\\\\'}}\"\n\
         }}\n\
         mysql_error() {{ echo \"ERROR: $*\" >&2; exit 1; }}\n\
         . {script}\n",
        port = server.port(),
        script = script.display()
    );
    let password = r"it's a \secret";

    step!("without LOCKSTEP_MYSQL_PASSWORD the script fails");
    let out = Command::new("bash")
        .args(["-c", &source])
        .env_remove("LOCKSTEP_MYSQL_PASSWORD")
        .output()?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("LOCKSTEP_MYSQL_PASSWORD is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users: u32 = server
        .query_one("SELECT COUNT(*) FROM mysql.user WHERE user = 'lockstep'")
        .await?;
    ensure!(users == 0, "a user was created without a password");

    step!("with it: the user and exactly the least grants");
    run(Command::new("bash")
        .args(["-c", &source])
        .env("LOCKSTEP_MYSQL_PASSWORD", password))?;
    let grants: Vec<String> = server
        .query("SHOW GRANTS FOR 'lockstep'@'127.0.0.1'")
        .await?;
    ensure!(
        grants.len() == 1 && grants[0].starts_with(&format!("{GRANTS} IDENTIFIED BY PASSWORD")),
        "grants: {grants:?}"
    );

    step!("a consistent dump as lockstep");
    server
        .exec(
            "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(9)); \
             INSERT INTO shop.t VALUES (1, 'a'), (2, 'b'); \
             CREATE VIEW shop.v AS SELECT id FROM shop.t",
        )
        .await?;
    let tmp = tempfile::tempdir()?;
    let out_dir = tmp.path().join("dump");
    // As compose and Kubernetes run the agent: the URL without the
    // password, the password in LOCKSTEP_MYSQL_PASSWORD.
    let url = format!("mysql://lockstep@127.0.0.1:{}", server.port());
    let dump = run_cli_env(
        &bin_path("lockstep-agent")?,
        &[
            "dump",
            "--mysql",
            &url,
            "--out",
            &out_dir.display().to_string(),
            "--json",
        ],
        &[("LOCKSTEP_MYSQL_PASSWORD".to_string(), password.to_string())],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        dump.status.success(),
        "dump as lockstep failed:\n{}\n{}",
        dump.stdout,
        dump.stderr
    );
    ensure!(
        out_dir.join("manifest.json").exists(),
        "no manifest in {}",
        out_dir.display()
    );

    step!("lockstep can neither write nor create");
    for sql in [
        "INSERT INTO shop.t VALUES (3, 'c')",
        "CREATE DATABASE other",
        "DROP TABLE shop.t",
    ] {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "--protocol=tcp",
                "-h127.0.0.1",
                "-ulockstep",
            ])
            .arg(format!("-P{}", server.port()))
            .env("MYSQL_PWD", password)
            .args(["-e", sql])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("denied"),
            "lockstep may run {sql}: {stderr}"
        );
    }
    let rows: u32 = server.query_one("SELECT COUNT(*) FROM shop.t").await?;
    ensure!(rows == 2, "shop.t has {rows} rows");
    Ok(())
}
