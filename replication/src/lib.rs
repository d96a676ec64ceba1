//! `replication`: the multi-raft node that makes partition logs replicated.
//!
//! One Raft group (raft-rs `RawNode`) per partition plus a metadata group (the controller's
//! catalog: nodes, topics, placement, configs), all sharing one raft-engine instance per node.
//! A single store loop drives every group: it batches the `Ready` of all busy groups into one
//! raft-engine write with one fsync, sends messages coalesced per destination, and applies
//! committed entries — partition entries are RecordBatch v2 bytes appended to the partition's
//! `log-store` log, which assigns offsets in Raft order.
//!
//! Façades and the server see the cluster only through [`Cluster`].
//!
//! # Layout
//! * `ids`, `error`, `config` — vocabulary.
//! * `raft_storage` — raft-rs `Storage` over raft-engine, one per group.
//! * `engine_fs` — raft-engine's file system, recording what was fsynced (for crash tests).
//! * `catalog` — the metadata state machine (topics, placement).
//! * `partition` — a partition replica: its log, apply, durable apply state.
//! * `producers` — idempotent-producer state of a partition (deduplication at apply).
//! * `store` — the store loop that drives every group.
//! * `purger` — the thread that has raft-engine purge its files, off the store loop.
//! * `transport` — node-to-node gRPC streams, bounded and reconnecting.
//! * `cluster` — the handle the rest of the node uses.
//! * `simulation` (tests) — several nodes' store loops over a faulty simulated network.
#![deny(missing_docs)]

mod catalog;
mod cluster;
mod config;
mod engine_fs;
mod error;
mod ids;
mod partition;
mod producers;
mod purger;
mod raft_storage;
#[cfg(test)]
mod simulation;
mod store;
mod transport;

pub use catalog::{Catalog, NodeInfo, PartitionInfo, TopicConfig, TopicInfo};
pub use cluster::{Cluster, FetchResult, PartitionStatus, TopicDefaults};
pub use config::{PeerConfig, ReplicationConfig};
pub use error::{Error, Result};
pub use ids::{GroupId, NodeId, METADATA_GROUP};
pub use producers::{AbortedTxn, Marker};
pub use store::start;
pub use transport::RaftService;
