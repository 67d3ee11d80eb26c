//! Counters shared between a long job (dump, load) and whoever reports on it
//! (the CLI's progress lines, the Transfer stream).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Progress {
    rows: AtomicU64,
    bytes: AtomicU64,
    tables_done: AtomicU64,
    tables_total: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub rows: u64,
    pub bytes: u64,
    pub tables_done: u64,
    pub tables_total: u64,
}

impl Progress {
    pub fn add_rows(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn table_done(&self) {
        self.tables_done.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_tables_total(&self, n: u64) {
        self.tables_total.store(n, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            tables_done: self.tables_done.load(Ordering::Relaxed),
            tables_total: self.tables_total.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// One human line: "tables 3/10, 1,204,311 rows, 48.2 MiB, 12.1 MiB/s".
    pub fn line(&self, verb: &str, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        format!(
            "{verb}: tables {}/{}, {} rows, {}, {}/s, {:.1}s",
            self.tables_done,
            self.tables_total,
            group(self.rows),
            mib(self.bytes),
            mib((self.bytes as f64 / secs) as u64),
            secs
        )
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// 1234567 → "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(100), "100");
        let p = Progress::default();
        p.add_rows(1500);
        p.add_bytes(2 * 1024 * 1024);
        p.set_tables_total(2);
        p.table_done();
        let line = p.snapshot().line("dump", Duration::from_secs(2));
        assert_eq!(
            line,
            "dump: tables 1/2, 1,500 rows, 2.0 MiB, 1.0 MiB/s, 2.0s"
        );
    }
}
