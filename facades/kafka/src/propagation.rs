//! Waits, after a topic change (created, grown, reconfigured, deleted), until every node's own
//! catalog shows it — and a created or grown topic's partitions have elected leaders — so a
//! client that asks any broker next sees what it changed.
//!
//! The change is committed when the metadata group's leader applies it; the other nodes apply it
//! a moment later. Kafka's own brokers have the same lag, and librdkafka fails a record for an
//! explicit partition that its first metadata answer lacks, so answering before the nodes catch
//! up lets "create partitions, then produce to one" fail (and "lower max.message.bytes, then
//! produce" pass). A node that does not answer is not waited for; the wait ends at the request's
//! deadline either way, and the change stands.

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

/// What every node's catalog must show of the topic.
pub(crate) enum Expect {
    /// At least this many partitions, each with a leader somewhere.
    Partitions(u32),
    /// This configuration.
    Config(client::TopicConfig),
    /// No such topic.
    Gone,
}

impl Expect {
    fn shown_by(&self, answer: Option<&client::TopicDescription>) -> bool {
        match (self, answer) {
            (Expect::Partitions(count), Some(topic)) => topic.partitions.len() >= *count as usize,
            (Expect::Config(config), Some(topic)) => topic.config.as_ref() == Some(config),
            (Expect::Gone, None) => true,
            _ => false,
        }
    }

    fn leaders_needed(&self) -> usize {
        match self {
            Expect::Partitions(count) => *count as usize,
            _ => 0,
        }
    }
}

/// Returns once every reachable node's catalog shows `expect` for `topic`, or at `deadline`
/// (at most `WAIT_MAX` from now).
pub(crate) async fn await_everywhere(broker: &Broker, topic: &str, expect: Expect, deadline: Instant) {
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
            let answer = match tokio::time::timeout(ASK_TIMEOUT, client.describe_topic_here(topic)).await {
                Ok(Ok(description)) => Some(description),
                Ok(Err(client::Error::Rejected { code: client::Code::NotFound, .. })) => None,
                // Down or unreachable: a node that serves no one keeps no client waiting.
                Ok(Err(_)) | Err(_) => {
                    live.remove(&node);
                    continue;
                }
            };
            if let Some(description) = &answer {
                led.extend(description.partitions.iter().filter(|p| p.leader.is_some()).map(|p| p.partition));
            }
            if expect.shown_by(answer.as_ref()) {
                caught_up.insert(node);
            }
        }
        if caught_up.is_superset(&live) && led.len() >= expect.leaders_needed() {
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let behind: Vec<_> = live.difference(&caught_up).collect();
    tracing::debug!(topic, ?behind, leaders = led.len(), "topic change not yet everywhere at the deadline");
}
