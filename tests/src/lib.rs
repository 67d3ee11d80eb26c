//! lockstep's integration-test harness: real MariaDB servers and the
//! project's real binaries as processes on 127.0.0.1, each in its own short
//! temp dir under /tmp, on free ports, cleaned up on drop. Nothing in the
//! database path is mocked.
//!
//! Modules:
//! - [`process`]: generic child processes (spawn with a log file, signals by
//!   PID, wait with a deadline, kill and reap on drop), temp dirs,
//!   [`process::bin_path`] for the workspace's binaries, and [`Supervised`],
//!   the signal/pause/resume/kill/stop methods every harness process shares.
//! - [`ports`]: free TCP ports and "address already in use" detection.
//! - [`mariadb`]: [`MariaDb`], one real server from a shared template datadir,
//!   with query helpers, stop/kill/restart and signals; its datadir in the
//!   temp dir or a chosen directory, or an existing (restored) one
//!   ([`MariaDb::start_on`]).
//! - [`loopfs`]: [`loopfs::LoopFs`], a loop-mounted btrfs or XFS (reflink)
//!   image for datadirs and application files, with btrfs subvolumes and
//!   snapshots; root only, opt-in through `LOCKSTEP_LOOPFS_TESTS=1`
//!   ([`loopfs::enabled`]).
//! - [`agent`]: [`AgentProc`], the `lockstep-agent serve` process with a gRPC
//!   client, and [`run_agent_cli`] for one-shot CLI runs.
//! - [`coordinator`]: [`CoordinatorProc`] (`lockstep-coordinator`),
//!   [`CoordinatorGroup`] (a raft group on free ports) and [`run_lockstep`]
//!   (the `lockstep` CLI).
//! - [`cluster`]: [`ProxiedCluster`], servers + agents + coordinators with
//!   a [`Proxy`] in front of every agent and coordinator, and faults on the
//!   links between two nodes.
//! - [`bench`]: [`bench::BenchCluster`], N servers + agents + 3
//!   coordinators (plaintext or mutual TLS) for the benchmarks, and the
//!   freeze-window samples of each backup.
//! - [`plain_cluster`]: [`plain_cluster::Cluster`], 3 servers + 3 agents + 3
//!   coordinators wired together, with the helpers cluster tests share.
//! - [`catalog_cli`]: [`CatalogCli`], the `lockstep` CLI against a test
//!   cluster and the catalog polls every cluster test shares.
//! - [`causal`]: the causal-chain writer and check that prove consistency
//!   (invariant I3), and its journal file for application file sets
//!   ([`causal::journal_last`]).
//! - [`compare`]: checksums and normalised dumps to compare two servers' data.
//! - [`probe`]: what a database user sees (can a write commit now?) and
//!   driving one cut on an agent over gRPC.
//! - [`proxy`]: [`Proxy`], a fault-injecting TCP proxy (delay, stall,
//!   one-way, cut; for everyone or for one process's connections) to put
//!   between roles.
//! - [`s3`]: [`s3::S3Server`], a real S3-compatible server (moto) with a
//!   bucket and enforced credentials, for the S3 sink tests.
//! - [`mysql_tls`]: certificates for MariaDB's TLS, `REQUIRE SSL` accounts
//!   with the least grants, private password/credentials files, and a grep
//!   for a secret in files and command lines.
//! - [`logging`]: [`init_tracing`] and the [`step!`] macro.
//!
//! Where new code goes: anything about one kind of process belongs in that
//! process's module (a new binary gets its own module beside [`agent`], built
//! on [`process::ChildProcess`]); checks on data go in [`causal`] or
//! [`compare`]; clusters of several processes (agents + servers +
//! coordinators wired together) get their own module that composes the
//! others. Tests themselves live in `tests/tests/tNN_area.rs`, never here, and
//! only the harness's own smoke tests (`t00_harness.rs`, and
//! `t109_loopfs_harness.rs` for the loop filesystems) test the harness.
//!
//! Rules every module follows: errors are `anyhow` with context naming the
//! server, port or file; waits poll observable state with a deadline (never a
//! fixed sleep); every process and temp dir is released on drop (set
//! `LOCKSTEP_KEEP_TMP=1` to keep the temp dirs for a post-mortem).

pub mod agent;
pub mod bench;
pub mod catalog_cli;
pub mod causal;
pub mod cluster;
pub mod compare;
pub mod coordinator;
pub mod deploy;
pub mod logging;
pub mod loopfs;
pub mod mariadb;
pub mod mysql_tls;
pub mod plain_cluster;
pub mod ports;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod sinks;
pub mod tls;

pub use agent::{AgentOptions, AgentProc, CliOutput, run_agent_cli};
pub use catalog_cli::CatalogCli;
pub use causal::{CausalWriter, JournalEnd, Target, check_chain, journal_last, read_journal};
pub use cluster::{ClusterOptions, Node, ProxiedCluster};
pub use compare::{assert_same_data, checksum_tables, dump_text};
pub use coordinator::{CoordinatorGroup, CoordinatorOptions, CoordinatorProc, run_lockstep};
pub use logging::init_tracing;
pub use loopfs::LoopFs;
pub use mariadb::{MariaDb, MariaDbOptions};
pub use process::{ChildProcess, Signal, Supervised, bin_path};
pub use proxy::{Direction, Fault, Proxy, ProxyHandle};
pub use tls::Pki;
