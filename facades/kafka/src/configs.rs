//! DescribeConfigs (v1–4) and IncrementalAlterConfigs (v0–1).
//!
//! Topics have the six settings this broker keeps (`admin::TOPIC_CONFIGS`); a change goes
//! through the metadata group and every replica adopts it when it applies the change, so it
//! takes effect without a restart (retention and segment size from the next retention run and
//! roll, `max.message.bytes` from the next produce). Brokers are described read-only: their
//! settings come from the node's configuration file.

use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use replication::{TopicConfig, TopicDefaults};

use crate::admin::{reset_topic_config, set_topic_config, TOPIC_CONFIGS};
use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};

/// Kafka's resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One described config: name, value, whether the topic sets it, type.
struct Described {
    name: &'static str,
    value: String,
    set: bool,
    config_type: i8,
}

/// A topic's settings as Kafka names them, defaults filled in.
fn describe_topic(config: &TopicConfig, defaults: TopicDefaults) -> Vec<Described> {
    let entry = |name, value: String, set, config_type| Described { name, value, set, config_type };
    vec![
        entry(
            "cleanup.policy",
            if config.compacted { "compact" } else { "delete" }.into(),
            config.compacted,
            TYPE_LIST,
        ),
        entry("retention.ms", config.retention_ms.unwrap_or(-1).to_string(), config.retention_ms.is_some(), TYPE_LONG),
        entry(
            "retention.bytes",
            config.retention_bytes.map_or(-1, |b| b as i64).to_string(),
            config.retention_bytes.is_some(),
            TYPE_LONG,
        ),
        entry(
            "segment.bytes",
            config.segment_bytes.unwrap_or(defaults.segment_bytes).to_string(),
            config.segment_bytes.is_some(),
            TYPE_INT,
        ),
        entry(
            "max.message.bytes",
            config.max_message_bytes.map_or(defaults.batch_bytes_max as u64, u64::from).to_string(),
            config.max_message_bytes.is_some(),
            TYPE_INT,
        ),
        entry(
            "min.insync.replicas",
            config.min_insync_replicas.unwrap_or(1).to_string(),
            config.min_insync_replicas.is_some(),
            TYPE_INT,
        ),
    ]
}

/// This node's Kafka-relevant settings.
fn describe_broker(broker: &Broker) -> Vec<Described> {
    let config = &broker.config;
    let defaults = broker.cluster.topic_defaults();
    let entry = |name, value: String, config_type| Described { name, value, set: true, config_type };
    vec![
        entry("broker.id", broker.cluster.node_id().0.to_string(), TYPE_INT),
        entry("auto.create.topics.enable", config.auto_create_topics.to_string(), TYPE_BOOLEAN),
        entry("num.partitions", config.default_partitions.to_string(), TYPE_INT),
        entry("default.replication.factor", config.default_replication_factor.to_string(), TYPE_INT),
        entry("message.max.bytes", defaults.batch_bytes_max.to_string(), TYPE_INT),
        entry("log.segment.bytes", defaults.segment_bytes.to_string(), TYPE_INT),
        entry("offsets.topic.num.partitions", config.offsets_topic_partitions.to_string(), TYPE_INT),
        entry("group.initial.rebalance.delay.ms", config.group_initial_rebalance_delay_ms.to_string(), TYPE_INT),
        entry("group.min.session.timeout.ms", config.group_min_session_timeout_ms.to_string(), TYPE_INT),
        entry("group.max.session.timeout.ms", config.group_max_session_timeout_ms.to_string(), TYPE_INT),
    ]
}

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

pub(crate) async fn describe_configs(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: DescribeConfigsRequest = request.decode()?;
    let mut results = Vec::with_capacity(body.resources.len());
    for resource in body.resources {
        let name = resource.resource_name.to_string();
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let described = match resource.resource_type {
            RESOURCE_TOPIC => {
                let config = broker.cluster.with_catalog(|c| c.topics.get(&name).map(|t| t.config.clone()));
                match config {
                    Some(config) => Ok((describe_topic(&config, broker.cluster.topic_defaults()), false)),
                    None => Err((ResponseError::UnknownTopicOrPartition, format!("unknown topic {name:?}"))),
                }
            }
            RESOURCE_BROKER if name.is_empty() || name == broker.cluster.node_id().0.to_string() => {
                Ok((describe_broker(broker), true))
            }
            RESOURCE_BROKER => {
                Err((ResponseError::InvalidRequest, format!("this is broker {}", broker.cluster.node_id())))
            }
            other => Err((ResponseError::InvalidRequest, format!("resource type {other} is not supported"))),
        };
        match described {
            Ok((entries, is_broker)) => {
                let wanted = resource.configuration_keys.as_ref();
                result.configs = entries
                    .into_iter()
                    .filter(|d| wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == d.name)))
                    .map(|d| {
                        let source = match (is_broker, d.set) {
                            (true, _) => SOURCE_STATIC_BROKER,
                            (false, true) => SOURCE_TOPIC,
                            (false, false) => SOURCE_DEFAULT,
                        };
                        let entry = DescribeConfigsResourceResult::default()
                            .with_name(text(d.name))
                            .with_value(Some(text(d.value)))
                            .with_read_only(is_broker)
                            .with_config_source(source);
                        if version >= 3 {
                            entry.with_config_type(d.config_type)
                        } else {
                            entry
                        }
                    })
                    .collect();
            }
            Err((error, message)) => {
                result.error_code = error.code();
                result.error_message = Some(text(message));
            }
        }
        results.push(result);
    }
    encode(&DescribeConfigsResponse::default().with_results(results), version)
}

pub(crate) async fn incremental_alter_configs(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: IncrementalAlterConfigsRequest = request.decode()?;
    let mut responses = Vec::with_capacity(body.resources.len());
    for resource in body.resources {
        let name = resource.resource_name.to_string();
        let outcome = async {
            if resource.resource_type != RESOURCE_TOPIC {
                return Err((
                    ResponseError::InvalidRequest,
                    "only topic configs can be altered; broker settings come from the node's config file".to_string(),
                ));
            }
            let current = broker.cluster.with_catalog(|c| c.topics.get(&name).map(|t| t.config.clone()));
            let Some(mut config) = current else {
                return Err((ResponseError::UnknownTopicOrPartition, format!("unknown topic {name:?}")));
            };
            for change in &resource.configs {
                let key = change.name.as_str();
                let value = change.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                let invalid = |message: String| (ResponseError::InvalidConfig, message);
                match change.config_operation {
                    OP_SET => set_topic_config(&mut config, key, &value).map_err(invalid)?,
                    OP_DELETE => reset_topic_config(&mut config, key).map_err(invalid)?,
                    OP_APPEND | OP_SUBTRACT if key == "cleanup.policy" => {
                        // A list of one element here: "compact" or "delete".
                        let current = if config.compacted { "compact" } else { "delete" };
                        let next = match change.config_operation {
                            OP_APPEND if value == current => current,
                            OP_SUBTRACT if value != current => current,
                            OP_SUBTRACT => "delete",
                            _ => return Err(invalid(format!("cleanup.policy {current},{value} is not supported"))),
                        };
                        set_topic_config(&mut config, key, next).map_err(invalid)?;
                    }
                    OP_APPEND | OP_SUBTRACT if TOPIC_CONFIGS.contains(&key) => {
                        return Err(invalid(format!("{key} is not a list config")))
                    }
                    OP_APPEND | OP_SUBTRACT => {
                        return Err(invalid(format!("unknown or unsupported topic config {key:?}")))
                    }
                    other => return Err((ResponseError::InvalidRequest, format!("unknown config operation {other}"))),
                }
            }
            if body.validate_only {
                return Ok(());
            }
            crate::admin::alter_topic_config(broker, &name, config).await.map_err(|error| (error, error.to_string()))
        }
        .await;
        let mut response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err((error, message)) = outcome {
            response.error_code = error.code();
            response.error_message = Some(text(message));
        }
        responses.push(response);
    }
    encode(&IncrementalAlterConfigsResponse::default().with_responses(responses), version)
}
