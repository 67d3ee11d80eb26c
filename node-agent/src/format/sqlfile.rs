//! Schema files: SQL statements, each followed by a line holding only `;;`.
//!
//! The file starts with `DELIMITER ;;`, so `mariadb < file.sql` (or `mysql`)
//! runs it as is, routines with semicolons in their bodies included. The
//! loader splits on the `;;` lines.

/// Separator line between statements.
pub const DELIMITER: &str = ";;";

/// Builds a schema file.
#[derive(Debug, Default)]
pub struct SqlFile {
    text: String,
    statements: usize,
}

impl SqlFile {
    pub fn new(comment: &str) -> SqlFile {
        let mut text = String::new();
        for line in comment.lines() {
            text.push_str("-- ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("DELIMITER ;;\n");
        SqlFile {
            text,
            statements: 0,
        }
    }

    pub fn push(&mut self, stmt: &str) {
        self.text.push_str(stmt.trim_end());
        self.text.push('\n');
        self.text.push_str(DELIMITER);
        self.text.push('\n');
        self.statements += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }

    pub fn finish(mut self) -> String {
        self.text.push_str("DELIMITER ;\n");
        self.text
    }
}

/// Splits a schema file into statements, dropping comments at the start of
/// a statement and the `DELIMITER` lines.
pub fn split(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line == DELIMITER {
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

    #[test]
    fn round_trip_with_semicolons_in_bodies() {
        let mut f = SqlFile::new("routines of db `x`\nsecond line");
        f.push("SET SESSION sql_mode = ''");
        f.push("CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND");
        let text = f.finish();
        assert!(text.starts_with("-- routines of db `x`\n-- second line\nDELIMITER ;;\n"));
        assert!(text.ends_with("DELIMITER ;\n"));
        assert_eq!(
            split(&text),
            vec![
                "SET SESSION sql_mode = ''".to_string(),
                "CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND".to_string()
            ]
        );
    }
}
