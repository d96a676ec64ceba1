//! FindCoordinator (v0–4): which broker coordinates a consumer group — the leader of the
//! group's partition of `__consumer_offsets`, created on first use (compacted, like Kafka's) —
//! or a transactional id (the leader of its partition of `__transaction_state`).
//!
//! Key type 1 finds a transaction coordinator the same way, on `__transaction_state`.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use replication::{NodeId, TopicConfig};
use tracing::info;

use crate::broker::{host_and_port, Broker, ENDPOINT};
use crate::connection::{encode, Reply, Request};
use crate::groups::records::OFFSETS_TOPIC;
use crate::transactions::TRANSACTION_TOPIC;

/// Segment size of the offsets topic (Kafka's `offsets.topic.segment.bytes`).
const OFFSETS_SEGMENT_BYTES: u64 = 100 << 20;

type Found = Result<(i32, String, i32), (ResponseError, String)>;

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: FindCoordinatorRequest = request.decode()?;
    if version >= 4 {
        let mut coordinators = Vec::with_capacity(body.coordinator_keys.len());
        for key in body.coordinator_keys {
            let found = find(broker, &key, body.key_type).await;
            let mut coordinator = Coordinator::default().with_key(key);
            match found {
                Ok((node, host, port)) => {
                    coordinator = coordinator.with_node_id(BrokerId(node)).with_host(text(host)).with_port(port)
                }
                Err((error, message)) => {
                    coordinator = coordinator
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(error.code())
                        .with_error_message(Some(text(message)))
                }
            }
            coordinators.push(coordinator);
        }
        return encode(&FindCoordinatorResponse::default().with_coordinators(coordinators), version);
    }
    let key_type = if version >= 1 { body.key_type } else { 0 };
    let mut response = FindCoordinatorResponse::default();
    match find(broker, &body.key, key_type).await {
        Ok((node, host, port)) => {
            response.node_id = BrokerId(node);
            response.host = text(host);
            response.port = port;
        }
        Err((error, message)) => {
            response.error_code = error.code();
            response.node_id = BrokerId(-1);
            response.port = -1;
            if version >= 1 {
                response.error_message = Some(text(message));
            }
        }
    }
    encode(&response, version)
}

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

async fn find(broker: &Broker, key: &str, key_type: i8) -> Found {
    let unavailable = |message: &str| Err((ResponseError::CoordinatorNotAvailable, message.to_string()));
    let topic = match key_type {
        0 => OFFSETS_TOPIC,
        1 => TRANSACTION_TOPIC,
        other => return Err((ResponseError::InvalidRequest, format!("coordinator key type {other}"))),
    };
    if key.is_empty() {
        return Err((ResponseError::InvalidRequest, "the coordinator key is empty".into()));
    }
    let partitions = broker.cluster.with_catalog(|c| c.topics.get(topic).map(|t| t.partitions.len() as u32));
    let Some(partitions) = partitions else {
        create_internal_topic(broker, topic).await;
        return unavailable("the coordinator's internal topic is being created");
    };
    let partition = crate::shards::partition_for(key, partitions);
    broker.learn_leaders(topic).await;
    let leader = broker
        .cluster
        .with_catalog(|c| c.partition(topic, partition).ok().map(|info| broker.leader_view(topic, info).leader_id));
    let Some(leader) = leader.filter(|id| *id >= 0) else {
        return unavailable("the coordinator's partition has no leader right now");
    };
    let endpoint = broker
        .cluster
        .with_catalog(|c| c.nodes.get(&NodeId(leader as u64)).and_then(|n| n.endpoints.get(ENDPOINT).cloned()));
    match endpoint.as_deref().and_then(host_and_port) {
        Some((host, port)) => Ok((leader, host, port)),
        None => unavailable("the coordinator has not registered its Kafka address yet"),
    }
}

/// Creates `__consumer_offsets` or `__transaction_state` (compacted, like Kafka's).
async fn create_internal_topic(broker: &Broker, topic: &str) {
    let config = TopicConfig { compacted: true, segment_bytes: Some(OFFSETS_SEGMENT_BYTES), ..TopicConfig::default() };
    let partitions = broker.config.offsets_topic_partitions;
    let replication_factor = broker.config.offsets_topic_replication_factor;
    match crate::admin::create(broker, topic, partitions, replication_factor, config).await {
        Ok(_) => info!(topic, partitions, "created an internal topic"),
        Err(ResponseError::TopicAlreadyExists) => {}
        Err(error) => tracing::warn!(topic, %error, "cannot create an internal topic"),
    }
}
