//! Tests of [`super`]: round trips, every kind of tampering, key files, key
//! wrapping, the disk store, and the Python recipe in `docs/`.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use super::*;
use crate::sink::Store;
use crate::sink::disk::DiskStore;

/// Collects an object in memory.
#[derive(Debug, Default, Clone)]
struct MemWriter(Arc<Mutex<Vec<u8>>>);

#[async_trait::async_trait]
impl ObjectWriter for MemWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.0.lock().expect("lock").extend_from_slice(&data);
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<u64> {
        Ok(self.0.lock().expect("lock").len() as u64)
    }
    async fn abort(self: Box<Self>) {}
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut v).expect("random");
    v
}

/// Encrypts `plain`, written in pieces of `chunk` bytes.
async fn encrypt(key: &DataKey, object_key: &str, plain: &[u8], chunk: usize) -> Vec<u8> {
    let mem = MemWriter::default();
    let mut w = Box::new(EncryptingWriter::new(
        Box::new(mem.clone()),
        key,
        object_key,
    ));
    for piece in plain.chunks(chunk) {
        w.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    let size = w.finish().await.expect("finish");
    let out = mem.0.lock().expect("lock").clone();
    assert_eq!(size, out.len() as u64);
    out
}

/// Decrypts `ct`, read in pieces of `chunk` bytes.
async fn decrypt(ct: &[u8], key: &DataKey, object_key: &str, chunk: usize) -> io::Result<Vec<u8>> {
    let pieces: Vec<io::Result<Bytes>> = ct
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut s = decrypt_stream(
        Box::pin(futures::stream::iter(pieces)),
        key.clone(),
        object_key.to_string(),
    );
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

/// Decrypting `ct` fails with an error naming the object and saying `what`.
async fn fails(ct: &[u8], key: &DataKey, object_key: &str, what: &str) {
    for chunk in [1000, SEGMENT_CT, 1 << 20] {
        let err = decrypt(ct, key, object_key, chunk)
            .await
            .expect_err("must not decrypt")
            .to_string();
        assert!(
            err.contains(object_key) && err.contains(what),
            "expected {what:?} naming {object_key}: {err}"
        );
    }
}

const OBJ: &str = "b1/s1/db/t.00000.tsv.zst";

/// Objects of every size around the segment size come back as written,
/// whatever the write and read piece sizes, at the size `encrypted_size` says.
#[tokio::test]
async fn round_trips() {
    let key = DataKey::generate();
    for size in [
        0,
        1,
        SEGMENT - 1,
        SEGMENT,
        SEGMENT + 1,
        2 * SEGMENT,
        (3 << 20) + 123,
    ] {
        eprintln!("--- step: {size} bytes");
        let plain = random_bytes(size);
        for wchunk in [1000, SEGMENT, 1 << 20] {
            let ct = encrypt(&key, OBJ, &plain, wchunk).await;
            assert_eq!(ct.len() as u64, encrypted_size(size as u64), "size {size}");
            assert_eq!(&ct[..6], MAGIC);
            for rchunk in [7, SEGMENT_CT, 1 << 20] {
                let back = decrypt(&ct, &key, OBJ, rchunk).await.expect("decrypt");
                assert!(back == plain, "size {size} wchunk {wchunk} rchunk {rchunk}");
            }
        }
    }
}

/// Two encryptions of the same plaintext differ (a fresh salt per object).
#[tokio::test]
async fn every_object_has_its_own_salt() {
    let key = DataKey::generate();
    let a = encrypt(&key, OBJ, b"same rows", 100).await;
    let b = encrypt(&key, OBJ, b"same rows", 100).await;
    assert_ne!(a, b);
}

/// Another backup's data key does not open an object.
#[tokio::test]
async fn wrong_data_key_fails() {
    let plain = random_bytes(SEGMENT + 10);
    let ct = encrypt(&DataKey::generate(), OBJ, &plain, 4096).await;
    fails(
        &ct,
        &DataKey::generate(),
        OBJ,
        "segment 0 does not authenticate",
    )
    .await;
}

/// One flipped bit anywhere (header, any segment, any tag) is an error that
/// names the object.
#[tokio::test]
async fn flipped_byte_fails() {
    let key = DataKey::generate();
    let plain = random_bytes(2 * SEGMENT + 100);
    let ct = encrypt(&key, OBJ, &plain, 4096).await;
    for (at, what) in [
        (0, "no lockstep encryption header"),
        (6, "unknown encryption version"),
        (HEADER_LEN - 1, "segment 0 does not authenticate"),
        (HEADER_LEN + 5, "segment 0 does not authenticate"),
        (
            HEADER_LEN + SEGMENT_CT + 7,
            "segment 1 does not authenticate",
        ),
        (ct.len() - 1, "segment 2 does not authenticate"),
    ] {
        eprintln!("--- step: flip byte {at}");
        let mut bad = ct.clone();
        bad[at] ^= 0x01;
        fails(&bad, &key, OBJ, what).await;
    }
}

/// Cutting an object short is detected at a segment boundary (the last
/// segment is missing), inside a segment, and right after the header.
#[tokio::test]
async fn truncation_fails() {
    let key = DataKey::generate();
    // The last segment is full here: segment 0 alone must not pass as an object.
    let ct = encrypt(&key, OBJ, &random_bytes(2 * SEGMENT), 4096).await;
    assert_eq!(ct.len(), HEADER_LEN + 2 * SEGMENT_CT);
    eprintln!("--- step: cut at the segment boundary");
    fails(
        &ct[..HEADER_LEN + SEGMENT_CT],
        &key,
        OBJ,
        "truncated: segment 0 is not the last",
    )
    .await;
    let ct = encrypt(&key, OBJ, &random_bytes(3 * SEGMENT + 5), 4096).await;
    fails(
        &ct[..HEADER_LEN + 2 * SEGMENT_CT],
        &key,
        OBJ,
        "truncated: segment 1 is not the last",
    )
    .await;
    eprintln!("--- step: cut inside a segment, after the header, inside the header");
    fails(
        &ct[..HEADER_LEN + 2 * SEGMENT_CT + 3],
        &key,
        OBJ,
        "segment 2 does not authenticate",
    )
    .await;
    fails(&ct[..HEADER_LEN], &key, OBJ, "without the last one").await;
    fails(
        &ct[..HEADER_LEN - 1],
        &key,
        OBJ,
        "no lockstep encryption header",
    )
    .await;
    fails(&[], &key, OBJ, "no lockstep encryption header").await;
}

/// Bytes after the last segment are an error, not ignored.
#[tokio::test]
async fn trailing_data_fails() {
    let key = DataKey::generate();
    let mut ct = encrypt(&key, OBJ, &random_bytes(SEGMENT), 4096).await;
    ct.extend_from_slice(b"appended");
    fails(
        &ct,
        &key,
        OBJ,
        "8 bytes of trailing data after the last segment (0)",
    )
    .await;
    ct.extend_from_slice(&vec![7u8; 3 << 20]);
    let what = format!("{} bytes of trailing data", 8 + (3 << 20));
    fails(&ct, &key, OBJ, &what).await;
    let mut ct = encrypt(&key, OBJ, b"short", 4096).await;
    ct.extend_from_slice(b"appended");
    fails(&ct, &key, OBJ, "segment 0 does not authenticate").await;
}

/// Segments swapped within an object, or taken from another object of the
/// same backup, do not authenticate.
#[tokio::test]
async fn reordered_or_spliced_segments_fail() {
    let key = DataKey::generate();
    let ct = encrypt(&key, OBJ, &random_bytes(3 * SEGMENT + 1), 4096).await;
    let seg = |c: &[u8], i: usize| c[HEADER_LEN + i * SEGMENT_CT..][..SEGMENT_CT].to_vec();
    let mut swapped = ct[..HEADER_LEN].to_vec();
    for i in [1, 0, 2] {
        swapped.extend(seg(&ct, i));
    }
    swapped.extend_from_slice(&ct[HEADER_LEN + 3 * SEGMENT_CT..]);
    assert_eq!(swapped.len(), ct.len());
    fails(&swapped, &key, OBJ, "segment 0 does not authenticate").await;

    let other = encrypt(&key, OBJ, &random_bytes(3 * SEGMENT + 1), 4096).await;
    let mut spliced = ct.clone();
    spliced[HEADER_LEN + SEGMENT_CT..][..SEGMENT_CT].copy_from_slice(&seg(&other, 1));
    fails(&spliced, &key, OBJ, "segment 1 does not authenticate").await;
}

/// An object read under another key than it was written for fails (files
/// cannot be swapped within a backup).
#[tokio::test]
async fn object_key_mismatch_fails() {
    let key = DataKey::generate();
    let ct = encrypt(&key, OBJ, b"rows of t", 4096).await;
    fails(
        &ct,
        &key,
        "b1/s1/db/u.00000.tsv.zst",
        "segment 0 does not authenticate",
    )
    .await;
}

/// A key file others may read is refused, one private to its owner loads,
/// and the error names the file and the fix.
#[test]
fn key_file_permissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.key");
    let made = KeyFile::generate(&path).expect("generate");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(KeyFile::load(&path).expect("load 0600").id(), made.id());
    assert_eq!(made.id().len(), 16);
    for (mode, ok) in [
        (0o644, false),
        (0o640, false),
        (0o604, false),
        (0o620, false),
        (0o400, true),
        (0o600, true),
    ] {
        eprintln!("--- step: mode {mode:o}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        match KeyFile::load(&path) {
            Ok(_) => assert!(ok, "mode {mode:o} accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(!ok, "mode {mode:o} refused: {e}");
                assert!(
                    e.contains(&path.display().to_string()) && e.contains("chmod 600"),
                    "{e}"
                );
                assert!(e.contains(&format!("{mode:04o}")), "{e}");
            }
        }
    }
    assert!(
        KeyFile::generate(&path).is_err(),
        "generate never replaces a file"
    );
}

/// Anything but 64 hex digits and an optional newline is refused, naming
/// the file; a missing file names it too.
#[test]
fn malformed_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k");
    let hex64 = "0123456789abcdef".repeat(4);
    let write = |text: &str| {
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    for good in [hex64.clone(), format!("{hex64}\n"), hex64.to_uppercase()] {
        write(&good);
        KeyFile::load(&path).expect("a good key file");
    }
    for bad in [
        String::new(),
        "xyz\n".into(),
        hex64[..63].to_string(),
        format!("{hex64}0"),
        format!("{hex64}\n\n"),
        format!(" {hex64}"),
        format!("{}zz", &hex64[..62]),
        "0".repeat(1000),
    ] {
        write(&bad);
        let e = KeyFile::load(&path).expect_err("malformed").to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("not a key")
                || e.contains("too long"),
            "{bad:?}: {e}"
        );
    }
    let missing = dir.path().join("missing.key");
    let e = KeyFile::load(&missing).expect_err("missing").to_string();
    assert!(e.contains("missing.key"), "{e}");
}

fn key_file(dir: &Path, name: &str) -> KeyFile {
    KeyFile::generate(dir.join(name)).expect("generate")
}

/// A wrapped data key opens with its key file and backup id only; the
/// error for a wrong key file names both key ids, for a tampered or moved
/// one says so.
#[test]
fn wrap_and_unwrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, theirs) = (
        key_file(dir.path(), "ours.key"),
        key_file(dir.path(), "theirs.key"),
    );
    let dk = DataKey::generate();
    let wrapped = ours.wrap(&dk, "b-20261129");
    assert!(
        wrapped.starts_with(&format!("lockstep-dk1:{}:", ours.id())),
        "{wrapped}"
    );
    assert_ne!(
        wrapped,
        ours.wrap(&dk, "b-20261129"),
        "a fresh nonce per wrap"
    );
    assert_eq!(ours.unwrap(&wrapped, "b-20261129").expect("unwrap").0, dk.0);

    let e = theirs
        .unwrap(&wrapped, "b-20261129")
        .expect_err("wrong key file")
        .to_string();
    for part in ["b-20261129", "theirs.key", theirs.id(), ours.id()] {
        assert!(e.contains(part), "{part}: {e}");
    }
    let e = ours
        .unwrap(&wrapped, "b-other")
        .expect_err("other backup")
        .to_string();
    assert!(
        e.contains("b-other") && e.contains("damaged or belongs to another backup"),
        "{e}"
    );
    let mut tampered = wrapped.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let e = ours
        .unwrap(&tampered, "b-20261129")
        .expect_err("tampered")
        .to_string();
    assert!(e.contains("damaged"), "{e}");
    for bad in [
        "",
        "lockstep-dk1:abc",
        "lockstep-dk2:a:00",
        &wrapped[..wrapped.len() - 2],
    ] {
        let e = ours
            .unwrap(bad, "b-20261129")
            .expect_err("malformed")
            .to_string();
        assert!(
            e.contains("malformed") && e.contains("b-20261129"),
            "{bad:?}: {e}"
        );
    }
}

/// Rows that compress well and are easy to spot in the stored bytes.
fn rows(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{i}\tsecret row of the customers table\n").into_bytes())
        .collect()
}

/// Writes `plain` encrypted to `store` under `key` in pieces of 100,000 bytes.
async fn store_encrypted(store: &DiskStore, dk: &DataKey, key: &str, plain: &[u8]) -> u64 {
    let inner = store.create(key).await.expect("create");
    let mut w: Box<dyn ObjectWriter> = Box::new(EncryptingWriter::new(inner, dk, key));
    for piece in plain.chunks(100_000) {
        w.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    w.finish().await.expect("finish")
}

/// Through the disk store: the stored bytes hold no plaintext, are as long
/// as `finish` said, and read back through `Store::read` + `decrypt_stream`.
#[tokio::test]
async fn disk_store_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::new(dir.path().join("pool"), "test pool");
    let dk = DataKey::generate();
    let plain = rows(60_000);
    assert!(plain.len() > 2 << 20);
    let size = store_encrypted(&store, &dk, OBJ, &plain).await;
    assert_eq!(size, encrypted_size(plain.len() as u64));
    assert_eq!(store.size(OBJ).await.expect("size"), Some(size));
    let raw = std::fs::read(store.path_of(OBJ).expect("path")).expect("read raw");
    assert!(
        !raw.windows(10).any(|w| w == b"secret row"),
        "plaintext on disk"
    );

    let mut s = decrypt_stream(
        store.read(OBJ, 0).await.expect("read"),
        dk.clone(),
        OBJ.into(),
    );
    let mut back = Vec::new();
    while let Some(piece) = s.next().await {
        let piece = piece.expect("decrypt");
        assert!(piece.len() <= SEGMENT);
        back.extend_from_slice(&piece);
    }
    assert!(back == plain);

    eprintln!("--- step: a damaged file on disk fails through the store too");
    let mut bad = raw.clone();
    bad[HEADER_LEN + 3 * SEGMENT_CT + 1] ^= 0x80;
    std::fs::write(store.path_of(OBJ).expect("path"), &bad).expect("damage");
    let mut s = decrypt_stream(store.read(OBJ, 0).await.expect("read"), dk, OBJ.into());
    let mut err = None;
    while let Some(piece) = s.next().await {
        if let Err(e) = piece {
            err = Some(e.to_string());
        }
    }
    let err = err.expect("an error");
    assert!(err.contains(OBJ) && err.contains("segment 3"), "{err}");
}

/// The Python to run the recipe with: `$LOCKSTEP_PYTHON`, else the venv
/// scripts/setup-debian.sh makes for moto (it has `cryptography`), else
/// `python3`.
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("LOCKSTEP_PYTHON") {
        return p.into();
    }
    let venv = std::env::var_os("LOCKSTEP_MOTO_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/lockstep-moto".into())
        .join("bin/python3");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Runs `docs/decrypt-object.py`, or with `snippet` the Python block of
/// "Encrypted objects" in `docs/format.md`; its stdout, or its stderr on
/// failure.
fn python_recipe(
    snippet: bool,
    key: &KeyFile,
    wrapped: &str,
    backup: &str,
    object: &str,
    file: &Path,
) -> std::result::Result<Vec<u8>, String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut cmd = std::process::Command::new(python());
    if snippet {
        let md = std::fs::read_to_string(docs.join("format.md")).expect("read docs/format.md");
        let section = &md[md.find("## Encrypted objects").expect("the section")..];
        let block = section
            .split("```python\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a python block in the section");
        cmd.arg("-c").arg(format!(
            "import sys\nkey_file, wrapped, backup_id, object_key, path = sys.argv[1:]\n{block}\nsys.stdout.buffer.write(plain)\n"
        ));
    } else {
        cmd.arg(docs.join("decrypt-object.py"));
    }
    let out = cmd
        .args([
            key.path().as_os_str(),
            wrapped.as_ref(),
            backup.as_ref(),
            object.as_ref(),
            file.as_os_str(),
        ])
        .output()
        .expect("run python3");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The Python recipe in the docs decrypts what the Rust code wrote, and
/// refuses a damaged, truncated or extended object and a wrong key file.
/// Needs python3 with the `cryptography` package (the moto venv of
/// scripts/setup-debian.sh has it; or python3-cryptography); set
/// LOCKSTEP_SKIP_PYTHON_RECIPE=1 to skip on a machine without it.
#[tokio::test]
async fn python_recipe_decrypts_what_rust_wrote() {
    let have = std::process::Command::new(python())
        .args(["-c", "import cryptography.hazmat.primitives.ciphers.aead"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        if std::env::var_os("LOCKSTEP_SKIP_PYTHON_RECIPE").is_some() {
            eprintln!("--- skipped: python3 with `cryptography` is not available");
            return;
        }
        panic!(
            "python3 with the `cryptography` package is needed (apt install python3-cryptography, or pip install cryptography); set LOCKSTEP_SKIP_PYTHON_RECIPE=1 to skip"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::new(dir.path().join("pool"), "test pool");
    let kf = key_file(dir.path(), "backup.key");
    let dk = DataKey::generate();
    let backup = "b-20261129T0430";
    let wrapped = kf.wrap(&dk, backup);
    for (i, plain) in [Vec::new(), rows(1), random_bytes(SEGMENT), rows(40_000)]
        .into_iter()
        .enumerate()
    {
        eprintln!("--- step: object {i} of {} bytes", plain.len());
        let object = format!("{backup}/s1/db/t.{i:05}.tsv.zst");
        store_encrypted(&store, &dk, &object, &plain).await;
        let file = store.path_of(&object).expect("path");
        for snippet in [false, true] {
            let back = python_recipe(snippet, &kf, &wrapped, backup, &object, &file)
                .unwrap_or_else(|e| panic!("the recipe (snippet: {snippet}) fails: {e}"));
            assert!(back == plain, "object {i}: the recipe's plaintext differs");
        }
    }

    let object = format!("{backup}/s1/db/t.00003.tsv.zst");
    let file = store.path_of(&object).expect("path");
    let raw = std::fs::read(&file).expect("read");
    let copy = dir.path().join("copy");
    let refused = |bytes: &[u8], object: &str, kf: &KeyFile, what: &str| {
        std::fs::write(&copy, bytes).expect("write copy");
        let e = python_recipe(false, kf, &wrapped, backup, object, &copy).expect_err("must fail");
        assert!(e.contains(what), "expected {what:?}: {e}");
        let e = python_recipe(true, kf, &wrapped, backup, object, &copy).expect_err("must fail");
        assert!(e.contains("InvalidTag"), "the snippet fails too: {e}");
    };
    eprintln!("--- step: damaged, truncated, extended, moved, wrong key file");
    let mut bad = raw.clone();
    bad[HEADER_LEN + SEGMENT_CT + 9] ^= 1;
    refused(&bad, &object, &kf, "segment 1 does not authenticate");
    refused(&raw[..HEADER_LEN + SEGMENT_CT], &object, &kf, "truncated");
    refused(
        &[&raw[..], b"x"].concat(),
        &object,
        &kf,
        "does not authenticate",
    );
    refused(
        &raw,
        "b/s1/db/other.tsv.zst",
        &kf,
        "segment 0 does not authenticate",
    );
    let other = key_file(dir.path(), "other.key");
    refused(&raw, &object, &other, kf.id());
}
