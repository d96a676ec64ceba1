//! Node configuration: embedded defaults, a TOML file, then command-line flags, in that order.
//!
//! Every field has a default, so `robustmq` with no file and no flag is a one-node cluster
//! with data in `./data`. See `docs/operations.md` for the reference and `config/` for examples.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// One member of the cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Node id.
    pub id: u64,
    /// `host:port` of its gRPC listener, as other nodes and clients reach it.
    pub address: String,
}

/// Raft timing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Raft tick period in milliseconds.
    pub tick_ms: u64,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// How often partition logs are fsynced (the Raft log holds everything since).
    pub flush_interval_ms: u64,
    /// Also fsync a partition log once this many bytes were appended since its last fsync.
    pub flush_bytes: u64,
    /// Raft entries kept behind the flushed point for lagging followers; beyond, snapshots.
    pub log_retained_entries: u64,
    /// The metadata group's Raft log is cut (the catalog kept as an image) every this many entries.
    pub metadata_log_compact_entries: u64,
    /// A leader that is not its partition's preferred replica hands leadership back after this
    /// long (once the preferred replica is caught up); 0 turns it off.
    pub leader_balance_after_ms: u64,
    /// Size at which raft-engine starts a new file of the Raft log.
    pub log_file_bytes: u64,
    /// The Raft log's files are purged (and reused) only once they hold more than this.
    pub log_purge_threshold_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        let defaults = replication::ReplicationConfig::default();
        RaftSettings {
            tick_ms: defaults.tick_ms,
            election_ticks: defaults.election_ticks,
            heartbeat_ticks: defaults.heartbeat_ticks,
            flush_interval_ms: defaults.flush_interval_ms,
            flush_bytes: defaults.flush_bytes,
            log_retained_entries: defaults.log_retained_entries,
            metadata_log_compact_entries: defaults.metadata_log_compact_entries,
            leader_balance_after_ms: defaults.leader_balance_after_ms,
            log_file_bytes: defaults.raft_file_bytes,
            log_purge_threshold_bytes: defaults.raft_purge_threshold_bytes,
        }
    }
}

/// The Kafka listener (`[kafka]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Serve Kafka clients at all.
    pub enabled: bool,
    /// Address the Kafka listener binds.
    pub listen: String,
    /// Address Kafka clients are told to use for this node; defaults to the listen address, or
    /// 127.0.0.1 and the port when that is a wildcard.
    pub advertised_address: Option<String>,
    /// Create unknown topics that clients ask metadata for (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of topics created with `num_partitions = -1`.
    pub default_partitions: u32,
    /// Replicas of such topics; 0 = min(3, nodes).
    pub default_replication_factor: u32,
    /// Largest request accepted, in bytes (`socket.request.max.bytes`).
    pub request_bytes_max: usize,
    /// Partitions of `__consumer_offsets` when it is first created (`offsets.topic.num.partitions`).
    pub offsets_topic_partitions: u32,
    /// Replicas of `__consumer_offsets`; 0 = min(3, nodes).
    pub offsets_topic_replication_factor: u32,
    /// How long a new group's first rebalance waits for more members, in ms.
    pub group_initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a consumer may ask for, in ms.
    pub group_min_session_timeout_ms: u64,
    /// Largest session timeout a consumer may ask for, in ms.
    pub group_max_session_timeout_ms: u64,
    /// SASL mechanisms required of Kafka clients (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`);
    /// empty = no authentication.
    pub sasl_mechanisms: Vec<String>,
    /// Users that may authenticate (`[[kafka.users]]`).
    pub users: Vec<KafkaUser>,
}

/// A Kafka user (`[[kafka.users]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaUser {
    /// User name.
    pub name: String,
    /// Password (PLAIN compares it; SCRAM credentials are derived from it at start).
    pub password: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        let defaults = facade_kafka::KafkaConfig::default();
        KafkaSettings {
            enabled: true,
            listen: "0.0.0.0:9092".into(),
            advertised_address: None,
            auto_create_topics: defaults.auto_create_topics,
            default_partitions: defaults.default_partitions,
            default_replication_factor: defaults.default_replication_factor,
            request_bytes_max: defaults.request_bytes_max,
            offsets_topic_partitions: defaults.offsets_topic_partitions,
            offsets_topic_replication_factor: defaults.offsets_topic_replication_factor,
            group_initial_rebalance_delay_ms: defaults.group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms: defaults.group_min_session_timeout_ms,
            group_max_session_timeout_ms: defaults.group_max_session_timeout_ms,
            sasl_mechanisms: Vec::new(),
            users: Vec::new(),
        }
    }
}

impl KafkaSettings {
    /// Checks the settings and turns them into the façade's.
    pub fn facade(&self) -> anyhow::Result<facade_kafka::KafkaConfig> {
        let listen: SocketAddr =
            self.listen.parse().with_context(|| format!("kafka.listen {:?} is not host:port", self.listen))?;
        let advertised_address = match &self.advertised_address {
            Some(address) => address.clone(),
            // A listener bound to one address is reached there; a wildcard one on loopback.
            None if listen.ip().is_unspecified() => format!("127.0.0.1:{}", listen.port()),
            None => listen.to_string(),
        };
        if self.default_partitions == 0 {
            bail!("kafka.default_partitions must be at least 1");
        }
        if self.offsets_topic_partitions == 0 {
            bail!("kafka.offsets_topic_partitions must be at least 1");
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            bail!("kafka.group_min_session_timeout_ms is larger than kafka.group_max_session_timeout_ms");
        }
        let sasl = if self.sasl_mechanisms.is_empty() {
            None
        } else {
            let mut mechanisms = Vec::new();
            for name in &self.sasl_mechanisms {
                let mechanism = facade_kafka::SaslMechanism::parse(name).with_context(|| {
                    format!("kafka.sasl_mechanisms: {name:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
                })?;
                mechanisms.push(mechanism);
            }
            if self.users.is_empty() {
                bail!("kafka.sasl_mechanisms is set but no [[kafka.users]] are: nobody could connect");
            }
            let users = self.users.iter().map(|u| (u.name.clone(), u.password.clone())).collect();
            Some(facade_kafka::SaslConfig { mechanisms, users })
        };
        Ok(facade_kafka::KafkaConfig {
            advertised_address,
            auto_create_topics: self.auto_create_topics,
            default_partitions: self.default_partitions,
            default_replication_factor: self.default_replication_factor,
            request_bytes_max: self.request_bytes_max,
            offsets_topic_partitions: self.offsets_topic_partitions,
            offsets_topic_replication_factor: self.offsets_topic_replication_factor,
            group_initial_rebalance_delay_ms: self.group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms: self.group_min_session_timeout_ms,
            group_max_session_timeout_ms: self.group_max_session_timeout_ms,
            sasl,
            ..facade_kafka::KafkaConfig::default()
        })
    }
}

/// The whole node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id (not 0).
    pub node_id: u64,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Address the native gRPC API (clients and node-to-node traffic) listens on.
    pub grpc_listen: String,
    /// Address other nodes and clients use for this node; defaults to 127.0.0.1 and the gRPC port.
    pub advertised_address: Option<String>,
    /// Address of the HTTP admin listener (`/health`, `/metrics`, `/cluster`).
    pub admin_listen: String,
    /// Every node of the initial cluster, this one included; empty means a one-node cluster.
    pub peers: Vec<Peer>,
    /// Node-to-node connections to these nodes go to these addresses instead of the ones the
    /// nodes advertise (a proxy or NAT in between); clients are still told the advertised ones.
    pub dial_via: Vec<Peer>,
    /// Join a running cluster (then add this node with `robustmq cluster add-node`) instead of
    /// founding one with `peers`.
    pub join: bool,
    /// Largest record batch a partition accepts, in bytes.
    pub batch_bytes_max: usize,
    /// Raft timing.
    pub raft: RaftSettings,
    /// The Kafka listener.
    pub kafka: KafkaSettings,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            grpc_listen: "0.0.0.0:9300".into(),
            advertised_address: None,
            admin_listen: "0.0.0.0:8080".into(),
            peers: Vec::new(),
            dial_via: Vec::new(),
            join: false,
            batch_bytes_max: replication::ReplicationConfig::default().batch_bytes_max,
            raft: RaftSettings::default(),
            kafka: KafkaSettings::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<NodeConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The address other nodes reach this one at.
    pub fn advertised(&self) -> anyhow::Result<String> {
        if let Some(address) = &self.advertised_address {
            return Ok(address.clone());
        }
        self.own_grpc()
    }

    /// Where this node's own gRPC listener answers it (for the node's internal client): the
    /// listen address, or 127.0.0.1 and its port when that is a wildcard.
    pub fn own_grpc(&self) -> anyhow::Result<String> {
        let listen: SocketAddr =
            self.grpc_listen.parse().with_context(|| format!("grpc_listen {:?} is not host:port", self.grpc_listen))?;
        Ok(if listen.ip().is_unspecified() { format!("127.0.0.1:{}", listen.port()) } else { listen.to_string() })
    }

    /// Checks the configuration and turns it into the replication layer's.
    pub fn replication(&self) -> anyhow::Result<replication::ReplicationConfig> {
        if self.node_id == 0 {
            bail!("node_id must not be 0");
        }
        self.grpc_listen
            .parse::<SocketAddr>()
            .with_context(|| format!("grpc_listen {:?} is not host:port", self.grpc_listen))?;
        self.admin_listen
            .parse::<SocketAddr>()
            .with_context(|| format!("admin_listen {:?} is not host:port", self.admin_listen))?;
        let mut peers: Vec<replication::PeerConfig> = if self.peers.is_empty() {
            vec![replication::PeerConfig { id: self.node_id, address: self.advertised()? }]
        } else {
            self.peers.iter().map(|p| replication::PeerConfig { id: p.id, address: p.address.clone() }).collect()
        };
        peers.sort_by_key(|p| p.id);
        if peers.windows(2).any(|pair| pair[0].id == pair[1].id) {
            bail!("peers lists a node id twice");
        }
        if peers.iter().any(|p| p.id == 0) {
            bail!("peer ids must not be 0");
        }
        if !self.join && !peers.iter().any(|p| p.id == self.node_id) {
            bail!("peers does not include this node (node_id {}); to join a running cluster, set join", self.node_id);
        }
        if self.raft.tick_ms == 0
            || self.raft.heartbeat_ticks == 0
            || self.raft.election_ticks <= self.raft.heartbeat_ticks
        {
            bail!("raft timing: tick_ms and heartbeat_ticks must be > 0 and election_ticks > heartbeat_ticks");
        }
        if self.raft.metadata_log_compact_entries == 0 {
            bail!("raft.metadata_log_compact_entries must be > 0");
        }
        if !(1 << 20..=10 << 30).contains(&self.raft.log_file_bytes) {
            // Below, raft-engine keeps very many files open; above, each file is a long
            // stretch of log that can be reused only as a whole.
            bail!("raft.log_file_bytes must be between 1048576 (1 MiB) and 10737418240 (10 GiB)");
        }
        if !(self.raft.log_file_bytes..=1 << 40).contains(&self.raft.log_purge_threshold_bytes) {
            // raft-engine refuses a threshold under its file size.
            bail!("raft.log_purge_threshold_bytes must be at least raft.log_file_bytes and at most 1 TiB");
        }
        Ok(replication::ReplicationConfig {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            peers,
            dial_via: self.dial_via.iter().map(|p| (p.id, p.address.clone())).collect(),
            join: self.join,
            tick_ms: self.raft.tick_ms,
            election_ticks: self.raft.election_ticks,
            heartbeat_ticks: self.raft.heartbeat_ticks,
            flush_interval_ms: self.raft.flush_interval_ms,
            flush_bytes: self.raft.flush_bytes,
            log_retained_entries: self.raft.log_retained_entries,
            metadata_log_compact_entries: self.raft.metadata_log_compact_entries,
            leader_balance_after_ms: self.raft.leader_balance_after_ms,
            raft_file_bytes: self.raft.log_file_bytes,
            raft_purge_threshold_bytes: self.raft.log_purge_threshold_bytes,
            batch_bytes_max: self.batch_bytes_max,
            ..replication::ReplicationConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_one_node_cluster() {
        let replication = NodeConfig::default().replication().unwrap();
        assert_eq!(replication.node_id, 1);
        assert_eq!(replication.peers, vec![replication::PeerConfig { id: 1, address: "127.0.0.1:9300".into() }]);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        assert!(toml::from_str::<NodeConfig>("node_idd = 3").is_err(), "unknown keys are errors");
        let config: NodeConfig = toml::from_str("node_id = 4\n[[peers]]\nid = 1\naddress = \"127.0.0.1:1\"\n").unwrap();
        assert!(config.replication().unwrap_err().to_string().contains("does not include this node"));
        let config = NodeConfig { node_id: 0, ..NodeConfig::default() };
        assert!(config.replication().is_err());
        let config = NodeConfig { grpc_listen: "nonsense".into(), ..NodeConfig::default() };
        assert!(config.replication().is_err());
        // raft-engine refuses to open with a purge threshold under its file size.
        let config: NodeConfig =
            toml::from_str("[raft]\nlog_file_bytes = 4194304\nlog_purge_threshold_bytes = 1048576\n").unwrap();
        assert!(config.replication().unwrap_err().to_string().contains("log_purge_threshold_bytes"));
        let config: NodeConfig = toml::from_str("[raft]\nlog_purge_threshold_bytes = 268435456\n").unwrap();
        assert_eq!(config.replication().unwrap().raft_purge_threshold_bytes, 256 << 20);
    }
}
