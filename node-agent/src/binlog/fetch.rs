//! Fetching archived binlogs from sinks for a replay or a search: each
//! file's segments are read in order, checked against the sha256 the
//! catalog recorded, and written into one local file named as on the
//! server (or handed to a callback as they arrive).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lockstep_proto::agent as pb;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::sink::{self, Local, SharedStore};

/// The stores a request's segments name, opened once each.
#[derive(Debug)]
pub struct Stores {
    specs: HashMap<String, pb::SinkSpec>,
    open: HashMap<String, SharedStore>,
    local: Local,
}

impl Stores {
    pub fn new(specs: HashMap<String, pb::SinkSpec>, local: Local) -> Self {
        Self {
            specs,
            open: HashMap::new(),
            local,
        }
    }

    async fn get(&mut self, name: &str) -> Result<SharedStore> {
        if let Some(s) = self.open.get(name) {
            return Ok(s.clone());
        }
        let spec = if name.is_empty() {
            None
        } else {
            Some(self.specs.get(name).ok_or_else(|| {
                Error::Config(format!(
                    "segment names sink {name}, which the request does not describe"
                ))
            })?)
        };
        if spec.is_some_and(|s| s.encrypt) {
            return Err(Error::Config(format!(
                "sink {name} encrypts; binlog segments are not encrypted and cannot be read from it"
            )));
        }
        let store = sink::open(spec, &self.local).await?;
        self.open.insert(name.to_string(), store.clone());
        Ok(store)
    }
}

/// Reads one segment whole and checks its size and sha256: from its sink,
/// else from each of its alternates in turn; the error names every sink's
/// failure.
pub async fn segment(stores: &mut Stores, s: &pb::ArchivedSegment) -> Result<Vec<u8>> {
    let mut failures = Vec::new();
    for sink in std::iter::once(&s.sink).chain(&s.alternates) {
        match segment_from(stores, s, sink).await {
            Ok(bytes) => {
                if !failures.is_empty() {
                    tracing::warn!(key = %s.key, sink = %sink, failed = ?failures, "binlog segment read from a copy");
                }
                return Ok(bytes);
            }
            Err(e) if s.alternates.is_empty() => return Err(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(Error::Sink {
        sink: format!(
            "every sink holding it ({})",
            std::iter::once(&s.sink)
                .chain(&s.alternates)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        key: s.key.clone(),
        action: "read",
        reason: format!(
            "no intact copy of segment {}:{}-{}: {}",
            s.file,
            s.start,
            s.end,
            failures.join("; ")
        ),
    })
}

async fn segment_from(stores: &mut Stores, s: &pb::ArchivedSegment, sink: &str) -> Result<Vec<u8>> {
    let store = stores.get(sink).await?;
    let want = s.end - s.start;
    let bytes = sink::get(store.as_ref(), &s.key, want).await?;
    let bad = |reason: String| Error::Sink {
        sink: store.describe(),
        key: s.key.clone(),
        action: "check",
        reason,
    };
    if bytes.len() as u64 != want {
        return Err(bad(format!(
            "segment {}:{}-{} holds {} bytes, not {want}",
            s.file,
            s.start,
            s.end,
            bytes.len()
        )));
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != s.sha256 {
        return Err(bad(format!(
            "segment {}:{}-{} is corrupt: sha256 {sha}, the catalog recorded {}",
            s.file, s.start, s.end, s.sha256
        )));
    }
    Ok(bytes)
}

/// Writes the files the segments make up into `dir` (each from offset 0,
/// segments contiguous); returns their paths in order.
pub async fn files(
    stores: &mut Stores,
    segments: &[pb::ArchivedSegment],
    dir: &Path,
    progress: &Progress,
) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut current: Option<(String, tokio::fs::File, u64)> = None;
    for s in segments {
        if current.as_ref().is_none_or(|(f, _, _)| *f != s.file) {
            if let Some((_, mut f, _)) = current.take() {
                f.flush()
                    .await
                    .map_err(|e| Error::io(dir, "write a fetched binlog", e))?;
            }
            if s.start != 0 {
                return Err(Error::Config(format!(
                    "binlog {} starts at offset {} in the archive, not at its beginning",
                    s.file, s.start
                )));
            }
            if crate::binlog::local::parse_name(&s.file).is_none() {
                return Err(Error::Config(format!("{:?} is not a binlog name", s.file)));
            }
            let path = dir.join(&s.file);
            let f = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Error::io(&path, "create a fetched binlog", e))?;
            out.push(path);
            current = Some((s.file.clone(), f, 0));
        }
        let (name, f, at) = current.as_mut().expect("set above");
        if s.start != *at {
            return Err(Error::Config(format!(
                "binlog {name}: the segments jump from offset {at} to {}: a gap in the archive",
                s.start
            )));
        }
        let bytes = segment(stores, s).await?;
        f.write_all(&bytes)
            .await
            .map_err(|e| Error::io(dir.join(&*name), "write a fetched binlog", e))?;
        progress.add_bytes(bytes.len() as u64);
        *at = s.end;
    }
    if let Some((name, mut f, _)) = current {
        f.flush()
            .await
            .map_err(|e| Error::io(dir.join(name), "write a fetched binlog", e))?;
    }
    Ok(out)
}

/// Streams every segment's bytes in order to `each(segment, bytes)`.
pub async fn each<F>(
    stores: &mut Stores,
    segments: &[pb::ArchivedSegment],
    mut each: F,
) -> Result<()>
where
    F: FnMut(&pb::ArchivedSegment, &[u8]) -> Result<()>,
{
    for s in segments {
        let bytes = segment(stores, s).await?;
        each(s, &bytes)?;
    }
    Ok(())
}
