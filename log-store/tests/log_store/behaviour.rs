//! The log's contract at its edges: what append accepts and refuses, what read returns,
//! timestamps, retention, compaction and locking.

use std::sync::Arc;

use log_store::batch::{self, Compression};
use log_store::{CleanupPolicy, Error, Log, LogConfig, ManualClock, Offset};

use crate::common::{batch, payload_batch, read_all, record};

#[test]
fn stored_bytes_equal_the_producers_bytes_except_the_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&mut payload_batch(0, 3, Compression::None)).unwrap();
    let original = payload_batch(3, 4, Compression::Snappy);
    let mut sent = original.clone();
    batch::set_partition_leader_epoch(&mut sent, 9);
    let appended = log.append(&mut sent).unwrap();
    assert_eq!((appended.base_offset, appended.last_offset), (Offset(3), Offset(6)));
    let stored = log.reader().read(Offset(3), 1 << 20).unwrap();
    assert_eq!(&stored[8..], &sent[8..], "everything after the base offset is stored verbatim");
    assert_eq!(&stored[..8], &3i64.to_be_bytes());
    assert_eq!(batch::batches(stored).next().unwrap().unwrap().header().partition_leader_epoch, 9);
}

#[test]
fn a_shared_batch_is_stored_as_append_stores_it_and_its_buffer_is_not_changed() {
    let config = LogConfig { segment_bytes_max: 600, ..LogConfig::default() };
    let (copied_dir, shared_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut copied = Log::open(copied_dir.path(), config.clone()).unwrap();
    let mut shared = Log::open(shared_dir.path(), config.clone()).unwrap();
    let mut next = 0;
    for (round, compression) in
        [Compression::None, Compression::Lz4, Compression::None, Compression::Zstd].into_iter().enumerate()
    {
        let sent = payload_batch(next, 3, compression);
        let mut stamped = sent.clone();
        batch::set_partition_leader_epoch(&mut stamped, round as i32);
        let by_copy = copied.append(&mut stamped).unwrap();
        let before = sent.clone();
        let by_share = shared.append_shared(&sent, round as i32).unwrap();
        assert_eq!(sent, before, "the shared buffer is left as it was");
        assert_eq!((by_share.base_offset, by_share.last_offset), (by_copy.base_offset, by_copy.last_offset));
        next = by_share.last_offset.0 + 1;
    }
    let mut flipped = payload_batch(next, 2, Compression::None);
    flipped[40] ^= 1;
    assert!(matches!(shared.append_shared(&flipped, 0), Err(Error::CrcMismatch { .. })));
    assert_eq!(shared.next_offset(), copied.next_offset());
    drop((copied, shared));
    // Reopened (so recovery walks what was written), both logs hold the same bytes.
    let copied = Log::open(copied_dir.path(), config.clone()).unwrap();
    let shared = Log::open(shared_dir.path(), config).unwrap();
    let mut from = Offset(0);
    while from < copied.next_offset() {
        let expected = copied.reader().read(from, 1 << 20).unwrap();
        assert_eq!(shared.reader().read(from, 1 << 20).unwrap(), expected);
        for stored in batch::batches(expected) {
            let header = *stored.unwrap().header();
            assert_eq!(header.base_offset as u64, from.0);
            assert_eq!(header.partition_leader_epoch as u64, from.0 / 3, "stamped at the append");
            from = Offset(from.0 + header.last_offset_delta as u64 + 1);
        }
    }
    assert_eq!(from, Offset(12));
}

#[test]
fn bad_batches_are_refused_and_leave_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { batch_bytes_max: 4096, ..LogConfig::default() };
    let mut log = Log::open(dir.path(), config).unwrap();
    let good = payload_batch(0, 2, Compression::None);
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    assert!(matches!(log.append(&mut flipped), Err(Error::CrcMismatch { .. })));
    assert!(matches!(log.append(&mut good[..50].to_vec()), Err(Error::MalformedBatch(_))));
    let mut v1 = good.clone();
    v1[16] = 1;
    assert!(matches!(log.append(&mut v1), Err(Error::UnsupportedMagic(1))));
    assert!(matches!(log.append(&mut payload_batch(0, 20, Compression::None)), Err(Error::BatchTooLarge { .. })));
    let mut two = good.clone();
    two.extend_from_slice(&good);
    assert!(matches!(log.append(&mut two), Err(Error::MalformedBatch(_))));
    assert!(log.append(&mut Vec::new()).is_err());
    assert_eq!(log.next_offset(), Offset(0));
    assert_eq!(log.append(&mut good.clone()).unwrap().base_offset, Offset(0));
}

#[test]
fn reads_return_whole_batches_and_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for _ in 0..10 {
        let next = log.next_offset().0;
        log.append(&mut payload_batch(next, 5, Compression::None)).unwrap();
    }
    let reader = log.reader();
    let one = reader.read(Offset(7), 1).unwrap();
    let batches: Vec<_> = batch::batches(one).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1, "a too-small max still returns the batch holding the offset");
    assert_eq!(batches[0].header().base_offset(), Offset(5));
    let some = reader.read(Offset(0), 5000).unwrap();
    assert!(some.len() <= 5000);
    assert!(batch::batches(some).all(|b| b.is_ok()));
    assert!(reader.read(Offset(50), 100).unwrap().is_empty(), "the end of the log is empty, not an error");
    assert!(matches!(reader.read(Offset(51), 100), Err(Error::OffsetOutOfRange { .. })));
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes_max: 200, index_interval_bytes: 1, ..LogConfig::default() };
    let mut log = Log::open(dir.path(), config).unwrap();
    // Timestamps out of order, as producers may send them.
    for (i, ts) in [100i64, 300, 200, 250, 500, 400].iter().enumerate() {
        log.append(&mut batch(&[record(Some("k"), Some(format!("{i}").as_bytes()), *ts)], Compression::None)).unwrap();
    }
    let reader = log.reader();
    assert!(reader.segments().len() > 2, "spans several segments");
    assert_eq!(reader.offset_for_timestamp(0).unwrap(), Some(Offset(0)));
    assert_eq!(reader.offset_for_timestamp(101).unwrap(), Some(Offset(1)));
    assert_eq!(reader.offset_for_timestamp(301).unwrap(), Some(Offset(4)));
    assert_eq!(reader.offset_for_timestamp(450).unwrap(), Some(Offset(4)));
    assert_eq!(reader.offset_for_timestamp(501).unwrap(), None);
}

#[test]
fn retention_deletes_old_and_excess_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let config = LogConfig {
        segment_bytes_max: 8 * 1024,
        retention_ms: Some(60_000),
        clock: Arc::new(clock.clone()),
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    for _ in 0..40 {
        let next = log.next_offset().0;
        log.append(&mut payload_batch(next, 5, Compression::None)).unwrap();
    }
    let segments_before = log.reader().segments().len();
    assert_eq!(log.apply_retention().unwrap().segments_deleted, 0, "nothing is a minute old yet");
    clock.advance(120_000);
    let reclaimed = log.apply_retention().unwrap();
    assert_eq!(reclaimed.segments_deleted, segments_before - 1, "every sealed segment expired; the active one stays");
    let start = log.log_start_offset();
    assert_eq!(start, log.reader().segments()[0].base_offset);
    assert!(matches!(log.reader().read(Offset(0), 10), Err(Error::OffsetOutOfRange { .. })));
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(read_all(&log.reader()).first().unwrap().offset, start);
}

#[test]
fn compaction_keeps_the_latest_value_per_key_and_drops_old_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let config = LogConfig {
        segment_bytes_max: 400,
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: 1000,
        clock: Arc::new(clock.clone()),
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    let now = 1_000_000;
    for round in 0..5 {
        for key in ["a", "b", "c"] {
            let value = format!("{key}{round}");
            log.append(&mut batch(&[record(Some(key), Some(value.as_bytes()), now)], Compression::Gzip)).unwrap();
        }
    }
    log.append(&mut batch(&[record(Some("b"), None, now)], Compression::None)).unwrap();
    log.append(&mut batch(&[record(Some("z"), Some(b"filler"), now)], Compression::None)).unwrap();
    log.roll().unwrap();
    log.append(&mut batch(&[record(Some("z"), Some(b"active"), now)], Compression::None)).unwrap();
    let compacted = log.compact().unwrap();
    assert!(compacted.records_removed >= 12);
    let values = |log: &Log| -> Vec<(String, Option<String>)> {
        read_all(&log.reader())
            .into_iter()
            .map(|r| {
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                (key, r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
            })
            .collect()
    };
    assert_eq!(
        values(&log),
        vec![
            ("a".into(), Some("a4".into())),
            ("c".into(), Some("c4".into())),
            ("b".into(), None),
            ("z".into(), Some("active".into()))
        ],
        "superseded values go; the tombstone stays until delete.retention.ms"
    );
    clock.advance(5000);
    log.compact().unwrap();
    assert_eq!(values(&log).len(), 3, "the expired tombstone is gone");
    let next = log.next_offset();
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.next_offset(), next, "offsets are never reused after compaction");
    assert_eq!(values(&log).len(), 3);
}

#[test]
fn compacted_logs_refuse_records_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { cleanup_policy: CleanupPolicy::Compact, ..LogConfig::default() };
    let mut log = Log::open(dir.path(), config).unwrap();
    let result = log.append(&mut batch(&[record(None, Some(b"v"), 1)], Compression::None));
    assert!(matches!(result, Err(Error::InvalidRecord(_))));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(matches!(Log::open(dir.path(), LogConfig::default()), Err(Error::Locked { .. })));
}

/// A child forked by another thread holds a copy of the lock's descriptor until it execs; a log
/// closed and reopened meanwhile must not mistake that for a second owner (a CI run of the model
/// test hit exactly this while the crash test was spawning children).
#[test]
fn reopening_while_another_thread_spawns_processes_is_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::process::Command::new("true").status().unwrap();
                spawned += 1;
            }
            spawned
        })
    };
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for _ in 0..300 {
        drop(log);
        log = Log::open(dir.path(), LogConfig::default()).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(spawner.join().unwrap() > 0, "the spawner ran alongside the reopens");
}

#[test]
fn truncate_suffix_removes_whole_batches_and_appends_reuse_the_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes_max: 2000, ..LogConfig::default() };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    for _ in 0..20 {
        let next = log.next_offset().0;
        log.append(&mut payload_batch(next, 3, Compression::None)).unwrap();
    }
    log.flush().unwrap();
    assert_eq!(log.truncate_suffix(Offset(31)).unwrap(), Offset(30), "offset 31 is inside the batch 30..=32");
    assert_eq!(log.flushed_offset(), Offset(30));
    log.append(&mut payload_batch(30, 2, Compression::None)).unwrap();
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.next_offset(), Offset(32));
    assert_eq!(read_all(&log.reader()).len(), 32);
}

#[test]
fn a_replica_installed_with_append_stored_reads_the_same_even_with_compaction_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes_max: 300, cleanup_policy: CleanupPolicy::Compact, ..LogConfig::default() };
    let mut source = Log::open(dir.path().join("source"), config.clone()).unwrap();
    for round in 0..6 {
        for key in ["a", "b"] {
            let value = format!("{key}{round}");
            source.append(&mut batch(&[record(Some(key), Some(value.as_bytes()), 1)], Compression::None)).unwrap();
        }
    }
    source.roll().unwrap();
    source.compact().unwrap();
    let mut replica = Log::open(dir.path().join("replica"), config).unwrap();
    replica.reset(source.log_start_offset()).unwrap();
    let reader = source.reader();
    let mut from = reader.log_start_offset();
    while from < reader.next_offset() {
        let bytes = reader.read(from, 1 << 20).unwrap();
        if bytes.is_empty() {
            break;
        }
        for stored in batch::batches(bytes) {
            let stored = stored.unwrap();
            replica.append_stored(&mut stored.bytes().to_vec()).unwrap();
            from = Offset(stored.header().last_offset().0 + 1);
        }
    }
    assert_eq!(read_all(&replica.reader()), read_all(&source.reader()));
    let mut behind = payload_batch(0, 1, Compression::None);
    batch::set_base_offset(&mut behind, Offset(0));
    assert!(replica.append_stored(&mut behind).is_err(), "a stored batch below the end is refused");
}
