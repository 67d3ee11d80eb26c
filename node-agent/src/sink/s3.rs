//! S3-compatible object storage through `object_store`.
//!
//! Credentials come only from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, and the other
//! `AWS_*` variables `object_store` reads); the sink's spec names the bucket,
//! the key prefix and, for an S3-compatible server, the endpoint and region,
//! which override the environment. An `http://` endpoint is allowed.
//!
//! Writes: an object smaller than one part is stored with one conditional
//! PUT (`If-None-Match: *`), so the server refuses to replace an existing
//! object. A larger one is a multipart upload of [`S3Options::part_size`]
//! parts with at most [`S3Options::parts_in_flight`] parts in flight per
//! writer (writes wait for room), plus the one being filled. `object_store` cannot send `If-None-Match` on
//! CompleteMultipartUpload, so for a multipart upload the key is checked
//! with HEAD before the upload starts and again before it completes: two
//! writers racing on one key between that HEAD and the completion could
//! still replace each other (lockstep never writes one key twice at once).
//! A part that still fails after the retries aborts the upload; so do
//! [`ObjectWriter::abort`] and dropping an unfinished writer (best effort:
//! configure the bucket to expire incomplete multipart uploads).
//!
//! Every request is retried with exponential backoff for up to
//! [`S3Options::retry_window`]. Uploads carry a SHA-256 checksum
//! (`x-amz-checksum-sha256`) that AWS S3 verifies; after `finish`, a HEAD
//! checks that the stored size equals the bytes written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use super::{ByteStream, ObjectInfo, ObjectWriter, Store, check_key, join};
use crate::error::{Error, Result};

/// How an [`S3Store`] uploads and retries.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Bytes per multipart part (S3 wants at least 5 MiB but the last).
    pub part_size: usize,
    /// Parts per writer uploading at once; one more is being filled, so a
    /// writer holds at most `part_size * (parts_in_flight + 1)` bytes.
    pub parts_in_flight: usize,
    /// How long one request is retried (with backoff) before it fails.
    pub retry_window: Duration,
    /// The most retries of one request within the window.
    pub max_retries: usize,
    /// One request's deadline (a part is `part_size` bytes).
    pub request_timeout: Duration,
    /// Connecting's deadline.
    pub connect_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            part_size: 8 << 20,
            parts_in_flight: 2,
            retry_window: Duration::from_secs(120),
            max_retries: 15,
            request_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// An S3 bucket and key prefix.
#[derive(Clone)]
pub struct S3Store {
    client: Arc<AmazonS3>,
    bucket: String,
    endpoint: String,
    prefix: String,
    label: String,
    opts: S3Options,
    secrets: Arc<[String]>,
}

// By hand: the client holds the credentials, which must never be printed.
impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("label", &self.label)
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// The bucket and prefix `spec` names; credentials from the environment.
    pub fn new(spec: &lockstep_proto::agent::S3Sink, label: String) -> Result<S3Store> {
        S3Store::with_options(spec, label, S3Options::default())
    }

    /// [`S3Store::new`] with other part sizes, retries or timeouts.
    pub fn with_options(
        spec: &lockstep_proto::agent::S3Sink,
        label: String,
        opts: S3Options,
    ) -> Result<S3Store> {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        S3Store::with_env(spec, label, opts, vars)
    }

    /// [`S3Store::with_options`] reading the `AWS_*` variables from `vars`
    /// instead of the process environment (tests, which cannot change
    /// their own environment safely).
    pub fn with_env(
        spec: &lockstep_proto::agent::S3Sink,
        label: String,
        opts: S3Options,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<S3Store> {
        if spec.bucket.is_empty() {
            return Err(Error::Config(format!(
                "{label}: the s3 sink names no bucket"
            )));
        }
        if opts.part_size < 5 << 20 || opts.parts_in_flight == 0 {
            return Err(Error::Config(format!(
                "{label}: parts must be at least 5 MiB and at least one in flight"
            )));
        }
        let prefix = spec.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            check_key(&prefix).map_err(|e| Error::Config(format!("{label}: prefix {e}")))?;
        }
        // What AmazonS3Builder::from_env does, from `vars`; the secrets are
        // kept only to scrub them from error messages.
        let mut builder = AmazonS3Builder::new();
        let mut secrets = Vec::new();
        for (key, value) in vars {
            if !key.starts_with("AWS_") {
                continue;
            }
            if (key == "AWS_SECRET_ACCESS_KEY" || key == "AWS_SESSION_TOKEN") && value.len() >= 4 {
                secrets.push(value.clone());
            }
            if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(config_key, value);
            }
        }
        let secrets: Arc<[String]> = secrets.into();
        builder = builder
            .with_bucket_name(&spec.bucket)
            .with_checksum_algorithm(Checksum::SHA256)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: opts.max_retries,
                retry_timeout: opts.retry_window,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(opts.request_timeout)
                    .with_connect_timeout(opts.connect_timeout),
            );
        if !spec.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&spec.endpoint)
                .with_allow_http(spec.endpoint.starts_with("http://"));
        }
        if !spec.region.is_empty() {
            builder = builder.with_region(&spec.region);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("{label}: {}", scrub(&secrets, &e.to_string()))))?;
        Ok(S3Store {
            client: Arc::new(client),
            bucket: spec.bucket.clone(),
            endpoint: if spec.endpoint.is_empty() {
                "AWS S3".into()
            } else {
                spec.endpoint.clone()
            },
            prefix,
            label,
            opts,
            secrets,
        })
    }

    /// The object path of `key`, after checking the key.
    fn path(&self, key: &str, action: &'static str) -> Result<Path> {
        check_key(key).map_err(|reason| self.err(key, action, reason))?;
        Path::parse(join(&self.prefix, key)).map_err(|e| self.err(key, action, e))
    }

    fn err(&self, key: &str, action: &'static str, reason: impl ToString) -> Error {
        Error::Sink {
            sink: self.label.clone(),
            key: key.to_string(),
            action,
            reason: scrub(&self.secrets, &reason.to_string()),
        }
    }

    /// An `object_store` error as ours, with what it most likely means.
    fn s3_err(&self, key: &str, action: &'static str, e: object_store::Error) -> Error {
        let text = e.to_string();
        let hint = match &e {
            _ if text.contains("NoSuchBucket") => {
                format!("bucket {} does not exist at {}", self.bucket, self.endpoint)
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => format!(
                "access denied by {} to bucket {}: check the credentials in \
                 AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN) and the bucket's policy",
                self.endpoint, self.bucket
            ),
            _ if [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "403 Forbidden",
            ]
            .iter()
            .any(|code| text.contains(code)) =>
            {
                format!(
                    "access denied by {} to bucket {}: check the credentials in \
                 AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN) and the bucket's policy",
                    self.endpoint, self.bucket
                )
            }
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => {
                "an object already exists under this key".into()
            }
            object_store::Error::NotFound { .. } => "no such object".into(),
            _ if is_unreachable(&e) => format!("cannot reach {}", self.endpoint),
            _ => String::new(),
        };
        let reason = if hint.is_empty() {
            text
        } else {
            format!("{hint} ({text})")
        };
        self.err(key, action, truncate(reason))
    }

    /// Checks that the bucket answers with these credentials: lists one key.
    pub async fn check(&self) -> Result<()> {
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let mut listing = self.client.list(prefix.as_ref());
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.s3_err(&format!("prefix {:?}", self.prefix), "list", e)),
        }
    }

    async fn head(&self, key: &str, path: &Path) -> Result<Option<u64>> {
        match self.client.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.s3_err(key, "look up", e)),
        }
    }

    async fn refuse_existing(&self, key: &str, path: &Path) -> Result<()> {
        match self.head(key, path).await? {
            Some(_) => Err(self.err(key, "create", "an object already exists under this key")),
            None => Ok(()),
        }
    }
}

/// True if `e` says the server could not be reached at all.
fn is_unreachable(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let t = s.to_string().to_ascii_lowercase();
        if t.contains("connect") || t.contains("dns") || t.contains("timed out") {
            return true;
        }
        source = s.source();
    }
    false
}

/// Removes the secret key and session token from a message (in case a
/// server echoes them), whatever path they took into it.
fn scrub(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// Keeps an error readable (server bodies can be long).
fn truncate(mut s: String) -> String {
    const MAX: usize = 800;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Where a writer is.
enum State {
    /// Less than one part so far: kept for a single conditional PUT.
    Small(Vec<Bytes>),
    /// A multipart upload under way.
    Multipart(WriteMultipart),
    /// Finished, aborted or failed.
    Done,
}

/// An object being written to an [`S3Store`].
pub struct S3Writer {
    store: S3Store,
    key: String,
    path: Path,
    state: State,
    written: u64,
}

impl std::fmt::Debug for S3Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Writer")
            .field("sink", &self.store.label)
            .field("key", &self.key)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl S3Writer {
    fn small_len(parts: &[Bytes]) -> usize {
        parts.iter().map(Bytes::len).sum()
    }

    /// Starts the multipart upload with what was buffered.
    async fn start_multipart(&mut self, buffered: Vec<Bytes>) -> Result<()> {
        // Refuse before uploading: the completion cannot be conditional.
        self.store.refuse_existing(&self.key, &self.path).await?;
        let upload = self
            .store
            .client
            .put_multipart(&self.path)
            .await
            .map_err(|e| self.store.s3_err(&self.key, "start upload of", e))?;
        let mut mp = WriteMultipart::new_with_chunk_size(upload, self.store.opts.part_size);
        for b in buffered {
            mp.put(b);
        }
        self.state = State::Multipart(mp);
        Ok(())
    }

    /// Aborts a failed upload and returns `e`.
    async fn fail(&mut self, e: Error) -> Error {
        if let State::Multipart(mp) = std::mem::replace(&mut self.state, State::Done)
            && let Err(abort) = mp.abort().await
        {
            tracing::warn!(sink = %self.store.label, key = %self.key,
                "could not abort the multipart upload: {}", scrub(&self.store.secrets, &abort.to_string()));
        }
        e
    }

    async fn append(&mut self, mut data: Bytes) -> Result<()> {
        let part = self.store.opts.part_size;
        while !data.is_empty() {
            match &mut self.state {
                State::Done => {
                    return Err(self.store.err(
                        &self.key,
                        "write",
                        "the writer already finished or failed",
                    ));
                }
                State::Small(parts) => {
                    let room = part - Self::small_len(parts);
                    if data.len() < room {
                        self.written += data.len() as u64;
                        parts.push(data);
                        return Ok(());
                    }
                    let buffered = std::mem::take(parts);
                    if let Err(e) = self.start_multipart(buffered).await {
                        return Err(self.fail(e).await);
                    }
                }
                State::Multipart(mp) => {
                    // Wait for room: fewer than `parts_in_flight` parts
                    // uploading, then add at most one part's worth.
                    let waited = mp.wait_for_capacity(self.store.opts.parts_in_flight).await;
                    if let Err(e) = waited {
                        let e = self.store.s3_err(&self.key, "upload a part of", e);
                        return Err(self.fail(e).await);
                    }
                    let piece = data.split_to(data.len().min(part));
                    self.written += piece.len() as u64;
                    mp.put(piece);
                }
            }
        }
        Ok(())
    }

    async fn complete(&mut self) -> Result<u64> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => {
                Err(self
                    .store
                    .err(&self.key, "store", "the writer already finished or failed"))
            }
            State::Small(parts) => {
                let payload: PutPayload = parts.into_iter().collect();
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                self.store
                    .client
                    .put_opts(&self.path, payload, opts)
                    .await
                    .map_err(|e| self.store.s3_err(&self.key, "store", e))?;
                Ok(self.written)
            }
            State::Multipart(mp) => {
                if let Err(e) = self.store.refuse_existing(&self.key, &self.path).await {
                    self.state = State::Multipart(mp);
                    return Err(self.fail(e).await);
                }
                // Aborts the upload itself if a part or the completion fails.
                mp.finish()
                    .await
                    .map_err(|e| self.store.s3_err(&self.key, "store", e))?;
                Ok(self.written)
            }
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // An unfinished upload: abort it in the background (best effort).
        if let State::Multipart(mp) = std::mem::replace(&mut self.state, State::Done)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = mp.abort().await;
            });
        }
    }
}

#[async_trait::async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.append(data).await
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let written = self.complete().await?;
        // Read after write: the object is there, with every byte.
        match self.store.head(&self.key, &self.path).await? {
            Some(size) if size == written => Ok(written),
            Some(size) => Err(self.store.err(
                &self.key,
                "verify",
                format!("{size} bytes are stored, not the {written} written"),
            )),
            None => Err(self.store.err(
                &self.key,
                "verify",
                "the object is missing right after it was stored",
            )),
        }
    }

    async fn abort(mut self: Box<Self>) {
        let e = self.store.err(&self.key, "write", "aborted");
        let _ = self.fail(e).await;
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(key, "create")?;
        self.refuse_existing(key, &path).await?;
        Ok(Box::new(S3Writer {
            store: self.clone(),
            key: key.to_string(),
            path,
            state: State::Small(Vec::new()),
            written: 0,
        }))
    }

    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream> {
        let path = self.path(key, "read")?;
        let opts = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = match self.client.get_opts(&path, opts).await {
            Ok(got) => got,
            // S3 refuses a range starting at the end: an empty read.
            Err(e) if offset > 0 && self.head(key, &path).await? == Some(offset) => {
                let _ = e;
                return Ok(Box::pin(futures::stream::empty()));
            }
            Err(e) => return Err(self.s3_err(key, "read", e)),
        };
        let (label, key, secrets) = (self.label.clone(), key.to_string(), self.secrets.clone());
        Ok(Box::pin(got.into_stream().map_err(move |e| {
            std::io::Error::other(format!(
                "{label}: cannot read {key}: {}",
                scrub(&secrets, &e.to_string())
            ))
        })))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key, "look up")?;
        self.head(key, &path).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // List the "directory" the prefix names, then keep the keys that
        // start with it (a key prefix need not end at a `/`).
        let dir = match prefix.rfind('/') {
            Some(i) => join(&self.prefix, &prefix[..i]),
            None => self.prefix.clone(),
        };
        let dir = (!dir.is_empty())
            .then(|| Path::parse(&dir))
            .transpose()
            .map_err(|e| self.err(prefix, "list", e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut listing = self.client.list(dir.as_ref());
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.s3_err(&format!("prefix {prefix:?}"), "list", e))?;
            let Some(key) = meta.location.as_ref().strip_prefix(&strip) else {
                continue;
            };
            if key.starts_with(prefix) {
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: meta.size,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let listed = self.list(prefix).await?;
        let paths = listed
            .iter()
            .map(|o| self.path(&o.key, "delete"))
            .collect::<Result<Vec<_>>>()?;
        let mut deleted = self
            .client
            .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.s3_err(&format!("prefix {prefix:?}"), "delete", e)),
            }
        }
        Ok(listed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_carry_the_secrets() {
        let secrets = ["s3cr3t-key".to_string(), "tok3n".to_string()];
        assert_eq!(
            scrub(&secrets, "sig for s3cr3t-key with tok3n failed"),
            "sig for *** with *** failed"
        );
        let long = truncate("é".repeat(1000));
        assert!(long.len() <= 803 && long.ends_with("..."));
    }

    #[test]
    fn a_spec_without_bucket_or_with_tiny_parts_is_refused() {
        let spec = lockstep_proto::agent::S3Sink {
            bucket: String::new(),
            prefix: "p".into(),
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
        };
        let e = S3Store::with_env(&spec, "sink x".into(), S3Options::default(), [])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("sink x") && e.contains("no bucket"), "{e}");
        let spec = lockstep_proto::agent::S3Sink {
            bucket: "b".into(),
            ..spec
        };
        let tiny = S3Options {
            part_size: 1 << 20,
            ..S3Options::default()
        };
        assert!(S3Store::with_env(&spec, "sink x".into(), tiny, []).is_err());
        let vars = [
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIAEXAMPLE".to_string()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                "topsecret-xyz".to_string(),
            ),
        ];
        let store = S3Store::with_env(&spec, "sink x".into(), S3Options::default(), vars);
        let debug = format!("{:?}", store.map_err(|e| e.to_string()));
        assert!(!debug.contains("topsecret-xyz"), "{debug}");
        assert!(debug.contains("sink x"), "{debug}");
    }
}
