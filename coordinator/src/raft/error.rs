//! The raft module's error type.

/// Result alias for the raft module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the coordinator's raft core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; clients should retry at `leader_addr`
    /// (unknown during an election, then retry after a short pause).
    #[error("not the raft leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        /// Raft id of the current leader, if this node knows it.
        leader_id: Option<u64>,
        /// The leader's gRPC URL from the peer map, if known.
        leader_addr: Option<String>,
    },
    /// The proposal's log position was taken by another leader's entry: it was
    /// never applied and is safe to retry.
    #[error("proposal at index {index} (term {term}) was dropped ({reason}); retry")]
    ProposalDropped {
        /// Index the proposal was appended at.
        index: u64,
        /// Term the proposal was appended in.
        term: u64,
        /// Why it was dropped.
        reason: &'static str,
    },
    /// This node skipped past the proposal's position by installing a
    /// snapshot: the proposal may or may not have been applied.
    #[error("outcome of the proposal at index {index} is unknown: a snapshot covered it")]
    OutcomeUnknown {
        /// Index the proposal was appended at.
        index: u64,
    },
    /// The proposal is larger than one raft entry may be (every entry must
    /// fit one transport message). Not retryable: split the data.
    #[error(
        "proposal of {size} bytes exceeds the raft entry limit of {limit} bytes (an entry must fit one raft transport message)"
    )]
    EntryTooLarge {
        /// Bytes of the proposal.
        size: usize,
        /// The largest entry.
        limit: usize,
    },
    /// raft-rs refused a request (e.g. a proposal during leadership transfer).
    #[error("raft refused the request")]
    Raft(#[source] raft::Error),
    /// The raft task has stopped (shutdown or failure); see its exit error.
    #[error("raft node {id} is stopped")]
    Stopped {
        /// Raft id of this node.
        id: u64,
    },
    /// A redb operation on the raft store failed.
    #[error("{context} in raft store {path}")]
    Storage {
        /// Verb phrase saying what was being done.
        context: &'static str,
        /// The store file.
        path: String,
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A raft message, entry or state from disk or network failed to decode.
    #[error("decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The codec error.
        #[source]
        source: protobuf::ProtobufError,
    },
    /// A record in the raft store has an impossible shape.
    #[error("corrupt {what} in raft store {path}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The store file.
        path: String,
    },
    /// Encoding a raft structure failed.
    #[error("encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The codec error.
        #[source]
        source: protobuf::ProtobufError,
    },
    /// The state machine could not load a snapshot.
    #[error("restore the state machine from the snapshot at index {index}")]
    Restore {
        /// Raft index the snapshot was taken at.
        index: u64,
        /// The state machine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The state machine cannot apply a committed entry (see
    /// [`crate::raft::StateMachine::apply`]); the node stops rather than
    /// skip it.
    #[error("raft node {id} cannot apply the committed entry at index {index}; stopping")]
    Apply {
        /// Raft id of this node.
        id: u64,
        /// The entry's raft index.
        index: u64,
        /// The state machine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration is invalid.
    #[error("invalid raft config: {0}")]
    Config(String),
    /// The raft task failed inside raft-rs (a bug or corrupted store).
    #[error("raft node {id} failed: {context}")]
    Fatal {
        /// Raft id of this node.
        id: u64,
        /// Verb phrase saying what was being done.
        context: &'static str,
        /// The raft-rs error.
        #[source]
        source: raft::Error,
    },
    /// The raft task panicked or was aborted.
    #[error("raft task of node {id} ended abnormally: {reason}")]
    TaskFailed {
        /// Raft id of this node.
        id: u64,
        /// The join error's message.
        reason: String,
    },
}

impl Error {
    /// True when retrying the same request (after following a redirect, or
    /// after a short pause) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::ProposalDropped { .. }
                | Error::Raft(raft::Error::ProposalDropped)
        )
    }
}
