//! CreateTopics, DeleteTopics and CreatePartitions, and the topic configs Kafka clients may set.
//!
//! Topic changes go through the metadata group's leader: directly when this node leads it,
//! otherwise through the native API, which forwards them there. A change is answered once every
//! reachable node shows it — a created or grown topic with leaders (see `propagation`).

use std::time::Duration;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use replication::TopicConfig;

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::propagation::{await_everywhere, Expect};

/// Longest a topic change may take, whatever timeout the client sends.
const ADMIN_TIMEOUT_MAX: Duration = Duration::from_secs(30);

pub(crate) async fn create_topics(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: CreateTopicsRequest = request.decode()?;
    let timeout = admin_timeout(body.timeout_ms);
    let mut results = Vec::with_capacity(body.topics.len());
    for topic in body.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let outcome = async {
            if !topic.assignments.is_empty() {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "manual replica assignment is not supported".into(),
                ));
            }
            let partitions = match topic.num_partitions {
                -1 => broker.config.default_partitions,
                n if n >= 1 => n as u32,
                n => return Err((ResponseError::InvalidPartitions, format!("{n} partitions"))),
            };
            let replication_factor = match topic.replication_factor {
                -1 => broker.config.default_replication_factor,
                n if n >= 1 => n as u32,
                n => return Err((ResponseError::InvalidReplicationFactor, format!("replication factor {n}"))),
            };
            let pairs = topic.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())));
            let config = topic_config(pairs).map_err(|message| (ResponseError::InvalidConfig, message))?;
            if body.validate_only {
                if broker.cluster.with_catalog(|c| c.topics.contains_key(&name)) {
                    return Err((ResponseError::TopicAlreadyExists, format!("topic {name:?} already exists")));
                }
                return Ok((partitions, replication_factor));
            }
            let deadline = tokio::time::Instant::now() + timeout;
            match tokio::time::timeout(timeout, create(broker, &name, partitions, replication_factor, config)).await {
                Ok(Ok(created)) => {
                    await_everywhere(broker, &name, Expect::Partitions(created.0), deadline).await;
                    Ok(created)
                }
                Ok(Err(error)) => Err((error, error.to_string())),
                Err(_) => Err((ResponseError::RequestTimedOut, "the topic was not created in time".into())),
            }
        }
        .await;
        match outcome {
            Ok((partitions, replication_factor)) => {
                if version >= 5 {
                    result.num_partitions = partitions as i32;
                    result.replication_factor = replication_factor as i16;
                }
            }
            Err((error, message)) => {
                result.error_code = error.code();
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        results.push(result);
    }
    encode(&CreateTopicsResponse::default().with_topics(results), version)
}

pub(crate) async fn delete_topics(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: DeleteTopicsRequest = request.decode()?;
    let timeout = admin_timeout(body.timeout_ms);
    // v6 names topics in `topics` (by name or id); earlier versions in `topic_names`.
    let names: Vec<Option<TopicName>> = if version >= 6 {
        body.topics.into_iter().map(|t| t.name).collect()
    } else {
        body.topic_names.into_iter().map(Some).collect()
    };
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let mut result = DeletableTopicResult::default().with_name(name.clone());
        let outcome = match &name {
            None => Err(ResponseError::UnsupportedVersion),
            Some(name) => match tokio::time::timeout(timeout, delete(broker, &name.0)).await {
                Ok(Ok(())) => {
                    let deadline = tokio::time::Instant::now() + timeout;
                    await_everywhere(broker, &name.0, Expect::Gone, deadline).await;
                    Ok(())
                }
                Ok(outcome) => outcome,
                Err(_) => Err(ResponseError::RequestTimedOut),
            },
        };
        if let Err(error) = outcome {
            result.error_code = error.code();
            if version >= 5 {
                result.error_message = Some(StrBytes::from_string(error.to_string()));
            }
        }
        results.push(result);
    }
    encode(&DeleteTopicsResponse::default().with_responses(results), version)
}

pub(crate) async fn create_partitions(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: CreatePartitionsRequest = request.decode()?;
    let timeout = admin_timeout(body.timeout_ms);
    let mut results = Vec::with_capacity(body.topics.len());
    for topic in body.topics {
        let name = topic.name.0.to_string();
        let outcome = async {
            if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "manual replica assignment is not supported".into(),
                ));
            }
            let current = broker.cluster.with_catalog(|c| c.topics.get(&name).map(|t| t.partitions.len() as i32));
            let Some(current) = current else {
                return Err((ResponseError::UnknownTopicOrPartition, format!("unknown topic {name:?}")));
            };
            if topic.count <= current {
                let message =
                    format!("topic {name:?} has {current} partitions; the new count {} must be larger", topic.count);
                return Err((ResponseError::InvalidPartitions, message));
            }
            if body.validate_only {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + timeout;
            match tokio::time::timeout(timeout, add_partitions(broker, &name, topic.count as u32)).await {
                Ok(Ok(())) => {
                    await_everywhere(broker, &name, Expect::Partitions(topic.count as u32), deadline).await;
                    Ok(())
                }
                Ok(Err(error)) => Err((error, error.to_string())),
                Err(_) => Err((ResponseError::RequestTimedOut, "the partitions were not created in time".into())),
            }
        }
        .await;
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name);
        if let Err((error, message)) = outcome {
            result.error_code = error.code();
            result.error_message = Some(StrBytes::from_string(message));
        }
        results.push(result);
    }
    encode(&CreatePartitionsResponse::default().with_results(results), version)
}

async fn add_partitions(broker: &Broker, name: &str, count: u32) -> Result<(), ResponseError> {
    match broker.cluster.add_partitions(name, count).await {
        Ok(_) => Ok(()),
        Err(replication::Error::NotLeader { .. }) => {
            broker.admin.add_partitions(name, count).await.map(|_| ()).map_err(|error| client_error(&error))
        }
        Err(error) => Err(replication_error(&error)),
    }
}

/// Replaces a topic's settings through the metadata leader.
///
/// Answers once every reachable node applies the new settings (at most 5 s), so a produce or
/// DescribeConfigs that follows, on any broker, sees them.
pub(crate) async fn alter_topic_config(broker: &Broker, name: &str, config: TopicConfig) -> Result<(), ResponseError> {
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT_MAX;
    let wanted: client::TopicConfig = (&config).into();
    match broker.cluster.alter_topic_config(name, config).await {
        Ok(()) => {}
        Err(replication::Error::NotLeader { .. }) => {
            broker.admin.alter_topic_config(name, wanted).await.map_err(|error| client_error(&error))?
        }
        Err(error) => return Err(replication_error(&error)),
    }
    await_everywhere(broker, name, Expect::Config(wanted), deadline).await;
    Ok(())
}

fn admin_timeout(timeout_ms: i32) -> Duration {
    Duration::from_millis(timeout_ms.max(1) as u64).min(ADMIN_TIMEOUT_MAX)
}

/// Creates a topic; returns its (partitions, replication factor).
pub(crate) async fn create(
    broker: &Broker,
    name: &str,
    partitions: u32,
    replication_factor: u32,
    config: TopicConfig,
) -> Result<(u32, u32), ResponseError> {
    match broker.cluster.create_topic(name, partitions, replication_factor, config.clone()).await {
        Ok(topic) => Ok((topic.partitions.len() as u32, topic.replication_factor)),
        Err(replication::Error::NotLeader { .. }) => {
            let created = broker
                .admin
                .create_topic_with_config(name, partitions, replication_factor, (&config).into())
                .await
                .map_err(|error| client_error(&error))?;
            Ok((created.partitions.len() as u32, created.replication_factor))
        }
        Err(error) => Err(replication_error(&error)),
    }
}

async fn delete(broker: &Broker, name: &str) -> Result<(), ResponseError> {
    match broker.cluster.delete_topic(name).await {
        Ok(()) => Ok(()),
        Err(replication::Error::NotLeader { .. }) => {
            broker.admin.delete_topic(name).await.map_err(|error| client_error(&error))
        }
        Err(error) => Err(replication_error(&error)),
    }
}

/// The Kafka error for a refused topic change, told apart by the catalog's explanation.
fn invalid_request(message: &str) -> ResponseError {
    if message.contains("topic name") {
        ResponseError::InvalidTopicException
    } else if message.contains("replication factor") {
        ResponseError::InvalidReplicationFactor
    } else if message.contains("partitions") {
        ResponseError::InvalidPartitions
    } else {
        ResponseError::InvalidRequest
    }
}

fn replication_error(error: &replication::Error) -> ResponseError {
    match error {
        replication::Error::TopicExists(_) => ResponseError::TopicAlreadyExists,
        replication::Error::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        replication::Error::InvalidRequest(message) => invalid_request(message),
        replication::Error::NotReady | replication::Error::NotLeader { .. } => ResponseError::NotController,
        _ => ResponseError::RequestTimedOut,
    }
}

fn client_error(error: &client::Error) -> ResponseError {
    match error {
        client::Error::Rejected { code: client::Code::AlreadyExists, .. } => ResponseError::TopicAlreadyExists,
        client::Error::Rejected { code: client::Code::NotFound, .. } => ResponseError::UnknownTopicOrPartition,
        client::Error::Rejected { code: client::Code::InvalidArgument, message } => invalid_request(message),
        _ => ResponseError::RequestTimedOut,
    }
}

/// Kafka topic configs this broker understands; any other name is INVALID_CONFIG.
pub(crate) fn topic_config(pairs: impl Iterator<Item = (String, Option<String>)>) -> Result<TopicConfig, String> {
    let mut config = TopicConfig::default();
    for (name, value) in pairs {
        let Some(value) = value else { continue };
        set_topic_config(&mut config, &name, &value)?;
    }
    Ok(config)
}

/// The topic configs this broker keeps.
pub(crate) const TOPIC_CONFIGS: [&str; 6] =
    ["cleanup.policy", "retention.ms", "retention.bytes", "segment.bytes", "max.message.bytes", "min.insync.replicas"];

/// Puts a config back to its default (IncrementalAlterConfigs DELETE).
pub(crate) fn reset_topic_config(config: &mut TopicConfig, name: &str) -> Result<(), String> {
    match name {
        "cleanup.policy" => config.compacted = false,
        "retention.ms" => config.retention_ms = None,
        "retention.bytes" => config.retention_bytes = None,
        "segment.bytes" => config.segment_bytes = None,
        "max.message.bytes" => config.max_message_bytes = None,
        "min.insync.replicas" => config.min_insync_replicas = None,
        other => return Err(format!("unknown or unsupported topic config {other:?}")),
    }
    Ok(())
}

/// Sets one config from its Kafka name and text value.
pub(crate) fn set_topic_config(config: &mut TopicConfig, name: &str, value: &str) -> Result<(), String> {
    {
        let number = || value.trim().parse::<i64>().map_err(|_| format!("{name}={value:?} is not a number"));
        let positive = |n: i64| u64::try_from(n).ok().filter(|n| *n > 0).ok_or(format!("{name} must be positive"));
        match name {
            "retention.ms" => config.retention_ms = Some(number()?).filter(|ms| *ms >= 0),
            "retention.bytes" => config.retention_bytes = u64::try_from(number()?).ok(),
            "segment.bytes" => config.segment_bytes = Some(positive(number()?)?),
            "max.message.bytes" => {
                config.max_message_bytes =
                    Some(u32::try_from(positive(number()?)?).map_err(|_| format!("{name} too large"))?)
            }
            "min.insync.replicas" => {
                config.min_insync_replicas =
                    Some(u32::try_from(positive(number()?)?).map_err(|_| format!("{name} too large"))?)
            }
            "cleanup.policy" => {
                config.compacted = match value.trim() {
                    "delete" => false,
                    "compact" => true,
                    other => return Err(format!("cleanup.policy {other:?} is not supported (delete or compact)")),
                }
            }
            other => return Err(format!("unknown or unsupported topic config {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<TopicConfig, String> {
        topic_config(pairs.iter().map(|(n, v)| (n.to_string(), Some(v.to_string()))))
    }

    #[test]
    fn known_configs_are_read_and_unknown_ones_refused() {
        let config = parse(&[
            ("retention.ms", "60000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "1048576"),
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "2"),
            ("max.message.bytes", "65536"),
        ])
        .unwrap();
        assert_eq!(config.retention_ms, Some(60000));
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.segment_bytes, Some(1 << 20));
        assert!(config.compacted);
        assert_eq!(config.min_insync_replicas, Some(2));
        assert_eq!(config.max_message_bytes, Some(65536));
        assert!(parse(&[("retention.ms", "soon")]).is_err());
        assert!(parse(&[("segment.bytes", "0")]).is_err());
        assert!(parse(&[("cleanup.policy", "compact,delete")]).is_err());
        assert!(parse(&[("flush.messages", "1")]).is_err());
    }

    #[test]
    fn refusals_map_to_their_kafka_errors() {
        assert_eq!(invalid_request("invalid topic name \"a b\""), ResponseError::InvalidTopicException);
        assert_eq!(invalid_request("replication factor 4 is larger"), ResponseError::InvalidReplicationFactor);
        assert_eq!(invalid_request("partitions must be 1..=10000"), ResponseError::InvalidPartitions);
    }
}
