//! TLS from the agents to their servers: MariaDB servers serve TLS with a
//! certificate for 127.0.0.1 from a test CA, the backup and restore
//! accounts `REQUIRE SSL` and hold only the grants docs/agent.md lists, and
//! a cluster backup and restore run through agents with
//! `ssl-mode=verify-identity`. The modes that must fail do, naming the
//! server and the mode.

use std::time::Duration;

use lockstep_tests::mysql_tls::{
    BACKUP_GRANTS, RESTORE_GRANTS, TlsFiles, create_tls_account, files_containing, private_file,
    ssl_accepts,
};
use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::{
    AgentOptions, CatalogCli, CausalWriter, CliOutput, MariaDb, Target, check_chain, run_agent_cli,
    step,
};
use serde_json::Value;

const BACKUP_PASSWORD: &str = "tls-Backup-pw-7";
const RESTORE_PASSWORD: &str = "tls-Restore-pw-9";

/// `lockstep-agent dump --mysql URL [--mysql-password-file F] --out OUT
/// --quiet`.
async fn dump(url: &str, password_file: Option<&str>, out: &str) -> anyhow::Result<CliOutput> {
    let mut args = vec!["dump", "--mysql", url];
    if let Some(f) = password_file {
        args.extend(["--mysql-password-file", f]);
    }
    args.extend(["--out", out, "--quiet"]);
    run_agent_cli(&args).await
}

/// The agent's URL of `db` as user `user` with `mode` and the CA `ca`.
fn tls_url(user: &str, db: &MariaDb, mode: &str, ca: &std::path::Path) -> String {
    format!(
        "mysql://{user}@127.0.0.1:{}?ssl-mode={mode}&ssl-ca={}",
        db.port(),
        ca.display()
    )
}

/// A cluster backup under the causal writer through agents whose sessions
/// are `verify-identity` TLS as a `REQUIRE SSL` user with the least backup
/// grants (its password from a 0600 file), then a restore into three fresh
/// TLS servers as a `REQUIRE SSL` user with the least restore grants, the
/// targets' URLs also `verify-identity`: the restored chain has no gaps.
/// Each server counts the agents' TLS sessions (`Ssl_accepts`); a plaintext
/// session of these users would be refused. `ssl-mode=disabled` against the
/// `REQUIRE SSL` user, `verify-ca` with a CA that did not sign the server's
/// certificate, and `required` against a server without TLS each fail,
/// naming the server and the mode.
#[tokio::test]
async fn a_cluster_backup_and_restore_run_over_verified_tls() -> anyhow::Result<()> {
    step!("a CA, a certificate for 127.0.0.1, and a second CA");
    let tls = TlsFiles::new()?;
    let pw_file = tls.dir().join("backup.password");
    private_file(&pw_file, &format!("{BACKUP_PASSWORD}\n"))?;

    step!("3 MariaDB servers serving TLS; a REQUIRE SSL backup user with the least grants");
    let servers = MariaDb::start_many_with(&["tl0", "tl1", "tl2"], &tls.server_options()).await?;
    for s in &servers {
        create_tls_account(s, "lockstep", BACKUP_PASSWORD, BACKUP_GRANTS).await?;
    }

    step!("ssl-mode=disabled against the REQUIRE SSL user fails, naming server and mode");
    let pw_arg = pw_file.display().to_string();
    let out_dir = tls.dir().join("dump-disabled");
    let url = format!(
        "mysql://lockstep@127.0.0.1:{}?ssl-mode=disabled",
        servers[0].port()
    );
    let out = dump(&url, Some(&pw_arg), &out_dir.display().to_string()).await?;
    assert!(!out.status.success(), "{}", out.stdout);
    step!("refused: {}", out.stderr.trim());
    assert!(
        out.stderr.contains(&servers[0].address())
            && out.stderr.contains("ssl-mode=disabled")
            && out.stderr.contains("REQUIRE SSL"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(BACKUP_PASSWORD), "{}", out.stderr);

    step!("verify-ca with a CA that did not sign the certificate fails, naming the CA");
    let url = tls_url("lockstep", &servers[0], "verify-ca", &tls.wrong_ca);
    let out = dump(
        &url,
        Some(&pw_arg),
        &tls.dir().join("dump-wrong-ca").display().to_string(),
    )
    .await?;
    assert!(!out.status.success(), "{}", out.stdout);
    step!("refused: {}", out.stderr.trim());
    assert!(
        out.stderr.contains(&servers[0].address())
            && out.stderr.contains("ssl-mode=verify-ca")
            && out.stderr.contains("not trusted by the CA in")
            && out.stderr.contains(&tls.wrong_ca.display().to_string()),
        "{}",
        out.stderr
    );

    step!("ssl-mode=required against a server without TLS fails, naming server and mode");
    let plain = MariaDb::start_many(&["tlp"]).await?;
    let url = format!("{}?ssl-mode=required", plain[0].url());
    let out = dump(
        &url,
        None,
        &tls.dir().join("dump-plain").display().to_string(),
    )
    .await?;
    assert!(!out.status.success(), "{}", out.stdout);
    step!("refused: {}", out.stderr.trim());
    assert!(
        out.stderr.contains(&plain[0].address())
            && out.stderr.contains("ssl-mode=required")
            && out.stderr.contains("offers no TLS"),
        "{}",
        out.stderr
    );
    drop(plain);

    step!("a certificate for another name: verify-identity fails naming the host, verify-ca works");
    let misnamed = MariaDb::start_many_with(&["tlm"], &tls.misnamed_server_options()).await?;
    create_tls_account(&misnamed[0], "lockstep", BACKUP_PASSWORD, BACKUP_GRANTS).await?;
    misnamed[0].exec("CREATE DATABASE m").await?;
    misnamed[0]
        .exec("CREATE TABLE m.t (id INT PRIMARY KEY)")
        .await?;
    misnamed[0].exec("INSERT INTO m.t VALUES (1), (2)").await?;
    for (mode, ok) in [("verify-identity", false), ("verify-ca", true)] {
        let url = tls_url("lockstep", &misnamed[0], mode, &tls.ca);
        let out = dump(
            &url,
            Some(&pw_arg),
            &tls.dir().join(format!("dump-{mode}")).display().to_string(),
        )
        .await?;
        assert_eq!(
            out.status.success(),
            ok,
            "{mode}: {}{}",
            out.stdout,
            out.stderr
        );
        if !ok {
            assert!(
                out.stderr.contains(&misnamed[0].address())
                    && out.stderr.contains("ssl-mode=verify-identity")
                    && out.stderr.contains("does not name 127.0.0.1"),
                "{}",
                out.stderr
            );
        }
    }
    drop(misnamed);

    let before: Vec<u64> = futures::future::try_join_all(servers.iter().map(ssl_accepts)).await?;
    step!("agents with ssl-mode=verify-identity, the password from a 0600 file");
    let (ca, pw) = (tls.ca.clone(), pw_file.clone());
    let cluster = Cluster::start_on(servers, None, |_, s| {
        let mut a = AgentOptions::new(s.name(), tls_url("lockstep", s, "verify-identity", &ca));
        a.extra_args = vec!["--mysql-password-file".into(), pw.display().to_string()];
        a
    })
    .await?;

    step!("back up under the causal writer");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(150, Duration::from_secs(60)).await?;
    let backup = cluster.backup_and_wait(None).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().expect("id").to_string();
    step!(
        "freeze window over TLS: {} ms",
        backup["freeze_ms"].as_f64().unwrap_or_default()
    );
    for (i, s) in cluster.servers.iter().enumerate() {
        let after = ssl_accepts(s).await?;
        step!(
            "{}: {} TLS sessions accepted during the run",
            s.name(),
            after - before[i]
        );
        assert!(
            after >= before[i] + 3,
            "{}: the agent's sessions are TLS: Ssl_accepts {} -> {after}",
            s.name(),
            before[i]
        );
    }

    step!("restore into 3 fresh TLS servers as a REQUIRE SSL user with the least restore grants");
    let fresh = MariaDb::start_many_with(&["tf0", "tf1", "tf2"], &tls.server_options()).await?;
    for s in &fresh {
        create_tls_account(s, "restorer", RESTORE_PASSWORD, RESTORE_GRANTS).await?;
    }
    let mut argv: Vec<String> = ["--json", "restore", "run", "--backup", &id, "--wait"]
        .map(String::from)
        .to_vec();
    for (i, s) in fresh.iter().enumerate() {
        argv.push("--target".into());
        let url = tls_url(
            &format!("restorer:{RESTORE_PASSWORD}"),
            s,
            "verify-identity",
            &tls.ca,
        );
        argv.push(format!("{}={url}", cluster.servers[i].name()));
    }
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cluster.cli(&args).await?;
    assert!(
        out.stderr.contains("visible in the process list"),
        "a password on the command line is warned about: {}",
        out.stderr
    );
    out.success()?;
    let restore: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(restore["ok"], true, "{restore}");
    assert!(!out.stdout.contains(RESTORE_PASSWORD), "{}", out.stdout);
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!((150..=written).contains(&m), "restored 1..{m} of {written}");
    let source = check_chain(&cluster.chain()).await?;
    assert!(source >= m, "the source chain goes on: {source} >= {m}");

    step!("the catalog holds the targets without their passwords");
    let restores = cluster
        .cli(&["--json", "restore", "list", "--backup", &id])
        .await?;
    restores.success()?;
    assert!(
        !restores.stdout.contains(RESTORE_PASSWORD),
        "{}",
        restores.stdout
    );
    let listed = cluster
        .cli_json(&["server", "list", "--cluster", CLUSTER])
        .await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    Ok(())
}

/// The backup grants are the least that work: a dump (the same phase one
/// and schema reads a cluster backup runs) of a database with a view, a
/// trigger and an event is complete as a user with exactly
/// [`BACKUP_GRANTS`], and fails (naming the server) or silently lacks the
/// event or trigger (the server hides them without `EVENT` / `TRIGGER`)
/// as a user with any one of them taken away. `PROCESS` is left out of the
/// check: it only widens what the pre-flight sees (other users'
/// statements), which cannot fail a dump.
#[tokio::test]
async fn each_backup_grant_is_needed() -> anyhow::Result<()> {
    step!("a server with a table, a view, a trigger and an event");
    let db = MariaDb::start(lockstep_tests::MariaDbOptions::named("tg")).await?;
    for sql in [
        "CREATE DATABASE g",
        "CREATE TABLE g.t (id INT PRIMARY KEY, v INT)",
        "INSERT INTO g.t VALUES (1, 1), (2, 2)",
        "CREATE VIEW g.v AS SELECT id FROM g.t",
        "CREATE TRIGGER g.tr BEFORE INSERT ON g.t FOR EACH ROW SET NEW.v = NEW.v + 1",
        "CREATE EVENT g.e ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1",
    ] {
        db.exec(sql).await?;
    }
    let dir = tempfile::Builder::new()
        .prefix("ls-grants-")
        .tempdir_in("/tmp")?;
    let pw_file = dir.path().join("pw");
    private_file(&pw_file, BACKUP_PASSWORD)?;
    let pw_arg = pw_file.display().to_string();
    let all: Vec<&str> = BACKUP_GRANTS.split(", ").collect();
    let mut cases: Vec<(String, Option<&str>)> = vec![("full".into(), None)];
    for g in all.iter().filter(|g| **g != "PROCESS") {
        cases.push((format!("no {g}"), Some(*g)));
    }
    for (i, (what, missing)) in cases.iter().enumerate() {
        let user = format!("g{i}");
        let grants: Vec<&str> = all
            .iter()
            .copied()
            .filter(|g| Some(*g) != *missing)
            .collect();
        lockstep_tests::mysql_tls::create_account(
            &db,
            &user,
            BACKUP_PASSWORD,
            &grants.join(", "),
            false,
        )
        .await?;
        let url = format!("mysql://{user}@127.0.0.1:{}", db.port());
        let out_dir = dir.path().join(&user);
        let out = dump(&url, Some(&pw_arg), &out_dir.display().to_string()).await?;
        // Without EVENT or TRIGGER the server hides those objects from
        // information_schema: the dump succeeds without them.
        let has = |text: &str| -> anyhow::Result<bool> {
            Ok(out_dir.is_dir() && !files_containing(&out_dir, text)?.is_empty())
        };
        let complete = out.status.success()
            && has("DO SELECT 1")?
            && has("NEW.v + 1")?
            && has("CREATE ALGORITHM")?;
        step!(
            "{what}: exit {}, complete {complete}: {}",
            out.status,
            out.stderr.trim()
        );
        assert_eq!(
            complete,
            missing.is_none(),
            "{what}: {}{}",
            out.stdout,
            out.stderr
        );
        if missing.is_some() && !out.status.success() {
            assert!(out.stderr.contains(&db.address()), "{}", out.stderr);
        }
    }
    Ok(())
}
