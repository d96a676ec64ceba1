//! The catalog: the metadata group's state machine (nodes, topics, partition placement).
//!
//! Commands are JSON in Raft entries of the metadata group; every node applies them in the same
//! order, so every node's catalog is the same after the same index. Placement is computed at
//! apply time from the catalog alone, so it is deterministic too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{GroupId, NodeId, FIRST_PARTITION_GROUP};

/// Largest partition count of one topic.
pub(crate) const PARTITIONS_MAX: u32 = 10_000;

/// Largest block of producer ids handed out at once.
pub(crate) const PRODUCER_ID_BLOCK_MAX: u32 = 1_000_000;

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// `host:port` of its native gRPC listener.
    pub address: String,
    /// Removed nodes hold no replicas and take no part in placement.
    pub removed: bool,
    /// `host:port` of its protocol listeners by protocol name (`kafka`, …), as clients reach
    /// them; each node registers its own once it runs.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
}

/// Per-topic settings, Kafka's names in snake case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Delete segments older than this.
    pub retention_ms: Option<i64>,
    /// Delete the oldest segments past this size per partition.
    pub retention_bytes: Option<u64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// Key compaction instead of deletion.
    pub compacted: bool,
    /// Replicas that must hold an append before it is acknowledged (Raft: a majority always does).
    pub min_insync_replicas: Option<u32>,
    /// Largest batch accepted.
    pub max_message_bytes: Option<u32>,
}

impl From<&TopicConfig> for proto::v1::TopicConfig {
    /// The native API's form of the settings.
    fn from(config: &TopicConfig) -> Self {
        proto::v1::TopicConfig {
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: config.segment_bytes,
            compacted: config.compacted,
            min_insync_replicas: config.min_insync_replicas,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

impl From<&proto::v1::TopicConfig> for TopicConfig {
    /// The settings as the native API sends them.
    fn from(config: &proto::v1::TopicConfig) -> Self {
        TopicConfig {
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: config.segment_bytes,
            compacted: config.compacted,
            min_insync_replicas: config.min_insync_replicas,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

/// One partition and where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition number within the topic.
    pub partition: u32,
    /// Its Raft group.
    pub group: GroupId,
    /// Nodes holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
}

impl PartitionInfo {
    /// The ids of the nodes it is placed on, in placement order.
    pub(crate) fn node_ids(&self) -> Vec<u64> {
        self.replicas.iter().map(|n| n.0).collect()
    }
}

/// A topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Settings.
    pub config: TopicConfig,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Partitions in order.
    pub partitions: Vec<PartitionInfo>,
}

/// A change to the catalog, as proposed to the metadata group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Command {
    /// The first entry of a new cluster: its initial members.
    Bootstrap {
        nodes: Vec<NodeInfo>,
        /// The cluster's id, chosen once by the node that founds it.
        #[serde(default)]
        cluster_id: String,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    },
    DeleteTopic {
        name: String,
    },
    AddNode {
        id: NodeId,
        address: String,
    },
    /// Moves the node's replicas to other nodes and takes it out of the metadata group.
    RemoveNode {
        id: NodeId,
    },
    /// Records where a node's protocol listeners are reached.
    SetEndpoints {
        id: NodeId,
        endpoints: BTreeMap<String, String>,
    },
    /// Grows a topic to `count` partitions (Kafka's CreatePartitions).
    AddPartitions {
        name: String,
        count: u32,
    },
    /// Replaces a topic's settings.
    AlterTopicConfig {
        name: String,
        config: TopicConfig,
    },
    /// Hands out a block of producer ids (Kafka's idempotent and transactional producers).
    AllocateProducerIds {
        count: u32,
    },
    /// Evens out replicas and preferred leaders over the active nodes (after nodes were added).
    Rebalance,
}

/// What applying a command changed, for the store loop to act on.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    Bootstrapped,
    /// The whole catalog was replaced by a metadata snapshot (a node that joined, or was
    /// re-added after being wiped): connect to every node, create the local replicas.
    Restored,
    TopicCreated(TopicInfo),
    TopicDeleted(TopicInfo),
    /// The topic grew; its new partitions' replicas are to be created.
    PartitionsAdded(TopicInfo),
    /// The topic's settings changed; local replicas adopt them.
    TopicConfigChanged(TopicInfo),
    NodeAdded(NodeInfo),
    EndpointsSet,
    /// Producer ids `first..first + count` are now owned by whoever asked.
    ProducerIdsAllocated {
        first: i64,
    },
    /// A node was removed; these partitions got a new replica in its place.
    NodeRemoved {
        id: NodeId,
        moved: Vec<(String, PartitionInfo)>,
    },
    /// Replicas or preferred leaders moved to even out the load; each partition listed has its
    /// new placement.
    Rebalanced {
        moved: Vec<(String, PartitionInfo)>,
    },
}

/// The replicated catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// The id the next partition group gets.
    pub next_group: u64,
    /// The cluster's id (Kafka's `cluster.id`), fixed at bootstrap.
    #[serde(default)]
    pub cluster_id: String,
    /// The first producer id not handed out yet.
    #[serde(default)]
    pub next_producer_id: i64,
}

impl Catalog {
    /// An empty catalog: nodes arrive with the `Bootstrap` command, the metadata log's first.
    pub(crate) fn new() -> Catalog {
        Catalog {
            nodes: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_group: FIRST_PARTITION_GROUP,
            cluster_id: String::new(),
            next_producer_id: 0,
        }
    }

    /// Nodes that may hold replicas, in id order.
    pub fn active_nodes(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|node| !node.removed).map(|node| node.id).collect()
    }

    /// Checks a command without applying it (the leader refuses bad requests early).
    pub(crate) fn check(&self, command: &Command) -> Result<()> {
        self.clone().apply(command).map(|_| ())
    }

    /// Applies a committed command. Errors leave the catalog unchanged on every node alike.
    pub(crate) fn apply(&mut self, command: &Command) -> Result<Change> {
        match command {
            Command::Bootstrap { nodes, cluster_id } => {
                if !self.nodes.is_empty() {
                    return Err(Error::InvalidRequest("the cluster is already bootstrapped".into()));
                }
                self.nodes = nodes.iter().map(|node| (node.id, node.clone())).collect();
                self.cluster_id = cluster_id.clone();
                Ok(Change::Bootstrapped)
            }
            Command::AddNode { id, address } => {
                if id.0 == 0 {
                    return Err(Error::InvalidRequest("node id 0 is reserved".into()));
                }
                if self.nodes.get(id).is_some_and(|node| !node.removed) {
                    return Err(Error::InvalidRequest(format!("node {id} is already a member")));
                }
                let node = NodeInfo { id: *id, address: address.clone(), removed: false, endpoints: BTreeMap::new() };
                self.nodes.insert(*id, node.clone());
                Ok(Change::NodeAdded(node))
            }
            Command::RemoveNode { id } => self.remove_node(*id),
            Command::Rebalance => self.rebalance(),
            Command::SetEndpoints { id, endpoints } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .filter(|node| !node.removed)
                    .ok_or_else(|| Error::InvalidRequest(format!("node {id} is not an active member")))?;
                node.endpoints = endpoints.clone();
                Ok(Change::EndpointsSet)
            }
            Command::AllocateProducerIds { count } => {
                if *count == 0 || *count > PRODUCER_ID_BLOCK_MAX {
                    return Err(Error::InvalidRequest(format!("producer id blocks hold 1..={PRODUCER_ID_BLOCK_MAX}")));
                }
                let first = self.next_producer_id;
                self.next_producer_id += *count as i64;
                Ok(Change::ProducerIdsAllocated { first })
            }
            Command::CreateTopic { name, partitions, replication_factor, config } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(Error::TopicExists(name.clone()));
                }
                if *partitions == 0 || *partitions > PARTITIONS_MAX {
                    return Err(Error::InvalidRequest(format!("partitions must be 1..={PARTITIONS_MAX}")));
                }
                if self.nodes.is_empty() {
                    return Err(Error::NotReady);
                }
                let nodes = self.active_nodes();
                let node_count = nodes.len() as u32;
                let replication_factor = match *replication_factor {
                    0 => node_count.min(3),
                    rf if rf > node_count => {
                        return Err(Error::InvalidRequest(format!(
                            "replication factor {rf} is larger than the {node_count} nodes of the cluster"
                        )))
                    }
                    rf => rf,
                };
                // Spread replicas and preferred leaders: partition p of a topic starts at a
                // node offset by the topic's position among groups, then by p.
                let start = (self.next_group - FIRST_PARTITION_GROUP) as usize;
                let partitions = (0..*partitions)
                    .map(|partition| {
                        let first = (start + partition as usize) % nodes.len();
                        let replicas =
                            (0..replication_factor as usize).map(|i| nodes[(first + i) % nodes.len()]).collect();
                        let group = GroupId(self.next_group + partition as u64);
                        PartitionInfo { partition, group, replicas }
                    })
                    .collect::<Vec<_>>();
                self.next_group += partitions.len() as u64;
                let topic = TopicInfo { name: name.clone(), config: config.clone(), replication_factor, partitions };
                self.topics.insert(name.clone(), topic.clone());
                Ok(Change::TopicCreated(topic))
            }
            Command::AddPartitions { name, count } => self.add_partitions(name, *count),
            Command::AlterTopicConfig { name, config } => {
                let topic = self.topics.get_mut(name).ok_or_else(|| Error::UnknownTopic(name.clone()))?;
                topic.config = config.clone();
                Ok(Change::TopicConfigChanged(topic.clone()))
            }
            Command::DeleteTopic { name } => {
                let topic = self.topics.remove(name).ok_or_else(|| Error::UnknownTopic(name.clone()))?;
                Ok(Change::TopicDeleted(topic))
            }
        }
    }

    /// New partitions for a topic, placed like a new topic's (spread from the next group on).
    fn add_partitions(&mut self, name: &str, count: u32) -> Result<Change> {
        let nodes = self.active_nodes();
        let topic = self.topics.get(name).ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
        let existing = topic.partitions.len() as u32;
        if count <= existing {
            return Err(Error::InvalidRequest(format!(
                "topic {name:?} has {existing} partitions: the new count must be larger, got {count}"
            )));
        }
        if count > PARTITIONS_MAX {
            return Err(Error::InvalidRequest(format!("partitions must be 1..={PARTITIONS_MAX}")));
        }
        if topic.replication_factor as usize > nodes.len() {
            return Err(Error::InvalidRequest(format!(
                "replication factor {} is larger than the {} active nodes",
                topic.replication_factor,
                nodes.len()
            )));
        }
        let start = (self.next_group - FIRST_PARTITION_GROUP) as usize;
        let added: Vec<PartitionInfo> = (existing..count)
            .enumerate()
            .map(|(i, partition)| {
                let first = (start + i) % nodes.len();
                let replicas =
                    (0..topic.replication_factor as usize).map(|r| nodes[(first + r) % nodes.len()]).collect();
                PartitionInfo { partition, group: GroupId(self.next_group + i as u64), replicas }
            })
            .collect();
        self.next_group += added.len() as u64;
        let topic = self.topics.get_mut(name).expect("checked above");
        topic.partitions.extend(added);
        Ok(Change::PartitionsAdded(topic.clone()))
    }

    /// Marks a node removed and gives each of its replicas to the least-loaded active node that
    /// does not hold one of that partition yet.
    fn remove_node(&mut self, id: NodeId) -> Result<Change> {
        match self.nodes.get(&id) {
            Some(node) if !node.removed => {}
            _ => return Err(Error::InvalidRequest(format!("node {id} is not an active member"))),
        }
        let remaining: Vec<NodeId> = self.active_nodes().into_iter().filter(|n| *n != id).collect();
        if remaining.is_empty() {
            return Err(Error::InvalidRequest("cannot remove the last node".into()));
        }
        let widest = self.topics.values().map(|t| t.replication_factor).max().unwrap_or(0) as usize;
        if widest > remaining.len() {
            return Err(Error::InvalidRequest(format!(
                "a topic has {widest} replicas per partition; removing node {id} would leave only {} nodes",
                remaining.len()
            )));
        }
        let mut load: BTreeMap<NodeId, usize> = remaining.iter().map(|n| (*n, 0)).collect();
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            for replica in &partition.replicas {
                if let Some(count) = load.get_mut(replica) {
                    *count += 1;
                }
            }
        }
        let mut moved = Vec::new();
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                let Some(slot) = partition.replicas.iter().position(|r| *r == id) else { continue };
                let replacement = load
                    .iter()
                    .filter(|(node, _)| !partition.replicas.contains(node))
                    .min_by_key(|(node, count)| (**count, **node))
                    .map(|(node, _)| *node)
                    .expect("enough nodes were checked above");
                *load.get_mut(&replacement).expect("listed") += 1;
                partition.replicas[slot] = replacement;
                moved.push((topic.name.clone(), partition.clone()));
            }
        }
        self.nodes.get_mut(&id).expect("checked above").removed = true;
        Ok(Change::NodeRemoved { id, moved })
    }

    /// Moves replicas from the most to the least loaded active node until replica counts differ
    /// by at most one, then reorders replicas until preferred-leader counts do too (that moves
    /// no data: the leaders hand leadership over). Follower replicas move before preferred
    /// leaders; a moved replica keeps its slot.
    fn rebalance(&mut self) -> Result<Change> {
        let nodes = self.active_nodes();
        if nodes.is_empty() {
            return Err(Error::NotReady);
        }
        let mut moved: BTreeMap<(String, u32), PartitionInfo> = BTreeMap::new();
        let mut load = self.load(|replicas| replicas.to_vec(), &nodes);
        // Follower replicas move first, so partitions keep their preferred leaders if they can.
        for move_leaders in [false, true] {
            let slot_of = |replicas: &[NodeId], from: NodeId, to: NodeId| {
                let slot = replicas.iter().position(|r| *r == from)?;
                (!replicas.contains(&to) && (move_leaders || slot > 0)).then_some(slot)
            };
            while let Some((from, to, topic, partition, slot)) = self.next_move(&load, slot_of) {
                let info = &mut self.topics.get_mut(&topic).expect("found").partitions[partition as usize];
                info.replicas[slot] = to;
                *load.get_mut(&from).expect("active") -= 1;
                *load.get_mut(&to).expect("active") += 1;
                moved.insert((topic, partition), info.clone());
            }
        }
        let mut leaders = self.load(|replicas| replicas[..1].to_vec(), &nodes);
        let leader_swap = |replicas: &[NodeId], from: NodeId, to: NodeId| {
            (replicas.first() == Some(&from)).then(|| replicas.iter().position(|r| *r == to)).flatten()
        };
        while let Some((from, to, topic, partition, slot)) = self.next_move(&leaders, leader_swap) {
            let info = &mut self.topics.get_mut(&topic).expect("found").partitions[partition as usize];
            info.replicas.swap(0, slot);
            *leaders.get_mut(&from).expect("active") -= 1;
            *leaders.get_mut(&to).expect("active") += 1;
            moved.insert((topic, partition), info.clone());
        }
        Ok(Change::Rebalanced { moved: moved.into_iter().map(|((topic, _), info)| (topic, info)).collect() })
    }

    /// Per active node, how many of the nodes `pick` names over every partition's replicas.
    fn load(&self, pick: impl Fn(&[NodeId]) -> Vec<NodeId>, nodes: &[NodeId]) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            for node in pick(&partition.replicas) {
                if let Some(count) = load.get_mut(&node) {
                    *count += 1;
                }
            }
        }
        load
    }

    /// The next step of a rebalance: a pair of nodes whose counts in `load` differ by more than
    /// one (the widest gap first, lowest ids on ties) and the first partition (topic name, then
    /// partition order) where `slot_of` finds a slot to move from one to the other. Each step
    /// narrows the spread, so a rebalance ends.
    fn next_move(
        &self,
        load: &BTreeMap<NodeId, usize>,
        slot_of: impl Fn(&[NodeId], NodeId, NodeId) -> Option<usize>,
    ) -> Option<(NodeId, NodeId, String, u32, usize)> {
        let mut pairs: Vec<(usize, NodeId, NodeId)> = load
            .iter()
            .flat_map(|(from, high)| {
                load.iter().filter(move |(_, low)| *high > **low + 1).map(move |(to, low)| (high - low, *from, *to))
            })
            .collect();
        pairs.sort_by_key(|(gap, from, to)| (std::cmp::Reverse(*gap), *from, *to));
        pairs.into_iter().find_map(|(_, from, to)| {
            self.topics.values().find_map(|topic| {
                topic.partitions.iter().find_map(|p| {
                    slot_of(&p.replicas, from, to).map(|slot| (from, to, topic.name.clone(), p.partition, slot))
                })
            })
        })
    }

    /// The partition whose Raft group is `group`, if any topic has it.
    pub(crate) fn partition_by_group(&self, group: u64) -> Option<&PartitionInfo> {
        self.topics.values().flat_map(|t| &t.partitions).find(|p| p.group.0 == group)
    }

    /// The nodes a partition group is placed on; empty if no topic has it (any more).
    pub(crate) fn placement(&self, group: u64) -> Vec<u64> {
        self.partition_by_group(group).map(PartitionInfo::node_ids).unwrap_or_default()
    }

    /// The partition of a topic.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<&PartitionInfo> {
        let info = self.topics.get(topic).ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        info.partitions
            .get(partition as usize)
            .ok_or_else(|| Error::UnknownPartition { topic: topic.to_string(), partition })
    }
}

/// Kafka's rule: 1–249 characters of `[a-zA-Z0-9._-]`, not "." or "..".
fn validate_topic_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() < 250
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("invalid topic name {name:?}: use 1-249 of [a-zA-Z0-9._-]")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(nodes: u64) -> Catalog {
        let mut catalog = Catalog::new();
        let nodes = (1..=nodes).map(|id| NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 9300 + id),
            removed: false,
            endpoints: BTreeMap::new(),
        });
        catalog.apply(&Command::Bootstrap { nodes: nodes.collect(), cluster_id: "test".into() }).unwrap();
        catalog
    }

    fn create(name: &str, partitions: u32, rf: u32) -> Command {
        Command::CreateTopic { name: name.into(), partitions, replication_factor: rf, config: TopicConfig::default() }
    }

    #[test]
    fn placement_spreads_replicas_and_preferred_leaders() {
        let mut catalog = catalog(3);
        let Change::TopicCreated(topic) = catalog.apply(&create("orders", 6, 3)).unwrap() else { panic!() };
        let mut leaders = [0; 4];
        for partition in &topic.partitions {
            assert_eq!(partition.replicas.len(), 3);
            let mut distinct = partition.replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "replicas on distinct nodes");
            leaders[partition.replicas[0].0 as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2], "preferred leaders balanced");
    }

    #[test]
    fn bad_commands_change_nothing() {
        let mut catalog = catalog(3);
        catalog.apply(&create("a", 1, 3)).unwrap();
        let before = catalog.clone();
        assert!(matches!(catalog.apply(&create("a", 1, 1)), Err(Error::TopicExists(_))));
        assert!(matches!(catalog.apply(&create("b", 1, 4)), Err(Error::InvalidRequest(_))));
        assert!(matches!(catalog.apply(&create("b", 0, 1)), Err(Error::InvalidRequest(_))));
        assert!(matches!(catalog.apply(&create("bad/name", 1, 1)), Err(Error::InvalidRequest(_))));
        assert!(matches!(catalog.apply(&Command::DeleteTopic { name: "zz".into() }), Err(Error::UnknownTopic(_))));
        assert_eq!(catalog, before);
        assert_eq!(catalog.apply(&create("c", 2, 0)).map(|_| ()).ok(), Some(()));
        assert_eq!(catalog.topics["c"].replication_factor, 3, "default replication factor is min(3, nodes)");
    }

    #[test]
    fn removing_a_node_moves_each_of_its_replicas_to_a_node_without_one() {
        let mut catalog = catalog(4);
        catalog.apply(&create("t", 8, 3)).unwrap();
        catalog.apply(&Command::AddNode { id: NodeId(5), address: "127.0.0.1:9305".into() }).unwrap();
        let Change::NodeRemoved { moved, .. } = catalog.apply(&Command::RemoveNode { id: NodeId(2) }).unwrap() else {
            panic!()
        };
        assert!(!moved.is_empty());
        for partition in &catalog.topics["t"].partitions {
            assert!(!partition.replicas.contains(&NodeId(2)));
            let mut distinct = partition.replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3);
        }
        assert!(catalog.apply(&Command::RemoveNode { id: NodeId(2) }).is_err(), "already removed");
        catalog.apply(&Command::RemoveNode { id: NodeId(1) }).unwrap();
        assert!(catalog.apply(&Command::RemoveNode { id: NodeId(3) }).is_err(), "would leave two nodes for RF 3");
        assert_eq!(catalog.active_nodes(), vec![NodeId(3), NodeId(4), NodeId(5)]);
    }

    /// Replicas per node and preferred leaders per node, over every partition.
    fn counts(catalog: &Catalog) -> (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>) {
        let nodes = catalog.active_nodes();
        (catalog.load(|r| r.to_vec(), &nodes), catalog.load(|r| r[..1].to_vec(), &nodes))
    }

    #[test]
    fn rebalancing_spreads_replicas_and_leaders_onto_added_nodes() {
        let mut catalog = catalog(3);
        catalog.apply(&create("a", 6, 3)).unwrap();
        catalog.apply(&create("b", 5, 2)).unwrap();
        catalog.apply(&create("c", 1, 1)).unwrap();
        for id in [4, 5] {
            catalog.apply(&Command::AddNode { id: NodeId(id), address: format!("127.0.0.1:930{id}") }).unwrap();
        }
        let before = catalog.clone();
        let (replicas, _) = counts(&catalog);
        assert_eq!((replicas[&NodeId(4)], replicas[&NodeId(5)]), (0, 0), "added nodes start empty");
        let Change::Rebalanced { moved } = catalog.apply(&Command::Rebalance).unwrap() else { panic!() };
        assert!(!moved.is_empty());
        let (replicas, leaders) = counts(&catalog);
        let spread = |load: &BTreeMap<NodeId, usize>| load.values().max().unwrap() - load.values().min().unwrap();
        assert!(spread(&replicas) <= 1, "replicas per node {replicas:?}");
        assert!(spread(&leaders) <= 1, "preferred leaders per node {leaders:?}");
        for (name, topic) in &catalog.topics {
            for (partition, old) in topic.partitions.iter().zip(&before.topics[name].partitions) {
                let mut distinct = partition.replicas.clone();
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), topic.replication_factor as usize, "replicas on distinct nodes");
                assert_eq!(partition.group, old.group);
                let listed = moved.iter().any(|(t, p)| t == name && p.partition == partition.partition);
                assert_eq!(
                    listed,
                    partition.replicas != old.replicas,
                    "{name}/{}: listed iff changed",
                    partition.partition
                );
            }
        }
        let Change::Rebalanced { moved } = catalog.apply(&Command::Rebalance).unwrap() else { panic!() };
        assert!(moved.is_empty(), "a balanced cluster stays as it is");
    }

    #[test]
    fn endpoints_are_recorded_for_active_nodes_only() {
        let mut catalog = catalog(3);
        let endpoints: BTreeMap<String, String> = [("kafka".to_string(), "127.0.0.1:9092".to_string())].into();
        catalog.apply(&Command::SetEndpoints { id: NodeId(2), endpoints: endpoints.clone() }).unwrap();
        assert_eq!(catalog.nodes[&NodeId(2)].endpoints, endpoints);
        assert!(catalog.apply(&Command::SetEndpoints { id: NodeId(9), endpoints: endpoints.clone() }).is_err());
        catalog.apply(&Command::RemoveNode { id: NodeId(3) }).unwrap();
        assert!(catalog.apply(&Command::SetEndpoints { id: NodeId(3), endpoints }).is_err());
    }

    #[test]
    fn added_partitions_get_new_groups_and_spread_replicas() {
        let mut catalog = catalog(3);
        catalog.apply(&create("t", 2, 2)).unwrap();
        let before = catalog.topics["t"].partitions.clone();
        let Change::PartitionsAdded(topic) =
            catalog.apply(&Command::AddPartitions { name: "t".into(), count: 5 }).unwrap()
        else {
            panic!()
        };
        assert_eq!(&topic.partitions[..2], &before[..], "existing partitions are untouched");
        let groups: std::collections::BTreeSet<_> = topic.partitions.iter().map(|p| p.group).collect();
        assert_eq!(groups.len(), 5, "every partition has its own group");
        assert!(topic.partitions.iter().all(|p| p.replicas.len() == 2));
        assert!(catalog.apply(&Command::AddPartitions { name: "t".into(), count: 5 }).is_err(), "must grow");
        assert!(catalog.apply(&Command::AddPartitions { name: "zz".into(), count: 5 }).is_err());
        let config = TopicConfig { retention_ms: Some(5), ..TopicConfig::default() };
        catalog.apply(&Command::AlterTopicConfig { name: "t".into(), config: config.clone() }).unwrap();
        assert_eq!(catalog.topics["t"].config, config);
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut catalog = catalog(1);
        let Change::ProducerIdsAllocated { first: a } =
            catalog.apply(&Command::AllocateProducerIds { count: 1000 }).unwrap()
        else {
            panic!()
        };
        let Change::ProducerIdsAllocated { first: b } =
            catalog.apply(&Command::AllocateProducerIds { count: 10 }).unwrap()
        else {
            panic!()
        };
        assert_eq!((a, b, catalog.next_producer_id), (0, 1000, 1010));
        assert!(catalog.apply(&Command::AllocateProducerIds { count: 0 }).is_err());
    }

    #[test]
    fn catalogs_written_before_endpoints_existed_still_load() {
        let old = r#"{"id":1,"address":"127.0.0.1:9300","removed":false}"#;
        let node: NodeInfo = serde_json::from_str(old).unwrap();
        assert!(node.endpoints.is_empty());
    }
}
