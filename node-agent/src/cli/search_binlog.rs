//! `lockstep-agent search-binlog DIR`: index binlog files on this host (an
//! archive directory, a datadir, or one file) and list the transactions
//! that match, one per line, or one JSON object per line with `--json`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use clap::Args;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::binlog::index::{self, Filter, Kind, TxnEntry};

#[derive(Debug, Args)]
pub struct SearchBinlogArgs {
    /// A directory of binlogs (an archive directory or a server's datadir:
    /// every `NAME.NNNNNN` file that is a binlog) or one binlog file.
    pub dir: PathBuf,
    /// Only transactions touching this table: DB.T, DB.* or T
    /// (case-insensitive); a dropped or created database matches its tables.
    #[arg(long)]
    pub table: Option<String>,
    /// Only transactions making this kind of change.
    #[arg(long = "type", value_enum)]
    pub kind: Option<Kind>,
    /// Only transactions whose summary or tables contain TEXT
    /// (case-insensitive).
    #[arg(long)]
    pub grep: Option<String>,
    /// Only transactions at or after T (RFC 3339, or unix seconds).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<u32>,
    /// Only transactions at or before T (RFC 3339, or unix seconds).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<u32>,
    /// One JSON object per transaction, one per line.
    #[arg(long)]
    pub json: bool,
}

/// A time as unix seconds: `1767225600` or `2026-01-01T00:00:00Z`.
pub fn parse_time(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        format!("{s:?} is neither unix seconds nor an RFC 3339 time (2026-01-01T00:00:00Z): {e}")
    })?;
    u32::try_from(t.unix_timestamp()).map_err(|_| format!("{s:?} is out of the binlog's range"))
}

fn rfc3339(unix: u32) -> String {
    OffsetDateTime::from_unix_timestamp(i64::from(unix))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// One human line: `FILE:POS  GTID  TIME  KINDS  SUMMARY`.
fn line(e: &TxnEntry) -> String {
    let kinds: Vec<&str> = e.kinds.iter().map(|k| k.as_str()).collect();
    format!(
        "{}:{}  {}  {}  {}  {}",
        e.file,
        e.pos,
        e.gtid.as_deref().unwrap_or("-"),
        rfc3339(e.time),
        kinds.join(","),
        e.summary
    )
}

pub async fn run(a: SearchBinlogArgs) -> anyhow::Result<()> {
    let filter = Filter {
        table: a.table,
        kind: a.kind,
        grep: a.grep,
        since: a.since,
        until: a.until,
    };
    let dir = a.dir.clone();
    let json = a.json;
    // Entries are printed as they are read: an archive may hold millions.
    let (seen, shown) = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let (mut seen, mut shown) = (0usize, 0usize);
        let mut failed = None;
        index::index_path_with(&dir, &mut |e| {
            seen += 1;
            if failed.is_some() || !filter.matches(&e) {
                return;
            }
            shown += 1;
            let text = if json {
                serde_json::to_string(&e).map_err(std::io::Error::other)
            } else {
                Ok(line(&e))
            };
            if let Err(err) = text.and_then(|t| writeln!(out, "{t}")) {
                failed = Some(err);
            }
        })?;
        if let Some(err) = failed {
            return Err(anyhow::Error::new(err).context("write to stdout"));
        }
        out.flush().context("write to stdout")?;
        Ok::<_, anyhow::Error>((seen, shown))
    })
    .await??;
    if !a.json {
        eprintln!(
            "{shown} of {seen} transactions in {} match",
            a.dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1767225600"), Ok(1_767_225_600));
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Ok(1_767_225_600));
        assert_eq!(parse_time("2026-01-01T01:00:00+01:00"), Ok(1_767_225_600));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
