//! The binlog archive in the catalog (catalog version 4): for every server,
//! the binlog files its agent archived to the cluster's primary sink, each as
//! the segments (byte ranges cut at commit-group boundaries) stored so far,
//! and the gaps found between them.
//!
//! One stored record per archived file (`Key::Archive`), so recording a
//! segment rewrites only its file's record. A file's segments are
//! contiguous from offset 0 (the magic); the segment ending with the file's
//! Rotate event is `closed`. A segment that does not continue the archive
//! (a file that is not the successor of the last closed one, a first
//! segment that does not start at 0, a GTID that does not follow the last
//! one of its domain) is still recorded, with `gap` saying what is missing
//! before it: recovery across it is refused, recovery after it works.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Catalog, Rejected};

/// A byte range of one archived binlog file, stored as one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub file: String,
    /// Offsets in the file: `start` is 0 for the segment holding the magic.
    pub start: u64,
    pub end: u64,
    /// It ends with the file's Rotate event: the file is complete.
    pub closed: bool,
    pub sha256: String,
    /// The sink holding it (empty: the agent's host-local directory) and the
    /// object's key there.
    pub sink: String,
    pub key: String,
    /// The object holding its event index (one JSON line per transaction),
    /// empty if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub index_key: String,
    /// Unix seconds of its first and last event (0: no event).
    pub first_time: u32,
    pub last_time: u32,
    /// GTIDs (`domain-server-seq`) of its first and last transaction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_gtid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_gtid: String,
    /// What is missing between the archive before it and this segment; set
    /// by the agent (a purged binlog, with the server's words) or by the
    /// catalog when the segment does not continue the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
    pub recorded_at_unix_ms: i64,
    /// Further sinks holding it under the same key (the policy's copies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<String>,
}

/// One archived binlog file: its segments, in order, contiguous.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub segments: Vec<Segment>,
}

impl ArchivedFile {
    /// Bytes archived: the end of the last segment.
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.end)
    }

    pub fn closed(&self) -> bool {
        self.segments.last().is_some_and(|s| s.closed)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.end - s.start).sum()
    }

    /// The first gap inside this file (or before it), with its offset.
    pub fn gap(&self) -> Option<(u64, &str)> {
        self.segments
            .iter()
            .find_map(|s| s.gap.as_deref().map(|g| (s.start, g)))
    }
}

/// A server's archive: file name → file. Binlog names carry a zero-padded
/// number, so name order is archive order.
pub type ServerArchive = BTreeMap<String, ArchivedFile>;

/// A position in a server's binlogs.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

impl std::fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// `base.NNNNNN` → (`base`, NNNNNN).
pub fn split_name(name: &str) -> Option<(&str, u64)> {
    let (base, n) = name.rsplit_once('.')?;
    (!base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok().map(|n| (base, n)))
        .flatten()
}

/// `domain-server-seq` → (domain, seq).
fn gtid_parts(gtid: &str) -> Option<(u32, u64)> {
    let mut it = gtid.split('-');
    let domain = it.next()?.parse().ok()?;
    let _server: u32 = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    it.next().is_none().then_some((domain, seq))
}

impl Catalog {
    /// A server's archive (empty if none).
    pub fn server_archive(&self, cluster: &str, server: &str) -> Option<&ServerArchive> {
        self.archive.get(cluster).and_then(|c| c.get(server))
    }

    /// The last archived position of a server: its newest file's end.
    pub fn archived_to(&self, cluster: &str, server: &str) -> Option<(BinlogPos, bool)> {
        let (name, f) = self.server_archive(cluster, server)?.last_key_value()?;
        Some((
            BinlogPos {
                file: name.clone(),
                pos: f.end(),
            },
            f.closed(),
        ))
    }

    /// Records segments of one file of a server's archive (in order). A
    /// segment the archive already holds (a report repeated after a lost
    /// reply) is skipped; one that overlaps differently is refused.
    pub(super) fn archive_segments(
        &mut self,
        cluster: &str,
        server: &str,
        segments: Vec<Segment>,
    ) -> Result<(), Rejected> {
        let bad = |reason: String| Rejected::BadArchive {
            cluster: cluster.to_string(),
            server: server.to_string(),
            reason,
        };
        if !self
            .clusters
            .get(cluster)
            .is_some_and(|c| c.contains_key(server))
        {
            return Err(Rejected::UnknownServer {
                cluster: cluster.to_string(),
                name: server.to_string(),
            });
        }
        let Some(first) = segments.first() else {
            return Ok(());
        };
        let file = first.file.clone();
        if segments.iter().any(|s| s.file != file) {
            return Err(bad("one report may hold segments of one file only".into()));
        }
        if split_name(&file).is_none() {
            return Err(bad(format!("{file:?} is not a binlog name")));
        }
        let archive = self.archive.get(cluster).and_then(|c| c.get(server));
        let mut current = archive
            .and_then(|a| a.get(&file))
            .cloned()
            .unwrap_or_default();
        // What came before this file, for the first segment of a new file.
        let previous = archive.and_then(|a| a.range(..file.clone()).next_back());
        let later = archive.is_some_and(|a| a.range(file.clone()..).nth(1).is_some());
        let mut last_gtid = archive
            .into_iter()
            .flat_map(|a| a.range(..=file.clone()).rev())
            .flat_map(|(_, f)| f.segments.iter().rev())
            .find(|s| !s.last_gtid.is_empty())
            .map(|s| s.last_gtid.clone());
        let mut changed = false;
        for mut seg in segments {
            if seg.end < seg.start {
                return Err(bad(format!(
                    "segment {}:{}-{} ends before it starts",
                    seg.file, seg.start, seg.end
                )));
            }
            let end = current.end();
            if seg.start < end {
                let same = current
                    .segments
                    .iter()
                    .any(|s| s.start == seg.start && s.end == seg.end && s.sha256 == seg.sha256);
                if same {
                    continue;
                }
                return Err(bad(format!(
                    "segment {}:{}-{} overlaps what the archive holds (to {end})",
                    seg.file, seg.start, seg.end
                )));
            }
            if current.closed() {
                return Err(bad(format!(
                    "{} is closed at {end}; nothing may follow it",
                    seg.file
                )));
            }
            let mut gaps: Vec<String> = seg.gap.take().into_iter().collect();
            if current.segments.is_empty() {
                if later {
                    return Err(bad(format!(
                        "{} is older than files the archive already holds",
                        seg.file
                    )));
                }
                if seg.start != 0 {
                    gaps.push(format!(
                        "{} is archived only from offset {}",
                        seg.file, seg.start
                    ));
                }
                match previous {
                    None => {}
                    Some((prev, f)) if !f.closed() => gaps.push(format!(
                        "{prev} ends at {} without its Rotate event (the server stopped, or bytes were lost)",
                        f.end()
                    )),
                    Some((prev, _)) => {
                        let follows = match (split_name(prev), split_name(&seg.file)) {
                            (Some((pb, pn)), Some((b, n))) => pb == b && n == pn + 1,
                            _ => false,
                        };
                        if !follows {
                            gaps.push(format!(
                                "{} does not follow {prev}: the binlogs between were never archived",
                                seg.file
                            ));
                        }
                    }
                }
            } else if seg.start > end {
                gaps.push(format!(
                    "{}:{end}-{} was never archived",
                    seg.file, seg.start
                ));
            }
            if let (Some(last), Some((d, s))) = (
                last_gtid.as_deref().and_then(gtid_parts),
                gtid_parts(&seg.first_gtid),
            ) && last.0 == d
                && s != last.1 + 1
            {
                gaps.push(format!(
                    "GTID discontinuity in domain {d}: {} follows {}",
                    seg.first_gtid,
                    last_gtid.as_deref().unwrap_or_default()
                ));
            }
            if !seg.last_gtid.is_empty() {
                last_gtid = Some(seg.last_gtid.clone());
            }
            seg.gap = (!gaps.is_empty()).then(|| gaps.join("; "));
            current.segments.push(seg);
            changed = true;
        }
        if changed {
            self.archive
                .entry(cluster.to_string())
                .or_default()
                .entry(server.to_string())
                .or_default()
                .insert(file, current);
        }
        Ok(())
    }

    /// The archived files that take a server from `from` to `to`, each
    /// from its magic: refused, naming the server and the file, when the
    /// archive does not hold every byte in between or has a gap there.
    pub fn archive_between(
        &self,
        cluster: &str,
        server: &str,
        from: &BinlogPos,
        to: &BinlogPos,
    ) -> Result<Vec<(&str, &ArchivedFile)>, String> {
        let archive = self
            .server_archive(cluster, server)
            .ok_or_else(|| format!("server {server} has no archived binlogs"))?;
        if to < from {
            return Err(format!(
                "server {server}: the target {to} lies before the base backup's position {from}"
            ));
        }
        let files: Vec<(&str, &ArchivedFile)> = archive
            .range(from.file.clone()..=to.file.clone())
            .map(|(n, f)| (n.as_str(), f))
            .collect();
        match files.first() {
            Some((n, _)) if *n == from.file => {}
            _ => {
                return Err(format!(
                    "server {server}: binlog {} (the base backup's position {from}) is not in the archive",
                    from.file
                ));
            }
        }
        let mut prev: Option<&str> = None;
        for (name, f) in &files {
            if let Some(p) = prev {
                let follows = match (split_name(p), split_name(name)) {
                    (Some((pb, pn)), Some((b, n))) => pb == b && n == pn + 1,
                    _ => false,
                };
                if !follows {
                    return Err(format!(
                        "server {server}: the archive has no binlog between {p} and {name}"
                    ));
                }
            }
            if f.segments.first().is_none_or(|s| s.start != 0) {
                return Err(format!(
                    "server {server}: {name} is not archived from its beginning"
                ));
            }
            for s in &f.segments {
                let inside = |p: u64| *name != from.file || p > from.pos;
                if let Some(g) = &s.gap
                    && (prev.is_some() || inside(s.start))
                    && (*name != to.file || s.start <= to.pos)
                {
                    return Err(format!(
                        "server {server}: gap in the archive at {name}:{}: {g}",
                        s.start
                    ));
                }
            }
            if *name != to.file && !f.closed() {
                return Err(format!(
                    "server {server}: {name} is archived only to {} (not closed), and the target is in {}",
                    f.end(),
                    to.file
                ));
            }
            prev = Some(name);
        }
        let (last_name, last) = files.last().expect("holds from.file");
        if *last_name != to.file || last.end() < to.pos {
            let (n, e) = (last_name, last.end());
            return Err(format!(
                "server {server}: the archive ends at {n}:{e}, before the target {to}"
            ));
        }
        Ok(files)
    }

    /// A server's archive is durable past `pos` (with no gap before it in
    /// its file).
    pub fn archived_past(&self, cluster: &str, server: &str, pos: &BinlogPos) -> bool {
        let Some(archive) = self.server_archive(cluster, server) else {
            return false;
        };
        match archive.get(&pos.file) {
            Some(f) => f.end() >= pos.pos || f.closed(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(file: &str, start: u64, end: u64, closed: bool) -> Segment {
        Segment {
            file: file.into(),
            start,
            end,
            closed,
            sha256: format!("{file}-{start}"),
            sink: String::new(),
            key: format!("binlog/s1/{file}/{start}"),
            index_key: String::new(),
            first_time: 0,
            last_time: 0,
            first_gtid: String::new(),
            last_gtid: String::new(),
            gap: None,
            recorded_at_unix_ms: 0,
            copies: Vec::new(),
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.clusters.entry("c".into()).or_default().insert(
            "s1".into(),
            super::super::Server {
                cluster: "c".into(),
                name: "s1".into(),
                agent_addr: String::new(),
                flavour: String::new(),
                version: String::new(),
                server_id: 1,
                server_uuid: String::new(),
                registered_at_unix_ms: 0,
                registered_by: None,
            },
        );
        c
    }

    fn pos(file: &str, pos: u64) -> BinlogPos {
        BinlogPos {
            file: file.into(),
            pos,
        }
    }

    #[test]
    fn contiguous_segments_cover_a_range_and_repeats_are_skipped() {
        let mut c = catalog();
        c.archive_segments("c", "s1", vec![seg("b.000001", 0, 100, false)])
            .expect("accepted");
        c.archive_segments("c", "s1", vec![seg("b.000001", 100, 200, true)])
            .expect("accepted");
        // A repeated report changes nothing.
        c.archive_segments("c", "s1", vec![seg("b.000001", 100, 200, true)])
            .expect("accepted");
        c.archive_segments("c", "s1", vec![seg("b.000002", 0, 50, false)])
            .expect("accepted");
        let files = c
            .archive_between("c", "s1", &pos("b.000001", 120), &pos("b.000002", 40))
            .expect("accepted");
        assert_eq!(files.len(), 2);
        assert!(c.archived_past("c", "s1", &pos("b.000002", 50)));
        assert!(!c.archived_past("c", "s1", &pos("b.000002", 51)));
        let err = c
            .archive_between("c", "s1", &pos("b.000001", 120), &pos("b.000002", 60))
            .expect_err("refused");
        assert!(err.contains("ends at b.000002:50"), "{err}");
        let err = c
            .archive_segments("c", "s1", vec![seg("b.000002", 10, 60, false)])
            .expect_err("refused");
        assert!(err.to_string().contains("overlaps"), "{err}");
    }

    #[test]
    fn a_skipped_file_is_a_gap_that_refuses_recovery_across_it() {
        let mut c = catalog();
        c.archive_segments("c", "s1", vec![seg("b.000001", 0, 100, true)])
            .expect("accepted");
        let mut s = seg("b.000003", 0, 80, false);
        s.gap = Some("binlog b.000002 was purged on server s1 before it was archived".into());
        c.archive_segments("c", "s1", vec![s]).expect("accepted");
        let err = c
            .archive_between("c", "s1", &pos("b.000001", 50), &pos("b.000003", 40))
            .expect_err("refused");
        assert!(err.contains("between b.000001 and b.000003"), "{err}");
        let gap = c.server_archive("c", "s1").expect("accepted")["b.000003"]
            .gap()
            .expect("accepted")
            .1
            .to_string();
        assert!(
            gap.contains("purged") && gap.contains("does not follow"),
            "{gap}"
        );
        // Recovery from after the gap works.
        c.archive_between("c", "s1", &pos("b.000003", 4), &pos("b.000003", 80))
            .expect("accepted");
    }

    #[test]
    fn a_gtid_discontinuity_is_a_gap() {
        let mut c = catalog();
        let mut a = seg("b.000001", 0, 100, false);
        a.first_gtid = "0-1-1".into();
        a.last_gtid = "0-1-5".into();
        let mut b = seg("b.000001", 100, 200, false);
        b.first_gtid = "0-1-9".into();
        b.last_gtid = "0-1-9".into();
        c.archive_segments("c", "s1", vec![a, b]).expect("accepted");
        let err = c
            .archive_between("c", "s1", &pos("b.000001", 4), &pos("b.000001", 150))
            .expect_err("refused");
        assert!(
            err.contains("GTID discontinuity in domain 0: 0-1-9 follows 0-1-5"),
            "{err}"
        );
        // Before the gap, recovery is fine.
        c.archive_between("c", "s1", &pos("b.000001", 4), &pos("b.000001", 90))
            .expect("accepted");
    }
}
