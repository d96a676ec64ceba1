//! `ReplicationConfig`: what the store loop needs to know about this node and its peers.

use std::path::PathBuf;

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Node id (never 0).
    pub id: u64,
    /// `host:port` of its native gRPC listener (clients and Raft traffic).
    pub address: String,
}

/// Settings of the replication layer of one node.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// This node's id.
    pub node_id: u64,
    /// Root of the node's data: `raft/` (raft-engine) and `partitions/<topic>-<n>/`.
    pub data_dir: PathBuf,
    /// Every node of the initial cluster, this one included; for a joining node, nodes to
    /// reach the cluster through.
    pub peers: Vec<PeerConfig>,
    /// Node-to-node connections to these nodes (by id) go to these addresses instead of the
    /// ones the nodes advertise: a proxy or a NAT in between (the Jepsen harness's fault
    /// proxies). Clients are still told the advertised addresses.
    pub dial_via: std::collections::BTreeMap<u64, String>,
    /// This node joins a running cluster (added with `add-node`) instead of founding one.
    pub join: bool,
    /// Raft tick period.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// How often partition logs are flushed (fsynced) so the Raft log can be trimmed.
    pub flush_interval_ms: u64,
    /// A partition log is also flushed once this many bytes were appended since its last
    /// flush: many short fsyncs stall the store loop less than one long one.
    pub flush_bytes: u64,
    /// Raft entries kept behind the flushed point for followers that lag; one further behind
    /// is brought up to date with a snapshot instead.
    pub log_retained_entries: u64,
    /// The metadata group's Raft log is cut at its applied index, with the catalog as of that
    /// index kept as the image a restart begins from, once this many entries were applied since
    /// the last cut. A node further behind gets the catalog as a snapshot.
    pub metadata_log_compact_entries: u64,
    /// A partition leader that is not the preferred replica (the first in placement order)
    /// hands leadership to it once it has led this long and the preferred replica is caught
    /// up, so leaders spread again after failures (Kafka's preferred leader election).
    /// 0 turns this off.
    pub leader_balance_after_ms: u64,
    /// Largest record batch accepted by a partition.
    pub batch_bytes_max: usize,
    /// Segment size of partition logs unless a topic says otherwise.
    pub segment_bytes: u64,
    /// Bound of the store loop's inbox; when full, proposals get `Overloaded`.
    pub inbox_capacity: usize,
    /// Size at which raft-engine starts a new file. Small in the deterministic simulation, so
    /// file rotation runs under its crashes too.
    pub raft_file_bytes: u64,
    /// raft-engine purges the node's Raft log files only once they hold more than this, and
    /// keeps up to 1.5 times as much in emptied files for reuse. Files are reused by
    /// overwriting, which a synced write finishes sooner than one that grows a file.
    pub raft_purge_threshold_bytes: u64,
    /// Randomise election timeouts (Raft's defence against split votes). Only the
    /// deterministic simulation turns this off, staggering `election_ticks` per node instead.
    pub randomized_elections: bool,
}

impl ReplicationConfig {
    /// A single-node configuration with the given data directory and address.
    pub fn single_node(data_dir: PathBuf, address: String) -> ReplicationConfig {
        ReplicationConfig {
            node_id: 1,
            data_dir,
            peers: vec![PeerConfig { id: 1, address }],
            ..ReplicationConfig::default()
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            peers: vec![PeerConfig { id: 1, address: "127.0.0.1:9300".into() }],
            dial_via: Default::default(),
            join: false,
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            flush_interval_ms: 1000,
            flush_bytes: 8 << 20,
            log_retained_entries: 10_000,
            metadata_log_compact_entries: 1_000,
            leader_balance_after_ms: 30_000,
            batch_bytes_max: 1024 * 1024 + 12,
            segment_bytes: 1 << 30,
            inbox_capacity: 8192,
            // raft-engine's default is 128 MiB. Smaller files are reused sooner, and deleting
            // one (past the reuse pool) frees less at once: a 128 MiB file's blocks took ~60 ms
            // to free, in front of the loop's fsyncs (benchmarks.md).
            raft_file_bytes: 32 << 20,
            raft_purge_threshold_bytes: 1 << 30,
            randomized_elections: true,
        }
    }
}
