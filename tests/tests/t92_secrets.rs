//! Secrets kept out of sight: after a run with known, unusual passwords
//! (the backup user's, given through a password file, and the restore
//! targets', in the loading agents' credentials file), a grep finds neither
//! on any process's command line, in any log, in any CLI output, in the
//! catalog, or in any file of the coordinators' data dirs (raft log,
//! snapshots, redb). Secret files anyone else may read are refused at
//! startup; backups are written private to their owner.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use lockstep_tests::mysql_tls::{
    BACKUP_GRANTS, RESTORE_GRANTS, cmdline, contains, create_account, files_containing,
    private_file,
};
use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::{
    AgentOptions, CatalogCli, CausalWriter, CliOutput, MariaDb, Supervised, Target, check_chain,
    run_agent_cli, step,
};
use serde_json::Value;

/// The backup user's password: unusual enough that any hit is a leak.
const BACKUP_PASSWORD: &str = "Qx7-backup-Zebra-Umbrella-4471";
/// The restore targets' password.
const RESTORE_PASSWORD: &str = "Wv3-restore-Kiwi-Lantern-9053";
/// A target's password given the discouraged way, in a `--target` URL: the
/// CLI's own argv holds it, nothing else may.
const URL_PASSWORD: &str = "Jm5-url-Falcon-Harbour-2718";
/// Every secret the grep looks for.
const SECRETS: [&str; 3] = [BACKUP_PASSWORD, RESTORE_PASSWORD, URL_PASSWORD];

/// Every secret-bearing thing the test saw, to grep at the end.
#[derive(Default)]
struct Seen {
    /// (what, text): CLI arguments and outputs, command lines, catalog.
    texts: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    fn cli(&mut self, argv: &[&str], out: &CliOutput) {
        let what = format!("lockstep {}", argv.join(" "));
        self.add(format!("argv of {what}"), argv.join(" "));
        self.add(format!("stdout of {what}"), out.stdout.clone());
        self.add(format!("stderr of {what}"), out.stderr.clone());
    }

    /// Where each secret was found.
    fn leaks(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (what, text) in &self.texts {
            for secret in SECRETS {
                if contains(text.as_bytes(), secret) {
                    found.push(format!("{what} holds {secret}"));
                }
            }
        }
        found
    }
}

/// Runs `lockstep ARGV` against the cluster and records argv and output.
async fn cli(cluster: &Cluster, seen: &mut Seen, argv: &[&str]) -> anyhow::Result<CliOutput> {
    let out = cluster.cli(argv).await?;
    seen.cli(argv, &out);
    Ok(out)
}

/// `lockstep --json restore run --backup ID --wait --force` into `targets`,
/// which must fail; the restore's JSON and its first server's error.
async fn first_server_fails(
    cluster: &Cluster,
    seen: &mut Seen,
    id: &str,
    targets: &[String],
) -> anyhow::Result<(Value, String)> {
    let mut argv = vec![
        "--json", "restore", "run", "--backup", id, "--wait", "--force",
    ];
    for t in targets {
        argv.extend(["--target", t.as_str()]);
    }
    let out = cli(cluster, seen, &argv).await?;
    assert!(!out.status.success(), "{}", out.stdout);
    let failed: Value = serde_json::from_str(out.stdout.trim())?;
    let error = failed["servers"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((failed, error))
}

/// The agent's URL of `db` as the backup user, without a password.
fn backup_url(db: &MariaDb) -> String {
    format!("mysql://lockstep@127.0.0.1:{}", db.port())
}

/// A credentials file: `t{i}` is fresh server `i` as the restore user, and
/// `wrong` is fresh server 0 with a wrong password.
fn credentials(fresh: &[MariaDb]) -> String {
    let mut text = String::new();
    for (i, s) in fresh.iter().enumerate() {
        text.push_str(&format!(
            "[t{i}]\nurl = \"mysql://restorer:{RESTORE_PASSWORD}@127.0.0.1:{}\"\nssl_mode = \"preferred\"\n\n",
            s.port()
        ));
    }
    text.push_str(&format!(
        "[wrong]\nurl = \"mysql://restorer:not-{RESTORE_PASSWORD}-x@127.0.0.1:{}\"\n\n",
        fresh[0].port()
    ));
    text.push_str(&format!(
        "[tls]\nurl = \"mysql://restorer:{RESTORE_PASSWORD}@127.0.0.1:{}\"\nssl_mode = \"required\"\n",
        fresh[0].port()
    ));
    text
}

/// Checks every directory under `root` is 0700 and every file 0600.
fn assert_private(root: &Path) -> anyhow::Result<usize> {
    let mut files = 0;
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if path.is_dir() {
                assert_eq!(mode, 0o700, "{}", path.display());
                stack.push(path);
            } else {
                assert_eq!(mode, 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    Ok(files)
}

/// The grep test of issue 9 item 5. Three servers whose backup user has a
/// known password, given to the agents through a 0600 password file; three
/// fresh servers whose restore user's password is only in the agents'
/// credentials file. A backup under the causal writer, a restore by
/// credential reference (gap-free chain), then errors: a reference whose
/// entry has a wrong password, one whose entry requires TLS of a server
/// without it, a reference the file lacks, a malformed one, and agents
/// refusing group-readable password and credentials files. Then neither
/// password is on any command line (read from /proc while the processes
/// run), in any log, CLI output, the catalog or the coordinators' data
/// dirs; the grep itself finds the password where it was written.
#[tokio::test]
async fn passwords_never_leave_their_files() -> anyhow::Result<()> {
    let mut seen = Seen::default();
    let secrets = tempfile::tempdir()?;
    let pw_file = secrets.path().join("backup.password");
    private_file(&pw_file, &format!("{BACKUP_PASSWORD}\n"))?;

    step!("the grep finds a password where it is (so the test can fail)");
    assert_eq!(
        files_containing(secrets.path(), BACKUP_PASSWORD)?,
        std::slice::from_ref(&pw_file)
    );
    let mut probe = Seen::default();
    probe.add("probe", format!("x{RESTORE_PASSWORD}y"));
    assert_eq!(probe.leaks().len(), 1);

    step!("3 servers with a backup user, 3 fresh ones with a restore user");
    let (servers, fresh) = tokio::try_join!(
        MariaDb::start_many(&["sg0", "sg1", "sg2"]),
        MariaDb::start_many(&["sf0", "sf1", "sf2"])
    )?;
    for s in &servers {
        create_account(s, "lockstep", BACKUP_PASSWORD, BACKUP_GRANTS, false).await?;
    }
    for s in &fresh {
        create_account(s, "restorer", RESTORE_PASSWORD, RESTORE_GRANTS, false).await?;
        create_account(s, "urluser", URL_PASSWORD, RESTORE_GRANTS, false).await?;
    }
    let creds = secrets.path().join("credentials.toml");
    private_file(&creds, &credentials(&fresh))?;

    step!("agents refuse secret files that group or others may read");
    let loose = secrets.path().join("loose");
    std::fs::create_dir(&loose)?;
    let loose_pw = loose.join("pw");
    let loose_creds = loose.join("creds.toml");
    std::fs::write(&loose_pw, format!("{BACKUP_PASSWORD}\n"))?;
    std::fs::write(&loose_creds, credentials(&fresh))?;
    std::fs::set_permissions(&loose_pw, std::fs::Permissions::from_mode(0o640))?;
    std::fs::set_permissions(&loose_creds, std::fs::Permissions::from_mode(0o604))?;
    let url0 = backup_url(&servers[0]);
    let (pw_arg, loose_pw_arg) = (
        pw_file.display().to_string(),
        loose_pw.display().to_string(),
    );
    let (creds_arg, loose_creds_arg) = (
        creds.display().to_string(),
        loose_creds.display().to_string(),
    );
    for (args, file, mode) in [
        (
            vec!["--mysql-password-file", loose_pw_arg.as_str()],
            &loose_pw_arg,
            "0640",
        ),
        (
            vec![
                "--mysql-password-file",
                pw_arg.as_str(),
                "--credentials-file",
                loose_creds_arg.as_str(),
            ],
            &loose_creds_arg,
            "0604",
        ),
    ] {
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0", "--mysql", url0.as_str()];
        argv.extend(args);
        let out = run_agent_cli(&argv).await?;
        assert!(!out.status.success(), "{}", out.stderr);
        assert!(
            out.stderr.contains(file.as_str()) && out.stderr.contains(mode),
            "refusal names the file and its mode: {}",
            out.stderr
        );
        seen.add(
            "lockstep-agent serve refusal",
            format!("{}{}", out.stdout, out.stderr),
        );
    }
    std::fs::remove_dir_all(&loose)?;

    step!("a cluster with mutual TLS whose agents read the password from a file");
    let pki = lockstep_tests::tls::Pki::new(&["sg0", "sg1", "sg2"])?;
    let cluster = Cluster::start_on(servers, Some(pki), |_, s| {
        let mut a = AgentOptions::new(s.name(), backup_url(s));
        a.extra_args = vec![
            "--mysql-password-file".into(),
            pw_arg.clone(),
            "--credentials-file".into(),
            creds_arg.clone(),
        ];
        a
    })
    .await?;

    step!("back up under the causal writer");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer
        .wait_committed(100, std::time::Duration::from_secs(60))
        .await?;
    let argv = ["--json", "backup", "start", "--cluster", CLUSTER, "--wait"];
    let out = cli(&cluster, &mut seen, &argv).await?;
    let written = writer.stop().await;
    out.success()?;
    let backup: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().expect("id").to_string();

    step!("the backup is private to its owner: directories 0700, files 0600");
    for a in &cluster.agents {
        let n = assert_private(&a.sink_dir().join(&id))?;
        assert!(n > 0, "{} holds the backup", a.sink_dir().display());
    }

    step!("restore by credential reference: the passwords stay on the agents");
    let names: Vec<String> = cluster
        .servers
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    let target = |i: usize, reference: &str| format!("{}=cred:{reference}", names[i]);
    let (t0, t1, t2) = (target(0, "t0"), target(1, "t1"), target(2, "t2"));
    let argv = [
        "--json", "restore", "run", "--backup", &id, "--wait", "--target", &t0, "--target", &t1,
        "--target", &t2,
    ];
    let out = cli(&cluster, &mut seen, &argv).await?;
    out.success()?;
    let restore: Value = serde_json::from_str(out.stdout.trim())?;
    for (i, s) in restore["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .enumerate()
    {
        assert_eq!(s["ok"], true, "{restore}");
        assert_eq!(s["target"], fresh[i].address(), "{restore}");
    }
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!((100..=written).contains(&m), "restored 1..{m} of {written}");

    step!("a reference whose entry has a wrong password fails, naming the server");
    let targets = [target(0, "wrong"), t1.clone(), t2.clone()];
    let (failed, error) = first_server_fails(&cluster, &mut seen, &id, &targets).await?;
    assert!(
        error.contains(&names[0])
            && error.contains(&fresh[0].address())
            && error.contains("Access denied"),
        "{failed}"
    );

    step!("a target URL with a password works, is warned about, and is recorded without it");
    let urls: Vec<String> = fresh
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "{}=mysql://urluser:{URL_PASSWORD}@127.0.0.1:{}",
                names[i],
                f.port()
            )
        })
        .collect();
    let argv = [
        "--json", "restore", "run", "--backup", &id, "--wait", "--force", "--target", &urls[0],
        "--target", &urls[1], "--target", &urls[2],
    ];
    let out = cluster.cli(&argv).await?;
    // Only the argv holds the password: it is the operator's own.
    seen.add("stdout of restore run with URL targets", out.stdout.clone());
    seen.add("stderr of restore run with URL targets", out.stderr.clone());
    out.success()?;
    assert!(
        out.stderr.contains("visible in the process list"),
        "{}",
        out.stderr
    );

    step!("an entry that requires TLS of a server without it fails, naming server and mode");
    let targets = [target(0, "tls"), t1.clone(), t2.clone()];
    let (failed, error) = first_server_fails(&cluster, &mut seen, &id, &targets).await?;
    assert!(
        error.contains(&fresh[0].address()) && error.contains("ssl-mode=required"),
        "{failed}"
    );

    step!("restore plan shows the reference as the target");
    let argv = [
        "--json", "restore", "plan", "--backup", &id, "--target", &t0, "--target", &t1, "--target",
        &t2,
    ];
    let out = cli(&cluster, &mut seen, &argv).await?;
    out.success()?;
    assert!(out.stdout.contains("cred:t0"), "{}", out.stdout);

    step!("a reference the credentials file lacks fails, naming the reference");
    let missing = target(0, "nosuch");
    let argv = [
        "restore", "run", "--backup", &id, "--wait", "--force", "--target", &missing, "--target",
        &t1, "--target", &t2,
    ];
    let out = cli(&cluster, &mut seen, &argv).await?;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout.contains("cred:nosuch") || out.stderr.contains("cred:nosuch"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    step!("a malformed reference is refused by the coordinator, naming it");
    let bad = format!("{}=cred:", names[0]);
    let argv = [
        "restore", "plan", "--backup", &id, "--target", &bad, "--target", &t1, "--target", &t2,
    ];
    let out = cli(&cluster, &mut seen, &argv).await?;
    assert!(
        !out.status.success() && out.stderr.contains("cred:NAME"),
        "{}",
        out.stderr
    );

    step!("read the catalog and every command line while the processes run");
    for argv in [
        vec!["--json", "catalog", "show", id.as_str()],
        vec!["--json", "restore", "list", "--backup", id.as_str()],
        vec!["--json", "server", "list"],
        vec!["restore", "list", "--backup", id.as_str()],
    ] {
        let out = cli(&cluster, &mut seen, &argv).await?;
        out.success()?;
    }
    let mut pids = Vec::new();
    for m in &cluster.group.members {
        pids.push((format!("coordinator {}", m.id()), m.pid()));
    }
    for a in &cluster.agents {
        pids.push((format!("agent {}", a.name()), a.pid()));
    }
    for s in cluster.servers.iter().chain(&fresh) {
        pids.push((format!("mariadbd {}", s.name()), s.pid()));
    }
    for (what, pid) in pids {
        let pid = pid.ok_or_else(|| anyhow::anyhow!("{what} is not running"))?;
        seen.add(format!("command line of {what} (pid {pid})"), cmdline(pid)?);
    }

    step!("grep the logs and the coordinators' data dirs");
    let mut leaks = seen.leaks();
    let mut roots: Vec<(String, PathBuf)> = Vec::new();
    for m in &cluster.group.members {
        roots.push((
            format!("coordinator {} data dir", m.id()),
            m.data_dir().to_path_buf(),
        ));
        roots.push((
            format!("coordinator {} log", m.id()),
            m.log_path().to_path_buf(),
        ));
    }
    for a in &cluster.agents {
        // The agent's temp dir: its log and its sink.
        let dir = a.log_path().parent().expect("log in a dir").to_path_buf();
        roots.push((format!("agent {} dir", a.name()), dir));
    }
    let mut files = 0;
    for (what, root) in &roots {
        for secret in SECRETS {
            let hits = if root.is_dir() {
                files_containing(root, secret)?
            } else {
                let bytes = std::fs::read(root)?;
                if contains(&bytes, secret) {
                    vec![root.clone()]
                } else {
                    Vec::new()
                }
            };
            for hit in hits {
                leaks.push(format!("{what}: {} holds {secret}", hit.display()));
            }
        }
        files += 1;
    }
    step!("grepped {} texts and {files} logs/dirs", seen.texts.len());
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    // The logs were really read: they say what happened.
    let log = std::fs::read_to_string(cluster.agents[0].log_path())?;
    assert!(
        log.contains("restore") || log.contains(&id),
        "agent log is not empty"
    );
    Ok(())
}
