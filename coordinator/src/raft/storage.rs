//! The durable raft store: raft-rs's [`raft::Storage`] over one redb file.
//!
//! Tables: `raft_entries` (index → encoded `Entry`), `raft_meta` (hard
//! state, conf state, log start, applied position) and `sm_keys` (the state
//! machine, key → value). Every write method is one redb write transaction
//! committed with redb's default `Durability::Immediate` (fsync) before it
//! returns.
//!
//! The raft snapshot is not stored separately: each apply transaction writes
//! the keys the applied entries changed together with the applied position,
//! so a snapshot is always `(applied, conf state, every key)` read in one
//! read transaction. Compaction only moves the log start up to the applied
//! index.

use std::fmt;
use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::error::{Error, Result};
use super::state_machine::{Change, KeyValue, decode_image, encode_image};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_keys");

const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// Last compacted position (the log holds entries after it).
const LOG_START: &str = "log_start";
/// Last applied position.
const APPLIED: &str = "applied";
/// Where an earlier version kept the whole state machine image; a store
/// that has it is refused (see [`RedbStorage::open`]).
const LEGACY_SM_IMAGE: &str = "sm_state";

/// A log position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogId {
    pub(crate) index: u64,
    pub(crate) term: u64,
}

impl LogId {
    fn encode(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.index.to_le_bytes());
        b[8..].copy_from_slice(&self.term.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let index = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let term = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        (b.len() == 16).then_some(LogId { index, term })
    }
}

/// What a restarting node loads.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) conf_state: ConfState,
    pub(crate) applied: LogId,
    pub(crate) log_start: LogId,
    /// The state machine's keys as of `applied`.
    pub(crate) sm_keys: Vec<KeyValue>,
}

/// raft-rs storage backed by redb.
pub(crate) struct RedbStorage {
    db: Database,
    path: String,
}

impl fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.path)
            .finish()
    }
}

fn encode<M: protobuf::Message>(what: &'static str, m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|source| Error::Encode { what, source })
}

fn decode<M: protobuf::Message>(what: &'static str, b: &[u8]) -> Result<M> {
    M::parse_from_bytes(b).map_err(|source| Error::Decode { what, source })
}

fn to_raft(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl RedbStorage {
    /// Open (or create) the store; an empty store starts with `voters` as
    /// its membership.
    pub(crate) fn open(path: &Path, voters: &[u64]) -> Result<Self> {
        let path_str = path.display().to_string();
        let db = Database::create(path).map_err(|e| Error::Storage {
            context: "open",
            path: path_str.clone(),
            source: Box::new(e.into()),
        })?;
        let store = RedbStorage {
            db,
            path: path_str.clone(),
        };
        let txn = store
            .db
            .begin_write()
            .map_err(store.err("begin bootstrap"))?;
        {
            txn.open_table(ENTRIES)
                .map_err(store.err("create entries table"))?;
            txn.open_table(SM_KEYS)
                .map_err(store.err("create state machine table"))?;
            let mut meta = txn
                .open_table(META)
                .map_err(store.err("create meta table"))?;
            if meta
                .get(LEGACY_SM_IMAGE)
                .map_err(store.err("read meta"))?
                .is_some()
            {
                return Err(Error::Config(format!(
                    "{path_str}: this store was written by an earlier lockstep that kept the catalog as one image; it cannot be read by this version (start from an empty data dir)"
                )));
            }
            let empty = meta
                .get(CONF_STATE)
                .map_err(store.err("read conf state"))?
                .is_none();
            if empty {
                let mut cs = ConfState::default();
                cs.set_voters(voters.to_vec());
                let cs = encode("conf state", &cs)?;
                let hs = encode("hard state", &HardState::default())?;
                let zero = LogId::default().encode();
                for (k, v) in [
                    (CONF_STATE, &cs[..]),
                    (HARD_STATE, &hs[..]),
                    (LOG_START, &zero[..]),
                    (APPLIED, &zero[..]),
                ] {
                    meta.insert(k, v).map_err(store.err("bootstrap meta"))?;
                }
            }
        }
        txn.commit().map_err(store.err("commit bootstrap"))?;
        Ok(store)
    }

    fn err<E: Into<redb::Error>>(&self, context: &'static str) -> impl FnOnce(E) -> Error + '_ {
        move |e| Error::Storage {
            context,
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, what: &'static str) -> Error {
        Error::Corrupt {
            what,
            path: self.path.clone(),
        }
    }

    fn meta_get<T: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        table: &T,
        key: &'static str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(table
            .get(key)
            .map_err(self.err("read meta"))?
            .map(|v| v.value().to_vec()))
    }

    fn meta_log_id<T: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        table: &T,
        key: &'static str,
    ) -> Result<LogId> {
        let raw = self
            .meta_get(table, key)?
            .ok_or_else(|| self.corrupt(key))?;
        LogId::decode(&raw).ok_or_else(|| self.corrupt(key))
    }

    fn meta_msg<M: protobuf::Message, T: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        table: &T,
        key: &'static str,
    ) -> Result<M> {
        let raw = self
            .meta_get(table, key)?
            .ok_or_else(|| self.corrupt(key))?;
        decode(key, &raw)
    }

    /// Everything a (re)starting node needs besides what raft-rs reads itself.
    pub(crate) fn load(&self) -> Result<Loaded> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let meta = txn.open_table(META).map_err(self.err("open meta table"))?;
        Ok(Loaded {
            conf_state: self.meta_msg(&meta, CONF_STATE)?,
            applied: self.meta_log_id(&meta, APPLIED)?,
            log_start: self.meta_log_id(&meta, LOG_START)?,
            sm_keys: self.all_keys(&txn)?,
        })
    }

    /// Append `entries` (replacing any conflicting suffix) and persist `hs`,
    /// in one durable transaction.
    pub(crate) fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(self.err("begin append"))?;
        {
            if let Some(first) = entries.first() {
                let mut table = txn.open_table(ENTRIES).map_err(self.err("open entries"))?;
                table
                    .retain_in(first.index.., |_, _| false)
                    .map_err(self.err("truncate conflicting entries"))?;
                for e in entries {
                    let bytes = encode("entry", e)?;
                    table
                        .insert(e.index, &bytes[..])
                        .map_err(self.err("append entry"))?;
                }
            }
            if let Some(hs) = hs {
                let mut meta = txn.open_table(META).map_err(self.err("open meta"))?;
                let bytes = encode("hard state", hs)?;
                meta.insert(HARD_STATE, &bytes[..])
                    .map_err(self.err("write hard state"))?;
            }
        }
        txn.commit().map_err(self.err("commit append"))
    }

    /// Raise the stored commit index to `commit`, without an fsync of its
    /// own: the next durable commit (entries, apply) carries it. Losing it is
    /// harmless (raft recomputes the commit index; the apply transaction
    /// keeps it at least the applied index, which restarts need).
    pub(crate) fn set_commit(&self, commit: u64) -> Result<()> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(self.err("begin set commit"))?;
        txn.set_durability(redb::Durability::None)
            .map_err(self.err("make the commit-index update lazy"))?;
        {
            let mut meta = txn.open_table(META).map_err(self.err("open meta"))?;
            self.raise_commit(&mut meta, commit, None)?;
        }
        txn.commit().map_err(self.err("commit set commit"))
    }

    fn raise_commit(
        &self,
        meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
        commit: u64,
        term: Option<u64>,
    ) -> Result<()> {
        let mut hs: HardState = self.meta_msg(meta, HARD_STATE)?;
        let new_commit = hs.commit.max(commit);
        let new_term = hs.term.max(term.unwrap_or(0));
        if new_commit != hs.commit || new_term != hs.term {
            hs.commit = new_commit;
            hs.term = new_term;
            let bytes = encode("hard state", &hs)?;
            meta.insert(HARD_STATE, &bytes[..])
                .map_err(self.err("write hard state"))?;
        }
        Ok(())
    }

    /// Record that everything up to `applied` is applied, with the state
    /// machine keys that changed and the conf state (when it changed), in
    /// one durable transaction.
    pub(crate) fn record_applied(
        &self,
        applied: LogId,
        conf_state: Option<&ConfState>,
        changes: &[Change],
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(self.err("begin apply"))?;
        {
            let mut meta = txn.open_table(META).map_err(self.err("open meta"))?;
            meta.insert(APPLIED, &applied.encode()[..])
                .map_err(self.err("write applied index"))?;
            if let Some(cs) = conf_state {
                let bytes = encode("conf state", cs)?;
                meta.insert(CONF_STATE, &bytes[..])
                    .map_err(self.err("write conf state"))?;
            }
            let mut keys = txn
                .open_table(SM_KEYS)
                .map_err(self.err("open state machine table"))?;
            for (k, v) in changes {
                match v {
                    Some(v) => keys.insert(k.as_str(), v.as_slice()).map(|_| ()),
                    None => keys.remove(k.as_str()).map(|_| ()),
                }
                .map_err(self.err("write state machine key"))?;
            }
            // Restart requires applied <= commit; entries are applied before
            // the Ready's hard state is persisted, so raise it here.
            self.raise_commit(&mut meta, applied.index, None)?;
        }
        txn.commit().map_err(self.err("commit apply"))
    }

    /// Install a snapshot received from the leader: drop the whole log, make
    /// the snapshot the log start and the applied state.
    pub(crate) fn install_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let md = snap.get_metadata();
        let at = LogId {
            index: md.index,
            term: md.term,
        };
        let txn = self
            .db
            .begin_write()
            .map_err(self.err("begin install snapshot"))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(self.err("open entries"))?;
            table
                .retain(|_, _| false)
                .map_err(self.err("clear log for snapshot"))?;
            let mut meta = txn.open_table(META).map_err(self.err("open meta"))?;
            let cs = encode("conf state", md.get_conf_state())?;
            meta.insert(CONF_STATE, &cs[..])
                .map_err(self.err("write conf state"))?;
            meta.insert(LOG_START, &at.encode()[..])
                .map_err(self.err("write log start"))?;
            meta.insert(APPLIED, &at.encode()[..])
                .map_err(self.err("write applied index"))?;
            let mut keys = txn
                .open_table(SM_KEYS)
                .map_err(self.err("open state machine table"))?;
            keys.retain(|_, _| false)
                .map_err(self.err("clear state machine for snapshot"))?;
            let image = decode_image(&snap.data).map_err(|_| self.corrupt("snapshot image"))?;
            for (k, v) in image {
                keys.insert(k.as_str(), v.as_slice())
                    .map_err(self.err("write state machine key"))?;
            }
            self.raise_commit(&mut meta, at.index, Some(at.term))?;
        }
        txn.commit().map_err(self.err("commit install snapshot"))
    }

    /// Drop log entries up to and including `upto` (which must be applied).
    pub(crate) fn compact(&self, upto: LogId) -> Result<()> {
        let txn = self.db.begin_write().map_err(self.err("begin compact"))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(self.err("open entries"))?;
            table
                .retain_in(..=upto.index, |_, _| false)
                .map_err(self.err("delete compacted entries"))?;
            let mut meta = txn.open_table(META).map_err(self.err("open meta"))?;
            meta.insert(LOG_START, &upto.encode()[..])
                .map_err(self.err("write log start"))?;
        }
        txn.commit().map_err(self.err("commit compact"))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(
            &redb::ReadOnlyTable<u64, &'static [u8]>,
            &redb::ReadOnlyTable<&'static str, &'static [u8]>,
        ) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let entries = txn.open_table(ENTRIES).map_err(self.err("open entries"))?;
        let meta = txn.open_table(META).map_err(self.err("open meta"))?;
        f(&entries, &meta)
    }

    /// Every state machine key with its value, in `txn`'s view.
    fn all_keys(&self, txn: &redb::ReadTransaction) -> Result<Vec<KeyValue>> {
        let keys = txn
            .open_table(SM_KEYS)
            .map_err(self.err("open state machine table"))?;
        let mut out = Vec::new();
        for row in keys.iter().map_err(self.err("read state machine"))? {
            let (k, v) = row.map_err(self.err("read state machine key"))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn last_index_in(
        &self,
        entries: &redb::ReadOnlyTable<u64, &'static [u8]>,
        log_start: LogId,
    ) -> Result<u64> {
        Ok(entries
            .last()
            .map_err(self.err("read last entry"))?
            .map_or(log_start.index, |(k, _)| k.value()))
    }
}

enum Lookup<T> {
    Found(T),
    Compacted,
    Unavailable,
}

impl<T> Lookup<T> {
    fn into_raft(self) -> raft::Result<T> {
        match self {
            Lookup::Found(t) => Ok(t),
            Lookup::Compacted => Err(raft::Error::Store(StorageError::Compacted)),
            Lookup::Unavailable => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl raft::Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.read(|_, meta| {
            Ok(RaftState::new(
                self.meta_msg(meta, HARD_STATE)?,
                self.meta_msg(meta, CONF_STATE)?,
            ))
        })
        .map_err(to_raft)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        self.read(|entries, meta| {
            let start = self.meta_log_id(meta, LOG_START)?;
            if low <= start.index {
                return Ok(Lookup::Compacted);
            }
            if high > self.last_index_in(entries, start)? + 1 {
                return Ok(Lookup::Unavailable);
            }
            let mut out = Vec::with_capacity((high - low) as usize);
            for item in entries.range(low..high).map_err(self.err("read entries"))? {
                let (_, v) = item.map_err(self.err("read entry"))?;
                out.push(decode::<Entry>("entry", v.value())?);
            }
            if out.len() as u64 != high - low {
                return Err(self.corrupt("entries (gap in log)"));
            }
            raft::util::limit_size(&mut out, max_size);
            Ok(Lookup::Found(out))
        })
        .map_err(to_raft)?
        .into_raft()
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.read(|entries, meta| {
            let start = self.meta_log_id(meta, LOG_START)?;
            if idx == start.index {
                return Ok(Lookup::Found(start.term));
            }
            if idx < start.index {
                return Ok(Lookup::Compacted);
            }
            match entries.get(idx).map_err(self.err("read entry"))? {
                Some(v) => Ok(Lookup::Found(decode::<Entry>("entry", v.value())?.term)),
                None => Ok(Lookup::Unavailable),
            }
        })
        .map_err(to_raft)?
        .into_raft()
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.read(|_, meta| Ok(self.meta_log_id(meta, LOG_START)?.index + 1))
            .map_err(to_raft)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.read(|entries, meta| {
            let start = self.meta_log_id(meta, LOG_START)?;
            self.last_index_in(entries, start)
        })
        .map_err(to_raft)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let txn = self
            .db
            .begin_read()
            .map_err(self.err("begin read"))
            .map_err(to_raft)?;
        let meta = txn
            .open_table(META)
            .map_err(self.err("open meta"))
            .map_err(to_raft)?;
        let snap = (|| {
            let applied = self.meta_log_id(&meta, APPLIED)?;
            if applied.index < request_index {
                return Ok(None);
            }
            let mut snap = Snapshot {
                data: encode_image(&self.all_keys(&txn)?).into(),
                ..Default::default()
            };
            let md = snap.mut_metadata();
            md.index = applied.index;
            md.term = applied.term;
            md.set_conf_state(self.meta_msg(&meta, CONF_STATE)?);
            Ok(Some(snap))
        })();
        snap.map_err(to_raft)?.ok_or(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn is_compacted<T: std::fmt::Debug>(r: raft::Result<T>) -> bool {
        matches!(r, Err(raft::Error::Store(StorageError::Compacted)))
    }

    /// The store follows raft-rs's `Storage` contract across append,
    /// truncation, apply, compaction, snapshots and reopening.
    #[test]
    fn storage_contract_and_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("raft.redb");
        {
            let s = RedbStorage::open(&path, &[1, 2, 3]).expect("open");
            let init = s.initial_state().expect("initial state");
            assert_eq!(init.conf_state.voters, vec![1, 2, 3]);
            assert_eq!(
                (
                    s.first_index().expect("first"),
                    s.last_index().expect("last")
                ),
                (1, 0)
            );

            let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
            let hs = HardState {
                term: 1,
                vote: 2,
                commit: 0,
                ..Default::default()
            };
            s.append(&ents, Some(&hs)).expect("append");
            assert_eq!(s.last_index().expect("last"), 10);
            let got = s
                .entries(1, 11, None, GetEntriesContext::empty(false))
                .expect("entries");
            assert_eq!(got, ents);

            // A new leader's entries replace the conflicting suffix.
            s.append(&[entry(8, 2), entry(9, 2)], None).expect("append");
            assert_eq!(s.last_index().expect("last"), 9);
            assert_eq!(s.term(8).expect("term"), 2);

            let changes = [
                ("a".to_string(), Some(b"1".to_vec())),
                ("b".to_string(), Some(b"2".to_vec())),
            ];
            s.record_applied(LogId { index: 7, term: 1 }, None, &changes)
                .expect("record applied");
            s.record_applied(
                LogId { index: 7, term: 1 },
                None,
                &[("b".to_string(), None)],
            )
            .expect("remove a key");
            assert_eq!(s.initial_state().expect("state").hard_state.commit, 7);

            s.compact(LogId { index: 5, term: 1 }).expect("compact");
            assert_eq!(s.first_index().expect("first"), 6);
            assert_eq!(s.term(5).expect("term"), 1);
            assert!(is_compacted(s.term(4)));
            assert!(is_compacted(s.entries(
                5,
                8,
                None,
                GetEntriesContext::empty(false)
            )));

            let snap = s.snapshot(0, 2).expect("snapshot");
            assert_eq!(
                (snap.get_metadata().index, snap.get_metadata().term),
                (7, 1)
            );
            assert_eq!(
                decode_image(&snap.data),
                Ok(vec![("a".to_string(), b"1".to_vec())])
            );
            assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        }
        // Reopening keeps everything (the voters given now are ignored).
        let s = RedbStorage::open(&path, &[9]).expect("reopen");
        let loaded = s.load().expect("load");
        assert_eq!(loaded.applied, LogId { index: 7, term: 1 });
        assert_eq!(loaded.log_start, LogId { index: 5, term: 1 });
        assert_eq!(loaded.sm_keys, vec![("a".to_string(), b"1".to_vec())]);
        assert_eq!(loaded.conf_state.voters, vec![1, 2, 3]);
        let hs = s.initial_state().expect("state").hard_state;
        assert_eq!((hs.term, hs.vote, hs.commit), (1, 2, 7));

        // Installing a leader's snapshot replaces log and state.
        let newer = vec![("z".to_string(), b"9".to_vec())];
        let mut snap = Snapshot {
            data: encode_image(&newer).into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.install_snapshot(&snap).expect("install");
        assert_eq!(
            (
                s.first_index().expect("first"),
                s.last_index().expect("last")
            ),
            (21, 20)
        );
        assert_eq!(s.term(20).expect("term"), 3);
        let hs = s.initial_state().expect("state").hard_state;
        assert_eq!((hs.term, hs.commit), (3, 20));
        let loaded = s.load().expect("load");
        assert_eq!(loaded.applied, LogId { index: 20, term: 3 });
        assert_eq!(
            loaded.sm_keys, newer,
            "the snapshot's keys replace the old ones"
        );
    }

    #[test]
    fn a_store_with_a_whole_catalog_image_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        drop(RedbStorage::open(&path, &[1]).expect("create"));
        {
            let db = Database::create(&path).expect("open");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert(LEGACY_SM_IMAGE, &b"{}"[..])
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = RedbStorage::open(&path, &[1]).expect_err("refused");
        assert!(err.to_string().contains("earlier lockstep"), "{err}");
    }
}
