//! Key compaction: in sealed segments, keep only the latest record of each key.
//!
//! A pass first maps every key to its latest offset over the whole log (active segment too),
//! then rewrites groups of sealed segments into one new segment each:
//! * a record survives if it is its key's latest and is not a tombstone older than
//!   `delete_retention_ms` (measured from the record's timestamp);
//! * a batch whose records all survive is copied byte for byte; one that loses some is
//!   re-encoded with its header fields (offsets, producer id/epoch/sequence, codec) kept;
//! * a batch that loses every record is dropped, except the last batch of each producer id,
//!   kept empty so the producer's sequence state survives (as Kafka does);
//! * control batches are kept as they are.
//!
//! Crash safety: the new segment is written as `<base>.cleaned`, fsynced, then renamed to
//! `<base>-<end>.swap` (the range of segments it replaces). Once the swap exists the old files
//! are deleted and the swap renamed into place; `Log::open` finishes an interrupted swap.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, Batch, BatchHeader, Compression};
use crate::checkpoint::sync_dir;
use crate::config::CleanupPolicy;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::segment::{file_name, IndexCursor, Segment};
use crate::sync;

/// What a compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Sealed segments read and rewritten.
    pub segments_rewritten: usize,
    /// Records removed.
    pub records_removed: u64,
    /// Bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// Bytes of the new segments.
    pub bytes_after: u64,
}

/// What pass one learns about the whole log.
struct KeyMap {
    latest: HashMap<Bytes, u64>,
    last_batch_of_producer: HashMap<i64, u64>,
}

impl Log {
    /// Compacts the sealed segments of a `cleanup_policy = Compact` log (no-op otherwise).
    pub fn compact(&mut self) -> Result<Compacted> {
        self.check_not_poisoned()?;
        if self.config.cleanup_policy != CleanupPolicy::Compact {
            return Ok(Compacted::default());
        }
        self.flush()?;
        let segments = sync::read(&self.shared.segments).clone();
        if segments.len() < 2 {
            return Ok(Compacted::default());
        }
        let map = self.map_keys(&segments)?;
        let mut outcome = Compacted::default();
        let sealed = segments.len() - 1;
        let mut start = 0;
        while start < sealed {
            let mut end = start + 1;
            let mut size = segments[start].published_len();
            while end < sealed && size + segments[end].published_len() <= self.config.segment_bytes_max() {
                size += segments[end].published_len();
                end += 1;
            }
            let group = &segments[start..end];
            let replaced_until = segments[end].base_offset;
            let result = self.rewrite_group(group, replaced_until, &map, &mut outcome);
            if result.is_err() {
                // The swap protocol keeps the files consistent; the in-memory view may not be.
                self.check_not_poisoned()?;
                return result.map(|_| outcome);
            }
            start = end;
        }
        Ok(outcome)
    }

    fn map_keys(&self, segments: &[Arc<Segment>]) -> Result<KeyMap> {
        let mut map = KeyMap { latest: HashMap::new(), last_batch_of_producer: HashMap::new() };
        let log_start = self.log_start_offset().0;
        for segment in segments {
            for item in segment.batches_from(0) {
                let (position, batch) = item?;
                let header = *batch.header();
                if header.producer_id >= 0 {
                    map.last_batch_of_producer.insert(header.producer_id, header.base_offset as u64);
                }
                if header.is_control() {
                    continue;
                }
                for record in batch
                    .records(self.config.decompressed_bytes_max)
                    .map_err(|e| segment.corrupt(position, e.to_string()))?
                {
                    let record = record.map_err(|error| segment.corrupt(position, error.to_string()))?;
                    if let (Some(key), true) = (record.key, record.offset.0 >= log_start) {
                        map.latest.insert(key, record.offset.0);
                    }
                }
            }
        }
        Ok(map)
    }

    fn rewrite_group(
        &mut self,
        group: &[Arc<Segment>],
        replaced_until: u64,
        map: &KeyMap,
        outcome: &mut Compacted,
    ) -> Result<()> {
        let base = group[0].base_offset;
        let cleaned_path = self.dir.join(file_name(base, "cleaned"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&cleaned_path)
            .map_err(Error::io(&cleaned_path))?;
        let cleaned = Segment::with_file(&self.dir, base, file, 0);
        let mut cursor = IndexCursor::new();
        let mut position = 0u64;
        let now = self.config.clock.now_ms();
        let log_start = self.log_start_offset().0;
        for segment in group {
            outcome.bytes_before += segment.published_len();
            for item in segment.batches_from(0) {
                let (at, batch) = item?;
                let header = *batch.header();
                let kept = if header.is_control() {
                    Some(batch.bytes().to_vec())
                } else {
                    self.filter_batch(&batch, map, now, log_start, outcome)
                        .map_err(|e| segment.corrupt(at, e.to_string()))?
                };
                let Some(bytes) = kept else { continue };
                let written = BatchHeader::parse(&bytes)?;
                cleaned.write_at(&[&bytes], position)?;
                cleaned.index_batch(&mut cursor, position, &written, self.config.index_interval_bytes);
                position += bytes.len() as u64;
            }
        }
        cleaned.sync()?;
        let swap_path = self.dir.join(format!("{base:020}-{replaced_until:020}.swap"));
        std::fs::rename(&cleaned_path, &swap_path).map_err(Error::io(&swap_path))?;
        sync_dir(&self.dir)?;
        // From here the swap is committed: recovery would finish it if we stopped now.
        let end_offset = group.last().expect("non-empty group").end_offset();
        cleaned.seal_time_index(&cursor);
        cleaned.republish(position, end_offset, cursor.max_timestamp());
        let cleaned = Arc::new(cleaned);
        {
            let mut segments = sync::write(&self.shared.segments);
            let first = segments.iter().position(|segment| segment.base_offset == base).expect("group is in the log");
            segments.splice(first..first + group.len(), [cleaned.clone()]);
        }
        for segment in group {
            segment.delete_files()?;
        }
        std::fs::rename(&swap_path, &cleaned.log_path).map_err(Error::io(&swap_path))?;
        cleaned.persist_indexes()?;
        sync_dir(&self.dir)?;
        outcome.segments_rewritten += group.len();
        outcome.bytes_after += position;
        Ok(())
    }

    /// The batch as it should be after compaction, or `None` when it goes entirely.
    fn filter_batch(
        &self,
        batch: &Batch,
        map: &KeyMap,
        now: i64,
        log_start: u64,
        outcome: &mut Compacted,
    ) -> Result<Option<Vec<u8>>> {
        let header = *batch.header();
        let mut records = Vec::with_capacity(header.records_count as usize);
        let mut total = 0u64;
        for record in batch.records(self.config.decompressed_bytes_max)? {
            let record = record?;
            total += 1;
            let latest = record.key.as_ref().and_then(|key| map.latest.get(key)) == Some(&record.offset.0);
            let expired_tombstone =
                record.value.is_none() && record.timestamp.saturating_add(self.config.delete_retention_ms) < now;
            if latest && !expired_tombstone && record.offset.0 >= log_start {
                records.push(record);
            }
        }
        outcome.records_removed += total - records.len() as u64;
        if records.len() as u64 == total {
            return Ok(Some(batch.bytes().to_vec()));
        }
        let last_of_producer = header.producer_id >= 0
            && map.last_batch_of_producer.get(&header.producer_id) == Some(&(header.base_offset as u64));
        if records.is_empty() && !last_of_producer {
            return Ok(None);
        }
        let mut section = Vec::new();
        for record in &records {
            batch::encode_record(
                &mut section,
                (record.offset.0 - header.base_offset as u64) as i32,
                record.timestamp.wrapping_sub(header.base_timestamp),
                record.key.as_deref(),
                record.value.as_deref(),
                &record.headers,
            );
        }
        let codec = if records.is_empty() { Compression::None } else { header.compression()? };
        let compressed = codec.compress(&section)?;
        let rewritten = BatchHeader {
            records_count: records.len() as i32,
            attributes: batch::attributes_with_compression(header.attributes, codec),
            ..header
        };
        Ok(Some(batch::assemble(&rewritten, &compressed)))
    }
}
