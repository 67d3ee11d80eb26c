//! Encryption at rest for sink objects.
//!
//! Three layers, all ChaCha20-Poly1305 (the IETF variant: 32-byte key,
//! 12-byte nonce, 16-byte tag), so a backup can be decrypted by hand with
//! any common library (`docs/decrypt-object.py`; the layout is in
//! `docs/format.md`, "Encrypted objects"):
//!
//! - The operator's key, [`KeyFile`]: 32 random bytes, hex, in a file only
//!   its owner may read. Its key id (a hash) names it in errors.
//! - A data key per backup, [`DataKey`]: random, recorded with the backup
//!   wrapped by the operator's key ([`KeyFile::wrap`]; the wrapped form
//!   carries the key id so a wrong key file is named in the error).
//! - Objects: [`EncryptingWriter`] and [`decrypt_stream`] cut an object into
//!   independently authenticated segments of 64 KiB under a key derived from
//!   the data key and a random per-object salt. The nonce carries the
//!   segment index and a last-segment flag, the object's key is the
//!   associated data: reordering, truncation, trailing data and objects
//!   moved between keys are all detected. Memory stays at about one segment
//!   (plus one chunk of the stream being read).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{ByteStream, ObjectWriter};
use crate::error::{Error, Result};

/// The magic at the start of an encrypted object, including format 1.
pub const MAGIC: &[u8; 6] = b"LKSE1\0";
/// The version byte after the magic.
pub const VERSION: u8 = 1;
/// Bytes of the random per-object salt.
pub const SALT_LEN: usize = 16;
/// Bytes of the header: magic, version, salt.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + SALT_LEN;
/// Plaintext bytes of every segment but the last (which holds 0 to this).
pub const SEGMENT: usize = 64 * 1024;
/// Bytes the authentication tag adds to each segment.
pub const TAG_LEN: usize = 16;
const SEGMENT_CT: usize = SEGMENT + TAG_LEN;

const KEY_ID_CONTEXT: &[u8] = b"lockstep key id";
const WRAP_CONTEXT: &[u8] = b"lockstep data key v1";
const OBJECT_CONTEXT: &[u8] = b"lockstep object key v1";
const WRAPPED_PREFIX: &str = "lockstep-dk1";
const NONCE_LEN: usize = 12;

/// The stored size of an object of `plain` bytes.
pub fn encrypted_size(plain: u64) -> u64 {
    // Every segment is full but the last, which holds 0 to SEGMENT bytes.
    let segments = plain.div_ceil(SEGMENT as u64).max(1);
    HEADER_LEN as u64 + plain + segments * TAG_LEN as u64
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source works");
    b
}

/// ChaCha20-Poly1305 (RFC 8439) under one key. aws-lc's assembly, not a
/// generic Rust implementation: the latter is instantiated in this crate
/// and ran at about 6 MB/s in the debug builds the integration tests use.
#[derive(Clone)]
struct Cipher(std::sync::Arc<LessSafeKey>);

impl Cipher {
    fn new(key: &[u8]) -> Cipher {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key");
        Cipher(std::sync::Arc::new(LessSafeKey::new(key)))
    }

    /// `plain` encrypted, with the tag appended, after `out`'s bytes.
    fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plain: &[u8], mut out: Vec<u8>) -> Vec<u8> {
        let start = out.len();
        out.reserve(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .expect("a message of at most 64 KiB is never too long to encrypt");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The plaintext of `sealed` (ciphertext and tag), if it authenticates.
    fn open(&self, nonce: [u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(KEY_ID_CONTEXT)
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..8])
}

/// The operator's key, loaded from a key file.
#[derive(Clone)]
pub struct KeyFile {
    path: PathBuf,
    key: [u8; 32],
    id: String,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyFile {
    /// Loads a key file: 64 hex digits and an optional newline, in a regular
    /// file nobody but its owner may read, write or execute (mode 0600 or
    /// 0400, like ssh's private keys).
    pub fn load(path: impl AsRef<Path>) -> Result<KeyFile> {
        let path = path.as_ref();
        let refuse =
            |kind, reason: String| Error::io(path, "load key file", io::Error::new(kind, reason));
        let text = crate::secrets::read_private(path, "key file")?;
        if text.len() > 256 {
            return Err(refuse(
                io::ErrorKind::InvalidData,
                format!(
                    "{} bytes is too long for a key file (64 hex digits and a newline)",
                    text.len()
                ),
            ));
        }
        let digits = text.strip_suffix(b"\n").unwrap_or(&text);
        let mut key = [0u8; 32];
        if digits.len() != 64 || hex::decode_to_slice(digits, &mut key).is_err() {
            return Err(refuse(
                io::ErrorKind::InvalidData,
                format!(
                    "not a key: a key file holds 64 hex digits (32 random bytes, e.g. from `openssl rand -hex 32`) and an optional newline; this one has {} bytes",
                    text.len()
                ),
            ));
        }
        Ok(KeyFile {
            path: path.to_path_buf(),
            id: key_id(&key),
            key,
        })
    }

    /// Writes a new random key to `path` (mode 0600; never replaces a file).
    pub fn generate(path: impl AsRef<Path>) -> Result<KeyFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let key: [u8; 32] = random();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, "create key file", e))?;
        f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(path, "write key file", e))?;
        Ok(KeyFile {
            path: path.to_path_buf(),
            id: key_id(&key),
            key,
        })
    }

    /// The key id: 16 hex digits of sha256("lockstep key id" || key).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cipher(&self) -> Cipher {
        Cipher::new(&self.key)
    }

    /// Wraps backup `backup_id`'s data key:
    /// `lockstep-dk1:<key id>:<hex of nonce(12) || ciphertext(32) || tag(16)>`.
    pub fn wrap(&self, key: &DataKey, backup_id: &str) -> String {
        let nonce: [u8; NONCE_LEN] = random();
        let aad = [WRAP_CONTEXT, backup_id.as_bytes()].concat();
        let sealed = self.cipher().seal(nonce, &aad, &key.0, nonce.to_vec());
        format!("{WRAPPED_PREFIX}:{}:{}", self.id, hex::encode(sealed))
    }

    /// Opens a data key [`KeyFile::wrap`] wrapped for `backup_id`.
    pub fn unwrap(&self, wrapped: &str, backup_id: &str) -> Result<DataKey> {
        let bad = |reason: String| Error::BadState {
            backup_id: backup_id.to_string(),
            reason,
        };
        let mut parts = wrapped.trim().split(':');
        let (Some(WRAPPED_PREFIX), Some(wrapped_id), Some(blob), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(format!(
                "its wrapped data key is malformed (not {WRAPPED_PREFIX}:<key id>:<hex>): {wrapped:?}"
            )));
        };
        let blob = match hex::decode(blob) {
            Ok(b) if b.len() == NONCE_LEN + 32 + TAG_LEN => b,
            _ => {
                return Err(bad(format!(
                    "its wrapped data key is malformed (not {} hex digits after the key id): {wrapped:?}",
                    2 * (NONCE_LEN + 32 + TAG_LEN)
                )));
            }
        };
        let aad = [WRAP_CONTEXT, backup_id.as_bytes()].concat();
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        match self.cipher().open(n, &aad, ct) {
            Some(plain) => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&plain);
                Ok(DataKey(key))
            }
            None if wrapped_id != self.id => Err(bad(format!(
                "the key file {} (key id {}) does not open the backup's data key; it was wrapped with key id {wrapped_id}: give the agent that key file",
                self.path.display(),
                self.id
            ))),
            None => Err(bad(format!(
                "the key file {} (key id {}) does not open the backup's data key although it was wrapped with that key id: the wrapped key is damaged or belongs to another backup",
                self.path.display(),
                self.id
            ))),
        }
    }
}

/// A backup's data key: every object of the backup is encrypted with keys
/// derived from it.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> DataKey {
        DataKey(random())
    }

    /// The key of one object: HMAC-SHA256(data key, "lockstep object key v1" || salt).
    fn object_cipher(&self, salt: &[u8]) -> Cipher {
        let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &self.0));
        mac.update(OBJECT_CONTEXT);
        mac.update(salt);
        Cipher::new(mac.sign().as_ref())
    }
}

/// The nonce of segment `index`: 7 zero bytes, the index (u32 big-endian),
/// and 1 for the last segment or 0.
fn segment_nonce(index: u32, last: bool) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Encrypts an object on its way into another writer.
pub struct EncryptingWriter {
    inner: Box<dyn ObjectWriter>,
    cipher: Cipher,
    object_key: String,
    /// The header, until it goes out with the first segment.
    header: Option<Vec<u8>>,
    /// Plaintext not yet encrypted: at most one segment between calls.
    pending: BytesMut,
    index: u32,
}

impl fmt::Debug for EncryptingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptingWriter")
            .field("inner", &self.inner)
            .field("object_key", &self.object_key)
            .field("segments", &self.index)
            .finish_non_exhaustive()
    }
}

impl EncryptingWriter {
    /// Encrypts what is written with `key` for the object `object_key` (the
    /// key it is stored under, relative to the backup; decrypting needs the
    /// same one) and writes the result to `inner`.
    pub fn new(inner: Box<dyn ObjectWriter>, key: &DataKey, object_key: &str) -> EncryptingWriter {
        let salt: [u8; SALT_LEN] = random();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&salt);
        EncryptingWriter {
            inner,
            cipher: key.object_cipher(&salt),
            object_key: object_key.to_string(),
            header: Some(header),
            pending: BytesMut::with_capacity(SEGMENT),
            index: 0,
        }
    }

    /// Encrypts and writes one segment of `plain`.
    async fn seal(&mut self, plain: &[u8], last: bool) -> Result<()> {
        // The header goes out with the first segment.
        let out = self.header.take().unwrap_or_default();
        let out = self.cipher.seal(
            segment_nonce(self.index, last),
            self.object_key.as_bytes(),
            plain,
            out,
        );
        self.inner.write(Bytes::from(out)).await?;
        self.index = self.index.checked_add(1).ok_or_else(|| Error::Sink {
            sink: "encryption".into(),
            key: self.object_key.clone(),
            action: "encrypt",
            reason: format!("more than {} segments of {SEGMENT} bytes", u32::MAX),
        })?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectWriter for EncryptingWriter {
    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        // A full segment is sealed only once more data follows it: the last
        // segment may be a full one, and only `finish` knows which is last.
        while !data.is_empty() {
            if self.pending.len() == SEGMENT {
                let seg = self.pending.split();
                self.seal(&seg, false).await?;
                self.pending.reserve(SEGMENT);
            }
            let take = (SEGMENT - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data.split_to(take));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let seg = self.pending.split();
        self.seal(&seg, true).await?;
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

fn invalid(object_key: &str, reason: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("encrypted object {object_key}: {reason}"),
    )
}

/// Reading state of [`decrypt_stream`].
struct Decrypting {
    inner: ByteStream,
    key: DataKey,
    object_key: String,
    cipher: Option<Cipher>,
    buf: BytesMut,
    index: u32,
    eof: bool,
    done: bool,
}

impl Decrypting {
    /// Reads one more chunk; false at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.inner.next().await {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk?);
                Ok(true)
            }
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    fn open(&self, cipher: &Cipher, seg: &[u8], last: bool) -> Option<Vec<u8>> {
        cipher.open(
            segment_nonce(self.index, last),
            self.object_key.as_bytes(),
            seg,
        )
    }

    /// The next piece of plaintext; `None` after the last segment.
    async fn next_plain(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let cipher = match &self.cipher {
                Some(c) => c.clone(),
                None => {
                    while self.buf.len() < HEADER_LEN && self.fill().await? {}
                    if self.buf.len() < HEADER_LEN || &self.buf[..MAGIC.len()] != MAGIC {
                        return Err(invalid(
                            &self.object_key,
                            "no lockstep encryption header (LKSE1): not encrypted by lockstep, or cut short",
                        ));
                    }
                    if self.buf[MAGIC.len()] != VERSION {
                        return Err(invalid(
                            &self.object_key,
                            format!("unknown encryption version {}", self.buf[MAGIC.len()]),
                        ));
                    }
                    let header = self.buf.split_to(HEADER_LEN);
                    let c = self.key.object_cipher(&header[MAGIC.len() + 1..]);
                    self.cipher = Some(c.clone());
                    c
                }
            };
            // More than a full segment buffered: the first one is not the last.
            while self.buf.len() <= SEGMENT_CT && self.fill().await? {}
            let index = self.index;
            if self.buf.len() > SEGMENT_CT {
                let seg = self.buf.split_to(SEGMENT_CT);
                let Some(plain) = self.open(&cipher, &seg, false) else {
                    if self.open(&cipher, &seg, true).is_some() {
                        // Counts the trailing bytes without keeping them.
                        let mut extra = self.buf.len() as u64;
                        self.buf.clear();
                        while !self.eof {
                            match self.inner.next().await {
                                Some(chunk) => extra += chunk?.len() as u64,
                                None => self.eof = true,
                            }
                        }
                        return Err(invalid(
                            &self.object_key,
                            format!(
                                "{extra} bytes of trailing data after the last segment ({index})"
                            ),
                        ));
                    }
                    return Err(self.unauthentic(index));
                };
                self.index = self.next_index()?;
                return Ok(Some(Bytes::from(plain)));
            }
            // The end of the stream: what is left is the last segment.
            let seg = self.buf.split();
            self.done = true;
            if seg.is_empty() {
                return Err(invalid(
                    &self.object_key,
                    format!(
                        "truncated: the stream ends after {index} segment(s) without the last one"
                    ),
                ));
            }
            let Some(plain) = self.open(&cipher, &seg, true) else {
                if self.open(&cipher, &seg, false).is_some() {
                    return Err(invalid(
                        &self.object_key,
                        format!(
                            "truncated: segment {index} is not the last one, and the stream ends after it"
                        ),
                    ));
                }
                return Err(self.unauthentic(index));
            };
            if !plain.is_empty() {
                return Ok(Some(Bytes::from(plain)));
            }
        }
    }

    fn next_index(&self) -> io::Result<u32> {
        self.index
            .checked_add(1)
            .ok_or_else(|| invalid(&self.object_key, "too many segments"))
    }

    fn unauthentic(&self, index: u32) -> io::Error {
        invalid(
            &self.object_key,
            format!(
                "segment {index} does not authenticate: the object is damaged, cut short or tampered with, was stored under another key, or the data key is wrong"
            ),
        )
    }
}

/// The plaintext of an object [`EncryptingWriter`] wrote under `object_key`
/// with `key`. Fails with an `InvalidData` error naming the object on a
/// segment that does not authenticate, a missing last segment, or data after
/// it. Every piece is authenticated before it is yielded; an error may come
/// after some pieces, so the consumer must treat the whole as failed.
pub fn decrypt_stream(stream: ByteStream, key: DataKey, object_key: String) -> ByteStream {
    let state = Decrypting {
        inner: stream,
        key,
        object_key,
        cipher: None,
        buf: BytesMut::new(),
        index: 0,
        eof: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        match st.next_plain().await {
            Ok(Some(piece)) => Some((Ok(piece), st)),
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    }))
}

#[cfg(test)]
#[path = "crypt_tests.rs"]
mod tests;
