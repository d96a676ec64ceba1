//! The group coordinator: consumer groups and their committed offsets, hosted by the leader of
//! each group's partition of the compacted `__consumer_offsets` topic (DESIGN §5).
//!
//! A node coordinates the groups of every offsets partition it leads. On first use in a
//! leadership term it writes a barrier record, waits for it to commit (so everything before it
//! is applied), and loads offsets and group metadata by reading the partition; until then
//! requests get COORDINATOR_LOAD_IN_PROGRESS. Commits and membership changes are appended
//! through Raft before they are visible. When leadership moves, the state is dropped and waiting
//! members are told NOT_COORDINATOR; the new leader loads the same state from the log.
//!
//! * `group` — one group's membership state machine.
//! * `records` — what is written to the offsets partition.
//! * `membership` — JoinGroup, SyncGroup, Heartbeat, LeaveGroup, Describe/List/DeleteGroups.
//! * `offsets` — OffsetCommit and OffsetFetch.

pub(crate) mod group;
pub(crate) mod membership;
pub(crate) mod offsets;
pub(crate) mod records;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use log_store::batch;
use log_store::Offset;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Broker;
use group::{Group, GroupSettings};
use records::{Decoded, Entry, OffsetValue, RecordKey, OFFSETS_TOPIC};

/// How often sessions and join deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read per step while loading a partition.
const LOAD_CHUNK_BYTES: usize = 4 << 20;

/// A group and its committed offsets.
pub(crate) struct GroupState {
    pub group: Group,
    /// (topic, partition) → committed offset and the write sequence that set it.
    pub offsets: BTreeMap<(String, i32), (OffsetValue, u64)>,
}

impl GroupState {
    fn new(id: &str) -> GroupState {
        GroupState { group: Group::new(id), offsets: BTreeMap::new() }
    }
}

enum Slot {
    /// The barrier is being written or the partition read.
    Loading {
        term: u64,
    },
    Ready {
        term: u64,
        groups: HashMap<String, GroupState>,
    },
}

/// A write to the offsets partition, already proposed; resolves when committed.
pub(crate) type Write = Pin<Box<dyn Future<Output = Result<(), ResponseError>> + Send>>;

/// What a handler may do while it holds a group.
pub(crate) struct Context<'a> {
    broker: &'a Broker,
    partition: u32,
    next_sequence: &'a mut u64,
}

impl Context<'_> {
    /// Proposes records now (so writes reach the log in the order they were made) and returns
    /// the wait for their commit, with the sequence number of this write.
    pub fn write(&mut self, entries: &[Entry]) -> (Write, u64) {
        *self.next_sequence += 1;
        let sequence = *self.next_sequence;
        let started = self.broker.cluster.start_append(OFFSETS_TOPIC, self.partition, records::batch(entries));
        let write: Write = match started {
            Ok(future) => Box::pin(async move {
                future
                    .await
                    .map(|_| ())
                    .map_err(|error| crate::errors::partition_error(&error))
                    .map_err(coordinator_error)
            }),
            Err(error) => {
                let error = coordinator_error(crate::errors::partition_error(&error));
                Box::pin(async move { Err(error) })
            }
        };
        (write, sequence)
    }

    /// Persists the group's membership if it changed; the write completes in the background.
    pub fn persist_membership(&mut self, state: &mut GroupState) {
        if !state.group.take_dirty() {
            return;
        }
        let entry = records::group_entry(&state.group.id, &state.group.value());
        let (write, _) = self.write(&[entry]);
        let group = state.group.id.clone();
        tokio::spawn(async move {
            if let Err(error) = write.await {
                warn!(%group, ?error, "cannot persist group membership");
            }
        });
    }
}

/// Partition-level errors as a coordinator reports them: leadership loss is NOT_COORDINATOR.
fn coordinator_error(error: ResponseError) -> ResponseError {
    match error {
        ResponseError::NotLeaderOrFollower | ResponseError::LeaderNotAvailable => ResponseError::NotCoordinator,
        ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
        other => other,
    }
}

/// Every group this node coordinates.
pub(crate) struct Coordinator {
    pub settings: GroupSettings,
    slots: Mutex<HashMap<u32, Slot>>,
    next_sequence: Mutex<u64>,
}

impl Coordinator {
    pub fn new(settings: GroupSettings) -> Coordinator {
        Coordinator { settings, slots: Mutex::new(HashMap::new()), next_sequence: Mutex::new(0) }
    }

    /// The offsets partition of a group, if the topic exists.
    pub fn partition_of(broker: &Broker, group_id: &str) -> Option<u32> {
        let count = broker.cluster.with_catalog(|c| c.topics.get(OFFSETS_TOPIC).map(|t| t.partitions.len() as u32))?;
        Some(records::partition_for(group_id, count))
    }

    /// Runs `f` on a group this node coordinates, loading its partition first if needed.
    /// A missing group is created when `create` is set, else `f` gets `None`.
    pub async fn with_group<R>(
        &self,
        broker: &Broker,
        group_id: &str,
        create: bool,
        f: impl FnOnce(Option<&mut GroupState>, &mut Context) -> R,
    ) -> Result<R, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let partition = Coordinator::partition_of(broker, group_id).ok_or(ResponseError::CoordinatorNotAvailable)?;
        let term = self.ensure_loaded(broker, partition).await?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut sequence = self.next_sequence.lock().unwrap_or_else(|p| p.into_inner());
        let mut context = Context { broker, partition, next_sequence: &mut sequence };
        match slots.get_mut(&partition) {
            Some(Slot::Ready { term: loaded, groups }) if *loaded == term => {
                if create && !groups.contains_key(group_id) {
                    groups.insert(group_id.to_string(), GroupState::new(group_id));
                }
                Ok(f(groups.get_mut(group_id), &mut context))
            }
            _ => Err(ResponseError::CoordinatorLoadInProgress),
        }
    }

    /// Makes sure the partition's state is loaded for the current leadership term; returns it.
    async fn ensure_loaded(&self, broker: &Broker, partition: u32) -> Result<u64, ResponseError> {
        let status = broker.cluster.partition_status(OFFSETS_TOPIC, partition).ok_or(ResponseError::NotCoordinator)?;
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
                    if let Some(Slot::Ready { groups, .. }) = previous {
                        groups.values_mut().for_each(|state| state.group.abandon());
                    }
                    slots.insert(partition, Slot::Loading { term });
                }
            }
        }
        let loaded = load(broker, partition).await;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(groups) => {
                if matches!(slots.get(&partition), Some(Slot::Loading { term: t }) if *t == term) {
                    info!(partition, term, groups = groups.len(), "loaded consumer groups");
                    slots.insert(partition, Slot::Ready { term, groups });
                }
                Ok(term)
            }
            Err(error) => {
                warn!(partition, ?error, "cannot load consumer groups; the next request tries again");
                slots.remove(&partition);
                Err(error)
            }
        }
    }

    /// Every loaded group, for ListGroups: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut listed = Vec::new();
        for slot in slots.values() {
            if let Slot::Ready { groups, .. } = slot {
                for state in groups.values() {
                    let group = &state.group;
                    listed.push((
                        group.id.clone(),
                        group.protocol_type.clone().unwrap_or_default(),
                        group.state.name(),
                    ));
                }
            }
        }
        listed.sort();
        listed
    }

    /// Drops a group from memory (DeleteGroups, after its tombstones are written).
    pub fn forget(&self, broker: &Broker, group_id: &str) {
        let Some(partition) = Coordinator::partition_of(broker, group_id) else { return };
        if let Some(Slot::Ready { groups, .. }) =
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&partition)
        {
            groups.remove(group_id);
        }
    }

    /// One timer step: drops partitions this node no longer leads, expires sessions, ends due
    /// join phases and persists what changed.
    fn tick(&self, broker: &Broker) {
        let now = Instant::now();
        let me = broker.cluster.node_id();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut sequence = self.next_sequence.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|partition, slot| {
            let status = broker.cluster.partition_status(OFFSETS_TOPIC, *partition);
            let term = match slot {
                Slot::Loading { term } | Slot::Ready { term, .. } => *term,
            };
            let still_ours = status.is_some_and(|s| s.leader == Some(me) && s.leader_epoch == term);
            if let Slot::Ready { groups, .. } = slot {
                if !still_ours {
                    info!(partition, "no longer the group coordinator of this offsets partition");
                    groups.values_mut().for_each(|state| state.group.abandon());
                    return false;
                }
                let mut context = Context { broker, partition: *partition, next_sequence: &mut sequence };
                for state in groups.values_mut() {
                    state.group.tick(&self.settings, now);
                    context.persist_membership(state);
                }
            }
            // A Loading slot is resolved by the request that loads it.
            true
        });
    }
}

/// Runs the coordinator's timers until `stop` turns true.
pub(crate) async fn run_timers(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => broker.coordinator.tick(&broker),
            _ = crate::broker::stopping(&mut stop) => return,
        }
    }
}

/// Writes a barrier, waits for it, then reads the partition up to it into group states.
async fn load(broker: &Broker, partition: u32) -> Result<HashMap<String, GroupState>, ResponseError> {
    let barrier = records::batch(&[(RecordKey::Barrier, None)]);
    let (_, barrier_offset) = broker
        .cluster
        .append(OFFSETS_TOPIC, partition, barrier)
        .await
        .map_err(|error| coordinator_error(crate::errors::partition_error(&error)))?;
    let (reader, _) = broker
        .cluster
        .leader_reader(OFFSETS_TOPIC, partition)
        .map_err(|error| coordinator_error(crate::errors::partition_error(&error)))?;
    let mut offsets: HashMap<(String, String, i32), OffsetValue> = HashMap::new();
    let mut memberships: HashMap<String, records::GroupValue> = HashMap::new();
    let mut from = reader.log_start_offset();
    let storage = |error: log_store::Error| {
        warn!(partition, %error, "cannot read the offsets partition");
        ResponseError::CoordinatorNotAvailable
    };
    while from <= barrier_offset {
        let bytes = reader.read(from, LOAD_CHUNK_BYTES).map_err(storage)?;
        if bytes.is_empty() {
            break;
        }
        for stored in batch::batches(bytes) {
            let stored = stored.map_err(storage)?;
            let next = Offset(stored.header().last_offset().0 + 1);
            for record in stored.records(LOAD_CHUNK_BYTES * 4).map_err(storage)? {
                let record = record.map_err(storage)?;
                if record.offset < from {
                    continue;
                }
                match records::decode(record.key.as_deref(), record.value.as_deref()) {
                    Some(Decoded::Offset { group, topic, partition, value }) => match value {
                        Some(value) => {
                            offsets.insert((group, topic, partition), value);
                        }
                        None => {
                            offsets.remove(&(group, topic, partition));
                        }
                    },
                    Some(Decoded::Group { group, value }) => match value {
                        Some(value) => {
                            memberships.insert(group, value);
                        }
                        None => {
                            memberships.remove(&group);
                        }
                    },
                    Some(Decoded::Barrier) | None => {}
                }
            }
            from = next;
        }
    }
    let now = Instant::now();
    let mut groups: HashMap<String, GroupState> = HashMap::new();
    for (id, value) in memberships {
        groups.insert(id.clone(), GroupState { group: Group::restore(&id, value, now), offsets: BTreeMap::new() });
    }
    for ((group, topic, partition), value) in offsets {
        let state = groups.entry(group.clone()).or_insert_with(|| GroupState::new(&group));
        state.offsets.insert((topic, partition), (value, 0));
    }
    Ok(groups)
}
