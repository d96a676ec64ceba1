//! FindCoordinator (v0–4): which broker coordinates a consumer group — the leader of the
//! group's partition of `__consumer_offsets`, created on first use (compacted, like Kafka's).
//!
//! Transaction coordinators (key type 1) are not served: transactions are not supported yet,
//! so the answer is COORDINATOR_NOT_AVAILABLE with a message saying so.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use replication::{NodeId, TopicConfig};
use tracing::info;

use crate::broker::{host_and_port, Broker, ENDPOINT};
use crate::connection::{encode, Reply, Request};
use crate::groups::records::{self, OFFSETS_TOPIC};

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
    if key_type != 0 {
        return unavailable("transactions are not supported by this broker");
    }
    if key.is_empty() {
        return Err((ResponseError::InvalidGroupId, "the group id is empty".into()));
    }
    let partitions = broker.cluster.with_catalog(|c| c.topics.get(OFFSETS_TOPIC).map(|t| t.partitions.len() as u32));
    let Some(partitions) = partitions else {
        create_offsets_topic(broker).await;
        return unavailable("the offsets topic is being created");
    };
    let partition = records::partition_for(key, partitions);
    let leader = broker.cluster.with_catalog(|c| {
        c.partition(OFFSETS_TOPIC, partition).ok().map(|info| broker.leader_view(OFFSETS_TOPIC, info).leader_id)
    });
    let Some(leader) = leader.filter(|id| *id >= 0) else {
        return unavailable("the group's offsets partition has no leader right now");
    };
    let endpoint = broker
        .cluster
        .with_catalog(|c| c.nodes.get(&NodeId(leader as u64)).and_then(|n| n.endpoints.get(ENDPOINT).cloned()));
    match endpoint.as_deref().and_then(host_and_port) {
        Some((host, port)) => Ok((leader, host, port)),
        None => unavailable("the coordinator has not registered its Kafka address yet"),
    }
}

async fn create_offsets_topic(broker: &Broker) {
    let config = TopicConfig { compacted: true, segment_bytes: Some(OFFSETS_SEGMENT_BYTES), ..TopicConfig::default() };
    let partitions = broker.config.offsets_topic_partitions;
    let replication_factor = broker.config.offsets_topic_replication_factor;
    match crate::admin::create(broker, OFFSETS_TOPIC, partitions, replication_factor, config).await {
        Ok(_) => info!(partitions, "created the consumer offsets topic"),
        Err(ResponseError::TopicAlreadyExists) => {}
        Err(error) => tracing::warn!(%error, "cannot create the consumer offsets topic"),
    }
}
