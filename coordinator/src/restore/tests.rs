//! Restore planning: source ranking and request checks.

use super::plan::redact;
use super::*;
use crate::catalog::{Artifact, Backup, Catalog, MediaAgent, Server, Sink, SinkKind, Status};

fn artifact(location: &str) -> Artifact {
    Artifact {
        location: location.into(),
        manifest_sha256: "sha".into(),
        bytes: 10,
        files: 1,
        rows: 5,
        verified_at_unix_ms: None,
        verify_error: None,
        ..Artifact::default()
    }
}

/// Cluster c1: servers s1, s2, media agent m1 with sink `pool`, and
/// sink `bucket` (s3). Backup b1: host-local copies, plus copies in
/// both sinks.
fn catalog() -> Catalog {
    let mut cat = Catalog::default();
    for n in ["s1", "s2"] {
        cat.apply(Command::RegisterServer(Server {
            cluster: "c1".into(),
            name: n.into(),
            agent_addr: format!("http://{n}"),
            flavour: "mariadb".into(),
            version: "10.11".into(),
            server_id: 1,
            server_uuid: String::new(),
            registered_at_unix_ms: 0,
            registered_by: None,
        }))
        .expect("register");
    }
    cat.apply(Command::RegisterMedia(MediaAgent {
        cluster: "c1".into(),
        name: "m1".into(),
        agent_addr: "http://m1".into(),
        registered_at_unix_ms: 0,
        registered_by: None,
    }))
    .expect("media");
    for (name, kind) in [
        (
            "pool",
            SinkKind::Disk {
                agent: "m1".into(),
                path: "/pool".into(),
            },
        ),
        (
            "bucket",
            SinkKind::S3 {
                bucket: "b".into(),
                prefix: String::new(),
                endpoint: String::new(),
                region: String::new(),
            },
        ),
    ] {
        cat.apply(Command::AddSink {
            cluster: "c1".into(),
            sink: Sink {
                name: name.into(),
                kind,
                encrypt: false,
                added_at_unix_ms: 0,
            },
        })
        .expect("sink");
    }
    let servers = vec!["s1".to_string(), "s2".to_string()];
    let mut b = Backup {
        id: "b1".into(),
        cluster: "c1".into(),
        status: Status::Complete,
        servers: servers.clone(),
        started_at_unix_ms: 0,
        finished_at_unix_ms: Some(1),
        cut: BTreeMap::new(),
        cut_committed_at_unix_ms: Some(0),
        artifacts: BTreeMap::new(),
        reason: None,
        sink: String::new(),
        copies: BTreeMap::new(),
    };
    for s in &servers {
        b.artifacts.insert(s.clone(), artifact(&format!("b1/{s}")));
        for sink in ["pool", "bucket"] {
            b.copies
                .entry(sink.to_string())
                .or_default()
                .insert(s.clone(), artifact(&format!("b1/{s}")));
        }
    }
    cat.backups.insert("b1".into(), b);
    cat
}

fn req(targets: &[(&str, &str)], in_place: bool) -> RestoreRequest {
    RestoreRequest {
        backup_id: "b1".into(),
        targets: targets
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect(),
        in_place,
        ..RestoreRequest::default()
    }
}

fn order(p: &Plan) -> Vec<String> {
    p.sources
        .iter()
        .map(|s| format!("{}@{}", shown(&s.sink), s.agent.name))
        .collect()
}

const BOTH: &[(&str, &str)] = &[("s1", "mysql://root@h:1"), ("s2", "mysql://root@h:2")];

#[test]
fn sources_rank_own_agent_then_media_pool_then_object_storage() {
    let cat = catalog();
    let b = &cat.backups["b1"];
    let plans = plan(&cat, b, &req(BOTH, false)).expect("plan");
    assert_eq!(
        order(&plans[0]),
        [
            "host-local@s1",
            // Other agents read the pool through its holder.
            "pool@m1",
            "pool@s1",
            "pool@s2",
            "bucket@s1",
            "bucket@m1",
            "bucket@s2"
        ]
    );
    let mut r = req(BOTH, false);
    r.from = Some("bucket".into());
    let plans = plan(&cat, b, &r).expect("plan");
    assert_eq!(order(&plans[1]), ["bucket@s2", "bucket@m1", "bucket@s1"]);
    let mut r = req(BOTH, false);
    r.agents = BTreeMap::from([("s1".to_string(), "m1".to_string())]);
    let plans = plan(&cat, b, &r).expect("plan");
    assert_eq!(order(&plans[0]), ["pool@m1", "bucket@m1"]);
    assert!(
        plans[0].skipped[0].contains("host-local") && plans[0].skipped[0].contains("m1"),
        "{:?}",
        plans[0].skipped
    );
    // In place: only the server's own agent loads its own server.
    let plans = plan(&cat, b, &req(&[], true)).expect("plan");
    assert_eq!(order(&plans[0]), ["host-local@s1", "pool@s1", "bucket@s1"]);
    // A copy known bad goes last.
    let mut cat = catalog();
    cat.backups
        .get_mut("b1")
        .expect("b1")
        .artifacts
        .get_mut("s1")
        .expect("s1")
        .verify_error = Some("checksum mismatch".into());
    let b = &cat.backups["b1"];
    let plans = plan(&cat, b, &req(BOTH, false)).expect("plan");
    assert_eq!(
        order(&plans[0]).last().map(String::as_str),
        Some("host-local@s1")
    );
}

#[test]
fn plan_maps_targets_and_refuses_bad_requests() {
    let mut cat = catalog();
    let b = cat.backups["b1"].clone();
    let plans = plan(&cat, &b, &req(&[("s2", "mysql://root@h:1")], true)).expect("plan");
    assert_eq!(plans[0].target_mysql, "");
    assert_eq!(plans[1].target_mysql, "mysql://root@h:1");

    let missing = plan(&cat, &b, &req(&[("s2", "mysql://root@h:1")], false))
        .expect_err("a server without a target is refused without in-place");
    let text = missing.to_string();
    assert!(
        text.contains("s1") && !text.contains("s2") && text.contains("--in-place"),
        "{text}"
    );

    let unknown = plan(&cat, &b, &req(&[("s9", "mysql://root@h:1")], true))
        .expect_err("an unknown target is refused");
    let text = unknown.to_string();
    assert!(text.contains("s9") && text.contains("s1, s2"), "{text}");

    let mut r = req(BOTH, false);
    r.from = Some("tape".into());
    let e = plan(&cat, &b, &r).expect_err("unknown sink").to_string();
    assert!(e.contains("tape"), "{e}");
    let mut r = req(BOTH, false);
    r.agents = BTreeMap::from([("s1".to_string(), "ghost".to_string())]);
    let e = plan(&cat, &b, &r).expect_err("unknown agent").to_string();
    assert!(e.contains("ghost") && e.contains("server s1"), "{e}");

    cat.backups.get_mut("b1").expect("b1").status = Status::Failed;
    let b = cat.backups["b1"].clone();
    let failed = plan(&cat, &b, &req(BOTH, true)).expect_err("a FAILED backup is refused");
    assert!(failed.to_string().contains("FAILED"), "{failed}");
}

#[test]
fn plan_refuses_bad_and_shared_targets_before_anything_runs() {
    let cat = catalog();
    let b = &cat.backups["b1"];
    let bad = |url: &str| {
        plan(
            &cat,
            b,
            &req(&[("s1", url), ("s2", "mysql://root@h:2")], false),
        )
        .expect_err("refused")
        .to_string()
    };
    for url in [
        "root@h:1",
        "mysql://h:1",
        "mysql://root@h",
        "mysql://root@h:x",
        "mysql://:pw@h:1",
    ] {
        let e = bad(url);
        assert!(
            e.contains("server s1") && e.contains("mysql://USER"),
            "{url}: {e}"
        );
    }
    let secret = bad("mysql://root:secret@h");
    assert!(!secret.contains("secret"), "{secret}");
    for reference in ["cred:", "cred:a b", "cred:x/y"] {
        let e = bad(reference);
        assert!(e.contains("server s1") && e.contains("cred:NAME"), "{e}");
    }
    let plans = plan(
        &cat,
        b,
        &req(
            &[("s1", "cred:db1-restore"), ("s2", "mysql://u:pw@h:2")],
            false,
        ),
    )
    .expect("a reference passes through");
    assert_eq!(plans[0].target_mysql, "cred:db1-restore");
    assert_eq!(plans[0].shown_target(), "cred:db1-restore");
    assert_eq!(plans[1].shown_target(), "h:2");
    assert!(!format!("{plans:?}").contains("pw"), "{plans:?}");
    let r = req(&[("s1", "mysql://u:Sekrit@h:1")], false);
    assert!(!format!("{r:?}").contains("Sekrit"), "{r:?}");

    let shared = bad("mysql://admin@h:2");
    assert!(
        shared.contains("h:2") && shared.contains("server s1") && shared.contains("s2"),
        "{shared}"
    );
}

#[test]
fn redact_drops_credentials() {
    assert_eq!(
        redact("mysql://root:secret@127.0.0.1:3306/db"),
        "127.0.0.1:3306"
    );
    assert_eq!(redact("mysql://127.0.0.1:3306"), "127.0.0.1:3306");
    assert_eq!(redact(""), "(target)");
    assert_eq!(redact("cred:db1"), "cred:db1");
    assert_eq!(
        redact("mysql://u:pw@h:1?ssl-mode=verify-ca&ssl-ca=/etc/ca.pem"),
        "h:1"
    );
}

#[test]
fn a_non_empty_target_says_how_to_override() {
    let s = tonic::Status::already_exists("target is not empty");
    let e = restore_error("s1", &s);
    assert!(e.contains("server s1") && e.contains("--force"), "{e}");
}
