//! The data-file encoding: MySQL's default `LOAD DATA` text format.
//!
//! Fields end with a tab, rows with a newline, `\N` is NULL, and a backslash
//! escapes the bytes that would otherwise be read as structure. This is what
//! `SELECT ... INTO OUTFILE` writes and `LOAD DATA INFILE` reads with no
//! `FIELDS`/`LINES` options, so the files load with the server's own tools.

/// Appends one field's bytes, escaped; `None` is SQL NULL.
pub fn push_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(v) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    // Fast path: most values need no escaping.
    if !v
        .iter()
        .any(|b| matches!(b, 0 | b'\t' | b'\n' | b'\r' | b'\\' | 0x1a))
    {
        out.extend_from_slice(v);
        return;
    }
    out.reserve(v.len() + 8);
    for &b in v {
        match b {
            0 => out.extend_from_slice(b"\\0"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x1a => out.extend_from_slice(b"\\Z"),
            b => out.push(b),
        }
    }
}

/// Appends one row: fields separated by tabs, ended by a newline.
pub fn push_row<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = Option<&'a [u8]>>) {
    let mut first = true;
    for f in fields {
        if !first {
            out.push(b'\t');
        }
        first = false;
        push_field(out, f);
    }
    out.push(b'\n');
}

/// Decodes rows written by [`push_row`]; used by `verify` and by tests.
pub fn parse_rows(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = Vec::new();
    let mut is_null = false;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match b {
            b'\\' if i + 1 < data.len() => {
                i += 1;
                match data[i] {
                    b'N' if field.is_empty() => is_null = true,
                    b'0' => field.push(0),
                    b't' => field.push(b'\t'),
                    b'n' => field.push(b'\n'),
                    b'r' => field.push(b'\r'),
                    b'Z' => field.push(0x1a),
                    other => field.push(other),
                }
            }
            b'\t' | b'\n' => {
                row.push(if is_null {
                    None
                } else {
                    Some(std::mem::take(&mut field))
                });
                field.clear();
                is_null = false;
                if b == b'\n' {
                    rows.push(std::mem::take(&mut row));
                }
            }
            other => field.push(other),
        }
        i += 1;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let rows: Vec<Vec<Option<Vec<u8>>>> = vec![
            vec![Some(b"plain".to_vec()), None, Some(Vec::new())],
            vec![
                Some(all.clone()),
                Some(b"\\N".to_vec()),
                Some(b"a\tb\nc\\".to_vec()),
            ],
            vec![Some("😀 ü".as_bytes().to_vec())],
        ];
        let mut out = Vec::new();
        for r in &rows {
            push_row(&mut out, r.iter().map(|f| f.as_deref()));
        }
        assert_eq!(parse_rows(&out), rows);
        // Structure bytes never appear unescaped inside a field.
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), rows.len());
    }

    #[test]
    fn null_and_literal_backslash_n_differ() {
        let mut out = Vec::new();
        push_row(&mut out, [None, Some(&b"\\N"[..])]);
        assert_eq!(out, b"\\N\t\\\\N\n");
    }
}
