//! `LogConfig`: every size and age limit of one partition's log, with Kafka-like defaults.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};

/// What the log does with old data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Delete whole segments by age and size (Kafka `cleanup.policy=delete`).
    Delete,
    /// Keep the latest record per key (Kafka `cleanup.policy=compact`); every record needs a key.
    Compact,
}

/// Limits of one partition's log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Roll to a new segment before one would grow past this size (Kafka `segment.bytes`).
    /// At most 2 GiB, because index entries store 32-bit positions.
    pub segment_bytes_max: u64,
    /// Roll to a new segment once an incoming batch's timestamp is this much later than the
    /// segment's first batch (Kafka `segment.ms`).
    pub segment_ms: i64,
    /// Bytes of log between two sparse offset-index entries (Kafka `index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// Largest batch accepted by [`crate::Log::append`] (Kafka `max.message.bytes`).
    pub batch_bytes_max: usize,
    /// Delete sealed segments whose newest record is older than this (Kafka `retention.ms`).
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger than this (Kafka `retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Deletion or key compaction.
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone (a record with a null value) outlives its timestamp under compaction
    /// (Kafka `delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Largest size a compressed batch may inflate to when decoded; bounds memory per batch.
    pub decompressed_bytes_max: usize,
    /// Once this many bytes were appended since the last time, ask the kernel to start writing
    /// them to disk without waiting (`sync_file_range`), so a later [`crate::Log::flush`] finds
    /// little left to write instead of stalling on everything since the previous one. 0 turns it
    /// off. Durability still comes only from `flush`.
    pub write_behind_bytes: u64,
    /// Source of the current time for segment age and retention.
    pub clock: Arc<dyn Clock>,
}

/// Segment positions are stored in 32 bits in the offset index.
pub(crate) const SEGMENT_BYTES_LIMIT: u64 = i32::MAX as u64;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            batch_bytes_max: 1024 * 1024 + 12,
            retention_ms: None,
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
            decompressed_bytes_max: 64 * 1024 * 1024,
            write_behind_bytes: 1024 * 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

impl LogConfig {
    pub(crate) fn segment_bytes_max(&self) -> u64 {
        self.segment_bytes_max.clamp(1, SEGMENT_BYTES_LIMIT)
    }
}
