//! Physical backups: a server's datadir copied as files (from a file
//! snapshot taken inside the cut's lock), and restored by letting InnoDB
//! recover a private server on the copy. Also the application file sets
//! cut at the same moment as the databases.
//!
//! - [`config`]: the backup kind and the `[physical]` and `[files]` settings.
//! - [`settings`]: the server settings a copy depends on (where its files
//!   are, how durable its commits are), read with one query, and the
//!   arguments of a private `mariadbd` on the copy.
//! - [`files`]: application file sets: checked before the lock, captured
//!   while every server of the cut is locked (a snapshot where configured,
//!   else a copy bounded by a budget).
//! - [`stream`]: a directory tree to a sink as one `.tar.zst` object and
//!   back, never staged whole on local disk (the bytes on disk are
//!   `format::physical`'s).
//! - [`backup`]: a physical backup's transfer: the snapshot's datadir and
//!   the file sets streamed to the sink, then the manifest.
//! - [`recover`]: a private `mariadbd` on a restored datadir: crash
//!   recovery, the position it recovered to, a clean shutdown.
//! - [`mariabackup`]: `mariadb-backup` as the data mover where no
//!   snapshotting filesystem exists: a base taken before the cut, rolled
//!   to the cut with the server's binlog on restore.
//! - [`restore`]: a physical backup written into a datadir, recovered and
//!   checked against the cut; file sets restored to a chosen path.

pub mod backup;
pub mod config;
pub mod files;
pub mod mariabackup;
pub mod recover;
pub mod restore;
pub mod settings;
pub mod stream;

pub use config::{FileSet, FileSetOptions, Kind, MariabackupConfig, PhysicalOptions};
