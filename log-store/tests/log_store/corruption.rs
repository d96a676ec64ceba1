//! Damaged files: each kind of damage gets its documented outcome (see docs/log-format.md) —
//! corruption of flushed data is an error naming the file and position; a torn unflushed tail
//! is cut off; a missing or damaged index is rebuilt. Never a panic.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use log_store::batch::Compression;
use log_store::{Error, Log, LogConfig, Offset};

use crate::common::{payload, payload_batch, read_all};

fn config() -> LogConfig {
    LogConfig { segment_bytes_max: 16 * 1024, index_interval_bytes: 512, ..LogConfig::default() }
}

/// A closed log of several sealed segments plus an active one; returns its record count.
fn write_log(dir: &Path, batches: u64) -> u64 {
    let mut log = Log::open(dir, config()).unwrap();
    for _ in 0..batches {
        let next = log.next_offset().0;
        log.append(&mut payload_batch(next, 5, Compression::None)).unwrap();
    }
    let next = log.next_offset().0;
    log.close().unwrap();
    next
}

fn segment_file(dir: &Path, index: usize, extension: &str) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs[index].with_extension(extension)
}

/// Start positions of the batches in a segment file.
fn batch_positions(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut positions = Vec::new();
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        positions.push(at as u64);
        at += 12 + i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
    }
    positions
}

fn flip_byte(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn assert_intact(log: &Log, count: u64) {
    let records = read_all(&log.reader());
    assert_eq!(records.len() as u64, count);
    for record in records {
        assert_eq!(record.value.as_deref(), Some(&payload(record.offset.0)[..]));
    }
}

#[test]
fn flipped_byte_in_a_flushed_sealed_segment_is_reported_on_read_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60);
    let file = segment_file(dir.path(), 0, "log");
    let second_batch = batch_positions(&file)[1];
    flip_byte(&file, second_batch + 70);
    let log = Log::open(dir.path(), config()).unwrap();
    match log.reader().read(Offset(5), 1 << 20) {
        Err(Error::Corrupt { file: bad, position, .. }) => {
            assert_eq!(bad, file);
            assert_eq!(position, second_batch);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // The batch before it and the segments after it still read.
    assert!(log.reader().read(Offset(0), 100).is_ok());
    let later = log.reader().segments()[1].base_offset;
    assert!(!log.reader().read(later, 1 << 20).unwrap().is_empty());
}

#[test]
fn flipped_byte_in_flushed_data_fails_open_when_the_index_must_be_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60);
    let file = segment_file(dir.path(), 1, "log");
    let third_batch = batch_positions(&file)[2];
    flip_byte(&file, third_batch + 100);
    std::fs::remove_file(segment_file(dir.path(), 1, "index")).unwrap();
    match Log::open(dir.path(), config()) {
        Err(Error::Corrupt { file: bad, position, .. }) => {
            assert_eq!(bad, file);
            assert_eq!(position, third_batch);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn torn_tail_after_the_last_flush_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config()).unwrap();
    for _ in 0..5 {
        let next = log.next_offset().0;
        log.append(&mut payload_batch(next, 4, Compression::Zstd)).unwrap();
    }
    let flushed = log.flush().unwrap().0;
    for _ in 0..3 {
        let next = log.next_offset().0;
        log.append(&mut payload_batch(next, 4, Compression::Lz4)).unwrap();
    }
    drop(log);
    let file = segment_file(dir.path(), 0, "log");
    let positions = batch_positions(&file);
    let last = *positions.last().unwrap();
    OpenOptions::new().write(true).open(&file).unwrap().set_len(last + 30).unwrap();
    let mut log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.next_offset().0, flushed + 8, "the two whole unflushed batches survive, the torn one goes");
    assert_intact(&log, flushed + 8);
    let next = log.next_offset().0;
    assert_eq!(log.append(&mut payload_batch(next, 2, Compression::None)).unwrap().base_offset.0, next);
    assert_intact(&log, next + 2);
}

#[test]
fn garbage_after_the_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let count = write_log(dir.path(), 3);
    let file = segment_file(dir.path(), 0, "log");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&file, bytes).unwrap();
    // The garbage lies after the recovery point of a clean close, so it is an unflushed tail.
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.next_offset().0, count);
    assert_intact(&log, count);
}

#[test]
fn flushed_data_cut_mid_batch_is_corruption_not_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3);
    let file = segment_file(dir.path(), 0, "log");
    let positions = batch_positions(&file);
    OpenOptions::new().write(true).open(&file).unwrap().set_len(positions[1] + 20).unwrap();
    match Log::open(dir.path(), config()) {
        Err(Error::Corrupt { file: bad, .. }) => assert_eq!(bad, file),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn missing_or_garbage_indexes_are_rebuilt_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let count = write_log(dir.path(), 80);
    let before: Vec<_> = {
        let log = Log::open(dir.path(), config()).unwrap();
        (0..count)
            .step_by(7)
            .map(|o| log.reader().offset_for_timestamp(1_700_000_000_000 + o as i64).unwrap())
            .collect()
    };
    std::fs::remove_file(segment_file(dir.path(), 0, "index")).unwrap();
    std::fs::remove_file(segment_file(dir.path(), 0, "timeindex")).unwrap();
    std::fs::write(segment_file(dir.path(), 1, "index"), b"not an index at all").unwrap();
    std::fs::write(segment_file(dir.path(), 2, "timeindex"), [0xffu8; 24]).unwrap();
    let last = log_files(dir.path()) - 1;
    std::fs::remove_file(segment_file(dir.path(), last, "index")).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_intact(&log, count);
    let after: Vec<_> = (0..count)
        .step_by(7)
        .map(|o| log.reader().offset_for_timestamp(1_700_000_000_000 + o as i64).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn damaged_checkpoint_means_full_validation_not_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let count = write_log(dir.path(), 40);
    std::fs::write(dir.path().join("log.checkpoint"), b"garbage").unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_intact(&log, count);
}

fn log_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count()
}
