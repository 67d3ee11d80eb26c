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
//!
//! Not wired into the agent yet: no sinks, no catalog index, no TLS, and no
//! gap detection beyond a purged file and a stream that does not continue
//! the archived bytes. See docs/archive.md.

pub mod archive;
pub mod dump;
pub mod event;
pub mod index;
pub mod local;
mod rows;
mod statement;

pub use archive::{ArchiveConfig, ArchiveProgress, Archiver};
pub use dump::DumpClient;
