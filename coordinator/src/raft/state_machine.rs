//! The hook through which the raft core drives the replicated state (the
//! backup catalog in production, a counter or map in tests).

/// A deterministic state machine replicated by raft.
///
/// The raft task owns it and calls it from one task only. `apply` must be
/// deterministic and free of outside effects: the same entries in the same
/// order give the same state on every node.
pub trait StateMachine: Send + 'static {
    /// Apply one committed normal entry's data; returns the reply bytes for
    /// the proposer.
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8>;

    /// Serialize the whole state (raft snapshots and durability).
    fn snapshot(&self) -> Vec<u8>;

    /// Replace the whole state from a [`StateMachine::snapshot`] image.
    fn restore(&mut self, data: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
