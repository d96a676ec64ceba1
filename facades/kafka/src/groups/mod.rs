//! The group coordinator: consumer groups and their committed offsets, hosted by the leader of
//! each group's partition of the compacted `__consumer_offsets` topic (DESIGN §5).
//!
//! The partition machinery (load after a barrier, drop on leadership loss, tailing) is
//! `shards`; this module says what a group's state is made of the partition's records:
//! committed offsets, the last persisted membership of each group (so a stable group survives a
//! coordinator failover without a rebalance), and offsets committed inside transactions, which
//! become committed offsets when their producer's commit marker reaches the partition (and are
//! dropped on abort).
//!
//! * `group` — one group's membership state machine.
//! * `records` — what is written to the offsets partition.
//! * `membership` — JoinGroup, SyncGroup, Heartbeat, LeaveGroup, Describe/List/DeleteGroups.
//! * `offsets` — OffsetCommit, TxnOffsetCommit and OffsetFetch.

pub(crate) mod group;
pub(crate) mod membership;
pub(crate) mod offsets;
pub(crate) mod records;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use log_store::batch::Batch;
use replication::Marker;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::shards::{Context, Shard, Shards};
use group::{Group, GroupSettings};
use records::{Decoded, OffsetValue, OFFSETS_TOPIC};

/// How often sessions and join deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

/// Offsets a transactional producer committed for a group, waiting for its marker.
type PendingOffsets = Vec<(String, i32, OffsetValue)>;

/// A group and its committed offsets.
pub(crate) struct GroupState {
    pub group: Group,
    /// (topic, partition) → committed offset and the write sequence that set it.
    pub offsets: BTreeMap<(String, i32), (OffsetValue, u64)>,
    /// Producer id → offsets committed in its open transaction.
    pub pending: BTreeMap<i64, PendingOffsets>,
}

impl GroupState {
    fn new(id: &str) -> GroupState {
        GroupState { group: Group::new(id), offsets: BTreeMap::new(), pending: BTreeMap::new() }
    }

    /// Whether a transaction holds an uncommitted offset for this partition.
    pub fn unstable(&self, topic: &str, partition: i32) -> bool {
        self.pending.values().flatten().any(|(t, p, _)| t == topic && *p == partition)
    }

    /// A producer's transaction ended: its offsets become committed, or are dropped.
    fn resolve(&mut self, producer_id: i64, marker: Marker) {
        if let Some(offsets) = self.pending.remove(&producer_id) {
            if marker == Marker::Commit {
                for (topic, partition, value) in offsets {
                    // Sequence 0: any later direct commit still wins over it in memory.
                    self.offsets.insert((topic, partition), (value, 0));
                }
            }
        }
    }
}

/// Every record of a batch, decoded; unknown keys are skipped.
fn decoded(batch: &Batch) -> Vec<Decoded> {
    let Ok(records) = batch.records(64 << 20) else { return Vec::new() };
    records.filter_map(|r| r.ok()).filter_map(|r| records::decode(r.key.as_deref(), r.value.as_deref())).collect()
}

/// Folds one batch of the offsets partition into the groups. While loading every record
/// counts; afterwards only what other writers add does (transactional offsets and markers): this
/// node's own commits and memberships are already in memory, newer than the log.
fn absorb(groups: &mut HashMap<String, GroupState>, batch: &Batch, loading: bool) {
    let header = batch.header();
    if header.is_control() {
        if let Some(marker) = Marker::of(batch) {
            groups.values_mut().for_each(|state| state.resolve(header.producer_id, marker));
        }
        return;
    }
    let transactional = header.is_transactional();
    if !loading && !transactional {
        return;
    }
    for record in decoded(batch) {
        match record {
            Decoded::Offset { group, topic, partition, value } => {
                let state = groups.entry(group.clone()).or_insert_with(|| GroupState::new(&group));
                match value {
                    Some(value) if transactional => {
                        state.pending.entry(header.producer_id).or_default().push((topic, partition, value))
                    }
                    Some(value) => {
                        state.offsets.insert((topic, partition), (value, 0));
                    }
                    None => {
                        state.offsets.remove(&(topic, partition));
                    }
                }
            }
            Decoded::Group { group, value: Some(value) } => {
                let restored = Group::restore(&group, value, Instant::now());
                groups.entry(group.clone()).or_insert_with(|| GroupState::new(&group)).group = restored;
            }
            Decoded::Group { group, value: None } => {
                groups.remove(&group);
            }
        }
    }
}

impl Shard for GroupState {
    const TOPIC: &'static str = OFFSETS_TOPIC;

    fn new(key: &str) -> GroupState {
        GroupState::new(key)
    }

    fn rebuild(batches: Vec<Batch>) -> HashMap<String, GroupState> {
        let mut groups = HashMap::new();
        for batch in &batches {
            absorb(&mut groups, batch, true);
        }
        groups
    }

    fn observe(groups: &mut HashMap<String, GroupState>, batch: &Batch) {
        absorb(groups, batch, false);
    }

    fn abandon(&mut self) {
        self.group.abandon();
    }
}

/// Every group this node coordinates.
pub(crate) struct Coordinator {
    pub settings: GroupSettings,
    pub shards: Shards<GroupState>,
}

impl Coordinator {
    pub fn new(settings: GroupSettings) -> Coordinator {
        Coordinator { settings, shards: Shards::default() }
    }

    /// The offsets partition of a group, if the topic exists.
    pub fn partition_of(broker: &Broker, group_id: &str) -> Option<u32> {
        Shards::<GroupState>::partition_of(broker, group_id)
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
        self.shards.with(broker, group_id, create, f).await
    }

    /// Every loaded group, for ListGroups: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let mut listed = Vec::new();
        self.shards.each(|id, state| {
            listed.push((
                id.to_string(),
                state.group.protocol_type.clone().unwrap_or_default(),
                state.group.state.name(),
            ))
        });
        listed.sort();
        listed
    }

    /// Drops a group from memory (DeleteGroups, after its tombstones are written).
    pub fn forget(&self, broker: &Broker, group_id: &str) {
        self.shards.forget(broker, group_id);
    }
}

/// Persists a group's membership if it changed; the write completes in the background.
pub(crate) fn persist_membership(context: &mut Context, state: &mut GroupState) {
    if state.group.take_dirty() {
        let entry = records::group_entry(&state.group.id, &state.group.value());
        context.write_in_background(records::batch(&[entry]), "group membership");
    }
}

/// Runs the coordinator's timers until `stop` turns true: session expiry, join deadlines, and
/// transaction markers reaching the offsets partitions.
pub(crate) async fn run_timers(broker: Arc<Broker>, stop: watch::Receiver<bool>) {
    crate::shards::every(TICK, stop, || {
        let settings = broker.coordinator.settings;
        let now = Instant::now();
        broker.coordinator.shards.tick(&broker, |_, state, context| {
            state.group.tick(&settings, now);
            persist_membership(context, state);
        });
    })
    .await
}
