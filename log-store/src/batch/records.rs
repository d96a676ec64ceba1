//! One record inside a batch: zigzag varints, the record layout, and the decoding iterator.
//!
//! ```text
//! length varint | attributes int8 | timestampDelta varlong | offsetDelta varint
//! keyLength varint | key | valueLength varint | value | headerCount varint
//! headers: (keyLength varint | key | valueLength varint | value)*      length -1 = null
//! ```

use bytes::Bytes;

use super::{BatchHeader, Compression, TimestampType, HEADER_LEN};
use crate::error::{Error, Result};
use crate::offset::Offset;

/// A record header: a key (Kafka requires UTF-8; stored as given) and an optional value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header key.
    pub key: Bytes,
    /// Header value; `None` is null.
    pub value: Option<Bytes>,
}

/// A decoded record with its absolute offset and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in the partition.
    pub offset: Offset,
    /// Milliseconds since the epoch (create time or log-append time, per the batch).
    pub timestamp: i64,
    /// The key; `None` is null.
    pub key: Option<Bytes>,
    /// The value; `None` is null (a tombstone in a compacted log).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<Header>,
}

/// A record parsed in place: slices into the records section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawRecord<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub header_count: i32,
    /// The encoded headers, `header_count` of them.
    pub headers: &'a [u8],
}

impl<'a> RawRecord<'a> {
    /// Parses the record at `*position`, advancing it past the record.
    pub(crate) fn parse(section: &'a [u8], position: &mut usize) -> Result<RawRecord<'a>> {
        let length = read_varint(section, position)?;
        if length < 0 || *position + length as usize > section.len() {
            return Err(Error::MalformedBatch("record length runs past the batch"));
        }
        let end = *position + length as usize;
        let body = &section[..end];
        let mut at = *position;
        at += 1; // attributes: unused by magic 2
        if at > end {
            return Err(Error::MalformedBatch("record too short"));
        }
        let timestamp_delta = read_varlong(body, &mut at)?;
        let offset_delta = read_varint(body, &mut at)?;
        let key = read_nullable(body, &mut at)?;
        let value = read_nullable(body, &mut at)?;
        let header_count = read_varint(body, &mut at)?;
        if header_count < 0 {
            return Err(Error::MalformedBatch("negative header count"));
        }
        let headers_start = at;
        for _ in 0..header_count {
            let key_length = read_varint(body, &mut at)?;
            if key_length < 0 {
                return Err(Error::MalformedBatch("null header key"));
            }
            skip(body, &mut at, key_length as usize)?;
            read_nullable(body, &mut at)?;
        }
        if at != end {
            return Err(Error::MalformedBatch("record length does not match its fields"));
        }
        *position = end;
        Ok(RawRecord { timestamp_delta, offset_delta, key, value, header_count, headers: &section[headers_start..end] })
    }

    fn decode_headers(&self, owner: &Bytes) -> Result<Vec<Header>> {
        let mut headers = Vec::with_capacity(self.header_count as usize);
        let mut at = 0;
        for _ in 0..self.header_count {
            let key = read_nullable(self.headers, &mut at)?.unwrap_or_default();
            let value = read_nullable(self.headers, &mut at)?;
            headers.push(Header { key: owner.slice_ref(key), value: value.map(|value| owner.slice_ref(value)) });
        }
        Ok(headers)
    }
}

/// Appends one encoded record to `out`.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
) {
    let mut body = Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
    body.push(0);
    write_varlong(&mut body, timestamp_delta);
    write_varlong(&mut body, offset_delta as i64);
    write_nullable(&mut body, key);
    write_nullable(&mut body, value);
    write_varlong(&mut body, headers.len() as i64);
    for header in headers {
        write_nullable(&mut body, Some(&header.key));
        write_nullable(&mut body, header.value.as_deref());
    }
    write_varlong(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// Decodes the records of one batch in order.
#[derive(Debug)]
pub struct RecordIter {
    section: Bytes,
    position: usize,
    remaining: i32,
    base_offset: u64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
}

impl RecordIter {
    pub(crate) fn new(header: &BatchHeader, batch: &Bytes, decompressed_bytes_max: usize) -> Result<RecordIter> {
        let body = batch.slice(HEADER_LEN..header.total_len().min(batch.len()));
        let section = match header.compression()? {
            Compression::None => body,
            codec => Bytes::from(codec.decompress(&body, decompressed_bytes_max)?),
        };
        Ok(RecordIter {
            section,
            position: 0,
            remaining: header.records_count,
            base_offset: header.base_offset as u64,
            base_timestamp: header.base_timestamp,
            log_append_time: (header.timestamp_type() == TimestampType::LogAppendTime).then_some(header.max_timestamp),
        })
    }

    fn decode_next(&mut self) -> Result<Record> {
        let raw = RawRecord::parse(&self.section, &mut self.position)?;
        if raw.offset_delta < 0 {
            return Err(Error::MalformedBatch("negative record offset delta"));
        }
        Ok(Record {
            offset: Offset(self.base_offset + raw.offset_delta as u64),
            timestamp: self.log_append_time.unwrap_or(self.base_timestamp.wrapping_add(raw.timestamp_delta)),
            key: raw.key.map(|key| self.section.slice_ref(key)),
            value: raw.value.map(|value| self.section.slice_ref(value)),
            headers: raw.decode_headers(&self.section)?,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let record = self.decode_next();
        if record.is_err() {
            self.remaining = 0;
        }
        Some(record)
    }
}

fn read_varlong(bytes: &[u8], position: &mut usize) -> Result<i64> {
    let mut raw: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*position).ok_or(Error::MalformedBatch("varint runs past the record"))?;
        *position += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(Error::MalformedBatch("varint longer than 10 bytes"));
        }
    }
    Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
}

fn read_varint(bytes: &[u8], position: &mut usize) -> Result<i32> {
    i32::try_from(read_varlong(bytes, position)?).map_err(|_| Error::MalformedBatch("varint out of 32-bit range"))
}

fn read_nullable<'a>(bytes: &'a [u8], position: &mut usize) -> Result<Option<&'a [u8]>> {
    let length = read_varint(bytes, position)?;
    if length < 0 {
        return Ok(None);
    }
    let start = *position;
    skip(bytes, position, length as usize)?;
    Ok(Some(&bytes[start..*position]))
}

fn skip(bytes: &[u8], position: &mut usize, length: usize) -> Result<()> {
    if bytes.len() - *position < length {
        return Err(Error::MalformedBatch("field runs past the record"));
    }
    *position += length;
    Ok(())
}

fn write_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn write_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => write_varlong(out, -1),
        Some(bytes) => {
            write_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlong_round_trips_extremes() {
        for value in [0, 1, -1, 63, -64, 64, i32::MAX as i64, i32::MIN as i64, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_varlong(&mut out, value);
            let mut at = 0;
            assert_eq!(read_varlong(&out, &mut at).unwrap(), value);
            assert_eq!(at, out.len());
        }
    }

    #[test]
    fn zigzag_matches_the_protobuf_table() {
        // Kafka's varints are protobuf's sint encoding: 0→0, -1→1, 1→2, -2→3, 2147483647→4294967294.
        for (value, zigzag) in [(0i64, 0u64), (-1, 1), (1, 2), (-2, 3), (2147483647, 4294967294)] {
            let mut out = Vec::new();
            write_varlong(&mut out, value);
            let mut expected = Vec::new();
            let mut raw = zigzag;
            while raw >= 0x80 {
                expected.push((raw as u8) | 0x80);
                raw >>= 7;
            }
            expected.push(raw as u8);
            assert_eq!(out, expected, "value {value}");
        }
    }

    #[test]
    fn truncated_varint_is_an_error_not_a_panic() {
        let mut at = 0;
        assert!(read_varlong(&[0x80, 0x80], &mut at).is_err());
        let mut at = 0;
        assert!(read_varlong(&[0xff; 11], &mut at).is_err());
    }
}
