//! Model test: random sequences of append / read / roll / flush / retention / compaction /
//! truncation / reopen against an in-memory model of what the log must hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use log_store::batch::{self, Compression, NewRecord};
use log_store::{CleanupPolicy, Error, Log, LogConfig, ManualClock, Offset};
use proptest::prelude::*;

use crate::common::{batch, read_all};

const START_MS: i64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    /// Records as (key, value length or null, timestamp jitter), and a codec id.
    Append(Vec<(u8, Option<u16>, i16)>, u8),
    Read(u16, u16),
    OffsetForTimestamp(i16),
    Roll,
    Flush,
    Advance(u16),
    Retention,
    DeleteBefore(u8),
    TruncateSuffix(u8),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec((0u8..6, prop::option::weighted(0.9, 0u16..300), -50i16..50), 1..6), 0u8..5)
            .prop_map(|(records, codec)| Op::Append(records, codec)),
        3 => (any::<u16>(), 1u16..3000).prop_map(|(at, max)| Op::Read(at, max)),
        2 => (-60i16..600).prop_map(Op::OffsetForTimestamp),
        1 => Just(Op::Roll),
        1 => Just(Op::Flush),
        2 => (0u16..800).prop_map(Op::Advance),
        1 => Just(Op::Retention),
        1 => any::<u8>().prop_map(Op::DeleteBefore),
        1 => any::<u8>().prop_map(Op::TruncateSuffix),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Settings {
    compacted: bool,
    segment_bytes_max: u64,
    index_interval_bytes: u64,
    retention_ms: Option<i64>,
    retention_bytes: Option<u64>,
}

fn settings() -> impl Strategy<Value = Settings> {
    (any::<bool>(), 400u64..4000, 1u64..1024, prop::option::of(500i64..3000), prop::option::of(1000u64..8000)).prop_map(
        |(compacted, segment_bytes_max, index_interval_bytes, retention_ms, retention_bytes)| Settings {
            compacted,
            segment_bytes_max,
            index_interval_bytes,
            retention_ms,
            retention_bytes,
        },
    )
}

#[derive(Clone, Debug, PartialEq)]
struct ModelRecord {
    key: Option<Bytes>,
    value: Option<Bytes>,
    timestamp: i64,
}

/// What the log must hold: retained records by offset, and the batches still on disk.
#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<u64, ModelRecord>,
    /// (base offset, last offset) of every batch still physically in the log.
    batches: Vec<(u64, u64)>,
    next_offset: u64,
    log_start: u64,
}

impl Model {
    fn drop_below(&mut self, log_start: u64) {
        self.log_start = self.log_start.max(log_start);
        let kept = self.records.split_off(&self.log_start);
        self.records = kept;
    }
}

fn config(settings: &Settings, clock: &ManualClock) -> LogConfig {
    LogConfig {
        segment_bytes_max: settings.segment_bytes_max,
        segment_ms: 1000,
        index_interval_bytes: settings.index_interval_bytes,
        retention_ms: settings.retention_ms,
        retention_bytes: settings.retention_bytes,
        cleanup_policy: if settings.compacted { CleanupPolicy::Compact } else { CleanupPolicy::Delete },
        delete_retention_ms: 700,
        write_behind_bytes: settings.index_interval_bytes,
        clock: Arc::new(clock.clone()),
        ..LogConfig::default()
    }
}

fn run(settings: Settings, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let config = config(&settings, &clock);
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    let mut model = Model::default();
    let mut value_counter = 0u32;
    for op in ops {
        match op {
            Op::Append(specs, codec) => {
                let records: Vec<NewRecord> = specs
                    .iter()
                    .map(|(key, value_len, jitter)| {
                        value_counter += 1;
                        let key = (settings.compacted || key % 3 != 0).then(|| Bytes::from(format!("key-{key}")));
                        let value = value_len.map(|len| {
                            let mut v = format!("v{value_counter}:").into_bytes();
                            v.resize(len as usize + 8, b'x');
                            Bytes::from(v)
                        });
                        let timestamp = clock.now_ms_for_test() + *jitter as i64;
                        NewRecord { key, value, headers: vec![], timestamp }
                    })
                    .collect();
                let mut bytes = batch(&records, Compression::ALL[codec as usize]);
                let appended = log.append(&mut bytes).unwrap();
                prop_assert_eq!(appended.base_offset, Offset(model.next_offset));
                let base = model.next_offset;
                for (i, r) in records.into_iter().enumerate() {
                    model
                        .records
                        .insert(base + i as u64, ModelRecord { key: r.key, value: r.value, timestamp: r.timestamp });
                }
                model.next_offset += specs.len() as u64;
                model.batches.push((base, model.next_offset - 1));
            }
            Op::Read(at, max_bytes) => {
                let span = model.next_offset - model.log_start + 5;
                let from = (model.log_start + at as u64 % span).saturating_sub(2);
                let result = log.reader().read(Offset(from), max_bytes as usize);
                if from < model.log_start || from > model.next_offset {
                    prop_assert!(
                        matches!(result, Err(Error::OffsetOutOfRange { .. })),
                        "read {} gave {:?}",
                        from,
                        result
                    );
                    continue;
                }
                let bytes = result.unwrap();
                let batches: Vec<_> = batch::batches(bytes.clone()).map(Result::unwrap).collect();
                prop_assert!(batches.len() == 1 || bytes.len() <= max_bytes as usize);
                let expected: Vec<_> = model.records.range(from..).collect();
                // A compacted batch may be returned for an offset it no longer holds, so only
                // this direction holds: if records remain at or after `from`, something comes back.
                prop_assert!(expected.is_empty() || !batches.is_empty(), "read from {} returned nothing", from);
                let got: Vec<_> = batches
                    .iter()
                    .flat_map(|b| b.records(1 << 20).unwrap().map(Result::unwrap))
                    .filter(|r| r.offset.0 >= from)
                    .collect();
                prop_assert!(got.len() <= expected.len());
                for (record, (offset, want)) in got.iter().zip(&expected) {
                    prop_assert_eq!(record.offset.0, **offset);
                    prop_assert_eq!(&record.key, &want.key);
                    prop_assert_eq!(&record.value, &want.value);
                    prop_assert_eq!(record.timestamp, want.timestamp);
                }
            }
            Op::OffsetForTimestamp(delta) => {
                let target = clock.now_ms_for_test() - 300 + delta as i64;
                let expected = model.records.iter().find(|(_, r)| r.timestamp >= target).map(|(o, _)| Offset(*o));
                prop_assert_eq!(log.reader().offset_for_timestamp(target).unwrap(), expected, "target {}", target);
            }
            Op::Roll => log.roll().unwrap(),
            Op::Flush => prop_assert_eq!(log.flush().unwrap(), Offset(model.next_offset)),
            Op::Advance(ms) => clock.advance(ms as i64),
            Op::Retention => {
                let segments = log.reader().segments();
                let sealed = segments.len() - 1;
                let mut count = 0;
                if let Some(retention_ms) = settings.retention_ms {
                    while count < sealed && segments[count].max_timestamp < clock.now_ms_for_test() - retention_ms {
                        count += 1;
                    }
                }
                if let Some(retention_bytes) = settings.retention_bytes {
                    let total: u64 = segments[count..].iter().map(|s| s.size_bytes).sum();
                    let mut excess = total.saturating_sub(retention_bytes);
                    while count < sealed && excess >= segments[count].size_bytes {
                        excess -= segments[count].size_bytes;
                        count += 1;
                    }
                }
                let reclaimed = log.apply_retention().unwrap();
                prop_assert_eq!(reclaimed.segments_deleted, count);
                if count > 0 {
                    model.drop_below(segments[count].base_offset.0);
                }
            }
            Op::DeleteBefore(fraction) => {
                let offset = model.log_start + (model.next_offset - model.log_start) * fraction as u64 / 255;
                log.delete_before(Offset(offset)).unwrap();
                model.drop_below(offset);
            }
            Op::TruncateSuffix(fraction) => {
                let offset = model.log_start + (model.next_offset - model.log_start) * fraction as u64 / 300;
                let new_next = if offset >= model.next_offset {
                    model.next_offset
                } else if offset <= model.log_start {
                    model.records.clear();
                    model.batches.clear();
                    model.log_start = offset;
                    offset
                } else {
                    let straddling = model.batches.iter().find(|(_, last)| *last >= offset);
                    straddling.map_or(offset, |(base, _)| (*base).min(offset)).max(model.log_start)
                };
                prop_assert_eq!(log.truncate_suffix(Offset(offset)).unwrap(), Offset(new_next));
                model.records.split_off(&new_next);
                model.batches.retain(|(_, last)| *last < new_next);
                model.next_offset = new_next;
            }
            Op::Compact => {
                let active_base = log.reader().segments().last().unwrap().base_offset.0;
                log.compact().unwrap();
                if settings.compacted {
                    let mut latest: HashMap<Bytes, u64> = HashMap::new();
                    for (offset, record) in &model.records {
                        latest.insert(record.key.clone().unwrap(), *offset);
                    }
                    let now = clock.now_ms_for_test();
                    model.records.retain(|offset, r| {
                        *offset >= active_base
                            || (latest[r.key.as_ref().unwrap()] == *offset
                                && !(r.value.is_none() && r.timestamp + 700 < now))
                    });
                    let records = &model.records;
                    model
                        .batches
                        .retain(|(base, last)| *base >= active_base || records.range(*base..=*last).next().is_some());
                }
            }
            Op::Reopen => {
                drop(log);
                log = Log::open(dir.path(), config.clone()).unwrap();
            }
        }
        prop_assert_eq!(log.next_offset(), Offset(model.next_offset));
        prop_assert_eq!(log.log_start_offset(), Offset(model.log_start));
        let all = read_all(&log.reader());
        let expected: Vec<_> = model.records.iter().collect();
        prop_assert_eq!(all.len(), expected.len(), "record count");
        for (record, (offset, want)) in all.iter().zip(&expected) {
            prop_assert_eq!(record.offset.0, **offset);
            prop_assert_eq!(&record.key, &want.key);
            prop_assert_eq!(&record.value, &want.value);
            prop_assert_eq!(record.timestamp, want.timestamp);
        }
    }
    Ok(())
}

trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> i64 {
        log_store::Clock::now_ms(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model(settings in settings(), ops in prop::collection::vec(op(), 1..60)) {
        run(settings, ops)?;
    }
}
