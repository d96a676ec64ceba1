//! `KafkaConfig`: the Kafka listener's settings.

/// Settings of one node's Kafka listener.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port` clients are told to connect to for this node (Metadata answers).
    pub advertised_address: String,
    /// Create an unknown topic when a client asks for its metadata (Kafka's
    /// `auto.create.topics.enable`); the client's own `allow_auto_topic_creation` must agree.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, or of one created with `num_partitions = -1`.
    pub default_partitions: u32,
    /// Replicas of such a topic; 0 picks min(3, nodes).
    pub default_replication_factor: u32,
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`); a larger one closes
    /// the connection.
    pub request_bytes_max: usize,
    /// Requests of one connection processed at once; responses still go out in request order.
    pub pipelined_requests_max: usize,
    /// Partitions of `__consumer_offsets` when it is created (`offsets.topic.num.partitions`).
    pub offsets_topic_partitions: u32,
    /// Its replicas; 0 picks min(3, nodes) (`offsets.topic.replication.factor`).
    pub offsets_topic_replication_factor: u32,
    /// How long a new group's first join phase waits for more members
    /// (`group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Bounds of the session timeout a member may ask for (`group.min/max.session.timeout.ms`).
    pub group_min_session_timeout_ms: u64,
    pub group_max_session_timeout_ms: u64,
    /// SASL authentication; `None` lets every connection in unauthenticated.
    pub sasl: Option<crate::sasl::SaslConfig>,
}

impl KafkaConfig {
    /// The group coordinator's settings.
    pub(crate) fn group_settings(&self) -> crate::groups::group::GroupSettings {
        use std::time::Duration;
        crate::groups::group::GroupSettings {
            initial_rebalance_delay: Duration::from_millis(self.group_initial_rebalance_delay_ms),
            session_timeout_min: Duration::from_millis(self.group_min_session_timeout_ms),
            session_timeout_max: Duration::from_millis(self.group_max_session_timeout_ms),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised_address: "127.0.0.1:9092".into(),
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 0,
            request_bytes_max: 100 * 1024 * 1024,
            pipelined_requests_max: 16,
            offsets_topic_partitions: 10,
            offsets_topic_replication_factor: 0,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            sasl: None,
        }
    }
}
