//! Producer state of one partition replica: for each producer id, its epoch and the sequence
//! numbers and offsets of its last few batches (idempotence), plus the transactions open in
//! this partition and the aborted ones (`read_committed` reads stop at the first open
//! transaction's first offset, the last stable offset, and skip aborted ones).
//!
//! Every replica applies the same committed batches in the same order, so every replica holds
//! the same state and makes the same decision for a batch: append it, acknowledge it as a
//! duplicate of a cached batch (with that batch's offsets, appending nothing), or refuse it
//! (sequence gap, stale epoch). The state is rebuilt on open from a snapshot file written at
//! flushes plus a scan of the log after it; a missing or unreadable snapshot means a scan of
//! the whole log (correct, only slower).
//!
//! Known limit: producers whose every batch was deleted by retention are forgotten by a replica
//! that rebuilds from its log, as Kafka forgets expired producers; such a producer's next batch
//! is accepted with any sequence, like a new producer's.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log_store::batch::{self, BatchHeader};
use log_store::{LogReader, Offset};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{Error, Result};

/// Batches remembered per producer: Kafka's `max.in.flight.requests.per.connection` limit for
/// idempotence, so any in-flight batch a client retries is found.
pub(crate) const BATCHES_KEPT: usize = 5;

/// File name of the snapshot in the partition's directory.
const SNAPSHOT_FILE: &str = "producers.json";

/// Snapshots are written at flushes, at most this often (and at shutdown).
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes read per step while scanning the log to rebuild the state.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

/// One appended batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SequencedBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    last_offset: u64,
}

/// What is known of one producer id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first, at most [`BATCHES_KEPT`].
    batches: VecDeque<SequencedBatch>,
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Append it (then call [`Producers::record`]).
    Append,
    /// A retry of a batch already in the log: answer with its offsets, append nothing.
    Duplicate(Offset, Offset),
}

/// A transaction marker: the outcome a control batch records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// The producer's transaction in this partition committed.
    Commit,
    /// It aborted: its records are to be skipped by `read_committed` readers.
    Abort,
}

impl Marker {
    /// The marker a control batch carries (its first record's key: version, type), if valid.
    pub fn of(stored: &batch::Batch) -> Option<Marker> {
        let record = stored.records(1 << 20).ok()?.next()?.ok()?;
        let key = record.key?;
        match key.get(2..4) {
            Some([0, 0]) => Some(Marker::Abort),
            Some([0, 1]) => Some(Marker::Commit),
            _ => None,
        }
    }
}

/// An aborted transaction of one producer in this partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    /// The producer id.
    pub producer_id: i64,
    /// Offset of the transaction's first batch here.
    pub first_offset: u64,
    /// Offset of its abort marker.
    pub last_offset: u64,
}

/// Producer state of one partition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Producers {
    producers: BTreeMap<i64, ProducerEntry>,
    /// Open transactions: producer id → offset of its first batch here.
    #[serde(default)]
    ongoing: BTreeMap<i64, u64>,
    /// Aborted transactions, in marker order.
    #[serde(default)]
    aborted: Vec<AbortedTxn>,
    /// The log offset this state covers (the next offset after the last batch recorded).
    offset: u64,
    /// Changed since the last snapshot was written.
    #[serde(skip)]
    dirty: bool,
    /// When the last snapshot was written.
    #[serde(skip)]
    saved_at: Option<Instant>,
}

/// Kafka's sequence arithmetic: sequences wrap from `i32::MAX` to 0.
fn add_sequence(sequence: i32, delta: i32) -> i32 {
    if sequence > i32::MAX - delta {
        delta - (i32::MAX - sequence) - 1
    } else {
        sequence + delta
    }
}

impl Producers {
    /// Decides what to do with a batch about to be applied. Deterministic: depends only on the
    /// state (the batches applied before) and the header.
    pub fn check(&self, header: &BatchHeader) -> Result<Decision> {
        if header.producer_id < 0 {
            return Ok(Decision::Append);
        }
        if header.is_control() {
            // A marker from a fenced (older) coordinator epoch of the producer is refused.
            return match self.producers.get(&header.producer_id) {
                Some(entry) if header.producer_epoch < entry.epoch => Err(Error::InvalidProducerEpoch {
                    producer_id: header.producer_id,
                    epoch: header.producer_epoch,
                    current: entry.epoch,
                }),
                _ => Ok(Decision::Append),
            };
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // A producer this partition has not seen (or has forgotten): any sequence starts it.
            return Ok(Decision::Append);
        };
        let first = header.base_sequence;
        if header.producer_epoch < entry.epoch {
            return Err(Error::InvalidProducerEpoch {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if first < 0 {
            // No sequence (a coordinator's own transactional write): nothing to deduplicate.
            return Ok(Decision::Append);
        }
        if header.producer_epoch > entry.epoch {
            // A bumped epoch restarts the sequence.
            return if first == 0 {
                Ok(Decision::Append)
            } else {
                Err(Error::OutOfOrderSequence { producer_id: header.producer_id, expected: 0, got: first })
            };
        }
        let last = add_sequence(first, header.last_offset_delta);
        if let Some(cached) = entry.batches.iter().find(|b| b.first_sequence == first && b.last_sequence == last) {
            return Ok(Decision::Duplicate(Offset(cached.base_offset), Offset(cached.last_offset)));
        }
        let expected = entry.batches.back().map_or(first, |b| add_sequence(b.last_sequence, 1));
        if first != expected {
            return Err(Error::OutOfOrderSequence { producer_id: header.producer_id, expected, got: first });
        }
        Ok(Decision::Append)
    }

    /// Records a batch that was appended at `base..=last` (also any batch met while scanning);
    /// `marker` is what a control batch says.
    pub fn record(&mut self, header: &BatchHeader, base: Offset, last: Offset, marker: Option<Marker>) {
        self.offset = self.offset.max(last.0 + 1);
        self.dirty = true;
        if header.producer_id < 0 {
            return;
        }
        if header.is_control() {
            let entry = self
                .producers
                .entry(header.producer_id)
                .or_insert_with(|| ProducerEntry { epoch: header.producer_epoch, batches: VecDeque::new() });
            if header.producer_epoch > entry.epoch {
                entry.epoch = header.producer_epoch;
                entry.batches.clear();
            }
            if let Some(first_offset) = self.ongoing.remove(&header.producer_id) {
                if marker == Some(Marker::Abort) {
                    let aborted = AbortedTxn { producer_id: header.producer_id, first_offset, last_offset: base.0 };
                    self.aborted.push(aborted);
                }
            }
            return;
        }
        if header.is_transactional() {
            self.ongoing.entry(header.producer_id).or_insert(base.0);
        }
        if header.base_sequence < 0 {
            let entry = self
                .producers
                .entry(header.producer_id)
                .or_insert_with(|| ProducerEntry { epoch: header.producer_epoch, batches: VecDeque::new() });
            entry.epoch = entry.epoch.max(header.producer_epoch);
            return;
        }
        let batch = SequencedBatch {
            first_sequence: header.base_sequence,
            last_sequence: add_sequence(header.base_sequence, header.last_offset_delta),
            base_offset: base.0,
            last_offset: last.0,
        };
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry { epoch: header.producer_epoch, batches: VecDeque::new() });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
    }

    /// The last stable offset: the first offset of the oldest open transaction, or the end.
    pub fn last_stable_offset(&self) -> u64 {
        self.ongoing.values().copied().min().unwrap_or(self.offset)
    }

    /// The aborted transactions, in marker order.
    pub fn aborted(&self) -> &[AbortedTxn] {
        &self.aborted
    }

    /// Forgets aborted transactions that ended before the log's start.
    pub fn trim_aborted(&mut self, log_start: u64) {
        let before = self.aborted.len();
        self.aborted.retain(|a| a.last_offset >= log_start);
        if self.aborted.len() != before {
            self.dirty = true;
        }
    }

    /// Forgets everything: the log restarts empty at `offset`.
    pub fn reset(&mut self, offset: u64) {
        self.ongoing.clear();
        self.aborted.clear();
        self.producers.clear();
        self.offset = offset;
        self.dirty = true;
    }

    /// Rebuilds the state of a log that was just opened (and cut back to what Raft accounts for).
    pub fn load(dir: &Path, reader: &LogReader) -> Result<Producers> {
        let next = reader.next_offset().0;
        let start = reader.log_start_offset().0;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE));
        let mut producers = match snapshot {
            // A snapshot past the log's end was written after a flush Raft never recorded.
            Some(snapshot) if snapshot.offset <= next && snapshot.offset >= start => snapshot,
            _ => Producers { offset: start, ..Producers::default() },
        };
        producers.scan(reader, next)?;
        producers.dirty = true;
        Ok(producers)
    }

    /// Records every batch from the state's offset up to `until`.
    pub fn scan(&mut self, reader: &LogReader, until: u64) -> Result<()> {
        while self.offset < until {
            let bytes = reader.read(Offset(self.offset), SCAN_CHUNK_BYTES)?;
            if bytes.is_empty() {
                break;
            }
            let before = self.offset;
            for stored in batch::batches(bytes) {
                let stored = stored?;
                let header = *stored.header();
                if header.last_offset().0 >= self.offset {
                    let marker = if header.is_control() { Marker::of(&stored) } else { None };
                    self.record(&header, header.base_offset(), header.last_offset(), marker);
                }
            }
            if self.offset == before {
                break;
            }
        }
        Ok(())
    }

    /// Writes the snapshot file if the state changed since the last one and `force` is set or
    /// the last one is older than [`SNAPSHOT_INTERVAL`]. Call right after a flush: the file
    /// must not cover data the log could lose. Not fsynced: a lost or torn file is detected on
    /// open and the log scanned from an older point instead.
    pub fn save(&mut self, dir: &Path, force: bool) {
        let due = force || self.saved_at.is_none_or(|at| at.elapsed() >= SNAPSHOT_INTERVAL);
        if !self.dirty || !due {
            return;
        }
        let path = dir.join(SNAPSHOT_FILE);
        let temporary = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let written = serde_json::to_vec(self).map_err(std::io::Error::other).and_then(|json| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&json)?;
            std::fs::rename(&temporary, &path)
        });
        match written {
            Ok(()) => {
                self.dirty = false;
                self.saved_at = Some(Instant::now());
            }
            Err(error) => warn!(path = %path.display(), %error, "cannot write the producer-state snapshot"),
        }
    }
}

fn read_snapshot(path: &PathBuf) -> Option<Producers> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(producers) => Some(producers),
        Err(error) => {
            warn!(path = %path.display(), %error, "unreadable producer-state snapshot; scanning the log instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log_store::batch::{BatchBuilder, Compression, NewRecord};
    use log_store::{Log, LogConfig};

    fn header(producer_id: i64, epoch: i16, first_sequence: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 49,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first_sequence,
            records_count: records,
        }
    }

    /// Applies a batch as the replica does; returns its offsets or the refusal.
    fn apply(state: &mut Producers, next: &mut u64, header: BatchHeader) -> Result<(u64, u64)> {
        match state.check(&header)? {
            Decision::Duplicate(base, last) => Ok((base.0, last.0)),
            Decision::Append => {
                let base = *next;
                let last = base + header.last_offset_delta as u64;
                state.record(&header, Offset(base), Offset(last), None);
                *next = last + 1;
                Ok((base, last))
            }
        }
    }

    #[test]
    fn retries_of_any_of_the_last_five_batches_get_their_original_offsets() {
        let mut state = Producers::default();
        let mut next = 0;
        let mut appended = Vec::new();
        for i in 0..7 {
            appended.push(apply(&mut state, &mut next, header(7, 0, i * 3, 3)).unwrap());
        }
        for i in 2..7 {
            assert_eq!(apply(&mut state, &mut next, header(7, 0, i * 3, 3)).unwrap(), appended[i as usize]);
        }
        assert_eq!(next, 21, "duplicates append nothing");
        // Older than the cache: not a recognisable duplicate, and not the next sequence either.
        assert!(matches!(
            apply(&mut state, &mut next, header(7, 0, 0, 3)),
            Err(Error::OutOfOrderSequence { expected: 21, got: 0, .. })
        ));
    }

    #[test]
    fn gaps_stale_epochs_and_epoch_bumps() {
        let mut state = Producers::default();
        let mut next = 0;
        apply(&mut state, &mut next, header(1, 0, 0, 2)).unwrap();
        assert!(matches!(apply(&mut state, &mut next, header(1, 0, 5, 1)), Err(Error::OutOfOrderSequence { .. })));
        apply(&mut state, &mut next, header(1, 1, 0, 1)).unwrap();
        assert!(matches!(apply(&mut state, &mut next, header(1, 0, 2, 1)), Err(Error::InvalidProducerEpoch { .. })));
        assert!(matches!(apply(&mut state, &mut next, header(1, 2, 4, 1)), Err(Error::OutOfOrderSequence { .. })));
        // Unknown producers start anywhere; producers do not affect each other.
        apply(&mut state, &mut next, header(2, 0, 100, 1)).unwrap();
        apply(&mut state, &mut next, header(1, 1, 1, 1)).unwrap();
        // Batches without a producer id are never deduplicated.
        assert_eq!(apply(&mut state, &mut next, header(-1, -1, -1, 1)).unwrap(), (next - 1, next - 1));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut state = Producers::default();
        let mut next = 0;
        apply(&mut state, &mut next, header(3, 0, i32::MAX - 1, 2)).unwrap();
        apply(&mut state, &mut next, header(3, 0, 0, 1)).unwrap();
    }

    #[test]
    fn open_transactions_hold_the_last_stable_offset_and_aborts_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        let mut live = Producers::default();
        let mut append = |live: &mut Producers, mut bytes: Vec<u8>| {
            let header = BatchHeader::parse(&bytes).unwrap();
            let marker = if header.is_control() {
                Marker::of(&batch::Batch::new(bytes::Bytes::from(bytes.clone())).unwrap())
            } else {
                None
            };
            assert_eq!(live.check(&header).unwrap(), Decision::Append);
            let appended = log.append(&mut bytes).unwrap();
            live.record(&header, appended.base_offset, appended.last_offset, marker);
            appended.base_offset.0
        };
        let data = |producer: i64, sequence: i32, transactional: bool| {
            let builder = BatchBuilder::new(Compression::None).producer(producer, 0, sequence);
            let mut builder = if transactional { builder.transactional() } else { builder };
            for _ in 0..2 {
                builder.push(&NewRecord { value: Some(bytes::Bytes::from_static(b"v")), ..NewRecord::default() });
            }
            builder.build().unwrap()
        };
        assert_eq!(append(&mut live, data(5, 0, true)), 0);
        assert_eq!(live.last_stable_offset(), 0, "an open transaction holds the LSO at its start");
        append(&mut live, data(-1, -1, false));
        assert_eq!(append(&mut live, data(6, 0, true)), 4);
        assert_eq!(append(&mut live, BatchBuilder::marker(5, 0, false, 0, 1)), 6);
        assert_eq!(live.last_stable_offset(), 4, "producer 6 is still open");
        assert_eq!(live.aborted(), &[AbortedTxn { producer_id: 5, first_offset: 0, last_offset: 6 }]);
        append(&mut live, BatchBuilder::marker(6, 0, true, 0, 1));
        assert_eq!(live.last_stable_offset(), 8, "nothing open: the LSO is the end");
        assert_eq!(live.aborted().len(), 1, "a commit is not listed");
        // A marker from an older epoch is fenced.
        append(&mut live, BatchBuilder::marker(6, 1, false, 0, 1));
        let stale = BatchHeader::parse(&BatchBuilder::marker(6, 0, true, 0, 1)).unwrap();
        assert!(matches!(live.check(&stale), Err(Error::InvalidProducerEpoch { .. })));
        let rebuilt = Producers::load(dir.path(), &log.reader()).unwrap();
        assert_eq!(
            (rebuilt.last_stable_offset(), rebuilt.aborted()),
            (live.last_stable_offset(), live.aborted()),
            "the log alone rebuilds the transaction state"
        );
        let mut trimmed = rebuilt;
        trimmed.trim_aborted(7);
        assert!(trimmed.aborted().is_empty());
    }

    #[test]
    fn the_state_rebuilt_from_snapshot_plus_log_equals_the_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        let mut live = Producers::default();
        for i in 0..40 {
            let producer = i % 3;
            let mut builder = BatchBuilder::new(Compression::None).producer(producer, 0, (i / 3) as i32 * 2);
            for _ in 0..2 {
                builder.push(&NewRecord { value: Some(bytes::Bytes::from_static(b"v")), ..NewRecord::default() });
            }
            let mut bytes = builder.build().unwrap();
            let header = BatchHeader::parse(&bytes).unwrap();
            assert_eq!(live.check(&header).unwrap(), Decision::Append);
            let appended = log.append(&mut bytes).unwrap();
            live.record(&header, appended.base_offset, appended.last_offset, None);
            if i == 25 {
                live.save(dir.path(), true);
            }
        }
        let rebuilt = Producers::load(dir.path(), &log.reader()).unwrap();
        assert_eq!((&rebuilt.producers, rebuilt.offset), (&live.producers, live.offset));
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"{torn").unwrap();
        let scanned = Producers::load(dir.path(), &log.reader()).unwrap();
        assert_eq!((&scanned.producers, scanned.offset), (&live.producers, live.offset), "a torn snapshot: full scan");
    }
}
