//! Kafka RecordBatch v2, the one batch format on disk and on the wire.
//!
//! Byte layout (big-endian), as in Kafka's `DefaultRecordBatch`:
//!
//! ```text
//! 0  baseOffset int64          ─┐ log overhead, outside the batch length and the CRC
//! 8  batchLength int32         ─┘
//! 12 partitionLeaderEpoch int32   outside the CRC
//! 16 magic int8 (= 2)
//! 17 crc uint32                   CRC-32C of bytes 21..end
//! 21 attributes int16             bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//! 23 lastOffsetDelta int32
//! 27 baseTimestamp int64
//! 35 maxTimestamp int64
//! 43 producerId int64
//! 51 producerEpoch int16
//! 53 baseSequence int32
//! 57 recordsCount int32
//! 61 records…                     possibly compressed as one block
//! ```
//!
//! # Layout
//! * this file — [`BatchHeader`], validation, CRC, stamping of the base offset and leader epoch.
//! * `records` — one record's encoding, zigzag varints, the decoding iterator.
//! * `compression` — the five Kafka codecs.
//! * `builder` — [`BatchBuilder`], for writing batches from plain records.

mod builder;
mod compression;
mod records;

pub use builder::{BatchBuilder, NewRecord};
pub use compression::Compression;
pub use records::{Header, Record, RecordIter};

pub(crate) use records::{encode_record, RawRecord};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::offset::Offset;

/// Bytes before the batch length field's coverage starts: baseOffset and batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed batch header, up to and including recordsCount.
pub const HEADER_LEN: usize = 61;
/// The only magic this log stores.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
/// The batch's first bytes that a log stamps (base offset, partition leader epoch); the CRC
/// does not cover them.
pub const STAMPED_PREFIX_LEN: usize = PARTITION_LEADER_EPOCH + 4;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// How a batch's timestamps were assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker when the batch was appended.
    LogAppendTime,
}

/// The fixed header of one RecordBatch v2, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (stamped by the log at append).
    pub base_offset: i64,
    /// Bytes after the length field: the whole batch is `LOG_OVERHEAD + batch_length` bytes.
    pub batch_length: i32,
    /// Leader epoch of the replica that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; always 2 here.
    pub magic: i8,
    /// CRC-32C of the bytes from `attributes` to the end.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control flags.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record; record timestamps are deltas from it.
    pub base_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `bytes` without checking the CRC.
    ///
    /// Only the framing is checked: enough bytes, magic 2, a batch length that covers the header.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader> {
        if bytes.len() < LOG_OVERHEAD + 5 {
            return Err(Error::MalformedBatch("shorter than a batch header"));
        }
        let magic = bytes[MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(Error::UnsupportedMagic(magic));
        }
        if bytes.len() < HEADER_LEN {
            return Err(Error::MalformedBatch("shorter than a batch header"));
        }
        let header = BatchHeader {
            base_offset: i64_at(bytes, BASE_OFFSET),
            batch_length: i32_at(bytes, BATCH_LENGTH),
            partition_leader_epoch: i32_at(bytes, PARTITION_LEADER_EPOCH),
            magic,
            crc: u32_at(bytes, CRC),
            attributes: i16_at(bytes, ATTRIBUTES),
            last_offset_delta: i32_at(bytes, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(bytes, BASE_TIMESTAMP),
            max_timestamp: i64_at(bytes, MAX_TIMESTAMP),
            producer_id: i64_at(bytes, PRODUCER_ID),
            producer_epoch: i16_at(bytes, PRODUCER_EPOCH),
            base_sequence: i32_at(bytes, BASE_SEQUENCE),
            records_count: i32_at(bytes, RECORDS_COUNT),
        };
        if (header.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(Error::MalformedBatch("batch length shorter than the header"));
        }
        if header.last_offset_delta < 0 || header.records_count < 0 {
            return Err(Error::MalformedBatch("negative offset delta or record count"));
        }
        Ok(header)
    }

    /// Total size of the batch in bytes, log overhead included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> Offset {
        Offset(self.base_offset as u64)
    }

    /// Offset of the last record (also the last offset a compacted batch once held).
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset as u64 + self.last_offset_delta as u64)
    }

    /// The codec the records section is compressed with.
    pub fn compression(&self) -> Result<Compression> {
        Compression::from_id((self.attributes & COMPRESSION_MASK) as u8)
    }

    /// Whether timestamps were set by the producer or by the log.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// A control batch (transaction marker), not user data.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// A whole, stored batch: its bytes and decoded header.
#[derive(Clone, Debug)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Wraps one whole batch after checking framing and CRC.
    pub fn new(bytes: Bytes) -> Result<Batch> {
        let header = BatchHeader::parse(&bytes)?;
        if header.total_len() != bytes.len() {
            return Err(Error::MalformedBatch("batch length does not match the bytes given"));
        }
        verify_crc(&header, &bytes)?;
        Ok(Batch { header, bytes })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch bytes, exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Decodes the records, decompressing if needed (at most `decompressed_bytes_max` bytes).
    pub fn records(&self, decompressed_bytes_max: usize) -> Result<RecordIter> {
        RecordIter::new(&self.header, &self.bytes, decompressed_bytes_max)
    }
}

/// Splits a buffer of whole batches (as [`crate::LogReader::read`] returns) into batches.
///
/// Each batch's framing and CRC are checked; an error ends the iteration.
pub fn batches(bytes: Bytes) -> Batches {
    Batches { rest: bytes }
}

/// Iterator over the batches of a buffer; see [`batches`].
#[derive(Debug)]
pub struct Batches {
    rest: Bytes,
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let header = match BatchHeader::parse(&self.rest) {
            Ok(header) if header.total_len() <= self.rest.len() => Ok(header),
            Ok(_) => Err(Error::MalformedBatch("truncated batch")),
            Err(error) => Err(error),
        };
        match header {
            Ok(header) => Some(Batch::new(self.rest.split_to(header.total_len()))),
            Err(error) => {
                self.rest.clear();
                Some(Err(error))
            }
        }
    }
}

/// Computes the CRC-32C a batch should carry (over `attributes..end`).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

pub(crate) fn verify_crc(header: &BatchHeader, batch: &[u8]) -> Result<()> {
    let computed = compute_crc(&batch[..header.total_len()]);
    if computed != header.crc {
        return Err(Error::CrcMismatch { stored: header.crc, computed });
    }
    Ok(())
}

/// Writes the base offset into a batch (outside the CRC, so the CRC stays valid).
pub fn set_base_offset(batch: &mut [u8], base_offset: Offset) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&(base_offset.0 as i64).to_be_bytes());
}

/// Writes the partition leader epoch into a batch (outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Rules a batch must follow to be appended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Validation {
    /// Every record needs a non-null key (compacted logs).
    pub require_keys: bool,
    /// Largest size the records may inflate to when decompressed.
    pub decompressed_bytes_max: usize,
}

/// Checks that `bytes` is exactly one well-formed batch fit to append, and returns its header.
///
/// Checks magic, length, CRC-32C, that the records decode (decompressing if needed), that their
/// count matches the header, and that their offset deltas run 0, 1, 2… up to `lastOffsetDelta`.
pub fn validate(bytes: &[u8], rules: Validation) -> Result<BatchHeader> {
    let header = BatchHeader::parse(bytes)?;
    if header.total_len() != bytes.len() {
        return Err(Error::MalformedBatch("batch length does not match the bytes given"));
    }
    verify_crc(&header, bytes)?;
    if header.records_count == 0 {
        return Err(Error::InvalidRecord("a batch must hold at least one record"));
    }
    if header.last_offset_delta != header.records_count - 1 {
        return Err(Error::InvalidRecord("lastOffsetDelta does not match the record count"));
    }
    let compression = header.compression()?;
    let body = &bytes[HEADER_LEN..];
    let inflated;
    let records = if compression == Compression::None {
        body
    } else {
        inflated = compression.decompress(body, rules.decompressed_bytes_max)?;
        &inflated[..]
    };
    let mut position = 0;
    for expected_delta in 0..header.records_count {
        let record = RawRecord::parse(records, &mut position)?;
        if record.offset_delta != expected_delta {
            return Err(Error::InvalidRecord("record offset deltas are not sequential"));
        }
        if rules.require_keys && !header.is_control() && record.key.is_none() {
            return Err(Error::InvalidRecord("compacted logs need a key on every record"));
        }
    }
    if position != records.len() {
        return Err(Error::MalformedBatch("bytes left after the last record"));
    }
    Ok(header)
}

fn i16_at(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Writes a complete batch header in front of an encoded records section.
pub(crate) fn assemble(header: &BatchHeader, records_section: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + records_section.len());
    let batch_length = (HEADER_LEN - LOG_OVERHEAD + records_section.len()) as i32;
    out.extend_from_slice(&header.base_offset.to_be_bytes());
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.attributes.to_be_bytes());
    out.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&header.base_timestamp.to_be_bytes());
    out.extend_from_slice(&header.max_timestamp.to_be_bytes());
    out.extend_from_slice(&header.producer_id.to_be_bytes());
    out.extend_from_slice(&header.producer_epoch.to_be_bytes());
    out.extend_from_slice(&header.base_sequence.to_be_bytes());
    out.extend_from_slice(&header.records_count.to_be_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(records_section);
    let crc = compute_crc(&out);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

pub(crate) fn attributes_with_compression(attributes: i16, compression: Compression) -> i16 {
    (attributes & !COMPRESSION_MASK) | compression.id() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // RFC 3720 / iSCSI check value for the ASCII digits "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn parse_rejects_short_and_foreign_magic() {
        assert!(matches!(BatchHeader::parse(&[0; 10]), Err(Error::MalformedBatch(_))));
        let mut v1 = vec![0u8; 70];
        v1[MAGIC] = 1;
        assert!(matches!(BatchHeader::parse(&v1), Err(Error::UnsupportedMagic(1))));
    }
}
