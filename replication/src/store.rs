//! The store loop: one thread that drives every Raft group of the node.
//!
//! Each iteration: take what arrived (Raft messages, proposals), tick if a tick is due, then
//! collect the `Ready` of every group with work, write all their entries and hard states in
//! **one raft-engine batch with one fsync**, apply committed entries, and send the messages
//! coalesced per destination node — the ones that must follow persistence only after the fsync.
//!
//! # Invariants
//! * A proposal's reply is sent only after its entry is committed and applied on this node.
//! * Entries are applied in index order, exactly once per start of the node (the partition's
//!   apply state makes restarts resume at a consistent point).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log_store::Offset;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use raft_engine::LogBatch;

use crate::engine_fs::{NodeEngine, NodeFileSystem};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::catalog::{Catalog, Change, Command, NodeInfo, PartitionInfo, TopicInfo};
use crate::cluster::{Cluster, Shared, TopicDefaults};
use crate::config::ReplicationConfig;
use crate::error::{Error, Result};
use crate::ids::{GroupId, NodeId, METADATA_GROUP};
use crate::partition::PartitionReplica;
use crate::purger::Purger;
use crate::raft_storage::{engine_error, members, GroupStorage, SnapshotData};
use crate::transport::{Outbox, RaftService, Transport};

/// Most inbox messages handled before the loop looks at the groups again.
const INBOX_DRAIN_MAX: usize = 4096;
/// Largest total size of entries in one append message.
const RAFT_MESSAGE_BYTES_MAX: u64 = 1 << 20;
/// In-flight append messages per follower.
const RAFT_INFLIGHT_MESSAGES_MAX: usize = 256;
/// Proposed-but-uncommitted bytes a leader accepts before it refuses proposals.
const UNCOMMITTED_BYTES_MAX: u64 = 64 << 20;
/// A snapshot not acknowledged within this time is reported failed, so the leader sends again.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a proposal resolves to once applied.
#[derive(Debug)]
pub(crate) enum Applied {
    Offsets(Offset, Offset),
    Topic(TopicInfo),
    ProducerIds(i64),
    /// Partitions whose placement a rebalance changed.
    Moved(usize),
    Done,
}

pub(crate) type Reply = oneshot::Sender<Result<Applied>>;

/// Messages into the store loop.
pub(crate) enum StoreMsg {
    Raft(Vec<(u64, Message)>),
    Propose {
        group: GroupId,
        data: Bytes,
        reply: Reply,
    },
    /// The transport lost a peer: wake the groups it leads so they can elect another leader.
    PeerUnreachable(u64),
    /// Before a graceful stop: hand every group this node leads to a caught-up voter; the
    /// reply lists the groups handed off.
    HandOffLeadership(oneshot::Sender<Vec<u64>>),
    /// Snapshot data pulled from another replica, to append as stored.
    InstallBatches {
        group: u64,
        batches: Bytes,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// The snapshot source's log starts after ours ends: restart ours there.
    ResetLog {
        group: u64,
        offset: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The snapshot's data is in place: step the snapshot message now.
    SnapshotReady {
        group: u64,
        message: Message,
    },
    /// Pulling the snapshot's data failed; the leader will send another.
    SnapshotAborted {
        group: u64,
    },
    /// A repairing replica fetched what its damaged log lacked: apply what waited.
    Repaired {
        group: u64,
    },
    /// Another replica of a group placed elsewhere now answered whether its committed
    /// configuration still names this node; `removed`: it does not.
    RemovalChecked {
        group: u64,
        removed: bool,
    },
    /// raft-engine's purge (see [`Purger`](crate::purger::Purger)) named these groups: their old entries keep it from
    /// purging its oldest files.
    TrimPinning(Vec<u64>),
    Shutdown(oneshot::Sender<()>),
}

enum Kind {
    Metadata,
    Partition(Box<PartitionReplica>),
}

struct Group {
    raw: RawNode<GroupStorage>,
    kind: Kind,
    /// Proposals waiting for their entry: index → (term, reply).
    pending: BTreeMap<u64, (u64, Reply)>,
    /// Applying failed locally (disk): the group stops applying until restart.
    failed: bool,
    /// Ticks the group has been settled without a message (heartbeats aside) or proposal.
    idle_ticks: usize,
    /// Settled and idle: not ticked until something happens (see `tick`).
    hibernating: bool,
    /// Index of the last entry applied to the state machine — ahead of raft-rs's own `applied`
    /// between applying a Ready's entries and `advance_apply`, which is when logs are flushed.
    applied: u64,
    /// Since when this node leads the group (for preferred-leader balancing).
    led_since: Option<Instant>,
    /// Committed entries that wait for a repairing replica's log (see `PartitionReplica`).
    deferred: Vec<Entry>,
}

impl Group {
    fn new(raw: RawNode<GroupStorage>, kind: Kind, applied: u64) -> Group {
        Group {
            raw,
            kind,
            pending: BTreeMap::new(),
            failed: false,
            idle_ticks: 0,
            hibernating: false,
            applied,
            led_since: None,
            deferred: Vec::new(),
        }
    }

    fn wake(&mut self) {
        self.idle_ticks = 0;
        self.hibernating = false;
    }

    /// Nothing in flight: a leader whose every voter has every entry, all committed, no
    /// proposal waiting and no conf change pending; or a follower with a leader and nothing
    /// uncommitted. Only then may the group stop ticking.
    fn settled(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        if raft.raft_log.committed != last || !self.pending.is_empty() {
            return false;
        }
        match raft.state {
            StateRole::Leader => {
                !raft.has_pending_conf()
                    && raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
                    && raft.prs().iter().all(|(_, progress)| progress.matched == last)
            }
            StateRole::Follower => raft.leader_id != 0,
            _ => false,
        }
    }

    fn fail_pending(&mut self, leader: Option<NodeId>) {
        for (_, (_, reply)) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(Error::NotLeader { leader }));
        }
    }
}

/// Starts the node's replication: opens raft-engine, the metadata group and the transport,
/// and spawns the store loop thread. Must be called inside a tokio runtime.
pub fn start(config: ReplicationConfig) -> Result<(Cluster, RaftService)> {
    let runtime = tokio::runtime::Handle::current();
    let (inbox, receiver) = crossbeam_channel::bounded(config.inbox_capacity);
    let transport = Transport::start(&config, runtime.clone(), inbox.clone());
    let file_system = Arc::new(NodeFileSystem::default());
    let (store, shared) = Store::open(config, Box::new(transport), Some(runtime), (inbox, receiver), file_system)?;
    let loop_shared = shared.clone();
    std::thread::Builder::new()
        .name("store-loop".into())
        .spawn(move || {
            // raft-engine panics when an fsync fails ("in case of data loss"): the node must stop
            // then, not go on answering as if it still replicated.
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || store.run())) {
                fail(&loop_shared, format!("the store loop panicked: {}", panic_reason(&*panic)));
            }
        })
        .map_err(|e| Error::Engine(format!("cannot start the store loop: {e}")))?;
    Ok((Cluster::new(shared.clone()), RaftService::new(shared)))
}

pub(crate) struct Store {
    config: ReplicationConfig,
    engine: Arc<NodeEngine>,
    /// Ordered, so that a simulation replays every run the same way.
    groups: BTreeMap<u64, Group>,
    shared: Arc<Shared>,
    transport: Box<dyn Outbox>,
    logger: slog::Logger,
    inbox: Receiver<StoreMsg>,
    /// Where snapshot data is pulled; `None` in the simulation, which never compacts.
    runtime: Option<tokio::runtime::Handle>,
    /// Partition groups pulling snapshot data right now.
    installing: HashSet<u64>,
    /// Snapshots sent as leader: (group, follower) → when.
    snapshots_sent: HashMap<(u64, u64), Instant>,
    last_reconcile: Instant,
    /// Replicas moved away whose removal is being confirmed by the other replicas, with when
    /// the last check began; a check in flight has no answer yet.
    removal_checks: HashMap<u64, (Instant, bool)>,
}

/// How often a replica moved away asks the others whether its removal is committed.
const REMOVAL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often a leader compares its groups' voters with the catalog's placement.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(300);

impl Store {
    /// Opens raft-engine and the metadata group; the caller drives the loop.
    pub(crate) fn open(
        config: ReplicationConfig,
        transport: Box<dyn Outbox>,
        runtime: Option<tokio::runtime::Handle>,
        (inbox, receiver): (Sender<StoreMsg>, Receiver<StoreMsg>),
        file_system: Arc<NodeFileSystem>,
    ) -> Result<(Store, Arc<Shared>)> {
        let raft_dir = config.data_dir.join("raft");
        std::fs::create_dir_all(&raft_dir)
            .map_err(|e| Error::Engine(format!("cannot create {}: {e}", raft_dir.display())))?;
        let engine_config = raft_engine::Config {
            dir: raft_dir.to_string_lossy().into_owned(),
            // Batches are mostly already-compressed record batches: do not compress again.
            batch_compression_threshold: raft_engine::ReadableSize(0),
            target_file_size: raft_engine::ReadableSize(config.raft_file_bytes),
            purge_threshold: raft_engine::ReadableSize(config.raft_purge_threshold_bytes.max(config.raft_file_bytes)),
            ..raft_engine::Config::default()
        };
        let engine = Arc::new(NodeEngine::open_with_file_system(engine_config, file_system).map_err(engine_error)?);
        let shared = Arc::new(Shared {
            node_id: NodeId(config.node_id),
            catalog: RwLock::new(Catalog::new()),
            partitions: RwLock::new(HashMap::new()),
            metadata_leader: AtomicU64::new(0),
            inbox,
            peers: config.peers.iter().map(|peer| (NodeId(peer.id), peer.address.clone())).collect(),
            dial_via: config.dial_via.clone(),
            metadata_voters: RwLock::new(Vec::new()),
            metadata_applied: AtomicU64::new(0),
            metadata_truncated: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            failure: tokio::sync::watch::Sender::new(None),
            storage_error: std::sync::Mutex::new(None),
            follower_lag: RwLock::new(BTreeMap::new()),
            topic_defaults: TopicDefaults {
                segment_bytes: config.segment_bytes,
                batch_bytes_max: config.batch_bytes_max,
            },
        });
        // A joining node starts outside the metadata group; the leader adds it (see `reconcile`).
        let voters: Vec<u64> = if config.join { Vec::new() } else { config.peers.iter().map(|peer| peer.id).collect() };
        let mut store = Store {
            config,
            engine,
            groups: BTreeMap::new(),
            shared: shared.clone(),
            transport,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            inbox: receiver,
            runtime,
            installing: HashSet::new(),
            snapshots_sent: HashMap::new(),
            last_reconcile: Instant::now(),
            removal_checks: HashMap::new(),
        };
        let (mut storage, existed) = GroupStorage::open(store.engine.clone(), METADATA_GROUP.0, &voters)?;
        storage.serve_catalog(shared.clone());
        // A node brought in by a metadata snapshot starts from the catalog it carried; the
        // entries after it are applied again as usual.
        let restored = match storage.metadata_image() {
            Some(image) => {
                let catalog: Catalog = serde_json::from_slice(&image)
                    .map_err(|e| Error::Engine(format!("undecodable metadata image: {e}")))?;
                *shared.catalog.write().unwrap_or_else(|p| p.into_inner()) = catalog;
                true
            }
            None => false,
        };
        let metadata_applied = storage.truncated_index();
        shared.metadata_applied.store(metadata_applied, Ordering::Release);
        shared.metadata_truncated.store(metadata_applied, Ordering::Release);
        let mut raw =
            RawNode::new(&store.raft_config(0), storage, &store.logger).map_err(|e| Error::Engine(e.to_string()))?;
        // Catalog changes are rare and every node acts on them when it applies them (a new
        // topic's replicas are created then), so their commits are announced at once.
        raw.raft.skip_bcast_commit(false);
        *shared.metadata_voters.write().unwrap_or_else(|p| p.into_inner()) =
            members(&raw.raft.prs().conf().to_conf_state());
        if !existed && voters.len() == 1 {
            // A brand-new single-node cluster need not wait an election timeout.
            let _ = raw.campaign();
        }
        store.groups.insert(METADATA_GROUP.0, Group::new(raw, Kind::Metadata, metadata_applied));
        if restored {
            store.on_catalog_change(Change::Restored);
        }
        Ok((store, shared))
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.config.node_id,
            election_tick: self.config.election_ticks,
            heartbeat_tick: self.config.heartbeat_ticks,
            applied,
            max_size_per_msg: RAFT_MESSAGE_BYTES_MAX,
            max_inflight_msgs: RAFT_INFLIGHT_MESSAGES_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            check_quorum: true,
            pre_vote: true,
            // raft-rs 0.7 merges new entries into a queued MsgAppend without checking the
            // message's index, so after a rejection it can send entries that do not follow the
            // index; the follower then acknowledges entries it does not have. The simulation
            // found it (duplicated and reordered messages); keep batching off.
            batch_append: false,
            // A partition's commit does not send every follower an empty append of its own (as
            // TiKV; the metadata group keeps doing so, see `open`): the new commit index rides on
            // the next append or heartbeat (every 100 ms, and a leader only goes quiet once every
            // follower has every entry). Under load that is two messages, two wake-ups and two
            // loop iterations fewer per commit.
            skip_bcast_commit: true,
            // A simulation fixes each node's election timeout (raft-rs draws it from an unseeded
            // generator otherwise), staggered by the configured ticks.
            min_election_tick: if self.config.randomized_elections { 0 } else { self.config.election_ticks },
            max_election_tick: if self.config.randomized_elections { 0 } else { self.config.election_ticks + 1 },
            ..raft::Config::default()
        }
    }

    /// Whether this node leads the group right now.
    #[cfg(test)]
    pub(crate) fn is_leader(&self, group: GroupId) -> bool {
        self.groups.get(&group.0).is_some_and(|g| g.raw.raft.state == StateRole::Leader)
    }

    /// Advances the logical clock of every group that is not hibernating.
    ///
    /// Quiescence: a group that stayed settled for `hibernate_after` ticks stops ticking, so
    /// thousands of idle partitions cost nothing. Its leader stops heartbeating and its
    /// followers stop counting towards an election together, because both sides go quiet only
    /// when settled. Any message or proposal wakes a group; so does the transport reporting
    /// the leader's node lost (connection closed or keepalive timeout), which lets followers
    /// elect a new leader.
    pub(crate) fn tick(&mut self) {
        // Followers go quiet well within an election timeout, leaders only after: so no
        // follower is still counting towards an election when its leader stops heartbeating.
        let follower_after = (self.config.election_ticks / 2).max(1);
        let leader_after = self.config.election_ticks * 2;
        for group in self.groups.values_mut() {
            if group.hibernating {
                continue;
            }
            group.raw.tick();
            if !group.settled() {
                group.idle_ticks = 0;
                continue;
            }
            group.idle_ticks += 1;
            let quiet_after = if group.raw.raft.state == StateRole::Leader { leader_after } else { follower_after };
            if group.idle_ticks >= quiet_after {
                group.hibernating = true;
            }
        }
    }

    /// Groups not ticking right now.
    #[cfg(test)]
    pub(crate) fn hibernating_groups(&self) -> usize {
        self.groups.values().filter(|g| g.hibernating).count()
    }

    fn run(mut self) {
        info!(node = self.config.node_id, "store loop started");
        // Stopped and joined when the loop ends, whichever way (before the final write when
        // it shuts down).
        let mut purger = Some(Purger::start(self.engine.clone(), self.shared.clone()));
        let tick = Duration::from_millis(self.config.tick_ms);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match self.inbox.recv_timeout(wait) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut shutdown = None;
            let inbox = self.inbox.clone();
            for message in first.into_iter().chain(inbox.try_iter().take(INBOX_DRAIN_MAX)) {
                match message {
                    StoreMsg::Shutdown(done) => shutdown = Some(done),
                    other => self.handle(other),
                }
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + tick;
                self.expire_snapshots();
                if self.last_reconcile.elapsed() >= RECONCILE_INTERVAL {
                    self.last_reconcile = Instant::now();
                    self.reconcile();
                    self.collect_replicas();
                    self.compact_metadata();
                }
            }
            if let Err(error) = self.process_readies() {
                fail(&self.shared, format!("the Raft log store failed: {error}"));
                return;
            }
            let failure = self.shared.storage_error.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(reason) = failure {
                // A partition log could not be written (see `storage_failure`).
                fail(&self.shared, reason);
                return;
            }
            if let Some(done) = shutdown {
                drop(purger.take());
                self.shutdown();
                // The engine (its files and lock) is released before the caller hears of it.
                drop(self);
                let _ = done.send(());
                return;
            }
        }
        self.shutdown();
    }

    pub(crate) fn handle(&mut self, message: StoreMsg) {
        match message {
            StoreMsg::Raft(messages) => {
                for (id, message) in messages {
                    let Some(group) = self.groups.get_mut(&id) else { continue };
                    if message.get_msg_type() == MessageType::MsgSnapshot {
                        if let Kind::Partition(replica) = &group.kind {
                            // The snapshot's data (the log) is pulled first, off the loop; the
                            // message is stepped once it is in place.
                            if let Some(runtime) = self.runtime.as_ref().filter(|_| !self.installing.contains(&id)) {
                                self.installing.insert(id);
                                let source = self.shared.dial_address(NodeId(message.from));
                                let local_next = replica.next_offset();
                                let inbox = self.shared.inbox.clone();
                                runtime.spawn(install_snapshot(inbox, source, id, message, local_next));
                            }
                            continue;
                        }
                    }
                    // Heartbeats keep a quiet group quiet; anything else means work.
                    if !matches!(message.get_msg_type(), MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse)
                    {
                        group.wake();
                    }
                    let _ = group.raw.step(message);
                }
            }
            StoreMsg::HandOffLeadership(reply) => {
                let me = self.config.node_id;
                let mut handed = Vec::new();
                for (id, group) in self.groups.iter_mut() {
                    if group.raw.raft.state != StateRole::Leader {
                        continue;
                    }
                    let last = group.raw.raft.raft_log.last_index();
                    let voters = group.raw.raft.prs().conf().to_conf_state().voters;
                    let successor = voters.iter().copied().filter(|v| *v != me).max_by_key(|v| {
                        group.raw.raft.prs().get(*v).map_or(0, |p| if p.matched == last { u64::MAX } else { p.matched })
                    });
                    if let Some(successor) = successor {
                        group.wake();
                        group.raw.transfer_leader(successor);
                        handed.push(*id);
                    }
                }
                let _ = reply.send(handed);
            }
            StoreMsg::PeerUnreachable(peer) => {
                for (id, group) in self.groups.iter_mut() {
                    if group.raw.raft.leader_id == peer {
                        group.wake();
                    }
                    if group.raw.raft.state == StateRole::Leader {
                        group.raw.report_unreachable(peer);
                        // A snapshot sent to it was lost with the link (its queue is dropped):
                        // say so now, or the leader would wait out SNAPSHOT_TIMEOUT before it
                        // sends another to the peer once it is back.
                        let waiting = group
                            .raw
                            .raft
                            .prs()
                            .get(peer)
                            .is_some_and(|progress| progress.state == ProgressState::Snapshot);
                        if self.snapshots_sent.remove(&(*id, peer)).is_some() && waiting {
                            group.raw.report_snapshot(peer, SnapshotStatus::Failure);
                        }
                    }
                }
            }
            StoreMsg::InstallBatches { group, batches, reply } => {
                let result = match self.groups.get_mut(&group).map(|g| &mut g.kind) {
                    Some(Kind::Partition(replica)) => replica.install(batches),
                    _ => Err(Error::InvalidRequest(format!("no partition group {group} here"))),
                };
                if let Some(error) = result.as_ref().err().filter(|error| is_storage_error(error)) {
                    storage_failure(&self.shared, group, "writing snapshot data to", error);
                }
                let _ = reply.send(result);
            }
            StoreMsg::ResetLog { group, offset, reply } => {
                let result = match self.groups.get_mut(&group).map(|g| &mut g.kind) {
                    Some(Kind::Partition(replica)) => replica.reset(offset),
                    _ => Err(Error::InvalidRequest(format!("no partition group {group} here"))),
                };
                if let Some(error) = result.as_ref().err().filter(|error| is_storage_error(error)) {
                    storage_failure(&self.shared, group, "resetting", error);
                }
                let _ = reply.send(result);
            }
            StoreMsg::SnapshotReady { group, message } => {
                self.installing.remove(&group);
                if let Some(group) = self.groups.get_mut(&group) {
                    group.wake();
                    let _ = group.raw.step(message);
                }
            }
            StoreMsg::SnapshotAborted { group } => {
                self.installing.remove(&group);
            }
            StoreMsg::Repaired { group: id } => self.finish_repair(id),
            StoreMsg::TrimPinning(groups) => self.trim_pinning_logs(&groups),
            StoreMsg::RemovalChecked { group, removed } => {
                if let Some((_, in_flight)) = self.removal_checks.get_mut(&group) {
                    *in_flight = false;
                }
                let placement = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).placement(group);
                if removed && !placement.contains(&self.config.node_id) {
                    info!(group, "dropping a replica the group no longer counts");
                    self.drop_replica(group);
                }
            }
            StoreMsg::Propose { group, data, reply } => {
                let Some(target) = self.groups.get_mut(&group.0) else {
                    let _ = reply.send(Err(Error::NotLeader { leader: None }));
                    return;
                };
                target.wake();
                if target.raw.raft.state != StateRole::Leader {
                    let leader = Some(target.raw.raft.leader_id).filter(|id| *id != 0).map(NodeId);
                    let _ = reply.send(Err(Error::NotLeader { leader }));
                    return;
                }
                // `RawNode::propose` without its `Vec`: the batch stays in the buffer it came in.
                let mut propose = Message::default();
                propose.set_msg_type(MessageType::MsgPropose);
                propose.from = target.raw.raft.id;
                propose.set_entries(vec![Entry { data, ..Entry::default() }].into());
                if let Err(error) = target.raw.step(propose) {
                    let _ = reply.send(Err(match error {
                        raft::Error::ProposalDropped => Error::Overloaded,
                        other => Error::Engine(other.to_string()),
                    }));
                    return;
                }
                let index = target.raw.raft.raft_log.last_index();
                target.pending.insert(index, (target.raw.raft.term, reply));
            }
            StoreMsg::Shutdown(_) => {}
        }
    }

    pub(crate) fn process_readies(&mut self) -> Result<()> {
        let mut batch = LogBatch::default();
        let mut outbound: BTreeMap<u64, Vec<(u64, Message)>> = BTreeMap::new();
        let mut after_persist: Vec<(u64, Message)> = Vec::new();
        let mut readies = Vec::new();
        let mut changes = Vec::new();
        // Whether the write must reach the disk before the loop goes on: new entries, a
        // snapshot, a new term or vote (raft-rs says which), a configuration change or a
        // trimmed log do. A commit index that moved does not (a crash loses a suffix of
        // unsynced writes, and the commit index is learnt again from the leader), so a leader
        // whose followers acknowledged does not pay a second fsync for the news.
        let mut must_sync = false;
        let ids: Vec<u64> = self.groups.keys().copied().collect();
        for id in ids {
            let group = self.groups.get_mut(&id).expect("listed");
            if !group.raw.has_ready() {
                continue;
            }
            let mut ready = group.raw.ready();
            if let Some(soft) = ready.ss() {
                let leader = Some(soft.leader_id).filter(|id| *id != 0).map(NodeId);
                info!(group = id, term = group.raw.raft.term, role = ?soft.raft_state, leader = soft.leader_id, "raft role changed");
                match &group.kind {
                    Kind::Metadata => {
                        self.shared.metadata_leader.store(soft.leader_id, Ordering::Release);
                        if soft.raft_state == StateRole::Leader {
                            // Bootstrap (or catch up on placement) without waiting a period.
                            self.last_reconcile = Instant::now() - RECONCILE_INTERVAL;
                        }
                    }
                    Kind::Partition(replica) => {
                        replica.handle.leader_term.store(group.raw.raft.term, Ordering::Release);
                        // A new leader serves only once it applied an entry of its own term (see
                        // `apply`): until then its high watermark may be behind its predecessor's.
                        let serving = if soft.raft_state == StateRole::Leader { 0 } else { soft.leader_id };
                        replica.handle.leader.store(serving, Ordering::Release);
                    }
                }
                if soft.raft_state != StateRole::Leader {
                    group.fail_pending(leader);
                    group.led_since = None;
                } else if group.led_since.is_none() {
                    group.led_since = Some(Instant::now());
                }
            }
            for message in ready.take_messages() {
                outbound.entry(message.to).or_default().push((id, message));
            }
            if !ready.snapshot().is_empty() {
                changes.extend(Self::apply_snapshot(&self.shared, group, id, ready.snapshot(), &mut batch));
            }
            let committed = ready.take_committed_entries();
            // A configuration change also records the apply state and conf state: rare, synced.
            must_sync |= committed.iter().any(|entry| entry.get_entry_type() != EntryType::EntryNormal);
            changes.extend(Self::apply(&self.shared, group, id, &committed, &mut batch));
            let hard_state = ready.hs().cloned();
            must_sync |= ready.must_sync();
            group.raw.mut_store().stage(&mut batch, ready.entries(), hard_state.as_ref())?;
            after_persist.extend(ready.take_persisted_messages().into_iter().map(|m| (id, m)));
            readies.push((id, ready));
        }
        for (id, group) in self.groups.iter_mut() {
            if group.failed {
                continue;
            }
            if let Kind::Partition(replica) = &mut group.kind {
                if replica.repair_to.is_some() {
                    // Its log is short of what the apply state says; recording one now would
                    // claim the missing entries are in it.
                    continue;
                }
                let applied = group.applied;
                match replica.maybe_flush(applied, group.raw.store(), &mut batch) {
                    Ok(Some(flushed)) => {
                        // The trim is synced before raft-engine may purge the files it frees.
                        must_sync = true;
                        // Entries up to the flushed point live in the partition log now; keep a
                        // tail for followers that lag a little, snapshots serve the rest.
                        let last = group.raw.raft.raft_log.last_index();
                        let keep_from =
                            flushed.applied_index.min(last.saturating_sub(self.config.log_retained_entries));
                        match group.raw.mut_store().compact(&mut batch, keep_from) {
                            Ok(()) => replica.handle.raft_first_index.fetch_max(keep_from, Ordering::Release),
                            Err(error) => {
                                warn!(group = id, %error, "trimming the Raft log failed");
                                0
                            }
                        };
                    }
                    Ok(None) => {}
                    Err(error) => {
                        storage_failure(&self.shared, *id, "flushing", &error);
                        group.failed = true;
                    }
                }
            }
        }
        // A leader's appends go out before its own fsync, so followers persist in parallel
        // (Raft thesis §10.2.1); everything else waits for the fsync below.
        self.send(std::mem::take(&mut outbound));
        if !batch.is_empty() {
            self.engine.write(&mut batch, must_sync).map_err(engine_error)?;
        }
        for (id, message) in after_persist {
            outbound.entry(message.to).or_default().push((id, message));
        }
        for (id, ready) in readies {
            let group = self.groups.get_mut(&id).expect("listed");
            let mut light = group.raw.advance(ready);
            let mut late = LogBatch::default();
            if light.commit_index().is_some() {
                // The commit index moved without a new Ready: persist it, or a restart would
                // see an apply state ahead of the recorded commit.
                let hard_state = group.raw.raft.hard_state();
                group.raw.mut_store().stage(&mut late, &[], Some(&hard_state))?;
            }
            for message in light.take_messages() {
                outbound.entry(message.to).or_default().push((id, message));
            }
            let committed = light.take_committed_entries();
            changes.extend(Self::apply(&self.shared, group, id, &committed, &mut late));
            group.raw.advance_apply();
            if !late.is_empty() {
                // Not fsynced on its own: the loop's next synced write makes it durable, and
                // nothing depends on it before then.
                self.engine.write(&mut late, false).map_err(engine_error)?;
            }
        }
        self.send(outbound);
        for change in changes {
            self.on_catalog_change(change);
        }
        Ok(())
    }

    /// Hands messages to the transport, one batch per destination node.
    fn send(&mut self, outbound: BTreeMap<u64, Vec<(u64, Message)>>) {
        for (to, messages) in outbound {
            for (group, message) in &messages {
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    self.snapshots_sent.insert((*group, to), Instant::now());
                }
            }
            self.transport.send(to, messages);
        }
    }

    /// Applies committed entries of one group, answering the proposals they resolve.
    fn apply(shared: &Shared, group: &mut Group, id: u64, entries: &[Entry], batch: &mut LogBatch) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(last) = entries.last() {
            group.raw.mut_store().applied_to(last.index);
        }
        if matches!(&group.kind, Kind::Partition(replica) if replica.repair_to.is_some()) {
            // Copied: an entry decoded from the wire shares its whole received buffer (other
            // groups' entries too), and a repair can last long enough for that to add up.
            group.deferred.extend(entries.iter().map(|entry| Entry {
                data: Bytes::copy_from_slice(&entry.data),
                context: Bytes::copy_from_slice(&entry.context),
                ..entry.clone()
            }));
            return changes;
        }
        for entry in entries {
            group.applied = entry.index;
            if matches!(group.kind, Kind::Metadata) {
                shared.metadata_applied.store(entry.index, Ordering::Release);
            }
            let waiting = group.pending.remove(&entry.index);
            // Proposals older than this entry were overwritten by another leader.
            let stale: Vec<u64> = group.pending.range(..entry.index).map(|(index, _)| *index).collect();
            for index in stale {
                if let Some((_, reply)) = group.pending.remove(&index) {
                    let _ = reply.send(Err(Error::NotLeader { leader: None }));
                }
            }
            let reply = match waiting {
                Some((term, reply)) if term == entry.term => Some(reply),
                Some((_, reply)) => {
                    let _ = reply.send(Err(Error::NotLeader { leader: None }));
                    None
                }
                None => None,
            };
            if entry.get_entry_type() != EntryType::EntryNormal {
                Self::apply_conf_change(shared, group, entry, batch);
                // Record the apply state at the change: snapshots are made at the recorded
                // state and carry its configuration, and a replica being added accepts only a
                // snapshot whose configuration names it (raft-rs refuses others).
                if let Kind::Partition(replica) = &mut group.kind {
                    if let Err(error) = replica.flush_now(group.applied, group.raw.store(), batch) {
                        if is_storage_error(&error) {
                            storage_failure(shared, id, "flushing at a configuration change", &error);
                        } else {
                            error!(group = id, %error, "flushing at a configuration change failed");
                        }
                    }
                }
                continue;
            }
            if entry.data.is_empty() || group.failed {
                continue;
            }
            let result = match &mut group.kind {
                Kind::Metadata => match serde_json::from_slice::<Command>(&entry.data) {
                    Ok(command) => {
                        let applied = shared.catalog.write().unwrap_or_else(|p| p.into_inner()).apply(&command);
                        applied.map(|change| {
                            let answer = match &change {
                                Change::TopicCreated(topic) | Change::PartitionsAdded(topic) => {
                                    Applied::Topic(topic.clone())
                                }
                                Change::ProducerIdsAllocated { first } => Applied::ProducerIds(*first),
                                Change::Rebalanced { moved } => Applied::Moved(moved.len()),
                                _ => Applied::Done,
                            };
                            changes.push(change);
                            answer
                        })
                    }
                    Err(error) => Err(Error::InvalidRequest(format!("undecodable metadata command: {error}"))),
                },
                Kind::Partition(replica) => match replica.apply(entry) {
                    Ok(outcome) => outcome.map(|(base, last)| Applied::Offsets(base, last)),
                    Err(error) => {
                        storage_failure(shared, id, "applying to", &error);
                        group.failed = true;
                        Err(error)
                    }
                },
            };
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        // The leader has applied an entry of its term: everything committed before it is in its
        // log, so its high watermark is at least its predecessor's. It may serve now.
        if let (Kind::Partition(replica), Some(last)) = (&group.kind, entries.last()) {
            if group.raw.raft.state == StateRole::Leader && last.term == group.raw.raft.term {
                replica.handle.leader.store(shared.node_id.0, Ordering::Release);
            }
        }
        changes
    }

    /// Installs a metadata snapshot: the catalog it carries replaces this node's (and is kept
    /// as the image the node restarts from), and the Raft state is replaced.
    fn apply_metadata_snapshot(
        shared: &Shared,
        group: &mut Group,
        snapshot: &raft::eraftpb::Snapshot,
        batch: &mut LogBatch,
    ) -> Option<Change> {
        let catalog: Catalog = match serde_json::from_slice(snapshot.get_data()) {
            Ok(catalog) => catalog,
            Err(error) => {
                error!(%error, "undecodable metadata snapshot; the metadata group stops applying");
                group.failed = true;
                return None;
            }
        };
        let index = snapshot.get_metadata().index;
        let storage = group.raw.mut_store();
        let staged = storage
            .apply_snapshot(batch, snapshot, 0)
            .and_then(|()| storage.stage_metadata_image(batch, snapshot.get_data()));
        if let Err(error) = staged {
            error!(%error, "cannot record a metadata snapshot; the metadata group stops applying");
            group.failed = true;
            return None;
        }
        *shared.catalog.write().unwrap_or_else(|p| p.into_inner()) = catalog;
        *shared.metadata_voters.write().unwrap_or_else(|p| p.into_inner()) =
            members(snapshot.get_metadata().get_conf_state());
        shared.metadata_applied.store(index, Ordering::Release);
        shared.metadata_truncated.store(index, Ordering::Release);
        group.applied = index;
        info!(index, "installed a metadata snapshot");
        Some(Change::Restored)
    }

    /// Records an installed snapshot. A partition's data was pulled and appended before the
    /// message was stepped, so here the log is flushed and the Raft state replaced.
    fn apply_snapshot(
        shared: &Shared,
        group: &mut Group,
        id: u64,
        snapshot: &raft::eraftpb::Snapshot,
        batch: &mut LogBatch,
    ) -> Option<Change> {
        let Kind::Partition(replica) = &mut group.kind else {
            return Self::apply_metadata_snapshot(shared, group, snapshot, batch);
        };
        let data: Option<SnapshotData> = serde_json::from_slice(snapshot.get_data()).ok();
        let installed = match data {
            Some(data) if replica.next_offset() == data.next_offset => replica
                .flush_snapshot()
                .and_then(|next| group.raw.mut_store().apply_snapshot(batch, snapshot, next).map(|()| next)),
            Some(data) => Err(Error::Engine(format!(
                "snapshot needs the log to end at {} but it ends at {}",
                data.next_offset,
                replica.next_offset()
            ))),
            None => Err(Error::Engine("undecodable snapshot data".into())),
        };
        match installed {
            Ok(next_offset) => {
                replica.handle.set_voters(snapshot.get_metadata().get_conf_state());
                group.applied = snapshot.get_metadata().index;
                info!(group = id, index = group.applied, next_offset, "installed a snapshot")
            }
            Err(error) => {
                if is_storage_error(&error) {
                    storage_failure(shared, id, "installing a snapshot into", &error);
                } else {
                    error!(group = id, %error, "cannot install a snapshot; the replica stops applying");
                }
                group.failed = true;
            }
        }
        None
    }

    /// Reports snapshots that were never acknowledged as failed, so the leader retries.
    fn expire_snapshots(&mut self) {
        let expired: Vec<(u64, u64)> = self
            .snapshots_sent
            .iter()
            .filter(|(_, sent)| sent.elapsed() >= SNAPSHOT_TIMEOUT)
            .map(|(key, _)| *key)
            .collect();
        for (group, to) in expired {
            self.snapshots_sent.remove(&(group, to));
            if let Some(group) = self.groups.get_mut(&group) {
                let waiting =
                    group.raw.raft.prs().get(to).is_some_and(|progress| progress.state == ProgressState::Snapshot);
                if waiting {
                    group.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
            }
        }
    }

    fn apply_conf_change(shared: &Shared, group: &mut Group, entry: &Entry, batch: &mut LogBatch) {
        use protobuf::Message as _;
        let conf_state = match entry.get_entry_type() {
            EntryType::EntryConfChange => raft::eraftpb::ConfChange::parse_from_bytes(&entry.data)
                .ok()
                .and_then(|change| group.raw.apply_conf_change(&change).ok()),
            _ => raft::eraftpb::ConfChangeV2::parse_from_bytes(&entry.data)
                .ok()
                .and_then(|change| group.raw.apply_conf_change(&change).ok()),
        };
        if let Some(conf_state) = conf_state {
            match &group.kind {
                Kind::Partition(replica) => replica.handle.set_voters(&conf_state),
                Kind::Metadata => {
                    *shared.metadata_voters.write().unwrap_or_else(|p| p.into_inner()) = members(&conf_state)
                }
            }
            if let Err(error) = group.raw.mut_store().stage_conf_state(batch, conf_state) {
                error!(%error, "cannot record a conf change");
            }
        }
    }

    /// Creates or removes the local replicas a catalog change asks for.
    fn on_catalog_change(&mut self, change: Change) {
        let me = NodeId(self.config.node_id);
        match change {
            Change::Bootstrapped => {
                let nodes = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).nodes.clone();
                for node in nodes.values() {
                    self.transport.add_peer(node.id.0, &node.address);
                }
            }
            Change::Restored => {
                let catalog = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).clone();
                for node in catalog.nodes.values().filter(|node| !node.removed) {
                    self.transport.add_peer(node.id.0, &node.address);
                }
                // Replicas placed here: opened if they exist, else created empty for their
                // leader to bring in (never founded: the groups run already).
                for topic in catalog.topics.values() {
                    for info in &topic.partitions {
                        if !info.replicas.contains(&me) || self.groups.contains_key(&info.group.0) {
                            continue;
                        }
                        if let Err(error) = self.create_replica(topic, info.partition, false) {
                            error!(topic = %topic.name, partition = info.partition, %error, "cannot open the local replica");
                        }
                    }
                }
            }
            Change::EndpointsSet | Change::ProducerIdsAllocated { .. } => {}
            Change::NodeAdded(node) => {
                info!(node = node.id.0, address = %node.address, "node added to the cluster");
                self.transport.add_peer(node.id.0, &node.address);
            }
            Change::NodeRemoved { id, moved } => {
                info!(node = id.0, replicas_moved = moved.len(), "node removed from the cluster");
                self.create_moved_in(moved);
            }
            Change::Rebalanced { moved } => {
                info!(partitions = moved.len(), "replicas rebalanced");
                self.create_moved_in(moved);
            }
            Change::TopicConfigChanged(topic) => {
                for info in &topic.partitions {
                    if let Some(Group { kind: Kind::Partition(replica), .. }) = self.groups.get_mut(&info.group.0) {
                        replica.set_config(&self.config, &topic.config);
                    }
                }
                info!(topic = %topic.name, config = ?topic.config, "topic settings changed");
            }
            Change::TopicCreated(topic) | Change::PartitionsAdded(topic) => {
                for info in &topic.partitions {
                    if !info.replicas.contains(&me) || self.groups.contains_key(&info.group.0) {
                        continue;
                    }
                    if let Err(error) = self.create_replica(&topic, info.partition, true) {
                        error!(topic = %topic.name, partition = info.partition, %error, "cannot create the local replica");
                    }
                }
            }
            Change::TopicDeleted(topic) => {
                for info in &topic.partitions {
                    self.drop_replica(info.group.0);
                }
            }
        }
    }

    /// Removes a local replica and everything of it: Raft state, partition log, directory.
    fn drop_replica(&mut self, id: u64) {
        let Some(mut group) = self.groups.remove(&id) else { return };
        group.fail_pending(None);
        self.installing.remove(&id);
        self.removal_checks.remove(&id);
        let mut batch = LogBatch::default();
        let cleaned = group.raw.mut_store().clean(&mut batch);
        if let Err(error) = cleaned.and_then(|()| self.engine.write(&mut batch, true).map(|_| ()).map_err(engine_error))
        {
            record_storage_failure(&self.shared, || {
                format!("cleaning dropped group {id} from the Raft log store failed: {error}")
            });
        }
        self.shared.partitions.write().unwrap_or_else(|p| p.into_inner()).retain(|_, handle| handle.group.0 != id);
        if let Kind::Partition(replica) = group.kind {
            let dir = replica.dir.clone();
            drop(replica);
            remove_dir(&dir);
        }
    }

    /// Drops the replicas this node keeps but no longer needs: their partition is placed on
    /// other nodes now and the group's configuration, as committed, no longer names this node
    /// (Kafka deletes a reassigned-away replica once the move completes; TiKV garbage-collects
    /// such peers). A replica that applied its own removal goes at once; otherwise the other
    /// replicas are asked what they applied (an append never reaches a removed voter).
    fn collect_replicas(&mut self) {
        let me = self.config.node_id;
        // One pass over the catalog (not one per group, no copy of it): this runs every 300 ms
        // on the loop.
        let placements: HashMap<u64, Vec<u64>> = {
            let catalog = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner());
            if catalog.nodes.is_empty() {
                return;
            }
            catalog.topics.values().flat_map(|t| &t.partitions).map(|p| (p.group.0, p.node_ids())).collect()
        };
        let mut removed_here = Vec::new();
        for (id, group) in &self.groups {
            if !matches!(group.kind, Kind::Partition(_)) {
                continue;
            }
            let placement = placements.get(id).cloned().unwrap_or_default();
            if placement.contains(&me) {
                continue;
            }
            if let Some((began, in_flight)) = self.removal_checks.get(id) {
                if *in_flight || began.elapsed() < REMOVAL_CHECK_INTERVAL {
                    continue;
                }
            }
            let conf = group.raw.raft.prs().conf().to_conf_state();
            // A replica moved here and away again before it was brought in knows no voters.
            if !members(&conf).contains(&me) || placement.is_empty() {
                removed_here.push(*id);
            } else if let Some(runtime) = &self.runtime {
                self.removal_checks.insert(*id, (Instant::now(), true));
                runtime.spawn(check_removal(self.shared.clone(), *id, placement));
            }
        }
        for id in removed_here {
            info!(group = id, "dropping a replica this node no longer holds");
            self.drop_replica(id);
        }
    }

    /// Trims the Raft logs of the groups whose old entries keep raft-engine from purging its
    /// oldest files (it names them once its files hold more than the purge threshold): a
    /// partition's log is cut at its last recorded flush, dropping the tail kept for lagging
    /// followers, except what a follower that is in touch still lacks (a leader's view; one out
    /// of touch gets a snapshot); the metadata log is cut at its applied index. Left alone,
    /// raft-engine would copy those entries into new files after a few rounds.
    fn trim_pinning_logs(&mut self, groups: &[u64]) {
        let mut batch = LogBatch::default();
        let mut trimmed = Vec::new();
        for id in groups {
            if *id == METADATA_GROUP.0 {
                self.compact_metadata_over(1);
                continue;
            }
            let Some(group) = self.groups.get_mut(id) else { continue };
            let Kind::Partition(replica) = &group.kind else { continue };
            if group.failed || replica.repair_to.is_some() {
                continue;
            }
            let Some(flushed) = group.raw.store().apply_state() else { continue };
            let mut keep_from = flushed.applied_index;
            if group.raw.raft.state == StateRole::Leader {
                // A follower in touch (check_quorum keeps `recent_active` current) that lacks
                // entries gets them from the log, not as a snapshot of the whole partition.
                let me = self.shared.node_id.0;
                for (id, progress) in group.raw.raft.prs().iter() {
                    if *id != me && progress.recent_active {
                        keep_from = keep_from.min(progress.matched + 1);
                    }
                }
            }
            let storage = group.raw.mut_store();
            if keep_from <= storage.truncated_index() + 1 {
                continue;
            }
            match storage.compact(&mut batch, keep_from) {
                Ok(()) => {
                    replica.handle.raft_first_index.fetch_max(keep_from, Ordering::Release);
                    trimmed.push(*id);
                }
                Err(error) => warn!(group = id, %error, "trimming the Raft log failed"),
            }
        }
        if batch.is_empty() {
            return;
        }
        match self.engine.write(&mut batch, true) {
            Ok(_) => info!(groups = ?trimmed, "trimmed Raft logs that kept raft-engine from purging its oldest files"),
            Err(error) => {
                let error = engine_error(error);
                record_storage_failure(&self.shared, || format!("the Raft log store failed: {error}"));
            }
        }
    }

    /// Cuts the metadata group's Raft log at its applied index once it has grown by
    /// `metadata_log_compact_entries`, keeping the catalog as of that index as the image the
    /// node restarts from. Everything applied is durable by now: the loop's last synced write
    /// carried it.
    fn compact_metadata(&mut self) {
        self.compact_metadata_over(self.config.metadata_log_compact_entries);
    }

    /// Cuts the metadata log at its applied index once `entries` were applied since the last cut.
    fn compact_metadata_over(&mut self, entries: u64) {
        let Some(group) = self.groups.get_mut(&METADATA_GROUP.0) else { return };
        let applied = group.applied;
        let storage = group.raw.mut_store();
        if group.failed || applied < storage.truncated_index() + entries {
            return;
        }
        let image = {
            let catalog = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner());
            match serde_json::to_vec(&*catalog) {
                Ok(image) => image,
                Err(error) => {
                    error!(%error, "cannot encode the catalog; the metadata log is not compacted");
                    return;
                }
            }
        };
        let mut batch = LogBatch::default();
        let staged =
            storage.stage_metadata_image(&mut batch, &image).and_then(|()| storage.compact(&mut batch, applied + 1));
        match staged.and_then(|()| self.engine.write(&mut batch, true).map(|_| ()).map_err(engine_error)) {
            Ok(()) => {
                self.shared.metadata_truncated.store(applied, Ordering::Release);
                info!(index = applied, image_bytes = image.len(), "compacted the metadata log")
            }
            Err(error) => error!(%error, "compacting the metadata log failed"),
        }
    }

    /// Creates the replicas placed on this node by a move; the groups' leaders bring them in.
    /// Replicas moved away stay until their groups no longer count this node (see `collect_replicas`).
    fn create_moved_in(&mut self, moved: Vec<(String, PartitionInfo)>) {
        let me = NodeId(self.config.node_id);
        for (topic_name, info) in moved {
            if !info.replicas.contains(&me) || self.groups.contains_key(&info.group.0) {
                continue;
            }
            let topic = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).topics.get(&topic_name).cloned();
            if let Some(topic) = topic {
                if let Err(error) = self.create_replica(&topic, info.partition, false) {
                    error!(topic = %topic_name, partition = info.partition, %error, "cannot create a moved-in replica");
                }
            }
        }
    }

    /// Creates the local replica of a partition. A replica created with its topic starts with
    /// the placement as its voters; one moved here later starts empty and is brought in by the
    /// leader (conf change, then entries or a snapshot).
    fn create_replica(&mut self, topic: &TopicInfo, partition: u32, founding: bool) -> Result<()> {
        let info = &topic.partitions[partition as usize];
        let voters: Vec<u64> = if founding { info.replicas.iter().map(|node| node.0).collect() } else { Vec::new() };
        let (storage, existed) = GroupStorage::open(self.engine.clone(), info.group.0, &voters)?;
        let (mut storage, existed) = (storage, existed);
        let (replica, applied) = PartitionReplica::open(&self.config, &topic.name, &topic.config, info, &storage)?;
        storage.ensure_committed(applied);
        replica.handle.set_voters(&raft::Storage::initial_state(&storage).map(|s| s.conf_state).unwrap_or_default());
        let mut raw = RawNode::new(&self.raft_config(applied), storage, &self.logger)
            .map_err(|e| Error::Engine(e.to_string()))?;
        if founding && !existed && info.replicas[0].0 == self.config.node_id && raw.raft.promotable() {
            // The preferred leader campaigns at once, which spreads leaders as placement does.
            let _ = raw.campaign();
        }
        self.shared
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((topic.name.clone(), partition), replica.handle.clone());
        let repair = replica.repair_to.map(|to| (replica.next_offset(), to));
        self.groups.insert(info.group.0, Group::new(raw, Kind::Partition(Box::new(replica)), applied));
        if let (Some((from, to)), Some(runtime)) = (repair, self.runtime.as_ref()) {
            runtime.spawn(repair_replica(self.shared.clone(), info.group.0, from, to));
        }
        Ok(())
    }

    /// A repairing replica has its missing batches: it applies the entries that waited.
    fn finish_repair(&mut self, id: u64) {
        let Some(group) = self.groups.get_mut(&id) else { return };
        let Kind::Partition(replica) = &mut group.kind else { return };
        let Some(to) = replica.repair_to else { return };
        if replica.next_offset() < to {
            error!(group = id, end = replica.next_offset(), to, "repair ended short; the replica keeps waiting");
            return;
        }
        replica.repair_to = None;
        info!(group = id, to, waiting = group.deferred.len(), "partition log repaired from another replica");
        let deferred = std::mem::take(&mut group.deferred);
        let mut batch = LogBatch::default();
        let changes = Self::apply(&self.shared, group, id, &deferred, &mut batch);
        group.wake();
        if !batch.is_empty() {
            if let Err(error) = self.engine.write(&mut batch, true) {
                record_storage_failure(&self.shared, || {
                    format!("recording group {id}'s repaired state in the Raft log store failed: {error}")
                });
            }
        }
        for change in changes {
            self.on_catalog_change(change);
        }
    }

    /// Brings each group this node leads towards the catalog's placement, one conf change at a
    /// time (joint consensus when a replica moves): adds missing voters, removes extra ones,
    /// and hands leadership away first when this node itself is to leave. Also proposes the
    /// cluster's bootstrap entry when the metadata leader finds the catalog empty.
    pub(crate) fn reconcile(&mut self) {
        self.record_follower_lag();
        let me = self.config.node_id;
        let catalog = self.shared.catalog.read().unwrap_or_else(|p| p.into_inner()).clone();
        if catalog.nodes.is_empty() && !self.config.join {
            if let Some(metadata) = self.groups.get_mut(&METADATA_GROUP.0) {
                if metadata.raw.raft.state == StateRole::Leader {
                    let nodes = self
                        .config
                        .peers
                        .iter()
                        .map(|peer| NodeInfo {
                            id: NodeId(peer.id),
                            address: peer.address.clone(),
                            removed: false,
                            endpoints: BTreeMap::new(),
                        })
                        .collect();
                    let cluster_id = new_cluster_id(me);
                    if let Ok(data) = serde_json::to_vec(&Command::Bootstrap { nodes, cluster_id }) {
                        metadata.wake();
                        let _ = metadata.raw.propose(Vec::new(), data);
                    }
                }
            }
            return;
        }
        for (id, group) in self.groups.iter_mut() {
            if group.raw.raft.state != StateRole::Leader || group.raw.raft.has_pending_conf() {
                continue;
            }
            let desired: std::collections::BTreeSet<u64> = match &group.kind {
                Kind::Metadata => catalog.active_nodes().into_iter().map(|n| n.0).collect(),
                Kind::Partition(_) => catalog.placement(*id).into_iter().collect(),
            };
            let conf = group.raw.raft.prs().conf().to_conf_state();
            if desired.is_empty() || !conf.voters_outgoing.is_empty() {
                continue;
            }
            let current: std::collections::BTreeSet<u64> = conf.voters.iter().copied().collect();
            if current == desired {
                Self::balance_leadership(group, *id, &catalog, me, self.config.leader_balance_after_ms);
                continue;
            }
            if !desired.contains(&me) {
                if let Some(successor) = desired.intersection(&current).next() {
                    info!(group = id, to = successor, "handing leadership over before leaving the group");
                    group.wake();
                    group.raw.transfer_leader(*successor);
                }
                continue;
            }
            use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
            let single = |node: u64, change_type| ConfChangeSingle { change_type, node_id: node, ..Default::default() };
            let mut changes: Vec<ConfChangeSingle> =
                desired.difference(&current).map(|node| single(*node, ConfChangeType::AddNode)).collect();
            changes.extend(current.difference(&desired).map(|node| single(*node, ConfChangeType::RemoveNode)));
            let mut change = ConfChangeV2::default();
            change.set_transition(ConfChangeTransition::Auto);
            change.set_changes(changes.into());
            info!(group = id, from = ?current, to = ?desired, "changing the group's voters");
            group.wake();
            if let Err(error) = group.raw.propose_conf_change(Vec::new(), change) {
                warn!(group = id, %error, "proposing a conf change failed");
            }
        }
    }

    /// Hands a partition's leadership to its preferred replica (first in placement order) when
    /// this node has led it long enough and the preferred replica has every entry: leaders
    /// spread out again after failures moved them.
    fn balance_leadership(group: &mut Group, id: u64, catalog: &Catalog, me: u64, after_ms: u64) {
        if after_ms == 0 || !matches!(group.kind, Kind::Partition(_)) {
            return;
        }
        if group.led_since.is_none_or(|since| since.elapsed() < Duration::from_millis(after_ms)) {
            return;
        }
        let preferred = catalog.partition_by_group(id).and_then(|p| p.replicas.first()).map(|n| n.0);
        let Some(preferred) = preferred.filter(|p| *p != me) else { return };
        let last = group.raw.raft.raft_log.last_index();
        let caught_up = group.raw.raft.prs().get(preferred).is_some_and(|p| p.matched == last && p.recent_active);
        if caught_up {
            info!(group = id, to = preferred, "handing leadership back to the preferred replica");
            // Wait another period before trying again if the transfer does not happen.
            group.led_since = Some(Instant::now());
            group.wake();
            group.raw.transfer_leader(preferred);
        }
    }

    /// Publishes how far behind each follower is, for the metrics.
    fn record_follower_lag(&self) {
        let mut lag = BTreeMap::new();
        for (id, group) in &self.groups {
            if group.raw.raft.state != StateRole::Leader {
                continue;
            }
            let last = group.raw.raft.raft_log.last_index();
            for (follower, progress) in group.raw.raft.prs().iter() {
                if *follower != self.config.node_id {
                    lag.insert((GroupId(*id), NodeId(*follower)), last.saturating_sub(progress.matched));
                }
            }
        }
        *self.shared.follower_lag.write().unwrap_or_else(|p| p.into_inner()) = lag;
    }

    /// Flushes every partition log and records the apply states (graceful stop).
    fn shutdown(&mut self) {
        let mut batch = LogBatch::default();
        for (id, group) in self.groups.iter_mut() {
            group.fail_pending(None);
            if group.failed {
                continue;
            }
            if let Kind::Partition(replica) = &mut group.kind {
                if replica.repair_to.is_some() {
                    continue;
                }
                let applied = group.applied;
                if let Err(error) = replica.flush_now(applied, group.raw.store(), &mut batch) {
                    error!(group = id, %error, "final flush failed");
                }
            }
        }
        if !batch.is_empty() {
            if let Err(error) = self.engine.write(&mut batch, true) {
                error!(%error, "final write to the Raft log store failed");
            }
        }
        self.shared.stopped.store(true, Ordering::Release);
        info!(node = self.config.node_id, "store loop stopped");
    }
}

/// Pulls a snapshot's data (the partition log up to its end) from the replica that sent it,
/// then hands the message back to the loop to be stepped.
async fn install_snapshot(
    inbox: Sender<StoreMsg>,
    source: Option<String>,
    group: u64,
    message: Message,
    local_next: u64,
) {
    let outcome = pull_snapshot_data(&inbox, source, group, &message, local_next).await;
    let done = match outcome {
        Ok(()) => StoreMsg::SnapshotReady { group, message },
        Err(error) => {
            warn!(group, %error, "pulling snapshot data failed; the leader will send the snapshot again");
            StoreMsg::SnapshotAborted { group }
        }
    };
    let _ = deliver(&inbox, done).await;
}

async fn pull_snapshot_data(
    inbox: &Sender<StoreMsg>,
    source: Option<String>,
    group: u64,
    message: &Message,
    local_next: u64,
) -> std::result::Result<(), String> {
    let data: SnapshotData =
        serde_json::from_slice(message.get_snapshot().get_data()).map_err(|e| format!("undecodable snapshot: {e}"))?;
    let source = source.ok_or("no address for the snapshot's sender")?;
    info!(group, from = local_next, to = data.next_offset, %source, "pulling snapshot data");
    pull_range(inbox, &source, group, local_next, data.next_offset).await
}

/// Fetches what a repairing replica's log lacks from the other replicas, one after another,
/// until one has it all; then tells the loop. Gives up only when the node stops or the group
/// leaves it.
async fn repair_replica(shared: Arc<Shared>, group: u64, from: u64, to: u64) {
    let inbox = shared.inbox.clone();
    let me = shared.node_id;
    loop {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(handle) = shared.partition_by_group(group) else { return };
        let local_next = handle.reader.next_offset().0.max(from);
        let voters = handle.voters.read().unwrap_or_else(|p| p.into_inner()).clone();
        for voter in voters.into_iter().filter(|voter| *voter != me) {
            let Some(source) = shared.dial_address(voter) else { continue };
            info!(group, from = local_next, to, %source, "repairing the partition log from another replica");
            match pull_range(&inbox, &source, group, local_next, to).await {
                Ok(()) => {
                    let _ = deliver(&inbox, StoreMsg::Repaired { group }).await;
                    return;
                }
                Err(error) => warn!(group, %source, %error, "repair from this replica failed; trying another"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Asks the replicas of `group`'s placement, in turn, for the configuration they applied; the
/// first whose (committed, non-empty) configuration leaves this node out settles it. A
/// committed configuration never comes back, so one such answer is enough.
async fn check_removal(shared: Arc<Shared>, group: u64, placement: Vec<u64>) {
    let me = shared.node_id.0;
    let mut removed = false;
    for node in placement.into_iter().filter(|node| *node != me) {
        let Some(address) = shared.dial_address(NodeId(node)) else { continue };
        match group_voters(&address, group).await {
            Ok(voters) if !voters.is_empty() && !voters.contains(&me) => {
                removed = true;
                break;
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(group, node, %error, "cannot ask a replica for its voters"),
        }
    }
    let _ = deliver(&shared.inbox, StoreMsg::RemovalChecked { group, removed }).await;
}

async fn group_voters(address: &str, group: u64) -> std::result::Result<Vec<u64>, String> {
    let mut client = crate::transport::call_client(address).await?;
    let request = proto::v1::GroupVotersRequest { group_id: group };
    Ok(client.group_voters(request).await.map_err(|e| e.to_string())?.into_inner().voters)
}

/// Appends a source replica's batches `[from, to)` to the local replica of `group`.
async fn pull_range(
    inbox: &Sender<StoreMsg>,
    source: &str,
    group: u64,
    from: u64,
    to: u64,
) -> std::result::Result<(), String> {
    let mut client = crate::transport::call_client(source).await?;
    let mut offset = from;
    while offset < to {
        let request = proto::v1::ReadReplicaRequest {
            group_id: group,
            offset,
            until_offset: to,
            max_bytes: crate::transport::SNAPSHOT_CHUNK_BYTES_MAX as u32,
        };
        let response = client.read_replica(request).await.map_err(|e| e.to_string())?.into_inner();
        if offset < response.log_start_offset {
            let start = response.log_start_offset;
            ask(inbox, |reply| StoreMsg::ResetLog { group, offset: start, reply }).await?;
            offset = start;
            continue;
        }
        if response.batches.is_empty() {
            return Err(format!("the source has no data at {offset}, below {to}"));
        }
        let batches = response.batches;
        offset = ask(inbox, |reply| StoreMsg::InstallBatches { group, batches, reply }).await?;
    }
    Ok(())
}

/// Sends a request to the loop and waits for its answer.
async fn ask<T>(
    inbox: &Sender<StoreMsg>,
    request: impl FnOnce(oneshot::Sender<Result<T>>) -> StoreMsg,
) -> std::result::Result<T, String> {
    let (reply, answer) = oneshot::channel();
    deliver(inbox, request(reply)).await?;
    answer.await.map_err(|_| "the store loop stopped".to_string())?.map_err(|e| e.to_string())
}

/// Sends to the loop, waiting while its inbox is full.
async fn deliver(inbox: &Sender<StoreMsg>, mut message: StoreMsg) -> std::result::Result<(), String> {
    loop {
        match inbox.try_send(message) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(back)) => {
                message = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err("the store loop stopped".into()),
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        warn!(dir = %dir.display(), %error, "cannot remove a deleted partition's directory");
    }
}

/// Whether an error means this node's storage failed (an I/O error, a log poisoned by one, a
/// raft-engine write), not that a request or an entry was refused.
fn is_storage_error(error: &Error) -> bool {
    matches!(error, Error::Log(log_store::Error::Io { .. } | log_store::Error::Poisoned { .. }) | Error::Engine(_))
}

/// Records that a partition log could not be written (its outer errors are I/O errors or a log
/// poisoned by one; a refused batch is an answer, not a failure). The loop stops, and logs the
/// first such failure, at the end of the iteration: with one data directory, the node's storage
/// is gone, as with a failed raft-engine write.
fn storage_failure(shared: &Shared, group: u64, doing: &str, error: &Error) {
    record_storage_failure(shared, || format!("{doing} the partition log of group {group} failed: {error}"));
}

/// Keeps the first storage failure of the loop's iteration; the loop stops on it (`fail`).
pub(crate) fn record_storage_failure(shared: &Shared, reason: impl FnOnce() -> String) {
    shared.storage_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(reason);
}

/// Stops the node's replication for good: logged once, then [`Cluster::storage_failed`]
/// resolves and new requests find the loop gone.
fn fail(shared: &Shared, reason: String) {
    // Published before it is logged: the log may sit on the disk that failed.
    shared.stopped.store(true, Ordering::Release);
    shared.failure.send_replace(Some(reason.clone()));
    error!(%reason, "this node's storage failed; stopping its store loop");
}

/// The message a caught panic carried.
pub(crate) fn panic_reason(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

/// Sends a message to the store loop without blocking: a full inbox is backpressure.
pub(crate) fn try_send(inbox: &Sender<StoreMsg>, message: StoreMsg) -> Result<()> {
    inbox.try_send(message).map_err(|error| match error {
        crossbeam_channel::TrySendError::Full(_) => Error::Overloaded,
        crossbeam_channel::TrySendError::Disconnected(_) => Error::Stopped,
    })
}

impl Shared {
    pub(crate) fn propose_command(&self, command: &Command) -> Result<Vec<u8>> {
        serde_json::to_vec(command).map_err(|e| Error::InvalidRequest(e.to_string()))
    }
}

/// A fresh cluster id: the founding node's id and the time, unique enough for operators and
/// for Kafka clients, which only compare it.
fn new_cluster_id(node_id: u64) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("rmq-{:x}-{node_id}", nanos)
}
