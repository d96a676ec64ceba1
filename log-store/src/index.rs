//! The sparse offset index and the time index of one segment, in memory and on disk.
//!
//! Both are derived data: they can always be rebuilt by scanning the segment, so they are
//! written without fsync and checked for sanity when loaded.
//!
//! * Offset index entry, 8 bytes: relative offset `u32`, file position `u32` — the batch whose base
//!   offset is `segment base + relative offset` starts at that position.
//! * Time index entry, 12 bytes: timestamp `i64`, relative offset `u32` — no record in a batch up to
//!   and including the one holding that offset has a larger timestamp.
//!
//! # Invariants
//! Entries are strictly increasing in relative offset and position (offset index) and in
//! timestamp, with non-decreasing relative offsets (time index).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

/// One offset index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Both indexes of a segment, with how much of each is already on disk.
#[derive(Debug, Default)]
pub(crate) struct Indexes {
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    /// Entries already on disk; 0 means the file is rewritten whole on the next persist.
    offsets_persisted: usize,
    times_persisted: usize,
    /// The file holds entries that were dropped in memory (see `load`).
    offsets_stale_on_disk: bool,
}

impl Indexes {
    /// Position of the last indexed batch whose base offset is at most `relative_offset`.
    pub fn position_for(&self, relative_offset: u32) -> u32 {
        let after = self.offsets.partition_point(|entry| entry.relative_offset <= relative_offset);
        if after == 0 {
            0
        } else {
            self.offsets[after - 1].position
        }
    }

    /// Relative offset from which a scan finds the first record with a timestamp ≥ `timestamp`.
    pub fn offset_before_time(&self, timestamp: i64) -> u32 {
        let after = self.times.partition_point(|entry| entry.timestamp < timestamp);
        if after == 0 {
            0
        } else {
            self.times[after - 1].relative_offset
        }
    }

    pub fn last_offset_entry(&self) -> Option<OffsetEntry> {
        self.offsets.last().copied()
    }

    pub fn last_time_entry(&self) -> Option<TimeEntry> {
        self.times.last().copied()
    }

    pub fn push_offset(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.offsets.last() {
            if entry.relative_offset <= last.relative_offset || entry.position <= last.position {
                return;
            }
        }
        self.offsets.push(entry);
    }

    pub fn push_time(&mut self, entry: TimeEntry) {
        if let Some(last) = self.times.last() {
            if entry.timestamp <= last.timestamp || entry.relative_offset < last.relative_offset {
                return;
            }
        }
        self.times.push(entry);
    }

    /// Drops entries for batches at or after `position` / `relative_offset` (a truncation).
    pub fn truncate(&mut self, position: u64, relative_offset: u64) {
        self.offsets.retain(|entry| (entry.position as u64) < position);
        self.times.retain(|entry| (entry.relative_offset as u64) < relative_offset);
        self.offsets_persisted = 0;
        self.times_persisted = 0;
    }

    /// Loads both index files if present and sane, keeping entries before `position_limit`.
    ///
    /// Returns `None` when either file is missing or fails a sanity check: the caller rebuilds.
    pub fn load(offset_path: &Path, time_path: &Path, position_limit: u64) -> Option<Indexes> {
        let offset_bytes = std::fs::read(offset_path).ok()?;
        let time_bytes = std::fs::read(time_path).ok()?;
        if offset_bytes.len() % OFFSET_ENTRY_LEN != 0 || time_bytes.len() % TIME_ENTRY_LEN != 0 {
            return None;
        }
        let mut indexes = Indexes::default();
        for chunk in offset_bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes(chunk[..4].try_into().ok()?),
                position: u32::from_be_bytes(chunk[4..].try_into().ok()?),
            };
            if let Some(last) = indexes.offsets.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position {
                    return None;
                }
            }
            if entry.position as u64 >= position_limit {
                // Entries past the limit stay in the file until it is rewritten: make sure the
                // next persist rewrites it instead of appending after them.
                indexes.offsets_stale_on_disk = true;
                break;
            }
            indexes.offsets.push(entry);
        }
        for chunk in time_bytes.chunks_exact(TIME_ENTRY_LEN) {
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(chunk[..8].try_into().ok()?),
                relative_offset: u32::from_be_bytes(chunk[8..].try_into().ok()?),
            };
            if let Some(last) = indexes.times.last() {
                if entry.timestamp <= last.timestamp || entry.relative_offset < last.relative_offset {
                    return None;
                }
            }
            indexes.times.push(entry);
        }
        indexes.offsets_persisted = if indexes.offsets_stale_on_disk { 0 } else { indexes.offsets.len() };
        indexes.times_persisted = indexes.times.len();
        Some(indexes)
    }

    /// Drops time entries that point at or past `end_relative_offset`; loaded files can hold
    /// entries written after the last durable byte of the log.
    pub fn clamp_times(&mut self, end_relative_offset: u64) {
        let before = self.times.len();
        self.times.retain(|entry| (entry.relative_offset as u64) < end_relative_offset);
        if self.times.len() != before {
            self.times_persisted = 0;
        }
    }

    /// Writes entries not yet on disk; rewrites a file whole when a truncation or a load
    /// dropped entries, or when it does not hold exactly the entries known to be there.
    pub fn persist(&mut self, offset_path: &Path, time_path: &Path) -> Result<()> {
        if self.offsets_persisted < self.offsets.len() || self.offsets_persisted == 0 {
            let encoded = |entries: &[OffsetEntry]| -> Vec<u8> {
                entries
                    .iter()
                    .flat_map(|e| e.relative_offset.to_be_bytes().into_iter().chain(e.position.to_be_bytes()))
                    .collect()
            };
            persist_file(offset_path, self.offsets_persisted, OFFSET_ENTRY_LEN, &self.offsets, encoded)?;
            self.offsets_persisted = self.offsets.len();
            self.offsets_stale_on_disk = false;
        }
        if self.times_persisted < self.times.len() || self.times_persisted == 0 {
            let encoded = |entries: &[TimeEntry]| -> Vec<u8> {
                entries
                    .iter()
                    .flat_map(|e| e.timestamp.to_be_bytes().into_iter().chain(e.relative_offset.to_be_bytes()))
                    .collect()
            };
            persist_file(time_path, self.times_persisted, TIME_ENTRY_LEN, &self.times, encoded)?;
            self.times_persisted = self.times.len();
        }
        Ok(())
    }
}

/// Appends the entries after the first `persisted` to an index file — only if the file holds
/// exactly those `persisted` entries; otherwise rewrites it whole.
fn persist_file<E>(
    path: &Path,
    persisted: usize,
    entry_len: usize,
    entries: &[E],
    encode: impl Fn(&[E]) -> Vec<u8>,
) -> Result<()> {
    let appendable = persisted > 0 && file_len(path) == Some((persisted * entry_len) as u64);
    if appendable {
        write_entries(path, &encode(&entries[persisted..]), false)
    } else {
        write_entries(path, &encode(entries), true)
    }
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|metadata| metadata.len())
}

fn write_entries(path: &Path, bytes: &[u8], rewrite: bool) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(!rewrite)
        .write(true)
        .truncate(rewrite)
        .open(path)
        .map_err(Error::io(path))?;
    file.write_all(bytes).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_take_the_floor_entry() {
        let mut indexes = Indexes::default();
        indexes.push_offset(OffsetEntry { relative_offset: 10, position: 4096 });
        indexes.push_offset(OffsetEntry { relative_offset: 20, position: 8192 });
        indexes.push_offset(OffsetEntry { relative_offset: 15, position: 9000 });
        assert_eq!(indexes.position_for(0), 0);
        assert_eq!(indexes.position_for(10), 4096);
        assert_eq!(indexes.position_for(19), 4096);
        assert_eq!(indexes.position_for(1000), 8192);
        indexes.push_time(TimeEntry { timestamp: 100, relative_offset: 5 });
        indexes.push_time(TimeEntry { timestamp: 90, relative_offset: 9 });
        indexes.push_time(TimeEntry { timestamp: 200, relative_offset: 12 });
        assert_eq!(indexes.offset_before_time(100), 0);
        assert_eq!(indexes.offset_before_time(101), 5);
        assert_eq!(indexes.offset_before_time(1000), 12);
    }

    #[test]
    fn garbage_files_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (offsets, times) = (dir.path().join("a.index"), dir.path().join("a.timeindex"));
        std::fs::write(&offsets, [0u8; 7]).unwrap();
        std::fs::write(&times, []).unwrap();
        assert!(Indexes::load(&offsets, &times, 1 << 20).is_none());
        // Two entries that go backwards.
        std::fs::write(&offsets, [0, 0, 0, 9, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 2, 0]).unwrap();
        assert!(Indexes::load(&offsets, &times, 1 << 20).is_none());
        std::fs::remove_file(&offsets).unwrap();
        assert!(Indexes::load(&offsets, &times, 1 << 20).is_none());
    }

    #[test]
    fn entries_dropped_at_load_are_not_left_in_the_file_to_resurface() {
        // Regression: a crash between persisting index entries and writing the checkpoint left
        // entries past the recovery point in the file; the load dropped them in memory but the
        // next persist appended after them, and a later load trusted one that now pointed into
        // the middle of a different batch.
        let dir = tempfile::tempdir().unwrap();
        let (offsets, times) = (dir.path().join("a.index"), dir.path().join("a.timeindex"));
        let mut indexes = Indexes::default();
        for (relative_offset, position) in [(1, 100), (2, 200), (3, 300)] {
            indexes.push_offset(OffsetEntry { relative_offset, position });
        }
        indexes.persist(&offsets, &times).unwrap();
        let mut reloaded = Indexes::load(&offsets, &times, 250).unwrap();
        reloaded.push_offset(OffsetEntry { relative_offset: 3, position: 260 });
        reloaded.push_offset(OffsetEntry { relative_offset: 4, position: 400 });
        reloaded.persist(&offsets, &times).unwrap();
        let again = Indexes::load(&offsets, &times, u64::MAX).unwrap();
        assert_eq!(again.position_for(3), 260);
        assert_eq!(again.offsets.len(), 4);
    }
}
