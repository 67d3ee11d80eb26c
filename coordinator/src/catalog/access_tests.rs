//! Roles, the audit trail and identity bindings in the catalog.

use super::*;
use crate::raft::StateMachine;

fn server(name: &str, addr: &str, by: Option<&str>) -> Command {
    Command::RegisterServer(Server {
        cluster: "c".into(),
        name: name.into(),
        agent_addr: addr.into(),
        flavour: "mariadb".into(),
        version: "10.11.6".into(),
        server_id: 1,
        server_uuid: String::new(),
        registered_at_unix_ms: 1,
        registered_by: by.map(String::from),
    })
}

fn record(call: &str, at: i64) -> AuditRecord {
    AuditRecord {
        at_unix_ms: at,
        identity: Some("operator".into()),
        address: "127.0.0.1:5000".into(),
        call: call.into(),
        args: [("cluster".to_string(), "c".to_string())].into(),
        outcome: AuditOutcome::Ok,
        detail: "started backup b1".into(),
        recorded_by: "coordinator 1".into(),
    }
}

/// Applies `cmd` as raft does and returns the stored keys it changed.
fn apply(c: &mut Catalog, cmd: &Command) -> Vec<(String, Option<Vec<u8>>)> {
    let reply =
        StateMachine::apply(c, 1, &serde_json::to_vec(cmd).expect("encode")).expect("apply");
    let r: Result<(), Rejected> = serde_json::from_slice(&reply).expect("reply");
    r.expect("accepted");
    c.take_changes()
}

/// The first identity to register a server stays bound to it: another
/// identity is refused and the address is kept; the same identity and
/// plaintext registrations may change it; removing the server unbinds it.
#[test]
fn a_server_is_bound_to_the_identity_that_registered_it() {
    let mut c = Catalog::default();
    c.apply(server("a", "http://a:1", Some("agent-a")))
        .expect("first registration binds");
    let before = c.clone();
    let forged = c.apply(server("a", "http://evil:1", Some("agent-b")));
    assert_eq!(
        forged,
        Err(Rejected::RegisteredByOther {
            what: "server".into(),
            cluster: "c".into(),
            name: "a".into(),
            bound: "agent-a".into(),
            caller: "agent-b".into(),
        })
    );
    let msg = forged.expect_err("refused").to_string();
    assert!(
        msg.contains("identity 'agent-a'") && msg.contains("identity 'agent-b'"),
        "{msg}"
    );
    assert_eq!(c, before, "the catalog keeps the old address");
    c.apply(server("a", "http://a:2", Some("agent-a")))
        .expect("its own identity moves it");
    assert_eq!(c.clusters["c"]["a"].agent_addr, "http://a:2");
    c.apply(server("a", "http://a:3", None))
        .expect("plaintext as before");
    assert_eq!(
        c.clusters["c"]["a"].registered_by.as_deref(),
        Some("agent-a"),
        "a plaintext registration keeps the binding"
    );
    c.apply(Command::RemoveServer {
        cluster: "c".into(),
        name: "a".into(),
    })
    .expect("remove");
    c.apply(server("a", "http://new:1", Some("agent-b")))
        .expect("removed: a new identity may register it");
    assert_eq!(
        c.clusters["c"]["a"].registered_by.as_deref(),
        Some("agent-b")
    );
}

/// Media agents are bound the same way, and RemoveMedia unbinds them.
#[test]
fn a_media_agent_is_bound_and_removable() {
    let media = |addr: &str, by: &str| {
        Command::RegisterMedia(MediaAgent {
            cluster: "c".into(),
            name: "m".into(),
            agent_addr: addr.into(),
            registered_at_unix_ms: 1,
            registered_by: Some(by.into()),
        })
    };
    let mut c = Catalog::default();
    c.apply(media("http://m:1", "agent-m")).expect("bind");
    assert!(matches!(
        c.apply(media("http://evil:1", "agent-x")),
        Err(Rejected::RegisteredByOther { .. })
    ));
    assert_eq!(c.media["c"]["m"].agent_addr, "http://m:1");
    let remove = Command::RemoveMedia {
        cluster: "c".into(),
        name: "m".into(),
    };
    c.apply(remove.clone()).expect("remove");
    assert!(c.media.is_empty());
    assert!(matches!(c.apply(remove), Err(Rejected::UnknownCluster(_))));
    c.apply(media("http://m:2", "agent-x"))
        .expect("unbound: another identity registers it");
}

/// Roles are set per pattern (replacing), refused for bad patterns, and
/// removing an unknown pattern is an error; all of it survives the stored
/// form.
#[test]
fn roles_are_set_replaced_removed_and_stored() {
    let mut c = Catalog::default();
    let set = |pattern: &str, role| Command::SetRole {
        pattern: pattern.into(),
        role,
        at_unix_ms: 5,
    };
    let changed = apply(&mut c, &set("agent-*", Role::Viewer));
    assert_eq!(changed.len(), 1);
    apply(&mut c, &set("agent-*", Role::Agent));
    apply(&mut c, &set("alice", Role::Operator));
    assert_eq!(c.roles["agent-*"].role, Role::Agent);
    assert!(matches!(
        c.apply(set("a*b", Role::Viewer)),
        Err(Rejected::BadRole { .. })
    ));
    assert!(matches!(
        c.apply(set("", Role::Viewer)),
        Err(Rejected::BadRole { .. })
    ));
    let removed = apply(
        &mut c,
        &Command::RemoveRole {
            pattern: "alice".into(),
        },
    );
    assert_eq!(removed[0].1, None, "the stored record is deleted");
    assert_eq!(
        c.apply(Command::RemoveRole {
            pattern: "alice".into()
        }),
        Err(Rejected::UnknownRole("alice".into()))
    );
    // The stored form: what a raft snapshot carries, loaded back.
    let mut c2 = Catalog::default();
    let mut entries = Vec::new();
    for cmd in [
        set("agent-*", Role::Agent),
        Command::Audit {
            record: record("StartBackup", 9),
        },
    ] {
        entries.extend(
            apply(&mut c2, &cmd)
                .into_iter()
                .map(|(k, v)| (k, v.expect("present"))),
        );
    }
    let mut loaded = Catalog::default();
    StateMachine::load(&mut loaded, entries).expect("load");
    assert_eq!(loaded.roles, c2.roles);
    assert_eq!(loaded.audit, c2.audit);
}

/// Audit records get increasing sequence numbers; beyond AUDIT_LIMIT the
/// oldest are dropped, and their stored keys deleted with the apply.
#[test]
fn the_audit_trail_is_bounded() {
    let mut c = Catalog::default();
    for i in 0..AUDIT_LIMIT as i64 {
        c.append_audit(record("StartBackup", i));
    }
    c.take_changes();
    assert_eq!(c.audit.len(), AUDIT_LIMIT);
    assert_eq!(c.audit.first_key_value().map(|(s, _)| *s), Some(1));
    let changed = apply(
        &mut c,
        &Command::Audit {
            record: record("RemoveSink", 99_999),
        },
    );
    assert_eq!(c.audit.len(), AUDIT_LIMIT, "bounded");
    assert_eq!(c.audit.first_key_value().map(|(s, _)| *s), Some(2));
    let last = c.audit.last_key_value().expect("records");
    assert_eq!(*last.0, AUDIT_LIMIT as u64 + 1);
    assert_eq!(last.1.call, "RemoveSink");
    let deleted: Vec<&String> = changed
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(deleted.len(), 1, "{changed:?}");
    assert!(deleted[0].contains("\"seq\":1"), "{deleted:?}");
}

/// The new commands need catalog version 3; a registration binds only
/// then; without an identity it is a version 1 command as before.
#[test]
fn access_commands_need_version_3() {
    assert_eq!(ACCESS_VERSION, 3);
    assert_eq!(server("a", "x", None).min_version(), FIRST_VERSION);
    assert_eq!(
        server("a", "x", Some("agent-a")).min_version(),
        ACCESS_VERSION
    );
    for cmd in [
        Command::SetRole {
            pattern: "p".into(),
            role: Role::Viewer,
            at_unix_ms: 1,
        },
        Command::RemoveRole {
            pattern: "p".into(),
        },
        Command::RemoveMedia {
            cluster: "c".into(),
            name: "m".into(),
        },
        Command::Audit {
            record: record("X", 1),
        },
    ] {
        assert_eq!(cmd.min_version(), ACCESS_VERSION, "{cmd:?}");
        let text = serde_json::to_string(&cmd).expect("encode");
        assert_eq!(serde_json::from_str::<Command>(&text).expect("decode"), cmd);
    }
    let plain = serde_json::to_string(&server("a", "x", None)).expect("encode");
    assert!(
        !plain.contains("registered_by"),
        "older builds read it: {plain}"
    );
}
