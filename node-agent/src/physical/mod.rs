//! Physical backups: a server's datadir copied as files (from a file
//! snapshot taken inside the cut's lock), and restored by letting InnoDB
//! recover a private server on the copy.
//!
//! - [`settings`]: the server settings a copy depends on (where its files
//!   are, how durable its commits are), read with one query, and the
//!   arguments of a private `mariadbd` on the copy.
//! - [`stream`]: a directory tree to a sink as one `.tar.zst` object and
//!   back, never staged whole on local disk (the bytes on disk are
//!   `format::physical`'s).
//! - [`recover`]: a private `mariadbd` on a restored datadir: crash
//!   recovery, the position it recovered to, a clean shutdown.

pub mod recover;
pub mod settings;
pub mod stream;
