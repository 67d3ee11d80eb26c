//! Continuous binlog archiving, the foundation: a byte-exact
//! `COM_BINLOG_DUMP` client and a local archiver that writes each binlog as
//! the server has it, fsyncs commit groups, and resumes after restarts.
//!
//! - [`event`]: event headers, the few bodies the archiver reads, which
//!   stream events are not in the file, and commit-group boundaries.
//! - [`dump`]: [`DumpClient`], the replication-protocol client (TCP,
//!   `mysql_native_password`, MariaDB only for now).
//! - [`local`]: the archive directory: resume scan, torn-tail cut, writing
//!   with fsync.
//! - [`archive`]: [`Archiver`], the task (server, replica server id,
//!   directory, start file) that reports [`ArchiveProgress`].
//! - [`index`]: the event index: one [`index::TxnEntry`] per transaction
//!   (position, GTID, time, kinds, tables, rows, summary) and the search
//!   [`index::Filter`]; its helpers `rows` (Table_map, counting rows) and
//!   `statement` (what a statement is, its tables) are private.
//! - [`fetch`]: archived segments read back from sinks (checked against
//!   the catalog's sha256) into local files, for replays and searches.
//! - [`ship`]: the daemon's archiving: the archiver supervised (restarted,
//!   continued after a purged binlog with the gap reported), and the
//!   shipper that stores durable bytes in the cluster's primary sink as
//!   segments and records them in the catalog.
//! - [`replay`]: applying archived binlogs to a target up to an exact
//!   position (relay logs and the server's SQL thread, or
//!   `mariadb-binlog | mariadb`), resumable by GTID.
//!
//! See docs/archive.md.

pub mod archive;
pub mod dump;
pub mod event;
pub mod fetch;
pub mod index;
pub mod local;
pub mod replay;
mod rows;
pub mod ship;
mod statement;

pub use archive::{ArchiveConfig, ArchiveProgress, Archiver};
pub use dump::DumpClient;
