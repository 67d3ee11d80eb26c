//! The on-disk snapshot format (documented for humans in `docs/format.md`).
//!
//! - [`manifest`]: `manifest.json`, the index of one server's snapshot.
//! - [`tsv`]: the `LOAD DATA` text encoding of data files.
//! - [`sqlfile`]: schema files: statements separated by delimiter lines
//!   (`;;`, or one no statement of the file contains).
//! - [`physical`]: physical artifacts: a file tree as a pax tar with each
//!   file's size, sha256 and mode in the manifest.
//! - [`files`]: hashing files as they are written (size and sha256 for the
//!   manifest), `SHA256SUMS`, fsyncing directories.
//!
//! Anything that decides how bytes are laid out on disk lives here, so a
//! format change is one place and one version bump.

pub mod files;
pub mod manifest;
pub mod physical;
pub mod sqlfile;
pub mod tsv;

/// Turns a database or table name into a file name that is safe on every
/// filesystem and still readable: ASCII letters, digits, `_` and `-` stay,
/// every other byte becomes `@xx` (lower-case hex), like MySQL's own encoding.
pub fn fs_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("@{b:02x}"));
        }
    }
    if out.is_empty() { "@".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::fs_name;

    #[test]
    fn fs_names_are_safe_and_distinct() {
        assert_eq!(fs_name("orders_2024"), "orders_2024");
        assert_eq!(fs_name("a/b"), "a@2fb");
        assert_eq!(fs_name("a.b"), "a@2eb");
        assert_eq!(fs_name("ü"), "@c3@bc");
        assert_ne!(fs_name("a@2fb"), fs_name("a/b"));
        assert_eq!(fs_name(".."), "@2e@2e");
    }
}
