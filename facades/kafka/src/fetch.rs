//! Fetch: stored batches from the partitions this node leads, with long-poll.
//!
//! Each partition returns whole batches from the one holding `fetch_offset`, at least one batch
//! however large (so a consumer never stalls on a big batch), then within `partition_max_bytes`
//! and the request's `max_bytes`. Nothing past the high watermark (committed and applied) is
//! returned. When fewer than `min_bytes` are ready, the request waits up to `max_wait_ms` for an
//! apply on any of its partitions. Fetch sessions (KIP-227) are not kept: session id 0 tells the
//! client to send full requests. `read_committed` reads stop at the last stable offset (the
//! first offset of the oldest open transaction) and come with the aborted transactions they
//! overlap, which the client skips.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use kafka_protocol::ResponseError;
use log_store::{LogReader, Offset};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::errors::partition_error;

/// Longest long-poll honoured, whatever the client asks.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// One requested partition and how to read it.
struct Slot {
    topic: usize,
    index: usize,
    partition: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
    source: Result<(LogReader, watch::Receiver<u64>), replication::Error>,
}

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: FetchRequest = request.decode()?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(body.max_wait_ms.max(0) as u64).min(WAIT_MAX);
    let mut responses = Vec::with_capacity(body.topics.len());
    let mut slots = Vec::new();
    for (t, topic) in body.topics.iter().enumerate() {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (p, partition) in topic.partitions.iter().enumerate() {
            partitions.push(PartitionData::default().with_partition_index(partition.partition));
            let source = u32::try_from(partition.partition)
                .map_err(|_| replication::Error::UnknownPartition { topic: name.clone(), partition: u32::MAX })
                .and_then(|index| broker.cluster.leader_reader(&name, index));
            slots.push(Slot {
                topic: t,
                index: p,
                partition: partition.partition,
                fetch_offset: partition.fetch_offset,
                partition_max_bytes: partition.partition_max_bytes.max(0) as usize,
                source,
            });
        }
        responses.push(FetchableTopicResponse::default().with_topic(topic.topic.clone()).with_partitions(partitions));
    }
    let max_bytes = body.max_bytes.max(0) as usize;
    let min_bytes = body.min_bytes.max(0) as usize;
    loop {
        let (bytes, failed) = read_all(broker, &body, &mut slots, &mut responses, max_bytes, version);
        // min_bytes 0 answers at once, as Kafka does; otherwise wait for that much data.
        if bytes >= min_bytes || failed || tokio::time::Instant::now() >= deadline {
            break;
        }
        wait_for_data(&slots, deadline).await;
    }
    encode(&FetchResponse::default().with_responses(responses), version)
}

/// Fills every partition's answer; returns the record bytes and whether any partition failed.
fn read_all(
    broker: &Broker,
    body: &FetchRequest,
    slots: &mut [Slot],
    responses: &mut [FetchableTopicResponse],
    max_bytes: usize,
    version: i16,
) -> (usize, bool) {
    let mut total = 0usize;
    let mut failed = false;
    for slot in slots.iter_mut() {
        let answer = &mut responses[slot.topic].partitions[slot.index];
        let reader = match &mut slot.source {
            Ok((reader, watermark)) => {
                watermark.borrow_and_update();
                reader
            }
            Err(error) => {
                failed = true;
                answer.error_code = partition_error(error).code();
                answer.high_watermark = -1;
                if version >= 12 {
                    if let replication::Error::NotLeader { leader: Some(leader) } = error {
                        let topic = &body.topics[slot.topic].topic.0;
                        answer.current_leader = current_leader(broker, topic, slot.partition, leader.0 as i32);
                    }
                }
                continue;
            }
        };
        // Read the watermark after the data would be too late: an apply in between would
        // return a batch past it. Read it first, then cut what was read at it.
        let high_watermark = reader.next_offset().0 as i64;
        let log_start = reader.log_start_offset().0 as i64;
        let topic = &body.topics[slot.topic].topic.0;
        let (stable, aborted) = match broker.cluster.transactions(topic, slot.partition as u32) {
            Ok((stable, aborted)) => ((stable as i64).min(high_watermark), Some(aborted)),
            // Leadership moved between taking the reader and here. Serving anyway would have
            // no last stable offset to stop at: a read_committed consumer would get records of
            // open transactions (the Jepsen kafka-txn run found 456 such aborted reads). The
            // client retries at the new leader.
            Err(error) => {
                failed = true;
                answer.error_code = partition_error(&error).code();
                answer.high_watermark = -1;
                continue;
            }
        };
        let read_committed = body.isolation_level == 1;
        let end = if read_committed { stable } else { high_watermark };
        answer.high_watermark = high_watermark;
        answer.last_stable_offset = stable;
        answer.log_start_offset = log_start;
        if slot.fetch_offset < log_start || slot.fetch_offset > high_watermark {
            tracing::debug!(
                topic = %topic.as_str(),
                partition = slot.partition,
                fetch_offset = slot.fetch_offset,
                log_start,
                high_watermark,
                "fetch offset out of range"
            );
            answer.error_code = ResponseError::OffsetOutOfRange.code();
            answer.records = None;
            failed = true;
            continue;
        }
        answer.error_code = 0;
        let room = slot.partition_max_bytes.min(max_bytes.saturating_sub(total));
        if slot.fetch_offset >= end || (room == 0 && total > 0) {
            answer.records = Some(Bytes::new());
            continue;
        }
        match reader.read(Offset(slot.fetch_offset as u64), room.max(1)) {
            Ok(batches) => {
                let batches = below(batches, end);
                total += batches.len();
                if read_committed {
                    let upto = last_offset_of(&batches).unwrap_or(slot.fetch_offset);
                    let overlapping = aborted
                        .iter()
                        .flat_map(|list| list.iter())
                        .filter(|a| a.last_offset as i64 >= slot.fetch_offset && a.first_offset as i64 <= upto);
                    answer.aborted_transactions = Some(
                        overlapping
                            .map(|a| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(a.producer_id))
                                    .with_first_offset(a.first_offset as i64)
                            })
                            .collect(),
                    );
                }
                answer.records = Some(batches);
            }
            Err(error) => {
                answer.error_code = partition_error(&replication::Error::Log(error)).code();
                answer.records = None;
                failed = true;
            }
        }
    }
    (total, failed)
}

/// The whole batches of `batches` that start below `end`.
/// The last offset of the last whole batch in `batches`.
fn last_offset_of(batches: &Bytes) -> Option<i64> {
    log_store::batch::batches(batches.clone()).filter_map(|b| b.ok()).last().map(|b| b.header().last_offset().0 as i64)
}

fn below(batches: Bytes, end: i64) -> Bytes {
    let mut cut = 0usize;
    while batches.len() >= cut + 12 {
        let base = i64::from_be_bytes(batches[cut..cut + 8].try_into().expect("8 bytes"));
        let length = i32::from_be_bytes(batches[cut + 8..cut + 12].try_into().expect("4 bytes"));
        let next = cut + 12 + length.max(0) as usize;
        if base >= end || next > batches.len() {
            break;
        }
        cut = next;
    }
    batches.slice(..cut)
}

/// The leader hint of a NOT_LEADER answer (v12+).
fn current_leader(broker: &Broker, topic: &str, partition: i32, leader: i32) -> LeaderIdAndEpoch {
    let epoch =
        broker.cluster.partition_status(topic, partition.max(0) as u32).map_or(-1, |status| status.leader_epoch as i32);
    LeaderIdAndEpoch::default().with_leader_id(BrokerId(leader)).with_leader_epoch(epoch)
}

/// Waits until any readable partition applies something new, or the deadline.
async fn wait_for_data(slots: &[Slot], deadline: tokio::time::Instant) {
    let mut waits = JoinSet::new();
    for slot in slots {
        if let Ok((_, watermark)) = &slot.source {
            let mut watermark = watermark.clone();
            waits.spawn(async move {
                // A replica that went away wakes nobody; the deadline ends the wait.
                if watermark.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
        }
    }
    if waits.is_empty() {
        tokio::time::sleep_until(deadline).await;
        return;
    }
    let _ = tokio::time::timeout_at(deadline, waits.join_next()).await;
}
