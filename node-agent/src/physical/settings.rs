//! The server settings a physical copy depends on: where the server keeps
//! its files (all must be inside the snapshot), how durable its commits are
//! (what the agent must flush inside the lock), and what a server started
//! on the copy must be told to read it the same way.
//!
//! MariaDB only: the copy is recovered by `mariadbd`, and the query reads
//! MariaDB's variables (`gtid_domain_id`).

use std::path::{Component, Path, PathBuf};

use mysql_async::Conn;
use mysql_async::prelude::Queryable as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, MysqlContext as _, Result};

/// A server's settings, read when its snapshot is taken. Paths are as the
/// server reports them (relative ones are relative to `datadir`; empty
/// means the default, the datadir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSettings {
    pub datadir: String,
    /// `None` when binary logging is off.
    pub log_bin_basename: Option<String>,
    pub log_bin_index: Option<String>,
    pub innodb_log_group_home_dir: String,
    pub innodb_data_home_dir: String,
    pub innodb_undo_directory: String,
    pub innodb_page_size: u64,
    pub innodb_data_file_path: String,
    pub innodb_undo_tablespaces: u64,
    /// The redo log's size; a server started with another size rewrites
    /// the log after recovery (0: unknown).
    #[serde(default)]
    pub innodb_log_file_size: u64,
    pub server_id: u64,
    pub gtid_domain_id: u64,
    pub lower_case_table_names: u64,
    pub innodb_flush_log_at_trx_commit: u64,
    pub sync_binlog: u64,
    pub version: String,
}

const QUERY: &str = "SELECT @@datadir, @@log_bin_basename, @@log_bin_index, \
     @@innodb_log_group_home_dir, @@innodb_data_home_dir, @@innodb_undo_directory, \
     @@innodb_page_size, @@innodb_data_file_path, @@innodb_undo_tablespaces, \
     @@innodb_log_file_size, @@server_id, @@gtid_domain_id, @@lower_case_table_names, \
     @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@version";

/// Reads the settings of the server at `addr` (for errors) with one query.
pub async fn read(conn: &mut Conn, addr: &str) -> Result<ServerSettings> {
    let row: Option<mysql_async::Row> = conn
        .query_first(QUERY)
        .await
        .on(addr, "read the settings a physical copy depends on")?;
    let Some(row) = row else {
        return Err(bad(addr, "the settings query returned no row"));
    };
    let names = [
        "datadir",
        "log_bin_basename",
        "log_bin_index",
        "innodb_log_group_home_dir",
        "innodb_data_home_dir",
        "innodb_undo_directory",
        "innodb_page_size",
        "innodb_data_file_path",
        "innodb_undo_tablespaces",
        "innodb_log_file_size",
        "server_id",
        "gtid_domain_id",
        "lower_case_table_names",
        "innodb_flush_log_at_trx_commit",
        "sync_binlog",
        "version",
    ];
    let mut v: Vec<Option<String>> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match row.get_opt::<Option<String>, _>(i) {
            Some(Ok(value)) => v.push(value.filter(|s| !s.is_empty())),
            _ => return Err(bad(addr, &format!("@@{name} is not text"))),
        }
    }
    let text = |i: usize| v[i].clone().unwrap_or_default();
    let num = |i: usize| -> Result<u64> {
        v[i].as_deref()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad(addr, &format!("@@{} is {:?}, not a number", names[i], v[i])))
    };
    if v[0].is_none() {
        return Err(bad(addr, "@@datadir is empty"));
    }
    Ok(ServerSettings {
        datadir: text(0),
        log_bin_basename: v[1].clone(),
        log_bin_index: v[2].clone(),
        innodb_log_group_home_dir: text(3),
        innodb_data_home_dir: text(4),
        innodb_undo_directory: text(5),
        innodb_page_size: num(6)?,
        innodb_data_file_path: text(7),
        innodb_undo_tablespaces: num(8)?,
        innodb_log_file_size: num(9)?,
        server_id: num(10)?,
        gtid_domain_id: num(11)?,
        lower_case_table_names: num(12)?,
        innodb_flush_log_at_trx_commit: num(13)?,
        sync_binlog: num(14)?,
        version: text(15),
    })
}

fn bad(addr: &str, reason: &str) -> Error {
    Error::Unsupported {
        server: addr.to_string(),
        version: String::new(),
        reason: format!("cannot read the settings for a physical copy: {reason}"),
    }
}

/// `path` without `.` and `..` components (lexically: symlinks are not
/// resolved).
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl ServerSettings {
    /// The datadir, cleaned.
    pub fn datadir(&self) -> PathBuf {
        clean(Path::new(&self.datadir))
    }

    /// A server path setting, absolute: relative ones are relative to the
    /// datadir, empty means the datadir.
    fn resolve(&self, value: &str) -> PathBuf {
        if value.is_empty() {
            return self.datadir();
        }
        clean(&self.datadir().join(value))
    }

    /// The files InnoDB's system tablespace is made of
    /// (`innodb_data_file_path`: `name:size[:autoextend];...`), absolute.
    fn data_files(&self) -> Vec<PathBuf> {
        let home = self.resolve(&self.innodb_data_home_dir);
        self.innodb_data_file_path
            .split(';')
            .filter_map(|spec| spec.split(':').next())
            .filter(|name| !name.is_empty())
            .map(|name| clean(&home.join(name)))
            .collect()
    }

    /// Each path setting a snapshot must cover, with its setting's name:
    /// directories for the logs, files for the binlog and data files.
    fn located(&self) -> Vec<(&'static str, PathBuf)> {
        let mut out = Vec::new();
        if let Some(b) = &self.log_bin_basename {
            out.push(("log_bin_basename", self.resolve(b)));
        }
        if let Some(i) = &self.log_bin_index {
            out.push(("log_bin_index", self.resolve(i)));
        }
        out.push((
            "innodb_log_group_home_dir",
            self.resolve(&self.innodb_log_group_home_dir),
        ));
        out.push((
            "innodb_data_home_dir",
            self.resolve(&self.innodb_data_home_dir),
        ));
        out.push((
            "innodb_undo_directory",
            self.resolve(&self.innodb_undo_directory),
        ));
        for f in self.data_files() {
            out.push(("innodb_data_file_path", f));
        }
        out
    }

    /// The directories a snapshot must cover, absolute and without
    /// duplicates: the datadir, and the directories of the binlog, the redo
    /// log, the system tablespace and the undo tablespaces.
    pub fn live_paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.datadir()];
        for (setting, path) in self.located() {
            let dir = match setting {
                "log_bin_basename" | "log_bin_index" | "innodb_data_file_path" => path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| self.datadir()),
                _ => path,
            };
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
        out
    }

    /// The redo log (`ib_logfile0`), absolute: what a provider that copies
    /// file by file copies first.
    pub fn redo_log_files(&self) -> Vec<PathBuf> {
        vec![
            self.resolve(&self.innodb_log_group_home_dir)
                .join("ib_logfile0"),
        ]
    }

    /// A snapshot of the datadir must hold the binlog, the redo log and the
    /// data files of one moment: refuses, naming the server (`addr`), the
    /// setting and the path, when one of them lies outside the datadir.
    pub fn require_inside_datadir(&self, addr: &str) -> Result<()> {
        let datadir = self.datadir();
        for (setting, path) in self.located() {
            if !path.starts_with(&datadir) {
                return Err(Error::OutsideDatadir {
                    server: addr.to_string(),
                    setting,
                    path,
                    datadir,
                });
            }
        }
        Ok(())
    }

    /// Whether committed transactions can sit in InnoDB's own log buffer,
    /// which no file snapshot sees: with `innodb_flush_log_at_trx_commit=0`
    /// the buffer is written once a second. The agent then runs `FLUSH
    /// NO_WRITE_TO_BINLOG ENGINE LOGS` inside the lock. With 2 the log is
    /// written to the OS at every commit (fsynced once a second): a
    /// snapshot (btrfs, reflink, LVM and ZFS alike) sees the page cache,
    /// so the copy is as good as after a crash of `mariadbd` alone, which
    /// MariaDB documents loses nothing at 2. With 1 and 3 it is flushed at
    /// commit.
    pub fn needs_engine_log_flush(&self) -> bool {
        self.innodb_flush_log_at_trx_commit == 0
    }

    /// What weakens the copy, for the manifest. `sync_binlog=0` is not one:
    /// the binlog is written to the OS at every commit group, and the
    /// snapshot sees the page cache; it matters for the live server's own
    /// crash safety only.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.needs_engine_log_flush() {
            out.push(
                "innodb_flush_log_at_trx_commit=0: committed transactions can wait up to a second in InnoDB's log buffer, which a file snapshot does not see; the engine logs are flushed inside the lock (FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS)".to_string(),
            );
        }
        if self.log_bin_basename.is_none() {
            out.push(
                "binary logging is off: the copy has no binlog position, and a server started on it cannot resolve transactions that were prepared but not committed".to_string(),
            );
        }
        out
    }

    /// Where `path`, a path of the source server inside its datadir, is
    /// relative to the datadir (`None` outside it).
    fn relative(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(self.datadir())
            .ok()
            .map(Path::to_path_buf)
    }

    /// The same place in a copy of the datadir at `datadir`. A path outside
    /// the source's datadir (refused by
    /// [`ServerSettings::require_inside_datadir`]) goes to the copy's top.
    fn in_copy(&self, setting: &str, datadir: &Path) -> PathBuf {
        let path = self.resolve(setting);
        match self.relative(&path) {
            Some(rel) if rel.as_os_str().is_empty() => datadir.to_path_buf(),
            Some(rel) => datadir.join(rel),
            None => datadir.join(path.file_name().unwrap_or_default()),
        }
    }

    /// The arguments of a private `mariadbd` on a copy of the datadir at
    /// `datadir`: the settings that decide how the files are read (page
    /// size, data and log files, binlog for crash recovery of prepared
    /// transactions, case of names, ids), a socket and pid file, no TCP,
    /// no replication, no grant checks (only the socket, which the caller
    /// keeps private, reaches it), no events. `--no-defaults` comes first,
    /// so no option file of the host changes the outcome.
    pub fn mariadbd_args(&self, datadir: &Path, socket: &Path, pid: &Path) -> Vec<String> {
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", datadir.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", pid.display()),
            "--skip-networking".to_string(),
            "--skip-slave-start".to_string(),
            "--skip-grant-tables".to_string(),
            "--event-scheduler=DISABLED".to_string(),
        ];
        if running_as_root() {
            // mariadbd refuses to run as root unless told to.
            args.insert(1, "--user=root".to_string());
        }
        let copy_rel = |setting: &str| -> String {
            let path = self.in_copy(setting, datadir);
            path.strip_prefix(datadir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| path.display().to_string())
        };
        if let Some(b) = &self.log_bin_basename {
            args.push(format!("--log-bin={}", copy_rel(b)));
        }
        if let Some(i) = &self.log_bin_index {
            args.push(format!("--log-bin-index={}", copy_rel(i)));
        }
        args.push(format!("--server-id={}", self.server_id));
        args.push(format!("--gtid-domain-id={}", self.gtid_domain_id));
        args.push(format!("--innodb-page-size={}", self.innodb_page_size));
        args.push(format!(
            "--innodb-log-group-home-dir={}",
            self.in_copy(&self.innodb_log_group_home_dir, datadir)
                .display()
        ));
        args.push(format!(
            "--innodb-data-home-dir={}",
            self.in_copy(&self.innodb_data_home_dir, datadir).display()
        ));
        args.push(format!(
            "--innodb-undo-directory={}",
            self.in_copy(&self.innodb_undo_directory, datadir).display()
        ));
        // Names in the data file path are relative to the data home dir,
        // unless absolute: move absolute ones into the copy.
        let files: Vec<String> = self
            .innodb_data_file_path
            .split(';')
            .map(|spec| match spec.split_once(':') {
                Some((name, rest)) if name.starts_with('/') => {
                    format!("{}:{rest}", self.in_copy(name, datadir).display())
                }
                _ => spec.to_string(),
            })
            .collect();
        args.push(format!("--innodb-data-file-path={}", files.join(";")));
        args.push(format!(
            "--innodb-undo-tablespaces={}",
            self.innodb_undo_tablespaces
        ));
        if self.innodb_log_file_size > 0 {
            args.push(format!(
                "--innodb-log-file-size={}",
                self.innodb_log_file_size
            ));
        }
        args.push(format!(
            "--lower-case-table-names={}",
            self.lower_case_table_names
        ));
        args
    }
}

/// Whether this process runs as root (its effective uid).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ServerSettings {
        ServerSettings {
            datadir: "/var/lib/mysql/".into(),
            log_bin_basename: Some("/var/lib/mysql/binlog/mysql-bin".into()),
            log_bin_index: Some("/var/lib/mysql/binlog/mysql-bin.index".into()),
            innodb_log_group_home_dir: "./".into(),
            innodb_data_home_dir: String::new(),
            innodb_undo_directory: "undo".into(),
            innodb_page_size: 16384,
            innodb_data_file_path: "ibdata1:12M:autoextend".into(),
            innodb_undo_tablespaces: 3,
            innodb_log_file_size: 100_663_296,
            server_id: 7,
            gtid_domain_id: 2,
            lower_case_table_names: 0,
            innodb_flush_log_at_trx_commit: 1,
            sync_binlog: 0,
            version: "10.11.6-MariaDB-0+deb12u1-log".into(),
        }
    }

    #[test]
    fn live_paths_are_absolute_and_distinct() {
        let s = sample();
        assert_eq!(
            s.live_paths(),
            vec![
                PathBuf::from("/var/lib/mysql"),
                PathBuf::from("/var/lib/mysql/binlog"),
                PathBuf::from("/var/lib/mysql/undo"),
            ]
        );
        let mut s = sample();
        s.innodb_log_group_home_dir = "/redo/".into();
        s.innodb_data_file_path = "/sys/ibdata1:12M;ibdata2:1G:autoextend".into();
        assert_eq!(
            s.live_paths(),
            vec![
                PathBuf::from("/var/lib/mysql"),
                PathBuf::from("/var/lib/mysql/binlog"),
                PathBuf::from("/redo"),
                PathBuf::from("/var/lib/mysql/undo"),
                PathBuf::from("/sys"),
            ]
        );
    }

    #[test]
    fn refuses_files_outside_the_datadir() {
        sample()
            .require_inside_datadir("db1:3306")
            .expect("all inside");
        let mut s = sample();
        s.log_bin_basename = Some("/var/log/mysql/mysql-bin".into());
        let err = s
            .require_inside_datadir("db1:3306")
            .expect_err("binlog outside");
        let text = err.to_string();
        assert!(text.contains("db1:3306"), "{text}");
        assert!(text.contains("log_bin_basename"), "{text}");
        assert!(text.contains("/var/log/mysql/mysql-bin"), "{text}");
        let mut s = sample();
        s.innodb_log_group_home_dir = "../redo".into();
        let text = s
            .require_inside_datadir("db1:3306")
            .expect_err("redo outside")
            .to_string();
        assert!(
            text.contains("innodb_log_group_home_dir is /var/lib/redo"),
            "{text}"
        );
        let mut s = sample();
        s.innodb_data_file_path = "ibdata1:12M;/data/ibdata2:1G:autoextend".into();
        let text = s
            .require_inside_datadir("db1:3306")
            .expect_err("a data file outside")
            .to_string();
        assert!(
            text.contains("innodb_data_file_path is /data/ibdata2"),
            "{text}"
        );
    }

    #[test]
    fn flushes_and_warns_only_when_the_copy_needs_it() {
        let mut s = sample();
        for (value, flush) in [(0, true), (1, false), (2, false), (3, false)] {
            s.innodb_flush_log_at_trx_commit = value;
            assert_eq!(s.needs_engine_log_flush(), flush, "{value}");
            assert_eq!(s.warnings().len(), usize::from(flush), "{value}");
        }
        s.innodb_flush_log_at_trx_commit = 0;
        assert!(s.warnings()[0].contains("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS"));
        s.innodb_flush_log_at_trx_commit = 1;
        s.log_bin_basename = None;
        assert!(s.warnings()[0].contains("binary logging is off"));
    }

    #[test]
    fn a_private_server_reads_the_copy_like_the_source() {
        let mut s = sample();
        s.innodb_data_file_path = "/var/lib/mysql/sys/ibdata1:12M;ibdata2:1G:autoextend".into();
        let copy = Path::new("/restore/data");
        let args = s.mariadbd_args(copy, Path::new("/tmp/x/s.sock"), Path::new("/tmp/x/p.pid"));
        assert_eq!(args[0], "--no-defaults");
        assert_eq!(
            args.iter().any(|a| a == "--user=root"),
            running_as_root(),
            "{args:?}"
        );
        for want in [
            "--datadir=/restore/data",
            "--socket=/tmp/x/s.sock",
            "--pid-file=/tmp/x/p.pid",
            "--skip-networking",
            "--skip-slave-start",
            "--skip-grant-tables",
            "--log-bin=binlog/mysql-bin",
            "--log-bin-index=binlog/mysql-bin.index",
            "--server-id=7",
            "--gtid-domain-id=2",
            "--innodb-page-size=16384",
            "--innodb-log-group-home-dir=/restore/data",
            "--innodb-data-home-dir=/restore/data",
            "--innodb-undo-directory=/restore/data/undo",
            "--innodb-data-file-path=/restore/data/sys/ibdata1:12M;ibdata2:1G:autoextend",
            "--innodb-undo-tablespaces=3",
            "--innodb-log-file-size=100663296",
            "--lower-case-table-names=0",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        s.log_bin_basename = None;
        s.log_bin_index = None;
        let args = s.mariadbd_args(copy, Path::new("/s"), Path::new("/p"));
        assert!(!args.iter().any(|a| a.starts_with("--log-bin")), "{args:?}");
    }

    #[test]
    fn settings_round_trip_through_json() {
        let s = sample();
        let json = serde_json::to_string(&s).expect("serialise");
        let back: ServerSettings = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, s);
    }
}
