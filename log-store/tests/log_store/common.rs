//! Helpers shared by the test modules: building batches, reading a whole log back.

use bytes::Bytes;
use log_store::batch::{self, BatchBuilder, Compression, Header, NewRecord, Record};
use log_store::{LogReader, Offset};

/// A record with a UTF-8 key and value.
pub fn record(key: Option<&str>, value: Option<&[u8]>, timestamp: i64) -> NewRecord {
    NewRecord {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(Bytes::copy_from_slice),
        headers: vec![Header { key: Bytes::from_static(b"test"), value: Some(Bytes::from_static(b"yes")) }],
        timestamp,
    }
}

/// One batch holding `records`.
pub fn batch(records: &[NewRecord], compression: Compression) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression);
    for r in records {
        builder.push(r);
    }
    builder.build().expect("batch builds")
}

/// The deterministic payload of the record at `offset`, so any reader can check what it got.
pub fn payload(offset: u64) -> Vec<u8> {
    let len = 50 + (offset * 7919 % 900) as usize;
    let mut value = format!("offset={offset};").into_bytes();
    value.resize(len, b'a' + (offset % 26) as u8);
    value
}

/// A batch of `count` records whose values are `payload(first_offset + i)`.
pub fn payload_batch(first_offset: u64, count: u64, compression: Compression) -> Vec<u8> {
    let records: Vec<NewRecord> = (first_offset..first_offset + count)
        .map(|offset| NewRecord {
            key: Some(Bytes::from(format!("k{}", offset % 17))),
            value: Some(Bytes::from(payload(offset))),
            headers: vec![],
            timestamp: 1_700_000_000_000 + offset as i64,
        })
        .collect();
    batch(&records, compression)
}

/// Every record from the log start to the end, in offset order, via the public read path.
pub fn read_all(reader: &LogReader) -> Vec<Record> {
    let start = reader.log_start_offset();
    let mut from = start;
    let mut records = Vec::new();
    loop {
        let bytes = reader.read(from, 4096).expect("read succeeds");
        if bytes.is_empty() {
            return records;
        }
        for batch in batch::batches(bytes) {
            let batch = batch.expect("whole, valid batch");
            for record in batch.records(1 << 24).expect("records decode") {
                let record = record.expect("record decodes");
                if record.offset >= start {
                    records.push(record);
                }
            }
            from = Offset(batch.header().last_offset().0 + 1);
        }
    }
}
