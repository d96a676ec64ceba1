//! raft-rs `Storage` for one group, over the node's shared raft-engine.
//!
//! Entries live in raft-engine under the group id; the hard state, conf state and apply state
//! are raft-engine key-values of the group. This struct caches the hard and conf state (raft-rs
//! reads them only at start), the terms of recent entries, and the entries written but not yet
//! applied (raft-rs asks for those right after they are written, to apply them); older entries
//! are read from the engine.
//!
//! A group founded with voters starts as if a snapshot at index [`INIT_INDEX`] held its first
//! configuration (as TiKV does): its log begins after that index, so a replica added later —
//! which starts empty, knowing no voters — always receives a snapshot, whose metadata carries
//! the configuration, and never rebuilds it from conf-change entries alone (which would leave
//! out the founders and let it elect itself in a group of one).

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{LogBatch, MessageExt};

use crate::cluster::Shared;
use crate::engine_fs::NodeEngine;

use crate::error::{Error, Result};

const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const APPLY_STATE_KEY: &[u8] = b"apply_state";
/// The configuration as of the apply state's index: what a snapshot at that index carries.
const APPLY_CONF_STATE_KEY: &[u8] = b"apply_conf_state";
const TRUNCATED_STATE_KEY: &[u8] = b"truncated_state";
/// The metadata group's catalog as of its truncated index (an installed snapshot).
const METADATA_IMAGE_KEY: &[u8] = b"metadata_image";
/// Left by [`GroupStorage::clean`]: this node held a replica of the group and dropped it.
const TOMBSTONE_KEY: &[u8] = b"tombstone";

/// Index (and term) of the implicit snapshot a founded group starts from.
pub(crate) const INIT_INDEX: u64 = 5;
pub(crate) const INIT_TERM: u64 = 5;

/// Most bytes of unapplied entries one group keeps in memory; past it (a replica that cannot
/// apply, say), the oldest are read from the engine again. Counted as encoded entries: an entry
/// decoded from the wire shares its received buffer, which stays allocated until the entry is
/// applied (a round trip or a heartbeat later), so memory can briefly exceed this.
const UNAPPLIED_CACHE_BYTES: usize = 64 << 20;

/// Tells raft-engine how to find the index of a raft-rs entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// Where a partition's log stood the last time it was flushed: the Raft entries up to
/// `applied_index` are durably in the log, which then ended at `next_offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ApplyState {
    pub applied_index: u64,
    pub next_offset: u64,
}

/// What a partition snapshot carries: its log is every batch below `next_offset`, pulled from
/// a replica that has it (see `store::install_snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotData {
    pub next_offset: u64,
}

/// Every voter of a configuration: the incoming and, in a joint configuration, the outgoing
/// ones, in id order. A node in either still counts for quorums.
pub(crate) fn members(conf_state: &ConfState) -> Vec<u64> {
    let mut members: Vec<u64> = conf_state.voters.iter().chain(&conf_state.voters_outgoing).copied().collect();
    members.sort_unstable();
    members.dedup();
    members
}

/// One group's view of the raft-engine.
///
/// # Invariants
/// `truncated` is the (index, term) of the last entry removed by compaction or covered by an
/// installed snapshot; entries after it are in the engine.
pub(crate) struct GroupStorage {
    engine: Arc<NodeEngine>,
    group: u64,
    hard_state: HardState,
    conf_state: ConfState,
    truncated: (u64, u64),
    /// Terms of the entries written since this process started, as runs: first index → term.
    /// raft-rs asks for terms constantly; reading a whole entry back from raft-engine to learn
    /// one cost a fifth of the store loop's time.
    term_runs: std::collections::BTreeMap<u64, u64>,
    /// The first index `term_runs` covers; older entries are read from the engine.
    terms_from: u64,
    /// The entries written and not yet applied, contiguous (at most [`UNAPPLIED_CACHE_BYTES`]).
    /// Without it every entry was read back from raft-engine's file (a copy, the block's
    /// checksum and a decode) moments after being written, only to be applied.
    unapplied: std::collections::VecDeque<Entry>,
    unapplied_bytes: usize,
    /// For the metadata group: where its snapshots come from (the catalog as applied).
    catalog: Option<Arc<Shared>>,
}

impl GroupStorage {
    /// Loads a group's state. A group the engine has never seen is founded with `voters`
    /// (at [`INIT_INDEX`]), or, with none, starts empty to be brought in by a snapshot.
    ///
    /// A group this node dropped before (see [`GroupStorage::clean`]) is never founded again,
    /// whatever `voters` says: a restart that replays the topic's creation from the metadata
    /// log must not bring back a replica at the group's first state, with its old votes
    /// forgotten. It starts empty instead, for a leader to bring in if it is placed here again.
    pub fn open(engine: Arc<NodeEngine>, group: u64, voters: &[u64]) -> Result<(GroupStorage, bool)> {
        let conf_state: Option<ConfState> = engine.get_message(group, CONF_STATE_KEY).map_err(engine_error)?;
        let existed = conf_state.is_some();
        let voters = if engine.get(group, TOMBSTONE_KEY).is_some() { &[] } else { voters };
        if !existed {
            let conf_state = ConfState { voters: voters.to_vec(), ..ConfState::default() };
            let mut batch = LogBatch::default();
            batch.put_message(group, CONF_STATE_KEY.to_vec(), &conf_state).map_err(engine_error)?;
            if !voters.is_empty() {
                let hard_state = HardState { term: INIT_TERM, commit: INIT_INDEX, ..HardState::default() };
                batch.put_message(group, HARD_STATE_KEY.to_vec(), &hard_state).map_err(engine_error)?;
                batch.put(group, TRUNCATED_STATE_KEY.to_vec(), pair(INIT_INDEX, INIT_TERM)).map_err(engine_error)?;
                batch.put(group, APPLY_STATE_KEY.to_vec(), pair(INIT_INDEX, 0)).map_err(engine_error)?;
                batch.put_message(group, APPLY_CONF_STATE_KEY.to_vec(), &conf_state).map_err(engine_error)?;
            }
            engine.write(&mut batch, true).map_err(engine_error)?;
        }
        let hard_state: Option<HardState> = engine.get_message(group, HARD_STATE_KEY).map_err(engine_error)?;
        let conf_state: ConfState =
            engine.get_message(group, CONF_STATE_KEY).map_err(engine_error)?.unwrap_or_default();
        let truncated = engine
            .get(group, TRUNCATED_STATE_KEY)
            .filter(|value| value.len() == 16)
            .map(|value| (u64_at(&value, 0), u64_at(&value, 8)))
            .unwrap_or((0, 0));
        let terms_from = engine.last_index(group).unwrap_or(truncated.0) + 1;
        let storage = GroupStorage {
            engine,
            group,
            hard_state: hard_state.unwrap_or_default(),
            conf_state,
            truncated,
            term_runs: std::collections::BTreeMap::new(),
            terms_from,
            unapplied: std::collections::VecDeque::new(),
            unapplied_bytes: 0,
            catalog: None,
        };
        Ok((storage, existed))
    }

    /// Makes this the metadata group's storage: its snapshots carry the catalog as applied.
    pub fn serve_catalog(&mut self, shared: Arc<Shared>) {
        self.catalog = Some(shared);
    }

    /// The index of the last entry not in the log (compacted, or covered by a snapshot).
    pub fn truncated_index(&self) -> u64 {
        self.truncated.0
    }

    /// The catalog an installed metadata snapshot left (as of the truncated index), if any.
    pub fn metadata_image(&self) -> Option<Vec<u8>> {
        self.engine.get(self.group, METADATA_IMAGE_KEY)
    }

    /// Records the catalog of an installed metadata snapshot.
    pub fn stage_metadata_image(&self, batch: &mut LogBatch, image: &[u8]) -> Result<()> {
        batch.put(self.group, METADATA_IMAGE_KEY.to_vec(), image.to_vec()).map_err(engine_error)
    }

    /// Entries up to `applied` were committed before they were applied: make sure the hard
    /// state says so, since raft-rs refuses an applied index above the commit index.
    pub fn ensure_committed(&mut self, applied: u64) {
        if self.hard_state.commit < applied {
            self.hard_state.commit = applied;
        }
    }

    /// Adds this group's new entries and hard state to the loop's batch.
    pub fn stage(&mut self, batch: &mut LogBatch, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        if !entries.is_empty() {
            batch.add_entries::<EntryExt>(self.group, entries).map_err(engine_error)?;
            self.remember_terms(entries);
            self.remember_unapplied(entries);
        }
        if let Some(hard_state) = hard_state {
            batch.put_message(self.group, HARD_STATE_KEY.to_vec(), hard_state).map_err(engine_error)?;
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    /// Records a new conf state (after a conf change was applied).
    pub fn stage_conf_state(&mut self, batch: &mut LogBatch, conf_state: ConfState) -> Result<()> {
        batch.put_message(self.group, CONF_STATE_KEY.to_vec(), &conf_state).map_err(engine_error)?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Records where the partition log stood at its last flush.
    ///
    /// Staged right after applying up to `state.applied_index`, so the configuration in force is
    /// the one at that index; it is recorded with it for snapshots (a snapshot carrying a later
    /// configuration would have the receiver apply the conf changes in between twice).
    pub fn stage_apply_state(&self, batch: &mut LogBatch, state: ApplyState) -> Result<()> {
        batch
            .put(self.group, APPLY_STATE_KEY.to_vec(), pair(state.applied_index, state.next_offset))
            .map_err(engine_error)?;
        batch.put_message(self.group, APPLY_CONF_STATE_KEY.to_vec(), &self.conf_state).map_err(engine_error)
    }

    /// The apply state recorded by the last flush, if any.
    pub fn apply_state(&self) -> Option<ApplyState> {
        let value = self.engine.get(self.group, APPLY_STATE_KEY)?;
        if value.len() != 16 {
            return None;
        }
        Some(ApplyState { applied_index: u64_at(&value, 0), next_offset: u64_at(&value, 8) })
    }

    fn remember_terms(&mut self, entries: &[Entry]) {
        let first = entries[0].index;
        // New entries replace everything from their first index on.
        self.term_runs.split_off(&first);
        self.terms_from = self.terms_from.min(first);
        for entry in entries {
            let current = self.term_runs.range(..=entry.index).next_back().map(|(_, term)| *term);
            if current != Some(entry.term) {
                self.term_runs.insert(entry.index, entry.term);
            }
        }
    }

    fn remember_unapplied(&mut self, entries: &[Entry]) {
        let first = entries[0].index;
        // New entries replace everything from their first index on.
        while self.unapplied.back().is_some_and(|entry| entry.index >= first) {
            let dropped = self.unapplied.pop_back().expect("checked");
            self.unapplied_bytes -= entry_bytes(&dropped);
        }
        if self.unapplied.back().is_some_and(|entry| entry.index + 1 != first) {
            self.forget_unapplied();
        }
        for entry in entries {
            self.unapplied_bytes += entry_bytes(entry);
            self.unapplied.push_back(entry.clone());
        }
        while self.unapplied_bytes > UNAPPLIED_CACHE_BYTES {
            let Some(dropped) = self.unapplied.pop_front() else { break };
            self.unapplied_bytes -= entry_bytes(&dropped);
        }
    }

    /// Entries up to `index` were handed out to be applied: raft-rs reads them from the
    /// engine if it ever needs them again (a follower far behind).
    pub fn applied_to(&mut self, index: u64) {
        while self.unapplied.front().is_some_and(|entry| entry.index <= index) {
            let dropped = self.unapplied.pop_front().expect("checked");
            self.unapplied_bytes -= entry_bytes(&dropped);
        }
    }

    fn forget_unapplied(&mut self) {
        self.unapplied.clear();
        self.unapplied_bytes = 0;
    }

    /// Entries `low..high` from the cache of unapplied ones, if it holds them all, cut to
    /// `max_size` as raft-rs cuts (always at least one entry).
    fn cached_entries(&self, low: u64, high: u64, max_size: Option<usize>) -> Option<Vec<Entry>> {
        let first = self.unapplied.front()?.index;
        let last = self.unapplied.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut total = 0;
        for entry in self.unapplied.range((low - first) as usize..(high - first) as usize) {
            total += entry_bytes(entry);
            if max_size.is_some_and(|max| total > max) && !entries.is_empty() {
                break;
            }
            entries.push(entry.clone());
        }
        Some(entries)
    }

    fn cached_term(&self, index: u64) -> Option<u64> {
        if index < self.terms_from || index > self.engine.last_index(self.group)? {
            return None;
        }
        self.term_runs.range(..=index).next_back().map(|(_, term)| *term)
    }

    /// Drops the entries before `index`: their effects are durably in the partition log.
    pub fn compact(&mut self, batch: &mut LogBatch, index: u64) -> Result<()> {
        let first = self.first_index().unwrap_or(1);
        if index <= first {
            return Ok(());
        }
        let term = self.term(index - 1).map_err(|e| Error::Engine(e.to_string()))?;
        batch.add_command(self.group, raft_engine::Command::Compact { index });
        // Keep the run that covers `index`; drop the ones wholly below it.
        let keep_from = self.term_runs.range(..=index).next_back().map_or(index, |(start, _)| *start);
        self.term_runs = self.term_runs.split_off(&keep_from);
        self.applied_to(index - 1);
        self.stage_truncated(batch, (index - 1, term))
    }

    fn stage_truncated(&mut self, batch: &mut LogBatch, truncated: (u64, u64)) -> Result<()> {
        batch.put(self.group, TRUNCATED_STATE_KEY.to_vec(), pair(truncated.0, truncated.1)).map_err(engine_error)?;
        self.truncated = truncated;
        Ok(())
    }

    /// Replaces the group's Raft state with an installed snapshot whose data (the partition log
    /// up to `next_offset`) is already in place and flushed.
    pub fn apply_snapshot(&mut self, batch: &mut LogBatch, snapshot: &Snapshot, next_offset: u64) -> Result<()> {
        let metadata = snapshot.get_metadata();
        batch.add_command(self.group, raft_engine::Command::Clean);
        self.term_runs.clear();
        self.forget_unapplied();
        self.terms_from = metadata.index + 1;
        self.stage_truncated(batch, (metadata.index, metadata.term))?;
        let conf_state = metadata.get_conf_state().clone();
        self.stage_conf_state(batch, conf_state)?;
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(metadata.index);
        hard_state.term = hard_state.term.max(metadata.term);
        self.stage(batch, &[], Some(&hard_state))?;
        self.stage_apply_state(batch, ApplyState { applied_index: metadata.index, next_offset })
    }

    /// Removes everything the engine holds for this group (the topic was deleted, or the
    /// replica moved away), leaving a tombstone behind.
    pub fn clean(&mut self, batch: &mut LogBatch) -> Result<()> {
        self.forget_unapplied();
        batch.add_command(self.group, raft_engine::Command::Clean);
        batch.put(self.group, TOMBSTONE_KEY.to_vec(), vec![1]).map_err(engine_error)
    }

    fn entry_term(&self, index: u64) -> raft::Result<Option<u64>> {
        let entry = read_racing_purge(|| self.engine.get_entry::<EntryExt>(self.group, index)).map_err(raft_error)?;
        Ok(entry.map(|entry| entry.term))
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index()? {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let max_size = max_size.into().map(|size| size as usize);
        if let Some(entries) = self.cached_entries(low, high, max_size) {
            return Ok(entries);
        }
        read_racing_purge(|| {
            let mut entries = Vec::with_capacity((high - low) as usize);
            self.engine.fetch_entries_to::<EntryExt>(self.group, low, high, max_size, &mut entries)?;
            Ok(entries)
        })
        .map_err(raft_error)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if index < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if let Some(term) = self.cached_term(index) {
            return Ok(term);
        }
        match self.entry_term(index)? {
            Some(term) => Ok(term),
            None if index < self.first_index()? => Err(raft::Error::Store(StorageError::Compacted)),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.engine.first_index(self.group).unwrap_or(self.truncated.0 + 1))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.engine.last_index(self.group).unwrap_or(self.truncated.0))
    }

    /// A partition's snapshot is its last flushed apply state: the partition log up to its
    /// next offset is durable on this replica, which serves it to the follower over
    /// `ReadReplica`. The metadata group's is the catalog as applied, carried in the snapshot.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        if let Some(shared) = &self.catalog {
            // The store loop applies and snapshots on one thread: catalog, index and conf
            // state agree.
            let index = shared.metadata_applied.load(std::sync::atomic::Ordering::Acquire).max(self.truncated.0);
            let term = self.term(index)?;
            let catalog = shared.catalog.read().unwrap_or_else(|p| p.into_inner());
            let data = serde_json::to_vec(&*catalog).map_err(|_| unavailable())?;
            let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
            let metadata = snapshot.mut_metadata();
            metadata.index = index;
            metadata.term = term;
            metadata.set_conf_state(self.conf_state.clone());
            return Ok(snapshot);
        }
        let state = self.apply_state().ok_or_else(unavailable)?;
        let term = self.term(state.applied_index)?;
        let conf_state: ConfState = self
            .engine
            .get_message(self.group, APPLY_CONF_STATE_KEY)
            .map_err(raft_error)?
            .unwrap_or_else(|| self.conf_state.clone());
        let data = serde_json::to_vec(&SnapshotData { next_offset: state.next_offset }).map_err(|_| unavailable())?;
        let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
        let metadata = snapshot.mut_metadata();
        metadata.index = state.applied_index;
        metadata.term = term;
        metadata.set_conf_state(conf_state);
        Ok(snapshot)
    }
}

/// Runs a raft-engine read again if it found its file gone: raft-engine looks an entry's place
/// up and then reads the file without holding its index lock, and the purge thread may copy a
/// small group's old entries to a new file and purge the old one in between. The second
/// lookup finds the new place. Anything else, or a second failure, is reported.
fn read_racing_purge<T>(read: impl Fn() -> raft_engine::Result<T>) -> raft_engine::Result<T> {
    match read() {
        Err(raft_engine::Error::Corruption(_)) => read(),
        other => other,
    }
}

/// An entry's size as raft-rs and raft-engine count it (encoded).
fn entry_bytes(entry: &Entry) -> usize {
    entry.compute_size() as usize
}

/// Two numbers as 16 big-endian bytes (the truncated and apply states).
fn pair(a: u64, b: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&a.to_be_bytes());
    value.extend_from_slice(&b.to_be_bytes());
    value
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub(crate) fn engine_error(error: raft_engine::Error) -> Error {
    Error::Engine(error.to_string())
}

fn raft_error(error: raft_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(error)))
}

/// Encodes a raft-rs message for the wire.
pub(crate) fn encode_message(message: &raft::eraftpb::Message) -> Vec<u8> {
    message.write_to_bytes().unwrap_or_default()
}

/// Decodes a raft-rs message from the wire. Entry payloads become slices of `bytes`, not copies.
pub(crate) fn decode_message(bytes: &bytes::Bytes) -> Option<raft::eraftpb::Message> {
    raft::eraftpb::Message::parse_from_carllerche_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(dir: &std::path::Path) -> Arc<NodeEngine> {
        let config = raft_engine::Config { dir: dir.to_string_lossy().into_owned(), ..raft_engine::Config::default() };
        Arc::new(NodeEngine::open_with_file_system(config, Arc::default()).unwrap())
    }

    #[test]
    fn decoded_entries_share_the_received_buffer_and_equal_what_was_sent() {
        let mut sent = raft::eraftpb::Message::default();
        sent.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        sent.term = 7;
        sent.set_entries(
            (1..=3u64)
                .map(|index| Entry { index, term: 7, data: vec![index as u8; 1000].into(), ..Entry::default() })
                .collect::<Vec<_>>()
                .into(),
        );
        let wire = bytes::Bytes::from(encode_message(&sent));
        let received = decode_message(&wire).expect("decodes");
        assert_eq!(received, sent);
        let wire_range = wire.as_ptr_range();
        for entry in received.get_entries() {
            assert!(wire_range.contains(&entry.data.as_ptr()), "entry {} was copied out of the buffer", entry.index);
        }
        assert!(decode_message(&wire.slice(..wire.len() - 1)).is_none(), "a cut message is refused");
    }

    #[test]
    fn a_dropped_group_is_never_founded_again() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let (storage, existed) = GroupStorage::open(engine.clone(), 1007, &[1, 2, 3]).unwrap();
        assert!(!existed);
        assert_eq!(storage.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        let mut batch = LogBatch::default();
        let mut storage = storage;
        storage.clean(&mut batch).unwrap();
        engine.write(&mut batch, true).unwrap();
        drop(storage);
        // As a restart replaying the topic's creation would ask, also after reopening the engine.
        drop(engine);
        let engine = self::engine(dir.path());
        let (storage, existed) = GroupStorage::open(engine, 1007, &[1, 2, 3]).unwrap();
        assert!(!existed, "nothing of the dropped replica is left");
        let state = storage.initial_state().unwrap();
        assert!(state.conf_state.voters.is_empty(), "not founded again: {:?}", state.conf_state);
        assert_eq!(state.hard_state.commit, 0);
        assert_eq!(storage.truncated_index(), 0);
    }

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        let mut entry = Entry { index, term, ..Entry::default() };
        entry.data = vec![(index % 251) as u8; bytes].into();
        entry
    }

    /// What the engine alone answers: the cache must never answer differently.
    fn from_engine(storage: &GroupStorage, low: u64, high: u64, max_size: Option<u64>) -> Vec<Entry> {
        let mut entries = Vec::new();
        let max_size = max_size.map(|size| size as usize);
        storage.engine.fetch_entries_to::<EntryExt>(storage.group, low, high, max_size, &mut entries).unwrap();
        entries
    }

    #[test]
    fn unapplied_entries_are_served_from_memory_exactly_as_the_engine_serves_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let (mut storage, _) = GroupStorage::open(engine.clone(), 9, &[1]).unwrap();
        let write = |storage: &mut GroupStorage, entries: &[Entry]| {
            let mut batch = LogBatch::default();
            storage.stage(&mut batch, entries, None).unwrap();
            engine.write(&mut batch, true).unwrap();
        };
        let first: Vec<Entry> = (6..16).map(|index| entry(index, 6, 1000 + index as usize)).collect();
        write(&mut storage, &first);
        let context = || GetEntriesContext::empty(false);
        for (low, high, max_size) in
            [(6, 16, None), (8, 12, None), (6, 16, Some(3000)), (10, 11, Some(1)), (6, 16, Some(0))]
        {
            let cached = storage.cached_entries(low, high, max_size.map(|s| s as usize)).expect("cached");
            assert_eq!(cached, from_engine(&storage, low, high, max_size), "{low}..{high} max {max_size:?}");
            assert_eq!(storage.entries(low, high, max_size, context()).unwrap(), cached);
        }
        // A new leader's entries replace the tail from their first index on.
        let replacing: Vec<Entry> = (12..14).map(|index| entry(index, 7, 50)).collect();
        write(&mut storage, &replacing);
        assert_eq!(storage.cached_entries(6, 14, None).unwrap(), from_engine(&storage, 6, 14, None));
        assert!(storage.cached_entries(6, 15, None).is_none(), "15 was replaced away");
        // Applied entries leave memory and come from the engine.
        storage.applied_to(9);
        assert!(storage.cached_entries(9, 14, None).is_none());
        assert_eq!(storage.entries(8, 14, None, context()).unwrap(), from_engine(&storage, 8, 14, None));
        assert_eq!(storage.cached_entries(10, 14, None).unwrap(), from_engine(&storage, 10, 14, None));
        // A compaction past them, and a clean, empty it.
        let mut batch = LogBatch::default();
        storage.compact(&mut batch, 12).unwrap();
        engine.write(&mut batch, true).unwrap();
        assert_eq!(storage.cached_entries(12, 14, None).unwrap(), from_engine(&storage, 12, 14, None));
        assert!(storage.cached_entries(11, 14, None).is_none());
        let mut batch = LogBatch::default();
        storage.clean(&mut batch).unwrap();
        assert!(storage.cached_entries(12, 14, None).is_none());
    }

    #[test]
    fn a_founded_group_starts_from_a_snapshot_at_the_initial_index() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, existed) = GroupStorage::open(engine(dir.path()), 7, &[1, 2, 3]).unwrap();
        assert!(!existed);
        assert_eq!((storage.first_index().unwrap(), storage.last_index().unwrap()), (INIT_INDEX + 1, INIT_INDEX));
        assert_eq!(storage.term(INIT_INDEX).unwrap(), INIT_TERM);
        assert_eq!(storage.initial_state().unwrap().hard_state.commit, INIT_INDEX);
        let (empty, _) = GroupStorage::open(engine(&dir.path().join("other")), 8, &[]).unwrap();
        assert_eq!(empty.last_index().unwrap(), 0, "a replica added later starts empty, for a snapshot");
    }

    #[test]
    fn a_snapshot_carries_the_configuration_at_its_index_not_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut storage, _) = GroupStorage::open(engine(dir.path()), 7, &[1, 2, 3]).unwrap();
        // A conf change applied after the last recorded apply state (nothing flushed since).
        let mut batch = LogBatch::default();
        let later = ConfState { voters: vec![2, 3, 4], ..ConfState::default() };
        storage.stage_conf_state(&mut batch, later.clone()).unwrap();
        storage.engine.write(&mut batch, true).unwrap();
        let snapshot = storage.snapshot(0, 4).unwrap();
        assert_eq!(snapshot.get_metadata().index, INIT_INDEX);
        assert_eq!(snapshot.get_metadata().get_conf_state().voters, vec![1, 2, 3], "the founders, as at index 5");
        // Once an apply state is recorded after the change, snapshots carry the new configuration.
        let mut batch = LogBatch::default();
        storage.stage_apply_state(&mut batch, ApplyState { applied_index: INIT_INDEX, next_offset: 0 }).unwrap();
        storage.engine.write(&mut batch, true).unwrap();
        assert_eq!(storage.snapshot(0, 4).unwrap().get_metadata().get_conf_state().voters, later.voters);
    }
}
