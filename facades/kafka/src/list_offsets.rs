//! ListOffsets: earliest, latest, by timestamp and max timestamp, answered by the leader.

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::errors::partition_error;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

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
        LATEST => Some((-1, reader.next_offset().0 as i64)),
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
    let (timestamp, offset) = found.unwrap_or((-1, -1));
    Ok((timestamp, offset, epoch))
}
