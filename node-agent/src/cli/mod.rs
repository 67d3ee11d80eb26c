//! `lockstep-agent` commands: `serve` (the daemon), `dump`, `load` and
//! `verify` (standalone, no coordinator), `cut`/`status` (talk to a
//! running agent, for operators and tests), and `search-binlog` (local
//! binlog files, in `search_binlog`).
//!
//! Every command prints a human summary by default and one JSON object with
//! `--json`. Exit codes: 0 success, 1 failure, 2 bad usage, 75 a temporary
//! refusal worth retrying (a long statement, a lock that was not granted in
//! time, an agent busy with another backup).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_proto::agent as pb;
use lockstep_proto::agent::node_agent_client::NodeAgentClient;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::cut::{Budgets, PrepareOptions};
use crate::ddl_guard::DdlOptions;
use crate::dump::DumpOptions;
use crate::error::{Error, error_text};
use crate::mysql::Server;
use crate::progress::{self, Progress};
use crate::restore::{self, LoadOptions};

mod args;
mod search_binlog;

pub use args::*;

/// Runs a command; returns the process exit code.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> i32 {
    let result = match cli.command {
        Command::Serve(a) => serve(*a, shutdown).await,
        Command::Dump(a) => dump(a, shutdown).await,
        Command::Load(a) => load(a).await,
        Command::Verify(a) => verify(a).await,
        Command::Cut(a) => cut(a).await,
        Command::Status(a) => status(a).await,
        Command::Keygen(a) => keygen(a),
        Command::SearchBinlog(a) => search_binlog::run(a).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let retry = e.downcast_ref::<Error>().is_some_and(Error::is_refusal);
            eprintln!("error: {}", error_text(e.as_ref()));
            if retry { EXIT_RETRY } else { 1 }
        }
    }
}

async fn serve(a: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(url) = &a.mysql {
        crate::secrets::warn_if_on_argv(
            "--mysql",
            url,
            std::env::var("LOCKSTEP_MYSQL").ok().as_deref(),
        );
    }
    let cfg = a.config()?;
    if let Some(path) = &a.config {
        crate::secrets::warn_if_readable(path, &cfg.mysql);
    }
    let agent = cfg.validate()?;
    crate::server::run(agent, cfg.listen, cfg.insecure_plaintext, shutdown).await?;
    Ok(())
}

/// Prints progress lines to stderr every two seconds until dropped.
struct Ticker(Option<tokio::task::JoinHandle<()>>);

impl Ticker {
    fn start(verb: &'static str, progress: Arc<Progress>, quiet: bool) -> Ticker {
        if quiet {
            return Ticker(None);
        }
        let started = Instant::now();
        Ticker(Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", progress.snapshot().line(verb, started.elapsed()));
            }
        })))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// The server of `dump` and `load`: the URL with the password given beside it.
fn cli_server(url: &str, password_file: Option<&std::path::Path>) -> anyhow::Result<Server> {
    crate::secrets::warn_if_on_argv(
        "--mysql",
        url,
        std::env::var("LOCKSTEP_MYSQL").ok().as_deref(),
    );
    Ok(crate::secrets::server(
        url,
        &crate::mysql::SslSettings::default(),
        password_file,
    )?)
}

async fn dump(a: DumpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = cli_server(&a.mysql, a.mysql_password_file.as_deref())?;
    if !(1..=64).contains(&a.threads) {
        anyhow::bail!("--threads must be 1..=64, got {}", a.threads);
    }
    let ddl = DdlOptions {
        policy: a.ddl_policy,
        wait: a.ddl_wait,
    };
    ddl.validate("--ddl-wait")?;
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| server.address().to_string());
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let ticker = Ticker::start("dump", progress.clone(), a.quiet);
    let result = crate::agent::dump_once(
        &server,
        &name,
        crate::sink::artifact::Artifact::in_directory(&a.out),
        PrepareOptions {
            budgets: Budgets {
                preflight: a.preflight_budget,
                lock_wait: a.lock_wait_budget,
                preflush: !a.no_preflush,
            },
            lock_method: a.lock_method,
            snapshot_connections: a.threads.max(1),
            // Committed at once; the lease only bounds a stuck process.
            lease: std::time::Duration::from_secs(10),
            // The dump starts right after the lock; only the schema read
            // keeps the other connections idle.
            snapshot_idle: ServeConfig::default().snapshot_ttl + crate::agent::SNAPSHOT_IDLE_MARGIN,
        },
        &DumpOptions {
            zstd_level: a.zstd_level,
            chunk_rows: a.chunk_rows,
            ddl,
        },
        progress,
        shutdown,
    )
    .await?;
    drop(ticker);
    let m = &result.manifest;
    let elapsed = started.elapsed();
    if a.json {
        println!(
            "{}",
            json!({
                "backup_id": m.backup_id,
                "dir": a.out,
                "server": m.server.address,
                "position": m.position,
                "lock": m.lock,
                "tables": m.totals.tables,
                "rows": m.totals.rows,
                "bytes": m.totals.bytes,
                "files": m.totals.files,
                "manifest_sha256": result.manifest_sha256,
                "duration_ms": elapsed.as_millis() as u64,
                "warnings": m.warnings,
            })
        );
    } else {
        println!("dumped {} into {}", m.server.address, a.out.display());
        println!("  position   {}", m.position);
        println!(
            "  lock       {} held {:.2} ms (waited {:.2} ms)",
            m.lock.method,
            m.lock.held_us as f64 / 1000.0,
            m.lock.lock_wait_us as f64 / 1000.0
        );
        println!(
            "  data       {} tables, {} rows, {} in {} files",
            m.totals.tables,
            progress::group(m.totals.rows),
            progress::mib(m.totals.bytes),
            m.totals.files
        );
        println!("  took       {:.1}s", elapsed.as_secs_f64());
        for w in &m.warnings {
            println!("  warning    {w}");
        }
    }
    Ok(())
}

async fn load(a: LoadArgs) -> anyhow::Result<()> {
    let server = cli_server(&a.mysql, a.mysql_password_file.as_deref())?;
    if !(1..=64).contains(&a.threads) {
        anyhow::bail!("--threads must be 1..=64, got {}", a.threads);
    }
    let progress = Arc::new(Progress::default());
    let ticker = Ticker::start("load", progress.clone(), a.quiet);
    let report = restore::load(
        &server,
        &crate::sink::artifact::Artifact::in_directory(&a.from),
        &LoadOptions {
            threads: a.threads,
            force: a.force,
            binlog: a.binlog,
            allow_reset_master: a.allow_reset_master,
        },
        progress,
    )
    .await?;
    drop(ticker);
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "loaded backup {} of {} into {}",
            report.backup_id, report.source_server, report.server
        );
        println!(
            "  data       {} databases, {} tables, {} rows (row counts match the manifest)",
            report.databases,
            report.tables,
            progress::group(report.rows)
        );
        if let Some(g) = &report.gtid_slave_pos {
            println!("  gtid       replication position set to {g}");
        }
        println!("  took       {:.1}s", report.duration_ms as f64 / 1000.0);
    }
    Ok(())
}

async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let (m, _) = restore::verify(
        &crate::sink::artifact::Artifact::in_directory(&a.from),
        a.threads,
        progress,
    )
    .await?;
    if a.json {
        println!(
            "{}",
            json!({"dir": a.from, "ok": true, "backup_id": m.backup_id, "files": m.files.len(), "bytes": m.totals.bytes, "rows": m.totals.rows, "position": m.position})
        );
    } else {
        println!(
            "{}: backup {} of {} is intact ({} files, {} checked)",
            a.from.display(),
            m.backup_id,
            m.server.address,
            m.files.len(),
            progress::mib(m.totals.bytes)
        );
    }
    Ok(())
}

/// `keygen FILE`.
fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let key = crate::sink::crypt::KeyFile::generate(&a.file)?;
    println!(
        "wrote operator key {} (key id {}); keep a copy off the backup hosts: without it encrypted copies cannot be read",
        a.file.display(),
        key.id()
    );
    Ok(())
}

async fn connect(
    addr: &str,
    tls: &lockstep_proto::tls::TlsOptions,
) -> anyhow::Result<NodeAgentClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| anyhow::anyhow!("invalid agent address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = tls
        .transport()?
        .connect(endpoint)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach agent at {addr}: {e}"))?;
    Ok(NodeAgentClient::new(channel))
}

fn status_err(addr: &str, what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("agent {addr}: {what}: {} ({:?})", s.message(), s.code())
}

fn emit(json_mode: bool, value: serde_json::Value, human: String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{human}");
    }
    let _ = std::io::stdout().flush();
}

async fn cut(a: CutArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.agent, &a.tls).await?;
    let id = a
        .backup_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut stream = client
        .prepare(pb::PrepareRequest {
            kind: String::new(),
            backup_id: id.clone(),
            lease_ms: a.lease.as_millis() as u64,
            budgets: None,
            snapshot_connections: 0,
            position_only: false,
            term: 0,
            wait_for_go: false,
        })
        .await
        .map_err(|s| status_err(&a.agent, "prepare", s))?
        .into_inner();
    let Some(pb::PrepareEvent {
        event: Some(pb::prepare_event::Event::Prepared(p)),
    }) = stream
        .message()
        .await
        .map_err(|s| status_err(&a.agent, "prepare", s))?
    else {
        anyhow::bail!("agent {}: prepare stream ended without PREPARED", a.agent);
    };
    let pos = p.position.clone().unwrap_or_default();
    emit(
        a.json,
        json!({"step": "prepared", "backup_id": id, "binlog_file": pos.binlog_file, "binlog_pos": pos.binlog_pos, "gtid": pos.gtid_set, "lock_method": p.lock_method, "lock_wait_us": p.lock_wait_us, "capture_us": p.capture_us}),
        format!(
            "prepared {id}: {}:{} gtid {} ({}, waited {} us, captured in {} us)",
            pos.binlog_file,
            pos.binlog_pos,
            pos.gtid_set,
            p.lock_method,
            p.lock_wait_us,
            p.capture_us
        ),
    );
    if !a.hold.is_zero() {
        // Keep the stream open while holding, and notice an early release.
        tokio::select! {
            _ = tokio::time::sleep(a.hold) => {}
            m = stream.message() => {
                if let Ok(Some(pb::PrepareEvent { event: Some(pb::prepare_event::Event::Released(r)) })) = m {
                    anyhow::bail!("agent {}: lock released early ({}) after {} us", a.agent, r.reason, r.held_us);
                }
            }
        }
    }
    if a.abort {
        let r = client
            .abort(pb::AbortRequest {
                backup_id: id.clone(),
                reason: "lockstep-agent cut --abort".into(),
                term: 0,
            })
            .await
            .map_err(|s| status_err(&a.agent, "abort", s))?
            .into_inner();
        emit(
            a.json,
            json!({"step": "aborted", "backup_id": id, "was_held": r.was_held}),
            format!("aborted {id}"),
        );
        return Ok(());
    }
    let c = client
        .commit(pb::CommitRequest {
            backup_id: id.clone(),
            term: 0,
        })
        .await
        .map_err(|s| status_err(&a.agent, "commit", s))?
        .into_inner();
    let snaps: Vec<serde_json::Value> = c
        .snapshot_positions
        .iter()
        .map(|p| json!({"binlog_file": p.binlog_file, "binlog_pos": p.binlog_pos}))
        .collect();
    emit(
        a.json,
        json!({"step": "committed", "backup_id": id, "held_us": c.held_us, "snapshot_positions": snaps}),
        format!("committed {id}: lock held {} us", c.held_us),
    );
    if !a.transfer {
        // Nothing will be transferred: free the agent's snapshots now rather
        // than after its snapshot_ttl.
        client
            .abort(pb::AbortRequest {
                backup_id: id.clone(),
                reason: "lockstep-agent cut without --transfer".into(),
                term: 0,
            })
            .await
            .map_err(|s| status_err(&a.agent, "drop snapshots", s))?;
    } else {
        let mut t = client
            .transfer(pb::TransferRequest {
                sink: None,
                cluster: String::new(),
                cut_servers: Vec::new(),
                backup_id: id.clone(),
                zstd_level: 0,
                term: 0,
            })
            .await
            .map_err(|s| status_err(&a.agent, "transfer", s))?
            .into_inner();
        while let Some(m) = t
            .message()
            .await
            .map_err(|s| status_err(&a.agent, "transfer", s))?
        {
            if let Some(art) = m.artifact.filter(|_| m.done) {
                emit(
                    a.json,
                    json!({"step": "transferred", "backup_id": id, "location": art.location, "bytes": art.total_bytes, "files": art.files, "rows": art.rows, "manifest_sha256": art.manifest_sha256}),
                    format!(
                        "transferred {id} to {} ({} rows, {} bytes)",
                        art.location, art.rows, art.total_bytes
                    ),
                );
            } else if !a.json {
                eprintln!(
                    "transfer: tables {}/{}, {} rows",
                    m.tables_done, m.tables_total, m.rows
                );
            }
        }
    }
    Ok(())
}

async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.agent, &a.tls).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| status_err(&a.agent, "status", s))?
        .into_inner();
    let server = s.server.clone().unwrap_or_default();
    let last = s.last_release.clone();
    emit(
        a.json,
        json!({
            "state": s.state, "backup_id": s.backup_id, "lock_held": s.lock_held, "lock_held_for_us": s.lock_held_for_us,
            "server": {"name": server.name, "address": server.address, "flavour": server.flavour, "version": server.version, "server_id": server.server_id, "gtid_mode": server.gtid_mode},
            "last_release": last.as_ref().map(|r| json!({"reason": r.reason, "held_us": r.held_us, "released_at_unix_us": r.released_at_unix_us})),
            "agent_version": s.agent_version,
        }),
        format!(
            "agent {}: {}{}{}\n  server  {} {} {} ({})\n  last release  {}",
            a.agent,
            s.state,
            if s.backup_id.is_empty() {
                String::new()
            } else {
                format!(" (backup {})", s.backup_id)
            },
            lock_line(s.lock_held, s.lock_held_for_us),
            server.name,
            server.flavour,
            server.version,
            server.address,
            last.map_or("none".into(), |r| format!(
                "{} after {} us",
                r.reason, r.held_us
            )),
        ),
    );
    Ok(())
}

/// The status line about the lock: empty unless it is held, then how long
/// (`\n  lock    held for 12.3 ms`).
fn lock_line(held: bool, held_for_us: u64) -> String {
    if held {
        format!("\n  lock    held for {:.1} ms", held_for_us as f64 / 1000.0)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl_guard::DdlPolicy;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = Error::mysql(
            "h:1",
            "open lock connection",
            mysql_async::Error::Io(mysql_async::IoError::Io(io)),
        );
        let text = error_text(&e);
        assert!(
            text.starts_with("server h:1: cannot open lock connection: "),
            "{text}"
        );
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert_eq!(text.matches("Input/output error").count(), 1, "{text}");
    }

    #[test]
    fn status_shows_how_long_the_lock_is_held() {
        assert_eq!(lock_line(false, 0), "");
        assert_eq!(lock_line(true, 12_345), "\n  lock    held for 12.3 ms");
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::parse_from([
            "lockstep-agent",
            "serve",
            "--mysql",
            "mysql://root@127.0.0.1:3307",
            "--name",
            "db7",
            "--lock-wait-budget",
            "250ms",
            "--ddl-policy",
            "wait",
            "--ddl-wait",
            "45s",
        ]);
        let Command::Serve(a) = cli.command else {
            panic!("serve")
        };
        let c = a.config().expect("config");
        assert_eq!(c.name, "db7");
        assert_eq!(c.budgets.lock_wait, Duration::from_millis(250));
        assert_eq!(c.ddl_policy, DdlPolicy::Wait);
        assert_eq!(c.ddl_wait, Duration::from_secs(45));
        assert_eq!(
            c.validate()
                .expect("valid")
                .server
                .expect("a server")
                .address(),
            "127.0.0.1:3307"
        );
    }
}
