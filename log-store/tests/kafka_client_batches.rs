//! Record batches written by a real Kafka client (kafka-python's `DefaultRecordBatchBuilder`),
//! one per compression codec, decoded by log-store's codec and stored in a `Log`.
//!
//! The fixtures come from `tests/fixtures/make_kafka_batches.py`. `tests/run.sh` regenerates them
//! with the installed kafka-python on every run and points `ROBUSTMQ_KAFKA_FIXTURES` at the fresh
//! copies; without that variable the committed copies in `log-store/tests/fixtures/` are used.
//!
//! The expected records are hard-coded here; only the CRC (computed in Python by an independent
//! CRC-32C) and the byte length are taken from `manifest.json`.

use std::path::PathBuf;

use bytes::Bytes;
use log_store::batch::{self, Batch, BatchHeader, Header, Record, TimestampType, Validation};
use log_store::{Log, LogConfig, Offset};

const CODECS: [(&str, u8); 5] = [("none", 0), ("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)];
const BASE_TIMESTAMP: i64 = 1_700_000_000_000;
const RECORDS: usize = 5;
const DECOMPRESSED_MAX: usize = 1 << 20;

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("ROBUSTMQ_KAFKA_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

fn fixture(codec: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("kafka-python-{codec}.bin"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn manifest() -> String {
    let path = fixtures_dir().join("manifest.json");
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The unsigned integer stored under `field` in `manifest["batches"][codec]`.
///
/// The manifest is `json.dump(..., indent=2, sort_keys=True)`, a flat map of flat objects under
/// `"batches"`, so a plain scan finds the field without a JSON parser.
fn manifest_number(manifest: &str, codec: &str, field: &str) -> u64 {
    let batches = manifest.find("\"batches\"").expect("manifest has \"batches\"");
    let entry_key = format!("\"{codec}\":");
    let entry =
        batches + manifest[batches..].find(&entry_key).unwrap_or_else(|| panic!("manifest has no batch {codec}"));
    let object_end = entry + manifest[entry..].find('}').expect("batch object is closed");
    let field_key = format!("\"{field}\":");
    let at =
        manifest[entry..object_end].find(&field_key).unwrap_or_else(|| panic!("manifest batch {codec} has no {field}"));
    let digits: String = manifest[entry + at + field_key.len()..object_end]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("manifest {codec}.{field} is not a number"))
}

/// The record with offset delta `i`, exactly as the Python script writes it, at `base_offset`.
fn expected_record(base_offset: u64, i: usize) -> Record {
    let key = (i != 3).then(|| Bytes::from(format!("key-{i}")));
    let value = (i != 4).then(|| Bytes::from(format!("value-{i}").repeat(i + 1)));
    // Headers on the even records only.
    let headers = if [0, 2, 4].contains(&i) {
        vec![
            Header { key: Bytes::from_static(b"h1"), value: Some(Bytes::from(format!("v-{i}"))) },
            Header { key: Bytes::from_static(b"h2"), value: None },
        ]
    } else {
        Vec::new()
    };
    Record { offset: Offset(base_offset + i as u64), timestamp: BASE_TIMESTAMP + i as i64 * 10, key, value, headers }
}

fn assert_header(codec: &str, id: u8, header: &BatchHeader) {
    assert_eq!(header.magic, 2, "{codec}: magic");
    assert_eq!(header.compression().unwrap().id(), id, "{codec}: compression bits");
    assert_eq!(header.attributes & !0x07, 0, "{codec}: no flag but compression set");
    assert_eq!(header.timestamp_type(), TimestampType::CreateTime, "{codec}: timestamp type");
    assert!(!header.is_transactional(), "{codec}: transactional");
    assert!(!header.is_control(), "{codec}: control");
    assert_eq!(header.partition_leader_epoch, 0, "{codec}: leader epoch");
    assert_eq!(header.last_offset_delta, RECORDS as i32 - 1, "{codec}: lastOffsetDelta");
    assert_eq!(header.records_count, RECORDS as i32, "{codec}: recordsCount");
    assert_eq!(header.base_timestamp, BASE_TIMESTAMP, "{codec}: baseTimestamp");
    assert_eq!(header.max_timestamp, BASE_TIMESTAMP + 40, "{codec}: maxTimestamp");
    let producer = (header.producer_id, header.producer_epoch, header.base_sequence);
    if codec == "none" {
        assert_eq!(producer, (4242, 7, 100), "{codec}: producer id, epoch, base sequence");
    } else {
        assert_eq!(producer, (-1, -1, -1), "{codec}: producer id, epoch, base sequence");
    }
}

fn assert_records(codec: &str, batch: &Batch, base_offset: u64) {
    let records: Vec<Record> = batch
        .records(DECOMPRESSED_MAX)
        .unwrap_or_else(|error| panic!("{codec}: cannot decode records: {error}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| panic!("{codec}: bad record: {error}"));
    assert_eq!(records.len(), RECORDS, "{codec}: record count");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record, &expected_record(base_offset, i), "{codec}: record {i}");
    }
}

#[test]
fn every_codec_decodes_to_the_expected_records() {
    let manifest = manifest();
    for (codec, id) in CODECS {
        let bytes = fixture(codec);
        assert_eq!(bytes.len() as u64, manifest_number(&manifest, codec, "length"), "{codec}: length");

        let header = batch::validate(&bytes, Validation { require_keys: false, decompressed_bytes_max: 1 << 20 })
            .unwrap_or_else(|error| panic!("{codec}: kafka-python's batch does not validate: {error}"));
        assert_eq!(header.total_len(), bytes.len(), "{codec}: batchLength");
        assert_eq!(header.base_offset, 0, "{codec}: a producer sends base offset 0");
        assert_header(codec, id, &header);

        let batch = Batch::new(Bytes::from(bytes.clone()))
            .unwrap_or_else(|error| panic!("{codec}: Batch::new rejects kafka-python's batch: {error}"));
        assert_eq!(batch.header(), &header, "{codec}: Batch::new and validate agree on the header");
        assert_records(codec, &batch, 0);
    }
}

#[test]
fn crc_matches_an_independent_crc32c() {
    let manifest = manifest();
    for (codec, _) in CODECS {
        let bytes = fixture(codec);
        let header = BatchHeader::parse(&bytes).unwrap();
        let python_crc = manifest_number(&manifest, codec, "crc32c");
        assert_eq!(u64::from(header.crc), python_crc, "{codec}: stored CRC vs pure-Python CRC-32C");
        assert_eq!(u64::from(batch::compute_crc(&bytes)), python_crc, "{codec}: log-store's CRC-32C");
    }
}

#[test]
fn a_log_stores_them_verbatim_apart_from_the_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut stored = Vec::new();
    for (codec, _) in CODECS {
        let original = fixture(codec);
        let mut bytes = original.clone();
        let appended = log.append(&mut bytes).unwrap_or_else(|error| panic!("{codec}: append failed: {error}"));
        let base = stored.len() as u64 * RECORDS as u64;
        assert_eq!(appended.base_offset, Offset(base), "{codec}: base offset");
        assert_eq!(appended.last_offset, Offset(base + RECORDS as u64 - 1), "{codec}: last offset");
        assert_eq!(appended.max_timestamp, BASE_TIMESTAMP + 40, "{codec}: max timestamp");
        stored.push((codec, base, original));
    }
    assert_eq!(log.next_offset(), Offset(stored.len() as u64 * RECORDS as u64));

    let reader = log.reader();
    for (codec, base, original) in &stored {
        // Any offset inside the batch finds the whole batch; ask for the last one.
        for from in [*base, base + RECORDS as u64 - 1] {
            let read = reader.read(Offset(from), 1).unwrap();
            let mut batches = batch::batches(read.clone());
            let first = batches.next().expect("one batch").unwrap();
            assert_eq!(first.bytes().len(), original.len(), "{codec}: stored length");
            assert_eq!(&first.bytes()[..8], &(*base as i64).to_be_bytes(), "{codec}: stamped base offset");
            assert_eq!(&first.bytes()[8..], &original[8..], "{codec}: bytes after the base offset");
            assert_records(codec, &first, *base);
        }
    }

    // The whole log, read front to back. A read returns batches from one segment only, and with
    // the default segment.ms these 2023 timestamps are "old", so each batch may start a segment.
    let mut all = Vec::new();
    let mut from = Offset(0);
    while from < log.next_offset() {
        let read = reader.read(from, 1 << 20).unwrap();
        assert!(!read.is_empty(), "read at {from} returned nothing before the end of the log");
        for batch in batch::batches(read) {
            let batch = batch.unwrap();
            from = Offset(batch.header().last_offset().0 + 1);
            all.push(batch);
        }
    }
    assert_eq!(all.len(), stored.len());
    for (batch, (codec, base, original)) in all.iter().zip(&stored) {
        assert_eq!(batch.header().base_offset(), Offset(*base), "{codec}: base offset in a full scan");
        assert_eq!(&batch.bytes()[8..], &original[8..], "{codec}: bytes in a full scan");
    }
}
