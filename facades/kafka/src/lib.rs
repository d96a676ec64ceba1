//! Kafka wire-protocol façade: unmodified Kafka clients produce to and fetch from the replicated
//! partitions (DESIGN §5).
//!
//! Each node listens for Kafka clients (9092 by default) and answers as broker `node id`. Record
//! batches pass through verbatim: a produced batch becomes one Raft entry and is stored byte for
//! byte, its base offset stamped at apply; a fetch returns the stored batches. Frames are decoded
//! with the `kafka-protocol` crate; see `docs/kafka.md` for what is and is not supported.

mod admin;
mod broker;
mod config;
mod configs;
mod connection;
#[cfg(test)]
mod decode_fuzz;
mod errors;
mod fetch;
mod find_coordinator;
mod groups;
mod init_producer_id;
mod leaders;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;
mod propagation;
mod sasl;
mod sasl_gate;
mod shards;
mod transactions;
mod versions;

pub use broker::serve;
pub use broker::ENDPOINT;
pub use config::KafkaConfig;
pub use sasl::{Mechanism as SaslMechanism, SaslConfig};
