//! `lockstep.agent.v1.NodeAgent` handlers: convert, call the agent, map errors.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lockstep_proto::agent as pb;
use lockstep_proto::agent::node_agent_server::NodeAgent;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use crate::agent::{Agent, receiver_dropped};
use crate::progress::{self, Progress};
use crate::restore::LoadOptions;

/// How often Transfer and Restore report progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct AgentService {
    agent: Arc<Agent>,
}

impl AgentService {
    pub fn new(agent: Arc<Agent>) -> Self {
        AgentService { agent }
    }

    fn fence(&self, term: u64) -> Result<(), Status> {
        self.agent.fence(term).map_err(|e| convert::to_status(&e))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl NodeAgent for AgentService {
    type PrepareStream = BoxStream<pb::PrepareEvent>;
    type TransferStream = BoxStream<pb::TransferProgress>;
    type RestoreStream = BoxStream<pb::RestoreProgress>;
    type CopyStream = BoxStream<pb::CopyProgress>;
    type ReplayStream = BoxStream<pb::ReplayProgress>;

    async fn copy(
        &self,
        request: Request<pb::CopyRequest>,
    ) -> Result<Response<Self::CopyStream>, Status> {
        let r = request.into_inner();
        let progress = Arc::new(Progress::default());
        let (agent, p) = (self.agent.clone(), progress.clone());
        let job = async move {
            let expect = crate::agent::Expected {
                backup_id: r.backup_id.clone(),
                manifest_sha256: r.manifest_sha256.clone(),
            };
            agent
                .copy(&r.location, r.from.as_ref(), r.to.as_ref(), &expect, &p)
                .await
        };
        Ok(Response::new(stream_job(progress, job, |s, done| {
            pb::CopyProgress {
                bytes: s.bytes,
                files_done: 0,
                files_total: 0,
                done: done.is_some(),
                artifact: done.map(|d| convert::artifact(&d)),
            }
        })))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        let r = request.into_inner();
        let expect = crate::agent::Expected {
            backup_id: r.backup_id.clone(),
            manifest_sha256: r.manifest_sha256.clone(),
        };
        let (files, bytes) = self
            .agent
            .verify(&r.location, r.sink.as_ref(), &expect, r.manifest_only)
            .await
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(pb::VerifyReply { files, bytes }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanReply>, Status> {
        let r = request.into_inner();
        let store = crate::sink::open(r.sink.as_ref(), &self.agent.local())
            .await
            .map_err(|e| convert::to_status(&e))?;
        let s = crate::sink::artifact::scan(&store, r.usage_only)
            .await
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(pb::ScanReply {
            artifacts: s
                .artifacts
                .into_iter()
                .map(
                    |(location, manifest_sha256, manifest)| pb::ScannedArtifact {
                        location,
                        manifest_sha256,
                        manifest,
                    },
                )
                .collect(),
            objects: s.objects,
            bytes: s.bytes,
            incomplete: s.incomplete,
        }))
    }

    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<Self::PrepareStream>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let wait_for_go = r.wait_for_go;
        let req =
            convert::prepare_request(r, self.agent.config()).map_err(|e| convert::to_status(&e))?;
        let (tx, rx) = mpsc::channel(4);
        let err_tx = tx.clone();
        let agent = self.agent.clone();
        let run = async move {
            let (ready_tx, ready_rx) = oneshot::channel();
            let ready = wait_for_go.then_some(ready_tx);
            let tell_ready = async {
                if ready_rx.await.is_ok() {
                    let _ = tx.send(Ok(convert::ready_event())).await;
                }
            };
            let (prepared, ()) = futures::join!(
                agent.prepare(req, ready, receiver_dropped(tx.clone())),
                tell_ready
            );
            let (info, released) = prepared.map_err(|e| {
                tracing::warn!(error = %e, "prepare refused");
                convert::to_status(&e)
            })?;
            let _ = tx.send(Ok(convert::prepared(&info, agent.config()))).await;
            tokio::spawn(async move {
                if let Ok(r) = released.await {
                    let _ = tx.send(Ok(convert::released_event(&r))).await;
                }
            });
            Ok::<_, Status>(())
        };
        if wait_for_go {
            // Answer at once: `ready` must reach the caller before it sends
            // Go; a failure becomes the stream's final status.
            tokio::spawn(async move {
                if let Err(s) = run.await {
                    let _ = err_tx.send(Err(s)).await;
                }
            });
        } else {
            run.await?;
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn go(&self, request: Request<pb::GoRequest>) -> Result<Response<pb::GoReply>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        self.agent
            .go(&r.backup_id)
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(pb::GoReply {}))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitReply>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let id = r.backup_id;
        // Run to the end even if the caller goes away mid-call: a commit cut
        // short would leave the backup half-committed on this agent.
        let agent = self.agent.clone();
        let c = tokio::spawn(async move { agent.commit(&id).await })
            .await
            .map_err(|e| Status::internal(format!("commit task stopped: {e}")))?
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(pb::CommitReply {
            held_us: c.released.held_us,
            released_at_unix_us: c.released.released_at_unix_us,
            held_until_commit: c.released.reason == crate::agent::COMMIT,
            snapshot_positions: c.snapshot_positions.iter().map(convert::position).collect(),
        }))
    }

    async fn capture_files(
        &self,
        request: Request<pb::CaptureFilesRequest>,
    ) -> Result<Response<pb::CaptureFilesReply>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let (sets, took) = self
            .agent
            .capture_files(&r.backup_id)
            .await
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(pb::CaptureFilesReply {
            sets,
            took_us: took.as_micros() as u64,
        }))
    }

    async fn take_base(
        &self,
        request: Request<pb::TakeBaseRequest>,
    ) -> Result<Response<pb::TakeBaseReply>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let base = self
            .agent
            .take_base(&r.backup_id, &r.kind)
            .await
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(match base {
            Some(b) => pb::TakeBaseReply {
                taken: true,
                binlog_file: b.position.binlog_file,
                binlog_pos: b.position.binlog_pos,
                bytes: b.bytes,
                took_ms: b.took.as_millis() as u64,
            },
            None => pb::TakeBaseReply::default(),
        }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortReply>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let reason = if r.reason.is_empty() {
            "requested".to_string()
        } else {
            r.reason
        };
        let was_held = self.agent.abort(&r.backup_id, &reason).await;
        Ok(Response::new(pb::AbortReply { was_held }))
    }

    async fn transfer(
        &self,
        request: Request<pb::TransferRequest>,
    ) -> Result<Response<Self::TransferStream>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let level = convert::zstd_level(r.zstd_level).map_err(|e| convert::to_status(&e))?;
        let progress = Arc::new(Progress::default());
        let (agent, p) = (self.agent.clone(), progress.clone());
        let job = async move {
            agent
                .transfer(
                    &r.backup_id,
                    level,
                    r.sink.as_ref(),
                    r.cut_servers.clone(),
                    p,
                )
                .await
        };
        Ok(Response::new(stream_job(progress, job, |s, done| {
            pb::TransferProgress {
                rows: s.rows,
                bytes: s.bytes,
                tables_done: s.tables_done as u32,
                tables_total: s.tables_total as u32,
                done: done.is_some(),
                artifact: done.map(|d| convert::artifact(&d)),
            }
        })))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let opts = LoadOptions {
            threads: convert::restore_threads(r.threads, self.agent.config())
                .map_err(|e| convert::to_status(&e))?,
            force: r.force,
            binlog: r.binlog,
            allow_reset_master: r.allow_reset_master,
        };
        let progress = Arc::new(Progress::default());
        let (agent, p) = (self.agent.clone(), progress.clone());
        let job = async move {
            let expect = crate::agent::Expected {
                backup_id: r.backup_id.clone(),
                manifest_sha256: r.manifest_sha256.clone(),
            };
            let target = crate::agent::RestoreTarget {
                mysql: (!r.target_mysql.is_empty()).then(|| r.target_mysql.clone()),
                datadir: (!r.target_datadir.is_empty()).then(|| r.target_datadir.clone().into()),
                files_to: (!r.files_to.is_empty()).then(|| r.files_to.clone().into()),
            };
            agent
                .restore(&r.location, r.sink.as_ref(), &target, &expect, &opts, p)
                .await
        };
        Ok(Response::new(stream_job(progress, job, |s, done| {
            pb::RestoreProgress {
                rows: s.rows,
                bytes: s.bytes,
                tables_done: s.tables_done as u32,
                tables_total: s.tables_total as u32,
                done: done.is_some(),
                report: done.map(|d| convert::restore_report(&d)),
            }
        })))
    }

    async fn replay(
        &self,
        request: Request<pb::ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let r = request.into_inner();
        self.fence(r.term)?;
        let total: u64 = r.segments.iter().map(|s| s.end - s.start).sum();
        let progress = Arc::new(Progress::default());
        let (agent, p) = (self.agent.clone(), progress.clone());
        if r.check_only {
            let job = async move { agent.check_replay(&r, p).await };
            return Ok(Response::new(stream_job(progress, job, move |s, done| {
                pb::ReplayProgress {
                    bytes: s.bytes,
                    total_bytes: total,
                    done: done.is_some(),
                    method: "check".into(),
                    server: done.unwrap_or_default(),
                    ..Default::default()
                }
            })));
        }
        let job = async move { agent.replay(&r, p).await };
        Ok(Response::new(stream_job(progress, job, move |s, done| {
            let mut m = pb::ReplayProgress {
                bytes: s.bytes,
                total_bytes: total,
                done: done.is_some(),
                ..Default::default()
            };
            if let Some(d) = done {
                m.method = d.method.as_str().to_string();
                m.gtid_slave_pos = d.gtid_slave_pos;
                m.duration_ms = d.duration.as_millis() as u64;
                m.server = d.server;
            }
            m
        })))
    }

    async fn search_binlog(
        &self,
        request: Request<pb::SearchBinlogRequest>,
    ) -> Result<Response<pb::SearchBinlogReply>, Status> {
        let r = request.into_inner();
        let s = self
            .agent
            .search_binlog(&r)
            .await
            .map_err(|e| convert::to_status(&e))?;
        Ok(Response::new(pb::SearchBinlogReply {
            events: s.found.into_iter().map(convert::binlog_event).collect(),
            truncated: s.truncated,
            unreadable: s.unreadable,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.agent.status().await;
        Ok(Response::new(convert::status(&s, self.agent.config())))
    }
}

/// Runs `job` in its own task (it keeps going if the caller goes away: its
/// result lands on disk or in the target) and streams `message(progress,
/// None)` every [`PROGRESS_EVERY`], then `message(progress, Some(result))`,
/// or the job's error as the stream's final status.
fn stream_job<T, M>(
    progress: Arc<Progress>,
    job: impl Future<Output = crate::Result<T>> + Send + 'static,
    message: impl Fn(progress::Snapshot, Option<T>) -> M + Send + 'static,
) -> BoxStream<M>
where
    T: Send + 'static,
    M: Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let mut job = tokio::spawn(job);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                r = &mut job => {
                    let last = match r {
                        Ok(Ok(d)) => Ok(message(progress.snapshot(), Some(d))),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "job failed");
                            Err(convert::to_status(&e))
                        }
                        Err(e) => Err(Status::internal(format!("job task stopped: {e}"))),
                    };
                    let _ = tx.send(last).await;
                    return;
                }
                _ = tick.tick() => {
                    let _ = tx.send(Ok(message(progress.snapshot(), None))).await;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
