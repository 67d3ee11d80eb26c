//! The agent's share of point-in-time recovery and of archive searches:
//! fetch the archived segments a request names from the sinks (each
//! checked against the catalog's sha256), then replay them into a server
//! or index them and keep what a filter matches.

use std::sync::Arc;

use lockstep_proto::agent as pb;

use super::Agent;
use crate::binlog::fetch::{self, Stores};
use crate::binlog::index::{Filter, Indexer, Kind, TxnEntry};
use crate::binlog::replay::{self, Method, ReplayPlan, ReplayReport};
use crate::error::{Error, Result};
use crate::progress::Progress;

impl Agent {
    /// Fetches the request's segments into a scratch directory under the
    /// host-local sink and replays them into the target (or this agent's
    /// server). The scratch directory is removed afterwards.
    pub async fn replay(
        &self,
        r: &pb::ReplayRequest,
        progress: Arc<Progress>,
    ) -> Result<ReplayReport> {
        let server = if r.target_mysql.is_empty() {
            self.own_server()?.clone()
        } else {
            self.target_server(&r.target_mysql)?
        };
        let method = match r.method.as_str() {
            "" => None,
            "relay" => Some(Method::Relay),
            "pipe" => Some(Method::Pipe),
            other => {
                return Err(Error::Config(format!(
                    "replay method {other:?}: expected relay or pipe"
                )));
            }
        };
        if r.segments.first().is_none_or(|s| s.file != r.start_file)
            || r.segments.last().is_none_or(|s| s.file != r.stop_file)
        {
            return Err(Error::Config(format!(
                "the segments do not run from {} to {}",
                r.start_file, r.stop_file
            )));
        }
        let _exclusive = super::artifacts::RestoreClaim::take(&self.restoring, server.address())?;
        let scratch = self
            .cfg
            .sink_dir
            .join(".replay")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, "create", e))?;
        let result = async {
            let mut stores = Stores::new(r.sinks.clone(), self.local());
            let files =
                fetch::files(&mut stores, &r.segments, &scratch, &Progress::default()).await?;
            let plan = ReplayPlan {
                files,
                start_pos: r.start_pos,
                stop_pos: r.stop_pos,
                method,
            };
            replay::replay(&server, &plan, &progress).await
        }
        .await;
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            tracing::warn!(dir = %scratch.display(), error = %e, "could not remove the replay's scratch directory");
        }
        result
    }

    /// A recovery's pre-flight: every segment readable and intact, the
    /// target empty (unless forced). Changes nothing.
    /// Returns the target's address.
    pub async fn check_replay(
        &self,
        r: &pb::ReplayRequest,
        progress: Arc<Progress>,
    ) -> Result<String> {
        let server = if r.target_mysql.is_empty() {
            self.own_server()?.clone()
        } else {
            self.target_server(&r.target_mysql)?
        };
        if !r.force {
            let mut conn = server.connect("check the recovery target").await?;
            let existing = crate::schema::list_databases(&mut conn, server.address()).await?;
            if !existing.is_empty() {
                return Err(Error::TargetNotEmpty {
                    server: server.address().to_string(),
                    holds: format!("database(s) {}", existing.join(", ")),
                });
            }
        }
        let mut stores = Stores::new(r.sinks.clone(), self.local());
        fetch::each(&mut stores, &r.segments, |_, bytes| {
            progress.add_bytes(bytes.len() as u64);
            Ok(())
        })
        .await?;
        Ok(server.address().to_string())
    }

    /// Indexes the request's segments and returns the transactions the
    /// filter matches (at most `limit`, and whether there were more); a
    /// file whose segments cannot be read is skipped and named.
    pub async fn search_binlog(&self, r: &pb::SearchBinlogRequest) -> Result<Searched> {
        let filter = Filter {
            table: (!r.table.is_empty()).then(|| r.table.clone()),
            kind: match r.kind.as_str() {
                "" => None,
                k => Some(<Kind as clap::ValueEnum>::from_str(k, true).map_err(|_| {
                    Error::Config(format!(
                        "event type {k:?}: expected insert, update, delete or ddl"
                    ))
                })?),
            },
            grep: (!r.grep.is_empty()).then(|| r.grep.clone()),
            since: (r.since > 0).then_some(r.since),
            until: (r.until > 0).then_some(r.until),
        };
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let mut stores = Stores::new(r.sinks.clone(), self.local());
        let mut found = Vec::new();
        let mut truncated = false;
        let mut unreadable = Vec::new();
        // File by file: one that cannot be read is reported and skipped.
        for file in r.segments.chunk_by(|a, b| a.file == b.file) {
            let mut ix = Indexer::new(&file[0].file);
            let mut taken = Vec::new();
            let read = fetch::each(&mut stores, file, |s, bytes| {
                taken.extend(ix.feed(s.start, bytes)?);
                Ok(())
            })
            .await;
            if let Err(e) = read {
                unreadable.push(format!("{}: {e}", file[0].file));
                continue;
            }
            for e in taken {
                let wanted = if r.gtid.is_empty() {
                    filter.matches(&e)
                } else {
                    e.gtid.as_deref() == Some(r.gtid.as_str())
                };
                if wanted && r.last {
                    found.clear();
                    found.push(e);
                } else if wanted {
                    if found.len() < limit {
                        found.push(e);
                    } else {
                        truncated = true;
                    }
                }
            }
        }
        Ok(Searched {
            found,
            truncated,
            unreadable,
        })
    }
}

/// What a search found, and the files it could not read.
#[derive(Debug, Default)]
pub struct Searched {
    pub found: Vec<TxnEntry>,
    pub truncated: bool,
    pub unreadable: Vec<String>,
}
