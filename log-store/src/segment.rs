//! One segment: a `.log` file of whole batches plus its two indexes, named by base offset.
//!
//! # Invariants
//! * `published_len` only moves forward while the segment is active (and back on truncation);
//!   bytes below it are whole, validated batches, so readers never see half a batch.
//! * `end_offset` is one past the last offset of the last published batch (the base offset
//!   when the segment is empty).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;

use crate::batch::{self, Batch, BatchHeader, HEADER_LEN};
use crate::error::{Error, Result};
use crate::index::{Indexes, OffsetEntry, TimeEntry};
use crate::sync;

/// Largest chunk the recovery scan reads at once.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// File names of a segment.
pub(crate) fn file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// One segment of the log, shared by the writer and readers.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_index_path: PathBuf,
    file: File,
    published_len: AtomicU64,
    end_offset: AtomicU64,
    /// Largest record timestamp in the segment, -1 while empty.
    max_timestamp: AtomicI64,
    pub indexes: RwLock<Indexes>,
}

/// Writer-side state for adding index entries as batches arrive (append or recovery scan).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IndexCursor {
    bytes_since_entry: u64,
    max_timestamp: i64,
    offset_of_max_timestamp: u64,
    /// Timestamp of the first batch, which decides when the segment is old enough to roll.
    pub first_timestamp: Option<i64>,
}

impl IndexCursor {
    /// The cursor of an empty segment.
    pub fn new() -> IndexCursor {
        IndexCursor { bytes_since_entry: 0, max_timestamp: -1, offset_of_max_timestamp: 0, first_timestamp: None }
    }

    /// Largest batch max-timestamp seen, -1 when none.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
}

/// How a validating scan ended.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Position after the last valid batch.
    pub position: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub defect: Option<String>,
}

impl Segment {
    /// Creates a new empty segment, replacing any leftover files of the same name.
    pub fn create(dir: &Path, base_offset: u64) -> Result<Segment> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(Error::io(&log_path))?;
        let segment = Segment::with_file(dir, base_offset, file, 0);
        for path in [&segment.index_path, &segment.time_index_path] {
            let _ = std::fs::remove_file(path);
        }
        Ok(segment)
    }

    /// Opens an existing segment file; nothing is published until recovery says how much is valid.
    pub fn open(dir: &Path, base_offset: u64) -> Result<Segment> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new().read(true).write(true).open(&log_path).map_err(Error::io(&log_path))?;
        Ok(Segment::with_file(dir, base_offset, file, 0))
    }

    /// Wraps an already open file (used by compaction for a file still under its temporary name).
    pub fn with_file(dir: &Path, base_offset: u64, file: File, published_len: u64) -> Segment {
        Segment {
            base_offset,
            log_path: dir.join(file_name(base_offset, "log")),
            index_path: dir.join(file_name(base_offset, "index")),
            time_index_path: dir.join(file_name(base_offset, "timeindex")),
            file,
            published_len: AtomicU64::new(published_len),
            end_offset: AtomicU64::new(base_offset),
            max_timestamp: AtomicI64::new(-1),
            indexes: RwLock::new(Indexes::default()),
        }
    }

    pub fn file_len(&self) -> Result<u64> {
        self.file.metadata().map(|m| m.len()).map_err(Error::io(&self.log_path))
    }

    pub fn published_len(&self) -> u64 {
        self.published_len.load(Ordering::Acquire)
    }

    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    /// Makes bytes up to `len` and offsets up to `end_offset` visible to readers.
    pub fn publish(&self, len: u64, end_offset: u64, max_timestamp: i64) {
        self.max_timestamp.fetch_max(max_timestamp, Ordering::AcqRel);
        self.end_offset.store(end_offset, Ordering::Release);
        self.published_len.store(len, Ordering::Release);
    }

    /// Resets what readers see after a truncation or recovery.
    pub fn republish(&self, len: u64, end_offset: u64, max_timestamp: i64) {
        self.published_len.store(len, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
        self.max_timestamp.store(max_timestamp, Ordering::Release);
    }

    /// Writes a whole batch, given as consecutive parts, at `position`: one `pwritev` for all
    /// of them (more only if the kernel writes less than asked). On error the caller cuts the
    /// file back.
    pub fn write_at(&self, parts: &[&[u8]], position: u64) -> Result<()> {
        write_all_vectored_at(&self.file, parts, position).map_err(Error::io(&self.log_path))
    }

    /// Cuts the file to `len` bytes.
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(Error::io(&self.log_path))
    }

    /// Asks the kernel to start writing `len` bytes at `position` to disk, without waiting.
    /// Only a hint: errors surface at the next [`Segment::sync`].
    pub fn start_writeback(&self, position: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a descriptor this segment owns; no memory is passed.
            let result = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    position as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if result != 0 {
                tracing::debug!(file = %self.log_path.display(), error = %std::io::Error::last_os_error(), "sync_file_range");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (position, len);
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(Error::io(&self.log_path))
    }

    /// Writes index entries not yet on disk.
    pub fn persist_indexes(&self) -> Result<()> {
        sync::write(&self.indexes).persist(&self.index_path, &self.time_index_path)
    }

    /// Reads up to `len` bytes at `position`; fewer if the file is shorter (a racing truncation).
    pub fn read_at(&self, position: u64, len: usize) -> Result<Vec<u8>> {
        let mut buffer = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.file.read_at(&mut buffer[filled..], position + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Error::io(&self.log_path)(error)),
            }
        }
        buffer.truncate(filled);
        Ok(buffer)
    }

    /// The header of the batch at `position`, if a whole header lies below `limit`.
    pub fn header_at(&self, position: u64, limit: u64) -> Result<Option<BatchHeader>> {
        if position + HEADER_LEN as u64 > limit {
            return Ok(None);
        }
        let bytes = self.read_at(position, HEADER_LEN)?;
        if bytes.len() < HEADER_LEN {
            return Ok(None);
        }
        BatchHeader::parse(&bytes).map(Some).map_err(|error| self.corrupt(position, error.to_string()))
    }

    /// Finds the first published batch whose last offset is ≥ `target`, using the index.
    pub fn find_batch(&self, target: u64, limit: u64) -> Result<Option<(u64, BatchHeader)>> {
        let relative = target.saturating_sub(self.base_offset).min(u32::MAX as u64) as u32;
        let mut position = sync::read(&self.indexes).position_for(relative) as u64;
        while let Some(header) = self.header_at(position, limit)? {
            if header.last_offset().0 >= target {
                return Ok(Some((position, header)));
            }
            position += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Records a batch at `position` in the indexes (append and recovery share this).
    pub fn index_batch(&self, cursor: &mut IndexCursor, position: u64, header: &BatchHeader, interval: u64) {
        if cursor.first_timestamp.is_none() {
            cursor.first_timestamp = Some(header.max_timestamp);
        }
        if header.max_timestamp > cursor.max_timestamp {
            cursor.max_timestamp = header.max_timestamp;
            cursor.offset_of_max_timestamp = header.last_offset().0;
        }
        if cursor.bytes_since_entry >= interval {
            let mut indexes = sync::write(&self.indexes);
            indexes.push_offset(OffsetEntry {
                relative_offset: (header.base_offset as u64 - self.base_offset) as u32,
                position: position as u32,
            });
            self.push_time_entry(&mut indexes, cursor);
            cursor.bytes_since_entry = 0;
        }
        cursor.bytes_since_entry += header.total_len() as u64;
    }

    /// Adds the cursor's running maximum to the time index (done on roll and flush too, so the
    /// last time entry always names the segment's largest timestamp).
    pub fn seal_time_index(&self, cursor: &IndexCursor) {
        let mut indexes = sync::write(&self.indexes);
        self.push_time_entry(&mut indexes, cursor);
    }

    fn push_time_entry(&self, indexes: &mut Indexes, cursor: &IndexCursor) {
        if cursor.max_timestamp >= 0 {
            indexes.push_time(TimeEntry {
                timestamp: cursor.max_timestamp,
                relative_offset: (cursor.offset_of_max_timestamp.saturating_sub(self.base_offset)) as u32,
            });
        }
    }

    /// Cursor state for continuing to append after recovery: resumes from the loaded indexes.
    pub fn cursor_from_indexes(&self) -> IndexCursor {
        let indexes = sync::read(&self.indexes);
        let time = indexes.last_time_entry();
        IndexCursor {
            bytes_since_entry: 0,
            max_timestamp: time.map_or(-1, |t| t.timestamp),
            offset_of_max_timestamp: time.map_or(self.base_offset, |t| self.base_offset + t.relative_offset as u64),
            first_timestamp: None,
        }
    }

    /// Walks batches from `position` to `file_len`, checking each (framing, CRC, and that its base
    /// offset is at least `next_offset`: compaction and truncation may leave gaps), feeding the
    /// indexes. Stops at the first defect and says where.
    pub fn scan(
        &self,
        mut position: u64,
        file_len: u64,
        mut next_offset: u64,
        cursor: &mut IndexCursor,
        interval: u64,
    ) -> Result<ScanEnd> {
        let mut chunk = Vec::new();
        let mut chunk_start = position;
        let defect = loop {
            if position >= file_len {
                break None;
            }
            let header_bytes = match self.fill(&mut chunk, &mut chunk_start, position, HEADER_LEN, file_len)? {
                Some(bytes) => bytes,
                None => break Some("a batch header is cut off by the end of the file".to_string()),
            };
            let header = match BatchHeader::parse(header_bytes) {
                Ok(header) => header,
                Err(error) => break Some(error.to_string()),
            };
            let batch_bytes = match self.fill(&mut chunk, &mut chunk_start, position, header.total_len(), file_len)? {
                Some(bytes) => bytes,
                None => break Some("a batch is cut off by the end of the file".to_string()),
            };
            if let Err(error) = batch::verify_crc(&header, batch_bytes) {
                break Some(error.to_string());
            }
            let base = header.base_offset as u64;
            if header.base_offset < 0 || base < next_offset {
                break Some(format!("batch base offset {} below the expected {next_offset}", header.base_offset));
            }
            self.index_batch(cursor, position, &header, interval);
            next_offset = header.last_offset().0 + 1;
            position += header.total_len() as u64;
        };
        Ok(ScanEnd { position, next_offset, defect })
    }

    /// Returns `len` bytes at `position` from the scan buffer, reading ahead in big chunks.
    fn fill<'a>(
        &self,
        chunk: &'a mut Vec<u8>,
        chunk_start: &mut u64,
        position: u64,
        len: usize,
        file_len: u64,
    ) -> Result<Option<&'a [u8]>> {
        if position + len as u64 > file_len {
            return Ok(None);
        }
        let chunk_end = *chunk_start + chunk.len() as u64;
        if position < *chunk_start || position + len as u64 > chunk_end {
            let want = len.max(SCAN_CHUNK_BYTES).min((file_len - position) as usize);
            *chunk = self.read_at(position, want)?;
            *chunk_start = position;
            if chunk.len() < len {
                return Ok(None);
            }
        }
        let at = (position - *chunk_start) as usize;
        Ok(Some(&chunk[at..at + len]))
    }

    pub fn corrupt(&self, position: u64, reason: String) -> Error {
        Error::Corrupt { file: self.log_path.clone(), position, reason }
    }

    /// The published batches from `position` on, read one at a time (compaction's input).
    pub fn batches_from(&self, mut position: u64) -> impl Iterator<Item = Result<(u64, Batch)>> + '_ {
        let limit = self.published_len();
        std::iter::from_fn(move || {
            let header = match self.header_at(position, limit) {
                Ok(Some(header)) => header,
                Ok(None) => return None,
                Err(error) => {
                    position = limit;
                    return Some(Err(error));
                }
            };
            let at = position;
            position += header.total_len() as u64;
            let batch = self
                .read_at(at, header.total_len())
                .and_then(|bytes| Batch::new(Bytes::from(bytes)).map_err(|error| self.corrupt(at, error.to_string())));
            if batch.is_err() {
                position = limit;
            }
            Some(batch.map(|batch| (at, batch)))
        })
    }

    /// Removes the segment's files.
    pub fn delete_files(&self) -> Result<()> {
        for path in [&self.log_path, &self.index_path, &self.time_index_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(Error::io(path)(error)),
            }
        }
        Ok(())
    }
}

/// `pwritev` until every byte of `parts` is written at `position` onwards.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut position: u64) -> std::io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part)).collect();
    let mut remaining = &mut slices[..];
    IoSlice::advance_slices(&mut remaining, 0); // drops empty parts
    while !remaining.is_empty() {
        let count = remaining.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and every slice borrows
        // memory that outlives the call; the descriptor belongs to `file`.
        let written = unsafe {
            libc::pwritev(file.as_raw_fd(), remaining.as_ptr().cast::<libc::iovec>(), count, position as libc::off_t)
        };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        position += written as u64;
        IoSlice::advance_slices(&mut remaining, written as usize);
    }
    Ok(())
}
