//! SQL statements of Query and Annotate_rows events, as far as the index
//! needs them: what a statement is (transaction control, DML, DDL), the
//! tables it names, and a one-line form for summaries.
//!
//! This is a tokenizer, not a parser: it reads the first keywords and the
//! names after them, skipping comments (and entering `/*! … */` ones, which
//! the server executes). Anything it does not recognise is
//! [`What::Other`] with no tables.

/// What one statement is to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// `BEGIN`, `START TRANSACTION`, `XA START`.
    Begin,
    /// `COMMIT` or `ROLLBACK` (not `ROLLBACK TO`): ends a group.
    End,
    /// `SAVEPOINT`, `ROLLBACK TO`, `RELEASE SAVEPOINT`, `XA END`: part of
    /// a transaction, nothing to show.
    Control,
    Insert,
    Update,
    Delete,
    /// Schema and account changes: CREATE, ALTER, DROP, RENAME, TRUNCATE,
    /// GRANT, REVOKE.
    Ddl,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A bare word, as written.
    Word(String),
    /// A `` `quoted` `` identifier, unquoted.
    Ident(String),
    Punct(char),
    /// A string or number literal, or anything else.
    Lit,
}

impl Tok {
    fn is(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn name(&self) -> Option<&str> {
        match self {
            Tok::Word(w) | Tok::Ident(w) => Some(w),
            _ => None,
        }
    }
}

/// Tokens enough to classify a statement and find its tables.
const MAX_TOKENS: usize = 200;

fn tokens(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < MAX_TOKENS {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"/*!") || b[i..].starts_with(b"/*M!") {
            // An executable comment: its contents count, after the version.
            i += if b[i + 2] == b'M' { 4 } else { 3 };
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2);
        } else if b[i..].starts_with(b"*/") {
            i += 2;
        } else if c == b'#' || b[i..].starts_with(b"-- ") {
            i = find(b, i, b"\n").map_or(b.len(), |e| e + 1);
        } else if c == b'`' {
            let mut name = Vec::new();
            i += 1;
            while i < b.len() {
                if b[i] == b'`' {
                    if b.get(i + 1) == Some(&b'`') {
                        name.push(b'`');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                name.push(b[i]);
                i += 1;
            }
            out.push(Tok::Ident(String::from_utf8_lossy(&name).into_owned()));
        } else if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Tok::Lit);
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            let w = String::from_utf8_lossy(&b[start..i]).into_owned();
            out.push(if w.as_bytes()[0].is_ascii_digit() {
                Tok::Lit
            } else {
                Tok::Word(w)
            });
        } else {
            out.push(Tok::Punct(c as char));
            i += 1;
        }
    }
    out
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// What `sql` is.
pub fn classify(sql: &str) -> What {
    let t = tokens(sql);
    let w = |i: usize, kw: &str| t.get(i).is_some_and(|x| x.is(kw));
    let Some(first) = t.first() else {
        return What::Other;
    };
    let Tok::Word(first) = first else {
        return What::Other;
    };
    match first.to_ascii_uppercase().as_str() {
        "BEGIN" => What::Begin,
        "START" if w(1, "TRANSACTION") => What::Begin,
        "COMMIT" => What::End,
        "ROLLBACK" if w(1, "TO") || w(2, "TO") => What::Control,
        "ROLLBACK" => What::End,
        "SAVEPOINT" | "RELEASE" => What::Control,
        "XA" if w(1, "START") || w(1, "BEGIN") => What::Begin,
        "XA" if w(1, "END") => What::Control,
        "INSERT" | "REPLACE" | "LOAD" => What::Insert,
        "UPDATE" => What::Update,
        "DELETE" => What::Delete,
        "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE" => What::Ddl,
        _ => What::Other,
    }
}

/// Reads `[db.]name` at `t[*i]`, advancing past it: `db.name`, or
/// `default_db.name`, or `name` when there is no default database.
fn qualified(t: &[Tok], i: &mut usize, default_db: &str) -> Option<String> {
    let first = t.get(*i)?.name()?.to_string();
    *i += 1;
    if t.get(*i) == Some(&Tok::Punct('.'))
        && let Some(second) = t.get(*i + 1).and_then(Tok::name)
    {
        *i += 2;
        return Some(format!("{first}.{second}"));
    }
    Some(if default_db.is_empty() {
        first
    } else {
        format!("{default_db}.{first}")
    })
}

/// Skips any of `words` at `t[*i]` (in any order).
fn skip_words(t: &[Tok], i: &mut usize, words: &[&str]) {
    while t.get(*i).is_some_and(|x| words.iter().any(|w| x.is(w))) {
        *i += 1;
    }
}

/// Skips `IF [NOT] EXISTS`.
fn skip_if_exists(t: &[Tok], i: &mut usize) {
    if t.get(*i).is_some_and(|x| x.is("IF")) {
        *i += 1;
        skip_words(t, i, &["NOT", "EXISTS"]);
    }
}

/// Comma-separated names from `t[*i]`.
fn name_list(t: &[Tok], i: &mut usize, default_db: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(n) = qualified(t, i, default_db) {
        names.push(n);
        if t.get(*i) != Some(&Tok::Punct(',')) {
            break;
        }
        *i += 1;
    }
    names
}

/// The tables a DML or DDL statement names, as `db.table` (`db.*` for a
/// whole database); `default_db` qualifies bare names. Best effort: the
/// target of INSERT/REPLACE/UPDATE/DELETE/TRUNCATE, the tables of CREATE,
/// ALTER, DROP and RENAME TABLE (and VIEW, SEQUENCE, INDEX … ON, TRIGGER
/// … ON), and databases created, altered or dropped.
pub fn tables(sql: &str, default_db: &str) -> Vec<String> {
    let t = tokens(sql);
    let Some(Tok::Word(first)) = t.first() else {
        return Vec::new();
    };
    let mut i = 1;
    let first = first.to_ascii_uppercase();
    let one = |i: &mut usize| qualified(&t, i, default_db).into_iter().collect();
    match first.as_str() {
        "INSERT" | "REPLACE" => {
            skip_words(
                &t,
                &mut i,
                &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
            );
            one(&mut i)
        }
        "UPDATE" => {
            skip_words(&t, &mut i, &["LOW_PRIORITY", "IGNORE"]);
            one(&mut i)
        }
        "DELETE" => {
            // DELETE [LOW_PRIORITY] [QUICK] [IGNORE] FROM t, or the
            // multi-table DELETE t1 FROM …: the first name either way.
            skip_words(&t, &mut i, &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"]);
            one(&mut i)
        }
        "TRUNCATE" => {
            skip_words(&t, &mut i, &["TABLE"]);
            one(&mut i)
        }
        "RENAME" => {
            skip_words(&t, &mut i, &["TABLE", "TABLES"]);
            let mut names = Vec::new();
            while let Some(n) = qualified(&t, &mut i, default_db) {
                names.push(n);
                match t.get(i) {
                    Some(x) if x.is("TO") => i += 1,
                    Some(Tok::Punct(',')) => i += 1,
                    _ => break,
                }
            }
            names
        }
        "CREATE" | "ALTER" | "DROP" => {
            // Find the object keyword past OR REPLACE, TEMPORARY, ONLINE,
            // ALGORITHM=…, DEFINER=…, UNIQUE and the like.
            // Stop at a routine, an account or a parenthesis: a procedure
            // body may name tables it does not change now.
            const OBJECTS: [&str; 7] = [
                "TABLE", "VIEW", "SEQUENCE", "INDEX", "TRIGGER", "DATABASE", "SCHEMA",
            ];
            const OTHERS: [&str; 9] = [
                "PROCEDURE",
                "FUNCTION",
                "EVENT",
                "USER",
                "ROLE",
                "SERVER",
                "PACKAGE",
                "TABLESPACE",
                "LOGFILE",
            ];
            let Some(at) = t
                .iter()
                .take(12)
                .position(|x| {
                    *x == Tok::Punct('(') || OBJECTS.iter().chain(&OTHERS).any(|k| x.is(k))
                })
                .filter(|&p| OBJECTS.iter().any(|k| t[p].is(k)))
            else {
                return Vec::new();
            };
            let object = t[at].name().unwrap_or_default().to_ascii_uppercase();
            i = at + 1;
            skip_if_exists(&t, &mut i);
            match object.as_str() {
                "DATABASE" | "SCHEMA" => t
                    .get(i)
                    .and_then(Tok::name)
                    .map(|db| vec![format!("{db}.*")])
                    .unwrap_or_default(),
                "INDEX" | "TRIGGER" => match t.iter().skip(i).position(|x| x.is("ON")) {
                    Some(p) => {
                        i += p + 1;
                        one(&mut i)
                    }
                    None => Vec::new(),
                },
                _ if first == "DROP" => name_list(&t, &mut i, default_db),
                _ => one(&mut i),
            }
        }
        _ => Vec::new(),
    }
}

/// `sql` on one line: runs of whitespace become one space, and anything
/// past `max` characters becomes `…`.
pub fn one_line(sql: &str, max: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max + 4));
    let mut chars = 0;
    for word in sql.split_whitespace() {
        if chars > 0 {
            if chars >= max {
                out.push('…');
                return out;
            }
            out.push(' ');
            chars += 1;
        }
        for ch in word.chars() {
            if chars >= max {
                out.push('…');
                return out;
            }
            out.push(ch);
            chars += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statements() {
        for (sql, what) in [
            ("BEGIN", What::Begin),
            ("  begin work", What::Begin),
            ("START TRANSACTION", What::Begin),
            ("XA START X'7831',X'',1", What::Begin),
            ("COMMIT", What::End),
            ("ROLLBACK", What::End),
            ("ROLLBACK TO SAVEPOINT a", What::Control),
            ("ROLLBACK WORK TO a", What::Control),
            ("XA END X'7831',X'',1", What::Control),
            ("SAVEPOINT a", What::Control),
            ("INSERT INTO t VALUES (1)", What::Insert),
            ("/* app */ REPLACE t VALUES (1)", What::Insert),
            ("update t set a = 1", What::Update),
            ("DELETE FROM t", What::Delete),
            ("DROP TABLE `m`,`t` /* generated by server */", What::Ddl),
            ("/*!40000 ALTER TABLE t DISABLE KEYS */", What::Ddl),
            ("-- note\nCREATE TABLE t (a INT)", What::Ddl),
            ("GRANT SELECT ON db.* TO u", What::Ddl),
            ("XA COMMIT X'7831',X'',1", What::Other),
            ("ANALYZE TABLE t", What::Other),
            ("", What::Other),
        ] {
            assert_eq!(classify(sql), what, "{sql}");
        }
    }

    #[test]
    fn finds_tables() {
        let cases: &[(&str, &[&str])] = &[
            ("INSERT INTO t VALUES (1)", &["shop.t"]),
            ("INSERT IGNORE INTO other.t SELECT 1", &["other.t"]),
            ("REPLACE `odd``name` VALUES (1)", &["shop.odd`name"]),
            ("UPDATE LOW_PRIORITY t SET a=1", &["shop.t"]),
            ("DELETE QUICK FROM `db`.`t` WHERE 1", &["db.t"]),
            ("TRUNCATE TABLE t", &["shop.t"]),
            ("TRUNCATE t", &["shop.t"]),
            (
                "DROP TABLE `m`,`t` /* generated by server */",
                &["shop.m", "shop.t"],
            ),
            ("DROP TEMPORARY TABLE IF EXISTS a.b", &["a.b"]),
            ("CREATE TABLE IF NOT EXISTS t (a INT)", &["shop.t"]),
            ("CREATE OR REPLACE TEMPORARY TABLE t2 LIKE t", &["shop.t2"]),
            ("ALTER ONLINE IGNORE TABLE t ADD c INT", &["shop.t"]),
            ("CREATE UNIQUE INDEX i ON t (a)", &["shop.t"]),
            ("DROP INDEX i ON x.t", &["x.t"]),
            (
                "CREATE DEFINER=`root`@`%` TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET @a=1",
                &["shop.t"],
            ),
            ("CREATE ALGORITHM=MERGE VIEW v AS SELECT 1", &["shop.v"]),
            (
                "RENAME TABLE a TO b, c TO d.e",
                &["shop.a", "shop.b", "shop.c", "d.e"],
            ),
            ("DROP DATABASE IF EXISTS `shop`", &["shop.*"]),
            ("CREATE SCHEMA s2", &["s2.*"]),
            ("CREATE PROCEDURE p() BEGIN END", &[]),
            ("CREATE DEFINER=u PROCEDURE p() DROP TABLE x", &[]),
            ("CREATE USER u", &[]),
            ("GRANT ALL ON *.* TO u", &[]),
        ];
        for (sql, want) in cases {
            assert_eq!(tables(sql, "shop"), *want, "{sql}");
        }
        assert_eq!(tables("INSERT INTO t VALUES (1)", ""), ["t"]);
    }

    #[test]
    fn one_line_collapses_and_truncates() {
        assert_eq!(
            one_line("  CREATE\n\tTABLE  t (\n a INT )\n", 200),
            "CREATE TABLE t ( a INT )"
        );
        assert_eq!(one_line("abcdef", 4), "abcd…");
        assert_eq!(one_line("ab cd", 5), "ab cd");
        assert_eq!(one_line("é é é", 3), "é é…");
    }
}
