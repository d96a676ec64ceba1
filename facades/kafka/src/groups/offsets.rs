//! OffsetCommit (v2–9), TxnOffsetCommit (v0–3) and OffsetFetch (v1–8): committed offsets of a
//! group, written through Raft to the group's offsets partition before they are acknowledged
//! or returned. Offsets committed in a transaction are written as a transactional batch of the
//! producer and count once its commit marker reaches the partition (`groups/mod.rs`).

use std::time::Instant;

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::records::{self, OffsetValue};
use super::GroupState;
use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};

/// Longest commit metadata string kept (Kafka's `offset.metadata.max.bytes`).
const METADATA_BYTES_MAX: usize = 4096;

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// A partition of a commit: its index and the value to write, or why it is refused.
type PartitionCommit = (i32, Result<OffsetValue, ResponseError>);

pub(crate) async fn offset_commit(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: OffsetCommitRequest = request.decode()?;
    let group_id = body.group_id.0.to_string();
    let member_id = body.member_id.to_string();
    let instance_id = body.group_instance_id.as_ref().map(|id| id.to_string());
    let generation = body.generation_id_or_member_epoch;
    let timestamp = records::now_ms();

    // Per partition: an error decided up front, or the value to write.
    let mut decided: Vec<(String, Vec<PartitionCommit>)> = Vec::new();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let known = broker.cluster.with_catalog(|c| c.topics.get(&name).map(|t| t.partitions.len() as i32));
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let value = match known {
                    None => Err(ResponseError::UnknownTopicOrPartition),
                    Some(count) if p.partition_index < 0 || p.partition_index >= count => {
                        Err(ResponseError::UnknownTopicOrPartition)
                    }
                    _ if p.committed_metadata.as_ref().is_some_and(|m| m.len() > METADATA_BYTES_MAX) => {
                        Err(ResponseError::OffsetMetadataTooLarge)
                    }
                    _ => Ok(OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_timestamp: timestamp,
                    }),
                };
                (p.partition_index, value)
            })
            .collect();
        decided.push((name, partitions));
    }

    let to_write: Vec<(String, i32, OffsetValue)> = decided
        .iter()
        .flat_map(|(topic, partitions)| {
            partitions.iter().filter_map(move |(p, v)| v.as_ref().ok().map(|v| (topic.clone(), *p, v.clone())))
        })
        .collect();
    let started = broker
        .coordinator
        .with_group(broker, &group_id, true, |state, context| {
            let state = state.expect("created on demand");
            state.group.check_commit(&member_id, instance_id.as_deref(), generation, Instant::now())?;
            if to_write.is_empty() {
                return Ok(None);
            }
            let entries: Vec<records::Entry> =
                to_write.iter().map(|(t, p, v)| records::offset_entry(&group_id, t, *p, v)).collect();
            Ok(Some(context.write(records::batch(&entries))))
        })
        .await
        .and_then(|started| started);
    let outcome = match started {
        Ok(None) => Ok(()),
        Ok(Some((write, sequence))) => match write.await {
            Ok(()) => {
                let applied = broker
                    .coordinator
                    .with_group(broker, &group_id, true, |state, _| {
                        apply_commits(state.expect("created on demand"), &to_write, sequence)
                    })
                    .await;
                // The commit is durable even if the coordinator moved meanwhile: the new one
                // loads it from the log.
                let _ = applied;
                Ok(())
            }
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    let topics = decided
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, value)| {
                    let error = match (&value, &outcome) {
                        (Err(error), _) | (Ok(_), Err(error)) => error.code(),
                        (Ok(_), Ok(())) => 0,
                    };
                    OffsetCommitResponsePartition::default().with_partition_index(index).with_error_code(error)
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(TopicName(text(name))).with_partitions(partitions)
        })
        .collect();
    encode(&OffsetCommitResponse::default().with_topics(topics), version)
}

pub(crate) async fn txn_offset_commit(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: TxnOffsetCommitRequest = request.decode()?;
    let group_id = body.group_id.0.to_string();
    let timestamp = records::now_ms();
    let mut entries = Vec::new();
    for topic in &body.topics {
        for p in &topic.partitions {
            let value = OffsetValue {
                offset: p.committed_offset,
                leader_epoch: if version >= 2 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                commit_timestamp: timestamp,
            };
            entries.push(records::offset_entry(&group_id, &topic.name.0, p.partition_index, &value));
        }
    }
    let (producer_id, epoch) = (body.producer_id.0, body.producer_epoch);
    let member_id = body.member_id.to_string();
    let instance_id = body.group_instance_id.as_ref().map(|id| id.to_string());
    let generation = if version >= 3 { body.generation_id } else { -1 };
    let started = broker
        .coordinator
        .with_group(broker, &group_id, true, |state, context| {
            let state = state.expect("created on demand");
            // v3 names the member: the commit must come from the current generation.
            if generation >= 0 && !member_id.is_empty() {
                state.group.check_commit(&member_id, instance_id.as_deref(), generation, Instant::now())?;
            }
            Ok(context.write(records::transactional_batch(&entries, producer_id, epoch)).0)
        })
        .await
        .and_then(|started| started);
    let outcome = match started {
        Ok(write) => write.await,
        Err(error) => Err(error),
    };
    let code = outcome.err().map_or(0, |error| error.code());
    let topics = body
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    encode(&TxnOffsetCommitResponse::default().with_topics(topics), version)
}

/// Makes committed offsets visible, unless a later write already set them.
fn apply_commits(state: &mut GroupState, written: &[(String, i32, OffsetValue)], sequence: u64) {
    for (topic, partition, value) in written {
        let slot = state.offsets.entry((topic.clone(), *partition)).or_insert((value.clone(), sequence));
        if slot.1 <= sequence {
            *slot = (value.clone(), sequence);
        }
    }
}

/// What OffsetFetch answers for a partition without a committed offset.
fn no_offset() -> OffsetValue {
    OffsetValue { offset: -1, leader_epoch: -1, metadata: Some(String::new()), commit_timestamp: -1 }
}

/// One group's committed offsets for the requested partitions (all when `None`).
type Fetched = Vec<(String, Vec<(i32, Option<OffsetValue>)>)>;

/// With `require_stable`, an offset a transaction has not settled yet makes the whole answer
/// UNSTABLE_OFFSET_COMMIT, which clients retry.
async fn fetch_group(
    broker: &Broker,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Fetched, ResponseError> {
    broker
        .coordinator
        .with_group(broker, group_id, false, |state, _| {
            if require_stable {
                let unstable = state.as_ref().is_some_and(|s| match &topics {
                    Some(topics) => topics.iter().any(|(t, ps)| ps.iter().any(|p| s.unstable(t, *p))),
                    None => !s.pending.is_empty(),
                });
                if unstable {
                    return Err(ResponseError::UnstableOffsetCommit);
                }
            }
            let committed = |topic: &str, partition: i32| {
                state.as_ref().and_then(|s| s.offsets.get(&(topic.to_string(), partition))).map(|(v, _)| v.clone())
            };
            Ok(match &topics {
                Some(topics) => topics
                    .iter()
                    .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (*p, committed(t, *p))).collect()))
                    .collect(),
                None => {
                    let mut all: Fetched = Vec::new();
                    if let Some(state) = state.as_ref() {
                        for ((topic, partition), (value, _)) in &state.offsets {
                            match all.last_mut() {
                                Some((t, ps)) if t == topic => ps.push((*partition, Some(value.clone()))),
                                _ => all.push((topic.clone(), vec![(*partition, Some(value.clone()))])),
                            }
                        }
                    }
                    all
                }
            })
        })
        .await
        .and_then(|fetched| fetched)
}

pub(crate) async fn offset_fetch(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: OffsetFetchRequest = request.decode()?;
    if version >= 8 {
        let mut groups = Vec::with_capacity(body.groups.len());
        for group in body.groups {
            let topics =
                group.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
            let mut answer = OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone());
            match fetch_group(broker, &group.group_id.0, topics, body.require_stable).await {
                Ok(fetched) => {
                    answer.topics = fetched
                        .into_iter()
                        .map(|(name, partitions)| {
                            let partitions = partitions
                                .into_iter()
                                .map(|(index, value)| {
                                    let value = value.unwrap_or_else(no_offset);
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(index)
                                        .with_committed_offset(value.offset)
                                        .with_committed_leader_epoch(value.leader_epoch)
                                        .with_metadata(Some(text(value.metadata.unwrap_or_default())))
                                })
                                .collect();
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(text(name)))
                                .with_partitions(partitions)
                        })
                        .collect();
                }
                Err(error) => answer.error_code = error.code(),
            }
            groups.push(answer);
        }
        return encode(&OffsetFetchResponse::default().with_groups(groups), version);
    }
    let topics = body.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    let requested: Vec<(String, Vec<i32>)> = topics.clone().unwrap_or_default();
    let mut response = OffsetFetchResponse::default();
    let (fetched, error) =
        match fetch_group(broker, &body.group_id.0, topics, version >= 7 && body.require_stable).await {
            Ok(fetched) => (fetched, None),
            Err(error) => {
                let unanswered = requested.into_iter().map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()));
                (unanswered.collect(), Some(error))
            }
        };
    // v2+ has a top-level error; v1 reports it on every partition asked for.
    if version >= 2 {
        response.error_code = error.map_or(0, |e| e.code());
    }
    let partition_error = if version < 2 { error.map_or(0, |e| e.code()) } else { 0 };
    response.topics = fetched
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, value)| {
                    let value = value.unwrap_or_else(no_offset);
                    let partition = OffsetFetchResponsePartition::default()
                        .with_partition_index(index)
                        .with_committed_offset(value.offset)
                        .with_metadata(Some(text(value.metadata.unwrap_or_default())))
                        .with_error_code(partition_error);
                    if version >= 5 {
                        partition.with_committed_leader_epoch(value.leader_epoch)
                    } else {
                        partition
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(TopicName(text(name))).with_partitions(partitions)
        })
        .collect();
    encode(&response, version)
}
