//! The causal-chain check (DESIGN.md, "Testing"), which proves invariant I3.
//!
//! A [`CausalWriter`] inserts record k = 1, 2, 3, ... into target k mod N,
//! each insert starting only after the previous one committed. Every record
//! therefore causally depends on all smaller ones. In a consistent cut (a
//! backup, restore point or restore) the records present across all targets
//! are exactly 1..m for some m; [`check_chain`] checks that and returns m. A
//! backup taken server by server at different moments shows gaps.
//!
//! An application's files join the chain through a journal
//! ([`CausalWriter::start_with_journal`]): right after record k commits, the
//! writer appends the line `k` to a file. A consistent cut of databases and
//! files has a journal that ends exactly at the chain's m
//! ([`journal_last`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts, Pool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::mariadb::{MariaDb, url_opts};

/// Pause between attempts when an insert fails (the server may be
/// restarting); not a wait for state, the retry is.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long `stop()` lets the in-flight insert finish before abandoning it.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many missing or misplaced records an error lists.
const LIST_LIMIT: usize = 10;

/// Quotes a MySQL identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[derive(Clone)]
enum Source {
    Opts(Opts),
    Pool(Pool),
}

/// One table of the chain: where it lives and what it is called.
#[derive(Clone)]
pub struct Target {
    name: String,
    source: Source,
    db: String,
    table: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("db", &self.db)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A target reached through a `mysql://` URL (connections over TCP).
    pub fn new(url: &str, db: &str, table: &str) -> anyhow::Result<Self> {
        let opts = url_opts(url)?;
        let name = format!("{}:{}/{db}.{table}", opts.ip_or_hostname(), opts.tcp_port());
        Ok(Self {
            name,
            source: Source::Opts(opts),
            db: db.into(),
            table: table.into(),
        })
    }

    /// The cluster tests' chain: table `chain.rec` on each of `servers`,
    /// record k on `servers[k mod N]`.
    pub fn chain_on(servers: &[MariaDb]) -> Vec<Self> {
        servers
            .iter()
            .map(|s| Self::on(s, "chain", "rec"))
            .collect()
    }

    /// A target on a harness server.
    pub fn on(server: &MariaDb, db: &str, table: &str) -> Self {
        Self {
            name: format!("{} ({})/{db}.{table}", server.name(), server.address()),
            source: Source::Opts(server.opts()),
            db: db.into(),
            table: table.into(),
        }
    }

    /// A target reached through an existing pool; `name` appears in errors.
    pub fn from_pool(name: &str, pool: Pool, db: &str, table: &str) -> Self {
        Self {
            name: format!("{name}/{db}.{table}"),
            source: Source::Pool(pool),
            db: db.into(),
            table: table.into(),
        }
    }

    /// The name used in errors (server, address, db.table).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `` `db`.`table` ``.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.db), quote_ident(&self.table))
    }

    /// A connection to the target's server.
    pub async fn conn(&self) -> anyhow::Result<Conn> {
        let conn = match &self.source {
            Source::Opts(opts) => Conn::new(opts.clone()).await,
            Source::Pool(pool) => pool.get_conn().await,
        };
        conn.with_context(|| format!("connect to causal target {}", self.name))
    }

    /// Creates the database and the chain table if they do not exist.
    pub async fn create(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        for sql in [
            format!("CREATE DATABASE IF NOT EXISTS {}", quote_ident(&self.db)),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (k BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
                self.qualified()
            ),
        ] {
            conn.query_drop(&sql)
                .await
                .with_context(|| format!("run `{sql}` on causal target {}", self.name))?;
        }
        Ok(())
    }

    /// Every k in the table, ascending.
    pub async fn keys(&self) -> anyhow::Result<Vec<u64>> {
        let mut conn = self.conn().await?;
        let sql = format!("SELECT k FROM {} ORDER BY k", self.qualified());
        conn.query(&sql)
            .await
            .with_context(|| format!("run `{sql}` on causal target {}", self.name))
    }
}

/// What the writer saw, for errors and reports.
#[derive(Debug, Default, Clone)]
pub struct WriterStats {
    /// Failed insert attempts (each was retried).
    pub errors: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Inserts the chain in a background task until stopped. See the module doc.
#[derive(Debug)]
pub struct CausalWriter {
    targets: Vec<Target>,
    first: u64,
    committed: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    stats: Arc<Mutex<WriterStats>>,
    task: Option<JoinHandle<()>>,
}

impl CausalWriter {
    /// Creates the database and table on every target, then starts writing.
    ///
    /// The chain continues after the largest k already present on any target
    /// (so it starts at 1 on empty tables).
    pub async fn start(targets: Vec<Target>) -> anyhow::Result<CausalWriter> {
        CausalWriter::start_inner(targets, None).await
    }

    /// As [`CausalWriter::start`], and after each record k commits (before
    /// the next insert starts) appends the line `"k\n"` to the file at
    /// `journal` with one `write` on an `O_APPEND` descriptor (no fsync).
    ///
    /// The file is created if missing. If it exists, it must be a complete
    /// journal ([`journal_last`]) that ends where the chain on the targets
    /// ends, so the lines stay exactly 1..=m. If appending fails, the writer
    /// stops (its failure is in [`CausalWriter::stats`]): the chain never
    /// runs ahead of the journal by more than the record in flight.
    pub async fn start_with_journal(
        targets: Vec<Target>,
        journal: impl Into<PathBuf>,
    ) -> anyhow::Result<CausalWriter> {
        CausalWriter::start_inner(targets, Some(journal.into())).await
    }

    async fn start_inner(
        targets: Vec<Target>,
        journal: Option<PathBuf>,
    ) -> anyhow::Result<CausalWriter> {
        if targets.is_empty() {
            bail!("a causal writer needs at least one target");
        }
        let mut last = 0;
        for target in &targets {
            target.create().await?;
            if let Some(max) = target.keys().await?.last() {
                last = last.max(*max);
            }
        }
        let journal = match journal {
            None => None,
            Some(path) => Some(Journal::open(path, last)?),
        };
        let (committed_tx, committed) = watch::channel(last);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let task = tokio::spawn(write_chain(
            targets.clone(),
            last + 1,
            journal,
            committed_tx,
            stop_rx,
            stats.clone(),
        ));
        tracing::info!(
            targets = targets.len(),
            first = last + 1,
            "causal writer started"
        );
        Ok(CausalWriter {
            targets,
            first: last + 1,
            committed,
            stop,
            stats,
            task: Some(task),
        })
    }

    /// The targets, in chain order (record k goes to `targets[k % N]`).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The k the writer started at.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The highest k known to be committed so far.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Failed attempts so far and the last failure.
    pub fn stats(&self) -> WriterStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until record `k` has committed; errors after `timeout`, quoting
    /// the writer's last failure.
    pub async fn wait_committed(&self, k: u64, timeout: Duration) -> anyhow::Result<u64> {
        let mut rx = self.committed.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= k)).await {
            Ok(Ok(c)) => Ok(*c),
            Ok(Err(_)) => bail!(
                "causal writer ended at k={} before reaching k={k}; {:?}",
                self.committed(),
                self.stats()
            ),
            Err(_) => bail!(
                "causal writer reached only k={} of k={k} within {timeout:?}; {:?}",
                self.committed(),
                self.stats()
            ),
        }
    }

    /// Stops the writer after its in-flight insert and returns the highest
    /// committed k (the number of records when the chain started at 1).
    ///
    /// If the in-flight insert cannot finish within 10 s (its server is
    /// frozen or gone), it is abandoned; it may still commit later, so the
    /// chain may then end at the returned k + 1.
    pub async fn stop(mut self) -> u64 {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(STOP_GRACE, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "causal writer task failed"),
                Err(_) => {
                    tracing::warn!(
                        committed = self.committed(),
                        "causal writer's insert did not finish; abandoning it"
                    );
                    task.abort();
                }
            }
        }
        let committed = self.committed();
        tracing::info!(committed, stats = ?self.stats(), "causal writer stopped");
        committed
    }
}

impl Drop for CausalWriter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The journal file a writer appends to.
struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal for a chain that currently ends at
    /// `last`; an existing journal must end there too.
    fn open(path: PathBuf, last: u64) -> anyhow::Result<Journal> {
        let ends_at = if path.exists() {
            journal_last(&path)?
        } else {
            0
        };
        if ends_at != last {
            bail!(
                "journal {} ends at k={ends_at} but the chain on the targets ends at k={last}",
                path.display()
            );
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open journal {} for appending", path.display()))?;
        Ok(Journal { path, file })
    }

    /// Appends `k\n` in one write.
    fn append(&mut self, k: u64) -> anyhow::Result<()> {
        self.file
            .write_all(format!("{k}\n").as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("append k={k} to journal {}", self.path.display()))
    }
}

async fn write_chain(
    targets: Vec<Target>,
    first: u64,
    mut journal: Option<Journal>,
    committed: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Mutex<WriterStats>>,
) {
    let n = targets.len() as u64;
    let mut conns: Vec<Option<Conn>> = targets.iter().map(|_| None).collect();
    let mut k = first;
    while !*stop.borrow() {
        let i = usize::try_from(k % n).expect("k % n < n, a usize");
        let target = &targets[i];
        let mut failures = 0u64;
        loop {
            // A retry uses INSERT IGNORE: the failed attempt may have
            // committed k after all (the reply was lost), and k must end up
            // committed exactly once before k + 1 starts.
            let ignore = if failures == 0 { "" } else { " IGNORE" };
            let sql = format!(
                "INSERT{ignore} INTO {} (k) VALUES ({k})",
                target.qualified()
            );
            let result = async {
                let conn = match &mut conns[i] {
                    Some(conn) => conn,
                    slot => slot.insert(target.conn().await?),
                };
                conn.query_drop(&sql)
                    .await
                    .with_context(|| format!("insert k={k} into causal target {}", target.name))
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    conns[i] = None;
                    failures += 1;
                    let msg = format!("{e:#}");
                    if failures == 1 {
                        tracing::warn!(
                            k,
                            target = target.name,
                            error = msg,
                            "causal insert failed; retrying"
                        );
                    } else {
                        tracing::debug!(
                            k,
                            target = target.name,
                            error = msg,
                            failures,
                            "causal insert failed again"
                        );
                    }
                    {
                        let mut stats = stats
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        stats.errors += 1;
                        stats.last_error = Some(msg);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        if let Some(journal) = &mut journal
            && let Err(e) = journal.append(k)
        {
            let msg = format!("{e:#}");
            tracing::error!(k, error = msg, "causal writer stops: journal append failed");
            let mut stats = stats
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            stats.errors += 1;
            stats.last_error = Some(msg);
            break;
        }
        committed.send_replace(k);
        k += 1;
    }
    for conn in conns.into_iter().flatten() {
        let _ = conn.disconnect().await;
    }
}

/// Reads every k from every target and checks the chain: exactly 1..m, no
/// gaps, no duplicates, and each k on target k mod N. Returns m (0 if all
/// tables are empty). The error lists the first missing k's and the target
/// each belongs on.
pub async fn check_chain(targets: &[Target]) -> anyhow::Result<u64> {
    if targets.is_empty() {
        bail!("check_chain needs at least one target");
    }
    let n = targets.len() as u64;
    let mut per_target = Vec::with_capacity(targets.len());
    for target in targets {
        per_target.push(target.keys().await?);
    }
    let m = per_target
        .iter()
        .filter_map(|keys| keys.last().copied())
        .max()
        .unwrap_or(0);
    let size = usize::try_from(m).context("chain length does not fit in memory")? + 1;
    let mut owner: Vec<Option<usize>> = vec![None; size];
    let mut problems = Vec::new();
    for (i, keys) in per_target.iter().enumerate() {
        for &k in keys {
            let slot = &mut owner[usize::try_from(k).expect("k <= m fits")];
            if k == 0 {
                problems.push(format!(
                    "k=0 on {} (the chain starts at 1)",
                    targets[i].name
                ));
            } else if let Some(other) = *slot {
                problems.push(format!(
                    "k={k} is on both {} and {}",
                    targets[other].name, targets[i].name
                ));
            } else if k % n != i as u64 {
                problems.push(format!(
                    "k={k} is on {} but belongs on {} (target {})",
                    targets[i].name,
                    targets[usize::try_from(k % n).expect("k % n < n")].name,
                    k % n
                ));
            }
            *slot = Some(i);
        }
    }
    let missing: Vec<u64> = (1..=m)
        .filter(|&k| owner[usize::try_from(k).expect("k <= m fits")].is_none())
        .collect();
    if missing.is_empty() && problems.is_empty() {
        return Ok(m);
    }
    let mut msg = format!("causal chain broken: max k={m}, {} missing", missing.len());
    for k in missing.iter().take(LIST_LIMIT) {
        let t = usize::try_from(k % n).expect("k % n < n");
        msg.push_str(&format!(
            "\n  missing k={k} (belongs on target {t}: {})",
            targets[t].name
        ));
    }
    if missing.len() > LIST_LIMIT {
        msg.push_str(&format!(
            "\n  ... and {} more missing",
            missing.len() - LIST_LIMIT
        ));
    }
    for p in problems.iter().take(LIST_LIMIT) {
        msg.push_str(&format!("\n  {p}"));
    }
    if problems.len() > LIST_LIMIT {
        msg.push_str(&format!(
            "\n  ... and {} more misplaced or duplicated",
            problems.len() - LIST_LIMIT
        ));
    }
    for (i, keys) in per_target.iter().enumerate() {
        msg.push_str(&format!(
            "\n  target {i} {}: {} rows, max k={}",
            targets[i].name,
            keys.len(),
            keys.last().copied().unwrap_or(0)
        ));
    }
    bail!(msg)
}

/// What a journal file holds (see [`CausalWriter::start_with_journal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEnd {
    /// The complete lines are exactly 1..=last (0 for an empty file).
    pub last: u64,
    /// Bytes after the last newline, if any: a line cut short (by a crash
    /// image taken mid-write, for example).
    pub partial: Option<String>,
}

/// Reads a journal and checks its complete lines are exactly `1`, `2`, ...,
/// `m` in order (no gap, repeat or stray text); a trailing partial line is
/// returned, not an error. Errors name the file and the first bad line.
pub fn read_journal(path: &Path) -> anyhow::Result<JournalEnd> {
    let bytes = std::fs::read(path).with_context(|| format!("read journal {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("journal {} is not UTF-8", path.display()))?;
    let (complete, partial) = match text.rfind('\n') {
        Some(end) => (&text[..end], &text[end + 1..]),
        None => ("", text.as_str()),
    };
    let mut last = 0u64;
    if !complete.is_empty() || text.starts_with('\n') {
        for (i, line) in complete.split('\n').enumerate() {
            let want = last + 1;
            if line != want.to_string() {
                bail!(
                    "journal {}: line {} is {line:?}, expected {want} (the lines before it are 1..={last})",
                    path.display(),
                    i + 1
                );
            }
            last = want;
        }
    }
    Ok(JournalEnd {
        last,
        partial: (!partial.is_empty()).then(|| partial.to_string()),
    })
}

/// The journal's last record m, after checking its lines are exactly
/// 1..=m with no partial trailing line (which is reported as an error).
pub fn journal_last(path: &Path) -> anyhow::Result<u64> {
    let end = read_journal(path)?;
    if let Some(partial) = end.partial {
        bail!(
            "journal {}: complete lines 1..={}, then a partial line {partial:?}",
            path.display(),
            end.last
        );
    }
    Ok(end.last)
}
