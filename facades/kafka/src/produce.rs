//! Produce: each partition's record batch becomes one Raft entry of that partition.
//!
//! The batch is stored verbatim (magic, CRC and record framing are checked, the base offset is
//! stamped at apply). A partition's data must be exactly one v2 batch, as Kafka requires of
//! message format v2. `acks = 0` gets no response; `acks = 1` and `acks = all` are answered once
//! the entry is committed by a majority and applied on the leader (Raft has no weaker point that
//! survives a leader change), so both are as strong as `all`. With `acks = all`, a topic's
//! `min.insync.replicas` larger than the in-sync replica count gives NOT_ENOUGH_REPLICAS.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::task::JoinSet;
use tracing::debug;

use crate::broker::Broker;
use crate::connection::{encode, Malformed, Reply, Request};
use crate::errors::partition_error;

/// Bytes of a v2 batch header before the records; the batch length sits at offset 8.
const BATCH_HEADER_BYTES: usize = 61;

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: ProduceRequest = request.decode()?;
    if body.transactional_id.is_some() {
        return Err(Malformed::new("transactional produce is not supported yet"));
    }
    let acks = body.acks;
    if !matches!(acks, -1..=1) {
        return answer_all(&body, ResponseError::InvalidRequiredAcks, version, acks);
    }
    let timeout = Duration::from_millis(body.timeout_ms.max(0) as u64);
    let mut appends = JoinSet::new();
    let mut responses: Vec<TopicProduceResponse> = Vec::with_capacity(body.topic_data.len());
    for (t, topic) in body.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        let topic_info = broker.cluster.topic(&name);
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for (p, partition) in topic.partition_data.into_iter().enumerate() {
            partitions.push(PartitionProduceResponse::default().with_index(partition.index));
            let cluster = broker.cluster.clone();
            let name = name.clone();
            let topic_info = topic_info.as_ref();
            let min_insync = topic_info.and_then(|t| t.config.min_insync_replicas).unwrap_or(1);
            let in_sync = match topic_info.and_then(|t| t.partitions.get(partition.index.max(0) as usize)) {
                Some(info) if acks == -1 && min_insync > 1 => Some(broker.in_sync_replicas(&name, info).len()),
                _ => None,
            };
            appends.spawn(async move {
                let outcome =
                    append(&cluster, &name, partition.index, partition.records, timeout, min_insync, in_sync).await;
                (t, p, outcome)
            });
        }
        responses.push(TopicProduceResponse::default().with_name(topic.name).with_partition_responses(partitions));
    }
    while let Some(joined) = appends.join_next().await {
        let Ok((t, p, outcome)) = joined else { continue };
        let slot = &mut responses[t].partition_responses[p];
        match outcome {
            Ok((base_offset, log_start_offset)) => {
                slot.base_offset = base_offset;
                slot.log_start_offset = log_start_offset;
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
}

/// One partition's append: (base offset, log start offset) or the error with its reason.
async fn append(
    cluster: &replication::Cluster,
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
    timeout: Duration,
    min_insync: u32,
    in_sync: Option<usize>,
) -> Result<(i64, i64), (ResponseError, String)> {
    let records = records.unwrap_or_default();
    if partition < 0 {
        return Err((ResponseError::UnknownTopicOrPartition, format!("partition {partition}")));
    }
    if let Some(in_sync) = in_sync {
        if in_sync < min_insync as usize {
            let why = format!("{in_sync} in-sync replicas, min.insync.replicas is {min_insync}");
            return Err((ResponseError::NotEnoughReplicas, why));
        }
    }
    if records.len() < BATCH_HEADER_BYTES || records[16] != 2 {
        return Err((ResponseError::CorruptMessage, "not a single v2 record batch".into()));
    }
    let batch_length = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
    if batch_length < 0 || batch_length as usize + 12 != records.len() {
        return Err((ResponseError::InvalidRecord, "exactly one record batch per partition is accepted".into()));
    }
    match tokio::time::timeout(
        timeout.max(Duration::from_millis(1)),
        cluster.append(topic, partition as u32, records.to_vec()),
    )
    .await
    {
        Ok(Ok((base, _last))) => {
            let log_start =
                cluster.partition_status(topic, partition as u32).map_or(-1, |s| s.log_start_offset.0 as i64);
            Ok((base.0 as i64, log_start))
        }
        Ok(Err(error)) => {
            debug!(topic, partition, %error, "produce refused");
            Err((partition_error(&error), error.to_string()))
        }
        Err(_) => Err((ResponseError::RequestTimedOut, format!("not committed within {} ms", timeout.as_millis()))),
    }
}

/// Every partition of the request gets the same error.
fn answer_all(body: &ProduceRequest, error: ResponseError, version: i16, acks: i16) -> Reply {
    if acks == 0 {
        return Ok(None);
    }
    let responses = body
        .topic_data
        .iter()
        .map(|topic| {
            let partitions = topic
                .partition_data
                .iter()
                .map(|p| {
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(error.code())
                        .with_base_offset(-1)
                })
                .collect();
            TopicProduceResponse::default().with_name(topic.name.clone()).with_partition_responses(partitions)
        })
        .collect();
    encode(&ProduceResponse::default().with_responses(responses), version)
}
