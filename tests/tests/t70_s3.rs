//! The S3 sink against a real S3-compatible server (moto, started by the
//! harness with enforced credentials): multipart round trips, refusal to
//! replace an object, listing and deleting by prefix, ranged reads, clear
//! errors for wrong credentials, a missing bucket and an unreachable
//! endpoint, and a server that stalls or dies in the middle of an upload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lockstep_node_agent::sink::s3::{S3Options, S3Store};
use lockstep_node_agent::sink::{ObjectWriter, Store, put};
use lockstep_tests::s3::S3Server;
use lockstep_tests::{Supervised, init_tracing, step};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

/// `len` pseudo-random bytes (xorshift64 from `seed`): incompressible and
/// different for every seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn label(prefix: &str) -> String {
    format!("sink s3test (s3://lockstep-test/{prefix})")
}

fn store(s3: &S3Server, prefix: &str, opts: S3Options) -> anyhow::Result<S3Store> {
    Ok(S3Store::with_env(
        &s3.spec(prefix),
        label(prefix),
        opts,
        s3.env(),
    )?)
}

/// Options for fault tests: short timeouts so a stalled request is retried.
fn impatient(window: Duration) -> S3Options {
    S3Options {
        retry_window: window,
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        ..S3Options::default()
    }
}

/// Writes `data` in 1 MiB pieces, counting what was handed over.
async fn write_all(
    mut w: Box<dyn ObjectWriter>,
    data: Arc<Vec<u8>>,
    progress: Arc<AtomicU64>,
) -> lockstep_node_agent::error::Result<u64> {
    for chunk in data.chunks(MIB) {
        if let Err(e) = w.write(Bytes::copy_from_slice(chunk)).await {
            w.abort().await;
            return Err(e);
        }
        progress.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    w.finish().await
}

async fn read_all(store: &S3Store, key: &str, offset: u64) -> anyhow::Result<Vec<u8>> {
    let mut stream = store.read(key, offset).await?;
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

async fn wait_progress(progress: &AtomicU64, at_least: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < at_least {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the writer did not reach {at_least} bytes in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A 40 MiB object goes up in 8 MiB parts and comes back byte for byte
/// (whole, from an offset, and empty from its end); a second writer on the
/// same key is refused whether the object is small (conditional PUT) or
/// multipart (HEAD before completing), and leaves the first object intact
/// and no upload behind; an aborted or dropped writer leaves nothing.
#[tokio::test]
async fn multipart_round_trip_and_no_replace() -> anyhow::Result<()> {
    init_tracing();
    let s3 = S3Server::start().await?;
    let store = store(&s3, "rt", S3Options::default())?;
    let data = Arc::new(noise(7, 40 * MIB + 12_345));

    step!("upload 40 MiB through the multipart writer");
    let w = store.create("b1/s1/big.bin").await?;
    let size = write_all(w, data.clone(), Arc::new(AtomicU64::new(0))).await?;
    assert_eq!(size, data.len() as u64);
    assert_eq!(store.size("b1/s1/big.bin").await?, Some(size));
    assert!(s3.pending_uploads().await?.is_empty());

    step!("read it back whole and from an offset");
    assert_eq!(
        sha(&read_all(&store, "b1/s1/big.bin", 0).await?),
        sha(&data)
    );
    let off = 12_345_678;
    assert_eq!(
        sha(&read_all(&store, "b1/s1/big.bin", off).await?),
        sha(&data[off as usize..])
    );
    assert!(read_all(&store, "b1/s1/big.bin", size).await?.is_empty());
    let missing = store.read("b1/s1/none.bin", 0).await.err();
    let missing = missing.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        missing.contains("no such object") && missing.contains(&label("rt")),
        "{missing}"
    );

    step!("creating an existing key is refused at create");
    let e = store
        .create("b1/s1/big.bin")
        .await
        .err()
        .map(|e| e.to_string());
    let e = e.unwrap_or_default();
    assert!(
        e.contains("already exists") && e.contains("b1/s1/big.bin"),
        "{e}"
    );

    step!("two small writers race: the conditional PUT refuses the second");
    let mut w1 = store.create("b1/s1/small").await?;
    let mut w2 = store.create("b1/s1/small").await?;
    w1.write(Bytes::from_static(b"first")).await?;
    w2.write(Bytes::from_static(b"second")).await?;
    assert_eq!(w1.finish().await?, 5);
    let e = w2
        .finish()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("already exists") && e.contains(&label("rt")),
        "{e}"
    );
    assert_eq!(read_all(&store, "b1/s1/small", 0).await?, b"first");

    step!("two multipart writers race: the second is refused before completing");
    let first = noise(8, 17 * MIB);
    let mut w1 = store.create("b1/s1/race").await?;
    let mut w2 = store.create("b1/s1/race").await?;
    // Both past their first part, so both uploads are under way.
    for (w, bytes) in [(&mut w1, &first), (&mut w2, &noise(9, 17 * MIB))] {
        for chunk in bytes.chunks(MIB) {
            w.write(Bytes::copy_from_slice(chunk)).await?;
        }
    }
    assert_eq!(w1.finish().await?, first.len() as u64);
    let e = w2
        .finish()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("already exists") && e.contains("b1/s1/race"),
        "{e}"
    );
    assert_eq!(sha(&read_all(&store, "b1/s1/race", 0).await?), sha(&first));
    wait_no_uploads(&s3).await?;

    step!("an aborted and a dropped writer leave no object and no upload");
    let mut aborted = store.create("b1/s1/aborted").await?;
    let mut dropped = store.create("b1/s1/dropped").await?;
    for w in [&mut aborted, &mut dropped] {
        for chunk in noise(10, 20 * MIB).chunks(MIB) {
            w.write(Bytes::copy_from_slice(chunk)).await?;
        }
    }
    assert_eq!(s3.pending_uploads().await?.len(), 2);
    aborted.abort().await;
    drop(dropped);
    wait_no_uploads(&s3).await?;
    assert_eq!(store.size("b1/s1/aborted").await?, None);
    assert_eq!(store.size("b1/s1/dropped").await?, None);
    Ok(())
}

/// Waits (10 s at most) until no multipart upload is left on `s3`.
async fn wait_no_uploads(s3: &S3Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s3.pending_uploads().await?.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "multipart uploads left after 10 s: {:?}",
            s3.pending_uploads().await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `list` is sorted and matches a key prefix that need not end at `/`;
/// `delete_prefix` removes exactly what it lists; another store prefix in
/// the same bucket sees none of it.
#[tokio::test]
async fn list_and_delete_prefix() -> anyhow::Result<()> {
    init_tracing();
    let s3 = S3Server::start().await?;
    let store = store(&s3, "p/q", S3Options::default())?;
    let other = self::store(&s3, "p", S3Options::default())?;
    let elsewhere = self::store(&s3, "x", S3Options::default())?;

    step!("put five objects");
    for key in ["b1/s2/t", "b1/s1/b", "b1/s1/a", "b10/s1/a", "b2/s1/a"] {
        put(&store, key, Bytes::from(key.as_bytes().to_vec())).await?;
    }
    let keys = |l: Vec<lockstep_node_agent::sink::ObjectInfo>| {
        l.into_iter().map(|o| o.key).collect::<Vec<_>>()
    };

    step!("list by prefixes");
    assert_eq!(
        keys(store.list("b1").await?),
        ["b1/s1/a", "b1/s1/b", "b1/s2/t", "b10/s1/a"]
    );
    assert_eq!(
        keys(store.list("b1/").await?),
        ["b1/s1/a", "b1/s1/b", "b1/s2/t"]
    );
    assert_eq!(keys(store.list("b1/s1/").await?), ["b1/s1/a", "b1/s1/b"]);
    assert_eq!(store.list("b1/s1/a").await?[0].size, 7);
    assert_eq!(keys(other.list("q/b2").await?), ["q/b2/s1/a"]);
    assert!(elsewhere.list("").await?.is_empty());

    step!("delete one copy's prefix");
    assert_eq!(store.delete_prefix("b1/s1/").await?, 2);
    assert_eq!(
        keys(store.list("").await?),
        ["b1/s2/t", "b10/s1/a", "b2/s1/a"]
    );
    assert_eq!(store.size("b1/s1/a").await?, None);
    assert_eq!(store.delete_prefix("b1/s1/").await?, 0);
    Ok(())
}

/// Wrong credentials, a missing bucket and an unreachable endpoint each
/// fail with an error naming the sink and the key (and the bucket or the
/// endpoint), never the secret key.
#[tokio::test]
async fn errors_name_the_sink() -> anyhow::Result<()> {
    init_tracing();
    let s3 = S3Server::start().await?;

    step!("wrong secret key");
    let mut env = s3.env();
    for (k, v) in &mut env {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong-secret-key-0123456789".into();
        }
    }
    let bad = S3Store::with_env(
        &s3.spec("e"),
        label("e"),
        impatient(Duration::from_secs(5)),
        env,
    )?;
    let e = put(&bad, "b1/k", Bytes::from_static(b"x")).await.err();
    let e = e.map(|e| e.to_string()).unwrap_or_default();
    step!("error: {e}");
    assert!(e.contains(&label("e")) && e.contains("b1/k"), "{e}");
    assert!(
        e.contains("access denied") && e.contains("AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    assert!(
        !e.contains("wrong-secret-key-0123456789"),
        "the secret leaked: {e}"
    );
    let e = bad
        .list("")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    step!("error: {e}");
    assert!(e.contains("access denied"), "{e}");

    step!("wrong access key");
    let mut env = s3.env();
    env[0].1 = "AKIANOSUCHKEY0000000".into();
    let bad = S3Store::with_env(
        &s3.spec("e"),
        label("e"),
        impatient(Duration::from_secs(5)),
        env,
    )?;
    let e = bad
        .check()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    step!("error: {e}");
    assert!(
        e.contains("access denied") && e.contains(&label("e")),
        "{e}"
    );

    step!("missing bucket");
    let mut spec = s3.spec("e");
    spec.bucket = "no-such-bucket".into();
    let nob = S3Store::with_env(
        &spec,
        label("e"),
        impatient(Duration::from_secs(5)),
        s3.env(),
    )?;
    let e = put(&nob, "b1/k", Bytes::from_static(b"x")).await.err();
    let e = e.map(|e| e.to_string()).unwrap_or_default();
    step!("error: {e}");
    assert!(
        e.contains("bucket no-such-bucket does not exist") && e.contains("b1/k"),
        "{e}"
    );
    let e = nob
        .list("b1/")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    step!("error: {e}");
    assert!(e.contains("bucket no-such-bucket does not exist"), "{e}");

    step!("unreachable endpoint");
    let mut spec = s3.spec("e");
    let closed = lockstep_tests::ports::free_port()?;
    spec.endpoint = format!("http://127.0.0.1:{closed}");
    let far = S3Store::with_env(
        &spec,
        label("e"),
        impatient(Duration::from_secs(2)),
        s3.env(),
    )?;
    let started = Instant::now();
    let e = far
        .create("b1/k")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    step!("error: {e}");
    assert!(
        e.contains(&format!("cannot reach http://127.0.0.1:{closed}")) && e.contains(&label("e")),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// moto frozen (SIGSTOP) for longer than a request's timeout in the middle
/// of a 40 MiB upload: the writer stops taking bytes once 3 parts are
/// buffered (bounded memory), the stalled parts are retried, and the upload
/// completes intact once moto answers again, within the retry window.
#[tokio::test]
async fn upload_survives_a_stalled_server() -> anyhow::Result<()> {
    init_tracing();
    let mut s3 = S3Server::start().await?;
    let store = store(&s3, "stall", impatient(Duration::from_secs(60)))?;
    let data = noise(11, 40 * MIB);

    step!("write 9 MiB (the upload is under way), freeze moto, write the rest");
    let mut w = store.create("b1/s1/big").await?;
    let head = 9 * MIB;
    for chunk in data[..head].chunks(MIB) {
        w.write(Bytes::copy_from_slice(chunk)).await?;
    }
    s3.pause()?;
    let progress = Arc::new(AtomicU64::new(head as u64));
    let rest = Arc::new(data[head..].to_vec());
    let task = tokio::spawn(write_all(w, rest, progress.clone()));
    // The fault: moto answers nothing for longer than the 3 s request timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stalled_at = progress.load(Ordering::SeqCst);
    step!("thaw moto ({stalled_at} bytes handed over)");
    s3.resume()?;
    let size = task.await??;
    // moto acknowledged at most part 1 (8 MiB) before it froze; the writer
    // holds at most 2 parts in flight and 1 being filled beyond that.
    assert!(
        stalled_at <= (8 + 3 * 8 + 1) * MIB as u64,
        "the writer took {stalled_at} bytes while moto was frozen"
    );
    assert_eq!(size, data.len() as u64);
    assert_eq!(sha(&read_all(&store, "b1/s1/big", 0).await?), sha(&data));
    Ok(())
}

/// moto killed in the middle of an upload and started again (empty, as
/// moto keeps nothing): the writer fails with an error naming the sink and
/// the key, and nothing is visible under the key.
#[tokio::test]
async fn upload_fails_cleanly_when_the_server_dies() -> anyhow::Result<()> {
    init_tracing();
    let mut s3 = S3Server::start().await?;
    let store = store(&s3, "die", impatient(Duration::from_secs(60)))?;
    let data = Arc::new(noise(12, 40 * MIB));
    let progress = Arc::new(AtomicU64::new(0));

    step!("start the upload; kill moto after 16 MiB, then start it again");
    let w = store.create("b1/s1/big").await?;
    let task = tokio::spawn(write_all(w, data.clone(), progress.clone()));
    wait_progress(&progress, 16 * MIB as u64).await?;
    s3.kill()?;
    s3.restart().await?;

    step!("the writer fails naming the sink and the key");
    let e = task.await?.err().map(|e| e.to_string()).unwrap_or_default();
    step!("error: {e}");
    assert!(e.contains(&label("die")) && e.contains("b1/s1/big"), "{e}");

    step!("nothing is visible under the key");
    let fresh = self::store(&s3, "die", S3Options::default())?;
    assert_eq!(fresh.size("b1/s1/big").await?, None);
    assert!(fresh.list("").await?.is_empty());
    assert!(s3.pending_uploads().await?.is_empty());
    Ok(())
}

/// An S3 server that is not there when the store is first used: `check`
/// fails within the retry window with an error naming the sink and the
/// endpoint.
#[tokio::test]
async fn unreachable_at_start() -> anyhow::Result<()> {
    init_tracing();
    let s3 = S3Server::start().await?;
    let mut spec = s3.spec("u");
    let closed = lockstep_tests::ports::free_port()?;
    spec.endpoint = format!("http://127.0.0.1:{closed}");
    let store = S3Store::with_env(
        &spec,
        label("u"),
        impatient(Duration::from_secs(3)),
        s3.env(),
    )?;
    step!("check and list against a closed port");
    let started = Instant::now();
    for e in [store.check().await.err(), store.list("b1/").await.err()] {
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        step!("error: {e}");
        assert!(
            e.contains(&label("u"))
                && e.contains(&format!("cannot reach http://127.0.0.1:{closed}")),
            "{e}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Benchmark (run by `bench/s3-upload.sh`, ignored otherwise): uploads the
/// same file of `LOCKSTEP_S3_BENCH_MIB` MiB [256] to moto through the
/// `S3Store` writer and through `aws s3 cp`, and prints both rates.
#[tokio::test]
#[ignore = "benchmark: bench/s3-upload.sh"]
async fn bench_s3_upload() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    init_tracing();
    let mib: usize = std::env::var("LOCKSTEP_S3_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let s3 = S3Server::start().await?;
    let tmp = lockstep_tests::process::short_temp_dir("ls-s3b-")?;
    let file = tmp.path().join("upload.bin");
    step!("write a {mib} MiB file of pseudo-random bytes");
    let data = noise(21, mib * MIB);
    tokio::fs::write(&file, &data).await?;
    let digest = sha(&data);
    drop(data);

    step!("upload through S3Store (8 MiB parts, 2 in flight)");
    let store = store(&s3, "bench", S3Options::default())?;
    let started = Instant::now();
    let mut w = store.create("ours.bin").await?;
    let mut f = tokio::fs::File::open(&file).await?;
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write(Bytes::copy_from_slice(&buf[..n])).await?;
    }
    w.finish().await?;
    let ours = started.elapsed();

    step!("upload through aws s3 cp");
    let aws = lockstep_tests::s3::moto_python()?.with_file_name("aws");
    let started = Instant::now();
    let out = tokio::process::Command::new(&aws)
        .args(["s3", "cp", "--quiet", "--endpoint-url", &s3.endpoint()])
        .arg(&file)
        .arg(format!("s3://{}/bench/awscli.bin", s3.bucket()))
        .envs(s3.env())
        .output()
        .await?;
    let theirs = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "aws s3 cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    step!("check both objects");
    assert_eq!(sha(&read_all(&store, "ours.bin", 0).await?), digest);
    assert_eq!(store.size("awscli.bin").await?, Some((mib * MIB) as u64));
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "| S3Store writer (8 MiB parts, 2 in flight) | {mib} MiB | {:.1} s | {:.0} MiB/s |",
        ours.as_secs_f64(),
        rate(ours)
    );
    println!(
        "| aws s3 cp (awscli defaults: 8 MiB parts, 10 in flight) | {mib} MiB | {:.1} s | {:.0} MiB/s |",
        theirs.as_secs_f64(),
        rate(theirs)
    );
    lockstep_tests::process::remove_temp_dir(tmp, "the S3 benchmark");
    Ok(())
}
