//! OffsetForLeaderEpoch (v2–4): where a leader epoch ended, so a client can tell whether the
//! log it read was truncated under it after a leader change (KIP-101/KIP-320).
//!
//! Leader epochs are Raft terms, stamped into every batch at apply, so they never decrease along
//! the log. No epoch cache is kept: the first batch of a later epoch is found by binary search
//! over offsets, a few batch reads per request (clients ask only after leadership changes).

use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;
use log_store::{LogReader, Offset};

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::errors::partition_error;

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: OffsetForLeaderEpochRequest = request.decode()?;
    let topics = body
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default().with_partition(p.partition);
                    match lookup(broker, &topic.topic.0, p.partition, p.current_leader_epoch, p.leader_epoch) {
                        Ok((epoch, end_offset)) => answer.with_leader_epoch(epoch).with_end_offset(end_offset),
                        Err(error) => answer.with_error_code(error.code()).with_leader_epoch(-1).with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(topic.topic).with_partitions(partitions)
        })
        .collect();
    encode(&OffsetForLeaderEpochResponse::default().with_topics(topics), version)
}

/// (epoch, end offset) for `requested`, with Kafka's rules (`LeaderEpochFileCache.endOffsetFor`).
fn lookup(
    broker: &Broker,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    requested: i32,
) -> Result<(i32, i64), ResponseError> {
    let index = u32::try_from(partition).map_err(|_| ResponseError::UnknownTopicOrPartition)?;
    let (reader, _) = broker.cluster.leader_reader(topic, index).map_err(|e| partition_error(&e))?;
    let current = broker.cluster.partition_status(topic, index).map_or(-1, |s| s.leader_epoch as i32);
    if current_leader_epoch >= 0 && current_leader_epoch != current {
        return Err(if current_leader_epoch > current {
            ResponseError::UnknownLeaderEpoch
        } else {
            ResponseError::FencedLeaderEpoch
        });
    }
    let storage = |e: log_store::Error| partition_error(&replication::Error::Log(e));
    end_offset_for(&reader, current, requested).map_err(storage)
}

/// The epoch of the batch holding `offset` (or the next batch, past a compacted gap) and the
/// offset after that batch.
fn batch_at(reader: &LogReader, offset: u64) -> log_store::Result<Option<(i32, u64, u64)>> {
    let bytes = reader.read(Offset(offset), 1)?;
    match log_store::batch::batches(bytes).next() {
        Some(stored) => {
            let header = *stored?.header();
            Ok(Some((header.partition_leader_epoch, header.base_offset as u64, header.last_offset().0 + 1)))
        }
        None => Ok(None),
    }
}

fn end_offset_for(reader: &LogReader, current: i32, requested: i32) -> log_store::Result<(i32, i64)> {
    let end = reader.next_offset().0;
    if requested < 0 || requested > current {
        return Ok((-1, -1));
    }
    if requested == current {
        return Ok((requested, end as i64));
    }
    // The first offset whose batch has an epoch above `requested`.
    let start = reader.log_start_offset().0;
    let (mut low, mut high) = (start, end);
    while low < high {
        let middle = low + (high - low) / 2;
        match batch_at(reader, middle)? {
            Some((epoch, base, _)) if epoch > requested => high = base.max(low),
            Some((_, _, next)) => low = next.clamp(middle + 1, high),
            None => high = middle,
        }
    }
    let boundary = low;
    if boundary == start {
        // Every batch is of a later epoch: the requested one ended where the log starts.
        return Ok((requested, boundary as i64));
    }
    let floor = batch_at(reader, boundary - 1)?.map_or(requested, |(epoch, _, _)| epoch.min(requested));
    Ok((floor, boundary as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log_store::batch::{BatchBuilder, Compression, NewRecord};
    use log_store::{Log, LogConfig};

    #[test]
    fn each_epoch_ends_where_the_next_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        // Epochs 1, 1, 3, 3, 3, 5: two records per batch, so 1 covers 0..4, 3 covers 4..10, 5 covers 10..12.
        for epoch in [1, 1, 3, 3, 3, 5] {
            let mut builder = BatchBuilder::new(Compression::None);
            for _ in 0..2 {
                builder.push(&NewRecord { value: Some(bytes::Bytes::from_static(b"v")), ..NewRecord::default() });
            }
            let mut batch = builder.build().unwrap();
            log_store::batch::set_partition_leader_epoch(&mut batch, epoch);
            log.append(&mut batch).unwrap();
        }
        let reader = log.reader();
        let current = 6;
        let cases = [(0, (0, 0)), (1, (1, 4)), (2, (1, 4)), (3, (3, 10)), (4, (3, 10)), (5, (5, 12)), (6, (6, 12))];
        for (requested, expected) in cases {
            assert_eq!(end_offset_for(&reader, current, requested).unwrap(), expected, "epoch {requested}");
        }
        assert_eq!(end_offset_for(&reader, current, 7).unwrap(), (-1, -1), "a future epoch is undefined");
    }
}
