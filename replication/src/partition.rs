//! A partition replica: the partition's `log-store` log plus what the rest of the node reads.
//!
//! Committed Raft entries are appended here in Raft order, which assigns offsets — the same
//! offsets on every replica. The log is flushed every `flush_interval_ms`; after each flush the
//! pair (applied Raft index, log next offset) is recorded in raft-engine. On restart the log is
//! cut back to that recorded offset and the entries after that index are applied again, so a
//! crash never leaves log data that the Raft log cannot account for.
//!
//! Damaged durable data (a flipped byte, a segment cut short) is cut off on open; if that
//! leaves the log short of the recorded flush, whose Raft entries are gone, the replica is
//! *repairing*: the missing batches are fetched from another replica (see `store`) before it
//! applies anything. Its Raft log is intact, so it votes as usual meanwhile.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log_store::batch::{self, Validation};
use log_store::{CleanupPolicy, Log, LogConfig, LogReader, Offset};
use raft::eraftpb::Entry;
use raft_engine::LogBatch;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::catalog::{PartitionInfo, TopicConfig};
use crate::config::ReplicationConfig;
use crate::error::{Error, Result};
use crate::ids::{GroupId, NodeId};
use crate::producers::{AbortedTxn, Decision, Marker, Producers};
use crate::raft_storage::{ApplyState, GroupStorage};

/// What the rest of the node may see of a local partition replica.
#[derive(Debug)]
pub(crate) struct PartitionHandle {
    pub group: GroupId,
    pub reader: LogReader,
    /// The group's leader as this replica last heard, 0 when unknown.
    pub leader: AtomicU64,
    /// The Raft term in which `leader` was learnt (Kafka's leader epoch).
    pub leader_term: AtomicU64,
    /// The first Raft index this replica's log keeps since it last trimmed it; 0 before that.
    pub raft_first_index: AtomicU64,
    /// Next offset after the last applied (committed) batch: the high watermark.
    pub high_watermark: watch::Sender<u64>,
    /// Whether batches must carry keys (compacted topics); checked before proposing. Follows
    /// topic config changes, like `batch_bytes_max`.
    pub require_keys: AtomicBool,
    /// Largest batch proposed (`max.message.bytes`).
    pub batch_bytes_max: AtomicUsize,
    /// Bound on decompressed batch sizes when validating.
    pub decompressed_bytes_max: usize,
    /// The group's voters as this replica last applied them (in a joint configuration, the
    /// incoming and the outgoing ones).
    pub voters: std::sync::RwLock<Vec<NodeId>>,
    /// The last stable offset (`read_committed` reads stop there).
    pub last_stable_offset: AtomicU64,
    /// Aborted transactions, in marker order (`read_committed` readers skip their records).
    pub aborted: std::sync::RwLock<Arc<Vec<AbortedTxn>>>,
}

impl PartitionHandle {
    pub fn set_voters(&self, conf_state: &raft::eraftpb::ConfState) {
        let voters = crate::raft_storage::members(conf_state).into_iter().map(NodeId).collect();
        *self.voters.write().unwrap_or_else(|p| p.into_inner()) = voters;
    }

    /// The checks a batch must pass before it is proposed.
    pub fn validation(&self) -> Validation {
        Validation {
            require_keys: self.require_keys.load(Ordering::Acquire),
            decompressed_bytes_max: self.decompressed_bytes_max,
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        match self.leader.load(Ordering::Acquire) {
            0 => None,
            id => Some(NodeId(id)),
        }
    }
}

/// The largest record batch accepted whatever the topic's `max_message_bytes` or the node's
/// `batch_bytes_max` say: a batch is one Raft entry and one snapshot-pull chunk, and must fit
/// what nodes accept from each other (`transport`).
pub(crate) const BATCH_BYTES_LIMIT: usize = 64 << 20;

/// The log settings for a topic's config, and the largest batch producers may send.
fn log_config(config: &ReplicationConfig, topic_config: &TopicConfig) -> (LogConfig, usize) {
    let batch_bytes_max =
        topic_config.max_message_bytes.map_or(config.batch_bytes_max, |max| max as usize).min(BATCH_BYTES_LIMIT);
    let log_config = LogConfig {
        segment_bytes_max: topic_config.segment_bytes.unwrap_or(config.segment_bytes),
        retention_ms: topic_config.retention_ms,
        retention_bytes: topic_config.retention_bytes,
        cleanup_policy: if topic_config.compacted { CleanupPolicy::Compact } else { CleanupPolicy::Delete },
        // Batches already accepted must still apply if the limit was lowered since.
        batch_bytes_max: batch_bytes_max.max(config.batch_bytes_max),
        ..LogConfig::default()
    };
    (log_config, batch_bytes_max)
}

/// The replica as the store loop owns it.
pub(crate) struct PartitionReplica {
    pub handle: Arc<PartitionHandle>,
    pub dir: PathBuf,
    log: Log,
    /// Idempotent producers' recent batches, for deduplication at apply.
    producers: Producers,
    flush_interval: Duration,
    last_flush: Instant,
    applied_since_flush: bool,
    /// Bytes appended since the last flush: flushing every few MiB keeps each fsync (which
    /// stalls the store loop) short, instead of one long one per interval.
    bytes_since_flush: u64,
    flush_bytes: u64,
    segments_at_last_compaction: usize,
    /// Set while the log is short of its recorded flush (damaged data was cut): the offset
    /// the repair must fetch up to before anything is applied.
    pub repair_to: Option<u64>,
}

impl PartitionReplica {
    /// Opens the replica's log and returns it with the Raft index it has applied up to.
    pub fn open(
        config: &ReplicationConfig,
        topic: &str,
        topic_config: &TopicConfig,
        info: &PartitionInfo,
        storage: &GroupStorage,
    ) -> Result<(PartitionReplica, u64)> {
        let dir = config.data_dir.join("partitions").join(format!("{topic}-{}", info.partition));
        let (log_config, batch_bytes_max) = log_config(config, topic_config);
        let decompressed_bytes_max = log_config.decompressed_bytes_max;
        let (mut log, salvaged) = log_store::salvage::open_salvaging(&dir, log_config)?;
        let mut repair_to = None;
        let applied = match storage.apply_state() {
            Some(state) if log.next_offset().0 < state.next_offset => {
                warn!(
                    partition = %dir.display(),
                    end = log.next_offset().0,
                    flushed = state.next_offset,
                    bytes_cut = salvaged.bytes_cut,
                    "the partition log is short of its recorded flush (damaged data was cut); fetching the rest from another replica before applying"
                );
                repair_to = Some(state.next_offset);
                state.applied_index
            }
            Some(state) => {
                let cut = log.next_offset().0 - state.next_offset;
                log.truncate_suffix(Offset(state.next_offset))?;
                if cut > 0 {
                    info!(partition = %dir.display(), records = cut, "dropped log records past the last recorded flush; they are re-applied from the Raft log");
                }
                state.applied_index
            }
            None => {
                log.truncate_suffix(Offset(0))?;
                0
            }
        };
        let producers = Producers::load(&dir, &log.reader())?;
        let handle = Arc::new(PartitionHandle {
            group: info.group,
            reader: log.reader(),
            leader: AtomicU64::new(0),
            leader_term: AtomicU64::new(0),
            raft_first_index: AtomicU64::new(0),
            high_watermark: watch::Sender::new(log.next_offset().0),
            require_keys: AtomicBool::new(topic_config.compacted),
            batch_bytes_max: AtomicUsize::new(batch_bytes_max),
            decompressed_bytes_max,
            voters: std::sync::RwLock::new(Vec::new()),
            last_stable_offset: AtomicU64::new(producers.last_stable_offset()),
            aborted: std::sync::RwLock::new(Arc::new(producers.aborted().to_vec())),
        });
        let replica = PartitionReplica {
            handle,
            dir,
            log,
            producers,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            last_flush: Instant::now(),
            applied_since_flush: false,
            bytes_since_flush: 0,
            flush_bytes: config.flush_bytes,
            segments_at_last_compaction: 1,
            repair_to,
        };
        Ok((replica, applied))
    }

    /// Makes the transaction state visible to readers (the aborted list only when it changed).
    ///
    /// The aborted list first, then the last stable offset: a reader that sees an LSO past an
    /// aborted transaction must also see it listed (readers load the LSO first), or a
    /// read_committed consumer delivers its records — the Jepsen kafka-txn run found that.
    fn publish_transactions(&self, aborted_changed: bool) {
        if aborted_changed {
            let aborted = Arc::new(self.producers.aborted().to_vec());
            *self.handle.aborted.write().unwrap_or_else(|p| p.into_inner()) = aborted;
        }
        self.handle.last_stable_offset.store(self.producers.last_stable_offset(), Ordering::Release);
    }

    /// Adopts changed topic settings: retention, segment size, cleanup policy and batch limit
    /// apply from now on.
    pub fn set_config(&mut self, config: &ReplicationConfig, topic_config: &TopicConfig) {
        let (log_config, batch_bytes_max) = log_config(config, topic_config);
        self.log.set_config(log_config);
        self.handle.require_keys.store(topic_config.compacted, Ordering::Release);
        self.handle.batch_bytes_max.store(batch_bytes_max, Ordering::Release);
    }

    /// Appends a committed entry's batch; the leader epoch is the entry's term. A retried batch
    /// of an idempotent producer is not appended again: its original offsets are returned.
    ///
    /// Returns `Ok(Err(..))` for a batch every replica refuses alike (deterministic, skipped) and
    /// `Err(..)` for a local failure (disk), which stops this replica.
    pub fn apply(&mut self, entry: &Entry) -> Result<Result<(Offset, Offset)>> {
        let data = &entry.data;
        let header = match batch::BatchHeader::parse(data) {
            Ok(header) => header,
            Err(_) => return Ok(Err(Error::InvalidRequest("entry is not a record batch".into()))),
        };
        let marker = if header.is_control() {
            match batch::Batch::new(data.clone()).ok().and_then(|b| Marker::of(&b)) {
                Some(marker) => Some(marker),
                None => return Ok(Err(Error::InvalidRequest("a control batch without a valid marker".into()))),
            }
        } else {
            None
        };
        match self.producers.check(&header) {
            Ok(Decision::Append) => {}
            Ok(Decision::Duplicate(base, last)) => return Ok(Ok((base, last))),
            Err(refused) => return Ok(Err(refused)),
        }
        // Written straight from the entry's buffer, which the Raft log still shares.
        match self.log.append_shared(data, entry.term as i32) {
            Ok(appended) => {
                self.producers.record(&header, appended.base_offset, appended.last_offset, marker);
                self.publish_transactions(marker == Some(Marker::Abort));
                self.applied_since_flush = true;
                self.bytes_since_flush += data.len() as u64;
                self.handle.high_watermark.send_replace(appended.last_offset.0 + 1);
                Ok(Ok((appended.base_offset, appended.last_offset)))
            }
            Err(error @ (log_store::Error::Io { .. } | log_store::Error::Poisoned { .. })) => Err(error.into()),
            Err(refused) => Ok(Err(refused.into())),
        }
    }

    /// Flushes the log when due and stages the new apply state for the loop's next write
    /// (returned, so the caller can trim the Raft log up to it). Also runs retention and
    /// compaction at the same pace.
    pub fn maybe_flush(
        &mut self,
        applied_index: u64,
        storage: &GroupStorage,
        batch: &mut LogBatch,
    ) -> Result<Option<ApplyState>> {
        let due_by_size = self.bytes_since_flush >= self.flush_bytes;
        if self.last_flush.elapsed() < self.flush_interval && !due_by_size {
            return Ok(None);
        }
        if due_by_size {
            // Only the fsync is due; retention and compaction keep their interval.
            return self.flush_and_record(applied_index, storage, batch);
        }
        self.last_flush = Instant::now();
        if let Err(error) = self.log.apply_retention() {
            warn!(partition = %self.dir.display(), %error, "retention failed");
        }
        let aborted_before = self.producers.aborted().len();
        self.producers.trim_aborted(self.log.log_start_offset().0);
        if self.producers.aborted().len() != aborted_before {
            self.publish_transactions(true);
        }
        // Compaction rereads the whole log: run it only when a segment was sealed since the last run.
        let segments = self.handle.reader.segments().len();
        if segments > self.segments_at_last_compaction {
            if let Err(error) = self.log.compact() {
                warn!(partition = %self.dir.display(), %error, "compaction failed");
            }
            self.segments_at_last_compaction = self.handle.reader.segments().len();
        }
        if !self.applied_since_flush {
            return Ok(None);
        }
        self.flush_and_record(applied_index, storage, batch)
    }

    fn flush_and_record(
        &mut self,
        applied_index: u64,
        storage: &GroupStorage,
        batch: &mut LogBatch,
    ) -> Result<Option<ApplyState>> {
        let next_offset = self.log.flush()?.0;
        self.producers.save(&self.dir, false);
        let state = ApplyState { applied_index, next_offset };
        storage.stage_apply_state(batch, state)?;
        self.applied_since_flush = false;
        self.bytes_since_flush = 0;
        Ok(Some(state))
    }

    /// The offset the next applied batch gets.
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset().0
    }

    /// Appends batches pulled from another replica for a snapshot; returns the new next offset.
    pub fn install(&mut self, batches: bytes::Bytes) -> Result<u64> {
        for stored in batch::batches(batches) {
            let stored = stored?;
            self.log.append_stored(&mut stored.bytes().to_vec())?;
        }
        self.producers.scan(&self.handle.reader, self.log.next_offset().0)?;
        self.publish_transactions(true);
        self.handle.high_watermark.send_replace(self.log.next_offset().0);
        Ok(self.log.next_offset().0)
    }

    /// Restarts the log empty at `offset` (the snapshot source no longer has our end).
    pub fn reset(&mut self, offset: u64) -> Result<()> {
        self.log.reset(Offset(offset))?;
        self.producers.reset(offset);
        self.publish_transactions(true);
        self.handle.high_watermark.send_replace(offset);
        Ok(())
    }

    /// Makes the installed snapshot data durable before the Raft state says it is there.
    pub fn flush_snapshot(&mut self) -> Result<u64> {
        self.applied_since_flush = false;
        Ok(self.log.flush()?.0)
    }

    /// Flushes everything (shutdown) and stages the apply state.
    pub fn flush_now(&mut self, applied_index: u64, storage: &GroupStorage, batch: &mut LogBatch) -> Result<()> {
        let next_offset = self.log.flush()?.0;
        self.producers.save(&self.dir, true);
        storage.stage_apply_state(batch, ApplyState { applied_index, next_offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic may allow larger batches than the default, but never more than nodes can pass to
    /// each other: a larger one would be refused by every follower, for good.
    #[test]
    fn no_topic_accepts_batches_over_the_node_to_node_limit() {
        let config = ReplicationConfig::default();
        let huge = TopicConfig { max_message_bytes: Some(200 << 20), ..TopicConfig::default() };
        assert_eq!(log_config(&config, &huge).1, BATCH_BYTES_LIMIT);
        let large = TopicConfig { max_message_bytes: Some(8 << 20), ..TopicConfig::default() };
        assert_eq!(log_config(&config, &large).1, 8 << 20);
        assert_eq!(log_config(&config, &TopicConfig::default()).1, config.batch_bytes_max);
    }
}
