//! The `lockstep` CLI: server list, coordinator status, backup start,
//! catalog queries and the coordinated restore, against the coordinator
//! group (the leader is found by [`Client`]). Human tables by default,
//! `--json` for scripts; the exit code is 0 on success, 1 on failure
//! (including a backup that ends FAILED), 2 on bad usage.
//!
//! Modules: this one holds the clap structs and the dispatch; [`backup`]
//! starts and follows backups and reads the catalog; [`restore`] runs and
//! lists restores; [`server`] lists and removes servers and shows the
//! coordinator group; [`sink`] manages sinks, copies, verification and
//! scans (and prints them); [`role`], [`audit`], [`archive`],
//! [`restore_point`] and [`pitr`] (with `catalog search-binlog`) hold their own
//! arguments, calls and printing; [`output`] prints tables and JSON. A new
//! command's arguments go here, its calls in the module of its concern, its
//! printing in [`output`] (or beside the calls, for [`sink`]).

use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::error::Error;

mod archive;
mod audit;
mod backup;
mod certs;
mod output;
mod pitr;
mod restore;
mod restore_point;
mod role;
mod server;
mod sink;

/// `lockstep`: cluster-wide consistent backups of MySQL/MariaDB.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about)]
pub struct Cli {
    /// Coordinator URLs, comma-separated (any member; the leader is found).
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_COORDINATORS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7300"
    )]
    pub coordinators: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long a command waits for a leader to answer (an election, a
    /// coordinator restarting) before it gives up, e.g. `30s`, `2m`. A
    /// backup or restore that is running takes as long as it takes; this
    /// bounds only each wait for a leader.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_PATIENCE",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub patience: Duration,
    /// Log filter (tracing syntax) for diagnostics on stderr.
    #[arg(long, global = true, env = "LOCKSTEP_LOG", default_value = "warn")]
    pub log: String,
    /// Mutual TLS to the coordinators: this operator's certificate (its
    /// identity decides what it may do), key and the CA.
    #[command(flatten)]
    pub tls: lockstep_proto::tls::TlsOptions,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Registered servers and their health.
    #[command(subcommand)]
    Server(ServerCmd),
    /// The coordinator group.
    #[command(subcommand)]
    Coordinator(CoordinatorCmd),
    /// Take backups.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Query the backup catalog.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Restore backups.
    #[command(subcommand)]
    Restore(RestoreCmd),
    /// Where backups are stored: disk pools on agents, S3 buckets.
    #[command(subcommand)]
    Sink(SinkCmd),
    /// Copy a COMPLETE backup to another sink.
    Copy(CopyArgs),
    /// Re-read copies of a backup and check every checksum; the result is
    /// recorded in the catalog (`catalog show` displays it).
    Verify(VerifyArgs),
    /// Who may call what: roles for identities and patterns.
    #[command(subcommand)]
    Role(role::RoleCmd),
    /// The audit trail of mutating and refused calls.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Certificates for mutual TLS (demos and tests).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// The continuous binlog archive.
    #[command(subcommand)]
    Archive(archive::ArchiveCmd),
    /// Point-in-time recovery: every server of a cluster back to one
    /// consistent moment (base backup + binlog replay).
    Pitr(pitr::PitrArgs),
    /// Restore points: the cut without data (milliseconds of freeze),
    /// taken now or on a schedule, for point-in-time recovery.
    #[command(subcommand)]
    RestorePoint(restore_point::RestorePointCmd),
}

/// `lockstep certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a CA and certificates for coordinators, agents, an operator
    /// and a viewer (or issue more with the CA already in DIR).
    Init(certs::CertsInitArgs),
}

/// `lockstep sink ...`
#[derive(Debug, Subcommand)]
pub enum SinkCmd {
    /// Add a sink: a disk pool held by an agent (`--kind disk --agent
    /// AGENT --path DIR`) or S3 (`--kind s3 --url s3://BUCKET/PREFIX`).
    /// An agent must reach it first (the pool's agent; for S3, any agent
    /// with the credentials), unless --no-check.
    Add(SinkAddArgs),
    /// A cluster's sinks with the policy, copies and usage.
    List(SinkListArgs),
    /// Remove a sink from the catalog (its objects stay). Refused while it
    /// holds the only copy of a backup or the policy names it.
    Remove(SinkNameArgs),
    /// Set the cluster's sink policy: the primary sink backups are written
    /// to, and the sinks every COMPLETE backup is copied to.
    Policy(SinkPolicyArgs),
    /// What a sink holds; with --import, add its backups to the catalog
    /// (rebuilding a lost catalog from the media).
    Scan(SinkScanArgs),
}

/// `sink add` arguments.
#[derive(Debug, Args)]
pub struct SinkAddArgs {
    /// The sink's name (letters, digits, '-', '_', '.').
    pub name: String,
    #[arg(long)]
    pub cluster: String,
    /// disk or s3.
    #[arg(long)]
    pub kind: String,
    /// disk: the agent holding the pool (a media agent's --name).
    #[arg(long)]
    pub agent: Option<String>,
    /// disk: the pool directory on that agent's host (one of its --pool).
    #[arg(long)]
    pub path: Option<String>,
    /// s3: s3://BUCKET[/PREFIX].
    #[arg(long)]
    pub url: Option<String>,
    /// s3: the endpoint of an S3-compatible server, e.g. http://HOST:9000.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// s3: the region [default: the agents' AWS_REGION].
    #[arg(long)]
    pub region: Option<String>,
    /// Encrypt at rest (the default for s3).
    #[arg(long, conflicts_with = "no_encrypt")]
    pub encrypt: bool,
    /// Do not encrypt (the default for disk).
    #[arg(long)]
    pub no_encrypt: bool,
    /// Add it without first having an agent reach it.
    #[arg(long)]
    pub no_check: bool,
}

/// `sink list` arguments.
#[derive(Debug, Args)]
pub struct SinkListArgs {
    #[arg(long)]
    pub cluster: String,
    /// Skip asking agents for each sink's usage.
    #[arg(long)]
    pub no_usage: bool,
}

/// `sink remove` arguments.
#[derive(Debug, Args)]
pub struct SinkNameArgs {
    pub name: String,
    #[arg(long)]
    pub cluster: String,
}

/// `sink policy` arguments.
#[derive(Debug, Args)]
pub struct SinkPolicyArgs {
    #[arg(long)]
    pub cluster: String,
    /// Where backups are written ("host-local": each agent's own directory).
    #[arg(long)]
    pub primary: String,
    /// A sink every COMPLETE backup is copied to; repeat for several.
    #[arg(long = "copy")]
    pub copies: Vec<String>,
}

/// `sink scan` arguments.
#[derive(Debug, Args)]
pub struct SinkScanArgs {
    pub name: String,
    #[arg(long)]
    pub cluster: String,
    /// Add the backups found to the catalog.
    #[arg(long)]
    pub import: bool,
}

/// `copy` arguments.
#[derive(Debug, Args)]
pub struct CopyArgs {
    #[arg(long)]
    pub backup: String,
    /// The sink to copy to.
    #[arg(long)]
    pub to: String,
}

/// `verify` arguments.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long)]
    pub backup: String,
    /// Only the copies in this sink ("host-local" for the agents' own).
    #[arg(long)]
    pub copy: Option<String>,
}

/// `lockstep restore ...`
#[derive(Debug, Subcommand)]
pub enum RestoreCmd {
    /// Restore every server of a COMPLETE backup at once; reports per server.
    Run(RestoreArgs),
    /// Which copy and which agent a restore would use, the bytes and an
    /// estimated time, without doing it.
    Plan(RestoreArgs),
    /// Restores recorded in the catalog, oldest first.
    List(RestoreListArgs),
}

/// `restore list` arguments.
#[derive(Debug, Args)]
pub struct RestoreListArgs {
    /// Only restores of this backup.
    #[arg(long)]
    pub backup: Option<String>,
}

/// `restore run` arguments.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup id.
    #[arg(long)]
    pub backup: String,
    /// Load SERVER into this database server: SERVER=cred:NAME (an entry
    /// of the loading agent's credentials file: the password stays there)
    /// or SERVER=mysql://USER@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE]; repeat
    /// for every server of the backup.
    #[arg(long = "target", value_name = "SERVER=cred:NAME|URL", value_parser = parse_target)]
    pub targets: Vec<(String, String)>,
    /// Load the servers without a --target into the live servers the backup
    /// was taken from (their agents' own servers), overwriting them.
    #[arg(long)]
    pub in_place: bool,
    /// On MySQL 5.7 targets with GTIDs, run RESET MASTER to set their
    /// gtid_purged (erases the target's binary logs; refused without it).
    #[arg(long)]
    pub allow_reset_master: bool,
    /// Load into targets that already hold databases.
    #[arg(long)]
    pub force: bool,
    /// Wait for every server to finish (always the case: the restore runs
    /// while the command waits; accepted for symmetry with `backup start`).
    #[arg(long)]
    pub wait: bool,
    /// Load only from copies in this sink ("host-local": the agents' own).
    #[arg(long)]
    pub from: Option<String>,
    /// Have AGENT load SERVER (a server's agent or a media agent); repeat
    /// per server.
    #[arg(long = "agent", value_name = "SERVER=AGENT", value_parser = parse_agent)]
    pub agents: Vec<(String, String)>,
    /// A physical backup: write SERVER into this datadir on the loading
    /// agent's host (empty, or emptied with --force; no server may run on
    /// it); repeat for every server. The agent then recovers it and checks
    /// its position against the cut.
    #[arg(long = "datadir", value_name = "SERVER=PATH", value_parser = parse_agent)]
    pub datadirs: Vec<(String, String)>,
    /// Restore the application file sets too, under PATH/SERVER/SET on each
    /// loading agent's host.
    #[arg(long, value_name = "PATH")]
    pub files_to: Option<String>,
}

/// Parses `SERVER=AGENT`.
fn parse_agent(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((server, agent)) if !server.trim().is_empty() && !agent.trim().is_empty() => {
            Ok((server.trim().to_string(), agent.trim().to_string()))
        }
        _ => Err(format!("expected SERVER=VALUE, got {s:?}")),
    }
}

/// Parses `SERVER=URL`.
pub(super) fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, url)) if !name.trim().is_empty() && !url.trim().is_empty() => {
            Ok((name.trim().to_string(), url.trim().to_string()))
        }
        // Never echo the argument: it may hold a password.
        _ => Err("expected SERVER=cred:NAME or SERVER=mysql://USER@HOST:PORT".to_string()),
    }
}

/// `lockstep server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// List registered servers with flavour, version and health.
    List(ClusterFilter),
    /// Remove a retired server from its cluster: later backups leave it
    /// out. Stop its agent first, or it registers again.
    Remove(RemoveArgs),
}

/// `server remove` arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The server's cluster.
    #[arg(long)]
    pub cluster: String,
    /// The server's name.
    pub name: String,
}

/// `lockstep coordinator ...`
#[derive(Debug, Subcommand)]
pub enum CoordinatorCmd {
    /// Members, leader, term, commit and applied index, health per member,
    /// the catalog version each supports and the cluster version.
    Status,
}

/// `lockstep backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Start a backup of every server of a cluster; prints its id.
    Start(StartArgs),
}

/// `lockstep catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// List backups, oldest first.
    List(ClusterFilter),
    /// One backup: status, the cut per server, freeze window, artifacts.
    Show(ShowArgs),
    /// Transactions in the binlog archive: server, file:pos, GTID, time and
    /// a one-line summary (the statement for DDL).
    SearchBinlog(pitr::SearchArgs),
}

/// An optional cluster filter.
#[derive(Debug, Args)]
pub struct ClusterFilter {
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
}

/// `backup start` arguments.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The cluster to back up.
    #[arg(long)]
    pub cluster: String,
    /// Write to this sink instead of the cluster policy's primary
    /// ("host-local": each agent's own directory).
    #[arg(long)]
    pub sink: Option<String>,
    /// Wait for the backup to finish, showing progress; exit 1 if it failed.
    #[arg(long)]
    pub wait: bool,
    /// logical or physical for every server [default: each server's kind
    /// from its agent's configuration].
    #[arg(long, value_parser = ["logical", "physical"])]
    pub kind: Option<String>,
}

/// `catalog show` arguments.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The backup id.
    pub id: String,
}

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match execute(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e, cli.patience));
            1
        }
    }
}

/// The error as the user reads it; a call that found no leader says how
/// long it waited and how to wait longer.
fn error_text(e: &anyhow::Error, patience: Duration) -> String {
    match e.downcast_ref::<Error>() {
        Some(Error::NoCoordinator {
            what,
            waited,
            tried,
            last,
        }) => format!(
            "{what}: no leader answered within {:.1} s (--patience {}); tried {tried}; last errors: {last}",
            waited.as_secs_f64(),
            humantime::format_duration(patience)
        ),
        _ => crate::client::error_chain(e.as_ref()),
    }
}

/// How many answers a command that must not run twice may lose (each
/// then looked up, or asked again) before it gives up.
const MAX_LOST_ANSWERS: u32 = 3;

/// Answers lost with their leader, for commands that must not run twice:
/// each is reported, and the command gives up after [`MAX_LOST_ANSWERS`].
#[derive(Debug)]
struct LostAnswers {
    what: &'static str,
    patience: Duration,
    count: u32,
    last: Option<Instant>,
}

impl LostAnswers {
    fn new(what: &'static str, patience: Duration) -> Self {
        LostAnswers {
            what,
            patience,
            count: 0,
            last: None,
        }
    }

    /// Whether an answer was lost.
    fn any(&self) -> bool {
        self.count > 0
    }

    /// Whether the last answer was lost less than the patience ago.
    fn patient(&self) -> bool {
        self.last.is_some_and(|t| t.elapsed() < self.patience)
    }

    /// Records a lost answer and says so on stderr; an error when too many
    /// were lost.
    fn lost(&mut self, url: &str, error: &str) -> anyhow::Result<()> {
        eprintln!(
            "the answer to {} was lost ({url}: {error}); the leader may have acted on it",
            self.what
        );
        self.count += 1;
        self.last = Some(Instant::now());
        if self.count >= MAX_LOST_ANSWERS {
            anyhow::bail!(
                "{}: {} answers lost; the last from {url}: {error}",
                self.what,
                self.count
            );
        }
        Ok(())
    }
}

async fn execute(cli: &Cli) -> anyhow::Result<i32> {
    let json = cli.json;
    if let Command::Certs(CertsCmd::Init(a)) = &cli.command {
        return certs::init(json, a);
    }
    let mut client =
        Client::new(cli.coordinators.clone(), cli.patience)?.with_transport(cli.tls.transport()?);
    match &cli.command {
        Command::Certs(CertsCmd::Init(a)) => certs::init(json, a),
        Command::Server(ServerCmd::Remove(a)) => server::remove(&mut client, json, a).await,
        Command::Server(ServerCmd::List(f)) => server::list(&mut client, json, f).await,
        Command::Coordinator(CoordinatorCmd::Status) => server::status(&mut client, json).await,
        Command::Backup(BackupCmd::Start(a)) => backup::start(&mut client, json, a).await,
        Command::Catalog(CatalogCmd::List(f)) => backup::list(&mut client, json, f).await,
        Command::Catalog(CatalogCmd::Show(a)) => backup::show(&mut client, json, a).await,
        Command::Restore(RestoreCmd::List(a)) => restore::list(&mut client, json, a).await,
        Command::Restore(RestoreCmd::Run(a)) => restore::run(client, json, a).await,
        Command::Restore(RestoreCmd::Plan(a)) => restore::plan(&mut client, json, a).await,
        Command::Sink(SinkCmd::Add(a)) => sink::add(&mut client, json, a).await,
        Command::Sink(SinkCmd::List(a)) => sink::list(&mut client, json, a).await,
        Command::Sink(SinkCmd::Remove(a)) => sink::remove(&mut client, json, a).await,
        Command::Sink(SinkCmd::Policy(a)) => sink::policy(&mut client, json, a).await,
        Command::Sink(SinkCmd::Scan(a)) => sink::scan(&mut client, json, a).await,
        Command::Copy(a) => sink::copy(&mut client, json, a).await,
        Command::Verify(a) => sink::verify(&mut client, json, a).await,
        Command::Role(c) => role::run(&mut client, json, c).await,
        Command::Audit(c) => audit::run(&mut client, json, c).await,
        Command::Archive(c) => archive::run(&mut client, json, c).await,
        Command::Pitr(a) => pitr::pitr(client, json, a).await,
        Command::Catalog(CatalogCmd::SearchBinlog(a)) => pitr::search(&mut client, json, a).await,
        Command::RestorePoint(c) => restore_point::run(&mut client, json, c).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        // A subcommand flag named like a global one fails only at parse time.
        let cli =
            Cli::try_parse_from(["lockstep", "certs", "init", "d", "--coordinator-count", "2"])
                .expect("certs init parses");
        assert!(
            matches!(cli.command, Command::Certs(CertsCmd::Init(ref a)) if a.coordinator_count == 2)
        );
    }

    #[test]
    fn patience_parses_and_no_leader_says_what_was_tried() {
        let cli = Cli::try_parse_from(["lockstep", "--patience", "2s", "catalog", "list"])
            .expect("parse");
        assert_eq!(cli.patience, Duration::from_secs(2));
        assert!(
            Cli::try_parse_from(["lockstep", "--patience", "soon", "catalog", "list"]).is_err()
        );
        let e = anyhow::Error::from(Error::NoCoordinator {
            what: "list backups".into(),
            waited: Duration::from_millis(2012),
            tried: "http://a:1, http://b:2".into(),
            last: "http://a:1: cannot connect".into(),
        });
        let text = error_text(&e, Duration::from_secs(2));
        assert!(
            text.starts_with("list backups: no leader answered within 2.0 s (--patience 2s)")
                && text.contains("tried http://a:1, http://b:2")
                && text.contains("last errors: http://a:1: cannot connect"),
            "{text}"
        );
    }

    #[test]
    fn lost_answers_give_up_after_three() {
        let mut lost = LostAnswers::new("start backup", Duration::from_secs(30));
        assert!(!lost.any() && !lost.patient());
        lost.lost("http://a:1", "transport error").expect("first");
        assert!(lost.any() && lost.patient());
        lost.lost("http://b:2", "transport error").expect("second");
        let e = lost
            .lost("http://c:3", "transport error")
            .expect_err("third");
        assert!(
            e.to_string()
                .contains("3 answers lost; the last from http://c:3"),
            "{e}"
        );
    }

    #[test]
    fn parses_commands_and_coordinator_lists() {
        let cli = Cli::try_parse_from([
            "lockstep",
            "--coordinators",
            "http://a:1,http://b:2",
            "backup",
            "start",
            "--cluster",
            "c1",
            "--wait",
            "--json",
        ])
        .expect("parse");
        assert_eq!(cli.coordinators, ["http://a:1", "http://b:2"]);
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Backup(BackupCmd::Start(StartArgs { wait: true, .. }))
        ));
        assert!(Cli::try_parse_from(["lockstep", "backup", "start"]).is_err());
    }

    #[test]
    fn parses_restore_point_commands() {
        let cli = Cli::try_parse_from([
            "lockstep",
            "restore-point",
            "schedule",
            "--cluster",
            "c1",
            "--every",
            "1s",
            "--keep",
            "5",
        ])
        .expect("parse");
        let Command::RestorePoint(restore_point::RestorePointCmd::Schedule(a)) = cli.command else {
            panic!("not restore-point schedule: {:?}", cli.command);
        };
        assert_eq!(a.every, Some(Duration::from_secs(1)));
        assert_eq!(a.keep, Some(5));
        let off = ["lockstep", "restore-point", "schedule", "--cluster", "c1"];
        assert!(Cli::try_parse_from(off).is_err(), "--every or --off");
        let both = [
            "lockstep",
            "restore-point",
            "schedule",
            "--cluster",
            "c1",
            "--off",
            "--every",
            "1s",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        let cli = Cli::try_parse_from([
            "lockstep",
            "restore-point",
            "create",
            "--cluster",
            "c1",
            "--label",
            "before deploy",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::RestorePoint(restore_point::RestorePointCmd::Create(ref a)) if a.label == "before deploy"
        ));
    }

    #[test]
    fn parses_restore_run_with_targets() {
        let cli = Cli::try_parse_from([
            "lockstep",
            "restore",
            "run",
            "--backup",
            "b1",
            "--target",
            "s1=mysql://root@h:1",
            "--target",
            "s2=mysql://root:p=w@h:2",
            "--force",
        ])
        .expect("parse");
        let Command::Restore(RestoreCmd::Run(a)) = cli.command else {
            panic!("not restore run: {:?}", cli.command);
        };
        assert_eq!(a.backup, "b1");
        assert!(a.force && !a.wait);
        assert_eq!(
            a.targets,
            [
                ("s1".to_string(), "mysql://root@h:1".to_string()),
                ("s2".to_string(), "mysql://root:p=w@h:2".to_string())
            ]
        );
        assert!(
            Cli::try_parse_from([
                "lockstep", "restore", "run", "--backup", "b1", "--target", "s1"
            ])
            .is_err()
        );
    }
}
