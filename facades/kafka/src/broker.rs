//! The Kafka listener: accepts connections and holds what every request handler shares.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use replication::{Cluster, NodeId, PartitionInfo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::KafkaConfig;
use crate::connection::{Connection, Malformed, Reply, Request};
use crate::versions;

/// What request handlers share: this node's view of the cluster, a native client for the
/// metadata operations another node may have to carry out, and the settings.
pub(crate) struct Broker {
    pub cluster: Cluster,
    /// Reaches the metadata leader (through this node, which forwards) for topic changes.
    pub admin: client::Client,
    pub config: KafkaConfig,
    /// Producer ids this node may hand out without asking the metadata leader.
    pub producer_ids: crate::init_producer_id::ProducerIdBlock,
    /// The consumer groups this node coordinates.
    pub coordinator: crate::groups::Coordinator,
    /// The transactions this node coordinates.
    pub transactions: crate::transactions::TxnCoordinator,
    /// Leaders of partitions this node holds no replica of, as replicas told it.
    pub remote_leaders: crate::leaders::RemoteLeaders,
    /// Users and mechanisms when SASL is on.
    pub authenticator: Option<crate::sasl::Authenticator>,
}

/// Serves Kafka clients on `listener` until `stop` turns true.
///
/// `admin` is a native client whose bootstrap is this node's own gRPC address: topic changes
/// asked of a node that does not lead the metadata group are forwarded through it.
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    admin: client::Client,
    config: KafkaConfig,
    mut stop: watch::Receiver<bool>,
) {
    let coordinator = crate::groups::Coordinator::new(config.group_settings());
    let authenticator = config.sasl.as_ref().map(crate::sasl::Authenticator::new);
    let broker = Arc::new(Broker {
        cluster,
        admin,
        config,
        producer_ids: Default::default(),
        coordinator,
        transactions: Default::default(),
        remote_leaders: Default::default(),
        authenticator,
    });
    let connection_stop = stop.clone();
    tokio::spawn(crate::groups::run_timers(broker.clone(), stop.clone()));
    tokio::spawn(crate::transactions::run_timers(broker.clone(), stop.clone()));
    info!(listen = ?listener.local_addr().ok(), advertised = %broker.config.advertised_address, "kafka listener ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "kafka connection");
                    let _ = stream.set_nodelay(true);
                    let connection = Connection::new(broker.clone(), stream, peer, connection_stop.clone());
                    tokio::spawn(connection.run());
                }
                // Out of descriptors and the like: wait a moment instead of spinning.
                Err(error) => {
                    warn!(%error, "kafka listener cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = stopping(&mut stop) => return,
        }
    }
}

/// Completes once `stop` turns true (the guard `wait_for` returns is not kept across awaits).
pub(crate) async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Runs one request's handler.
/// Produce is not among them: the connection calls [`crate::produce::start`] itself, in order.
pub(crate) async fn handle(broker: &Broker, mut request: Request) -> Reply {
    match request.api_key {
        ApiKey::ApiVersions => versions::api_versions(&request),
        ApiKey::Metadata => crate::metadata::handle(broker, &mut request).await,
        ApiKey::Fetch => crate::fetch::handle(broker, &mut request).await,
        ApiKey::ListOffsets => crate::list_offsets::handle(broker, &mut request).await,
        ApiKey::OffsetForLeaderEpoch => crate::offset_for_leader_epoch::handle(broker, &mut request).await,
        ApiKey::CreateTopics => crate::admin::create_topics(broker, &mut request).await,
        ApiKey::DeleteTopics => crate::admin::delete_topics(broker, &mut request).await,
        ApiKey::CreatePartitions => crate::admin::create_partitions(broker, &mut request).await,
        ApiKey::DescribeConfigs => crate::configs::describe_configs(broker, &mut request).await,
        ApiKey::IncrementalAlterConfigs => crate::configs::incremental_alter_configs(broker, &mut request).await,
        ApiKey::DescribeCluster => crate::metadata::describe_cluster(broker, &mut request).await,
        ApiKey::InitProducerId => crate::init_producer_id::handle(broker, &mut request).await,
        ApiKey::FindCoordinator => crate::find_coordinator::handle(broker, &mut request).await,
        ApiKey::JoinGroup => crate::groups::membership::join_group(broker, &mut request).await,
        ApiKey::SyncGroup => crate::groups::membership::sync_group(broker, &mut request).await,
        ApiKey::Heartbeat => crate::groups::membership::heartbeat(broker, &mut request).await,
        ApiKey::LeaveGroup => crate::groups::membership::leave_group(broker, &mut request).await,
        ApiKey::DescribeGroups => crate::groups::membership::describe_groups(broker, &mut request).await,
        ApiKey::ListGroups => crate::groups::membership::list_groups(broker, &mut request).await,
        ApiKey::DeleteGroups => crate::groups::membership::delete_groups(broker, &mut request).await,
        ApiKey::OffsetCommit => crate::groups::offsets::offset_commit(broker, &mut request).await,
        ApiKey::OffsetFetch => crate::groups::offsets::offset_fetch(broker, &mut request).await,
        ApiKey::TxnOffsetCommit => crate::groups::offsets::txn_offset_commit(broker, &mut request).await,
        ApiKey::AddPartitionsToTxn => crate::transactions::api::add_partitions_to_txn(broker, &mut request).await,
        ApiKey::AddOffsetsToTxn => crate::transactions::api::add_offsets_to_txn(broker, &mut request).await,
        ApiKey::EndTxn => crate::transactions::api::end_txn(broker, &mut request).await,
        other => Err(Malformed::new(format!("{other:?} is not served"))),
    }
}

/// Where a partition's leader is, as this node knows it.
pub(crate) struct LeaderView {
    /// Broker id of the leader, -1 when unknown.
    pub leader_id: i32,
    /// Kafka leader epoch (the Raft term), -1 when unknown.
    pub leader_epoch: i32,
}

impl Broker {
    /// The leader of a partition: from the local replica when this node holds one, else as a
    /// replica last told this node ([`Broker::learn_leaders`]); unknown (-1) otherwise. Naming
    /// a guess made clients flap between leaders and re-validate their positions (librdkafka
    /// then skipped records, docs/jepsen.md).
    pub fn leader_view(&self, topic: &str, info: &PartitionInfo) -> LeaderView {
        match self.cluster.partition_status(topic, info.partition) {
            Some(status) => LeaderView {
                leader_id: status.leader.map_or(-1, |n| n.0 as i32),
                leader_epoch: if status.leader.is_some() { status.leader_epoch as i32 } else { -1 },
            },
            None => self.remote_leaders.known(topic, info.partition),
        }
    }

    /// Asks replicas of `topic`'s partitions this node does not hold who leads them, unless
    /// the answers cached are recent (see [`crate::leaders::RemoteLeaders`]).
    pub async fn learn_leaders(&self, topic: &str) {
        self.remote_leaders.refresh(self, topic).await
    }
}

/// Raft entries a follower may be behind and still count as in sync.
const IN_SYNC_LAG_ENTRIES_MAX: u64 = 1000;

impl Broker {
    /// The in-sync replicas: on the leader, itself and the voters at most
    /// [`IN_SYNC_LAG_ENTRIES_MAX`] entries behind; elsewhere, every replica (unknown here).
    pub fn in_sync_replicas(&self, topic: &str, info: &PartitionInfo) -> Vec<NodeId> {
        let me = self.cluster.node_id();
        match self.cluster.partition_status(topic, info.partition) {
            Some(status) if status.leader == Some(me) => {
                let lag = self.cluster.follower_lag();
                let voters = if status.voters.is_empty() { &info.replicas } else { &status.voters };
                voters
                    .iter()
                    .copied()
                    .filter(|node| {
                        *node == me || lag.get(&(info.group, *node)).is_some_and(|l| *l <= IN_SYNC_LAG_ENTRIES_MAX)
                    })
                    .collect()
            }
            _ => info.replicas.clone(),
        }
    }
}

/// `host:port` split for Kafka's broker lists; `None` when it does not parse.
pub(crate) fn host_and_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port as i32))
}

/// The catalog's endpoint name for a node's Kafka address (`NodeInfo::endpoints`).
pub const ENDPOINT: &str = "kafka";
