//! A dump must not stall production. Every table a snapshot transaction has
//! read stays under its metadata lock (MDL) until that transaction ends, so
//! an `ALTER TABLE` on it waits ("Waiting for table metadata lock") and every
//! later query on the table queues behind the ALTER for as long as the dump
//! runs. While a dump runs, [`DdlGuard`] polls the processlist on its own
//! connection for DDL waiting on a table our snapshots hold, and decides
//! when the dump gives way ([`DdlPolicy`]): the dump then kills its own
//! snapshot connections, which releases their locks, and fails naming the
//! DDL.
//!
//! Which tables are ours is tracked per snapshot connection in [`Touched`]:
//! a table counts from the first query that reads it until that
//! connection's transaction ends, which is exactly how long MariaDB and
//! MySQL keep the lock (schema reads such as `SHOW CREATE TABLE` take it
//! only for the statement). `information_schema.METADATA_LOCK_INFO` would
//! say who blocks whom, but it exists only where its plugin is loaded, so
//! the guard does not rely on it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, MysqlContext, Result};
use crate::mysql::Server;

/// How often the processlist is polled while a dump runs.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// The processlist state of a statement waiting for a metadata lock (the
/// same text on MariaDB and MySQL).
const MDL_WAIT_STATE: &str = "Waiting for table metadata lock";
/// How much of a statement goes into messages.
const SHOWN_CHARS: usize = 200;

/// What a dump does when DDL waits for a table its snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DdlPolicy {
    /// Fail the dump at once (within a poll), releasing the table.
    #[default]
    Yield,
    /// Let the DDL (and every query queued behind it) wait up to `ddl_wait`
    /// for the dump to finish, then fail the dump.
    Wait,
}

impl DdlPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DdlPolicy::Yield => "yield",
            DdlPolicy::Wait => "wait",
        }
    }
}

/// The DDL policy of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdlOptions {
    pub policy: DdlPolicy,
    /// With [`DdlPolicy::Wait`]: how long a DDL may wait before the dump
    /// gives way.
    pub wait: Duration,
}

impl Default for DdlOptions {
    fn default() -> Self {
        DdlOptions {
            policy: DdlPolicy::Yield,
            wait: Duration::from_secs(30),
        }
    }
}

impl DdlOptions {
    /// How long a DDL may wait before the dump yields to it.
    fn grace(&self) -> Duration {
        match self.policy {
            DdlPolicy::Yield => Duration::ZERO,
            DdlPolicy::Wait => self.wait,
        }
    }

    /// Checks the settings; `what` names them in errors ("ddl_wait").
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.policy == DdlPolicy::Wait
            && (self.wait.is_zero() || self.wait > Duration::from_secs(24 * 3600))
        {
            return Err(Error::Config(format!(
                "{what} must be between 1ms and 24h with ddl_policy wait, got {} (use ddl_policy yield to give way at once)",
                humantime::format_duration(self.wait)
            )));
        }
        Ok(())
    }
}

/// A table as `(database, table)`, lower-cased: matching is
/// case-insensitive, so it errs towards yielding.
type TableKey = (String, String);

fn key(db: &str, table: &str) -> TableKey {
    (db.to_lowercase(), table.to_lowercase())
}

/// The tables each snapshot connection has read in its open transaction.
#[derive(Debug, Clone, Default)]
pub struct Touched(Arc<Mutex<HashMap<u32, HashSet<TableKey>>>>);

impl Touched {
    /// Connection `conn` is about to read `db.table`.
    pub fn touch(&self, conn: u32, db: &str, table: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(conn)
            .or_default()
            .insert(key(db, table));
    }

    /// Connection `conn` ended its transaction: it holds no table any more.
    pub fn release(&self, conn: u32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
    }

    /// Whether a DDL on `targets` (with `default_db` as its session's
    /// database) waits for a lock some snapshot connection holds.
    fn blocks(&self, targets: &Targets, default_db: Option<&str>) -> bool {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = held.values().flatten();
        match targets {
            Targets::Tables(names) => names.iter().any(|(db, table)| {
                let table = table.to_lowercase();
                let db = db.as_deref().or(default_db).map(str::to_lowercase);
                // No database known: any table of that name.
                held.values()
                    .flatten()
                    .any(|(d, t)| *t == table && db.as_ref().is_none_or(|db| d == db))
            }),
            Targets::Database(db) => {
                let db = db.to_lowercase();
                all.any(|(d, _)| *d == db)
            }
            Targets::Unknown => all.next().is_some(),
        }
    }
}

/// What a DDL statement needs exclusive access to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Targets {
    /// These tables (database if the statement names it).
    Tables(Vec<(Option<String>, String)>),
    /// Every table of a database (`DROP DATABASE`).
    Database(String),
    /// A DDL whose tables we cannot tell: it counts as ours if our
    /// snapshots hold any table.
    Unknown,
}

/// One token of a statement: an identifier or keyword (`quoted` if it was
/// in backticks), or a punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word { text: String, quoted: bool },
    Punct(char),
}

/// Splits the start of a statement into tokens, skipping whitespace,
/// comments and string literals. Enough for the head of a DDL statement.
fn tokens(stmt: &str, max: usize) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = stmt.chars().peekable();
    while out.len() < max {
        let Some(c) = chars.next() else { break };
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '`' => {
                let mut text = String::new();
                while let Some(c) = chars.next() {
                    if c == '`' {
                        if chars.peek() == Some(&'`') {
                            chars.next();
                            text.push('`');
                        } else {
                            break;
                        }
                    } else {
                        text.push(c);
                    }
                }
                out.push(Token::Word { text, quoted: true });
            }
            '\'' | '"' => {
                let q = c;
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == q {
                        if chars.peek() == Some(&q) {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                out.push(Token::Punct('\''));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut text = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_alphanumeric() || n == '_' || n == '$' {
                        text.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word {
                    text,
                    quoted: false,
                });
            }
            c => out.push(Token::Punct(c)),
        }
    }
    out
}

/// A cursor over the tokens of one statement.
struct Parser {
    toks: Vec<Token>,
    at: usize,
}

impl Parser {
    /// Consumes the next token if it is the (unquoted) keyword `kw`.
    fn eat(&mut self, kw: &str) -> bool {
        match self.toks.get(self.at) {
            Some(Token::Word {
                text,
                quoted: false,
            }) if text.eq_ignore_ascii_case(kw) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    /// Consumes keywords while they are in `kws`.
    fn skip_any(&mut self, kws: &[&str]) {
        while kws.iter().any(|k| self.eat(k)) {}
    }

    /// Consumes `kws` in order if they all come next.
    fn eat_seq(&mut self, kws: &[&str]) -> bool {
        let start = self.at;
        if kws.iter().all(|k| self.eat(k)) {
            return true;
        }
        self.at = start;
        false
    }

    fn punct(&mut self, p: char) -> bool {
        if self.toks.get(self.at) == Some(&Token::Punct(p)) {
            self.at += 1;
            return true;
        }
        false
    }

    fn word(&mut self) -> Option<String> {
        match self.toks.get(self.at) {
            Some(Token::Word { text, .. }) => {
                self.at += 1;
                Some(text.clone())
            }
            _ => None,
        }
    }

    /// `name` or `db.name`.
    fn table(&mut self) -> Option<(Option<String>, String)> {
        let first = self.word()?;
        if self.punct('.') {
            let second = self.word()?;
            return Some((Some(first), second));
        }
        Some((None, first))
    }

    /// `t1, t2, ...`.
    fn tables(&mut self) -> Option<Vec<(Option<String>, String)>> {
        let mut out = vec![self.table()?];
        while self.punct(',') {
            out.push(self.table()?);
        }
        Some(out)
    }

    /// Skips to just after the keyword `kw`.
    fn skip_past(&mut self, kw: &str) -> bool {
        while self.at < self.toks.len() {
            if self.eat(kw) {
                return true;
            }
            self.at += 1;
        }
        false
    }
}

/// What a DDL statement needs exclusive access to; `None` if `stmt` is not
/// DDL (DML and queries waiting for a metadata lock are queued behind
/// something else, not the cause).
fn ddl_targets(stmt: &str) -> Option<Targets> {
    let mut p = Parser {
        toks: tokens(stmt, 64),
        at: 0,
    };
    let tables = |p: &mut Parser| p.tables().map_or(Targets::Unknown, Targets::Tables);
    let one = |p: &mut Parser| {
        p.table()
            .map_or(Targets::Unknown, |t| Targets::Tables(vec![t]))
    };
    if p.eat("ALTER") {
        p.skip_any(&["ONLINE", "OFFLINE", "IGNORE"]);
        if p.eat("TABLE") {
            p.eat_seq(&["IF", "EXISTS"]);
            return Some(one(&mut p));
        }
        return Some(Targets::Unknown);
    }
    if p.eat("TRUNCATE") {
        p.eat("TABLE");
        return Some(one(&mut p));
    }
    if p.eat("RENAME") {
        if !p.eat("TABLE") && !p.eat("TABLES") {
            return Some(Targets::Unknown);
        }
        let mut names = Vec::new();
        loop {
            let Some(from) = p.table() else {
                return Some(Targets::Unknown);
            };
            names.push(from);
            if !p.eat("TO") {
                break;
            }
            if let Some(to) = p.table() {
                names.push(to);
            }
            if !p.punct(',') {
                break;
            }
        }
        return Some(Targets::Tables(names));
    }
    if p.eat("OPTIMIZE") || p.eat("REPAIR") || p.eat("ANALYZE") {
        p.skip_any(&["NO_WRITE_TO_BINLOG", "LOCAL"]);
        if p.eat("TABLE") || p.eat("TABLES") {
            return Some(tables(&mut p));
        }
        return None;
    }
    if p.eat("DROP") {
        p.eat("TEMPORARY");
        if p.eat("TABLE") || p.eat("TABLES") {
            p.eat_seq(&["IF", "EXISTS"]);
            return Some(tables(&mut p));
        }
        if p.eat("DATABASE") || p.eat("SCHEMA") {
            p.eat_seq(&["IF", "EXISTS"]);
            return Some(p.word().map_or(Targets::Unknown, Targets::Database));
        }
        p.skip_any(&["ONLINE", "OFFLINE"]);
        if p.eat("INDEX") && p.skip_past("ON") {
            return Some(one(&mut p));
        }
        return Some(Targets::Unknown);
    }
    if p.eat("CREATE") {
        p.eat_seq(&["OR", "REPLACE"]);
        p.skip_any(&[
            "ONLINE",
            "OFFLINE",
            "UNIQUE",
            "FULLTEXT",
            "SPATIAL",
            "TEMPORARY",
        ]);
        if p.eat("TABLE") {
            p.eat_seq(&["IF", "NOT", "EXISTS"]);
            return Some(one(&mut p));
        }
        if p.eat("INDEX") && p.skip_past("ON") {
            return Some(one(&mut p));
        }
        // CREATE [DEFINER = ...] TRIGGER name BEFORE|AFTER event ON table.
        let start = p.at;
        if p.skip_past("TRIGGER") && p.skip_past("ON") {
            return Some(one(&mut p));
        }
        p.at = start;
        return Some(Targets::Unknown);
    }
    None
}

/// A DDL statement the dump gives way to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub thread_id: u64,
    pub user: String,
    pub statement: String,
    /// How long it had waited when the dump gave way (as far as the guard
    /// saw it: from the first poll that found it).
    pub waited: Duration,
}

/// Why a dump failed: it gave way to DDL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "server {server}: backup {backup_id} yielded to DDL (thread {thread_id}, user {user}){after}: {statement}; the backup's snapshot connections were closed so the DDL could run; take the backup again once it is done"
)]
pub struct Yielded {
    pub server: String,
    pub backup_id: String,
    pub thread_id: u64,
    pub user: String,
    /// Empty, or how long the DDL waited under `ddl_policy = wait`.
    pub after: String,
    pub statement: String,
}

/// (thread id, user, default database, statement).
type WaitingRow = (u64, Option<String>, Option<String>, Option<Vec<u8>>);

/// Watches the server for DDL waiting on the dump's snapshots.
pub struct DdlGuard {
    server: Server,
    conn: Option<Conn>,
    opts: DdlOptions,
    /// Our snapshot connections: never a DDL we yield to.
    ours: HashSet<u64>,
    touched: Touched,
    /// When each waiting DDL thread was first seen.
    first_seen: HashMap<u64, Instant>,
    /// A poll failed and that was logged (log once per outage).
    blind: bool,
}

impl std::fmt::Debug for DdlGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DdlGuard")
            .field("server", &self.server)
            .field("opts", &self.opts)
            .field("ours", &self.ours)
            .finish()
    }
}

impl DdlGuard {
    /// Opens the guard's connection. `ours` are the snapshot connections'
    /// thread ids; `touched` is filled by the dump as it reads.
    pub async fn open(
        server: &Server,
        opts: DdlOptions,
        ours: impl IntoIterator<Item = u32>,
        touched: Touched,
    ) -> Result<DdlGuard> {
        let conn = server.connect("open the DDL watch connection").await?;
        Ok(DdlGuard {
            server: server.clone(),
            conn: Some(conn),
            opts,
            ours: ours.into_iter().map(u64::from).collect(),
            touched,
            first_seen: HashMap::new(),
            blind: false,
        })
    }

    /// Polls until the dump must give way; returns the DDL it yields to.
    /// Never returns while no DDL waits on our tables. A failed poll is
    /// logged and retried on a new connection at the next tick.
    pub async fn watch(&mut self) -> Waiter {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.poll().await {
                Ok(Some(w)) => return w,
                Ok(None) => self.blind = false,
                Err(e) => {
                    if !self.blind {
                        tracing::warn!(server = %self.server.address(), error = %e, "cannot watch for DDL waiting on the dump; retrying");
                        self.blind = true;
                    }
                    self.conn = None;
                }
            }
        }
    }

    async fn poll(&mut self) -> Result<Option<Waiter>> {
        let addr = self.server.address().to_string();
        if self.conn.is_none() {
            self.conn = Some(
                self.server
                    .connect("reopen the DDL watch connection")
                    .await?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let rows: Vec<WaitingRow> = conn
            .query(format!(
                "SELECT ID, USER, DB, INFO FROM information_schema.PROCESSLIST \
                 WHERE STATE = '{MDL_WAIT_STATE}' AND INFO IS NOT NULL AND ID <> CONNECTION_ID()"
            ))
            .await
            .on(&addr, "list statements waiting for a metadata lock")?;
        let now = Instant::now();
        let mut seen = HashSet::new();
        let mut due: Option<Waiter> = None;
        for (id, user, db, info) in rows {
            if self.ours.contains(&id) {
                continue;
            }
            let stmt = String::from_utf8_lossy(&info.unwrap_or_default()).into_owned();
            let Some(targets) = ddl_targets(&stmt) else {
                continue;
            };
            if !self.touched.blocks(&targets, db.as_deref()) {
                continue;
            }
            seen.insert(id);
            let user = user.unwrap_or_default();
            let shown: String = stmt.chars().take(SHOWN_CHARS).collect();
            let first = *self.first_seen.entry(id).or_insert_with(|| {
                if self.opts.policy == DdlPolicy::Wait {
                    tracing::warn!(
                        server = %addr,
                        thread = id,
                        user = %user,
                        statement = %shown,
                        wait = %humantime::format_duration(self.opts.wait),
                        "a DDL waits for a table the dump holds; the dump gives way if it has not finished by then"
                    );
                }
                now
            });
            let waited = now - first;
            if waited >= self.opts.grace() && due.as_ref().is_none_or(|d| waited > d.waited) {
                due = Some(Waiter {
                    thread_id: id,
                    user,
                    statement: shown,
                    waited,
                });
            }
        }
        self.first_seen.retain(|id, _| seen.contains(id));
        Ok(due)
    }

    /// Kills our snapshot connections: the server ends their transactions,
    /// which releases every table they hold.
    pub async fn release_snapshots(&mut self) {
        let addr = self.server.address().to_string();
        if self.conn.is_none() {
            match self
                .server
                .connect("open a connection to close the snapshots")
                .await
            {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    tracing::warn!(server = %addr, error = %e, "cannot kill the snapshot connections; they close when the dump drops them");
                    return;
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        for id in &self.ours {
            // 1094 (unknown thread): that connection has ended already.
            if let Err(e) = conn.query_drop(format!("KILL CONNECTION {id}")).await {
                tracing::debug!(server = %addr, thread = id, error = %e, "kill snapshot connection");
            }
        }
    }

    /// Closes the guard's connection.
    pub async fn close(mut self) {
        if let Some(c) = self.conn.take() {
            let _ = c.disconnect().await;
        }
    }

    /// The error a dump that gave way to `w` fails with.
    pub fn yield_error(&self, backup_id: &str, w: Waiter) -> Error {
        let after = match self.opts.policy {
            DdlPolicy::Yield => String::new(),
            DdlPolicy::Wait => format!(
                " after it waited {} (ddl_policy wait, ddl_wait {})",
                humantime::format_duration(Duration::from_millis(w.waited.as_millis() as u64)),
                humantime::format_duration(self.opts.wait)
            ),
        };
        Error::DdlYield(Box::new(Yielded {
            server: self.server.address().to_string(),
            backup_id: backup_id.to_string(),
            thread_id: w.thread_id,
            user: w.user,
            after,
            statement: w.statement,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: Option<&str>, table: &str) -> (Option<String>, String) {
        (db.map(str::to_string), table.to_string())
    }

    #[test]
    fn finds_the_tables_of_ddl() {
        let tables = |s: &str| match ddl_targets(s) {
            Some(Targets::Tables(v)) => v,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(tables("ALTER TABLE big ADD c INT"), vec![t(None, "big")]);
        assert_eq!(
            tables("/* app */ alter online ignore table `my db`.`odd``name` add c int"),
            vec![t(Some("my db"), "odd`name")]
        );
        assert_eq!(
            tables("ALTER TABLE IF EXISTS a.b ENGINE=InnoDB"),
            vec![t(Some("a"), "b")]
        );
        assert_eq!(tables("truncate app.t"), vec![t(Some("app"), "t")]);
        assert_eq!(tables("TRUNCATE TABLE t"), vec![t(None, "t")]);
        assert_eq!(
            tables("DROP TABLE IF EXISTS a.x, y"),
            vec![t(Some("a"), "x"), t(None, "y")]
        );
        assert_eq!(
            tables("RENAME TABLE a TO a_old, b.n TO a"),
            vec![
                t(None, "a"),
                t(None, "a_old"),
                t(Some("b"), "n"),
                t(None, "a")
            ]
        );
        assert_eq!(
            tables("CREATE UNIQUE INDEX i ON s.t (c)"),
            vec![t(Some("s"), "t")]
        );
        assert_eq!(tables("DROP INDEX i ON t"), vec![t(None, "t")]);
        assert_eq!(
            tables("OPTIMIZE LOCAL TABLE a, b"),
            vec![t(None, "a"), t(None, "b")]
        );
        assert_eq!(
            tables("CREATE OR REPLACE TABLE t (id INT)"),
            vec![t(None, "t")]
        );
        assert_eq!(
            tables(
                "CREATE DEFINER=`root`@`%` TRIGGER tr BEFORE INSERT ON shop.orders FOR EACH ROW SET NEW.x = 1"
            ),
            vec![t(Some("shop"), "orders")]
        );
        assert_eq!(
            ddl_targets("DROP DATABASE IF EXISTS `app`"),
            Some(Targets::Database("app".into()))
        );
        assert_eq!(ddl_targets("DROP TRIGGER shop.tr"), Some(Targets::Unknown));
        assert_eq!(
            ddl_targets("CREATE VIEW v AS SELECT 1"),
            Some(Targets::Unknown)
        );
    }

    #[test]
    fn dml_and_queries_are_not_ddl() {
        for s in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t",
            "update t set a = 1",
            "-- ALTER TABLE t\nDELETE FROM t",
            "ANALYZE SELECT 1",
            "",
        ] {
            assert_eq!(ddl_targets(s), None, "{s}");
        }
    }

    #[test]
    fn only_tables_our_open_transactions_read_count() {
        let touched = Touched::default();
        let alter = ddl_targets("ALTER TABLE big ADD c INT").expect("ddl");
        assert!(!touched.blocks(&alter, Some("app")), "nothing read yet");
        touched.touch(7, "App", "Big");
        assert!(touched.blocks(&alter, Some("app")));
        assert!(
            !touched.blocks(&alter, Some("other")),
            "same name, other db"
        );
        assert!(touched.blocks(&alter, None), "no default db: by name");
        let qualified = ddl_targets("ALTER TABLE app.big FORCE").expect("ddl");
        assert!(touched.blocks(&qualified, Some("other")));
        let small = ddl_targets("ALTER TABLE app.small FORCE").expect("ddl");
        assert!(!touched.blocks(&small, Some("app")));
        assert!(touched.blocks(&Targets::Database("APP".into()), None));
        assert!(!touched.blocks(&Targets::Database("x".into()), None));
        assert!(touched.blocks(&Targets::Unknown, None));
        touched.release(7);
        assert!(!touched.blocks(&qualified, None), "its transaction ended");
        assert!(!touched.blocks(&Targets::Unknown, None));
    }

    #[test]
    fn wait_needs_a_bound() {
        let mut o = DdlOptions::default();
        assert_eq!(o.policy, DdlPolicy::Yield);
        assert!(o.validate("ddl_wait").is_ok());
        o.policy = DdlPolicy::Wait;
        assert!(o.validate("ddl_wait").is_ok());
        o.wait = Duration::ZERO;
        let err = o.validate("ddl_wait").expect_err("zero wait").to_string();
        assert!(err.contains("ddl_wait") && err.contains("yield"), "{err}");
        o.wait = Duration::from_secs(25 * 3600);
        assert!(o.validate("ddl_wait").is_err());
    }
}
