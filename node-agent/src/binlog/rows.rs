//! Row events for the index: Table_map bodies (table name, column types
//! and their metadata) and counting the rows of a Write/Update/Delete rows
//! event without decoding values.
//!
//! Counting needs each value's length, which follows from the column type
//! and its Table_map metadata (MariaDB's `calc_field_size`). A type this
//! module does not know, or an image that does not add up to the event's
//! length, gives no count rather than a wrong one.
//!
//! Written natively rather than with `mysql_common`'s binlog types: those
//! decode every value into owned data to count rows, and want a MySQL
//! Format_description to parse against.

/// Column type codes (`enum_field_types`) whose values have a length that
/// is not fixed.
mod ty {
    pub const NEWDECIMAL: u8 = 246;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    /// MariaDB's compressed columns (`COMPRESSED` attribute).
    pub const VARCHAR_COMPRESSED: u8 = 140;
    pub const BLOB_COMPRESSED: u8 = 141;
    pub const JSON: u8 = 245;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// Rows event type codes.
pub mod kind {
    pub const WRITE_V1: u8 = 23;
    pub const UPDATE_V1: u8 = 24;
    pub const DELETE_V1: u8 = 25;
    pub const WRITE_V2: u8 = 30;
    pub const UPDATE_V2: u8 = 31;
    pub const DELETE_V2: u8 = 32;
    /// MariaDB's `log_bin_compress` rows events (v1 and v2 layouts).
    pub const WRITE_COMPRESSED_V1: u8 = 166;
    pub const UPDATE_COMPRESSED_V1: u8 = 167;
    pub const DELETE_COMPRESSED_V1: u8 = 168;
    pub const WRITE_COMPRESSED_V2: u8 = 169;
    pub const UPDATE_COMPRESSED_V2: u8 = 170;
    pub const DELETE_COMPRESSED_V2: u8 = 171;
}

/// What a rows event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Insert,
    Update,
    Delete,
}

/// The change a rows event type makes, if `code` is one.
pub fn change_of(code: u8) -> Option<Change> {
    use kind::*;
    match code {
        WRITE_V1 | WRITE_V2 | WRITE_COMPRESSED_V1 | WRITE_COMPRESSED_V2 => Some(Change::Insert),
        UPDATE_V1 | UPDATE_V2 | UPDATE_COMPRESSED_V1 | UPDATE_COMPRESSED_V2 => Some(Change::Update),
        DELETE_V1 | DELETE_V2 | DELETE_COMPRESSED_V1 | DELETE_COMPRESSED_V2 => Some(Change::Delete),
        _ => None,
    }
}

fn is_v2(code: u8) -> bool {
    use kind::*;
    matches!(
        code,
        WRITE_V2
            | UPDATE_V2
            | DELETE_V2
            | WRITE_COMPRESSED_V2
            | UPDATE_COMPRESSED_V2
            | DELETE_COMPRESSED_V2
    )
}

fn is_compressed(code: u8) -> bool {
    (kind::WRITE_COMPRESSED_V1..=kind::DELETE_COMPRESSED_V2).contains(&code)
}

/// One table of a Table_map event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    /// `db.table`.
    pub name: String,
    types: Vec<u8>,
    meta: Vec<u16>,
}

/// A cursor over an event body; every read says what ran short.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(format!(
                "{what} runs past the end of the event ({n} bytes at {})",
                self.at
            ));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn uint(&mut self, n: usize, what: &str) -> Result<u64, String> {
        Ok(self
            .take(n, what)?
            .iter()
            .rev()
            .fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    }

    /// A length-encoded integer.
    fn lenenc(&mut self, what: &str) -> Result<u64, String> {
        match self.u8(what)? {
            n @ 0..=250 => Ok(u64::from(n)),
            0xfc => self.uint(2, what),
            0xfd => self.uint(3, what),
            0xfe => self.uint(8, what),
            b => Err(format!("{what}: bad length-encoded integer prefix {b:#x}")),
        }
    }

    fn rest(&self) -> usize {
        self.b.len() - self.at
    }
}

/// The table id of a Table_map or rows event: 4 bytes when the event
/// type's post-header is 6 bytes long (old servers), else 6.
fn table_id(c: &mut Cursor<'_>, post_header_len: u8) -> Result<u64, String> {
    c.uint(if post_header_len == 6 { 4 } else { 6 }, "table id")
}

/// Parses a Table_map body (after the common header, before any checksum)
/// into its table id and [`TableMap`].
pub fn parse_table_map(body: &[u8], post_header_len: u8) -> Result<(u64, TableMap), String> {
    let mut c = Cursor { b: body, at: 0 };
    let id = table_id(&mut c, post_header_len)?;
    c.take(2, "table map flags")?;
    let db_len = c.u8("database name length")? as usize;
    let db = c.take(db_len, "database name")?;
    c.take(1, "database name terminator")?;
    let table_len = c.u8("table name length")? as usize;
    let table = c.take(table_len, "table name")?;
    c.take(1, "table name terminator")?;
    let columns = usize::try_from(c.lenenc("column count")?)
        .map_err(|_| "column count out of range".to_string())?;
    if columns > c.rest() {
        return Err(format!(
            "{columns} columns but {} bytes left for their types",
            c.rest()
        ));
    }
    let types = c.take(columns, "column types")?.to_vec();
    let meta_len = usize::try_from(c.lenenc("metadata length")?)
        .map_err(|_| "metadata length out of range".to_string())?;
    let mut m = Cursor {
        b: c.take(meta_len, "column metadata")?,
        at: 0,
    };
    let mut meta = Vec::with_capacity(columns);
    for &t in &types {
        let v = match t {
            ty::FLOAT
            | ty::DOUBLE
            | ty::TIMESTAMP2
            | ty::DATETIME2
            | ty::TIME2
            | ty::BLOB_COMPRESSED
            | ty::JSON
            | ty::TINY_BLOB
            | ty::MEDIUM_BLOB
            | ty::LONG_BLOB
            | ty::BLOB
            | ty::GEOMETRY => u16::from(m.u8("column metadata")?),
            // Little-endian: a maximum length, or (BIT) bits then bytes.
            ty::VARCHAR | ty::VAR_STRING | ty::VARCHAR_COMPRESSED | ty::BIT => {
                m.uint(2, "column metadata")? as u16
            }
            // Big-endian: real type then length, or precision then scale.
            ty::STRING | ty::ENUM | ty::SET | ty::NEWDECIMAL => {
                let hi = m.u8("column metadata")?;
                let lo = m.u8("column metadata")?;
                u16::from_be_bytes([hi, lo])
            }
            _ => 0,
        };
        meta.push(v);
    }
    let name = format!(
        "{}.{}",
        String::from_utf8_lossy(db),
        String::from_utf8_lossy(table)
    );
    Ok((id, TableMap { name, types, meta }))
}

/// Bytes of a packed DECIMAL(precision, scale).
fn decimal_len(precision: usize, scale: usize) -> Option<usize> {
    const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    let int = precision.checked_sub(scale)?;
    Some(int / 9 * 4 + DIG2BYTES[int % 9] + scale / 9 * 4 + DIG2BYTES[scale % 9])
}

/// The length of one non-NULL value of column type `t` starting at `data`,
/// or `None` if the type is unknown or `data` is too short to say.
fn value_len(t: u8, meta: u16, data: &[u8]) -> Option<usize> {
    let prefixed = |n: usize| -> Option<usize> {
        let len = data
            .get(..n)?
            .iter()
            .rev()
            .fold(0usize, |v, b| (v << 8) | usize::from(*b));
        Some(n + len)
    };
    let fsp = usize::from(meta).div_ceil(2);
    Some(match t {
        1 | 13 => 1,           // TINY, YEAR
        2 => 2,                // SHORT
        9 | 10 | 11 | 14 => 3, // INT24, DATE, TIME, NEWDATE
        3 | 7 => 4,            // LONG, TIMESTAMP
        ty::FLOAT => 4,
        8 | 12 => 8, // LONGLONG, DATETIME
        ty::DOUBLE => 8,
        6 => 0, // NULL
        ty::TIMESTAMP2 => 4 + fsp,
        ty::DATETIME2 => 5 + fsp,
        ty::TIME2 => 3 + fsp,
        ty::BIT => usize::from(meta >> 8) + usize::from(meta & 0xff != 0),
        ty::NEWDECIMAL => decimal_len(usize::from(meta >> 8), usize::from(meta & 0xff))?,
        ty::VARCHAR | ty::VAR_STRING | ty::VARCHAR_COMPRESSED => {
            prefixed(if meta < 256 { 1 } else { 2 })?
        }
        ty::BLOB_COMPRESSED
        | ty::JSON
        | ty::TINY_BLOB
        | ty::MEDIUM_BLOB
        | ty::LONG_BLOB
        | ty::BLOB
        | ty::GEOMETRY => match meta {
            1..=4 => prefixed(usize::from(meta))?,
            _ => return None,
        },
        ty::STRING | ty::ENUM | ty::SET => {
            let real = (meta >> 8) as u8;
            if real == ty::ENUM || real == ty::SET {
                usize::from(meta & 0xff)
            } else {
                // The maximum length's two high bits hide, inverted, in
                // bits 4-5 of the real-type byte (`max_display_length_for_field`).
                let max = (((meta >> 4) & 0x300) ^ 0x300) + (meta & 0xff);
                prefixed(if max > 255 { 2 } else { 1 })?
            }
        }
        _ => return None,
    })
}

/// What a rows event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub table_id: u64,
    pub change: Change,
    /// Rows changed (an update's before and after image count once);
    /// `None` when they cannot be counted (a compressed event, a column type
    /// not known here, or no Table_map for the table).
    pub count: Option<u64>,
}

/// Reads a rows event body of type `code` and counts its rows against the
/// table's map (`lookup` finds it by table id).
pub fn parse_rows<'t>(
    code: u8,
    body: &[u8],
    post_header_len: u8,
    lookup: impl FnOnce(u64) -> Option<&'t TableMap>,
) -> Result<Rows, String> {
    let change = change_of(code).ok_or_else(|| format!("event type {code} is not a rows event"))?;
    let mut c = Cursor { b: body, at: 0 };
    let table_id = table_id(&mut c, post_header_len)?;
    c.take(2, "rows event flags")?;
    if is_v2(code) {
        let extra = c.uint(2, "extra data length")? as usize;
        c.take(extra.saturating_sub(2), "extra data")?;
    }
    let count = if is_compressed(code) {
        None
    } else {
        lookup(table_id).and_then(|t| count_rows(&mut c, change, t))
    };
    Ok(Rows {
        table_id,
        change,
        count,
    })
}

fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Counts the row images after the post-header; `None` if they do not
/// parse to exactly the end of the event.
fn count_rows(c: &mut Cursor<'_>, change: Change, t: &TableMap) -> Option<u64> {
    let width = usize::try_from(c.lenenc("width").ok()?).ok()?;
    if width > t.types.len() {
        return None;
    }
    let bitmap_len = width.div_ceil(8);
    let before = c.take(bitmap_len, "columns bitmap").ok()?;
    let after = if change == Change::Update {
        c.take(bitmap_len, "columns bitmap").ok()?
    } else {
        before
    };
    let images: &[&[u8]] = if change == Change::Update {
        &[before, after]
    } else {
        &[before]
    };
    let mut rows = 0u64;
    while c.rest() > 0 {
        for present in images {
            let columns: Vec<usize> = (0..width).filter(|&i| bit(present, i)).collect();
            let nulls = c.take(columns.len().div_ceil(8), "null bitmap").ok()?;
            for (j, &i) in columns.iter().enumerate() {
                if bit(nulls, j) {
                    continue;
                }
                let len = value_len(t.types[i], t.meta[i], &c.b[c.at..])?;
                c.take(len, "value").ok()?;
            }
        }
        rows += 1;
    }
    Some(rows)
}

/// Builds Table_map and rows bodies for tests.
#[cfg(test)]
pub(crate) mod build {
    /// A Table_map body: table id 6 bytes, `columns` as (type, metadata
    /// bytes), all nullable.
    pub fn table_map(id: u64, db: &str, table: &str, columns: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = id.to_le_bytes()[..6].to_vec();
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(db.len() as u8);
        b.extend_from_slice(db.as_bytes());
        b.push(0);
        b.push(table.len() as u8);
        b.extend_from_slice(table.as_bytes());
        b.push(0);
        b.push(columns.len() as u8);
        b.extend(columns.iter().map(|(t, _)| *t));
        let meta: Vec<u8> = columns
            .iter()
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        b.push(meta.len() as u8);
        b.extend_from_slice(&meta);
        b.extend(std::iter::repeat_n(0xff, columns.len().div_ceil(8)));
        b
    }

    /// A v1 rows body for `width` columns, all present, and the given row
    /// images (each: null bitmap and values, already encoded).
    pub fn rows(id: u64, width: usize, update: bool, images: &[Vec<u8>]) -> Vec<u8> {
        let mut b = id.to_le_bytes()[..6].to_vec();
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(width as u8);
        let all = vec![0xffu8; width.div_ceil(8)];
        b.extend_from_slice(&all);
        if update {
            b.extend_from_slice(&all);
        }
        for i in images {
            b.extend_from_slice(i);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    /// INT, VARCHAR(20), DECIMAL(10,2), DATETIME(3), BLOB, CHAR(30),
    /// ENUM, BIT(10), CHAR(100) utf8mb4 (400 bytes: a 2-byte length).
    fn map() -> TableMap {
        let cols: &[(u8, &[u8])] = &[
            (3, &[]),
            (ty::VARCHAR, &[20, 0]),
            (ty::NEWDECIMAL, &[10, 2]),
            (ty::DATETIME2, &[3]),
            (ty::BLOB, &[2]),
            (ty::STRING, &[0xfe, 30]),
            (ty::STRING, &[0xf7, 1]),
            (ty::BIT, &[2, 1]),
            (ty::STRING, &[0xee, 0x90]),
        ];
        let body = table_map(18, "shop", "t", cols);
        let (id, t) = parse_table_map(&body, 8).expect("a table map");
        assert_eq!(id, 18);
        assert_eq!(t.name, "shop.t");
        t
    }

    /// One row image with every column set, and one with all but the
    /// first NULL.
    fn full_row(n: u8) -> Vec<u8> {
        let mut r = vec![0u8, 0]; // null bitmap, 9 columns
        r.extend_from_slice(&[n, 0, 0, 0]);
        r.extend_from_slice(&[2, b'a', b'b']);
        r.extend_from_slice(&[0; 5]); // DECIMAL(10,2): 4 + 1
        r.extend_from_slice(&[0; 7]); // DATETIME2(3): 5 + 2
        r.extend_from_slice(&[3, 0, b'x', b'y', b'z']);
        r.extend_from_slice(&[1, b'c']);
        r.push(1);
        r.extend_from_slice(&[0, 0]); // BIT(10): 1 byte + 2 bits
        r.extend_from_slice(&[2, 0, b'u', b'v']);
        r
    }

    fn null_row(n: u8) -> Vec<u8> {
        let mut r = vec![0b1111_1110, 0b1];
        r.extend_from_slice(&[n, 0, 0, 0]);
        r
    }

    #[test]
    fn counts_rows_of_inserts_updates_and_deletes() {
        let t = map();
        let find = |id: u64| (id == 18).then_some(&t);
        let body = rows(18, 9, false, &[full_row(1), null_row(2), full_row(3)]);
        let r = parse_rows(kind::WRITE_V1, &body, 8, find).expect("rows");
        assert_eq!(
            (r.table_id, r.change, r.count),
            (18, Change::Insert, Some(3))
        );

        let body = rows(
            18,
            9,
            true,
            &[full_row(1), null_row(1), null_row(2), full_row(2)],
        );
        let r = parse_rows(kind::UPDATE_V1, &body, 8, find).expect("rows");
        assert_eq!((r.change, r.count), (Change::Update, Some(2)));

        let body = rows(18, 9, false, &[null_row(2)]);
        let r = parse_rows(kind::DELETE_V1, &body, 8, find).expect("rows");
        assert_eq!((r.change, r.count), (Change::Delete, Some(1)));

        // v2: a 2-byte extra-data length (counting itself) after the flags.
        let mut v2 = body[..8].to_vec();
        v2.extend_from_slice(&4u16.to_le_bytes());
        v2.extend_from_slice(&[9, 9]);
        v2.extend_from_slice(&body[8..]);
        let r = parse_rows(kind::DELETE_V2, &v2, 10, find).expect("rows");
        assert_eq!(r.count, Some(1));
    }

    #[test]
    fn rows_that_do_not_add_up_are_not_counted() {
        let t = map();
        let find = |id: u64| (id == 18).then_some(&t);
        let mut body = rows(18, 9, false, &[full_row(1)]);
        body.pop();
        let r = parse_rows(kind::WRITE_V1, &body, 8, find).expect("rows");
        assert_eq!(r.count, None, "an image cut short");
        let body = rows(19, 9, false, &[full_row(1)]);
        let r = parse_rows(kind::WRITE_V1, &body, 8, find).expect("rows");
        assert_eq!((r.table_id, r.count), (19, None), "no map for the table");
        let r = parse_rows(kind::WRITE_COMPRESSED_V1, &body, 8, find).expect("rows");
        assert_eq!((r.change, r.count), (Change::Insert, None));
        assert!(parse_rows(kind::WRITE_V1, &[1, 2, 3], 8, find).is_err());
    }

    #[test]
    fn value_lengths() {
        assert_eq!(decimal_len(10, 2), Some(5));
        assert_eq!(decimal_len(65, 30), Some(30));
        assert_eq!(decimal_len(18, 9), Some(8));
        assert_eq!(value_len(ty::TIMESTAMP2, 6, &[]), Some(7));
        assert_eq!(value_len(ty::TIME2, 0, &[]), Some(3));
        assert_eq!(value_len(ty::VARCHAR, 300, &[2, 1]), Some(2 + 258));
        assert_eq!(value_len(ty::LONG_BLOB, 4, &[1, 0, 0, 0]), Some(5));
        assert_eq!(value_len(ty::STRING, 0xf802, &[]), Some(2), "SET");
        assert_eq!(value_len(0, 0, &[]), None, "old DECIMAL is not known");
        assert_eq!(value_len(ty::VARCHAR, 20, &[]), None, "no length byte");
    }
}
