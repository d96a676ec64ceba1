//! The crate's error type: each variant is something a caller (the server, a façade) acts on.

use crate::ids::NodeId;

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when asking the cluster for something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node does not lead the group; `leader` is the leader if known.
    #[error("{}", match leader {
        Some(leader) => format!("not the leader; node {leader} is"),
        None => "no leader right now: an election is under way, or too few replicas are reachable for a quorum".to_string(),
    })]
    NotLeader {
        /// The current leader, when this node knows it.
        leader: Option<NodeId>,
    },
    /// The group cannot make progress (no quorum reachable) within the request's time.
    #[error("no quorum: the group did not commit in time")]
    Timeout,
    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic exists but not this partition.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// A topic of that name exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The request is malformed or asks for something impossible.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An idempotent producer's batch does not follow its previous one (a gap in sequences).
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrderSequence {
        /// The producer id.
        producer_id: i64,
        /// The sequence the partition expected next.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// A batch from an older epoch of a producer id than the partition has seen (fenced).
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current}")]
    InvalidProducerEpoch {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch the partition has seen.
        current: i16,
    },
    /// The log refused the batch or the read (bad batch, offset out of range, corruption…).
    #[error(transparent)]
    Log(#[from] log_store::Error),
    /// The cluster is still forming (no bootstrap entry applied yet): retry shortly.
    #[error("the cluster is not bootstrapped yet")]
    NotReady,
    /// The node's inbox is full: retry later (backpressure).
    #[error("the node is overloaded; retry")]
    Overloaded,
    /// The node is shutting down.
    #[error("the node is stopping")]
    Stopped,
    /// The Raft log store failed; the node cannot continue safely.
    #[error("raft log store: {0}")]
    Engine(String),
}
