//! Real MariaDB servers for tests: one per [`MariaDb`], each in its own short
//! temp dir under /tmp with its own datadir, port, socket, binlog, server id
//! and GTID domain.
//!
//! Servers start from a template datadir made once by `mariadb-install-db`
//! (shared by all test processes, keyed by the mariadbd version and the
//! install options, built under a cross-process file lock), copied with
//! `cp -a`. See /work/shared/MARIADB.md for the measured recipes this follows.
//!
//! The datadir may live elsewhere ([`MariaDbOptions::datadir`], e.g. a btrfs
//! subvolume of a [`crate::loopfs::LoopFs`]), and [`MariaDb::start_on`]
//! starts a server on a datadir that already holds data (a restored backup
//! or a snapshot). The socket, pid file, tmpdir and logs always stay in the
//! server's temp dir, and a datadir the test passed in is never deleted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mysql_async::prelude::{FromRow, Queryable as _};
use mysql_async::{Conn, Opts, OptsBuilder, Pool};

use crate::ports;
use crate::process::{ChildProcess, Supervised, file_tail, short_temp_dir};

/// How long a server may take to accept a connection after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(10);
/// How long one readiness probe (connect + query) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many ports to try when another process takes the one we picked.
const PORT_ATTEMPTS: usize = 10;
/// Lines of error.log quoted in errors.
const LOG_TAIL_LINES: usize = 30;
/// `--log-bin` basename. Relative, so binlogs and `mysql-bin.index` (whose
/// entries are `./mysql-bin.NNNNNN`) live in the datadir and a copied or
/// restored datadir finds its binlogs wherever it is.
pub const BINLOG_BASENAME: &str = "mysql-bin";

/// Arguments to `mariadb-install-db` for the template datadir (after
/// `--no-defaults` and `--datadir`). Part of the template's cache key.
const INSTALL_ARGS: &[&str] = &[
    "--user=root",
    "--auth-root-authentication-method=normal",
    "--skip-test-db",
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=16M",
    "--skip-name-resolve",
];

/// Options of every server, after the per-server paths, port and ids. Small
/// caches keep a server at about 55–60 MB RSS (2M is the smallest log buffer
/// 10.11 accepts; it raises 1M with a warning). `--max-connections` is above
/// MARIADB.md's 20 because an agent's snapshot connections, a causal writer
/// and the checks can add up.
const SERVER_ARGS: &[&str] = &[
    "--bind-address=127.0.0.1",
    "--binlog-format=ROW",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--skip-name-resolve",
    "--performance-schema=OFF",
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--key-buffer-size=64K",
    "--aria-pagecache-buffer-size=1M",
    "--innodb-log-buffer-size=2M",
    "--query-cache-size=0",
    "--max-connections=50",
    "--table-open-cache=64",
];

/// How to start a [`MariaDb`].
#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    /// Name used in logs and errors; defaults to `mariadb-<server_id>`.
    pub name: Option<String>,
    /// `--server-id`; defaults to a number unique within this test process.
    pub server_id: Option<u32>,
    /// `--gtid-domain-id`; defaults to the server id, so independent shards
    /// never share a GTID domain.
    pub gtid_domain_id: Option<u32>,
    /// Write a binlog (`--log-bin=mysql-bin`). Default true.
    pub binlog: bool,
    /// Extra `mariadbd` arguments, appended last (so they override ours).
    pub extra_args: Vec<String>,
    /// Put the datadir here instead of `<temp dir>/data`: the template is
    /// copied into this directory, which must be empty or missing (an empty
    /// btrfs subvolume, a directory on an XFS mount). The test owns it: it is
    /// never deleted. `None` (the default): a datadir in the temp dir.
    pub datadir: Option<PathBuf>,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        Self {
            name: None,
            server_id: None,
            gtid_domain_id: None,
            binlog: true,
            extra_args: Vec::new(),
            datadir: None,
        }
    }
}

impl MariaDbOptions {
    /// Default options with a name.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Also serve TLS with this certificate and key (PEM files), and trust
    /// clients' certificates from `ca` (`--ssl-cert --ssl-key --ssl-ca`).
    pub fn with_tls(mut self, cert: &Path, key: &Path, ca: &Path) -> Self {
        self.extra_args.extend([
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
            format!("--ssl-ca={}", ca.display()),
        ]);
        self
    }
}

/// Server ids used in this process, so automatic ids never repeat one.
fn claim_server_id(wanted: Option<u32>) -> u32 {
    static USED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    match wanted {
        Some(id) => {
            used.insert(id);
            id
        }
        None => {
            let mut id = 1;
            while used.contains(&id) {
                id += 1;
            }
            used.insert(id);
            id
        }
    }
}

/// FNV-1a: a hash that is stable across processes and compiler versions,
/// for naming the shared template directory.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Runs `cmd` to completion, failing with its output if it does not succeed.
fn run(what: &str, cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {cmd:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The template datadir for this mariadbd version, built once per machine
/// (until /tmp is cleaned) and shared by every test process.
///
/// Built into a private directory and renamed into place when complete, all
/// under an exclusive lock on a lock file, so a reader never sees half a
/// template and parallel test binaries build it only once.
pub fn template_datadir() -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }

    let version = run(
        "read the mariadbd version",
        Command::new("mariadbd").arg("--version"),
    )?;
    let mut key = version.stdout.clone();
    key.extend_from_slice(INSTALL_ARGS.join(" ").as_bytes());
    let stem = format!("lockstep-tpl-{:016x}", fnv1a(&key));
    let tmp = Path::new("/tmp");
    let template = tmp.join(&stem);
    let lock_path = tmp.join(format!("{stem}.lock"));

    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open template lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("lock {}", lock_path.display()))?;

    // A complete template always has the system tables: the rename is the
    // last step of a build.
    if !template.join("mysql").is_dir() {
        // Leftovers of builds that died half-way (we hold the lock, so none
        // is running).
        let building_prefix = format!("{stem}.building-");
        for entry in std::fs::read_dir(tmp).context("list /tmp")? {
            let entry = entry.context("list /tmp")?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&building_prefix)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        if template.exists() {
            std::fs::remove_dir_all(&template)
                .with_context(|| format!("remove incomplete template {}", template.display()))?;
        }
        let building = tmp.join(format!("{building_prefix}{}", std::process::id()));
        let started = Instant::now();
        run(
            "build the template datadir",
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", building.display()))
                .args(INSTALL_ARGS),
        )?;
        std::fs::rename(&building, &template)
            .with_context(|| format!("rename {} to {}", building.display(), template.display()))?;
        tracing::info!(template = %template.display(), elapsed = ?started.elapsed(), "built template datadir");
    }
    lock.unlock()
        .with_context(|| format!("unlock {}", lock_path.display()))?;
    *built = Some(template.clone());
    Ok(template)
}

/// Connection options for a server on 127.0.0.1 as password-less root, over
/// TCP (never the socket, which mysql_async would otherwise switch to).
pub fn root_opts(port: u16) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .into()
}

/// Parses a `mysql://` URL into options that never switch to the socket.
pub fn url_opts(url: &str) -> anyhow::Result<Opts> {
    let opts = Opts::from_url(url).with_context(|| format!("parse MySQL URL {url}"))?;
    Ok(OptsBuilder::from_opts(opts).prefer_socket(false).into())
}

/// What one start attempt came to.
enum Launch {
    Ready(ChildProcess),
    PortTaken,
}

/// A running (or stopped) MariaDB server owned by the test. Dropping it kills
/// the server (by PID) and removes its temp dir.
#[derive(Debug)]
pub struct MariaDb {
    name: String,
    server_id: u32,
    gtid_domain_id: u32,
    opts: MariaDbOptions,
    port: u16,
    /// Declared before `dir`: the server dies before its files go.
    child: Option<ChildProcess>,
    /// The temp dir (socket, pid file, tmpdir, logs and, by default, the
    /// datadir); removed on drop.
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    /// `<dir>/data`, or a directory the test passed in (never removed here).
    datadir: PathBuf,
}

impl MariaDb {
    /// Starts one server per name, concurrently (default options otherwise).
    pub async fn start_many(names: &[&str]) -> anyhow::Result<Vec<MariaDb>> {
        futures::future::try_join_all(
            names
                .iter()
                .map(|name| MariaDb::start(MariaDbOptions::named(*name))),
        )
        .await
    }

    /// Starts one server per name with `opts` (its name set to each),
    /// concurrently.
    pub async fn start_many_with(
        names: &[&str],
        opts: &MariaDbOptions,
    ) -> anyhow::Result<Vec<MariaDb>> {
        futures::future::try_join_all(names.iter().map(|name| {
            MariaDb::start(MariaDbOptions {
                name: Some(name.to_string()),
                ..opts.clone()
            })
        }))
        .await
    }

    /// Copies the template datadir into a fresh temp dir (or into
    /// [`MariaDbOptions::datadir`]) and starts a server on a free port;
    /// returns once it answers queries.
    pub async fn start(opts: MariaDbOptions) -> anyhow::Result<MariaDb> {
        let mut db = MariaDb::prepare(opts.datadir.clone(), opts)?;
        let (datadir, external) = (db.datadir.clone(), db.opts.datadir.is_some());
        let copy_name = db.name.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let template = template_datadir()?;
            if external {
                copy_template_into(&template, &datadir, &copy_name)
            } else {
                run(
                    &format!("copy the template datadir for {copy_name}"),
                    Command::new("cp").arg("-a").arg(&template).arg(&datadir),
                )
                .map(drop)
            }
        })
        .await
        .context("join the datadir copy task")??;
        db.launch(None).await?;
        Ok(db)
    }

    /// Starts a server on `datadir`, which already holds a server's files (a
    /// restored backup, a snapshot): nothing is copied, InnoDB recovers what
    /// it must. Uses the same [`BINLOG_BASENAME`] as every harness server,
    /// so the datadir's binlog index is found, and the server and GTID
    /// domain ids from `opts` (give the original server's ids to continue
    /// its binlog as it was). `opts.datadir` must be `None` or `datadir`.
    /// The datadir is the test's: it is never deleted.
    pub async fn start_on(datadir: PathBuf, opts: MariaDbOptions) -> anyhow::Result<MariaDb> {
        if let Some(other) = &opts.datadir
            && other != &datadir
        {
            bail!(
                "start_on {}: options name another datadir {}",
                datadir.display(),
                other.display()
            );
        }
        if !datadir.join("mysql").is_dir() {
            bail!(
                "start_on {}: not a server's datadir (no mysql/ system schema in it)",
                datadir.display()
            );
        }
        let mut db = MariaDb::prepare(
            Some(datadir.clone()),
            MariaDbOptions {
                datadir: Some(datadir),
                ..opts
            },
        )?;
        db.launch(None).await?;
        Ok(db)
    }

    /// Claims the ids and the temp dir; nothing runs yet.
    fn prepare(datadir: Option<PathBuf>, opts: MariaDbOptions) -> anyhow::Result<MariaDb> {
        crate::init_tracing();
        let server_id = claim_server_id(opts.server_id);
        let gtid_domain_id = opts.gtid_domain_id.unwrap_or(server_id);
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("mariadb-{server_id}"));
        let dir = short_temp_dir("ls-").with_context(|| format!("create temp dir for {name}"))?;
        let dir_path = dir.path().to_path_buf();
        let datadir = datadir.unwrap_or_else(|| dir_path.join("data"));
        Ok(MariaDb {
            name,
            server_id,
            gtid_domain_id,
            opts,
            port: 0,
            child: None,
            dir: Some(dir),
            dir_path,
            datadir,
        })
    }

    /// Starts the server process; `port` fixed (a restart) or `None` to pick
    /// free ports until one is not taken.
    async fn launch(&mut self, fixed_port: Option<u16>) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut tried = Vec::new();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = match fixed_port {
                Some(port) => port,
                None => ports::free_port()?,
            };
            tried.push(port);
            match self.launch_on(port).await? {
                Launch::Ready(child) => {
                    self.port = port;
                    self.child = Some(child);
                    tracing::info!(
                        server = self.name,
                        port,
                        pid = self.pid(),
                        elapsed = ?started.elapsed(),
                        "mariadbd ready"
                    );
                    return Ok(());
                }
                Launch::PortTaken => {
                    tracing::info!(
                        server = self.name,
                        port,
                        attempt,
                        "port taken by another process; retrying"
                    );
                }
            }
        }
        bail!(
            "start {}: address already in use on every port tried ({tried:?})\nerror.log tail ({}):\n{}",
            self.name,
            self.error_log_path().display(),
            self.error_log_tail(LOG_TAIL_LINES)
        )
    }

    async fn launch_on(&mut self, port: u16) -> anyhow::Result<Launch> {
        let dir = &self.dir_path;
        let datadir = self.datadir();
        let error_log = self.error_log_path();
        let log_offset = std::fs::metadata(&error_log).map(|m| m.len()).unwrap_or(0);
        let tmpdir = dir.join("tmp");
        std::fs::create_dir_all(&tmpdir).with_context(|| format!("create {}", tmpdir.display()))?;

        let mut cmd = Command::new("mariadbd");
        // --no-defaults must come first.
        cmd.arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", error_log.display()))
            .arg(format!("--server-id={}", self.server_id))
            .arg(format!("--gtid-domain-id={}", self.gtid_domain_id))
            // A tmpdir of its own: servers sharing /tmp have been seen to
            // lose each other's internal temporary tables.
            .arg(format!("--tmpdir={}", tmpdir.display()));
        if self.opts.binlog {
            cmd.arg(format!("--log-bin={BINLOG_BASENAME}"));
        }
        cmd.args(SERVER_ARGS).args(&self.opts.extra_args);
        let mut child = ChildProcess::spawn(
            format!("mariadbd {}", self.name),
            cmd,
            dir.join("mariadbd.out"),
        )?;

        let deadline = Instant::now() + READY_TIMEOUT;
        let opts = root_opts(port);
        let want_datadir = datadir.to_string_lossy().trim_end_matches('/').to_string();
        loop {
            if let Some(status) = child.try_exit()? {
                let new_log = std::fs::read(&error_log)
                    .map(|b| {
                        String::from_utf8_lossy(
                            &b[usize::try_from(log_offset).unwrap_or(0).min(b.len())..],
                        )
                        .into_owned()
                    })
                    .unwrap_or_default();
                if ports::says_address_in_use(&new_log) {
                    return Ok(Launch::PortTaken);
                }
                let output = child.log_tail(10);
                bail!(
                    "start {} on port {port}: mariadbd exited early ({status})\nerror.log tail ({}):\n{}{}",
                    self.name,
                    error_log.display(),
                    file_tail(&error_log, LOG_TAIL_LINES),
                    if output.trim().is_empty() {
                        String::new()
                    } else {
                        format!("\nstdout/stderr tail:\n{output}")
                    }
                );
            }
            // Ask for @@datadir rather than 1: if another process's server
            // holds the port, we must not mistake it for ours.
            let probe = async {
                let mut conn = Conn::new(opts.clone()).await?;
                let dir: Option<String> = conn.query_first("SELECT @@datadir").await?;
                conn.disconnect().await?;
                Ok::<_, mysql_async::Error>(dir)
            };
            if let Ok(Ok(Some(dir))) = tokio::time::timeout(PROBE_TIMEOUT, probe).await
                && dir.trim_end_matches('/') == want_datadir
            {
                return Ok(Launch::Ready(child));
            }
            if Instant::now() >= deadline {
                bail!(
                    "start {} on port {port}: not answering after {READY_TIMEOUT:?}\nerror.log tail ({}):\n{}",
                    self.name,
                    error_log.display(),
                    file_tail(&error_log, LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The name used in logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT` (password-less root).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `--server-id`.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// `--gtid-domain-id`.
    pub fn gtid_domain_id(&self) -> u32 {
        self.gtid_domain_id
    }

    /// The server's temp dir (socket, pid file, logs and, unless the test
    /// chose another, the datadir).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The datadir (`<dir>/data`, or the one the test chose); binlogs are
    /// here too.
    pub fn datadir(&self) -> PathBuf {
        self.datadir.clone()
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.dir_path.join("mysqld.sock")
    }

    /// The server's error log.
    pub fn error_log_path(&self) -> PathBuf {
        self.dir_path.join("error.log")
    }

    /// The last `n` lines of the error log.
    pub fn error_log_tail(&self, n: usize) -> String {
        file_tail(&self.error_log_path(), n)
    }

    /// Connection options (TCP, root, no password).
    pub fn opts(&self) -> Opts {
        root_opts(self.port)
    }

    /// A new connection.
    pub async fn conn(&self) -> anyhow::Result<Conn> {
        Conn::new(self.opts())
            .await
            .with_context(|| format!("connect to {} at {}", self.name, self.address()))
    }

    /// A new connection pool (the caller owns it; call `disconnect()` when
    /// done to close its connections promptly).
    pub fn pool(&self) -> Pool {
        Pool::new(self.opts())
    }

    /// Runs statements (no result), on a fresh connection.
    pub async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        conn.query_drop(sql)
            .await
            .with_context(|| format!("run `{sql}` on {} at {}", self.name, self.address()))?;
        conn.disconnect().await.ok();
        Ok(())
    }

    /// Runs a query and returns every row.
    pub async fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> anyhow::Result<Vec<T>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .query(sql)
            .await
            .with_context(|| format!("run `{sql}` on {} at {}", self.name, self.address()))?;
        conn.disconnect().await.ok();
        Ok(rows)
    }

    /// Runs a query and returns its first row, if any.
    pub async fn query_first<T: FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> anyhow::Result<Option<T>> {
        let mut conn = self.conn().await?;
        let row = conn
            .query_first(sql)
            .await
            .with_context(|| format!("run `{sql}` on {} at {}", self.name, self.address()))?;
        conn.disconnect().await.ok();
        Ok(row)
    }

    /// Runs a query that must return at least one row; returns the first.
    pub async fn query_one<T: FromRow + Send + 'static>(&self, sql: &str) -> anyhow::Result<T> {
        self.query_first(sql).await?.with_context(|| {
            format!(
                "`{sql}` on {} at {} returned no row",
                self.name,
                self.address()
            )
        })
    }

    /// `@@gtid_binlog_pos`.
    pub async fn gtid_binlog_pos(&self) -> anyhow::Result<String> {
        self.query_one("SELECT @@gtid_binlog_pos").await
    }

    /// `SHOW MASTER STATUS` as (file, position); `None` if the binlog is off.
    pub async fn binlog_position(&self) -> anyhow::Result<Option<(String, u64)>> {
        let mut conn = self.conn().await?;
        let row: Option<mysql_async::Row> = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .with_context(|| {
                format!("SHOW MASTER STATUS on {} at {}", self.name, self.address())
            })?;
        conn.disconnect().await.ok();
        let Some(row) = row else { return Ok(None) };
        let file: Option<String> = row.get(0);
        let pos: Option<u64> = row.get(1);
        match (file, pos) {
            (Some(file), Some(pos)) => Ok(Some((file, pos))),
            _ => bail!(
                "SHOW MASTER STATUS on {} returned an unexpected row: {row:?}",
                self.name
            ),
        }
    }

    /// Stops the server if it is running, then starts it again on the same
    /// datadir and port; returns once it answers queries.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let port = self.port;
        self.launch(Some(port))
            .await
            .with_context(|| format!("restart {} on port {port}", self.name))
    }
}

/// Signals, pause/resume, `kill` (a crash: InnoDB recovers on
/// [`MariaDb::restart`]) and `stop` (a clean shutdown, about 30 ms for an idle
/// server); the datadir stays either way.
impl Supervised for MariaDb {
    fn child(&self) -> Option<&ChildProcess> {
        self.child.as_ref()
    }

    fn child_slot(&mut self) -> &mut Option<ChildProcess> {
        &mut self.child
    }

    fn label(&self) -> String {
        self.name.clone()
    }

    fn kind(&self) -> &'static str {
        "mariadbd"
    }
}

/// Copies the template's contents into `datadir` (created if missing, which
/// must otherwise be empty), keeping modes and times like `cp -a`.
fn copy_template_into(template: &Path, datadir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(datadir)
        .with_context(|| format!("create datadir {} for {name}", datadir.display()))?;
    let mut entries = std::fs::read_dir(datadir)
        .with_context(|| format!("list datadir {} for {name}", datadir.display()))?;
    if let Some(entry) = entries.next() {
        let entry = entry.with_context(|| format!("list datadir {}", datadir.display()))?;
        bail!(
            "datadir {} for {name} is not empty (it holds {}); use MariaDb::start_on for a datadir with data",
            datadir.display(),
            entry.file_name().to_string_lossy()
        );
    }
    // `template/.` copies the contents, not the directory itself.
    run(
        &format!(
            "copy the template datadir into {} for {name}",
            datadir.display()
        ),
        Command::new("cp")
            .arg("-a")
            .arg(template.join("."))
            .arg(datadir),
    )?;
    Ok(())
}

impl Drop for MariaDb {
    /// Kills the server by PID and removes its temp dir; a datadir the test
    /// chose stays (the test, or its filesystem, owns it).
    fn drop(&mut self) {
        let dir = self.dir.take();
        self.release(dir);
    }
}
