//! `manifest.json`: written last and atomically; its presence is what makes a
//! directory a backup. Every other file is listed with its size and sha256.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cut::Position;
use crate::error::{Error, Result};
use crate::flavour::ServerInfo;

/// Value of the `format` field.
pub const FORMAT: &str = "lockstep-logical-snapshot";
/// The newest manifest version this build reads and writes. Version 2
/// schema files may use a delimiter other than `;;` and keep every byte of
/// a statement (see `sqlfile`); a dump writes the lowest version that reads
/// its files right, so older releases still load most backups.
pub const VERSION: u32 = 3;
/// The version of a manifest with a physical section or file sets: older
/// releases refuse it instead of reading it as an empty logical backup.
pub const PHYSICAL_VERSION: u32 = 3;
/// The oldest manifest version this build reads.
pub const MIN_VERSION: u32 = 1;
/// The string literal in `load_sql` that stands for a data file's path.
pub const FILE_PLACEHOLDER: &str = "'{file}'";
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
    /// The cluster the backup is of, and every server of its cut (so a
    /// catalog can be rebuilt from the manifests in a sink alone). Empty in
    /// manifests written outside a coordinated backup.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut_servers: Vec<String>,
    /// A physical backup: its datadir archive, every file's checksum and
    /// the server's settings (see `format/physical.rs`). Absent: logical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<crate::format::physical::Physical>,
    /// Application file sets cut with the databases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_sets: Vec<crate::format::physical::FileSetRecord>,
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
    /// The `LOAD DATA` statement for one chunk, with the string literal
    /// `'{file}'` where the decompressed file's path goes (see
    /// [`Table::load_statement`]).
    pub load_sql: String,
    pub has_foreign_keys: bool,
}

impl Table {
    /// `load_sql` with the data file `file` in place of the `'{file}'`
    /// string literal. Only a string literal holding exactly `{file}` is
    /// replaced: the same text inside a quoted name (a table or column
    /// called `` `{file}` ``) or another literal is part of the statement.
    /// The error says why `load_sql` has no single placeholder.
    pub fn load_statement(&self, file: &str) -> std::result::Result<String, String> {
        let found = string_literals(&self.load_sql)
            .into_iter()
            .filter(|r| &self.load_sql[r.clone()] == FILE_PLACEHOLDER)
            .collect::<Vec<_>>();
        let [at] = found.as_slice() else {
            return Err(format!(
                "load_sql of table {} holds {} {FILE_PLACEHOLDER} string literals, expected one",
                self.name,
                found.len()
            ));
        };
        let quoted = format!("'{}'", file.replace('\\', "\\\\").replace('\'', "''"));
        let mut sql = self.load_sql.clone();
        sql.replace_range(at.clone(), &quoted);
        Ok(sql)
    }
}

/// Byte ranges of the string literals (`'…'` and `"…"`, quotes included) of
/// a statement, skipping `` `quoted names` `` and comments.
fn string_literals(sql: &str) -> Vec<std::ops::Range<usize>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && q != b'`' {
                        i += 2;
                    } else if b[i] == q {
                        // A doubled quote is one quote character.
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                        } else {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                i = (i + 1).min(b.len());
                if q != b'`' {
                    out.push(start..i);
                }
            }
            b'#' => i = sql[i..].find('\n').map_or(b.len(), |n| i + n),
            b'-' if sql[i..].starts_with("-- ") => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n)
            }
            b'/' if sql[i..].starts_with("/*") => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2)
            }
            _ => i += 1,
        }
    }
    out
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
            Some(v) if (u64::from(MIN_VERSION)..=u64::from(VERSION)).contains(&v) => {}
            v => {
                return Err(bad(format!(
                    "unknown manifest version {} (this lockstep reads versions {MIN_VERSION} to {VERSION}; use the lockstep release that wrote it, or restore by hand as docs/format.md describes)",
                    v.map_or("(none)".to_string(), |v| v.to_string())
                )));
            }
        }
        serde_json::from_slice(bytes).map_err(|e| bad(format!("is malformed: {e}")))
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
        let err = Manifest::parse(br#"{"format":"lockstep-logical-snapshot","version":4}"#, p)
            .expect_err("version 4")
            .to_string();
        assert!(err.contains("reads versions 1 to 3"), "{err}");
        for v in [1, 2, 3] {
            let err = Manifest::parse(
                format!(r#"{{"format":"lockstep-logical-snapshot","version":{v}}}"#).as_bytes(),
                p,
            )
            .expect_err("no other fields")
            .to_string();
            assert!(err.contains("missing field"), "version {v} is read: {err}");
        }
        let err = Manifest::parse(br#"{"format":"other","version":1}"#, p)
            .expect_err("format")
            .to_string();
        assert!(err.contains("format is \"other\""), "{err}");
        let err = Manifest::parse(b"{not json", p)
            .expect_err("json")
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    fn table(load_sql: &str) -> Table {
        Table {
            name: "t".into(),
            engine: "InnoDB".into(),
            rows: 0,
            columns: vec![],
            chunks: vec![],
            load_sql: load_sql.into(),
            has_foreign_keys: false,
        }
    }

    #[test]
    fn the_file_goes_only_where_the_placeholder_literal_is() {
        // As every release writes it, with {file} in names and other literals.
        let t = table(
            "LOAD DATA LOCAL INFILE '{file}' INTO TABLE `d{file}`.`x{file}y` CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' (`{file}`, `'{file}'`, `a``'{file}'`)",
        );
        assert_eq!(
            t.load_statement("d/x@7bfile@7dy.00000.tsv.zst")
                .expect("one placeholder"),
            "LOAD DATA LOCAL INFILE 'd/x@7bfile@7dy.00000.tsv.zst' INTO TABLE `d{file}`.`x{file}y` CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' (`{file}`, `'{file}'`, `a``'{file}'`)"
        );
        assert_eq!(
            table("LOAD DATA LOCAL INFILE '{file}' INTO TABLE `t` ('{file}')")
                .load_statement("f")
                .expect_err("two literals"),
            "load_sql of table t holds 2 '{file}' string literals, expected one"
        );
        assert!(
            table("LOAD DATA LOCAL INFILE 'x' INTO TABLE `{file}`")
                .load_statement("f")
                .is_err()
        );
        assert_eq!(
            table("LOAD DATA LOCAL INFILE '{file}' INTO TABLE t")
                .load_statement("it's\\")
                .expect("quoted"),
            "LOAD DATA LOCAL INFILE 'it''s\\\\' INTO TABLE t"
        );
    }

    #[test]
    fn string_literals_skip_names_escapes_and_comments() {
        let sql = "SELECT 'a''b', 'c\\'d', `e'f`, \"g\" /* 'h' */ -- 'i'\n# 'j'\n'k'";
        let lits: Vec<&str> = string_literals(sql).into_iter().map(|r| &sql[r]).collect();
        assert_eq!(lits, ["'a''b'", "'c\\'d'", "\"g\"", "'k'"]);
        assert_eq!(
            string_literals("'open").len(),
            1,
            "an unclosed literal ends the text"
        );
    }
}
