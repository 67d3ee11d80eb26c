//! The lockstep coordinator: a raft group whose state machine is the backup
//! catalog, and whose leader runs the cluster-wide two-phase cut.
//!
//! Not built yet: the node agent (`lockstep-node-agent`) comes first and can be
//! used on its own (`lockstep-agent dump|load|serve`).
