//! The hook through which the raft core drives the replicated state (the
//! backup catalog in production, a counter in tests), and the encoding of a
//! whole state as a raft snapshot.
//!
//! A state machine is stored as keys: each apply transaction writes only the
//! keys the applied entries changed (not the whole state), so the cost of an
//! apply does not grow with the catalog. A raft snapshot is every key with
//! its value, length-prefixed ([`encode_image`]).

use std::error::Error;

/// A key of the stored state and its value.
pub type KeyValue = (String, Vec<u8>);

/// A key changed by `apply`, with its value now (`None`: removed).
pub type Change = (String, Option<Vec<u8>>);

/// A deterministic state machine replicated by raft.
///
/// The raft task owns it and calls it from one task only. `apply` must be
/// deterministic and free of outside effects: the same entries in the same
/// order give the same state on every node.
pub trait StateMachine: Send + 'static {
    /// Apply one committed normal entry's data; returns the reply bytes for
    /// the proposer (a command the state refuses is an ordinary reply).
    ///
    /// An `Err` means this build cannot apply the entry the way other
    /// replicas may (it does not decode: a newer build wrote it). The raft
    /// node then stops with [`crate::raft::Error::Apply`] naming the index,
    /// and the entry is not recorded as applied: the replicas never diverge,
    /// and a build that can apply it carries on from there.
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Vec<u8>, Box<dyn Error + Send + Sync>>;

    /// The keys changed by `apply` since the last call, with their values
    /// now. The core writes them in the transaction that records the
    /// applied index.
    fn take_changes(&mut self) -> Vec<Change>;

    /// Replace the whole state by these stored keys (at start, and when a
    /// raft snapshot is installed).
    fn load(&mut self, entries: Vec<KeyValue>) -> Result<(), Box<dyn Error + Send + Sync>>;
}

/// Every key and value as one raft snapshot: for each, the key's and the
/// value's lengths (u32 little-endian) and bytes.
pub(crate) fn encode_image(entries: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        for part in [k.as_bytes(), v.as_slice()] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The inverse of [`encode_image`].
pub(crate) fn decode_image(mut data: &[u8]) -> Result<Vec<KeyValue>, String> {
    fn part<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let len = data
            .get(..4)
            .ok_or("truncated length")?
            .try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| "bad length")? as usize;
        let bytes = data.get(4..4 + len).ok_or("truncated value")?;
        *data = &data[4 + len..];
        Ok(bytes)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = String::from_utf8(part(&mut data)?.to_vec()).map_err(|e| e.to_string())?;
        out.push((key, part(&mut data)?.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trips_and_rejects_truncation() {
        let entries = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b/\u{0}".to_string(), Vec::new()),
        ];
        let image = encode_image(&entries);
        assert_eq!(decode_image(&image), Ok(entries));
        assert_eq!(decode_image(&[]), Ok(Vec::new()));
        assert!(decode_image(&image[..image.len() - 1]).is_err());
    }
}
