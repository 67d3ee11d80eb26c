//! Wire ↔ domain conversions, and errors → gRPC status codes.

use std::time::Duration;

use lockstep_proto::agent as pb;
use tonic::{Code, Status};

use crate::agent::{AgentConfig, AgentStatus, PrepareRequest, PreparedInfo, Released};
use crate::cut::{Budgets, Position};
use crate::dump::DumpResult;
use crate::error::Error;
use crate::flavour::ServerInfo;
use crate::format::manifest::FILE_NAME;
use crate::restore::LoadReport;

/// The largest number of snapshot (or restore) connections a request may ask for.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest lock-wait budget a request may ask for: a lock queued longer
/// than this is a pile-up, not a backup.
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(60);
/// The longest pre-flight budget a request may ask for.
pub const MAX_PREFLIGHT: Duration = Duration::from_secs(3600);
/// zstd levels a request may ask for (0 means the agent's default).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=19;

fn out_of_bounds(what: &str, got: impl std::fmt::Display, bounds: &str) -> Error {
    Error::Config(format!("{what} must be {bounds}, got {got}"))
}

/// Fills zero fields of a request from the agent's defaults and checks
/// every bound before anything touches the server.
pub fn prepare_request(r: pb::PrepareRequest, cfg: &AgentConfig) -> Result<PrepareRequest, Error> {
    let b = r.budgets.unwrap_or_default();
    let ms = |v: u64, default: Duration| {
        if v == 0 {
            default
        } else {
            Duration::from_millis(v)
        }
    };
    let req = PrepareRequest {
        backup_id: r.backup_id,
        term: r.term,
        lease: ms(r.lease_ms, cfg.max_lease),
        budgets: Budgets {
            preflight: ms(b.preflight_ms, cfg.budgets.preflight),
            lock_wait: ms(b.lock_wait_ms, cfg.budgets.lock_wait),
            // proto3 bools default to false; the agent's setting decides
            // unless the caller asks for a pre-flush.
            preflush: b.preflush || cfg.budgets.preflush,
        },
        snapshot_connections: if r.snapshot_connections == 0 {
            cfg.snapshot_connections
        } else {
            r.snapshot_connections as usize
        },
        position_only: r.position_only,
        kind: r.kind,
    };
    if req.backup_id.is_empty() || req.backup_id.len() > 128 {
        return Err(out_of_bounds(
            "backup id length",
            req.backup_id.len(),
            "1..=128",
        ));
    }
    if req.snapshot_connections > MAX_CONNECTIONS {
        return Err(out_of_bounds(
            "snapshot_connections",
            req.snapshot_connections,
            "1..=64",
        ));
    }
    if req.budgets.lock_wait > MAX_LOCK_WAIT {
        return Err(out_of_bounds(
            "the lock-wait budget",
            humantime::format_duration(req.budgets.lock_wait),
            "at most 60s",
        ));
    }
    if req.budgets.preflight > MAX_PREFLIGHT {
        return Err(out_of_bounds(
            "the pre-flight budget",
            humantime::format_duration(req.budgets.preflight),
            "at most 1h",
        ));
    }
    Ok(req)
}

/// The zstd level a Transfer asks for (`None`: the agent's default).
pub fn zstd_level(level: i32) -> Result<Option<i32>, Error> {
    match level {
        0 => Ok(None),
        l if ZSTD_LEVELS.contains(&l) => Ok(Some(l)),
        l => Err(out_of_bounds(
            "zstd_level",
            l,
            "-7..=19 (0: the agent's default)",
        )),
    }
}

/// The number of connections a Restore asks for (0: the agent's default).
pub fn restore_threads(threads: u32, cfg: &AgentConfig) -> Result<usize, Error> {
    match threads as usize {
        0 => Ok(cfg.snapshot_connections),
        t if t <= MAX_CONNECTIONS => Ok(t),
        t => Err(out_of_bounds(
            "threads",
            t,
            "1..=64 (0: the agent's default)",
        )),
    }
}

pub fn position(p: &Position) -> pb::Position {
    pb::Position {
        binlog_file: p.binlog_file.clone(),
        binlog_pos: p.binlog_pos,
        gtid_set: p.gtid_set.clone(),
    }
}

pub fn identity(info: &ServerInfo, cfg: &AgentConfig) -> pb::ServerIdentity {
    pb::ServerIdentity {
        flavour: info.flavour.as_str().into(),
        version: info.version.clone(),
        server_id: info.server_id,
        server_uuid: info.server_uuid.clone(),
        gtid_domain_id: info.gtid_domain_id,
        gtid_mode: info.gtid_mode.clone(),
        address: cfg
            .server
            .as_ref()
            .map(|s| s.address().to_string())
            .unwrap_or_default(),
        name: cfg.name.clone(),
    }
}

pub fn prepared(p: &PreparedInfo, cfg: &AgentConfig) -> pb::PrepareEvent {
    pb::PrepareEvent {
        event: Some(pb::prepare_event::Event::Prepared(pb::Prepared {
            backup_id: p.backup_id.clone(),
            position: Some(position(&p.position)),
            server: Some(identity(&p.info, cfg)),
            lock_method: p.method.as_str().into(),
            preflight_us: p.timings.preflight_us,
            lock_wait_us: p.timings.lock_wait_us,
            capture_us: p.timings.capture_us,
            locked_at_unix_us: p.timings.locked_at_unix_us,
            kind: p.kind.as_str().into(),
            provider: p.provider.into(),
            snapshot_us: p.snapshot_us,
            file_sets: p.file_sets as u32,
        })),
    }
}

pub fn released(r: &Released) -> pb::Released {
    pb::Released {
        reason: r.reason.clone(),
        held_us: r.held_us,
        released_at_unix_us: r.released_at_unix_us,
    }
}

/// The `ready` event of a two-step prepare.
pub fn ready_event() -> pb::PrepareEvent {
    pb::PrepareEvent {
        event: Some(pb::prepare_event::Event::Ready(pb::Ready {})),
    }
}

pub fn released_event(r: &Released) -> pb::PrepareEvent {
    pb::PrepareEvent {
        event: Some(pb::prepare_event::Event::Released(released(r))),
    }
}

pub fn artifact(d: &DumpResult) -> pb::Artifact {
    pb::Artifact {
        location: d.location.clone(),
        manifest: FILE_NAME.into(),
        total_bytes: d.manifest.totals.bytes,
        files: d.manifest.totals.files,
        manifest_sha256: d.manifest_sha256.clone(),
        rows: d.manifest.totals.rows,
        kind: if d.manifest.physical.is_some() {
            "physical"
        } else {
            "logical"
        }
        .into(),
        provider: d
            .manifest
            .physical
            .as_ref()
            .map(|p| p.provider.clone())
            .unwrap_or_default(),
        snapshot_us: d.manifest.physical.as_ref().map_or(0, |p| p.snapshot_us),
        snapshot_bytes: d.manifest.physical.as_ref().map_or(0, |p| p.snapshot_bytes),
        free_bytes: d.manifest.physical.as_ref().map_or(0, |p| p.free_bytes),
        file_sets: d
            .manifest
            .file_sets
            .iter()
            .map(|f| f.name.clone())
            .collect(),
    }
}

pub fn restore_report(r: &LoadReport) -> pb::RestoreReport {
    pb::RestoreReport {
        server: r.server.clone(),
        backup_id: r.backup_id.clone(),
        tables: r.tables as u64,
        rows: r.rows,
        duration_ms: r.duration_ms,
        gtid_slave_pos: r.gtid_slave_pos.clone().unwrap_or_default(),
        kind: r.kind.into(),
        datadir: r.datadir.clone(),
        recovery_ms: r.recovery_ms,
        gtid_binlog_pos: r.gtid_binlog_pos.clone(),
        file_sets: r.file_sets.clone(),
    }
}

pub fn status(s: &AgentStatus, cfg: &AgentConfig) -> pb::StatusReply {
    pb::StatusReply {
        state: s.state.into(),
        backup_id: s.backup_id.clone().unwrap_or_default(),
        server: s.server.as_ref().map(|i| identity(i, cfg)),
        lock_held: s.lock_held_for_us.is_some(),
        lock_held_for_us: s.lock_held_for_us.unwrap_or(0),
        last_release: s.last_release.as_ref().map(released),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Maps an agent error to a gRPC status; the message is the error's text,
/// which names the server, backup or file.
pub fn to_status(e: &Error) -> Status {
    let code = match e {
        Error::BadUrl { .. } | Error::Config(_) => Code::InvalidArgument,
        Error::Mysql { source, .. } => match source {
            mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => Code::Unavailable,
            _ => Code::Internal,
        },
        Error::BinlogOff { .. }
        | Error::Unsupported { .. }
        | Error::LongStatement { .. }
        | Error::BadState { .. }
        | Error::LockHeld { .. }
        | Error::StaleTerm { .. } => Code::FailedPrecondition,
        Error::LockTimeout { .. } => Code::DeadlineExceeded,
        // The dump gave way to the application's DDL: the backup is
        // abandoned, and a new one may succeed once the DDL is done.
        Error::Busy { .. } | Error::DdlYield(_) => Code::Aborted,
        Error::SnapshotMismatch { .. } | Error::RowCount { .. } | Error::Checksum { .. } => {
            Code::DataLoss
        }
        Error::Io { .. } | Error::BadBackup { .. } => Code::Internal,
        Error::TargetNotEmpty { .. } => Code::AlreadyExists,
        Error::Sink { .. } => Code::Unavailable,
        Error::Cancelled(_) => Code::Cancelled,
        // A binlog that is gone before it was archived is a hole in the
        // archive.
        Error::BinlogPurged { .. } => Code::DataLoss,
        // A corrupt event in an archived binlog.
        Error::BinlogEvent { .. } => Code::DataLoss,
        Error::BinlogDump {
            retryable: true, ..
        } => Code::Unavailable,
        Error::BinlogDump { .. } | Error::BinlogArchive { .. } => Code::FailedPrecondition,
        // A bad file or an event the target refused: fix it and rerun.
        Error::Replay { .. } => Code::FailedPrecondition,
        // Physical copies: a tree that does not match its manifest, a
        // server whose files a snapshot of its datadir would miss, a
        // restored datadir that did not recover.
        Error::Tree { .. } => Code::DataLoss,
        Error::Archive { source, .. } => to_status(source).code(),
        Error::OutsideDatadir { .. } => Code::FailedPrecondition,
        Error::Recover { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A transaction of the event index, for `SearchBinlog`.
pub fn binlog_event(e: crate::binlog::index::TxnEntry) -> pb::BinlogEvent {
    pb::BinlogEvent {
        file: e.file,
        pos: e.pos,
        end: e.end,
        gtid: e.gtid.unwrap_or_default(),
        time: e.time,
        kinds: e.kinds.iter().map(|k| k.as_str().to_string()).collect(),
        tables: e.tables,
        rows: e.rows,
        summary: e.summary,
        server_id: e.server_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl_guard::Yielded;

    #[test]
    fn a_dump_that_gave_way_to_ddl_is_aborted_naming_it() {
        let e = Error::DdlYield(Box::new(Yielded {
            server: "127.0.0.1:3306".into(),
            backup_id: "b1".into(),
            thread_id: 42,
            user: "app".into(),
            after: String::new(),
            statement: "ALTER TABLE t ADD c INT".into(),
        }));
        let s = to_status(&e);
        assert_eq!(s.code(), Code::Aborted);
        assert!(
            s.message().starts_with(
                "server 127.0.0.1:3306: backup b1 yielded to DDL (thread 42, user app): ALTER TABLE t ADD c INT;"
            ),
            "{}",
            s.message()
        );
        assert!(e.is_refusal(), "worth retrying once the DDL is done");
    }
}
