//! Test helpers for sinks: media agents registered with a cluster, disk
//! pool and S3 sinks added through the `lockstep` CLI, an operator key,
//! bulk data, and ways to damage or watch what a sink holds.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{AgentOptions, AgentProc};
use crate::catalog_cli::CatalogCli;
use crate::mariadb::MariaDb;
use crate::plain_cluster::{CLUSTER, Cluster};
use crate::s3::S3Server;

/// Starts a media agent named `name` registered with the cluster's group.
pub async fn media_agent(cluster: &Cluster, name: &str) -> anyhow::Result<AgentProc> {
    media_agent_with(cluster, name, Vec::new(), &[]).await
}

/// Like [`media_agent`], with `env` and `args`.
pub async fn media_agent_with(
    cluster: &Cluster,
    name: &str,
    env: Vec<(String, String)>,
    args: &[String],
) -> anyhow::Result<AgentProc> {
    let mut opts = AgentOptions::media(name);
    opts.extra_args = vec![
        "--cluster".into(),
        CLUSTER.into(),
        "--coordinators".into(),
        cluster.group.urls(),
    ];
    opts.extra_args.extend_from_slice(args);
    opts.env = env;
    opts.tls = cluster.tls.clone();
    AgentProc::start(opts).await
}

/// An operator key file (0600) in `dir`; returns its path.
pub fn key_file(dir: &std::path::Path, hex_key: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("operator.key");
    std::fs::write(&path, format!("{hex_key}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path.to_str().expect("utf-8").to_string())
}

/// A moto S3 server and an operator key, for a cluster whose agents hold
/// both ([`Keyed::start`]).
#[derive(Debug)]
pub struct Keyed {
    pub s3: S3Server,
    pub key: String,
    _keys: tempfile::TempDir,
}

impl Keyed {
    /// The S3 server, the key `hex_key`, and a cluster whose agents have
    /// the key and the S3 credentials.
    pub async fn start(prefix: &str, hex_key: &str) -> anyhow::Result<(Keyed, Cluster)> {
        let s3 = S3Server::start().await?;
        let keys = tempfile::tempdir()?;
        let key = key_file(keys.path(), hex_key)?;
        let cluster =
            Cluster::start_with_agent_env(prefix, &["--key-file", key.as_str()], &s3.env(), &[])
                .await?;
        let keyed = Keyed {
            s3,
            key,
            _keys: keys,
        };
        Ok((keyed, cluster))
    }

    /// A media agent of `cluster` with the same key and credentials.
    pub async fn media(&self, cluster: &Cluster, name: &str) -> anyhow::Result<AgentProc> {
        let args = ["--key-file".to_string(), self.key.clone()];
        media_agent_with(cluster, name, self.s3.env(), &args).await
    }

    /// Adds sink `name` to `cluster`: the bucket under `prefix` (encrypted
    /// by default).
    pub async fn add_s3(
        &self,
        cluster: &Cluster,
        name: &str,
        prefix: &str,
    ) -> anyhow::Result<Value> {
        let url = format!("s3://{}/{prefix}", self.s3.bucket());
        let endpoint = self.s3.endpoint();
        add_sink(
            cluster,
            &[name, "--kind", "s3", "--url", &url, "--endpoint", &endpoint],
        )
        .await
    }
}

/// Adds sink `pool`: `media`'s pool. Returns the pool's directory and the
/// sink as `sink add` printed it.
pub async fn add_pool(
    cluster: &Cluster,
    media: &AgentProc,
) -> anyhow::Result<(std::path::PathBuf, Value)> {
    let pool = media
        .pool()
        .expect("a media agent has a pool")
        .to_path_buf();
    let path = pool.to_str().expect("utf-8").to_string();
    let args = [
        "pool",
        "--kind",
        "disk",
        "--agent",
        media.name(),
        "--path",
        &path,
    ];
    Ok((pool, add_sink(cluster, &args).await?))
}

/// Fills `bulk.t` on `db` with `rows` barely compressible rows (~65 bytes
/// each compressed).
pub async fn fill_bulk(db: &MariaDb, rows: u64) -> anyhow::Result<()> {
    db.exec("CREATE DATABASE bulk").await?;
    db.exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, a CHAR(64), b CHAR(64))")
        .await?;
    db.exec(&format!(
        "INSERT INTO bulk.t SELECT seq, SHA2(seq, 256), SHA2(-seq, 256) FROM bulk.seq_1_to_{rows}"
    ))
    .await
}

/// `lockstep sink policy`: backups go to `primary`, then are copied to
/// `copies`.
pub async fn sink_policy(cluster: &Cluster, primary: &str, copies: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["sink", "policy", "--cluster", CLUSTER, "--primary", primary];
    for c in copies {
        argv.extend(["--copy", c]);
    }
    cluster.cli_json(&argv).await?;
    Ok(())
}

/// Polls `catalog show ID` until every server has a copy in `sink`.
pub async fn wait_copies(cluster: &Cluster, id: &str, sink: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let shown = cluster.cli_json(&["catalog", "show", id]).await?;
        let servers = shown["servers"].as_array().cloned().unwrap_or_default();
        let copied = servers
            .iter()
            .filter(|s| {
                s["copies"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["sink"] == sink))
            })
            .count();
        if copied == servers.len() && copied > 0 {
            return Ok(shown);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "backup {id} not copied to {sink} in time: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `lockstep sink add ARGS`, retried while the media agent's registration
/// has not reached the catalog yet (it registers in the background).
pub async fn add_sink(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = vec!["--json", "sink", "add"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--cluster", CLUSTER]);
    loop {
        let out = cluster.cli(&all).await?;
        if out.status.success() {
            return Ok(serde_json::from_str(out.stdout.trim())?);
        }
        anyhow::ensure!(
            out.stderr.contains("is registered") && Instant::now() < deadline,
            "sink add {args:?}: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `.partial` file under `dir` with its size.
pub fn partial_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(partial_files(&p));
        } else if p.to_string_lossy().ends_with(".partial") {
            out.push((p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    out
}

/// Flips one byte in the middle of the first data file under `dir`;
/// returns its path relative to `dir`.
pub fn damage_a_data_file(dir: &std::path::Path) -> anyhow::Result<String> {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        entries.into_iter().find_map(|p| {
            if p.is_dir() {
                find(&p)
            } else {
                p.to_string_lossy().ends_with(".tsv.zst").then_some(p)
            }
        })
    }
    let file = find(dir).ok_or_else(|| anyhow::anyhow!("no data file under {}", dir.display()))?;
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, bytes)?;
    Ok(file.strip_prefix(dir)?.to_string_lossy().into_owned())
}
