//! `Log`: the single writer of one partition — append, roll, flush, recovery, truncation.
//!
//! # Invariants
//! * Segments are sorted by base offset; each one's offsets lie below the next one's base.
//! * `shared.next_offset` equals the active segment's `end_offset` once an append returns.
//! * Everything below the checkpoint's recovery point has been fsynced, data and directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::batch::{self, BatchHeader, Validation};
use crate::checkpoint::{sync_dir, Checkpoint};
use crate::config::{CleanupPolicy, LogConfig};
use crate::error::{Error, Result};
use crate::index::Indexes;
use crate::offset::Offset;
use crate::reader::LogReader;
use crate::segment::{file_name, IndexCursor, Segment};
use crate::sync;

const LOCK_FILE: &str = ".lock";

/// Where an appended batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset given to the first record.
    pub base_offset: Offset,
    /// Offset given to the last record.
    pub last_offset: Offset,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
}

/// State shared between the writer and every reader.
#[derive(Debug)]
pub(crate) struct Shared {
    pub segments: RwLock<Vec<Arc<Segment>>>,
    pub log_start_offset: AtomicU64,
    pub next_offset: AtomicU64,
    pub flushed_offset: AtomicU64,
    pub decompressed_bytes_max: usize,
}

/// The writer of one partition's log. Reads go through [`Log::reader`] handles.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: Arc<Segment>,
    /// Write position in the active segment (equal to its published length).
    pub(crate) position: u64,
    pub(crate) cursor: IndexCursor,
    /// Position in the active segment up to which write-behind was started.
    written_back: u64,
    /// Sealed segments whose data is not yet fsynced.
    pub(crate) unflushed: Vec<Arc<Segment>>,
    /// Files were created or removed since the directory was last fsynced.
    pub(crate) dir_dirty: bool,
    /// The checkpoint as last written.
    pub(crate) checkpoint: Checkpoint,
    poisoned: bool,
    _lock: File,
}

/// How long [`Log::open`] keeps trying a lock held elsewhere before reporting [`Error::Locked`].
///
/// `flock` belongs to the open file description, and a process forked by another thread of this
/// process (any `Command::spawn`) holds a copy of every descriptor until it execs. A log closed and
/// reopened at that moment would see its own lock as taken; the wait outlasts such a window.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the exclusive lock on `lock`, waiting up to [`LOCK_WAIT`] for a holder to let go.
fn lock_directory(lock: &File, lock_path: &Path, dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { dir: dir.to_path_buf() }),
            Err(std::fs::TryLockError::Error(error)) => return Err(Error::io(lock_path)(error)),
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from whatever a crash left behind.
    ///
    /// Bytes below the recovery point are trusted, and a batch there that fails its checks is
    /// [`Error::Corrupt`]. Bytes after it are validated batch by batch; a torn or corrupt tail is
    /// cut off (logged once) and later segments are removed.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(Error::io(&lock_path))?;
        lock_directory(&lock, &lock_path, &dir)?;
        let bases = prepare_directory(&dir)?;
        let checkpoint = Checkpoint::read(&dir);
        Recovery { dir: &dir, config: &config, checkpoint }.run(bases, lock)
    }

    /// A read handle that stays valid while this log lives and sees every published append.
    pub fn reader(&self) -> LogReader {
        LogReader::new(self.shared.clone())
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings (a topic's config changed while it is open). They apply from the
    /// next append, roll, retention or compaction run; nothing already written is rewritten.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// First offset still readable.
    pub fn log_start_offset(&self) -> Offset {
        Offset(self.shared.log_start_offset.load(Ordering::Acquire))
    }

    /// Offset the next appended record gets.
    pub fn next_offset(&self) -> Offset {
        Offset(self.shared.next_offset.load(Ordering::Acquire))
    }

    /// Every offset below this one is durably on disk.
    pub fn flushed_offset(&self) -> Offset {
        Offset(self.shared.flushed_offset.load(Ordering::Acquire))
    }

    /// Validates one RecordBatch v2, stamps its base offset, and appends it.
    ///
    /// The batch is stored byte for byte apart from the base offset (outside the CRC). It becomes
    /// visible to readers once this returns; it is durable after the next [`Log::flush`].
    pub fn append(&mut self, batch: &mut [u8]) -> Result<Appended> {
        let header = self.validate_new(batch)?;
        let base_offset = self.shared.next_offset.load(Ordering::Relaxed);
        self.write_batch(batch, header, base_offset)
    }

    /// [`Log::append`] for a batch in a buffer this log may not change (one shared with a Raft
    /// log, say), also stamping its partition leader epoch. Both fields sit in the batch's first
    /// bytes, outside the CRC: they are stamped into a copy of those bytes, which is written in
    /// front of the rest of the batch in one vectored write, so the batch is never copied.
    pub fn append_shared(&mut self, batch: &[u8], partition_leader_epoch: i32) -> Result<Appended> {
        let header = self.validate_new(batch)?;
        let base_offset = self.shared.next_offset.load(Ordering::Relaxed);
        let (front, rest) = batch.split_at(batch::STAMPED_PREFIX_LEN);
        let mut stamped = [0u8; batch::STAMPED_PREFIX_LEN];
        stamped.copy_from_slice(front);
        batch::set_base_offset(&mut stamped, Offset(base_offset));
        batch::set_partition_leader_epoch(&mut stamped, partition_leader_epoch);
        self.write_parts(&[&stamped, rest], header, base_offset)
    }

    /// Checks a batch a producer sent against this log's rules: size, framing, CRC, records.
    fn validate_new(&self, batch: &[u8]) -> Result<BatchHeader> {
        self.check_not_poisoned()?;
        if batch.len() > self.config.batch_bytes_max {
            return Err(Error::BatchTooLarge { size: batch.len(), max: self.config.batch_bytes_max });
        }
        let rules = Validation {
            require_keys: self.config.cleanup_policy == CleanupPolicy::Compact,
            decompressed_bytes_max: self.config.decompressed_bytes_max,
        };
        batch::validate(batch, rules)
    }

    /// Appends a batch copied from another replica's log, keeping its base offset (which may
    /// skip offsets that compaction removed there). Only framing and CRC are checked: the batch
    /// was validated when it was first appended. Used to install a replica from a snapshot.
    pub fn append_stored(&mut self, batch: &mut [u8]) -> Result<Appended> {
        self.check_not_poisoned()?;
        let header = BatchHeader::parse(batch)?;
        if header.total_len() != batch.len() {
            return Err(Error::MalformedBatch("batch length does not match the bytes given"));
        }
        batch::verify_crc(&header, batch)?;
        let next_offset = self.shared.next_offset.load(Ordering::Relaxed);
        if header.base_offset < 0 || (header.base_offset as u64) < next_offset {
            return Err(Error::InvalidRecord("a stored batch must not go below the log's next offset"));
        }
        let base_offset = header.base_offset as u64;
        self.write_batch(batch, header, base_offset)
    }

    /// Empties the log and starts it again at `offset` (a replica adopting a leader's log that
    /// no longer reaches back to its own end).
    pub fn reset(&mut self, offset: Offset) -> Result<()> {
        self.check_not_poisoned()?;
        let result = self.restart_at(offset.0);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_batch(&mut self, batch: &mut [u8], header: BatchHeader, base_offset: u64) -> Result<Appended> {
        batch::set_base_offset(batch, Offset(base_offset));
        self.write_parts(&[batch], header, base_offset)
    }

    /// Writes a batch, already stamped with `base_offset`, given as consecutive parts.
    fn write_parts(&mut self, parts: &[&[u8]], header: BatchHeader, base_offset: u64) -> Result<Appended> {
        let len: u64 = parts.iter().map(|part| part.len() as u64).sum();
        let record_count = header.last_offset_delta as u64 + 1;
        self.maybe_roll(len, base_offset + record_count, header.max_timestamp)?;
        let stamped = BatchHeader { base_offset: base_offset as i64, ..header };
        if let Err(error) = self.active.write_at(parts, self.position) {
            self.cut_back_after_failed_write();
            return Err(error);
        }
        self.active.index_batch(&mut self.cursor, self.position, &stamped, self.config.index_interval_bytes);
        self.position += len;
        let next_offset = base_offset + record_count;
        self.active.publish(self.position, next_offset, header.max_timestamp);
        self.shared.next_offset.store(next_offset, Ordering::Release);
        self.maybe_write_behind();
        Ok(Appended {
            base_offset: Offset(base_offset),
            last_offset: Offset(next_offset - 1),
            max_timestamp: header.max_timestamp,
        })
    }

    /// Starts writeback of the active segment's bytes since the last start, once there are
    /// [`LogConfig::write_behind_bytes`] of them.
    fn maybe_write_behind(&mut self) {
        let from = self.written_back.min(self.position);
        self.written_back = from;
        let threshold = self.config.write_behind_bytes;
        if threshold > 0 && self.position - from >= threshold {
            self.active.start_writeback(from, self.position - from);
            self.written_back = self.position;
        }
    }

    /// A failed write may have left part of a batch in the file; cut it off so the next append
    /// does not leave garbage in the middle of the log. If even that fails, stop writing.
    fn cut_back_after_failed_write(&mut self) {
        if let Err(error) = self.active.set_len(self.position) {
            warn!(dir = %self.dir.display(), %error, "cannot cut back a failed write; the log stops accepting writes");
            self.poisoned = true;
        }
    }

    /// Rolls when the batch would overflow the segment, when its timestamps are `segment_ms`
    /// past the segment's first batch (Kafka's rule: record time, not wall-clock time, so a
    /// backlog of old records does not roll on every append), or when relative offsets would
    /// overflow the 32-bit index entries.
    fn maybe_roll(&mut self, batch_len: u64, end_offset: u64, max_timestamp: i64) -> Result<()> {
        if self.position == 0 {
            return Ok(());
        }
        let full = self.position + batch_len > self.config.segment_bytes_max();
        let old = self
            .cursor
            .first_timestamp
            .is_some_and(|first| max_timestamp.saturating_sub(first) >= self.config.segment_ms);
        let offsets_exhausted = end_offset - self.active.base_offset > u32::MAX as u64;
        if full || old || offsets_exhausted {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset (no-op when empty).
    pub fn roll(&mut self) -> Result<()> {
        self.check_not_poisoned()?;
        if self.position == 0 {
            return Ok(());
        }
        self.active.seal_time_index(&self.cursor);
        self.active.persist_indexes()?;
        let next_offset = self.shared.next_offset.load(Ordering::Relaxed);
        let segment = Arc::new(Segment::create(&self.dir, next_offset)?);
        segment.republish(0, next_offset, -1);
        sync::write(&self.shared.segments).push(segment.clone());
        let sealed = std::mem::replace(&mut self.active, segment);
        self.unflushed.push(sealed);
        self.position = 0;
        self.written_back = 0;
        self.cursor = IndexCursor::new();
        self.dir_dirty = true;
        Ok(())
    }

    /// Makes everything appended so far durable and records the new recovery point.
    ///
    /// A failed fsync is fatal for this log: after one, the kernel may have dropped the dirty
    /// pages, so retrying could report success for data that is gone (the "fsyncgate" lesson).
    /// The log then refuses every write with [`Error::Poisoned`]; reopening recovers from disk.
    pub fn flush(&mut self) -> Result<Offset> {
        self.check_not_poisoned()?;
        let result = self.flush_inner();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn flush_inner(&mut self) -> Result<Offset> {
        for segment in std::mem::take(&mut self.unflushed) {
            segment.sync()?;
            segment.persist_indexes()?;
        }
        self.active.sync()?;
        self.active.seal_time_index(&self.cursor);
        self.active.persist_indexes()?;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        let next_offset = self.shared.next_offset.load(Ordering::Relaxed);
        self.write_checkpoint(Checkpoint {
            recovery_segment: self.active.base_offset,
            recovery_position: self.position,
            recovery_next_offset: next_offset,
            log_start_offset: self.shared.log_start_offset.load(Ordering::Relaxed),
        })?;
        self.shared.flushed_offset.store(next_offset, Ordering::Release);
        Ok(Offset(next_offset))
    }

    pub(crate) fn write_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<()> {
        if checkpoint != self.checkpoint {
            checkpoint.write(&self.dir)?;
            self.checkpoint = checkpoint;
        }
        Ok(())
    }

    /// Flushes and closes the log.
    pub fn close(mut self) -> Result<()> {
        self.flush().map(|_| ())
    }

    /// Removes every batch holding an offset ≥ `offset` (a whole batch goes if `offset` falls
    /// inside it) and returns the new next offset. Used when a Raft follower's log diverged.
    ///
    /// If `offset` is at or below the log start, the log is emptied and restarts at `offset`; if
    /// the batch to remove also holds the log start, the log is emptied and restarts there.
    pub fn truncate_suffix(&mut self, offset: Offset) -> Result<Offset> {
        self.check_not_poisoned()?;
        let next_offset = self.shared.next_offset.load(Ordering::Relaxed);
        if offset.0 >= next_offset {
            return Ok(Offset(next_offset));
        }
        let result = if offset.0 <= self.shared.log_start_offset.load(Ordering::Relaxed) {
            self.restart_at(offset.0)
        } else {
            self.truncate_within(offset.0)
        };
        if result.is_err() {
            self.poisoned = true;
        }
        result.map(|()| self.next_offset())
    }

    /// Drops every segment and starts an empty log at `offset`.
    pub(crate) fn restart_at(&mut self, offset: u64) -> Result<()> {
        self.shared.next_offset.store(offset, Ordering::Release);
        let old = std::mem::take(&mut *sync::write(&self.shared.segments));
        for segment in old.iter().rev() {
            segment.delete_files()?;
        }
        let segment = Arc::new(Segment::create(&self.dir, offset)?);
        segment.republish(0, offset, -1);
        sync::write(&self.shared.segments).push(segment.clone());
        self.active = segment;
        self.unflushed.clear();
        self.position = 0;
        self.written_back = 0;
        self.cursor = IndexCursor::new();
        self.shared.log_start_offset.store(offset, Ordering::Release);
        self.shared.flushed_offset.store(offset, Ordering::Release);
        sync_dir(&self.dir)?;
        self.dir_dirty = false;
        self.write_checkpoint(Checkpoint {
            recovery_segment: offset,
            recovery_position: 0,
            recovery_next_offset: offset,
            log_start_offset: offset,
        })
    }

    fn truncate_within(&mut self, offset: u64) -> Result<()> {
        let segments = sync::read(&self.shared.segments).clone();
        let index = segments.partition_point(|segment| segment.base_offset <= offset).saturating_sub(1);
        let segment = segments[index].clone();
        let limit = segment.published_len();
        let (cut_position, new_next) = match segment.find_batch(offset, limit)? {
            Some((position, header)) => (position, (header.base_offset as u64).min(offset)),
            None => (limit, offset),
        };
        let log_start = self.shared.log_start_offset.load(Ordering::Relaxed);
        if new_next <= log_start {
            // The batch holding `offset` also holds the log start: nothing readable survives.
            return self.restart_at(log_start);
        }
        self.shared.next_offset.store(new_next, Ordering::Release);
        self.shared.flushed_offset.fetch_min(new_next, Ordering::AcqRel);
        let removed = sync::write(&self.shared.segments).split_off(index + 1);
        for later in removed.iter().rev() {
            later.delete_files()?;
        }
        segment.set_len(cut_position)?;
        segment.sync()?;
        let mut cursor = {
            let mut indexes = sync::write(&segment.indexes);
            indexes.truncate(cut_position, new_next - segment.base_offset);
            drop(indexes);
            segment.cursor_from_indexes()
        };
        let rescan_from = {
            let indexes = sync::read(&segment.indexes);
            let relative = indexes.last_time_entry().map_or(0, |entry| entry.relative_offset);
            indexes.position_for(relative) as u64
        };
        let first_base =
            segment.header_at(rescan_from, cut_position)?.map_or(segment.base_offset, |h| h.base_offset as u64);
        let end = segment.scan(rescan_from, cut_position, first_base, &mut cursor, self.config.index_interval_bytes)?;
        if let Some(defect) = end.defect {
            return Err(segment.corrupt(end.position, defect));
        }
        cursor.first_timestamp = segment.header_at(0, cut_position)?.map(|h| h.max_timestamp);
        segment.republish(cut_position, new_next, cursor.max_timestamp());
        // The checkpoint below may move the recovery point here: the time index on disk must
        // then name the segment's largest timestamp, as after a flush.
        segment.seal_time_index(&cursor);
        segment.persist_indexes()?;
        self.unflushed.retain(|sealed| sealed.base_offset < segment.base_offset);
        self.active = segment.clone();
        self.position = cut_position;
        self.cursor = cursor;
        sync_dir(&self.dir)?;
        let recovery_beyond_cut = self.checkpoint.recovery_segment > segment.base_offset
            || (self.checkpoint.recovery_segment == segment.base_offset
                && self.checkpoint.recovery_position > cut_position)
            || self.checkpoint.recovery_next_offset > new_next;
        if recovery_beyond_cut {
            let checkpoint = Checkpoint {
                recovery_segment: segment.base_offset,
                recovery_position: cut_position,
                recovery_next_offset: new_next,
                ..self.checkpoint
            };
            self.write_checkpoint(checkpoint)?;
        }
        Ok(())
    }

    pub(crate) fn check_not_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned { dir: self.dir.clone() });
        }
        Ok(())
    }
}

/// Cleans up what an interrupted operation left and lists the segment base offsets, sorted.
fn prepare_directory(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let mut swaps = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(Error::io(&path))?;
        } else if let Some(stem) = name.strip_suffix(".swap") {
            swaps.push((stem.to_string(), path));
        } else if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<u64>() {
                bases.push(base);
            }
        }
    }
    for (stem, path) in swaps {
        // `<base>-<end>.swap` was fully written and fsynced: it replaces segments in [base, end).
        let Some((base, end)) =
            stem.split_once('-').and_then(|(b, e)| Some((b.parse::<u64>().ok()?, e.parse::<u64>().ok()?)))
        else {
            continue;
        };
        for replaced in bases.iter().filter(|b| **b >= base && **b < end) {
            for extension in ["log", "index", "timeindex"] {
                let _ = std::fs::remove_file(dir.join(file_name(*replaced, extension)));
            }
        }
        bases.retain(|b| *b < base || *b >= end);
        std::fs::rename(&path, dir.join(file_name(base, "log"))).map_err(Error::io(&path))?;
        bases.push(base);
        info!(dir = %dir.display(), base, "completed an interrupted compaction swap");
    }
    sync_dir(dir)?;
    bases.sort_unstable();
    Ok(bases)
}

/// Rebuilds the in-memory state of a log from its files.
struct Recovery<'a> {
    dir: &'a Path,
    config: &'a LogConfig,
    checkpoint: Option<Checkpoint>,
}

impl Recovery<'_> {
    fn run(self, mut bases: Vec<u64>, lock: File) -> Result<Log> {
        let log_start = self.checkpoint.map_or(bases.first().copied().unwrap_or(0), |c| c.log_start_offset);
        let mut dir_dirty = false;
        // Segments wholly below the log start were being deleted when the process stopped.
        while bases.len() > 1 && bases[1] <= log_start {
            for extension in ["log", "index", "timeindex"] {
                let _ = std::fs::remove_file(self.dir.join(file_name(bases[0], extension)));
            }
            bases.remove(0);
            dir_dirty = true;
        }
        let mut checkpoint = self.checkpoint;
        if bases.is_empty() {
            bases.push(log_start);
            Segment::create(self.dir, log_start)?;
            sync_dir(self.dir)?;
            let fresh = Checkpoint {
                recovery_segment: log_start,
                recovery_position: 0,
                recovery_next_offset: log_start,
                log_start_offset: log_start,
            };
            fresh.write(self.dir)?;
            checkpoint = Some(fresh);
        } else if self.checkpoint.is_none() {
            warn!(dir = %self.dir.display(), "no valid checkpoint; validating the whole log as unflushed");
        }
        let this = Recovery { checkpoint, ..self };
        this.recover_segments(bases, log_start, dir_dirty, lock)
    }

    fn recover_segments(self, bases: Vec<u64>, mut log_start: u64, mut dir_dirty: bool, lock: File) -> Result<Log> {
        log_start = log_start.max(bases[0]);
        let (recovery_index, recovery_position, recovery_next) = match self.checkpoint {
            Some(c) => match bases.binary_search(&c.recovery_segment) {
                Ok(index) => (index, c.recovery_position, c.recovery_next_offset),
                Err(_) => {
                    warn!(dir = %self.dir.display(), "recovery point names a missing segment; validating every segment");
                    (0, 0, bases[0])
                }
            },
            None => (0, 0, bases[0]),
        };
        let interval = self.config.index_interval_bytes;
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
        let mut cursor = IndexCursor::new();
        let mut expected_next = bases[0];
        let mut cut_off_after = None;
        for (index, &base) in bases.iter().enumerate() {
            let segment = Segment::open(self.dir, base)?;
            let file_len = segment.file_len()?;
            if index < recovery_index {
                expected_next = self.recover_flushed(&segment, file_len, expected_next)?;
            } else if index == recovery_index {
                if recovery_position > file_len {
                    return Err(
                        segment.corrupt(file_len, format!("file ends before the recovery point {recovery_position}"))
                    );
                }
                cursor = self.recover_trusted_prefix(&segment, recovery_position, expected_next)?;
                let start_next = recovery_next.max(expected_next).max(base);
                let end = segment.scan(recovery_position, file_len, start_next, &mut cursor, interval)?;
                expected_next = self.finish_tail(&segment, &end, file_len, &cursor)?;
                if end.defect.is_some() {
                    cut_off_after = Some(index);
                }
            } else {
                if base < expected_next {
                    warn!(file = %segment.log_path.display(), expected_next, "segment does not continue the log; removing it and later ones");
                    cut_off_after = Some(index - 1);
                } else {
                    cursor = IndexCursor::new();
                    let end = segment.scan(0, file_len, base, &mut cursor, interval)?;
                    expected_next = self.finish_tail(&segment, &end, file_len, &cursor)?;
                    if end.defect.is_some() {
                        cut_off_after = Some(index);
                    }
                }
            }
            segments.push(Arc::new(segment));
            if cut_off_after.is_some() {
                break;
            }
        }
        if let Some(last_kept) = cut_off_after {
            segments.truncate(last_kept + 1);
            for removed in bases.iter().skip(last_kept + 1) {
                for extension in ["log", "index", "timeindex"] {
                    let _ = std::fs::remove_file(self.dir.join(file_name(*removed, extension)));
                }
            }
            dir_dirty = true;
        }
        let active = segments.last().cloned().expect("at least one segment");
        let position = active.published_len();
        let next_offset = active.end_offset();
        cursor.first_timestamp = active.header_at(0, position)?.map(|header| header.max_timestamp);
        let flushed = self
            .checkpoint
            .filter(|_| recovery_index < segments.len())
            .map_or(bases[0], |_| recovery_next.min(next_offset));
        let checkpoint = self.checkpoint.unwrap_or_default();
        let shared = Arc::new(Shared {
            segments: RwLock::new(segments),
            log_start_offset: AtomicU64::new(log_start.min(next_offset)),
            next_offset: AtomicU64::new(next_offset),
            flushed_offset: AtomicU64::new(flushed),
            decompressed_bytes_max: self.config.decompressed_bytes_max,
        });
        if dir_dirty {
            sync_dir(self.dir)?;
        }
        Ok(Log {
            dir: self.dir.to_path_buf(),
            config: self.config.clone(),
            shared,
            active,
            position,
            written_back: position,
            cursor,
            unflushed: Vec::new(),
            dir_dirty: false,
            checkpoint,
            poisoned: false,
            _lock: lock,
        })
    }

    /// A sealed segment below the recovery point: trust its data, load or rebuild its indexes.
    fn recover_flushed(&self, segment: &Segment, file_len: u64, expected_next: u64) -> Result<u64> {
        let interval = self.config.index_interval_bytes;
        if let Some(indexes) = Indexes::load(&segment.index_path, &segment.time_index_path, file_len) {
            *sync::write(&segment.indexes) = indexes;
            // Walk the headers after the last index entry to find where the segment ends.
            let mut position = sync::read(&segment.indexes).last_offset_entry().map_or(0, |e| e.position as u64);
            let mut end_offset = segment.base_offset.max(expected_next);
            while position < file_len {
                let header = segment.header_at(position, file_len)?.ok_or_else(|| {
                    segment.corrupt(position, "a batch header is cut off by the end of the file".into())
                })?;
                if position + header.total_len() as u64 > file_len {
                    return Err(segment.corrupt(position, "a batch is cut off by the end of the file".into()));
                }
                end_offset = header.last_offset().0 + 1;
                position += header.total_len() as u64;
            }
            let max_timestamp = sync::read(&segment.indexes).last_time_entry().map_or(-1, |e| e.timestamp);
            segment.republish(file_len, end_offset, max_timestamp);
            return Ok(end_offset);
        }
        let mut cursor = IndexCursor::new();
        let end = segment.scan(0, file_len, expected_next.max(segment.base_offset), &mut cursor, interval)?;
        if let Some(defect) = end.defect {
            return Err(segment.corrupt(end.position, defect));
        }
        segment.seal_time_index(&cursor);
        segment.persist_indexes()?;
        segment.republish(file_len, end.next_offset, cursor.max_timestamp());
        Ok(end.next_offset)
    }

    /// The segment holding the recovery point: trust bytes before it, returning the cursor to
    /// continue scanning from there.
    fn recover_trusted_prefix(
        &self,
        segment: &Segment,
        recovery_position: u64,
        expected_next: u64,
    ) -> Result<IndexCursor> {
        if recovery_position == 0 {
            return Ok(IndexCursor::new());
        }
        if let Some(mut indexes) = Indexes::load(&segment.index_path, &segment.time_index_path, recovery_position) {
            if let Some(checkpoint) = self.checkpoint {
                indexes.clamp_times(checkpoint.recovery_next_offset.saturating_sub(segment.base_offset));
            }
            *sync::write(&segment.indexes) = indexes;
            return Ok(segment.cursor_from_indexes());
        }
        let mut cursor = IndexCursor::new();
        let interval = self.config.index_interval_bytes;
        let end = segment.scan(0, recovery_position, expected_next.max(segment.base_offset), &mut cursor, interval)?;
        if let Some(defect) = end.defect {
            return Err(segment.corrupt(end.position, defect));
        }
        Ok(cursor)
    }

    /// After scanning an unflushed tail: cut off a torn part, publish, write the indexes.
    fn finish_tail(
        &self,
        segment: &Segment,
        end: &crate::segment::ScanEnd,
        file_len: u64,
        cursor: &IndexCursor,
    ) -> Result<u64> {
        if let Some(defect) = &end.defect {
            warn!(
                file = %segment.log_path.display(),
                position = end.position,
                discarded_bytes = file_len - end.position,
                reason = %defect,
                "cutting off an unflushed, torn or corrupt tail"
            );
            segment.set_len(end.position)?;
            segment.sync()?;
        }
        segment.seal_time_index(cursor);
        segment.persist_indexes()?;
        segment.republish(end.position, end.next_offset, cursor.max_timestamp());
        Ok(end.next_offset)
    }
}
