//! The handshake end to end on loopback: who gets in, who does not, and
//! what the server learns about the caller.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use super::certs::{self, paths};
use super::*;

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn hosts() -> Vec<String> {
    ids(&["127.0.0.1", "localhost"])
}

fn files(dir: &Path, id: &str) -> TlsFiles {
    let p = paths(dir, id);
    TlsFiles {
        cert: p.cert,
        key: p.key,
        ca: dir.join(certs::CA_CERT),
    }
}

/// A server on loopback; returns its address, its accepted connections
/// and the refused ones.
async fn serve(
    transport: &Transport,
) -> (
    std::net::SocketAddr,
    tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>,
    tokio::sync::mpsc::Receiver<Refused>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, refused) = tokio::sync::mpsc::channel(8);
    (addr, transport.incoming(listener, Some(tx)), refused)
}

async fn next_conn(
    incoming: &mut tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>,
) -> Option<Conn> {
    tokio::time::timeout(Duration::from_millis(500), incoming.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_of_our_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    certs::issue(
        &ours,
        &ids(&["coordinator-1", "agent-db1"]),
        &hosts(),
        false,
    )
    .expect("issue");
    certs::issue(&theirs, &ids(&["agent-db1"]), &hosts(), false).expect("issue");

    let server = Transport::from_files(Some(files(&ours, "coordinator-1"))).expect("server tls");
    assert_eq!(server.identity().as_deref(), Some("coordinator-1"));
    let (addr, mut incoming, mut refused) = serve(&server).await;
    let uri: tonic::transport::Uri = format!("http://{addr}").parse().expect("uri");

    // Our agent: admitted, and the server knows who it is.
    let client = Transport::from_files(Some(files(&ours, "agent-db1"))).expect("client tls");
    let Transport::Tls(tls) = &client else {
        panic!("not TLS")
    };
    let mut io = transport::dial(uri.clone(), Some(tls.clone()))
        .await
        .expect("our agent connects");
    let mut conn = next_conn(&mut incoming).await.expect("accepted");
    use tonic::transport::server::Connected;
    assert_eq!(conn.connect_info().identity.as_deref(), Some("agent-db1"));
    io.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");

    // Same name, another CA: refused.
    let stranger = Transport::from_files(Some(files(&theirs, "agent-db1"))).expect("stranger");
    let Transport::Tls(stls) = &stranger else {
        panic!("not TLS")
    };
    if let Ok(mut io) = transport::dial(uri.clone(), Some(stls.clone())).await {
        // TLS 1.3: the client may finish first; the server's refusal shows
        // on the first read.
        let _ = io.write_all(b"x").await;
        let mut b = [0u8; 1];
        assert!(
            !matches!(io.read(&mut b).await, Ok(1)),
            "a certificate of another CA must not be served"
        );
    }
    assert!(
        next_conn(&mut incoming).await.is_none(),
        "stranger admitted"
    );
    let r = tokio::time::timeout(Duration::from_secs(2), refused.recv())
        .await
        .expect("refusal reported")
        .expect("refusal");
    assert!(r.reason.contains("TLS handshake failed"), "{}", r.reason);

    // Plaintext: refused.
    let mut plain = transport::dial(uri.clone(), None).await.expect("tcp");
    let _ = plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(
        next_conn(&mut incoming).await.is_none(),
        "plaintext admitted"
    );
    // From the same address within a minute: logged, not reported again.
    assert!(refused.try_recv().is_err(), "reports are rate-limited");

    // A client that trusts another CA refuses our server.
    let wrong_ca = TlsFiles {
        ca: theirs.join(certs::CA_CERT),
        ..files(&ours, "agent-db1")
    };
    let Transport::Tls(wtls) = Transport::from_files(Some(wrong_ca)).expect("wrong ca") else {
        panic!("not TLS")
    };
    let err = transport::dial(uri, Some(wtls))
        .await
        .expect_err("server of another CA accepted");
    assert!(
        err.to_string().contains("TLS handshake with 127.0.0.1"),
        "{err}"
    );
}

#[test]
fn keys_others_can_read_are_refused_and_reload_keeps_the_old_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::issue(dir.path(), &ids(&["agent-a", "agent-b"]), &hosts(), false).expect("issue");
    let a = files(dir.path(), "agent-a");
    // Issuing again is refused, --replace is not.
    assert!(certs::issue(dir.path(), &ids(&["agent-a"]), &hosts(), false).is_err());

    std::fs::set_permissions(&a.key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = Tls::load(a.clone()).expect_err("group-readable key accepted");
    assert!(
        matches!(err, Error::KeyPermissions { mode: 0o640, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("agent-a.key"), "{err}");
    std::fs::set_permissions(&a.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let tls = Tls::load(a.clone()).expect("load");
    assert_eq!(tls.identity(), "agent-a");
    // Rotate the files to agent-b's: reload picks them up.
    let b = files(dir.path(), "agent-b");
    std::fs::copy(&b.cert, &a.cert).expect("copy");
    std::fs::copy(&b.key, &a.key).expect("copy");
    tls.reload().expect("reload");
    assert_eq!(tls.identity(), "agent-b");
    // A broken file: the reload fails and the previous setup stays.
    std::fs::write(&a.cert, "garbage").expect("write");
    assert!(tls.reload().is_err());
    assert_eq!(tls.identity(), "agent-b");

    assert!(TlsFiles::from_parts(Some(a.cert.clone()), None, None).is_err());
    assert_eq!(TlsFiles::from_parts(None, None, None).expect("none"), None);
}
