//! Metadata: brokers, the controller, and each topic's partitions with leader, replicas and ISR.
//!
//! Brokers are the catalog's active nodes that registered a Kafka endpoint. An unknown topic is
//! created when both the node (`auto_create_topics`) and the client allow it; the answer is then
//! LEADER_NOT_AVAILABLE, and the client asks again once leaders are elected.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use replication::{Catalog, TopicInfo};
use tracing::{info, warn};

use crate::broker::{host_and_port, Broker, ENDPOINT};
use crate::connection::{encode, Reply, Request};

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: MetadataRequest = request.decode()?;
    let catalog = broker.cluster.catalog();
    // v0: an empty list means every topic; v1+: null means every topic, empty means none.
    let requested: Option<Vec<String>> = match body.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(topics.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
    };
    let allow_create = broker.config.auto_create_topics && (version < 4 || body.allow_auto_topic_creation);
    // Leaders of partitions this node holds no replica of come from their replicas.
    let described: Vec<String> = match &requested {
        None => catalog.topics.keys().cloned().collect(),
        Some(names) => names.iter().filter(|n| catalog.topics.contains_key(*n)).cloned().collect(),
    };
    for topic in &described {
        broker.learn_leaders(topic).await;
    }
    let topics = match requested {
        None => catalog.topics.values().map(|topic| describe(broker, topic)).collect(),
        Some(names) => {
            let mut topics = Vec::with_capacity(names.len());
            for name in names {
                topics.push(match catalog.topics.get(&name) {
                    Some(topic) => describe(broker, topic),
                    None => missing(broker, &name, allow_create).await,
                });
            }
            topics
        }
    };
    let response = MetadataResponse::default()
        .with_brokers(brokers(&catalog))
        .with_cluster_id(Some(StrBytes::from_string(catalog.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.cluster.metadata_leader().map_or(-1, |n| n.0 as i32)))
        .with_topics(topics);
    encode(&response, version)
}

/// DescribeCluster (v0–1): the brokers, the controller and the cluster id, as Metadata has them.
pub(crate) async fn describe_cluster(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: DescribeClusterRequest = request.decode()?;
    let catalog = broker.cluster.catalog();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(catalog.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.cluster.metadata_leader().map_or(-1, |n| n.0 as i32)));
    if version >= 1 && body.endpoint_type != 1 {
        // Only broker endpoints exist here: no separate controller listeners.
        response.error_code = ResponseError::UnsupportedEndpointType.code();
        response.error_message = Some(StrBytes::from_static_str("only broker endpoints (type 1) are served"));
        response.endpoint_type = body.endpoint_type;
        return encode(&response, version);
    }
    response.brokers = brokers(&catalog)
        .into_iter()
        .map(|b| DescribeClusterBroker::default().with_broker_id(b.node_id).with_host(b.host).with_port(b.port))
        .collect();
    encode(&response, version)
}

/// Active nodes with a registered Kafka endpoint.
pub(crate) fn brokers(catalog: &Catalog) -> Vec<MetadataResponseBroker> {
    catalog
        .nodes
        .values()
        .filter(|node| !node.removed)
        .filter_map(|node| {
            let (host, port) = host_and_port(node.endpoints.get(ENDPOINT)?)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(node.id.0 as i32))
                    .with_host(StrBytes::from_string(host))
                    .with_port(port),
            )
        })
        .collect()
}

fn describe(broker: &Broker, topic: &TopicInfo) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|info| {
            let leader = broker.leader_view(&topic.name, info);
            let replicas: Vec<BrokerId> = info.replicas.iter().map(|n| BrokerId(n.0 as i32)).collect();
            let isr = broker.in_sync_replicas(&topic.name, info).into_iter().map(|n| BrokerId(n.0 as i32)).collect();
            let error = if leader.leader_id < 0 { ResponseError::LeaderNotAvailable.code() } else { 0 };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(info.partition as i32)
                .with_leader_id(BrokerId(leader.leader_id))
                .with_leader_epoch(leader.leader_epoch)
                .with_replica_nodes(replicas)
                .with_isr_nodes(isr)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_partitions(partitions)
}

/// A topic the catalog does not have: create it if allowed, else UNKNOWN_TOPIC_OR_PARTITION.
async fn missing(broker: &Broker, name: &str, allow_create: bool) -> MetadataResponseTopic {
    let answer = |error: ResponseError| {
        MetadataResponseTopic::default()
            .with_error_code(error.code())
            .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
    };
    if !allow_create {
        return answer(ResponseError::UnknownTopicOrPartition);
    }
    let config = &broker.config;
    match crate::admin::create(
        broker,
        name,
        config.default_partitions,
        config.default_replication_factor,
        Default::default(),
    )
    .await
    {
        Ok(_) => {
            info!(topic = name, "auto-created topic");
            answer(ResponseError::LeaderNotAvailable)
        }
        Err(ResponseError::TopicAlreadyExists) => answer(ResponseError::LeaderNotAvailable),
        Err(error) => {
            warn!(topic = name, %error, "cannot auto-create topic");
            answer(error)
        }
    }
}
