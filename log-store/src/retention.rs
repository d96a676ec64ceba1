//! Reclaiming space by deleting whole segments: by age, by total size, or below an offset.
//!
//! Only sealed segments are deleted; the active one never is. The new log start offset is
//! checkpointed (fsynced) before any file is removed, so a crash in between leaves files that
//! the next open recognises as below the log start and removes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::checkpoint::sync_dir;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::offset::Offset;
use crate::segment::Segment;
use crate::sync;

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Whole segments deleted.
    pub segments_deleted: usize,
    /// Bytes those segments held.
    pub bytes_deleted: u64,
}

impl Log {
    /// Deletes the oldest sealed segments that are past `retention_ms` (by their newest record)
    /// or that bring the log over `retention_bytes`.
    pub fn apply_retention(&mut self) -> Result<Reclaimed> {
        self.check_not_poisoned()?;
        let segments = sync::read(&self.shared.segments).clone();
        let sealed = &segments[..segments.len() - 1];
        let mut count = 0;
        if let Some(retention_ms) = self.config.retention_ms {
            let horizon = self.config.clock.now_ms().saturating_sub(retention_ms);
            while count < sealed.len() && sealed[count].max_timestamp() < horizon {
                count += 1;
            }
        }
        if let Some(retention_bytes) = self.config.retention_bytes {
            let total: u64 = segments[count..].iter().map(|segment| segment.published_len()).sum();
            let mut excess = total.saturating_sub(retention_bytes);
            while count < sealed.len() && excess >= sealed[count].published_len() {
                excess -= sealed[count].published_len();
                count += 1;
            }
        }
        self.delete_oldest(count, 0)
    }

    /// Makes `offset` the new log start (Kafka `DeleteRecords`): offsets below it become
    /// unreadable at once, and sealed segments wholly below it are deleted.
    pub fn delete_before(&mut self, offset: Offset) -> Result<Reclaimed> {
        self.check_not_poisoned()?;
        let next_offset = self.next_offset();
        if offset > next_offset {
            let log_start_offset = self.log_start_offset();
            return Err(Error::OffsetOutOfRange { offset, log_start_offset, next_offset });
        }
        if offset <= self.log_start_offset() {
            return Ok(Reclaimed::default());
        }
        let segments = sync::read(&self.shared.segments).clone();
        let count = segments.windows(2).take_while(|pair| pair[1].base_offset <= offset.0).count();
        self.delete_oldest(count, offset.0)
    }

    fn delete_oldest(&mut self, count: usize, new_log_start: u64) -> Result<Reclaimed> {
        let current_start = self.shared.log_start_offset.load(Ordering::Relaxed);
        if count == 0 && new_log_start <= current_start {
            return Ok(Reclaimed::default());
        }
        // The recovery point must stay in a segment that survives.
        self.flush()?;
        let removed: Vec<Arc<Segment>> = {
            let mut segments = sync::write(&self.shared.segments);
            segments.drain(..count).collect()
        };
        let first_kept = sync::read(&self.shared.segments)[0].base_offset;
        let log_start = current_start.max(new_log_start).max(first_kept);
        self.shared.log_start_offset.store(log_start, Ordering::Release);
        self.write_checkpoint(crate::checkpoint::Checkpoint { log_start_offset: log_start, ..self.checkpoint })?;
        let mut reclaimed = Reclaimed::default();
        for segment in &removed {
            reclaimed.segments_deleted += 1;
            reclaimed.bytes_deleted += segment.published_len();
            segment.delete_files()?;
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(reclaimed)
    }
}
