//! `LogReader`: the concurrent read path — whole batches by offset, offsets by timestamp.
//!
//! Readers never block the writer for longer than a segment-list lookup, and see only batches
//! the writer has published, so never half a batch. Every batch handed out is CRC-checked: a bad
//! one is reported as [`Error::Corrupt`] with its file and position, never skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, Batch, BatchHeader, HEADER_LEN};
use crate::error::{Error, Result};
use crate::log::Shared;
use crate::offset::Offset;
use crate::segment::Segment;
use crate::sync;

/// A cheap, cloneable handle for reading a log from any thread.
#[derive(Clone, Debug)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// What one segment holds, for tools, retention decisions and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Offset the segment's name carries.
    pub base_offset: Offset,
    /// One past the last offset in the segment.
    pub end_offset: Offset,
    /// Bytes of published batches.
    pub size_bytes: u64,
    /// Largest record timestamp, -1 when empty.
    pub max_timestamp: i64,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> LogReader {
        LogReader { shared }
    }

    /// First offset still readable.
    pub fn log_start_offset(&self) -> Offset {
        Offset(self.shared.log_start_offset.load(Ordering::Acquire))
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> Offset {
        Offset(self.shared.next_offset.load(Ordering::Acquire))
    }

    /// Every offset below this one is durably on disk.
    pub fn flushed_offset(&self) -> Offset {
        Offset(self.shared.flushed_offset.load(Ordering::Acquire))
    }

    /// Whole batches starting with the one that holds `from` (or the first after it), up to
    /// `max_bytes` — but always at least one whole batch, however large (as Kafka fetch does).
    ///
    /// Returns an empty buffer at the end of the log. Batches come from one segment per call.
    pub fn read(&self, from: Offset, max_bytes: usize) -> Result<Bytes> {
        let next_offset = self.next_offset();
        let log_start_offset = self.log_start_offset();
        if from < log_start_offset || from > next_offset {
            return Err(Error::OffsetOutOfRange { offset: from, log_start_offset, next_offset });
        }
        if from == next_offset {
            return Ok(Bytes::new());
        }
        let segments = sync::read(&self.shared.segments).clone();
        let first = segments.partition_point(|segment| segment.base_offset <= from.0).saturating_sub(1);
        for segment in &segments[first..] {
            let limit = segment.published_len();
            if let Some((position, header)) = segment.find_batch(from.0, limit)? {
                return read_whole_batches(segment, position, &header, max_bytes, limit);
            }
        }
        Ok(Bytes::new())
    }

    /// The earliest offset whose record timestamp is ≥ `timestamp`, or `None` if there is none.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<Offset>> {
        let log_start = self.log_start_offset().0;
        let segments = sync::read(&self.shared.segments).clone();
        for segment in &segments {
            if segment.max_timestamp() < timestamp || segment.end_offset() <= log_start {
                continue;
            }
            let limit = segment.published_len();
            let relative = sync::read(&segment.indexes).offset_before_time(timestamp);
            let from = (segment.base_offset + relative as u64).max(log_start);
            let Some((mut position, _)) = segment.find_batch(from, limit)? else {
                continue;
            };
            while let Some(header) = segment.header_at(position, limit)? {
                if header.max_timestamp >= timestamp && header.last_offset().0 >= log_start {
                    let batch = read_batch(segment, position, &header)?;
                    let records = batch
                        .records(self.shared.decompressed_bytes_max)
                        .map_err(|error| segment.corrupt(position, error.to_string()))?;
                    for record in records {
                        let record = record.map_err(|error| segment.corrupt(position, error.to_string()))?;
                        if record.offset.0 >= log_start && record.timestamp >= timestamp {
                            return Ok(Some(record.offset));
                        }
                    }
                }
                position += header.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// A description of every segment, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        sync::read(&self.shared.segments)
            .iter()
            .map(|segment| SegmentInfo {
                base_offset: Offset(segment.base_offset),
                end_offset: Offset(segment.end_offset()),
                size_bytes: segment.published_len(),
                max_timestamp: segment.max_timestamp(),
            })
            .collect()
    }

    /// Bytes of published batches in all segments.
    pub fn size_bytes(&self) -> u64 {
        sync::read(&self.shared.segments).iter().map(|segment| segment.published_len()).sum()
    }
}

fn read_batch(segment: &Segment, position: u64, header: &BatchHeader) -> Result<Batch> {
    let bytes = segment.read_at(position, header.total_len())?;
    Batch::new(Bytes::from(bytes)).map_err(|error| segment.corrupt(position, error.to_string()))
}

fn read_whole_batches(
    segment: &Segment,
    position: u64,
    first: &BatchHeader,
    max_bytes: usize,
    limit: u64,
) -> Result<Bytes> {
    let available = (limit - position) as usize;
    let want = max_bytes.min(available).max(first.total_len());
    let mut buffer = segment.read_at(position, want)?;
    let mut whole = 0;
    while whole + HEADER_LEN <= buffer.len() {
        let at = position + whole as u64;
        let header = BatchHeader::parse(&buffer[whole..]).map_err(|error| segment.corrupt(at, error.to_string()))?;
        let end = whole + header.total_len();
        if end > buffer.len() {
            break;
        }
        batch::verify_crc(&header, &buffer[whole..end]).map_err(|error| segment.corrupt(at, error.to_string()))?;
        whole = end;
    }
    buffer.truncate(whole);
    Ok(Bytes::from(buffer))
}
