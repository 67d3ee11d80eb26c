//! Comparing the data of two servers: `CHECKSUM TABLE` per table, and a
//! normalised `mariadb-dump` text (schema, routines, triggers, events and
//! rows in primary-key order).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use mysql_async::Conn;
use mysql_async::prelude::Queryable as _;

use crate::causal::quote_ident;
use crate::mariadb::{MariaDb, url_opts};

/// How long one `mariadb-dump` may run.
const DUMP_TIMEOUT: Duration = Duration::from_secs(600);

/// `CHECKSUM TABLE` of every base table in `db` (views excluded), by table
/// name. `None` means the server reported NULL (the table vanished).
pub async fn checksum_tables(url: &str, db: &str) -> anyhow::Result<BTreeMap<String, Option<u64>>> {
    let opts = url_opts(url)?;
    let mut conn = Conn::new(opts)
        .await
        .with_context(|| format!("connect to {url}"))?;
    let tables: Vec<String> = conn
        .exec(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY table_name",
            (db,),
        )
        .await
        .with_context(|| format!("list the tables of {db} on {url}"))?;
    let mut sums = BTreeMap::new();
    for table in tables {
        let sql = format!("CHECKSUM TABLE {}.{}", quote_ident(db), quote_ident(&table));
        let row: Option<(String, Option<u64>)> = conn
            .query_first(&sql)
            .await
            .with_context(|| format!("run `{sql}` on {url}"))?;
        let (_, sum) = row.with_context(|| format!("`{sql}` on {url} returned no row"))?;
        sums.insert(table, sum);
    }
    conn.disconnect().await.ok();
    Ok(sums)
}

/// Drops the `AUTO_INCREMENT=N ` table option from `CREATE TABLE` lines: the
/// counter may legitimately differ between a server and its restore.
/// Every other byte is kept, `\r` included (a lost carriage return is a
/// difference).
pub fn normalise_dump(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.starts_with(") ENGINE=")
            && let Some(start) = line.find(" AUTO_INCREMENT=")
        {
            let digits_from = start + " AUTO_INCREMENT=".len();
            let digits = line[digits_from..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            out.push_str(&line[..start]);
            out.push_str(&line[digits_from + digits..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The `mariadb-dump` text of `databases` on the server at 127.0.0.1:`port`
/// (schema, routines, triggers, events, rows ordered by primary key; no
/// dates, no comments), normalised by [`normalise_dump`].
pub async fn dump_text(port: u16, databases: &[&str]) -> anyhow::Result<String> {
    if databases.is_empty() {
        bail!("dump_text needs at least one database");
    }
    let mut cmd = tokio::process::Command::new("mariadb-dump");
    cmd.arg("--host=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--user=root")
        .args([
            "--skip-dump-date",
            "--hex-blob",
            "--skip-comments",
            "--routines",
            "--triggers",
            "--events",
            "--order-by-primary",
            "--databases",
        ])
        .args(databases)
        .kill_on_drop(true);
    let out = tokio::time::timeout(DUMP_TIMEOUT, cmd.output())
        .await
        .with_context(|| {
            format!("mariadb-dump of {databases:?} on port {port} ran over {DUMP_TIMEOUT:?}")
        })?
        .with_context(|| format!("run mariadb-dump on port {port}"))?;
    if !out.status.success() {
        bail!(
            "mariadb-dump of {databases:?} on port {port} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)
        .with_context(|| format!("mariadb-dump output on port {port} is not UTF-8"))?;
    Ok(normalise_dump(&text))
}

/// Describes the first line where `a` and `b` differ, or `None` if equal.
/// Lines end at `\n` only, so a lost `\r` is a difference; control
/// characters are shown escaped.
pub fn first_difference(a: &str, b: &str) -> Option<String> {
    const SHOW: usize = 300;
    let clip = |s: &str| -> String {
        let s = s.strip_suffix('\n').unwrap_or(s);
        let shown = if s.len() <= SHOW {
            s
        } else {
            let mut end = SHOW;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        };
        let shown: String = shown
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_debug().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        if s.len() <= SHOW {
            shown
        } else {
            format!("{shown}... ({} bytes)", s.len())
        }
    };
    let (mut la, mut lb) = (a.split_inclusive('\n'), b.split_inclusive('\n'));
    let mut line = 1;
    loop {
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x == y => line += 1,
            (x, y) => {
                return Some(format!(
                    "line {line}:\n  left:  {}\n  right: {}",
                    x.map_or_else(|| "(end of text)".to_string(), clip),
                    y.map_or_else(|| "(end of text)".to_string(), clip)
                ));
            }
        }
    }
}

/// Checks that `a` and `b` hold the same data in `dbs`: the same tables with
/// the same checksums, and the same normalised dump text. The error names the
/// servers, the tables that differ and the first differing dump line.
pub async fn assert_same_data(a: &MariaDb, b: &MariaDb, dbs: &[&str]) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for db in dbs {
        let sa = checksum_tables(&a.url(), db).await?;
        let sb = checksum_tables(&b.url(), db).await?;
        if sa != sb {
            let tables: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
            for t in tables {
                let (x, y) = (sa.get(t), sb.get(t));
                if x != y {
                    problems.push(format!(
                        "{db}.{t}: checksum {x:?} vs {y:?} (None = table missing)"
                    ));
                }
            }
        }
    }
    let da = dump_text(a.port(), dbs).await?;
    let db_ = dump_text(b.port(), dbs).await?;
    if let Some(diff) = first_difference(&da, &db_) {
        problems.push(format!("dumps differ at {diff}"));
    }
    if !problems.is_empty() {
        bail!(
            "data of {} ({}) and {} ({}) differ in {dbs:?}:\n  {}",
            a.name(),
            a.address(),
            b.name(),
            b.address(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn auto_increment_is_dropped_from_create_table_lines_only() {
        let dump = ") ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT CHARSET=latin1;\nINSERT INTO t VALUES (' AUTO_INCREMENT=1 ');\n";
        assert_eq!(
            normalise_dump(dump),
            ") ENGINE=InnoDB DEFAULT CHARSET=latin1;\nINSERT INTO t VALUES (' AUTO_INCREMENT=1 ');\n"
        );
        assert_eq!(
            normalise_dump("a\r\nb"),
            "a\r\nb",
            "every other byte is kept"
        );
    }

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        let d = first_difference("a\nb\n", "a\nc\n").expect("differs");
        assert!(d.starts_with("line 2:"), "{d}");
        let d = first_difference("a\n", "a\nc\n").expect("differs");
        assert!(d.contains("(end of text)"), "{d}");
        let d = first_difference("x\r\ny\n", "x\ny\n").expect("a lost \\r differs");
        assert!(d.starts_with("line 1:") && d.contains("x\\r"), "{d}");
    }
}
