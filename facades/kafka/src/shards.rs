//! State kept by the leader of each partition of an internal compacted topic — consumer groups
//! on `__consumer_offsets`, transactions on `__transaction_state` — and rebuilt from that
//! partition by whichever node leads it next.
//!
//! A node serves the keys of every partition it leads. On the first request of a leadership
//! term it appends a barrier record and waits for its commit (so everything before it is
//! applied), then reads the partition from its start into states ([`Shard::rebuild`]); until
//! then requests get COORDINATOR_LOAD_IN_PROGRESS. Changes are appended through Raft before they
//! are acknowledged. When leadership moves, the states are dropped ([`Shard::abandon`] tells
//! waiters) and the next leader rebuilds the same states from the log. Each loaded partition
//! is also tailed: batches appended after the barrier (transaction markers written by other
//! nodes, say) reach [`Shard::observe`] in log order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use kafka_protocol::ResponseError;
use log_store::batch::{self, Batch, BatchBuilder, NewRecord};
use log_store::{LogReader, Offset};
use tracing::{info, warn};

use crate::broker::Broker;

/// Bytes read per step while loading or tailing a partition.
const READ_CHUNK_BYTES: usize = 4 << 20;
/// Key of the barrier record (a tombstone, so compaction drops it).
const BARRIER_KEY: &[u8] = b"{\"barrier\":null}";

/// A write already proposed; resolves when committed.
pub(crate) type Write = Pin<Box<dyn Future<Output = Result<(), ResponseError>> + Send>>;

/// The per-key state of one internal topic.
pub(crate) trait Shard: Sized + Send {
    /// The internal topic.
    const TOPIC: &'static str;

    /// The state of a key seen for the first time.
    fn new(key: &str) -> Self;

    /// Builds the states of one partition from its batches, oldest first.
    fn rebuild(batches: Vec<Batch>) -> HashMap<String, Self>;

    /// A batch appended after loading (in log order, including this node's own writes).
    fn observe(_states: &mut HashMap<String, Self>, _batch: &Batch) {}

    /// This node no longer leads the partition: tell whoever waits.
    fn abandon(&mut self) {}
}

enum Slot<S> {
    Loading { term: u64 },
    Ready { term: u64, states: HashMap<String, S>, tailed: Offset },
}

/// What a handler may do while it holds a key's state.
pub(crate) struct Context<'a> {
    pub broker: &'a Broker,
    pub partition: u32,
    topic: &'static str,
    next_sequence: &'a mut u64,
}

impl Context<'_> {
    /// Proposes a batch now (so writes reach the log in the order they were made) and returns
    /// the wait for its commit, with the write's sequence number.
    pub fn write(&mut self, batch: Vec<u8>) -> (Write, u64) {
        *self.next_sequence += 1;
        let sequence = *self.next_sequence;
        let write: Write = match self.broker.cluster.start_append(self.topic, self.partition, batch.into()) {
            Ok(future) => Box::pin(async move { future.await.map(|_| ()).map_err(|error| coordinator_error(&error)) }),
            Err(error) => {
                let error = coordinator_error(&error);
                Box::pin(async move { Err(error) })
            }
        };
        (write, sequence)
    }

    /// Writes a batch whose outcome nobody waits for; failures are logged.
    pub fn write_in_background(&mut self, batch: Vec<u8>, what: &'static str) {
        let (write, _) = self.write(batch);
        tokio::spawn(async move {
            if let Err(error) = write.await {
                warn!(?error, "cannot persist {what}");
            }
        });
    }
}

/// A partition-level failure as a coordinator reports it: leadership loss is NOT_COORDINATOR.
pub(crate) fn coordinator_error(error: &replication::Error) -> ResponseError {
    match crate::errors::partition_error(error) {
        ResponseError::NotLeaderOrFollower | ResponseError::LeaderNotAvailable => ResponseError::NotCoordinator,
        ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
        other => other,
    }
}

/// The states of every partition of `S::TOPIC` this node leads.
pub(crate) struct Shards<S> {
    slots: Mutex<HashMap<u32, Slot<S>>>,
    next_sequence: Mutex<u64>,
}

impl<S: Shard> Default for Shards<S> {
    fn default() -> Self {
        Shards { slots: Mutex::new(HashMap::new()), next_sequence: Mutex::new(0) }
    }
}

/// Kafka's partition choice for a key: Java's `String.hashCode`, made non-negative, modulo
/// the partition count.
pub(crate) fn partition_for(key: &str, partitions: u32) -> u32 {
    let hash = key.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32));
    // Kafka's Utils.abs: i32::MIN maps to 0.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive as u32 % partitions.max(1)
}

impl<S: Shard> Shards<S> {
    /// The partition of `S::TOPIC` that holds `key`, if the topic exists.
    pub fn partition_of(broker: &Broker, key: &str) -> Option<u32> {
        let count = broker.cluster.with_catalog(|c| c.topics.get(S::TOPIC).map(|t| t.partitions.len() as u32))?;
        Some(partition_for(key, count))
    }

    /// Runs `f` on the state of `key` (created when missing and `create` is set, else `None`),
    /// loading its partition first if needed.
    pub async fn with<R>(
        &self,
        broker: &Broker,
        key: &str,
        create: bool,
        f: impl FnOnce(Option<&mut S>, &mut Context) -> R,
    ) -> Result<R, ResponseError> {
        let partition = Self::partition_of(broker, key).ok_or(ResponseError::CoordinatorNotAvailable)?;
        let term = self.ensure_loaded(broker, partition).await?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut sequence = self.next_sequence.lock().unwrap_or_else(|p| p.into_inner());
        let mut context = Context { broker, partition, topic: S::TOPIC, next_sequence: &mut sequence };
        match slots.get_mut(&partition) {
            Some(Slot::Ready { term: loaded, states, .. }) if *loaded == term => {
                if create && !states.contains_key(key) {
                    states.insert(key.to_string(), S::new(key));
                }
                Ok(f(states.get_mut(key), &mut context))
            }
            _ => Err(ResponseError::CoordinatorLoadInProgress),
        }
    }

    /// Makes sure the partition is loaded for the current leadership term; returns the term.
    async fn ensure_loaded(&self, broker: &Broker, partition: u32) -> Result<u64, ResponseError> {
        let status = broker.cluster.partition_status(S::TOPIC, partition).ok_or(ResponseError::NotCoordinator)?;
        if status.leader != Some(broker.cluster.node_id()) {
            return Err(ResponseError::NotCoordinator);
        }
        let term = status.leader_epoch;
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get_mut(&partition) {
                Some(Slot::Ready { term: loaded, .. }) if *loaded == term => return Ok(term),
                Some(Slot::Loading { term: loading }) if *loading == term => {
                    return Err(ResponseError::CoordinatorLoadInProgress)
                }
                previous => {
                    if let Some(Slot::Ready { states, .. }) = previous {
                        states.values_mut().for_each(S::abandon);
                    }
                    slots.insert(partition, Slot::Loading { term });
                }
            }
        }
        let loaded = load::<S>(broker, partition).await;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok((states, tailed)) => {
                if matches!(slots.get(&partition), Some(Slot::Loading { term: t }) if *t == term) {
                    info!(topic = S::TOPIC, partition, term, keys = states.len(), "loaded coordinator state");
                    slots.insert(partition, Slot::Ready { term, states, tailed });
                }
                Ok(term)
            }
            Err(error) => {
                warn!(
                    topic = S::TOPIC,
                    partition,
                    ?error,
                    "cannot load coordinator state; the next request tries again"
                );
                slots.remove(&partition);
                Err(error)
            }
        }
    }

    /// Every loaded state, read-only (ListGroups and the like).
    pub fn each(&self, mut f: impl FnMut(&str, &S)) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            if let Slot::Ready { states, .. } = slot {
                for (key, state) in states {
                    f(key, state);
                }
            }
        }
    }

    /// Drops a key's state from memory (after its tombstones are written).
    pub fn forget(&self, broker: &Broker, key: &str) {
        let Some(partition) = Self::partition_of(broker, key) else { return };
        if let Some(Slot::Ready { states, .. }) =
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&partition)
        {
            states.remove(key);
        }
    }

    /// One timer step: drops partitions this node no longer leads, feeds newly appended
    /// batches to [`Shard::observe`], then runs `f` on every state.
    pub fn tick(&self, broker: &Broker, mut f: impl FnMut(&str, &mut S, &mut Context)) {
        let me = broker.cluster.node_id();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut sequence = self.next_sequence.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|partition, slot| {
            let term = match slot {
                Slot::Loading { term } | Slot::Ready { term, .. } => *term,
            };
            let status = broker.cluster.partition_status(S::TOPIC, *partition);
            let still_ours = status.is_some_and(|s| s.leader == Some(me) && s.leader_epoch == term);
            let Slot::Ready { states, tailed, .. } = slot else { return true };
            if !still_ours {
                info!(topic = S::TOPIC, partition, "no longer the coordinator of this partition");
                states.values_mut().for_each(S::abandon);
                return false;
            }
            if let Ok((reader, _)) = broker.cluster.leader_reader(S::TOPIC, *partition) {
                for stored in read_from(&reader, tailed) {
                    S::observe(states, &stored);
                }
            }
            let mut context = Context { broker, partition: *partition, topic: S::TOPIC, next_sequence: &mut sequence };
            for (key, state) in states.iter_mut() {
                f(key, state, &mut context);
            }
            true
        });
    }
}

/// Calls `step` every `period` until `stop` turns true (the coordinators' timers).
pub(crate) async fn every(
    period: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut step: impl FnMut(),
) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => step(),
            _ = crate::broker::stopping(&mut stop) => return,
        }
    }
}

/// Whole batches from `*from` to the reader's end; advances `*from` past them.
fn read_from(reader: &LogReader, from: &mut Offset) -> Vec<Batch> {
    let mut out = Vec::new();
    let end = reader.next_offset();
    while *from < end {
        let Ok(bytes) = reader.read(*from, READ_CHUNK_BYTES) else { break };
        if bytes.is_empty() {
            break;
        }
        let before = *from;
        for stored in batch::batches(bytes).filter_map(|b| b.ok()) {
            let next = Offset(stored.header().last_offset().0 + 1);
            if next > *from {
                *from = next;
                out.push(stored);
            }
        }
        if *from == before {
            break;
        }
    }
    out
}

/// Writes a barrier, waits for it, then reads the partition up to it.
async fn load<S: Shard>(broker: &Broker, partition: u32) -> Result<(HashMap<String, S>, Offset), ResponseError> {
    let mut barrier = BatchBuilder::new(batch::Compression::None);
    barrier.push(&NewRecord { key: Some(bytes::Bytes::from_static(BARRIER_KEY)), ..NewRecord::default() });
    let barrier = barrier.build().map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let (_, barrier_offset) =
        broker.cluster.append(S::TOPIC, partition, barrier.into()).await.map_err(|error| coordinator_error(&error))?;
    let (reader, _) = broker.cluster.leader_reader(S::TOPIC, partition).map_err(|error| coordinator_error(&error))?;
    let mut from = reader.log_start_offset();
    let mut batches = Vec::new();
    while from <= barrier_offset {
        let read = read_from(&reader, &mut from);
        if read.is_empty() {
            break;
        }
        batches.extend(read.into_iter().filter(|b| b.header().base_offset() <= barrier_offset));
    }
    Ok((S::rebuild(batches), Offset(barrier_offset.0 + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_on_the_partition_kafka_would_pick() {
        let java = "my-group".encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
        assert_eq!(partition_for("my-group", 50), (java.unsigned_abs() % 50));
        assert!(partition_for("", 10) < 10);
    }
}
