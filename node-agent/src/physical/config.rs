//! What kind of backup a server takes by default, how its physical
//! snapshots are taken and where they are recorded, and its application
//! file sets.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::snapshot::ProviderConfig;

/// A backup's kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Consistent-snapshot connections, dumped after Commit; loaded by SQL.
    #[default]
    Logical,
    /// A file snapshot of the datadir taken inside the lock; restored into
    /// a datadir.
    Physical,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Logical => "logical",
            Kind::Physical => "physical",
        }
    }

    /// A request's kind: empty means `default`.
    pub fn parse_or(text: &str, default: Kind) -> Result<Kind> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" => Ok(default),
            "logical" => Ok(Kind::Logical),
            "physical" => Ok(Kind::Physical),
            other => Err(Error::Config(format!(
                "unknown backup kind {other:?}: expected logical or physical"
            ))),
        }
    }
}

/// `[physical]`: physical backups of this agent's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhysicalOptions {
    /// The kind of this server's backups when a backup does not say.
    pub kind: Kind,
    /// How the datadir is snapshotted (`[physical.snapshot]`, with
    /// `provider = "btrfs" | "reflink" | "lvm" | "zfs"`).
    pub snapshot: Option<ProviderConfig>,
    /// Or `mariadb-backup` as the data mover, where no snapshotting
    /// filesystem exists (`[physical.mariabackup]`; see
    /// [`crate::physical::mariabackup`]).
    pub mariabackup: Option<MariabackupConfig>,
    /// Where the agent records the snapshots it holds (so a restarted
    /// agent deletes what a crashed one left) and stages copied file sets;
    /// default `<sink_dir>/../state/<name>`.
    pub state_dir: Option<PathBuf>,
    /// The `mariadbd` that recovers a restored datadir; default `mariadbd`
    /// on PATH, else `/usr/sbin/mariadbd`.
    pub mariadbd: Option<PathBuf>,
    /// How long InnoDB recovery of a restored datadir may take.
    #[serde(with = "humantime_serde")]
    pub recover_timeout: Duration,
    /// The zstd level of the datadir and file-set archives (a backup's own
    /// level, when it sets one, wins). Level 1 compresses this kind of data
    /// as well as 3 here, in half the time, and decompresses 1.7x faster
    /// (BENCHMARKS.md, "Physical backups").
    pub zstd_level: i32,
}

impl Default for PhysicalOptions {
    fn default() -> Self {
        PhysicalOptions {
            kind: Kind::Logical,
            snapshot: None,
            mariabackup: None,
            state_dir: None,
            mariadbd: None,
            recover_timeout: Duration::from_secs(600),
            zstd_level: 1,
        }
    }
}

/// `[physical.mariabackup]`: how `mariadb-backup` takes a physical
/// backup's base before the cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MariabackupConfig {
    /// The `mariadb-backup` binary (also `--prepare`s restores).
    pub binary: PathBuf,
    /// The longest the base copy may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest it waits for its own lock (`--ftwrl-wait-timeout`).
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
}

impl Default for MariabackupConfig {
    fn default() -> Self {
        MariabackupConfig {
            binary: PathBuf::from("mariadb-backup"),
            timeout: Duration::from_secs(6 * 3600),
            lock_wait: Duration::from_secs(60),
        }
    }
}

impl MariabackupConfig {
    pub fn mover(&self) -> crate::physical::mariabackup::Mover {
        crate::physical::mariabackup::Mover {
            binary: self.binary.clone(),
            timeout: self.timeout,
            lock_wait: self.lock_wait,
        }
    }
}

/// `[files]`: application file sets cut with the databases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSetOptions {
    /// The most bytes the copied sets (those without a snapshot) may hold
    /// together: they are copied while every server is locked, so this
    /// bounds the freeze. A backup is refused before anything is locked
    /// when they hold more.
    pub budget_bytes: u64,
    /// `[[files.sets]]`: each with a `name`, a `path` and optionally its
    /// own `[files.sets.snapshot]` provider.
    pub sets: Vec<FileSet>,
}

impl Default for FileSetOptions {
    fn default() -> Self {
        FileSetOptions {
            budget_bytes: 64 << 20,
            sets: Vec::new(),
        }
    }
}

/// One application file set: a directory captured at the cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSet {
    /// A short name: the set's directory in the artifact and on restore.
    pub name: String,
    /// The directory captured (absolute).
    pub path: PathBuf,
    /// A provider whose volume holds `path`: the set is snapshotted
    /// instead of copied (no budget applies).
    #[serde(default)]
    pub snapshot: Option<ProviderConfig>,
}

impl FileSetOptions {
    /// Checks names and paths.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for set in &self.sets {
            let ok_name = !set.name.is_empty()
                && set
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !set.name.starts_with('.');
            if !ok_name {
                return Err(Error::Config(format!(
                    "file set name {:?} must be letters, digits, '-', '_' or '.' (not leading)",
                    set.name
                )));
            }
            if !seen.insert(&set.name) {
                return Err(Error::Config(format!(
                    "file set {:?} is configured twice",
                    set.name
                )));
            }
            if !set.path.is_absolute() {
                return Err(Error::Config(format!(
                    "file set {}: path {} must be absolute",
                    set.name,
                    set.path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Parses `NAME=PATH` (the `--file-set` flag).
pub fn parse_file_set(text: &str) -> std::result::Result<FileSet, String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {text:?}"))?;
    Ok(FileSet {
        name: name.trim().into(),
        path: PathBuf::from(path.trim()),
        snapshot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(
            Kind::parse_or("", Kind::Physical).expect("ok"),
            Kind::Physical
        );
        assert_eq!(
            Kind::parse_or("Logical", Kind::Physical).expect("ok"),
            Kind::Logical
        );
        let e = Kind::parse_or("tape", Kind::Logical)
            .expect_err("an error")
            .to_string();
        assert!(e.contains("tape"), "{e}");
    }

    #[test]
    fn file_sets_are_checked() {
        let mut o = FileSetOptions::default();
        o.sets.push(parse_file_set("app=/srv/app").expect("ok"));
        o.validate().expect("ok");
        o.sets.push(parse_file_set("app=/etc/app").expect("ok"));
        assert!(
            o.validate()
                .expect_err("an error")
                .to_string()
                .contains("twice")
        );
        o.sets.pop();
        o.sets.push(parse_file_set("../x=/etc").expect("ok"));
        assert!(o.validate().is_err());
        o.sets.pop();
        o.sets.push(parse_file_set("etc=relative").expect("ok"));
        assert!(
            o.validate()
                .expect_err("an error")
                .to_string()
                .contains("absolute")
        );
        assert!(parse_file_set("nopath").is_err());
    }

    #[test]
    fn config_reads_toml() {
        let p: PhysicalOptions = toml::from_str(
            "kind = \"physical\"\n[snapshot]\nprovider = \"btrfs\"\nvolume = \"/srv/db\"\nsnapshot_dir = \"/srv/snaps\"\n",
        )
        .expect("ok");
        assert_eq!(p.kind, Kind::Physical);
        assert!(matches!(p.snapshot, Some(ProviderConfig::Btrfs { .. })));
        let f: FileSetOptions = toml::from_str(
            "budget_bytes = 1000\n[[sets]]\nname = \"etc\"\npath = \"/etc/mysql\"\n",
        )
        .expect("ok");
        assert_eq!(f.sets.len(), 1);
    }
}
