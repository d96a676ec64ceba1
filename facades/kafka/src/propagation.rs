//! Waits, after a topic is created or grown, until every node's own catalog shows it and every
//! partition has an elected leader, so a client that asks any broker next sees what it created.
//!
//! The change is committed when the metadata group's leader applies it; the other nodes apply it
//! a moment later. Kafka's own brokers have the same lag, and librdkafka fails a record for an
//! explicit partition that its first metadata answer lacks, so answering before the nodes catch
//! up lets "create partitions, then produce to one" fail. A node that does not answer is not
//! waited for; the wait ends at the request's deadline either way, and the change stands.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Broker;

/// Pause between two rounds of asking the nodes that are behind.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Longest the whole wait may take: a node cut off from the metadata leader, yet reachable
/// from here, must not hold every topic change for the client's whole timeout.
const WAIT_MAX: Duration = Duration::from_secs(5);
/// Longest one node's answer is awaited before it counts as down.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Returns once every reachable node lists `topic` with at least `partitions` partitions and
/// each partition has a leader, or at `deadline` (at most `WAIT_MAX` from now).
pub(crate) async fn await_everywhere(broker: &Broker, topic: &str, partitions: u32, deadline: Instant) {
    let deadline = deadline.min(Instant::now() + WAIT_MAX);
    let mut live: BTreeSet<_> = broker.cluster.with_catalog(|c| c.nodes.keys().copied().collect());
    let mut caught_up = BTreeSet::new();
    let mut led: BTreeSet<u32> = BTreeSet::new();
    while Instant::now() < deadline {
        // The nodes still behind; once none is, every live one (for leaders not yet seen).
        let behind: Vec<_> = live.difference(&caught_up).copied().collect();
        let ask = if behind.is_empty() { live.iter().copied().collect() } else { behind };
        for node in ask {
            let Some(client) = broker.remote_leaders.client(broker, node) else {
                live.remove(&node);
                continue;
            };
            match tokio::time::timeout(ASK_TIMEOUT, client.describe_topic_here(topic)).await {
                Ok(Ok(description)) => {
                    led.extend(description.partitions.iter().filter(|p| p.leader.is_some()).map(|p| p.partition));
                    if description.partitions.len() >= partitions as usize {
                        caught_up.insert(node);
                    }
                }
                // Knows nothing of the topic yet: ask again next round.
                Ok(Err(client::Error::Rejected { code: client::Code::NotFound, .. })) => {}
                // Down or unreachable: a node that serves no one keeps no client waiting.
                Ok(Err(_)) | Err(_) => {
                    live.remove(&node);
                }
            }
        }
        if caught_up.is_superset(&live) && led.len() >= partitions as usize {
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let behind: Vec<_> = live.difference(&caught_up).collect();
    tracing::debug!(topic, ?behind, leaders = led.len(), partitions, "topic change not yet everywhere at the deadline");
}
