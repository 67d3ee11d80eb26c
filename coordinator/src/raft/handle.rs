//! The cloneable handle other tasks use to talk to the raft task, and the
//! types it returns.

use std::fmt;

use tokio::sync::{mpsc, oneshot};

use super::error::{Error, Result};
use super::state_machine::StateMachine;

/// A read to run on the raft task against the state machine.
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<&S>) + Send>;

/// A request to the raft task.
pub(crate) enum Command<S> {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    Read {
        linearizable: bool,
        read: ReadFn<S>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
}

/// The raft role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Checking whether it could win an election (pre-vote).
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// The leader.
    Leader,
}

/// A snapshot of one node's raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's raft id.
    pub id: u64,
    /// The leader this node knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the state machine (durably).
    pub applied: u64,
    /// This node's role.
    pub role: Role,
    /// The voters of the current configuration, ascending.
    pub voters: Vec<u64>,
}

/// Cloneable handle to a running raft node.
pub struct RaftHandle<S> {
    id: u64,
    /// Largest proposal ([`super::RaftConfig::max_entry_size`]).
    max_entry: usize,
    tx: mpsc::Sender<Command<S>>,
}

impl<S> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            max_entry: self.max_entry,
            tx: self.tx.clone(),
        }
    }
}

impl<S> fmt::Debug for RaftHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftHandle").field("id", &self.id).finish()
    }
}

impl<S: StateMachine> RaftHandle<S> {
    pub(crate) fn new(id: u64, max_entry: usize, tx: mpsc::Sender<Command<S>>) -> Self {
        Self { id, max_entry, tx }
    }

    /// The largest proposal [`RaftHandle::propose`] accepts, in bytes.
    pub fn max_entry_size(&self) -> usize {
        self.max_entry
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    async fn call(&self, cmd: Command<S>) -> Result<()> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| Error::Stopped { id: self.id })
    }

    /// Replicate `data`; once committed and applied here, return the state
    /// machine's reply. Only the leader accepts proposals
    /// ([`Error::NotLeader`] carries the redirect). No built-in timeout: wrap
    /// in `tokio::time::timeout` (a timed-out proposal may still apply).
    /// Data over [`RaftHandle::max_entry_size`] fails at once with
    /// [`Error::EntryTooLarge`].
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        if data.len() > self.max_entry {
            return Err(Error::EntryTooLarge {
                size: data.len(),
                limit: self.max_entry,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.call(Command::Propose { data, reply }).await?;
        rx.await.map_err(|_| Error::Stopped { id: self.id })?
    }

    /// Linearizable read: on the leader, commits a barrier entry and runs `f`
    /// on the state machine when the barrier applies, so `f` sees every write
    /// committed before this call. Followers answer [`Error::NotLeader`].
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        self.read_inner(true, f).await
    }

    /// Possibly stale read on any node: runs `f` on the state as applied
    /// locally right now.
    pub async fn read_local<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        self.read_inner(false, f).await
    }

    async fn read_inner<R, F>(&self, linearizable: bool, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let read: ReadFn<S> = Box::new(move |state| {
            let _ = tx.send(state.map(f));
        });
        self.call(Command::Read { linearizable, read }).await?;
        rx.await.map_err(|_| Error::Stopped { id: self.id })?
    }

    /// This node's raft status.
    pub async fn status(&self) -> Result<NodeStatus> {
        let (reply, rx) = oneshot::channel();
        self.call(Command::Status { reply }).await?;
        rx.await.map_err(|_| Error::Stopped { id: self.id })
    }
}
