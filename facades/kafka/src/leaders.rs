//! Leaders of partitions this node holds no replica of. Such a node hears nothing of their Raft
//! groups, so it asks a replica (the native DescribeTopic of a node that holds one), keeps the
//! answer for a short while, and answers Metadata and FindCoordinator with what it learnt —
//! or with "leader unknown", never with a guess.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use replication::NodeId;

use crate::broker::{Broker, LeaderView};

/// How long an answer is trusted.
const FRESH_FOR: Duration = Duration::from_millis(500);
/// How long one question may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What was learnt of one topic, and when: partition → (leader, epoch).
type Learnt = (Instant, BTreeMap<u32, (i32, i32)>);

/// Per topic, the leaders learnt from replicas.
#[derive(Default)]
pub(crate) struct RemoteLeaders {
    topics: Mutex<HashMap<String, Learnt>>,
    clients: Mutex<HashMap<NodeId, std::sync::Arc<client::Client>>>,
}

impl RemoteLeaders {
    /// What is known of a partition's leader; unknown when never learnt or too old.
    pub fn known(&self, topic: &str, partition: u32) -> LeaderView {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let learnt = topics.get(topic).filter(|(at, _)| at.elapsed() < FRESH_FOR * 4);
        match learnt.and_then(|(_, leaders)| leaders.get(&partition)) {
            Some((leader_id, leader_epoch)) => LeaderView { leader_id: *leader_id, leader_epoch: *leader_epoch },
            None => LeaderView { leader_id: -1, leader_epoch: -1 },
        }
    }

    pub(crate) fn client(&self, broker: &Broker, node: NodeId) -> Option<std::sync::Arc<client::Client>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&node) {
            return Some(client.clone());
        }
        let address = broker.cluster.dial_address(node)?;
        let client = std::sync::Arc::new(client::Client::new(vec![address]).with_retry_deadline(ASK_TIMEOUT));
        clients.insert(node, client.clone());
        Some(client)
    }

    /// Learns the leaders of `topic`'s partitions without a local replica, from one replica of
    /// each (one question per node asked), unless the last answers are fresh.
    pub async fn refresh(&self, broker: &Broker, topic: &str) {
        let fresh = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .is_some_and(|(at, _)| at.elapsed() < FRESH_FOR);
        if fresh {
            return;
        }
        let me = broker.cluster.node_id();
        // Partitions to ask about, grouped by the replica that is asked (a live-looking one:
        // the first replica in placement order).
        let wanted: BTreeMap<NodeId, Vec<u32>> = broker.cluster.with_catalog(|c| {
            let mut wanted: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
            if let Some(info) = c.topics.get(topic) {
                for partition in info.partitions.iter().filter(|p| !p.replicas.contains(&me)) {
                    if let Some(node) = partition.replicas.first() {
                        wanted.entry(*node).or_default().push(partition.partition);
                    }
                }
            }
            wanted
        });
        if wanted.is_empty() {
            return;
        }
        let mut learnt = BTreeMap::new();
        for (node, partitions) in wanted {
            let Some(client) = self.client(broker, node) else { continue };
            let Ok(Ok(description)) = tokio::time::timeout(ASK_TIMEOUT, client.describe_topic(topic)).await else {
                continue;
            };
            for partition in description.partitions.iter().filter(|p| partitions.contains(&p.partition)) {
                if let Some(leader) = partition.leader {
                    learnt.insert(partition.partition, (leader as i32, partition.leader_epoch as i32));
                }
            }
        }
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.to_string(), (Instant::now(), learnt));
    }
}
