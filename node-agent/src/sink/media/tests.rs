//! The media client against the real service on an in-process tonic server
//! on 127.0.0.1 (an ephemeral port, a temp pool dir). "Killing" the server
//! shuts down its sockets and stops its accept loop; it then starts again on
//! the same port with the same pool.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lockstep_proto::media as pb;
use lockstep_proto::media::media_store_client::MediaStoreClient;
use lockstep_proto::media::media_store_server::MediaStoreServer;
use lockstep_proto::media::put_request::Msg;
use sha2::{Digest, Sha256};

use super::*;
use crate::grpc::media::MediaService;
use crate::sink::{Local, Store, get};

const AGENT: &str = "media1";

/// A media service served in-process; killable and restartable.
struct TestServer {
    service: MediaService,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

/// Logs to the test's output (`RUST_LOG` overrides `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl TestServer {
    async fn start(pool: &Path) -> TestServer {
        init_tracing();
        let local = Local {
            agent: AGENT.into(),
            host_local: pool.to_path_buf(),
            pools: Vec::new(),
            transport: Default::default(),
        };
        let mut s = TestServer {
            service: MediaService::new(local),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            task: None,
            conns: Arc::default(),
        };
        s.serve().await;
        s
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn serve(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(addr = %self.addr, error = %e, "port not free yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind {}: {e}", self.addr),
            }
        };
        self.addr = listener.local_addr().expect("local addr");
        let conns = self.conns.clone();
        let incoming = futures::stream::unfold(listener, move |l| {
            let conns = conns.clone();
            async move {
                let accepted = l.accept().await.and_then(|(s, _)| {
                    let s = s.into_std()?;
                    conns.lock().expect("conns").push(s.try_clone()?);
                    tokio::net::TcpStream::from_std(s)
                });
                Some((accepted, l))
            }
        });
        let server = tonic::transport::Server::builder()
            .add_service(
                MediaStoreServer::new(self.service.clone())
                    .max_decoding_message_size(crate::grpc::media::MAX_MESSAGE),
            )
            .serve_with_incoming(incoming);
        self.task = Some(tokio::spawn(async move {
            let _ = server.await;
        }));
    }

    /// Breaks every connection and stops accepting, like a crashed agent.
    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `len` pseudo-random bytes (an LCG: incompressible enough, reproducible).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn read_all(store: &MediaStore, key: &str) -> Vec<u8> {
    get(store, key, 1 << 30).await.expect("read back")
}

async fn connect(server: &TestServer, pool: &Path, opts: MediaOptions) -> MediaStore {
    MediaStore::connect_with(
        &server.url(),
        &pool.display().to_string(),
        "sink m (disk pool on media1)".into(),
        opts,
    )
    .await
    .expect("connect")
}

fn pool_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("pool")
}

/// A 50 MiB object written in odd-sized pieces comes back byte-identical;
/// list, usage and delete see it; a second object under the same key is
/// refused and the first is untouched; an aborted writer leaves nothing.
#[tokio::test]
async fn a_large_object_round_trips_and_is_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_of(&dir);
    let server = TestServer::start(&pool).await;
    let store = connect(&server, &pool, MediaOptions::default()).await;
    let body = data(50 << 20, 1);
    let key = "b1/s1/db/t.00000.tsv.zst";
    let started = std::time::Instant::now();
    let mut w = store.create(key).await.expect("create");
    for piece in body.chunks(300_007) {
        w.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    assert_eq!(
        store.size(key).await.expect("size"),
        None,
        "invisible until finished"
    );
    assert_eq!(w.finish().await.expect("finish"), body.len() as u64);
    let written = started.elapsed();
    let back = read_all(&store, key).await;
    tracing::info!(?written, read = ?(started.elapsed() - written), "--- step: 50 MiB written and read back");
    assert_eq!(sha(&back), sha(&body));
    assert_eq!(store.resent_bytes(), 0);

    let err = crate::sink::put(&store, key, Bytes::from_static(b"other"))
        .await
        .expect_err("replace refused")
        .to_string();
    assert!(err.contains(key) && err.contains("already exists"), "{err}");
    assert_eq!(sha(&read_all(&store, key).await), sha(&body));

    crate::sink::put(&store, "b1/s2/manifest.json", Bytes::from_static(b"{}"))
        .await
        .expect("put small");
    let listed = store.list("b1/").await.expect("list");
    assert_eq!(
        listed,
        [
            ObjectInfo {
                key: key.into(),
                size: body.len() as u64
            },
            ObjectInfo {
                key: "b1/s2/manifest.json".into(),
                size: 2
            },
        ]
    );
    let usage = store.usage().await.expect("usage");
    assert_eq!(usage.used_bytes, body.len() as u64 + 2);
    assert!(
        usage.free_bytes > 0 && usage.total_bytes >= usage.free_bytes,
        "{usage:?}"
    );
    assert_eq!(store.delete_prefix("b1/s1/").await.expect("delete"), 1);
    assert_eq!(store.list("").await.expect("list").len(), 1);
    let mut w = store.create("b1/s3/aborted").await.expect("create");
    w.write(Bytes::from(data(3 << 20, 9))).await.expect("write");
    w.abort().await;
    let st = store.stat("b1/s3/aborted").await.expect("stat");
    assert_eq!(
        st,
        ObjectStat {
            size: None,
            partial: None
        },
        "abort drops the partial file"
    );
    let err = store
        .delete_prefix("")
        .await
        .expect_err("whole pool")
        .to_string();
    assert!(err.contains("empty prefix"), "{err}");
}

/// A pool path the media agent does not hold is refused, naming the agent
/// and the path; so is a key that climbs out of the pool.
#[tokio::test]
async fn a_foreign_pool_and_a_bad_key_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_of(&dir);
    let server = TestServer::start(&pool).await;
    let err = MediaStore::connect(&server.url(), "/etc", "sink m".into(), Default::default())
        .await
        .expect_err("foreign pool")
        .to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("\"/etc\"") && err.contains(AGENT),
        "{err}"
    );
    let store = connect(&server, &pool, MediaOptions::default()).await;
    let err = store.create("../x").await.expect_err("bad key").to_string();
    assert!(err.contains("../x"), "{err}");
    let mut raw = MediaStoreClient::connect(server.url())
        .await
        .expect("raw client");
    let err = raw
        .stat(pb::StatRequest {
            pool: pool.display().to_string(),
            key: "a/../../x".into(),
        })
        .await
        .expect_err("bad key on the wire");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

/// Opens a raw Put of `key` and sends `msgs` after the open; returns the
/// status the stream ends with.
async fn raw_put(
    server: &TestServer,
    pool: &Path,
    key: &str,
    resume_at: u64,
    msgs: Vec<Msg>,
) -> tonic::Status {
    let mut raw = MediaStoreClient::connect(server.url())
        .await
        .expect("raw client");
    let open = Msg::Open(pb::PutOpen {
        pool: pool.display().to_string(),
        key: key.into(),
        resume_at,
    });
    let reqs: Vec<pb::PutRequest> = std::iter::once(open)
        .chain(msgs)
        .map(|m| pb::PutRequest { msg: Some(m) })
        .collect();
    let mut acks = match raw.put(futures::stream::iter(reqs)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    loop {
        match acks.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return tonic::Status::ok("ended"),
            Err(s) => return s,
        }
    }
}

fn chunk(offset: u64, data: &'static [u8], crc: Option<u32>) -> Msg {
    Msg::Chunk(pb::Chunk {
        offset,
        data: Bytes::from_static(data),
        crc32c: crc.unwrap_or_else(|| crc32c::crc32c(data)),
        sync: false,
    })
}

/// A chunk whose checksum or offset is wrong, a finish whose checksum is
/// wrong, and a resume beyond what the agent has are refused, naming the
/// key and offset; nothing appears under the key.
#[tokio::test]
async fn corrupt_chunks_and_bad_offsets_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_of(&dir);
    let server = TestServer::start(&pool).await;
    let key = "b1/s1/t.tsv";

    let s = raw_put(
        &server,
        &pool,
        key,
        0,
        vec![chunk(0, b"hello", None), chunk(5, b"world", Some(7))],
    )
    .await;
    assert_eq!(s.code(), tonic::Code::DataLoss, "{s}");
    assert!(
        s.message().contains(key) && s.message().contains("offset 5"),
        "{s}"
    );

    let s = raw_put(
        &server,
        &pool,
        key,
        0,
        vec![chunk(0, b"hello", None), chunk(6, b"world", None)],
    )
    .await;
    assert_eq!(s.code(), tonic::Code::DataLoss, "{s}");
    assert!(
        s.message().contains("offset 6") && s.message().contains("has 5 bytes"),
        "{s}"
    );

    let fin = Msg::Finish(pb::PutFinish {
        size: 5,
        sha256: Bytes::from(vec![0u8; 32]),
    });
    let s = raw_put(&server, &pool, key, 0, vec![chunk(0, b"hello", None), fin]).await;
    assert_eq!(s.code(), tonic::Code::DataLoss, "{s}");
    assert!(s.message().contains("sha256"), "{s}");

    // A partial file of 5 fsynced bytes; resuming at 9 is refused.
    let sync = Msg::Chunk(pb::Chunk {
        offset: 5,
        data: Bytes::new(),
        crc32c: 0,
        sync: true,
    });
    let s = raw_put(&server, &pool, key, 0, vec![chunk(0, b"hello", None), sync]).await;
    assert_eq!(s.code(), tonic::Code::Ok, "{s}");
    let s = raw_put(&server, &pool, key, 9, vec![]).await;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s}");
    assert!(s.message().contains("only 5 bytes"), "{s}");

    let store = connect(&server, &pool, MediaOptions::default()).await;
    let st = store.stat(key).await.expect("stat");
    assert_eq!(
        st,
        ObjectStat {
            size: None,
            partial: Some(5)
        }
    );
    // Resuming at 5 and finishing with the whole object's checksum works:
    // the agent hashes the part written before the resume.
    let whole = Sha256::digest(b"helloworld");
    let fin = Msg::Finish(pb::PutFinish {
        size: 10,
        sha256: Bytes::copy_from_slice(&whole),
    });
    let s = raw_put(&server, &pool, key, 5, vec![chunk(5, b"world", None), fin]).await;
    assert_eq!(s.code(), tonic::Code::Ok, "{s}");
    assert_eq!(read_all(&store, key).await, b"helloworld");
}

/// The media agent dies in the middle of a write and comes back on the
/// same port and pool: the writer resumes at the last acknowledged offset,
/// resends only what was not acknowledged, and the object is
/// byte-identical. A reader broken the same way reopens where it was.
#[tokio::test]
async fn a_write_and_a_read_survive_a_media_agent_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_of(&dir);
    let mut server = TestServer::start(&pool).await;
    let opts = MediaOptions {
        window: 8 << 20,
        chunk: 1 << 20,
        retry_for: Duration::from_secs(30),
        ..MediaOptions::default()
    };
    let store = connect(&server, &pool, opts).await;
    let body = data(40 << 20, 2);
    let key = "b1/s1/db/big.tsv.zst";
    let mut w = store.create(key).await.expect("create");
    let (first, rest) = body.split_at(16 << 20);
    for piece in first.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    tracing::info!("--- step: kill the media agent with 16 MiB sent");
    server.kill();
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.serve().await;
        server
    });
    for piece in rest.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(piece))
            .await
            .expect("write across the restart");
    }
    assert_eq!(w.finish().await.expect("finish"), body.len() as u64);
    let mut server = restarted.await.expect("restart task");
    let resent = store.resent_bytes();
    tracing::info!(resent, "--- step: resumed");
    assert!(
        resent > 0 && resent < body.len() as u64 / 4,
        "resent {resent} bytes"
    );
    assert_eq!(sha(&read_all(&store, key).await), sha(&body));

    tracing::info!("--- step: break a read half way");
    let mut stream = store.read(key, 0).await.expect("read");
    let mut back = Vec::new();
    while back.len() < 4 << 20 {
        back.extend_from_slice(&stream.next().await.expect("more").expect("chunk"));
    }
    server.kill();
    server.serve().await;
    while let Some(piece) = stream.next().await {
        back.extend_from_slice(&piece.expect("chunk after the restart"));
    }
    assert_eq!(sha(&back), sha(&body));
}

/// A pool on a full filesystem (an 8 MiB tmpfs) answers RESOURCE_EXHAUSTED
/// naming the pool and key, and the writer fails without retrying. Needs
/// root to mount; says so and returns without it.
#[tokio::test]
async fn a_full_pool_is_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_of(&dir);
    std::fs::create_dir(&pool).expect("pool dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&pool)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED a_full_pool_is_resource_exhausted: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Lazy: detaches even while a handler task still holds a file.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(pool.clone());
    let server = TestServer::start(&pool).await;
    let store = connect(&server, &pool, MediaOptions::default()).await;
    let key = "b1/s1/too-big";
    let mut w = store.create(key).await.expect("create");
    let body = data(16 << 20, 3);
    let mut failed = None;
    for piece in body.chunks(1 << 20) {
        if let Err(e) = w.write(Bytes::copy_from_slice(piece)).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => w.finish().await.expect_err("16 MiB does not fit in 8 MiB"),
    }
    .to_string();
    assert!(
        err.contains("ResourceExhausted")
            && err.contains(&pool.display().to_string())
            && err.contains(key),
        "{err}"
    );
    let st = store.stat(key).await.expect("stat");
    assert_eq!(st.size, None);
    assert!(
        st.partial.is_some(),
        "the partial file stays for a resume: {st:?}"
    );
}
