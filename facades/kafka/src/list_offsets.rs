//! ListOffsets: earliest, latest, by timestamp and max timestamp, answered by the leader.
//!
//! A lookup by timestamp answers with the found record's own timestamp and the leader epoch of
//! the batch holding it, as Kafka does; latest answers with the current leader epoch.

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::errors::partition_error;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// Bound on a batch's decompressed size while looking up a record's timestamp.
const DECOMPRESSED_BYTES_MAX: usize = 256 << 20;

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: ListOffsetsRequest = request.decode()?;
    let topics = body
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let answer =
                        ListOffsetsPartitionResponse::default().with_partition_index(partition.partition_index);
                    match lookup(broker, &topic.name.0, partition.partition_index, partition.timestamp) {
                        Ok((timestamp, offset, epoch)) => {
                            // The leader epoch exists from v4; the codec refuses it earlier.
                            let epoch = if version >= 4 { epoch } else { -1 };
                            answer.with_timestamp(timestamp).with_offset(offset).with_leader_epoch(epoch)
                        }
                        Err(error) => answer.with_error_code(partition_error(&error).code()),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    encode(&ListOffsetsResponse::default().with_topics(topics), version)
}

/// (timestamp, offset, leader epoch) for one partition; -1s when no record matches.
fn lookup(broker: &Broker, topic: &str, partition: i32, timestamp: i64) -> replication::Result<(i64, i64, i32)> {
    let index = u32::try_from(partition)
        .map_err(|_| replication::Error::UnknownPartition { topic: topic.to_string(), partition: u32::MAX })?;
    let (reader, _) = broker.cluster.leader_reader(topic, index)?;
    let epoch = broker.cluster.partition_status(topic, index).map_or(-1, |s| s.leader_epoch as i32);
    let found = match timestamp {
        LATEST => return Ok((-1, reader.next_offset().0 as i64, epoch)),
        EARLIEST => Some((-1, reader.log_start_offset().0 as i64)),
        MAX_TIMESTAMP => {
            let log_start = reader.log_start_offset().0;
            let newest = reader
                .segments()
                .iter()
                .filter(|segment| segment.end_offset.0 > log_start)
                .map(|segment| segment.max_timestamp)
                .max()
                .filter(|ts| *ts >= 0);
            match newest {
                Some(ts) => reader.offset_for_timestamp(ts)?.map(|offset| (ts, offset.0 as i64)),
                None => None,
            }
        }
        ts => reader.offset_for_timestamp(ts)?.map(|offset| (ts, offset.0 as i64)),
    };
    let Some((asked, offset)) = found else { return Ok((-1, -1, epoch)) };
    match record_at(&reader, offset)? {
        Some((record_timestamp, batch_epoch)) => {
            let timestamp = if asked == -1 { -1 } else { record_timestamp };
            Ok((timestamp, offset, batch_epoch))
        }
        // The offset is past the end (an empty log's start): nothing to describe.
        None => Ok((asked, offset, epoch)),
    }
}

/// The timestamp of the record at `offset` and the leader epoch of its batch.
fn record_at(reader: &log_store::LogReader, offset: i64) -> replication::Result<Option<(i64, i32)>> {
    let offset = log_store::Offset(offset as u64);
    if offset >= reader.next_offset() {
        return Ok(None);
    }
    let bytes = reader.read(offset, 1)?;
    let Some(stored) = log_store::batch::batches(bytes).next() else { return Ok(None) };
    let stored = stored?;
    let epoch = stored.header().partition_leader_epoch;
    for record in stored.records(DECOMPRESSED_BYTES_MAX)? {
        let record = record?;
        if record.offset >= offset {
            return Ok(Some((record.timestamp, epoch)));
        }
    }
    Ok(None)
}
