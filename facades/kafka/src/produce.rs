//! Produce: each partition's record batch becomes one Raft entry of that partition.
//!
//! The batch is stored verbatim (magic, CRC and record framing are checked, the base offset is
//! stamped at apply). A partition's data must be exactly one v2 batch, as Kafka requires of
//! message format v2. `acks = 0` gets no response; `acks = 1` and `acks = all` are answered once
//! the entry is committed by a majority and applied on the leader (Raft has no weaker point that
//! survives a leader change), so both are as strong as `all`. With `acks = all`, a topic's
//! `min.insync.replicas` larger than the in-sync replica count gives NOT_ENOUGH_REPLICAS.
//!
//! Every partition's batch is proposed before [`start`] returns, and the connection calls it in
//! request order: produce requests pipelined on one connection reach each partition's log in
//! the order they were sent, which is what Kafka promises clients with `max.in.flight > 1`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use log_store::Offset;
use tracing::debug;

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::errors::partition_error;

/// Bytes of a v2 batch header before the records; the batch length sits at offset 8.
const BATCH_HEADER_BYTES: usize = 61;

/// A partition's append in flight: completes with its offsets once committed and applied.
type Commit = Pin<Box<dyn Future<Output = replication::Result<(Offset, Offset)>> + Send>>;

/// A partition's outcome so far: refused up front, or proposed.
enum Started {
    Refused(ResponseError, String),
    Proposed(Commit),
}

/// Proposes every partition's batch now; the returned future waits for the commits.
pub(crate) fn start(broker: &Arc<Broker>, mut request: Request) -> Pin<Box<dyn Future<Output = Reply> + Send>> {
    let version = request.version;
    let body = match request.decode::<ProduceRequest>() {
        Ok(body) => body,
        Err(malformed) => return Box::pin(async move { Err(malformed) }),
    };
    let acks = body.acks;
    let timeout = Duration::from_millis(body.timeout_ms.max(0) as u64).max(Duration::from_millis(1));
    let mut responses = Vec::with_capacity(body.topic_data.len());
    let mut started = Vec::new();
    for (t, topic) in body.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        // Only acks=all looks at min.insync.replicas; read it without copying the catalog.
        let min_insync = if acks == -1 {
            broker.cluster.with_catalog(|c| c.topics.get(&name).and_then(|t| t.config.min_insync_replicas)).unwrap_or(1)
        } else {
            1
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for (p, partition) in topic.partition_data.into_iter().enumerate() {
            partitions.push(PartitionProduceResponse::default().with_index(partition.index));
            let outcome = if !matches!(acks, -1..=1) {
                Started::Refused(ResponseError::InvalidRequiredAcks, format!("acks {acks}"))
            } else {
                match in_sync_shortfall(broker, &name, partition.index, min_insync) {
                    Some(in_sync) => {
                        let why = format!("{in_sync} in-sync replicas, min.insync.replicas is {min_insync}");
                        Started::Refused(ResponseError::NotEnoughReplicas, why)
                    }
                    None => propose(broker, &name, partition.index, partition.records),
                }
            };
            started.push((t, p, outcome));
        }
        responses.push(TopicProduceResponse::default().with_name(topic.name).with_partition_responses(partitions));
    }
    let broker = broker.clone();
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        for (t, p, outcome) in started {
            let outcome = match outcome {
                Started::Refused(error, why) => Err((error, why)),
                Started::Proposed(commit) => match tokio::time::timeout_at(deadline, commit).await {
                    Ok(Ok((base, _last))) => Ok(base.0 as i64),
                    Ok(Err(error)) => {
                        debug!(%error, "produce refused");
                        Err((partition_error(&error), error.to_string()))
                    }
                    Err(_) => Err((
                        ResponseError::RequestTimedOut,
                        format!("not committed within {} ms", timeout.as_millis()),
                    )),
                },
            };
            let topic = responses[t].name.0.to_string();
            let slot = &mut responses[t].partition_responses[p];
            match outcome {
                Ok(base_offset) => {
                    slot.base_offset = base_offset;
                    slot.log_start_offset = broker
                        .cluster
                        .partition_status(&topic, slot.index.max(0) as u32)
                        .map_or(-1, |s| s.log_start_offset.0 as i64);
                }
                Err((error, message)) => {
                    slot.error_code = error.code();
                    slot.base_offset = -1;
                    if version >= 8 {
                        slot.error_message = Some(StrBytes::from_string(message));
                    }
                }
            }
        }
        if acks == 0 {
            return Ok(None);
        }
        encode(&ProduceResponse::default().with_responses(responses), version)
    })
}

/// The in-sync replica count when it is below `min_insync` (always enough when that is 1).
fn in_sync_shortfall(broker: &Broker, topic: &str, partition: i32, min_insync: u32) -> Option<usize> {
    if min_insync <= 1 {
        return None;
    }
    let info =
        broker.cluster.with_catalog(|c| c.topics.get(topic)?.partitions.get(partition.max(0) as usize).cloned())?;
    let in_sync = broker.in_sync_replicas(topic, &info).len();
    (in_sync < min_insync as usize).then_some(in_sync)
}

/// Checks one partition's data and proposes it.
fn propose(broker: &Broker, topic: &str, partition: i32, records: Option<Bytes>) -> Started {
    let records = records.unwrap_or_default();
    let Ok(index) = u32::try_from(partition) else {
        return Started::Refused(ResponseError::UnknownTopicOrPartition, format!("partition {partition}"));
    };
    if records.len() < BATCH_HEADER_BYTES || records[16] != 2 {
        return Started::Refused(ResponseError::CorruptMessage, "not a single v2 record batch".into());
    }
    let batch_length = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
    if batch_length < 0 || batch_length as usize + 12 != records.len() {
        return Started::Refused(
            ResponseError::InvalidRecord,
            "exactly one record batch per partition is accepted".into(),
        );
    }
    if let Ok(header) = log_store::batch::BatchHeader::parse(&records) {
        if header.is_control() {
            return Started::Refused(ResponseError::InvalidRecord, "clients may not write control batches".into());
        }
        if header.is_transactional() && header.producer_id < 0 {
            return Started::Refused(
                ResponseError::InvalidRecord,
                "a transactional batch without a producer id".into(),
            );
        }
    }
    match broker.cluster.start_append(topic, index, records) {
        Ok(commit) => Started::Proposed(Box::pin(commit)),
        Err(error) => Started::Refused(partition_error(&error), error.to_string()),
    }
}
