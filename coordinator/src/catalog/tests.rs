//! The catalog's state transitions and its stored form.

use super::*;

fn server(cluster: &str, name: &str) -> Command {
    Command::RegisterServer(Server {
        cluster: cluster.into(),
        name: name.into(),
        agent_addr: format!("http://{name}:7400"),
        flavour: "mariadb".into(),
        version: "10.11.6".into(),
        server_id: 1,
        server_uuid: String::new(),
        registered_at_unix_ms: 1,
        registered_by: None,
    })
}

fn start(id: &str) -> Command {
    Command::StartBackup {
        sink: String::new(),
        id: id.into(),
        cluster: "c".into(),
        servers: vec!["a".into(), "b".into()],
        at_unix_ms: 10,
    }
}

/// CommitCut with `servers` prepared, locked at the given instants.
fn commit_cut(id: &str, servers: &[(&str, i64)]) -> Command {
    Command::CommitCut {
        id: id.into(),
        at_unix_ms: 11,
        cut: servers
            .iter()
            .map(|&(s, locked_at)| {
                let entry = CutEntry {
                    binlog_file: "mysql-bin.000001".into(),
                    binlog_pos: 4,
                    locked_at_unix_us: locked_at,
                    ..CutEntry::default()
                };
                (s.to_string(), entry)
            })
            .collect(),
    }
}

fn artifact() -> Artifact {
    Artifact {
        verified_at_unix_ms: None,
        verify_error: None,
        location: "/b".into(),
        manifest_sha256: "00".into(),
        bytes: 1,
        files: 1,
        rows: 1,
        ..Artifact::default()
    }
}

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    c.apply(server("c", "a")).expect("register a");
    c.apply(server("c", "b")).expect("register b");
    c
}

#[test]
fn a_backup_runs_through_every_step() {
    let mut c = catalog();
    c.apply(start("b1")).expect("start");
    let early = c.apply(commit_cut("b1", &[("a", 1_000)]));
    assert!(
        matches!(early, Err(Rejected::BadTransition { ref reason, .. }) if reason.contains("server b")),
        "{early:?}"
    );
    c.apply(commit_cut("b1", &[("a", 1_000), ("b", 1_500)]))
        .expect("commit");
    for (s, at) in [("a", 4_000), ("b", 6_000)] {
        c.apply(Command::Released {
            id: "b1".into(),
            server: s.into(),
            held_us: 3_000,
            released_at_unix_us: at,
        })
        .expect("released");
    }
    assert_eq!(c.backups["b1"].freeze_us(), Some(5_000));
    c.apply(Command::ArtifactStored {
        id: "b1".into(),
        server: "a".into(),
        artifact: artifact(),
    })
    .expect("artifact a");
    let incomplete = c.apply(Command::Complete {
        id: "b1".into(),
        at_unix_ms: 13,
    });
    assert!(
        matches!(incomplete, Err(Rejected::BadTransition { ref reason, .. }) if reason.contains("server b has no durable artifact"))
    );
    c.apply(Command::ArtifactStored {
        id: "b1".into(),
        server: "b".into(),
        artifact: artifact(),
    })
    .expect("artifact b");
    c.apply(Command::Complete {
        id: "b1".into(),
        at_unix_ms: 14,
    })
    .expect("complete");
    assert_eq!(c.backups["b1"].status, Status::Complete);
}

#[test]
fn rejections_change_nothing() {
    let mut c = catalog();
    c.apply(start("b1")).expect("start");
    let before = c.clone();
    assert_eq!(
        c.apply(start("b2")),
        Err(Rejected::BackupRunning {
            cluster: "c".into(),
            running: "b1".into()
        })
    );
    assert!(matches!(
        c.apply(commit_cut("b1", &[("a", 1), ("b", 1), ("zzz", 1)])),
        Err(Rejected::BadTransition { .. })
    ));
    assert!(matches!(
        c.apply(commit_cut("nope", &[("a", 1), ("b", 1)])),
        Err(Rejected::UnknownBackup(_))
    ));
    let unknown = c.apply(Command::StartBackup {
        sink: String::new(),
        id: "x".into(),
        cluster: "other".into(),
        servers: vec![],
        at_unix_ms: 0,
    });
    assert_eq!(unknown, Err(Rejected::UnknownCluster("other".into())));
    assert_eq!(c, before);
    c.apply(Command::Fail {
        id: "b1".into(),
        reason: "server b: lock timeout".into(),
        at_unix_ms: 5,
    })
    .expect("fail");
    assert!(
        c.apply(Command::Fail {
            id: "b1".into(),
            reason: "again".into(),
            at_unix_ms: 6
        })
        .is_err()
    );
    assert_eq!(
        c.backups["b1"].reason.as_deref(),
        Some("server b: lock timeout")
    );
    c.apply(start("b2"))
        .expect("a failed backup does not block the next");
}

#[test]
fn a_restore_is_recorded_server_by_server() {
    let mut c = catalog();
    c.apply(start("b1")).expect("start");
    c.apply(commit_cut("b1", &[("a", 1), ("b", 2)]))
        .expect("commit");
    for s in ["a", "b"] {
        c.apply(Command::ArtifactStored {
            id: "b1".into(),
            server: s.into(),
            artifact: artifact(),
        })
        .expect("artifact");
    }
    c.apply(Command::Complete {
        id: "b1".into(),
        at_unix_ms: 3,
    })
    .expect("complete");
    let restore = |id: &str, servers: &[&str]| Command::StartRestore {
        id: id.into(),
        backup_id: "b1".into(),
        targets: servers
            .iter()
            .map(|s| (s.to_string(), format!("h:{s}")))
            .collect(),
        force: false,
        at_unix_ms: 4,
    };
    let done = |id: &str, server: &str, error: Option<&str>| Command::RestoreServerDone {
        id: id.into(),
        server: server.into(),
        result: RestoredServer {
            error: error.map(String::from),
            rows: 5,
            ..RestoredServer::default()
        },
    };
    let finish = |id: &str| Command::FinishRestore {
        id: id.into(),
        reason: None,
        at_unix_ms: 5,
    };
    assert!(matches!(
        c.apply(restore("r1", &["a"])),
        Err(Rejected::BadTransition { .. })
    ));
    c.apply(restore("r1", &["a", "b"])).expect("start r1");
    assert!(matches!(
        c.apply(restore("r2", &["a", "b"])),
        Err(Rejected::RestoreRunning { .. })
    ));
    c.apply(done("r1", "a", None)).expect("a done");
    c.apply(done("r1", "b", Some("server b: not empty")))
        .expect("b failed");
    c.apply(finish("r1")).expect("finish r1");
    let r1 = &c.restores["r1"];
    assert_eq!(r1.status, RestoreStatus::Failed);
    assert_eq!(r1.reason.as_deref(), Some("server(s) b not restored"));
    assert!(c.apply(done("r1", "a", None)).is_err(), "r1 is finished");

    c.apply(restore("r2", &["a", "b"])).expect("start r2");
    c.apply(done("r2", "a", None)).expect("a");
    c.apply(done("r2", "b", None)).expect("b");
    c.apply(finish("r2")).expect("finish r2");
    assert_eq!(c.restores["r2"].status, RestoreStatus::Complete);
    assert_eq!(
        c.apply(Command::StartRestore {
            id: "r3".into(),
            backup_id: "nope".into(),
            targets: BTreeMap::new(),
            force: false,
            at_unix_ms: 6,
        }),
        Err(Rejected::UnknownBackup("nope".into()))
    );
}

#[test]
fn a_removed_server_is_left_out_of_later_backups() {
    let mut c = catalog();
    let remove = |name: &str| Command::RemoveServer {
        cluster: "c".into(),
        name: name.into(),
    };
    c.apply(start("b1")).expect("start");
    assert!(matches!(
        c.apply(remove("b")),
        Err(Rejected::BackupRunning { .. })
    ));
    c.apply(Command::Fail {
        id: "b1".into(),
        reason: "test".into(),
        at_unix_ms: 1,
    })
    .expect("fail");
    c.apply(remove("b")).expect("remove b");
    assert_eq!(
        c.apply(remove("b")),
        Err(Rejected::UnknownServer {
            cluster: "c".into(),
            name: "b".into()
        })
    );
    assert!(c.backups["b1"].servers.contains(&"b".to_string()));
    let with_b = c.apply(Command::StartBackup {
        sink: String::new(),
        id: "b2".into(),
        cluster: "c".into(),
        servers: vec!["a".into(), "b".into()],
        at_unix_ms: 2,
    });
    assert!(matches!(with_b, Err(Rejected::BadTransition { .. })));
    c.apply(remove("a")).expect("remove a");
    assert!(!c.clusters.contains_key("c"), "an empty cluster is dropped");
}

#[test]
fn raft_applies_json_commands() {
    use crate::raft::StateMachine;
    let mut c = Catalog::default();
    for s in ["a", "b"] {
        let cmd = serde_json::to_vec(&server("c", s)).expect("encode");
        StateMachine::apply(&mut c, 1, &cmd).expect("applies");
    }
    let ok = serde_json::to_vec(&start("b1")).expect("encode");
    let reply: Result<(), Rejected> =
        serde_json::from_slice(&StateMachine::apply(&mut c, 3, &ok).expect("applies"))
            .expect("reply");
    assert_eq!(reply, Ok(()));
    let again: Result<(), Rejected> =
        serde_json::from_slice(&StateMachine::apply(&mut c, 4, &ok).expect("applies"))
            .expect("reply");
    assert!(matches!(again, Err(Rejected::BackupRunning { .. })));
    assert!(
        StateMachine::apply(&mut c, 5, b"{").is_err(),
        "garbage stops the node"
    );
    let retired = br#"{"op":"prepared","id":"b1","server":"a","entry":{}}"#;
    let retired: Result<(), Rejected> =
        serde_json::from_slice(&StateMachine::apply(&mut c, 5, retired).expect("refused"))
            .expect("reply");
    assert!(retired.is_err(), "a retired command is refused");
    let changes = c.take_changes();
    assert_eq!(changes.len(), 3, "servers a and b, backup b1: {changes:?}");
    let mut restored = Catalog::default();
    let stored = changes
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    restored.load(stored).expect("load");
    assert_eq!(restored, c);
    assert!(c.take_changes().is_empty(), "taken");

    let remove = Command::RemoveServer {
        cluster: "c".into(),
        name: "b".into(),
    };
    let fail = Command::Fail {
        id: "b1".into(),
        reason: "test".into(),
        at_unix_ms: 6,
    };
    for cmd in [fail, remove] {
        StateMachine::apply(&mut c, 6, &serde_json::to_vec(&cmd).expect("encode"))
            .expect("applies");
    }
    let changes = c.take_changes();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let (key, value) = changes
        .iter()
        .find(|(k, _)| k.contains("\"name\":\"b\""))
        .expect("server b changed");
    assert!(value.is_none(), "server b removed: {key}");
}

#[test]
fn commands_and_catalog_round_trip_through_json() {
    let mut c = catalog();
    c.apply(start("b1")).expect("start");
    let json = serde_json::to_string(&c).expect("serialise");
    assert_eq!(serde_json::from_str::<Catalog>(&json).expect("parse"), c);
    let cmd = commit_cut("b1", &[("a", 7)]);
    let text = serde_json::to_string(&cmd).expect("serialise");
    assert!(text.contains("\"op\":\"commit_cut\""), "{text}");
    assert_eq!(serde_json::from_str::<Command>(&text).expect("parse"), cmd);
}

/// Every command this build writes is decodable by every build of its
/// catalog version: none needs more than `CATALOG_VERSION`, and today's
/// commands need no more than version 1 (what a build without versions is).
#[test]
fn every_command_fits_this_builds_version() {
    let cmds = [
        server("c", "a"),
        start("b1"),
        commit_cut("b1", &[("a", 1)]),
        Command::Complete {
            id: "b1".into(),
            at_unix_ms: 1,
        },
        Command::SetClusterVersion { version: 2 },
    ];
    for cmd in &cmds {
        assert_eq!(cmd.min_version(), 1, "{cmd:?}");
        assert!(cmd.min_version() <= CATALOG_VERSION, "{cmd:?}");
    }
}

/// A physical backup's records need catalog version 5; a logical one's
/// stay at version 1 (the agent's "logical" is stored as empty).
#[test]
fn physical_fields_need_version_5_and_logical_ones_do_not() {
    let mut cmd = commit_cut("b1", &[("a", 1)]);
    assert_eq!(cmd.min_version(), 1);
    if let Command::CommitCut { cut, .. } = &mut cmd {
        let e = cut.get_mut("a").expect("entry");
        e.kind = super::stored_kind("logical");
        assert_eq!(e.kind, "");
        e.kind = super::stored_kind("physical");
        e.provider = "btrfs".into();
    }
    assert_eq!(cmd.min_version(), super::version::PHYSICAL_VERSION);
    assert!(cmd.min_version() <= CATALOG_VERSION);
    let stored = |artifact: Artifact| Command::ArtifactStored {
        id: "b1".into(),
        server: "a".into(),
        artifact,
    };
    assert_eq!(stored(artifact()).min_version(), 1);
    let with_sets = Artifact {
        file_sets: vec!["etc".into()],
        ..artifact()
    };
    assert_eq!(
        stored(with_sets).min_version(),
        super::version::PHYSICAL_VERSION
    );
    // A physical backup's record round-trips.
    let text = serde_json::to_string(&cmd).expect("serialise");
    assert_eq!(serde_json::from_str::<Command>(&text).expect("parse"), cmd);
}

/// A command needing a higher catalog version than the cluster's is not
/// admitted; once the cluster version is raised it is; it is never lowered.
#[test]
fn the_cluster_version_gates_commands_and_only_rises() {
    let mut c = catalog();
    assert_eq!(c.cluster_version(), 1, "a new catalog is at version 1");
    assert_eq!(c.admits(1), Ok(()));
    assert_eq!(
        c.admits(2),
        Err(1),
        "version 2 commands wait for the cluster"
    );
    let before = c.clone();
    assert_eq!(
        c.apply(Command::SetClusterVersion { version: 1 }),
        Err(Rejected::VersionNotRaised {
            current: 1,
            proposed: 1
        })
    );
    assert_eq!(c, before, "a refused version change changes nothing");
    c.apply(Command::SetClusterVersion { version: 3 })
        .expect("raise to 3");
    assert_eq!(c.cluster_version(), 3);
    assert_eq!(c.admits(2), Ok(()));
    assert_eq!(c.admits(3), Ok(()));
    assert_eq!(c.admits(4), Err(3));
    assert_eq!(
        c.apply(Command::SetClusterVersion { version: 2 }),
        Err(Rejected::VersionNotRaised {
            current: 3,
            proposed: 2
        })
    );
    assert_eq!(c.cluster_version(), 3, "never lowered");
}

/// The cluster version is a stored record: a raft snapshot (every stored
/// key) carries it and loading restores it; a catalog that never raised it
/// stores no such record (so a build without versions can still load it).
#[test]
fn the_cluster_version_is_stored_and_restored() {
    use crate::raft::StateMachine;
    let mut c = Catalog::default();
    let apply = |c: &mut Catalog, index, cmd: &Command| {
        StateMachine::apply(c, index, &serde_json::to_vec(cmd).expect("encode"))
            .expect("this build applies its own commands")
    };
    apply(&mut c, 1, &server("c", "a"));
    let v1 = c.take_changes();
    assert!(
        v1.iter().all(|(k, _)| !k.contains("cluster_version")),
        "version 1 is not stored: {v1:?}"
    );
    let mut image: BTreeMap<String, Vec<u8>> =
        v1.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();

    // This build supports only version 1; raising further is what a newer
    // build does, so the record is exercised at the catalog level.
    c.apply(Command::SetClusterVersion {
        version: CATALOG_VERSION + 1,
    })
    .expect("raise");
    c.dirty
        .0
        .insert(Command::SetClusterVersion { version: 0 }.key(&Catalog::default()));
    for (k, v) in c.take_changes() {
        image.insert(k, v.expect("the version record has a value"));
    }
    assert!(
        image.keys().any(|k| k.contains("cluster_version")),
        "{image:?}"
    );

    let mut restored = Catalog::default();
    let err = restored
        .load(image.clone().into_iter().collect())
        .expect_err("a build cannot load a catalog above its own version");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cluster version is {}", CATALOG_VERSION + 1))
            && msg.contains(&format!("supports only catalog version {CATALOG_VERSION}")),
        "{msg}"
    );

    // At this build's own version the record loads.
    let key = image
        .keys()
        .find(|k| k.contains("cluster_version"))
        .expect("version key")
        .clone();
    image.insert(key, serde_json::to_vec(&CATALOG_VERSION).expect("encode"));
    restored.load(image.into_iter().collect()).expect("load");
    assert_eq!(restored.cluster_version(), CATALOG_VERSION);
    assert_eq!(restored.clusters, c.clusters);
}

/// An entry this build cannot decode, or a cluster version it does not
/// support, is an error that stops the raft node (naming the index and
/// saying to upgrade), never a silently skipped entry; a command that does
/// not fit the state is still an ordinary rejection.
#[test]
fn an_entry_this_build_cannot_follow_stops_the_node() {
    use crate::raft::StateMachine;
    let mut c = catalog();
    let before = c.clone();
    let newer = br#"{"op":"rotate_keys","id":"k1"}"#;
    let err = StateMachine::apply(&mut c, 42, newer).expect_err("undecodable");
    let msg = err.to_string();
    assert!(
        msg.contains("raft index 42") && msg.contains("rotate_keys") && msg.contains("upgrade"),
        "{msg}"
    );
    let newer_field = br#"{"op":"complete","id":"b1","at_unix_ms":1,"checksum":"x"}"#;
    assert!(
        StateMachine::apply(&mut c, 43, newer_field).is_err(),
        "an unknown field is refused, not ignored"
    );
    let raise = serde_json::to_vec(&Command::SetClusterVersion {
        version: CATALOG_VERSION + 1,
    })
    .expect("encode");
    let msg = StateMachine::apply(&mut c, 44, &raise)
        .expect_err("a version above this build")
        .to_string();
    assert!(
        msg.contains("raft index 44") && msg.contains("upgrade"),
        "{msg}"
    );
    assert_eq!(c, before, "nothing applied");
    assert!(c.take_changes().is_empty());
}
