//! The pipe method: one `mariadb-binlog --skip-gtid-strict-mode
//! --disable-log-bin --start-position=S --stop-position=E FILE... | mariadb`
//! session over every file, so temporary tables survive from one file to
//! the next. The password goes in the environment (`MYSQL_PWD`), never in
//! argv.
//!
//! The text passes through this process on its way, which follows it: the
//! `# at N` lines give the position (progress), each Format_description
//! ("Start: binlog v 4") the next file, and each `GTID d-s-n` comment where
//! a transaction starts and on which line. When `mariadb` stops on an error
//! ("ERROR ... at line L"), every transaction before the one holding line L
//! has committed: the target's `gtid_slave_pos` is set to them, so that a
//! rerun resumes at the failed one, and the error names its file and
//! position.

use std::process::Stdio;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::Command;

use super::Job;
use super::scan::Gtid;
use crate::error::{Error, MysqlContext, Result};
use crate::mysql::{Server, SslMode, literal};

const BINLOG_TOOL: &str = "mariadb-binlog";
const CLIENT: &str = "mariadb";

/// A transaction in the text: its first line, file index and position.
#[derive(Debug, Clone, Copy)]
struct TxLine {
    line: u64,
    file: usize,
    pos: u64,
    gtid: Gtid,
}

/// Follows `mariadb-binlog` output line by line.
#[derive(Debug, Default)]
struct Follow {
    line: u64,
    /// Format_description events seen (the first opens the first file).
    files_seen: usize,
    pos: u64,
    txs: Vec<TxLine>,
}

impl Follow {
    /// Takes one line; returns the new position when it is a `# at N` line.
    fn take(&mut self, first_file: usize, text: &[u8]) -> Option<u64> {
        self.line += 1;
        if text.first() != Some(&b'#') {
            return None;
        }
        if let Some(n) = text.strip_prefix(b"# at ") {
            let n = std::str::from_utf8(n).ok()?.trim().parse().ok()?;
            self.pos = n;
            return Some(n);
        }
        if find(text, b"Start: binlog v 4").is_some() {
            self.files_seen += 1;
        } else if let Some(at) = find(text, b"\tGTID ") {
            let rest = &text[at + 6..];
            let token = rest.split(|b| b.is_ascii_whitespace()).next()?;
            let gtid: Gtid = std::str::from_utf8(token).ok()?.parse().ok()?;
            self.txs.push(TxLine {
                line: self.line,
                file: first_file + self.files_seen.saturating_sub(1),
                pos: self.pos,
                gtid,
            });
        }
        None
    }

    fn file(&self, first_file: usize) -> usize {
        first_file + self.files_seen.saturating_sub(1)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The line number of "ERROR 1062 (23000) at line 123: ..." in the client's
/// error output.
fn error_line(stderr: &str) -> Option<u64> {
    let rest = &stderr[stderr.find(" at line ")? + 9..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub(super) async fn run(target: &Server, conn: &mut Conn, job: &Job<'_>) -> Result<()> {
    let addr = job.addr;
    let files = &job.files[job.from.0..];
    let fail = |file: usize, position: u64, reason: String| Error::Replay {
        server: addr.to_string(),
        file: job.scanned.names[file].clone(),
        position,
        reason,
    };

    let mut binlog = Command::new(BINLOG_TOOL);
    binlog
        .arg("--no-defaults")
        .arg("--skip-gtid-strict-mode")
        .arg("--disable-log-bin")
        .arg(format!("--start-position={}", job.from.1))
        .arg(format!("--stop-position={}", job.stop))
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (host, port, user, password) = target.login();
    let mut client = Command::new(CLIENT);
    client
        .arg("--no-defaults")
        .arg(format!("--host={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--user={user}"))
        .arg("--binary-mode")
        .env_remove("MYSQL_PWD")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        client.env("MYSQL_PWD", pw);
    }
    match target.ssl_mode() {
        SslMode::Disabled => {
            client.arg("--skip-ssl");
        }
        SslMode::Preferred => {}
        SslMode::Required => {
            client.arg("--ssl");
        }
        SslMode::VerifyCa | SslMode::VerifyIdentity => {
            client.arg("--ssl").arg("--ssl-verify-server-cert");
            if let Some(ca) = target.ssl_ca() {
                client.arg(format!("--ssl-ca={}", ca.display()));
            }
        }
    }

    let spawn_error = |tool: &str, e: std::io::Error| {
        fail(
            job.from.0,
            job.from.1,
            format!("cannot start {tool}: {e} (is the MariaDB client installed?)"),
        )
    };
    let mut binlog = binlog.spawn().map_err(|e| spawn_error(BINLOG_TOOL, e))?;
    let mut client = client.spawn().map_err(|e| spawn_error(CLIENT, e))?;
    let (Some(out), Some(binlog_err), Some(input), Some(client_err)) = (
        binlog.stdout.take(),
        binlog.stderr.take(),
        client.stdin.take(),
        client.stderr.take(),
    ) else {
        return Err(fail(job.from.0, job.from.1, "no pipes to the tools".into()));
    };
    let binlog_err = tokio::spawn(read_all(binlog_err));
    let client_err = tokio::spawn(read_all(client_err));

    let mut follow = Follow::default();
    let mut reader = BufReader::with_capacity(1 << 20, out);
    let mut writer = BufWriter::with_capacity(1 << 20, input);
    let mut line = Vec::with_capacity(4096);
    let mut reported = 0u64;
    let mut broken_pipe = false;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await.map_err(|e| {
            fail(
                follow.file(job.from.0),
                follow.pos,
                format!("read {BINLOG_TOOL} output: {e}"),
            )
        })?;
        if n == 0 {
            break;
        }
        if let Some(pos) = follow.take(job.from.0, &line) {
            let applied = job.applied(follow.file(job.from.0), pos);
            if applied > reported {
                job.progress.add_bytes(applied - reported);
                reported = applied;
            }
        }
        if writer.write_all(&line).await.is_err() {
            broken_pipe = true;
            break;
        }
    }
    if !broken_pipe {
        let _ = writer.flush().await;
    }
    drop(writer);
    let client_status = client.wait().await;
    if broken_pipe {
        let _ = binlog.start_kill();
    }
    let binlog_status = binlog.wait().await;
    let client_err = client_err.await.unwrap_or_default();
    let binlog_err = binlog_err.await.unwrap_or_default();
    let client_ok = client_status.as_ref().is_ok_and(|s| s.success());
    if !client_ok {
        let status = match &client_status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        // The client echoes the failed statement between dashed lines
        // before its "ERROR ..." line: keep the error lines.
        let errors: Vec<&str> = client_err
            .lines()
            .filter(|l| l.starts_with("ERROR"))
            .collect();
        let text = if errors.is_empty() {
            client_err.trim().to_string()
        } else {
            errors.join("; ")
        };
        let failed = error_line(&text)
            .map(|l| follow.txs.iter().take_while(|t| t.line <= l).count())
            .filter(|n| *n > 0);
        let Some(n) = failed else {
            return Err(fail(
                follow.file(job.from.0),
                follow.pos,
                format!("{CLIENT} stopped ({status}) before the first transaction: {text}"),
            ));
        };
        // Transactions 0..n-1 committed; transaction n-1 failed.
        let bad = follow.txs[n - 1];
        let mut done = job.initial.clone();
        for t in &follow.txs[..n - 1] {
            done.apply(t.gtid);
        }
        if n > 1 {
            conn.query_drop(format!(
                "SET GLOBAL gtid_slave_pos = {}",
                literal(&done.to_string())
            ))
            .await
            .on(
                addr,
                "record the transactions the pipe applied before it failed",
            )?;
        }
        return Err(fail(
            bad.file,
            bad.pos,
            format!(
                "transaction {} failed in {CLIENT} ({status}): {text}; {} transactions before it were applied and gtid_slave_pos records them",
                bad.gtid,
                n - 1
            ),
        ));
    }
    match binlog_status {
        Ok(s) if s.success() => {
            // The last `# at` is the start of the last event applied.
            let total = job.applied(job.last(), job.stop);
            job.progress.add_bytes(total.saturating_sub(reported));
            Ok(())
        }
        other => {
            let status = match other {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            Err(fail(
                follow.file(job.from.0),
                follow.pos,
                format!("{BINLOG_TOOL} failed ({status}): {}", binlog_err.trim()),
            ))
        }
    }
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_positions_files_and_transactions() {
        let text = "/*!40019 SET @@session.max_insert_delayed_threads=0*/;\n\
# at 4\n\
#261129  9:40:00 server id 1  end_log_pos 256 CRC32 0x1a2b3c4d \tStart: binlog v 4, server v 10.11.19-MariaDB-log created 261129  9:40:00\n\
# at 400\n\
#261129  9:40:00 server id 1  end_log_pos 442 CRC32 0x1a2b3c4d \tGTID 1-1-7 trans\n\
BEGIN\n\
# at 4\n\
#261129  9:40:01 server id 1  end_log_pos 256 CRC32 0x1a2b3c4d \tStart: binlog v 4, server v 10.11.19-MariaDB-log created 261129  9:40:01\n\
# at 300\n\
#261129  9:40:01 server id 1  end_log_pos 342 CRC32 0x1a2b3c4d \tGTID 1-1-8 ddl\n";
        let mut f = Follow::default();
        let mut positions = Vec::new();
        for line in text.split_inclusive('\n') {
            if let Some(p) = f.take(2, line.as_bytes()) {
                positions.push(p);
            }
        }
        assert_eq!(positions, vec![4, 400, 4, 300]);
        assert_eq!(f.txs.len(), 2);
        assert_eq!((f.txs[0].line, f.txs[0].file, f.txs[0].pos), (5, 2, 400));
        assert_eq!(f.txs[0].gtid.to_string(), "1-1-7");
        assert_eq!((f.txs[1].file, f.txs[1].pos), (3, 300));
        assert_eq!(f.txs[1].gtid.seq, 8);
        assert_eq!(
            error_line("ERROR 1062 (23000) at line 1234: Duplicate entry '5' for key 'PRIMARY'"),
            Some(1234)
        );
        assert_eq!(error_line("ERROR 2002 (HY000): Can't connect"), None);
    }
}
