//! The `Broker` gRPC service: the native client API, served by every node.
//!
//! A node answers what it can itself and forwards the rest one hop: appends and fetches to the
//! partition's leader, topic changes to the metadata leader. A forwarded request carries a
//! marker so it is never forwarded again; a node that cannot serve it answers `UNAVAILABLE`
//! naming the leader it knows, and the client retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log_store::Offset;
use proto::v1::broker_client::BrokerClient;
use proto::v1::broker_server::Broker;
use proto::v1::*;
use replication::{Cluster, Error, NodeId, TopicInfo};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;

/// Marks a request forwarded by another node.
const FORWARDED: &str = "x-robustmq-forwarded";
/// Longest a forwarded request may take: longer than the longest long poll (30 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(40);
/// Largest message the API accepts or sends.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// The service, one per node.
pub struct BrokerService {
    cluster: Cluster,
    metrics: Arc<Metrics>,
    channels: Mutex<HashMap<NodeId, Channel>>,
}

impl BrokerService {
    pub fn new(cluster: Cluster, metrics: Arc<Metrics>) -> BrokerService {
        BrokerService { cluster, metrics, channels: Mutex::new(HashMap::new()) }
    }

    fn peer(&self, node: NodeId) -> Result<BrokerClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(&node) {
            Some(channel) => channel.clone(),
            None => {
                let address = self
                    .cluster
                    .dial_address(node)
                    .ok_or_else(|| Status::unavailable(format!("no address for node {node}")))?;
                // A forward never waits for ever on a peer that stopped answering (its
                // connection half-open after a kill behind a network cut, say).
                let channel = client::endpoint(&address, FORWARD_TIMEOUT)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .connect_lazy();
                channels.insert(node, channel.clone());
                channel
            }
        };
        Ok(BrokerClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// The node to forward to after `error`, if forwarding is allowed and makes sense.
    ///
    /// An unknown topic goes to the metadata leader: this node may not have applied a catalog
    /// change the client already saw acknowledged, so only the metadata leader's "unknown" is
    /// final.
    fn forward_target(&self, error: &Error, forwarded: bool) -> Option<NodeId> {
        let me = self.cluster.node_id();
        match error {
            _ if forwarded => None,
            Error::NotLeader { leader: Some(leader) } if *leader != me => Some(*leader),
            Error::UnknownTopic(_) | Error::UnknownPartition { .. } => {
                self.cluster.metadata_leader().filter(|l| *l != me)
            }
            _ => None,
        }
    }
}

fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

fn marked<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(FORWARDED, MetadataValue::from_static("1"));
    request
}

impl BrokerService {
    /// Forwards a request this node could not serve to the node that can, or answers with the
    /// error when there is none (or the request was already forwarded once).
    async fn or_forward<T, F, Fut>(&self, error: Error, was_forwarded: bool, forward: F) -> Result<Response<T>, Status>
    where
        F: FnOnce(BrokerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        match self.forward_target(&error, was_forwarded) {
            Some(target) => forward(self.peer(target)?).await,
            None => Err(self.status(error)),
        }
    }

    /// Maps an error this node could not forward. "Unknown topic" is final only from the
    /// metadata leader; a node that knows of no leader (starting, cut off) cannot tell yet.
    fn status(&self, error: Error) -> Status {
        match error {
            Error::UnknownTopic(_) | Error::UnknownPartition { .. }
                if self.cluster.metadata_leader() != Some(self.cluster.node_id()) =>
            {
                Status::unavailable(format!("{error} (as far as this node knows; no metadata leader reachable yet)"))
            }
            Error::NotLeader { leader: Some(leader) } => {
                let mut status = status(error);
                if let Some(Ok(address)) = self.cluster.address_of(leader).map(|a| a.parse()) {
                    status.metadata_mut().insert("x-robustmq-leader-address", address);
                }
                status
            }
            other => status(other),
        }
    }
}

/// Maps the cluster's errors to gRPC codes a client can act on.
fn status(error: Error) -> Status {
    match error {
        Error::NotLeader { leader } => {
            let mut status = Status::unavailable(error.to_string());
            if let Some(leader) = leader {
                if let Ok(value) = leader.0.to_string().parse() {
                    status.metadata_mut().insert("x-robustmq-leader", value);
                }
            }
            status
        }
        Error::Timeout => Status::deadline_exceeded(error.to_string()),
        Error::UnknownTopic(_) | Error::UnknownPartition { .. } => Status::not_found(error.to_string()),
        Error::TopicExists(_) => Status::already_exists(error.to_string()),
        Error::InvalidRequest(_) => Status::invalid_argument(error.to_string()),
        Error::OutOfOrderSequence { .. } | Error::InvalidProducerEpoch { .. } => {
            Status::failed_precondition(error.to_string())
        }
        Error::Overloaded => Status::resource_exhausted(error.to_string()),
        Error::Stopped | Error::NotReady => Status::unavailable(error.to_string()),
        Error::Engine(_) => Status::internal(error.to_string()),
        Error::Log(ref log_error) => match log_error {
            log_store::Error::OffsetOutOfRange { .. } => Status::out_of_range(error.to_string()),
            log_store::Error::BatchTooLarge { .. } => {
                Status::invalid_argument(format!("{error} (record batch too large)"))
            }
            log_store::Error::Corrupt { .. } => Status::data_loss(error.to_string()),
            log_store::Error::Io { .. } | log_store::Error::Poisoned { .. } | log_store::Error::Locked { .. } => {
                Status::internal(error.to_string())
            }
            _ => Status::invalid_argument(error.to_string()),
        },
    }
}

/// A topic as this node knows it: placement from the catalog, leader and offsets where it
/// holds a replica.
pub fn describe(cluster: &Cluster, topic: &TopicInfo) -> TopicDescription {
    TopicDescription {
        name: topic.name.clone(),
        config: Some((&topic.config).into()),
        replication_factor: topic.replication_factor,
        partitions: topic
            .partitions
            .iter()
            .map(|p| {
                let status = cluster.partition_status(&topic.name, p.partition);
                PartitionDescription {
                    partition: p.partition,
                    group_id: p.group.0,
                    replicas: p.replicas.iter().map(|n| n.0).collect(),
                    leader: status.as_ref().and_then(|s| s.leader).map(|n| n.0),
                    log_start_offset: status.as_ref().map_or(0, |s| s.log_start_offset.0),
                    high_watermark: status.as_ref().map_or(0, |s| s.high_watermark.0),
                    raft_first_index: status.as_ref().map_or(0, |s| s.raft_first_index),
                    leader_epoch: status.as_ref().filter(|s| s.leader.is_some()).map_or(0, |s| s.leader_epoch),
                    voters: cluster
                        .partition_voters(&topic.name, p.partition)
                        .map(|voters| voters.iter().map(|n| n.0).collect())
                        .unwrap_or_default(),
                }
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        let config: replication::TopicConfig = message.config.as_ref().map(Into::into).unwrap_or_default();
        match self.cluster.create_topic(&message.name, message.partitions, message.replication_factor, config).await {
            Ok(topic) => Ok(Response::new(CreateTopicResponse { topic: Some(describe(&self.cluster, &topic)) })),
            Err(error) => {
                self.or_forward(
                    error,
                    was_forwarded,
                    |mut peer| async move { peer.create_topic(marked(message)).await },
                )
                .await
            }
        }
    }

    async fn add_partitions(
        &self,
        request: Request<AddPartitionsRequest>,
    ) -> Result<Response<AddPartitionsResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        match self.cluster.add_partitions(&message.name, message.count).await {
            Ok(topic) => Ok(Response::new(AddPartitionsResponse { topic: Some(describe(&self.cluster, &topic)) })),
            Err(error) => {
                self.or_forward(
                    error,
                    was_forwarded,
                    |mut peer| async move { peer.add_partitions(marked(message)).await },
                )
                .await
            }
        }
    }

    async fn alter_topic_config(
        &self,
        request: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        let config: replication::TopicConfig = message.config.as_ref().map(Into::into).unwrap_or_default();
        match self.cluster.alter_topic_config(&message.name, config).await {
            Ok(()) => Ok(Response::new(AlterTopicConfigResponse {})),
            Err(error) => {
                self.or_forward(error, was_forwarded, |mut peer| async move {
                    peer.alter_topic_config(marked(message)).await
                })
                .await
            }
        }
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        match self.cluster.delete_topic(&message.name).await {
            Ok(()) => Ok(Response::new(DeleteTopicResponse {})),
            Err(error) => {
                self.or_forward(
                    error,
                    was_forwarded,
                    |mut peer| async move { peer.delete_topic(marked(message)).await },
                )
                .await
            }
        }
    }

    async fn list_topics(&self, _request: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        let catalog = self.cluster.catalog();
        let topics = catalog.topics.values().map(|topic| describe(&self.cluster, topic)).collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        let catalog = self.cluster.catalog();
        match catalog.topics.get(&message.name) {
            Some(topic) => Ok(Response::new(describe(&self.cluster, topic))),
            None => {
                let error = Error::UnknownTopic(message.name.clone());
                self.or_forward(error, was_forwarded || message.local, |mut peer| async move {
                    peer.describe_topic(marked(message)).await
                })
                .await
            }
        }
    }

    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        let started = Instant::now();
        let bytes = message.batch.len() as u64;
        if let Some(fake) = crate::inject::dropped_append(&self.cluster, &message.topic, message.partition) {
            return Ok(Response::new(fake));
        }
        match self.cluster.append(&message.topic, message.partition, message.batch.clone()).await {
            Ok((base, last)) => {
                self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
                self.metrics.produce_bytes.inc_by(bytes);
                self.metrics.produce_requests.with_label_values(&["ok"]).inc();
                Ok(Response::new(ProduceResponse { base_offset: base.0, last_offset: last.0 }))
            }
            Err(error) => match self.forward_target(&error, was_forwarded) {
                Some(leader) => {
                    self.metrics.produce_requests.with_label_values(&["forwarded"]).inc();
                    self.peer(leader)?.produce(marked(message)).await
                }
                None => {
                    self.metrics.produce_requests.with_label_values(&["error"]).inc();
                    Err(self.status(error))
                }
            },
        }
    }

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        let max_bytes = (message.max_bytes as usize).clamp(1, MESSAGE_BYTES_MAX / 2);
        let wait = Duration::from_millis(message.max_wait_ms as u64);
        match self.cluster.read(&message.topic, message.partition, Offset(message.offset), max_bytes, wait).await {
            Ok(result) => {
                self.metrics.fetch_requests.with_label_values(&["ok"]).inc();
                Ok(Response::new(FetchResponse {
                    batches: result.batches,
                    high_watermark: result.high_watermark.0,
                    log_start_offset: result.log_start_offset.0,
                }))
            }
            Err(error) => match self.forward_target(&error, was_forwarded) {
                Some(leader) => self.peer(leader)?.fetch(marked(message)).await,
                None => {
                    self.metrics.fetch_requests.with_label_values(&["error"]).inc();
                    Err(self.status(error))
                }
            },
        }
    }

    async fn add_node(&self, request: Request<AddNodeRequest>) -> Result<Response<AddNodeResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        match self.cluster.add_node(NodeId(message.id), message.address.clone()).await {
            Ok(()) => Ok(Response::new(AddNodeResponse {})),
            Err(error) => {
                self.or_forward(error, was_forwarded, |mut peer| async move { peer.add_node(marked(message)).await })
                    .await
            }
        }
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        match self.cluster.remove_node(NodeId(message.id)).await {
            Ok(()) => Ok(Response::new(RemoveNodeResponse {})),
            Err(error) => {
                self.or_forward(error, was_forwarded, |mut peer| async move { peer.remove_node(marked(message)).await })
                    .await
            }
        }
    }

    async fn rebalance(&self, request: Request<RebalanceRequest>) -> Result<Response<RebalanceResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        match self.cluster.rebalance().await {
            Ok(moved) => Ok(Response::new(RebalanceResponse { partitions_moved: moved as u32 })),
            Err(error) => {
                self.or_forward(error, was_forwarded, |mut peer| async move { peer.rebalance(marked(message)).await })
                    .await
            }
        }
    }

    async fn set_endpoints(
        &self,
        request: Request<SetEndpointsRequest>,
    ) -> Result<Response<SetEndpointsResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        let endpoints = message.endpoints.clone().into_iter().collect();
        match self.cluster.set_endpoints(NodeId(message.node_id), endpoints).await {
            Ok(()) => Ok(Response::new(SetEndpointsResponse {})),
            Err(error) => {
                self.or_forward(
                    error,
                    was_forwarded,
                    |mut peer| async move { peer.set_endpoints(marked(message)).await },
                )
                .await
            }
        }
    }

    async fn allocate_producer_ids(
        &self,
        request: Request<AllocateProducerIdsRequest>,
    ) -> Result<Response<AllocateProducerIdsResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let message = request.into_inner();
        match self.cluster.allocate_producer_ids(message.count).await {
            Ok(first) => Ok(Response::new(AllocateProducerIdsResponse { first })),
            Err(error) => {
                self.or_forward(error, was_forwarded, |mut peer| async move {
                    peer.allocate_producer_ids(marked(message)).await
                })
                .await
            }
        }
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(cluster_status(&self.cluster)))
    }
}

/// The cluster as this node sees it.
pub fn cluster_status(cluster: &Cluster) -> ClusterStatusResponse {
    let catalog = cluster.catalog();
    let me = cluster.node_id();
    ClusterStatusResponse {
        answered_by: me.0,
        metadata_leader: cluster.metadata_leader().map(|n| n.0),
        nodes: catalog
            .nodes
            .values()
            .map(|node| NodeStatus {
                id: node.id.0,
                address: node.address.clone(),
                leaders: if node.id == me { cluster.leader_count() as u32 } else { 0 },
                removed: node.removed,
                endpoints: node.endpoints.clone().into_iter().collect(),
            })
            .collect(),
        metadata_voters: cluster.metadata_voters().into_iter().map(|n| n.0).collect(),
        metadata_truncated_index: cluster.metadata_truncated_index(),
    }
}
