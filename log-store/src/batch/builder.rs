//! `BatchBuilder`: a RecordBatch v2 from plain records, as a producer would write it.

use bytes::Bytes;

use super::records::Header;
use super::{assemble, attributes_with_compression, encode_record, BatchHeader, Compression, HEADER_LEN};
use crate::error::Result;

/// A record to put in a new batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Key; `None` is null.
    pub key: Option<Bytes>,
    /// Value; `None` is null (a tombstone in a compacted log).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Create time in milliseconds since the epoch.
    pub timestamp: i64,
}

/// Builds one batch. Base offset 0 and leader epoch -1 until the log stamps them.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<u8>,
    count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    /// Extra attribute bits: transactional, control.
    flags: i16,
}

impl BatchBuilder {
    /// A builder for a batch whose records are compressed with `compression`.
    pub fn new(compression: Compression) -> BatchBuilder {
        BatchBuilder {
            compression,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            count: 0,
            base_timestamp: None,
            max_timestamp: -1,
            flags: 0,
        }
    }

    /// Marks the batch as written by an idempotent producer.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> BatchBuilder {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as part of a transaction of its producer.
    pub fn transactional(mut self) -> BatchBuilder {
        self.flags |= super::TRANSACTIONAL_BIT;
        self
    }

    /// A control batch: one transaction marker (`commit` or abort) of a transactional producer,
    /// written by its transaction coordinator (`coordinator_epoch`) at `timestamp`.
    pub fn marker(
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        timestamp: i64,
    ) -> Vec<u8> {
        let mut builder = BatchBuilder::new(Compression::None).producer(producer_id, producer_epoch, -1);
        builder.flags = super::TRANSACTIONAL_BIT | super::CONTROL_BIT;
        let mut key = vec![0u8, 0];
        key.extend_from_slice(&i16::from(commit).to_be_bytes());
        let mut value = vec![0u8, 0];
        value.extend_from_slice(&coordinator_epoch.to_be_bytes());
        builder.push(&NewRecord {
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(value)),
            headers: vec![],
            timestamp,
        });
        builder.build().expect("an uncompressed marker always builds")
    }

    /// Adds a record; its offset is the next one in the batch.
    pub fn push(&mut self, record: &NewRecord) -> &mut BatchBuilder {
        let base_timestamp = *self.base_timestamp.get_or_insert(record.timestamp);
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        encode_record(
            &mut self.records,
            self.count,
            record.timestamp - base_timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        self.count += 1;
        self
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch if it were built now without compression.
    pub fn uncompressed_len(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    /// The finished batch bytes, CRC included.
    pub fn build(&self) -> Result<Vec<u8>> {
        let section = self.compression.compress(&self.records)?;
        let header = BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: super::MAGIC_V2,
            crc: 0,
            attributes: attributes_with_compression(self.flags, self.compression),
            last_offset_delta: (self.count - 1).max(0),
            base_timestamp: self.base_timestamp.unwrap_or(-1),
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: self.count,
        };
        Ok(assemble(&header, &section))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{validate, Batch, Validation};
    use crate::offset::Offset;

    fn record(i: i64) -> NewRecord {
        NewRecord {
            key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
            value: (i % 5 != 0).then(|| Bytes::from(vec![i as u8; i as usize * 7])),
            headers: vec![Header { key: Bytes::from_static(b"h"), value: Some(Bytes::from(i.to_string())) }],
            timestamp: 1_700_000_000_000 + (i * 37) % 11,
        }
    }

    #[test]
    fn built_batches_validate_and_decode_with_every_codec() {
        for codec in Compression::ALL {
            let mut builder = BatchBuilder::new(codec).producer(42, 3, 17);
            let records: Vec<NewRecord> = (0..20).map(record).collect();
            for r in &records {
                builder.push(r);
            }
            let bytes = builder.build().unwrap();
            let rules = Validation { require_keys: false, decompressed_bytes_max: 1 << 20 };
            let header = validate(&bytes, rules).unwrap();
            assert_eq!(header.records_count, 20);
            assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (42, 3, 17));
            assert_eq!(header.compression().unwrap(), codec);
            let batch = Batch::new(Bytes::from(bytes)).unwrap();
            let decoded: Vec<_> = batch.records(1 << 20).unwrap().map(Result::unwrap).collect();
            assert_eq!(decoded.len(), 20);
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                assert_eq!(got.offset, Offset(i as u64));
                assert_eq!(
                    (&got.key, &got.value, &got.headers, got.timestamp),
                    (&want.key, &want.value, &want.headers, want.timestamp)
                );
            }
        }
    }

    #[test]
    fn validation_rejects_every_kind_of_damage() {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&record(1)).push(&record(2));
        let good = builder.build().unwrap();
        let rules = Validation { require_keys: false, decompressed_bytes_max: 1 << 20 };
        for position in 21..good.len() {
            let mut bad = good.clone();
            bad[position] ^= 0x40;
            assert!(matches!(validate(&bad, rules), Err(crate::Error::CrcMismatch { .. })), "flip at {position}");
        }
        assert!(validate(&good[..good.len() - 1], rules).is_err());
        let mut keyless = BatchBuilder::new(Compression::None);
        keyless.push(&record(3));
        let keyless = keyless.build().unwrap();
        let compacted = Validation { require_keys: true, ..rules };
        assert!(matches!(validate(&keyless, compacted), Err(crate::Error::InvalidRecord(_))));
    }

    proptest::proptest! {
        /// Damage past the CRC check (the CRC recomputed to match) must give errors, never panics.
        #[test]
        fn damaged_records_with_a_matching_crc_never_panic(
            codec in 0usize..5,
            flips in proptest::collection::vec((0usize..4000, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..4000,
        ) {
            let mut builder = BatchBuilder::new(Compression::ALL[codec]);
            for i in 0..6 {
                builder.push(&record(i));
            }
            let mut bytes = builder.build().unwrap();
            for (at, value) in flips {
                let at = HEADER_LEN - 4 + at % (bytes.len() - HEADER_LEN + 4);
                bytes[at] = value;
            }
            bytes.truncate(HEADER_LEN.max(bytes.len() - cut % 64));
            let length = (bytes.len() - 12) as i32;
            bytes[8..12].copy_from_slice(&length.to_be_bytes());
            let crc = crate::batch::compute_crc(&bytes);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            let rules = Validation { require_keys: false, decompressed_bytes_max: 1 << 16 };
            let _ = validate(&bytes, rules);
            if let Ok(batch) = Batch::new(Bytes::from(bytes)) {
                if let Ok(records) = batch.records(1 << 16) {
                    for record in records {
                        let _ = record;
                    }
                }
            }
        }
    }
}
