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
//! - [`replay`]: applying archived binlogs to a target up to an exact
//!   position (relay logs and the server's SQL thread, or
//!   `mariadb-binlog | mariadb`), resumable by GTID.
//!
//! Not wired into the agent yet: no sinks, no catalog index, no TLS, and no
//! gap detection beyond a purged file and a stream that does not continue
//! the archived bytes. See docs/archive.md.

pub mod archive;
pub mod dump;
pub mod event;
pub mod local;
pub mod replay;

pub use archive::{ArchiveConfig, ArchiveProgress, Archiver};
pub use dump::DumpClient;
