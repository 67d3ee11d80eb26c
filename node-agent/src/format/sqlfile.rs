//! Schema files: SQL statements, each followed by a line holding only the
//! file's delimiter.
//!
//! A file is `-- ` comment lines, a `DELIMITER <d>` line, every statement
//! exactly as given (byte for byte: nothing trimmed, every `\r` kept)
//! followed by a newline and a line holding only `<d>`, and a closing
//! `DELIMITER ;` line. So `mariadb --binary-mode --comments < file.sql` (or
//! `mysql`) runs it as is, routines with semicolons in their bodies
//! included. `<d>` is `;;` unless some statement of the file contains `;;`;
//! then it is the first of `$$`, `//`, `;;1`, `;;2`, … that no statement
//! contains, as mysqldump users pick a delimiter by hand. Neither the client
//! nor [`split`] can then mistake anything inside a statement for the end of
//! it. The loader reads `<d>` from the `DELIMITER` line and splits on lines
//! equal to it.
//!
//! Files of manifest version 1 always use `;;`, and their readers trim each
//! statement and drop `\r` before line ends; [`version_needed`] says whether
//! a file reads the same under those rules.

/// The delimiter of every file whose statements do not contain it.
pub const DEFAULT_DELIMITER: &str = ";;";

/// Builds a schema file.
#[derive(Debug, Default)]
pub struct SqlFile {
    comment: String,
    statements: Vec<String>,
}

impl SqlFile {
    pub fn new(comment: &str) -> SqlFile {
        SqlFile {
            comment: comment.into(),
            statements: Vec::new(),
        }
    }

    /// Appends one statement, kept byte for byte.
    pub fn push(&mut self, stmt: &str) {
        self.statements.push(stmt.into());
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// The file's text.
    pub fn finish(self) -> String {
        let delimiter = choose_delimiter(&self.statements);
        let mut text = String::new();
        // `split` skips every line up to the DELIMITER line; the client
        // reads them as comments, so no comment line may break out of `-- `.
        for line in self.comment.split(['\n', '\r']) {
            text.push_str("-- ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("DELIMITER ");
        text.push_str(&delimiter);
        text.push('\n');
        for stmt in &self.statements {
            text.push_str(stmt);
            text.push('\n');
            text.push_str(&delimiter);
            text.push('\n');
        }
        text.push_str("DELIMITER ;\n");
        text
    }
}

/// `;;`, or the first of `$$`, `//`, `;;1`, `;;2`, … that occurs in no
/// statement.
pub fn choose_delimiter(statements: &[String]) -> String {
    [DEFAULT_DELIMITER.to_string(), "$$".into(), "//".into()]
        .into_iter()
        .chain((1u64..).map(|n| format!(";;{n}")))
        .find(|d| !statements.iter().any(|s| s.contains(d.as_str())))
        .expect("finitely many statements cannot contain every delimiter")
}

/// Splits a schema file into its statements, byte for byte. The error says
/// what is wrong with the text (the caller names the file).
pub fn split(text: &str) -> Result<Vec<String>, String> {
    let mut lines = text.split('\n').enumerate();
    let delimiter = loop {
        let Some((n, line)) = lines.next() else {
            return Err("has no DELIMITER line".into());
        };
        if let Some(d) = strip_delimiter_command(line) {
            let d = d.trim();
            if d.is_empty() {
                return Err(format!("line {}: DELIMITER without a delimiter", n + 1));
            }
            break d;
        }
        if !(line.trim().is_empty() || line.starts_with("--")) {
            return Err(format!(
                "line {}: expected comments and a DELIMITER line before the first statement",
                n + 1
            ));
        }
    };
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for (_, line) in lines {
        if line == delimiter {
            let stmt = cur.join("\n");
            if !stmt.trim().is_empty() {
                out.push(stmt);
            }
            cur.clear();
        } else {
            cur.push(line);
        }
    }
    // After the last statement: the closing `DELIMITER ;` and the newline
    // that ends the file.
    if cur
        .iter()
        .any(|l| !(l.trim().is_empty() || strip_delimiter_command(l).is_some()))
    {
        return Err(format!(
            "text after the last {delimiter:?} line is not a complete statement (the file is cut short?)"
        ));
    }
    Ok(out)
}

/// The argument of a `DELIMITER x` client command line.
fn strip_delimiter_command(line: &str) -> Option<&str> {
    const CMD: &str = "DELIMITER ";
    line.get(..CMD.len())
        .filter(|p| p.eq_ignore_ascii_case(CMD))
        .map(|_| &line[CMD.len()..])
}

/// The lowest manifest version whose readers read `text` as [`split`] does.
/// A version 1 reader splits on `;;` lines only, trims each statement and
/// drops a `\r` before each line end.
pub fn version_needed(text: &str) -> u32 {
    match split(text) {
        Ok(stmts) if stmts == split_v1(text) => 1,
        _ => 2,
    }
}

/// How manifest version 1 readers split a schema file.
fn split_v1(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line == DEFAULT_DELIMITER {
            let stmt = cur.trim();
            if !stmt.is_empty() {
                out.push(stmt.to_string());
            }
            cur.clear();
        } else if cur.is_empty()
            && (line.starts_with("-- ") || line.starts_with("DELIMITER ") || line.is_empty())
        {
            continue;
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(stmts: &[&str]) -> String {
        let mut f = SqlFile::new("routines of db `x`\nsecond line");
        for s in stmts {
            f.push(s);
        }
        f.finish()
    }

    #[test]
    fn round_trip_with_semicolons_in_bodies() {
        let stmts = [
            "SET SESSION sql_mode = ''",
            "CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND",
        ];
        let text = file(&stmts);
        assert_eq!(
            text,
            "-- routines of db `x`\n-- second line\nDELIMITER ;;\n\
             SET SESSION sql_mode = ''\n;;\n\
             CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND\n;;\n\
             DELIMITER ;\n",
            "the version 1 layout, unchanged"
        );
        assert_eq!(split(&text).expect("splits"), stmts);
        assert_eq!(version_needed(&text), 1);
    }

    #[test]
    fn any_body_round_trips_byte_for_byte() {
        let bodies = [
            "CREATE PROCEDURE p() SELECT 'a\n;;\nb'",
            "CREATE PROCEDURE q() BEGIN\n/*\n;;\n$$\n*/ SELECT '//'; END",
            "CREATE FUNCTION f() RETURNS TEXT RETURN 'a\r\nb\r\n'",
            "  leading and trailing space, trailing newline \n",
            "CREATE PROCEDURE r() SELECT ';;1 ;;2'",
            "\r\nCREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET @a = '\r'\r",
        ];
        let text = file(&bodies);
        assert!(text.contains("\nDELIMITER ;;3\n"), "{text}");
        assert_eq!(split(&text).expect("splits"), bodies);
        assert_eq!(version_needed(&text), 2);
        // Each alone.
        for b in bodies {
            assert_eq!(split(&file(&[b])).expect("splits"), [b], "{b:?}");
        }
    }

    #[test]
    fn delimiters_avoid_every_statement() {
        let d = |s: &[&str]| choose_delimiter(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(d(&["SELECT 1; SELECT 2;"]), ";;");
        assert_eq!(d(&["a ;; b"]), "$$");
        assert_eq!(d(&["a ;; b", "$$"]), "//");
        assert_eq!(d(&[";;", "$$", "//"]), ";;1");
        assert_eq!(d(&[";;", "$$", "//;;1;;2"]), ";;3");
    }

    #[test]
    fn version_1_files_still_split() {
        // As lockstep 0.1 wrote it: statements trimmed, `;;` lines.
        let v1 = "-- lockstep: database d\nDELIMITER ;;\nSET NAMES utf8mb4\n;;\nCREATE TABLE `t` (\n  `a` int\n)\n;;\nDELIMITER ;\n";
        assert_eq!(
            split(v1).expect("splits"),
            ["SET NAMES utf8mb4", "CREATE TABLE `t` (\n  `a` int\n)"]
        );
        assert_eq!(version_needed(v1), 1);
        // A `;;` inside a line is fine for version 1 readers, a whole line is not.
        assert_eq!(version_needed(&file(&["SELECT ';;'"])), 2);
        assert_eq!(version_needed(&file(&["SELECT 1", "SELECT 2 "])), 2);
        assert_eq!(version_needed(&file(&["SELECT 'a\r\nb'"])), 2);
        assert_eq!(version_needed(&file(&["SELECT 'a\rb'"])), 1);
    }

    #[test]
    fn damaged_files_are_refused() {
        let err = split("CREATE TABLE t (a int)\n;;\n").expect_err("no header");
        assert!(err.contains("line 1") && err.contains("DELIMITER"), "{err}");
        let err = split("-- x\nDELIMITER ;;\nSELECT 1\n;;\nSELECT 2\n").expect_err("cut short");
        assert!(err.contains("not a complete statement"), "{err}");
        assert!(split("-- only a comment\n").is_err());
        assert_eq!(
            split("DELIMITER $$\nSELECT 1\n$$\n").expect("no closing line"),
            ["SELECT 1"]
        );
    }
}
