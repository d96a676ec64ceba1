//! `Cluster`: the one narrow handle through which the server and the façades use the cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use log_store::batch;
use log_store::{LogReader, Offset};
use tokio::sync::{oneshot, watch};

use crate::catalog::{Catalog, Command, TopicConfig, TopicInfo};
use crate::error::{Error, Result};
use crate::ids::{GroupId, NodeId, METADATA_GROUP};
use crate::partition::PartitionHandle;
use crate::producers::AbortedTxn;
use crate::store::{try_send, Applied, StoreMsg};

/// How long a proposal may wait for its commit before the caller hears `Timeout`.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest long-poll a fetch may ask for.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

/// State shared by the store loop and every `Cluster` handle.
pub(crate) struct Shared {
    pub node_id: NodeId,
    pub catalog: RwLock<Catalog>,
    pub partitions: RwLock<HashMap<(String, u32), Arc<PartitionHandle>>>,
    pub metadata_leader: AtomicU64,
    pub inbox: Sender<StoreMsg>,
    pub peers: BTreeMap<NodeId, String>,
    /// Where node-to-node connections go instead of the advertised address (`dial_via`).
    pub dial_via: BTreeMap<u64, String>,
    /// Index of the last metadata entry applied to `catalog` (what a metadata snapshot holds).
    pub metadata_applied: AtomicU64,
    /// The last metadata index cut from this node's Raft log (compacted, or covered by an
    /// installed snapshot).
    pub metadata_truncated: AtomicU64,
    /// The metadata group's voters as this node last applied them.
    pub metadata_voters: RwLock<Vec<u64>>,
    pub stopped: AtomicBool,
    /// Why the store loop stopped on its own: a write to this node's storage failed (a full
    /// disk, an I/O error) or the loop panicked. `None` while it runs or after a shutdown.
    pub failure: tokio::sync::watch::Sender<Option<String>>,
    /// The first partition-log write failure of the loop's current iteration, kept until the
    /// loop stops on it and publishes it as `failure`.
    pub storage_error: std::sync::Mutex<Option<String>>,
    /// Entries each follower is behind, for groups this node leads: (group, follower) → lag.
    pub follower_lag: RwLock<BTreeMap<(GroupId, NodeId), u64>>,
    pub topic_defaults: TopicDefaults,
}

/// What a topic gets for the settings its config leaves unset (this node's configuration).
#[derive(Clone, Copy, Debug)]
pub struct TopicDefaults {
    /// Segment size of partition logs.
    pub segment_bytes: u64,
    /// Largest record batch accepted.
    pub batch_bytes_max: usize,
}

impl Shared {
    /// The address of a node's native API, from the catalog or the configured peers.
    pub(crate) fn address_of(&self, node: NodeId) -> Option<String> {
        let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
        catalog.nodes.get(&node).map(|n| n.address.clone()).or_else(|| self.peers.get(&node).cloned())
    }

    /// Where this node connects to reach `node`: its `dial_via` override, else its address.
    pub(crate) fn dial_address(&self, node: NodeId) -> Option<String> {
        self.dial_via.get(&node.0).cloned().or_else(|| self.address_of(node))
    }

    /// The local replica of a partition group.
    pub(crate) fn partition_by_group(&self, group: u64) -> Option<Arc<PartitionHandle>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.values().find(|handle| handle.group.0 == group).cloned()
    }
}

/// Whole batches read from a partition, with the partition's bounds at the time of the read.
#[derive(Clone, Debug)]
pub struct FetchResult {
    /// Whole RecordBatch v2 batches.
    pub batches: Bytes,
    /// Next offset after the last committed record.
    pub high_watermark: Offset,
    /// First readable offset.
    pub log_start_offset: Offset,
}

/// What this node knows of a local partition replica.
#[derive(Clone, Debug)]
pub struct PartitionStatus {
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// The Raft term the leader was learnt in (Kafka's leader epoch).
    pub leader_epoch: u64,
    /// The group's voters as this replica last applied them.
    pub voters: Vec<NodeId>,
    /// The first Raft index this replica keeps since it last trimmed its Raft log; 0 before.
    pub raft_first_index: u64,
    /// First readable offset.
    pub log_start_offset: Offset,
    /// Next offset after the last committed record.
    pub high_watermark: Offset,
}

/// A cheap, cloneable handle on this node's view of the cluster.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

impl Cluster {
    pub(crate) fn new(shared: Arc<Shared>) -> Cluster {
        Cluster { shared }
    }

    /// The settings a topic gets where its config is silent.
    pub fn topic_defaults(&self) -> TopicDefaults {
        self.shared.topic_defaults
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The address of a node's native API, from the catalog or the configured peers.
    pub fn address_of(&self, node: NodeId) -> Option<String> {
        self.shared.address_of(node)
    }

    /// Where this node connects to reach another node's native API (node-to-node traffic):
    /// the configured `dial_via` override, else the node's advertised address.
    pub fn dial_address(&self, node: NodeId) -> Option<String> {
        self.shared.dial_address(node)
    }

    /// A copy of the replicated catalog as this node has applied it.
    pub fn catalog(&self) -> Catalog {
        self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the catalog in place (no copy), for callers that need a little of it often.
    pub fn with_catalog<R>(&self, read: impl FnOnce(&Catalog) -> R) -> R {
        read(&self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The last metadata-log index this node's Raft log no longer holds (cut by compaction or
    /// covered by an installed snapshot); its catalog image is as of there.
    pub fn metadata_truncated_index(&self) -> u64 {
        self.shared.metadata_truncated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The metadata group's voters as this node last applied them (a removed node is gone
    /// from here once its removal is committed).
    pub fn metadata_voters(&self) -> Vec<NodeId> {
        self.shared.metadata_voters.read().unwrap_or_else(|p| p.into_inner()).iter().copied().map(NodeId).collect()
    }

    /// The metadata group's leader as this node knows it.
    pub fn metadata_leader(&self) -> Option<NodeId> {
        Some(self.shared.metadata_leader.load(Ordering::Acquire)).filter(|id| *id != 0).map(NodeId)
    }

    /// Whether the store loop has stopped (shutdown or a fatal Raft log store error).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Resolves, with the reason, once the store loop has stopped because this node's storage
    /// failed (see [`Shared::failure`]); never after a clean shutdown. The node cannot take part
    /// in replication any more: the caller should stop the process, as a Kafka broker does when
    /// its log directory fails, so clients and peers turn to the other nodes.
    pub async fn storage_failed(&self) -> String {
        let mut failure = self.shared.failure.subscribe();
        let reason = failure.wait_for(Option::is_some).await.map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The sender lives in `Shared`, which this handle keeps alive.
            Err(_) => std::future::pending().await,
        }
    }

    /// Status of a partition replica held by this node, `None` if it holds none.
    pub fn partition_status(&self, topic: &str, partition: u32) -> Option<PartitionStatus> {
        let handle = self.local(topic, partition)?;
        let high_watermark = Offset(*handle.high_watermark.borrow());
        let voters = handle.voters.read().unwrap_or_else(|p| p.into_inner()).clone();
        Some(PartitionStatus {
            leader: handle.leader(),
            leader_epoch: handle.leader_term.load(Ordering::Acquire),
            voters,
            raft_first_index: handle.raft_first_index.load(Ordering::Acquire),
            log_start_offset: handle.reader.log_start_offset(),
            high_watermark,
        })
    }

    /// How many Raft entries each follower is behind, for the groups this node leads.
    pub fn follower_lag(&self) -> BTreeMap<(GroupId, NodeId), u64> {
        self.shared.follower_lag.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Groups this node currently leads (metadata included).
    pub fn leader_count(&self) -> usize {
        let me = self.shared.node_id;
        let partitions = self.shared.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.values().filter(|h| h.leader() == Some(me)).count() + usize::from(self.metadata_leader() == Some(me))
    }

    /// Appends one RecordBatch v2 to a partition this node leads. Completes when the batch is
    /// committed by a majority and applied here, with the offsets it got.
    pub async fn append(&self, topic: &str, partition: u32, batch_bytes: Bytes) -> Result<(Offset, Offset)> {
        self.start_append(topic, partition, batch_bytes)?.await
    }

    /// [`Cluster::append`] in two steps: the batch is checked and proposed before this returns,
    /// so appends started one after the other reach the Raft log in that order (what Kafka
    /// promises for requests pipelined on one connection); the future completes as `append`.
    pub fn start_append(
        &self,
        topic: &str,
        partition: u32,
        batch_bytes: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<(Offset, Offset)>> + Send + 'static> {
        let handle = self.leading(topic, partition)?;
        let batch_bytes_max = handle.batch_bytes_max.load(std::sync::atomic::Ordering::Acquire);
        if batch_bytes.len() > batch_bytes_max {
            return Err(Error::Log(log_store::Error::BatchTooLarge { size: batch_bytes.len(), max: batch_bytes_max }));
        }
        batch::validate(&batch_bytes, handle.validation())?;
        let applied = self.start_proposal(handle.group, batch_bytes)?;
        Ok(async move {
            match applied.await? {
                Applied::Offsets(base, last) => Ok((base, last)),
                other => Err(Error::Engine(format!("unexpected apply result {other:?}"))),
            }
        })
    }

    /// Reads whole batches from `from` on a partition this node leads, waiting up to `max_wait`
    /// for data when there is none yet (woken by the commit, not by polling).
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<FetchResult> {
        let handle = self.leading(topic, partition)?;
        let mut watermark = handle.high_watermark.subscribe();
        let deadline = tokio::time::Instant::now() + max_wait.min(FETCH_WAIT_MAX);
        loop {
            let high_watermark = Offset(*watermark.borrow_and_update());
            if from < high_watermark || tokio::time::Instant::now() >= deadline {
                let batches = if from < high_watermark || from != handle.reader.next_offset() {
                    handle.reader.read(from, max_bytes)?
                } else {
                    Bytes::new()
                };
                return Ok(FetchResult { batches, high_watermark, log_start_offset: handle.reader.log_start_offset() });
            }
            if from > high_watermark {
                return Err(Error::Log(log_store::Error::OffsetOutOfRange {
                    offset: from,
                    log_start_offset: handle.reader.log_start_offset(),
                    next_offset: high_watermark,
                }));
            }
            if tokio::time::timeout_at(deadline, watermark.changed()).await.is_ok_and(|changed| changed.is_err()) {
                return Err(Error::Stopped);
            }
        }
    }

    /// The last stable offset and the aborted transactions of a partition this node leads
    /// (what `read_committed` readers need).
    pub fn transactions(&self, topic: &str, partition: u32) -> Result<(u64, Arc<Vec<AbortedTxn>>)> {
        let handle = self.leading(topic, partition)?;
        // The LSO first: the aborted list is published before it (see `publish_transactions`),
        // so every aborted transaction below this LSO is in the list read next.
        let stable = handle.last_stable_offset.load(Ordering::Acquire);
        let aborted = handle.aborted.read().unwrap_or_else(|p| p.into_inner()).clone();
        Ok((stable, aborted))
    }

    /// A read handle on a partition this node leads, and a watch of its high watermark that
    /// changes on every apply (for long-poll fetches spanning several partitions).
    pub fn leader_reader(&self, topic: &str, partition: u32) -> Result<(LogReader, watch::Receiver<u64>)> {
        let handle = self.leading(topic, partition)?;
        Ok((handle.reader.clone(), handle.high_watermark.subscribe()))
    }

    /// Creates a topic (this node must lead the metadata group). Completes once the catalog
    /// change is committed; the partition groups then elect their leaders.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        let command = Command::CreateTopic { name: name.to_string(), partitions, replication_factor, config };
        match self.propose_metadata(command).await? {
            Applied::Topic(topic) => Ok(topic),
            other => Err(Error::Engine(format!("unexpected apply result {other:?}"))),
        }
    }

    /// Grows a topic to `count` partitions; completes once the catalog records them.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicInfo> {
        match self.propose_metadata(Command::AddPartitions { name: name.to_string(), count }).await? {
            Applied::Topic(topic) => Ok(topic),
            other => Err(Error::Engine(format!("unexpected apply result {other:?}"))),
        }
    }

    /// Replaces a topic's settings; every replica adopts them when it applies the change.
    pub async fn alter_topic_config(&self, name: &str, config: TopicConfig) -> Result<()> {
        self.propose_metadata(Command::AlterTopicConfig { name: name.to_string(), config }).await.map(|_| ())
    }

    /// Deletes a topic and every replica of its partitions.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.propose_metadata(Command::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    /// Adds a node to the cluster (it must have been started with `join`). Completes once the
    /// catalog records it; the metadata leader then makes it a voter of the metadata group.
    pub async fn add_node(&self, id: NodeId, address: String) -> Result<()> {
        self.propose_metadata(Command::AddNode { id, address }).await.map(|_| ())
    }

    /// Records where a node's protocol listeners (`kafka`, …) are reached by clients.
    pub async fn set_endpoints(&self, id: NodeId, endpoints: BTreeMap<String, String>) -> Result<()> {
        self.propose_metadata(Command::SetEndpoints { id, endpoints }).await.map(|_| ())
    }

    /// Hands out `count` producer ids no one else gets; returns the first.
    pub async fn allocate_producer_ids(&self, count: u32) -> Result<i64> {
        match self.propose_metadata(Command::AllocateProducerIds { count }).await? {
            Applied::ProducerIds(first) => Ok(first),
            other => Err(Error::Engine(format!("unexpected apply result {other:?}"))),
        }
    }

    /// Removes a node: its replicas are reassigned at once and the groups' leaders move them
    /// with joint-consensus conf changes; then it leaves the metadata group.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.propose_metadata(Command::RemoveNode { id }).await.map(|_| ())
    }

    /// Evens out replicas and preferred leaders over the active nodes; returns how many
    /// partitions' placement changed. The groups' leaders then move the replicas with
    /// joint-consensus conf changes, the preferred replicas take leadership over, and nodes
    /// drop the replicas moved away once their groups no longer count them.
    pub async fn rebalance(&self) -> Result<usize> {
        match self.propose_metadata(Command::Rebalance).await? {
            Applied::Moved(count) => Ok(count),
            other => Err(Error::Engine(format!("unexpected apply result {other:?}"))),
        }
    }

    /// The voters of a local replica's group as this node last applied them.
    pub fn partition_voters(&self, topic: &str, partition: u32) -> Option<Vec<NodeId>> {
        self.local(topic, partition).map(|handle| handle.voters.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Hands the leadership of every group this node leads to another voter and waits (up to
    /// `timeout`) until they have a new leader, so a graceful stop costs clients no election
    /// timeout.
    pub async fn hand_off_leadership(&self, timeout: Duration) {
        let (reply, handed) = oneshot::channel();
        if try_send(&self.shared.inbox, StoreMsg::HandOffLeadership(reply)).is_err() {
            return;
        }
        let Ok(groups) = handed.await else { return };
        let me = self.shared.node_id;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let still_leading = groups.iter().any(|group| {
                if GroupId(*group) == METADATA_GROUP {
                    self.metadata_leader() == Some(me)
                } else {
                    self.shared.partition_by_group(*group).is_some_and(|h| h.leader() == Some(me))
                }
            });
            if !still_leading {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the store loop after flushing every partition log.
    pub async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if try_send(&self.shared.inbox, StoreMsg::Shutdown(done)).is_ok() {
            let _ = stopped.await;
        }
    }

    async fn propose_metadata(&self, command: Command) -> Result<Applied> {
        if self.metadata_leader() != Some(self.shared.node_id) {
            return Err(Error::NotLeader { leader: self.metadata_leader() });
        }
        self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).check(&command)?;
        let data = self.shared.propose_command(&command)?;
        self.propose(METADATA_GROUP, data.into()).await
    }

    async fn propose(&self, group: GroupId, data: Bytes) -> Result<Applied> {
        self.start_proposal(group, data)?.await
    }

    /// Hands a proposal to the store loop now; the future waits for its outcome.
    fn start_proposal(
        &self,
        group: GroupId,
        data: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<Applied>> + Send + 'static> {
        let (reply, applied) = oneshot::channel();
        try_send(&self.shared.inbox, StoreMsg::Propose { group, data, reply })?;
        Ok(async move {
            match tokio::time::timeout(PROPOSAL_TIMEOUT, applied).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Stopped),
                Err(_) => Err(Error::Timeout),
            }
        })
    }

    fn local(&self, topic: &str, partition: u32) -> Option<Arc<PartitionHandle>> {
        self.shared.partitions.read().unwrap_or_else(|p| p.into_inner()).get(&(topic.to_string(), partition)).cloned()
    }

    /// The local replica if this node leads it; otherwise the error saying who does.
    fn leading(&self, topic: &str, partition: u32) -> Result<Arc<PartitionHandle>> {
        match self.local(topic, partition) {
            Some(handle) if handle.leader() == Some(self.shared.node_id) => Ok(handle),
            Some(handle) => Err(Error::NotLeader { leader: handle.leader() }),
            None => {
                let catalog = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner());
                let info = catalog.partition(topic, partition)?;
                // Not a replica here: point at the preferred leader, which forwards if need be.
                Err(Error::NotLeader { leader: info.replicas.first().copied() })
            }
        }
    }
}
