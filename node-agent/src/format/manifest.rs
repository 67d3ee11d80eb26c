//! `manifest.json`: written last and atomically; its presence is what makes a
//! directory a backup. Every other file is listed with its size and sha256.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cut::Position;
use crate::error::{Error, IoContext, Result};
use crate::flavour::ServerInfo;

/// Value of the `format` field.
pub const FORMAT: &str = "lockstep-logical-snapshot";
/// The manifest version this build writes and reads.
pub const VERSION: u32 = 1;
/// File name of the manifest inside a snapshot directory.
pub const FILE_NAME: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub backup_id: String,
    /// The tool and version that wrote it.
    pub tool: String,
    /// RFC 3339 times.
    pub started_at: String,
    pub completed_at: String,
    pub server: ServerRecord,
    /// The binlog position the data corresponds to exactly.
    pub position: Position,
    pub lock: LockRecord,
    /// Session settings the data files must be loaded with.
    pub load_session: Vec<String>,
    pub databases: Vec<Database>,
    /// Every file of the snapshot except the manifest itself.
    pub files: Vec<FileEntry>,
    pub totals: Totals,
    /// Things the operator should know (skipped objects, non-transactional tables).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The name the agent was given for its server.
    pub name: String,
    /// host:port the agent reached it at.
    pub address: String,
    #[serde(flatten)]
    pub info: ServerInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub method: String,
    pub lock_wait_us: u64,
    pub capture_us: u64,
    pub held_us: u64,
    pub locked_at_unix_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    /// `CREATE DATABASE` and every `CREATE TABLE`: load first.
    pub schema_file: String,
    /// Stored procedures and functions: load before the data.
    pub routines_file: Option<String>,
    /// Views, in dependency order: load after the data.
    pub views_file: Option<String>,
    /// Triggers: load after the data, so loading does not fire them.
    pub triggers_file: Option<String>,
    /// Events: load last.
    pub events_file: Option<String>,
    pub tables: Vec<Table>,
    pub views: Vec<String>,
    pub routines: Vec<String>,
    pub triggers: Vec<String>,
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    pub engine: String,
    pub rows: u64,
    /// Columns present in the data files, in order (generated columns are not).
    pub columns: Vec<String>,
    /// Data files, each holding a primary-key range (or the whole table).
    pub chunks: Vec<Chunk>,
    /// The `LOAD DATA` statement for one chunk, with `{file}` where the
    /// decompressed file's path goes.
    pub load_sql: String,
    pub has_foreign_keys: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub file: String,
    pub rows: u64,
    /// The primary-key range it holds, as SQL (empty for the whole table).
    pub range: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the snapshot directory, '/'-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub rows: u64,
    /// Bytes of every listed file (compressed, as stored).
    pub bytes: u64,
    pub files: u64,
    pub tables: u64,
}

impl Manifest {
    /// Reads and checks the manifest of the snapshot in `dir`. A missing
    /// manifest means the directory is not a (complete) backup.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let reason = if dir.is_dir() {
                    format!(
                        "has no {FILE_NAME}: it is not a complete lockstep backup (a dump that did not finish leaves no manifest)"
                    )
                } else {
                    "does not exist".to_string()
                };
                return Err(Error::BadBackup {
                    path: dir.to_path_buf(),
                    reason,
                });
            }
            Err(e) => return Err(Error::io(path, "read manifest", e)),
        };
        Self::parse(&bytes, &path)
    }

    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |reason: String| Error::BadBackup {
            path: path.to_path_buf(),
            reason,
        };
        // Check format and version before the full schema, so a newer
        // manifest says "unknown version" rather than "missing field".
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u64>,
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                header.format.unwrap_or_default()
            )));
        }
        match header.version {
            Some(v) if v == u64::from(VERSION) => {}
            v => {
                return Err(bad(format!(
                    "unknown manifest version {} (this lockstep reads version {VERSION}; use the lockstep release that wrote it, or restore by hand as docs/format.md describes)",
                    v.map_or("(none)".to_string(), |v| v.to_string())
                )));
            }
        }
        serde_json::from_slice(bytes).map_err(|e| bad(format!("is malformed: {e}")))
    }

    /// Writes `manifest.json` atomically (temp file, fsync, rename, fsync dir).
    pub fn write(&self, dir: &Path) -> Result<FileEntry> {
        let bytes = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        let path = dir.join(FILE_NAME);
        super::files::write_atomic(&path, &bytes)?;
        Ok(FileEntry {
            path: FILE_NAME.into(),
            size: bytes.len() as u64,
            sha256: super::files::sha256_hex(&bytes),
        })
    }

    /// Absolute path of a listed file, refusing paths that leave `dir`.
    pub fn file_path(dir: &Path, rel: &str) -> Result<PathBuf> {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::BadBackup {
                path: dir.to_path_buf(),
                reason: format!("manifest lists file {rel:?} outside the backup directory"),
            });
        }
        Ok(dir.join(p))
    }

    /// The sha256 of the manifest file as stored.
    pub fn stored_sha256(dir: &Path) -> Result<String> {
        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).on_file(&path, "read manifest")?;
        Ok(super::files::sha256_hex(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_version_and_format() {
        let p = Path::new("/b/manifest.json");
        let err = Manifest::parse(br#"{"format":"lockstep-logical-snapshot","version":99}"#, p)
            .expect_err("version 99")
            .to_string();
        assert!(err.contains("unknown manifest version 99"), "{err}");
        assert!(err.contains("/b/manifest.json"), "{err}");
        let err = Manifest::parse(br#"{"format":"other","version":1}"#, p)
            .expect_err("format")
            .to_string();
        assert!(err.contains("format is \"other\""), "{err}");
        let err = Manifest::parse(b"{not json", p)
            .expect_err("json")
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn refuses_paths_outside_the_backup() {
        let d = Path::new("/b");
        assert!(Manifest::file_path(d, "db/t.00000.tsv.zst").is_ok());
        assert!(Manifest::file_path(d, "../etc/passwd").is_err());
        assert!(Manifest::file_path(d, "/etc/passwd").is_err());
    }
}
