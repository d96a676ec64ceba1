//! Deterministic simulation of the multi-raft core (tests only).
//!
//! Several nodes' store loops run in one thread, driven step by step, over a simulated network
//! that drops, delays, duplicates and reorders messages and cuts nodes apart. Nodes crash and
//! lose every byte their partition logs had not flushed, then restart and recover from their
//! Raft logs. Everything random comes from one seed: a failing run prints its seed, and
//! `SIMULATION_SEED=<seed> cargo test -p replication simulation` replays it exactly;
//! `SIMULATION_RUNS=<n>` runs that many seeds (three by default).
//!
//! Appends come from idempotent producers (one per partition) that also send some batches
//! twice, as a client retrying would: deduplication at apply must decide alike on every replica.
//!
//! Checked all along: replicas of a partition never disagree on the record at an offset (each
//! applied log is a prefix of the longest). Checked at the end, after healing: every
//! acknowledged append is at its acknowledged offset on every replica, no record is applied
//! twice, all replicas are identical, and once traffic stops every group stops ticking.
//!
//! A crash loses raft-engine's unsynced writes too (see `engine_fs`), as well as the partition
//! logs' unflushed bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use log_store::batch::{BatchBuilder, Compression, NewRecord};
use log_store::Offset;
use raft::eraftpb::Message;
use tokio::sync::oneshot;

use crate::catalog::{Command, TopicConfig};
use crate::cluster::Shared;
use crate::config::{PeerConfig, ReplicationConfig};
use crate::engine_fs::NodeFileSystem;
use crate::ids::{GroupId, METADATA_GROUP};
use crate::store::{Applied, Store, StoreMsg};
use crate::transport::Outbox;
use crate::Result;

const NODES: u64 = 3;
const PARTITIONS: u32 = 2;
const FAULT_STEPS: u64 = 1500;
const HEAL_STEPS: u64 = 1200;

/// Runs `work` on a fresh thread and waits for it. raft-engine keeps a thread-local cache of
/// decoded entry blocks keyed by file position, which would mix up the engines of different
/// simulated nodes sharing one thread; a fresh thread per call keeps them apart (and the run
/// deterministic, since each call is waited for).
fn on_own_thread<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| scope.spawn(work).join().expect("simulated node panicked"))
}

/// A small, seedable generator (xorshift64*), so runs replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, per_thousand: u64) -> bool {
        self.next() % 1000 < per_thousand
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

type Sent = Arc<Mutex<Vec<(u64, Vec<(u64, Message)>)>>>;

/// The simulated network's input side for one node.
struct SimOutbox {
    sent: Sent,
}

impl Outbox for SimOutbox {
    fn send(&mut self, to: u64, messages: Vec<(u64, Message)>) {
        self.sent.lock().unwrap().push((to, messages));
    }

    fn add_peer(&mut self, _id: u64, _address: &str) {}
}

struct Flight {
    deliver_at: u64,
    from: u64,
    to: u64,
    messages: Vec<(u64, Message)>,
}

struct SimNode {
    config: ReplicationConfig,
    sent: Sent,
    file_system: Arc<NodeFileSystem>,
    running: Option<(Store, Arc<Shared>)>,
}

struct Simulation {
    seed: u64,
    rng: Rng,
    step: u64,
    nodes: BTreeMap<u64, SimNode>,
    network: Vec<Flight>,
    /// Node pairs that cannot talk (both directions are listed).
    cut: BTreeSet<(u64, u64)>,
    faults: bool,
    proposals: Vec<(u32, String, oneshot::Receiver<Result<Applied>>)>,
    acknowledged: Vec<(u32, u64, String)>,
    next_value: u64,
    /// Per partition: the idempotent producer's id and next sequence.
    producers: BTreeMap<u32, (i64, i32)>,
    /// Retried batches proposed.
    retries: u64,
    crashes: u64,
    cuts: u64,
    _dir: tempfile::TempDir,
}

impl Simulation {
    fn new(seed: u64) -> Simulation {
        // raft-engine fsyncs every write; on tmpfs that costs nothing and the run stays quick.
        let base = Path::new("/dev/shm");
        let dir = if base.is_dir() { tempfile::tempdir_in(base) } else { tempfile::tempdir() }.unwrap();
        let peers: Vec<PeerConfig> =
            (1..=NODES).map(|id| PeerConfig { id, address: format!("simulated-node-{id}") }).collect();
        let nodes = (1..=NODES)
            .map(|id| {
                let config = ReplicationConfig {
                    node_id: id,
                    data_dir: dir.path().join(format!("node{id}")),
                    peers: peers.clone(),
                    election_ticks: 10 + 4 * id as usize,
                    heartbeat_ticks: 2,
                    flush_interval_ms: 0,
                    log_retained_entries: u64::MAX,
                    randomized_elections: false,
                    // Rotate raft-engine files every few dozen entries (a run writes some
                    // 100 KiB per node; one with many crashes, less).
                    raft_file_bytes: 8 << 10,
                    ..ReplicationConfig::default()
                };
                (id, SimNode { config, sent: Arc::default(), file_system: Arc::default(), running: None })
            })
            .collect();
        let mut simulation = Simulation {
            seed,
            rng: Rng(seed | 1),
            step: 0,
            nodes,
            network: Vec::new(),
            cut: BTreeSet::new(),
            faults: true,
            proposals: Vec::new(),
            acknowledged: Vec::new(),
            next_value: 0,
            producers: BTreeMap::new(),
            retries: 0,
            crashes: 0,
            cuts: 0,
            _dir: dir,
        };
        for id in 1..=NODES {
            simulation.start(id);
        }
        simulation
    }

    fn start(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let outbox = Box::new(SimOutbox { sent: node.sent.clone() });
        let config = node.config.clone();
        let channel = crossbeam_channel::bounded(config.inbox_capacity);
        let file_system = node.file_system.clone();
        let opened = on_own_thread(move || Store::open(config, outbox, None, channel, file_system))
            .unwrap_or_else(|e| panic!("seed {}: node {id} cannot start: {e}", self.seed));
        node.running = Some(opened);
    }

    /// Kills a node and loses what a power cut would: every raft-engine byte written after its
    /// file's last fsync, and every partition-log byte past the last flush (the segment after
    /// the checkpoint's recovery point).
    fn crash(&mut self, id: u64) {
        self.crashes += 1;
        let node = self.nodes.get_mut(&id).unwrap();
        node.running = None;
        node.file_system.lose_unsynced();
        node.sent.lock().unwrap().clear();
        self.network.retain(|flight| flight.to != id && flight.from != id);
        let partitions = node.config.data_dir.join("partitions");
        if let Ok(entries) = std::fs::read_dir(&partitions) {
            for entry in entries {
                log_store::fault::lose_unflushed(&entry.unwrap().path()).unwrap();
            }
        }
    }

    fn shared(&self, id: u64) -> Option<&Arc<Shared>> {
        self.nodes[&id].running.as_ref().map(|(_, shared)| shared)
    }

    /// One step: deliver due messages, tick, run every live store loop once, route its output.
    fn run_step(&mut self) {
        self.step += 1;
        let step = self.step;
        let (due, later): (Vec<Flight>, Vec<Flight>) =
            std::mem::take(&mut self.network).into_iter().partition(|f| f.deliver_at <= step);
        self.network = later;
        for flight in due {
            if let Some((store, _)) = self.nodes.get_mut(&flight.to).unwrap().running.as_mut() {
                on_own_thread(|| store.handle(StoreMsg::Raft(flight.messages)));
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let seed = self.seed;
            let Some((store, _)) = self.nodes.get_mut(&id).unwrap().running.as_mut() else { continue };
            on_own_thread(|| {
                store.tick();
                if step.is_multiple_of(6) {
                    store.reconcile();
                }
                store.process_readies()
            })
            .unwrap_or_else(|e| panic!("seed {seed}: node {id} failed: {e}"));
            let sent = std::mem::take(&mut *self.nodes[&id].sent.lock().unwrap());
            for (to, messages) in sent {
                self.route(id, to, messages);
            }
        }
    }

    fn route(&mut self, from: u64, to: u64, messages: Vec<(u64, Message)>) {
        if self.cut.contains(&(from, to)) || self.nodes[&to].running.is_none() {
            // The failure detector (a closed connection, a keepalive timeout) tells the sender.
            if let Some((store, _)) = self.nodes.get_mut(&from).unwrap().running.as_mut() {
                on_own_thread(|| store.handle(StoreMsg::PeerUnreachable(to)));
            }
            return;
        }
        if self.faults && self.rng.chance(50) {
            return;
        }
        let copies = if self.faults && self.rng.chance(20) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if self.faults { 1 + self.rng.below(6) } else { 1 };
            self.network.push(Flight { deliver_at: self.step + delay, from, to, messages: messages.clone() });
        }
    }

    fn leader_of(&self, group: GroupId) -> Option<u64> {
        self.nodes.keys().copied().find(|id| {
            let Some((store, _)) = self.nodes[id].running.as_ref() else { return false };
            store.is_leader(group)
        })
    }

    fn propose(&mut self, group: GroupId, data: Vec<u8>) -> Option<oneshot::Receiver<Result<Applied>>> {
        let leader = self.leader_of(group)?;
        let (reply, answer) = oneshot::channel();
        let (store, _) = self.nodes.get_mut(&leader).unwrap().running.as_mut().unwrap();
        on_own_thread(|| store.handle(StoreMsg::Propose { group, data: data.into(), reply }));
        Some(answer)
    }

    fn partition_group(&self, partition: u32) -> Option<GroupId> {
        let shared = self.nodes.keys().find_map(|id| self.shared(*id))?;
        let catalog = shared.catalog.read().unwrap();
        catalog.partition("sim", partition).ok().map(|info| info.group)
    }

    fn propose_record(&mut self, partition: u32) {
        let Some(group) = self.partition_group(partition) else { return };
        self.next_value += 1;
        let value = format!("v{}", self.next_value);
        let (producer_id, sequence) = self.producers.entry(partition).or_insert((partition as i64 * 1_000_000, 0));
        let mut builder = BatchBuilder::new(Compression::None).producer(*producer_id, 0, *sequence);
        *sequence += 1;
        builder.push(&NewRecord {
            value: Some(value.clone().into()),
            timestamp: self.step as i64,
            ..NewRecord::default()
        });
        let batch = builder.build().unwrap();
        let retry = self.rng.chance(250).then(|| batch.clone());
        if let Some(answer) = self.propose(group, batch) {
            self.proposals.push((partition, value.clone(), answer));
        }
        if let Some(batch) = retry {
            self.retries += 1;
            if let Some(answer) = self.propose(group, batch) {
                self.proposals.push((partition, value, answer));
            }
        }
    }

    fn collect_answers(&mut self) {
        let mut waiting = Vec::new();
        for (partition, value, mut answer) in std::mem::take(&mut self.proposals) {
            match answer.try_recv() {
                Ok(Ok(Applied::Offsets(base, _))) => self.acknowledged.push((partition, base.0, value)),
                // A lost batch leaves a gap in the producer's sequences: later ones are refused
                // until it starts over as a new producer, as a client resets its producer id.
                Ok(_) | Err(oneshot::error::TryRecvError::Closed) => {
                    if let Some((producer_id, sequence)) = self.producers.get_mut(&partition) {
                        *producer_id += 1;
                        *sequence = 0;
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => waiting.push((partition, value, answer)),
            }
        }
        self.proposals = waiting;
    }

    /// Every live replica's log of a partition, as values by offset.
    fn logs(&self, partition: u32) -> BTreeMap<u64, Vec<String>> {
        let mut logs = BTreeMap::new();
        for (id, node) in &self.nodes {
            let Some((_, shared)) = node.running.as_ref() else { continue };
            let handle = shared.partitions.read().unwrap().get(&("sim".to_string(), partition)).cloned();
            let Some(handle) = handle else { continue };
            let mut values = Vec::new();
            let mut from = handle.reader.log_start_offset();
            loop {
                let bytes = handle.reader.read(from, 1 << 20).unwrap();
                if bytes.is_empty() {
                    break;
                }
                for stored in log_store::batch::batches(bytes) {
                    let stored = stored.unwrap();
                    for record in stored.records(1 << 20).unwrap() {
                        let record = record.unwrap();
                        assert_eq!(record.offset.0, values.len() as u64, "seed {}: offsets are dense", self.seed);
                        values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
                    }
                    from = Offset(stored.header().last_offset().0 + 1);
                }
            }
            logs.insert(*id, values);
        }
        logs
    }

    /// Replicas never disagree: each applied log is a prefix of the longest one.
    fn check_prefixes(&self) {
        for partition in 0..PARTITIONS {
            let logs = self.logs(partition);
            let Some(longest) = logs.values().max_by_key(|log| log.len()) else { continue };
            for (id, log) in &logs {
                assert!(
                    longest.starts_with(log),
                    "seed {}, step {}: partition {partition} on node {id} diverges from the longest replica",
                    self.seed,
                    self.step
                );
            }
        }
    }

    fn random_fault(&mut self) {
        let crashed: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.running.is_none()).map(|(id, _)| *id).collect();
        if crashed.is_empty() && self.rng.chance(4) {
            let victim = 1 + self.rng.below(NODES);
            self.crash(victim);
        } else if !crashed.is_empty() && self.rng.chance(20) {
            self.start(crashed[0]);
        }
        if self.cut.is_empty() && self.rng.chance(4) {
            self.cuts += 1;
            let isolated = 1 + self.rng.below(NODES);
            for other in 1..=NODES {
                if other != isolated {
                    self.cut.insert((isolated, other));
                    self.cut.insert((other, isolated));
                }
            }
        } else if !self.cut.is_empty() && self.rng.chance(15) {
            self.cut.clear();
        }
    }

    fn run(mut self) {
        // Form the cluster and create the topic.
        let mut created = false;
        for _ in 0..2000 {
            self.run_step();
            if !created {
                let command = Command::CreateTopic {
                    name: "sim".into(),
                    partitions: PARTITIONS,
                    replication_factor: NODES as u32,
                    config: TopicConfig::default(),
                };
                let bootstrapped = self
                    .nodes
                    .keys()
                    .any(|id| self.shared(*id).is_some_and(|s| !s.catalog.read().unwrap().nodes.is_empty()));
                if bootstrapped {
                    created = self.propose(METADATA_GROUP, serde_json::to_vec(&command).unwrap()).is_some();
                }
            } else if (0..PARTITIONS).all(|p| self.partition_group(p).is_some_and(|g| self.leader_of(g).is_some())) {
                break;
            }
        }
        assert!(created, "seed {}: the cluster never formed", self.seed);

        for _ in 0..FAULT_STEPS {
            if self.rng.chance(300) {
                let partition = self.rng.below(PARTITIONS as u64) as u32;
                self.propose_record(partition);
            }
            self.random_fault();
            self.run_step();
            self.collect_answers();
            if self.step.is_multiple_of(50) {
                self.check_prefixes();
            }
        }

        // Heal everything and let the replicas converge.
        self.faults = false;
        self.cut.clear();
        let crashed: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.running.is_none()).map(|(id, _)| *id).collect();
        for id in crashed {
            self.start(id);
        }
        for _ in 0..HEAL_STEPS {
            self.run_step();
            self.collect_answers();
        }
        self.check_prefixes();
        // With no traffic left, every group settles and stops ticking (quiescence).
        for _ in 0..300 {
            self.run_step();
        }
        let hibernating: usize =
            self.nodes.values().filter_map(|n| n.running.as_ref()).map(|(s, _)| s.hibernating_groups()).sum();
        let groups = NODES as usize * (PARTITIONS as usize + 1);
        assert_eq!(hibernating, groups, "seed {}: idle groups keep ticking", self.seed);
        eprintln!(
            "seed {}: {} steps, {} appends proposed ({} sent twice), {} acknowledged, {} crashes, {} network cuts",
            self.seed,
            self.step,
            self.next_value,
            self.retries,
            self.acknowledged.len(),
            self.crashes,
            self.cuts
        );
        assert!(self.acknowledged.len() > 20, "seed {}: too few appends were acknowledged to mean anything", self.seed);
        let raft_files = |node: &SimNode| {
            std::fs::read_dir(node.config.data_dir.join("raft")).map_or(0, |files| {
                files.flatten().filter(|file| file.file_name().to_string_lossy().ends_with(".raftlog")).count()
            })
        };
        assert!(
            self.nodes.values().any(|node| raft_files(node) > 1),
            "seed {}: raft-engine never started a second file, so no crash hit a rotation",
            self.seed
        );
        for partition in 0..PARTITIONS {
            let logs = self.logs(partition);
            assert_eq!(logs.len(), NODES as usize, "seed {}: every node holds a replica", self.seed);
            let reference = logs.values().next().unwrap();
            for (id, log) in &logs {
                assert_eq!(
                    log, reference,
                    "seed {}: partition {partition} on node {id} differs after healing",
                    self.seed
                );
            }
            let distinct: BTreeSet<&String> = reference.iter().collect();
            assert_eq!(
                distinct.len(),
                reference.len(),
                "seed {}: a record was applied twice (a retry was not deduplicated)",
                self.seed
            );
            for (acked_partition, offset, value) in &self.acknowledged {
                if *acked_partition == partition {
                    assert_eq!(
                        reference.get(*offset as usize),
                        Some(value),
                        "seed {}: acknowledged {value} at {partition}/{offset} is lost or moved",
                        self.seed
                    );
                }
            }
        }
    }
}

#[test]
fn committed_entries_survive_a_faulty_network_and_crashes() {
    let seeds: Vec<u64> = match std::env::var("SIMULATION_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIMULATION_SEED is a number")],
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            let runs = std::env::var("SIMULATION_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
            (0..runs).map(|i| now.wrapping_add(i * 7919)).collect()
        }
    };
    for seed in seeds {
        eprintln!("simulation seed {seed} (replay: SIMULATION_SEED={seed} cargo test -p replication simulation)");
        Simulation::new(seed).run();
    }
}
