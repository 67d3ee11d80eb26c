//! Snapshots over the chunked `SendSnapshot` stream, the receiver's size
//! bound, malformed streams, and the entry size limit of ordinary batches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lockstep_proto::raft::raft_transport_client::RaftTransportClient;
use lockstep_proto::raft::{SnapshotChunk, SnapshotHeader};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tonic::Code;
use tracing::info;

use super::super::state_machine::encode_image;
use super::{COUNTER_KEY, Cluster, follower_of, propose, wait_for};
use crate::raft::{Error, Role};

/// The counter image a node holding `log` has (what its snapshot carries).
fn counter_image(total: u64, log: &[u64]) -> Vec<u8> {
    let mut value = total.to_le_bytes().to_vec();
    for v in log {
        value.extend_from_slice(&v.to_le_bytes());
    }
    encode_image(&[(COUNTER_KEY.to_string(), value)])
}

/// A follower behind a compacted log catches up through a snapshot sent in
/// many small chunks; its state then equals the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_via_multi_chunk_snapshot() {
    const CHUNK: usize = 64;
    let mut c = Cluster::start_with(3, 20, |_, cfg| cfg.snapshot_chunk_size = CHUNK).await;
    let leader = c.leader().await;
    let (lagging, want) = c.lag_a_follower(leader, 200).await;
    assert_eq!(want.0, (1..=200).sum::<u64>());
    let image = counter_image(want.0, &want.1).len();
    assert!(
        image > 20 * CHUNK,
        "image of {image} bytes spans many chunks"
    );

    info!("--- step: restart it; it catches up by a chunked snapshot");
    c.restart_and_catch_up_by_snapshot(lagging, &want).await;
    let stats = c.nodes[&lagging].node.transport_stats();
    assert_eq!(stats.snapshots_received.load(Ordering::SeqCst), 1);
    let chunks = stats.snapshot_chunks.load(Ordering::SeqCst);
    assert!(
        chunks >= (image / CHUNK) as u64,
        "{chunks} chunks for an image of {image} bytes"
    );

    info!("--- step: it keeps replicating after the snapshot");
    let total = propose(c.h(leader), 1000).await;
    let applied = c.h(leader).status().await.expect("status").applied;
    c.applied_everywhere(applied).await;
    assert_eq!(c.counter(lagging).await, c.counter(leader).await);
    assert_eq!(c.counter(lagging).await.0, total);
    c.stop_all().await;
}

/// A snapshot larger than the follower's `max_snapshot_size` is refused
/// (the error names both sizes and the sending coordinator); the leader
/// keeps committing with the other follower, and the lagging follower
/// catches up once restarted with a larger bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_over_the_receivers_bound_is_refused() {
    const BOUND: u64 = 512;
    let mut c = Cluster::start_with(3, 20, |_, cfg| {
        cfg.max_snapshot_size = BOUND;
        cfg.snapshot_chunk_size = 100;
    })
    .await;
    let leader = c.leader().await;
    let (lagging, want) = c.lag_a_follower(leader, 100).await;
    assert!(counter_image(want.0, &want.1).len() as u64 > BOUND);

    info!("--- step: restart it; the leader's snapshot is refused");
    c.restart(lagging).await;
    let stats = c.nodes[&lagging].node.transport_stats();
    wait_for("the follower to refuse a snapshot", async || {
        (stats.snapshots_refused.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert_eq!(stats.snapshots_received.load(Ordering::SeqCst), 0);
    assert_eq!(c.nodes[&lagging].probe.restores.load(Ordering::SeqCst), 1);
    assert_ne!(c.counter(lagging).await, want);

    info!("--- step: the refusal names the sizes and the sender");
    let mut client = RaftTransportClient::connect(c.peers[&lagging].clone())
        .await
        .expect("connect to the follower");
    let header = header(
        leader,
        lagging,
        snapshot_message(leader, lagging, 1, 1),
        BOUND + 1,
    );
    let err = client
        .send_snapshot(futures::stream::iter(vec![header]))
        .await
        .expect_err("over the bound");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    for part in [
        format!("{}", BOUND + 1),
        format!("{BOUND}"),
        format!("coordinator {leader}"),
        "max_snapshot_size".to_string(),
    ] {
        assert!(
            err.message().contains(&part),
            "{part:?} in {:?}",
            err.message()
        );
    }

    info!("--- step: the leader keeps committing");
    let s = c.h(leader).status().await.expect("status");
    assert_eq!(s.role, Role::Leader);
    let total = propose(c.h(leader), 7).await;
    assert_eq!(total, want.0 + 7);
    assert!(c.nodes[&lagging].handle.status().await.is_ok());

    info!("--- step: with a larger bound it catches up");
    c.stop(lagging).await;
    c.tweak = std::sync::Arc::new(|_, cfg: &mut crate::raft::RaftConfig| {
        cfg.snapshot_chunk_size = 100;
    });
    c.restart(lagging).await;
    let want = c.counter(leader).await;
    wait_for("lagging node to catch up", async || {
        (c.counter(lagging).await == want).then_some(())
    })
    .await;
    c.stop_all().await;
}

/// A raft `MsgSnapshot` from `from` to `to` at `index` in `term`, its data
/// empty.
fn snapshot_message(from: u64, to: u64, term: u64, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = from;
    m.to = to;
    m.term = term;
    let md = m.mut_snapshot().mut_metadata();
    md.index = index;
    md.term = term;
    md.mut_conf_state().voters = vec![1, 2, 3];
    m
}

/// The first chunk of a snapshot stream from `from` to `to`.
fn header(from: u64, to: u64, msg: Message, data_size: u64) -> SnapshotChunk {
    SnapshotChunk {
        header: Some(SnapshotHeader {
            from,
            to,
            voters: vec![1, 2, 3],
            message: msg.write_to_bytes().expect("encode raft message"),
            data_size,
        }),
        data: Vec::new(),
    }
}

fn data(bytes: &[u8]) -> SnapshotChunk {
    SnapshotChunk {
        header: None,
        data: bytes.to_vec(),
    }
}

/// Malformed, truncated, overlong and misaddressed snapshot streams are
/// refused with a clear error and never reach raft-rs: the follower keeps
/// its state, restores nothing, and keeps replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_snapshot_streams_never_reach_raft() {
    let mut c = Cluster::start(3, 1000).await;
    let leader = c.leader().await;
    let applied = c.settled(leader).await;
    let target = follower_of(leader);
    let before = c.counter(target).await;
    let restores = c.nodes[&target].probe.restores.load(Ordering::SeqCst);
    let term = c.h(leader).status().await.expect("status").term;
    // Installed, it would replace the follower's state: a snapshot from the
    // current leader in its term, far ahead of the log.
    let image = counter_image(999, &[999]);
    let snap = || snapshot_message(leader, target, term, applied + 1000);
    let full = image.len() as u64;
    let mut with_data = snap();
    with_data.mut_snapshot().data = image.clone().into();
    let mut append = snap();
    append.set_msg_type(MessageType::MsgAppend);
    let mut garbage = header(leader, target, snap(), full);
    if let Some(h) = garbage.header.as_mut() {
        h.message = vec![0xff; 7];
    }
    let mut stranger = header(9, target, snap(), full);
    if let Some(h) = stranger.header.as_mut() {
        h.voters = vec![1, 2, 3];
    }
    let mut disagree = header(leader, target, snap(), full);
    if let Some(h) = disagree.header.as_mut() {
        h.voters = vec![1, 2, 3, 4, 5];
    }
    let half = image.len() / 2;
    let cases: Vec<(&str, Vec<SnapshotChunk>, Code, &str)> = vec![
        ("empty stream", vec![], Code::InvalidArgument, "header"),
        (
            "no header",
            vec![data(&image)],
            Code::InvalidArgument,
            "header",
        ),
        (
            "undecodable message",
            vec![garbage, data(&image)],
            Code::InvalidArgument,
            "decode",
        ),
        (
            "not a snapshot message",
            vec![header(leader, target, append, full), data(&image)],
            Code::InvalidArgument,
            "MsgAppend",
        ),
        (
            "data inside the message",
            vec![header(leader, target, with_data, full)],
            Code::InvalidArgument,
            "data",
        ),
        (
            "truncated",
            vec![header(leader, target, snap(), full), data(&image[..half])],
            Code::InvalidArgument,
            "truncated",
        ),
        (
            "longer than declared",
            vec![
                header(leader, target, snap(), full),
                data(&image),
                data(b"x"),
            ],
            Code::InvalidArgument,
            "more than",
        ),
        (
            "second header",
            vec![
                header(leader, target, snap(), full),
                data(&image[..half]),
                header(leader, target, snap(), full),
            ],
            Code::InvalidArgument,
            "header",
        ),
        (
            "addressed to another node",
            vec![header(leader, leader, snap(), full), data(&image)],
            Code::FailedPrecondition,
            "reached",
        ),
        (
            "not a peer",
            vec![stranger, data(&image)],
            Code::PermissionDenied,
            "not a peer",
        ),
        (
            "voters disagree",
            vec![disagree, data(&image)],
            Code::FailedPrecondition,
            "disagree on membership",
        ),
    ];
    let mut client = RaftTransportClient::connect(c.peers[&target].clone())
        .await
        .expect("connect to the follower");
    for (what, chunks, code, says) in cases {
        info!(what, "--- step: send a bad snapshot stream");
        let err = client
            .send_snapshot(futures::stream::iter(chunks))
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {:?}", err.message());
    }

    info!("--- step: the follower never saw any of them");
    let stats = c.nodes[&target].node.transport_stats();
    assert_eq!(stats.snapshots_received.load(Ordering::SeqCst), 0);
    assert_eq!(
        c.nodes[&target].probe.restores.load(Ordering::SeqCst),
        restores
    );
    assert_eq!(c.counter(target).await, before);
    propose(c.h(leader), 10).await;
    let applied = c.h(leader).status().await.expect("status").applied;
    c.applied_everywhere(applied).await;
    assert_eq!(c.counter(target).await.0, before.0 + 10);
    c.stop_all().await;
}

/// A proposal over the entry limit fails at once with an error naming both
/// sizes; proposals just under it replicate, several per batch never
/// exceeding the message limit, and the leader keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_entries_fail_and_large_ones_replicate() {
    const MAX_MESSAGE: usize = 64 * 1024;
    let mut c = Cluster::start_with(3, 1000, |_, cfg| {
        cfg.max_message_size = MAX_MESSAGE;
        cfg.snapshot_chunk_size = 4096;
    })
    .await;
    let leader = c.leader().await;
    let limit = c.h(leader).max_entry_size();
    assert!(limit < MAX_MESSAGE && limit > MAX_MESSAGE / 2, "{limit}");

    info!("--- step: a proposal one byte over the limit fails");
    let err = c
        .h(leader)
        .propose(vec![1; limit + 1])
        .await
        .expect_err("over the entry limit");
    assert!(!err.is_retryable());
    assert!(matches!(err, Error::EntryTooLarge { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}", limit + 1)), "{msg}");
    assert!(msg.contains(&format!("{limit}")), "{msg}");

    info!("--- step: proposals at the limit replicate, many at once");
    // The counter replies "bad command" to data that is not 8 bytes: still
    // an applied entry. Proposed together, they leave in one Ready.
    let burst = async |c: &Cluster| {
        let h = c.h(leader).clone();
        let mut proposals = Vec::new();
        for _ in 0..12 {
            let h = h.clone();
            proposals.push(tokio::spawn(async move { h.propose(vec![2; limit]).await }));
        }
        for p in proposals {
            p.await.expect("join").expect("proposal at the limit");
        }
    };
    let stats = c.nodes[&leader].node.transport_stats();
    let failures = stats.batch_send_failures.load(Ordering::SeqCst);
    burst(&c).await;
    let applied = c.h(leader).status().await.expect("status").applied;
    c.applied_everywhere(applied).await;
    assert_eq!(
        stats.batch_send_failures.load(Ordering::SeqCst),
        failures,
        "every batch fit the message limit: none failed"
    );

    info!("--- step: a follower catches up on large entries");
    let follower = follower_of(leader);
    c.stop(follower).await;
    burst(&c).await;
    c.restart(follower).await;
    let applied = c.h(leader).status().await.expect("status").applied;
    tokio::time::timeout(Duration::from_secs(25), c.applied_everywhere(applied))
        .await
        .expect("every node applied the large entries");
    assert_eq!(c.counter(follower).await, c.counter(leader).await);
    let total = propose(c.h(leader), 3).await;
    assert_eq!(total, c.counter(leader).await.0);
    c.stop_all().await;
}
