//! `client`: the Rust client of RobustMQ's native gRPC API (port 9300).
//!
//! Any node answers any request: nodes forward appends and fetches to partition leaders and
//! topic changes to the metadata leader. The client adds what a node cannot: it retries across
//! the bootstrap nodes while a leader is being elected or a node is down, until a deadline.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::Error> {
//! let client = client::Client::new(vec!["127.0.0.1:9300".into()]);
//! client.create_topic("orders", 3, 3).await?;
//! let (base, last) = client.produce("orders", 0, &[client::record(None, b"hello")]).await?;
//! let fetched = client.fetch("orders", 0, base, 1 << 20, 0).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use log_store::batch::{BatchBuilder, Compression, NewRecord, Record};
use proto::v1::broker_client::BrokerClient;
use proto::v1::{
    AddNodeRequest, AddPartitionsRequest, AllocateProducerIdsRequest, AlterTopicConfigRequest, ClusterStatusRequest,
    CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, FetchRequest, ListTopicsRequest, ProduceRequest,
    RebalanceRequest, RemoveNodeRequest, SetEndpointsRequest,
};
pub use proto::v1::{ClusterStatusResponse, FetchResponse, TopicConfig, TopicDescription};
use tonic::transport::{Channel, Endpoint};
pub use tonic::Code;
use tonic::Status;

/// How long a call keeps retrying transient failures (no leader yet, node down).
const RETRY_DEADLINE: Duration = Duration::from_secs(20);
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Longest one attempt of a call may take: longer than the longest long poll a node allows
/// (30 s). A node that stops answering (paused, cut off, its connection half-open) costs one
/// attempt, not the caller's whole life.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
/// HTTP/2 pings on idle connections notice a peer that vanished without closing them.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response the client accepts.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster answered with an error that retrying will not fix.
    #[error("{code:?}: {message}")]
    Rejected {
        /// gRPC status code (NotFound: unknown topic, InvalidArgument: bad batch, OutOfRange…).
        code: Code,
        /// The server's explanation.
        message: String,
    },
    /// No node could serve the call before the retry deadline.
    #[error("gave up after retrying: {0}")]
    Unavailable(String),
    /// A fetched batch does not decode.
    #[error("bad batch from the server: {0}")]
    Decode(#[from] log_store::Error),
}

/// A record with an optional key and a value, timestamped now.
pub fn record(key: Option<&[u8]>, value: &[u8]) -> NewRecord {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    NewRecord {
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
        headers: Vec::new(),
        timestamp: now,
    }
}

/// A client of one cluster. Cheap to share behind an `Arc`; connections are cached per node.
///
/// Produce retries make delivery at-least-once: a batch whose answer was lost (its node died
/// after the commit) is appended again by the retry. [`Client::idempotent`] makes retries
/// exactly-once, as Kafka's idempotent producer does.
pub struct Client {
    bootstrap: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    retry_deadline: Duration,
    request_timeout: Duration,
    /// With idempotence: the producer id and each partition's next sequence; the partition's
    /// lock also keeps one produce in flight per partition, so sequences arrive in order.
    idempotence: Option<tokio::sync::Mutex<Option<Producer>>>,
}

/// An idempotent producer's identity and sequences.
struct Producer {
    id: i64,
    next_sequence: HashMap<(String, u32), i32>,
    /// A produce was started and did not finish (an error, or its future was dropped): its
    /// sequences may or may not be stored, so none may be reused — the next produce starts a
    /// new producer id.
    in_doubt: bool,
}

impl Client {
    /// A client that reaches the cluster through any of `bootstrap` (`host:port` each).
    pub fn new(bootstrap: Vec<String>) -> Client {
        Client {
            bootstrap,
            channels: Mutex::new(HashMap::new()),
            retry_deadline: RETRY_DEADLINE,
            request_timeout: REQUEST_TIMEOUT,
            idempotence: None,
        }
    }

    /// Makes produce retries exactly-once: batches carry a producer id (allocated by the
    /// cluster on first use) and per-partition sequence numbers, and the partition stores a
    /// retried batch only once. Produce calls of this client then run one at a time. After a
    /// failed produce the client starts over with a new producer id.
    pub fn idempotent(mut self) -> Client {
        self.idempotence = Some(tokio::sync::Mutex::new(None));
        self
    }

    /// Sets how long one attempt of a call may take before it counts as a transient failure
    /// (default 45 s; a fetch's long poll must fit in it).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// Sets how long a call keeps retrying transient failures (default 20 s).
    pub fn with_retry_deadline(mut self, deadline: Duration) -> Client {
        self.retry_deadline = deadline;
        self
    }

    /// Creates a topic; `replication_factor` 0 takes the cluster default.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<TopicDescription, Error> {
        self.create_topic_with_config(name, partitions, replication_factor, TopicConfig::default()).await
    }

    /// Grows a topic to `count` partitions.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicDescription, Error> {
        let request = AddPartitionsRequest { name: name.into(), count };
        let response = self
            .call(|mut c| {
                let r = request.clone();
                async move { c.add_partitions(r).await }
            })
            .await?;
        Ok(response.topic.unwrap_or_default())
    }

    /// Replaces a topic's settings.
    pub async fn alter_topic_config(&self, name: &str, config: TopicConfig) -> Result<(), Error> {
        let request = AlterTopicConfigRequest { name: name.into(), config: Some(config) };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.alter_topic_config(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Creates a topic with settings.
    pub async fn create_topic_with_config(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription, Error> {
        let request = CreateTopicRequest { name: name.into(), partitions, replication_factor, config: Some(config) };
        let response = self
            .call(|mut c| {
                let r = request.clone();
                async move { c.create_topic(r).await }
            })
            .await?;
        Ok(response.topic.unwrap_or_default())
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let request = DeleteTopicRequest { name: name.into() };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.delete_topic(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, Error> {
        Ok(self.call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await }).await?.topics)
    }

    /// One topic with its partitions, leaders and offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, Error> {
        self.describe(DescribeTopicRequest { name: name.into(), local: false }).await
    }

    /// The topic as the first bootstrap node's own catalog has it, never asking another node:
    /// how a caller learns whether a topic change has reached that node.
    pub async fn describe_topic_here(&self, name: &str) -> Result<TopicDescription, Error> {
        self.describe(DescribeTopicRequest { name: name.into(), local: true }).await
    }

    async fn describe(&self, request: DescribeTopicRequest) -> Result<TopicDescription, Error> {
        self.call(|mut c| {
            let r = request.clone();
            async move { c.describe_topic(r).await }
        })
        .await
    }

    /// Appends records as one batch; returns the first and last offset they got. Completes
    /// once a majority of replicas hold the batch.
    pub async fn produce(&self, topic: &str, partition: u32, records: &[NewRecord]) -> Result<(u64, u64), Error> {
        let Some(idempotence) = &self.idempotence else {
            let mut builder = BatchBuilder::new(Compression::None);
            for record in records {
                builder.push(record);
            }
            return self.produce_batch(topic, partition, builder.build()?).await;
        };
        let mut producer = idempotence.lock().await;
        if producer.as_ref().is_none_or(|p| p.in_doubt) {
            *producer = None;
            let id = self.allocate_producer_ids(1).await?;
            *producer = Some(Producer { id, next_sequence: HashMap::new(), in_doubt: false });
        }
        let state = producer.as_mut().expect("set above");
        let key = (topic.to_string(), partition);
        let sequence = state.next_sequence.get(&key).copied().unwrap_or(0);
        let mut builder = BatchBuilder::new(Compression::None).producer(state.id, 0, sequence);
        for record in records {
            builder.push(record);
        }
        let batch = builder.build()?;
        // Reserved before sending: if this future is dropped mid-call, the sequence is not
        // handed to another batch (the partition would take it for a retry of this one and
        // answer with this one's offset — a lost write the Jepsen harness caught).
        state.next_sequence.insert(key, sequence.wrapping_add(records.len() as i32) & i32::MAX);
        state.in_doubt = true;
        match self.produce_batch(topic, partition, batch).await {
            Ok(offsets) => {
                state.in_doubt = false;
                Ok(offsets)
            }
            // The batch may or may not be stored: `in_doubt` stays, a new producer id follows.
            Err(error) => Err(error),
        }
    }

    /// Appends one already-built RecordBatch v2.
    pub async fn produce_batch(&self, topic: &str, partition: u32, batch: Vec<u8>) -> Result<(u64, u64), Error> {
        let request = ProduceRequest { topic: topic.into(), partition, batch: batch.into() };
        let response = self
            .call(|mut c| {
                let r = request.clone();
                async move { c.produce(r).await }
            })
            .await?;
        Ok((response.base_offset, response.last_offset))
    }

    /// Whole batches from `offset`, waiting up to `max_wait_ms` for data to arrive.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchResponse, Error> {
        let request = FetchRequest { topic: topic.into(), partition, offset, max_bytes, max_wait_ms };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.fetch(r).await }
        })
        .await
    }

    /// Decoded records from `offset` on (possibly none), and the partition's high watermark.
    pub async fn fetch_records(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(Vec<Record>, u64), Error> {
        let response = self.fetch(topic, partition, offset, max_bytes, max_wait_ms).await?;
        let mut records = Vec::new();
        for batch in log_store::batch::batches(response.batches) {
            for record in batch?.records(64 << 20)? {
                let record = record?;
                if record.offset.0 >= offset {
                    records.push(record);
                }
            }
        }
        Ok((records, response.high_watermark))
    }

    /// Adds a node (started with `--join`) to the cluster.
    pub async fn add_node(&self, id: u64, address: &str) -> Result<(), Error> {
        let request = AddNodeRequest { id, address: address.into() };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.add_node(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Records where node `id`'s protocol listeners (`kafka`, …) are reached by clients.
    pub async fn set_endpoints(&self, id: u64, endpoints: HashMap<String, String>) -> Result<(), Error> {
        let request = SetEndpointsRequest { node_id: id, endpoints };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.set_endpoints(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Reserves `count` Kafka producer ids cluster-wide; returns the first of the block.
    pub async fn allocate_producer_ids(&self, count: u32) -> Result<i64, Error> {
        let request = AllocateProducerIdsRequest { count };
        self.call(|mut c| async move { c.allocate_producer_ids(request).await }).await.map(|r| r.first)
    }

    /// Raft groups that still count node `id` as a voter, as any remaining node sees them: each
    /// partition whose placement or local replica's voters name it, plus the metadata group if
    /// any remaining node (or one that cannot be asked) still lists it; one line each, saying
    /// which node sees what. Once this is empty the node's data can be wiped and its id reused.
    pub async fn removal_pending(&self, id: u64) -> Result<Vec<String>, Error> {
        let mut pending: std::collections::BTreeMap<(String, u32), String> = std::collections::BTreeMap::new();
        let mut metadata: Option<String> = None;
        for (node, direct) in self.active_nodes().await? {
            match direct.cluster_status().await {
                Ok(there) if !there.metadata_voters.contains(&id) => {}
                Ok(there) => {
                    let seen = format!("metadata group: node {} has voters {:?}", node.id, there.metadata_voters);
                    metadata.get_or_insert(seen);
                }
                Err(error) => {
                    metadata.get_or_insert(format!("metadata group: node {} cannot be asked ({error})", node.id));
                }
            }
            let Ok(topics) = direct.list_topics().await else { continue };
            for topic in topics {
                for partition in topic.partitions {
                    // No voters: the node holds no replica of it (or one not brought in yet).
                    if !partition.voters.is_empty()
                        && (partition.voters.contains(&id) || partition.replicas.contains(&id))
                    {
                        pending.entry((topic.name.clone(), partition.partition)).or_insert_with(|| {
                            format!(
                                "{}/{}: node {} has voters {:?}, placement {:?}",
                                topic.name, partition.partition, node.id, partition.voters, partition.replicas
                            )
                        });
                    }
                }
            }
        }
        Ok(metadata.into_iter().chain(pending.into_values()).collect())
    }

    /// Removes a node: its replicas move to other nodes.
    pub async fn remove_node(&self, id: u64) -> Result<(), Error> {
        let request = RemoveNodeRequest { id };
        self.call(|mut c| async move { c.remove_node(request).await }).await.map(|_| ())
    }

    /// Evens out replicas and preferred leaders over the active nodes; returns how many
    /// partitions' placement changed (the moves then run in the background: see
    /// [`Client::moves_pending`]).
    pub async fn rebalance(&self) -> Result<u32, Error> {
        self.call(|mut c| async move { c.rebalance(RebalanceRequest {}).await }).await.map(|r| r.partitions_moved)
    }

    /// Partitions whose replica moves have not finished, as any active node sees them: a
    /// node's replica counts voters other than the placement's replicas (a replica moved away
    /// counts until its node drops it). An active node that cannot be asked is an error.
    pub async fn moves_pending(&self) -> Result<usize, Error> {
        let mut pending: std::collections::HashSet<(String, u32)> = std::collections::HashSet::new();
        for (_, direct) in self.active_nodes().await? {
            let topics = direct.list_topics().await?;
            for topic in topics {
                for partition in topic.partitions {
                    let mut voters = partition.voters.clone();
                    let mut replicas = partition.replicas.clone();
                    voters.sort_unstable();
                    replicas.sort_unstable();
                    if !voters.is_empty() && voters != replicas {
                        pending.insert((topic.name.clone(), partition.partition));
                    }
                }
            }
        }
        Ok(pending.len())
    }

    /// The active nodes, each with a client that talks to it alone (its own view, not a
    /// forwarded one) and gives up quickly.
    async fn active_nodes(&self) -> Result<Vec<(proto::v1::NodeStatus, Client)>, Error> {
        let status = self.cluster_status().await?;
        Ok(status
            .nodes
            .into_iter()
            .filter(|node| !node.removed)
            .map(|node| {
                let direct = Client::new(vec![node.address.clone()]).with_retry_deadline(Duration::from_secs(2));
                (node, direct)
            })
            .collect())
    }

    /// The cluster as the answering node sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        self.call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await }).await
    }

    /// Runs a call against the bootstrap nodes in turn, retrying transient failures.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(BrokerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_deadline;
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut attempt = 0usize;
        let mut last_error = String::from("no bootstrap node");
        // A node that cannot serve the call may name the node that can; try that one next.
        let mut hinted: Option<String> = None;
        while tokio::time::Instant::now() < deadline {
            let following_hint = hinted.is_some();
            let address = match hinted.take() {
                Some(address) => address,
                None => {
                    attempt += 1;
                    self.bootstrap[(attempt - 1) % self.bootstrap.len().max(1)].clone()
                }
            };
            match self.channel(&address) {
                Ok(channel) => {
                    let client = BrokerClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX);
                    match call(client).await {
                        Ok(response) => return Ok(response.into_inner()),
                        Err(status) if is_transient(&status) => {
                            last_error = format!("{address}: {}", status.message());
                            let hint = status.metadata().get("x-robustmq-leader-address").and_then(|v| v.to_str().ok());
                            if let Some(hint) = hint.filter(|hint| *hint != address) {
                                hinted = Some(hint.to_string());
                                // One immediate hop; hints that bounce on wait for the backoff.
                                if !following_hint {
                                    continue;
                                }
                            }
                        }
                        Err(status) => {
                            return Err(Error::Rejected { code: status.code(), message: status.message().to_string() })
                        }
                    }
                }
                Err(error) => last_error = format!("{address}: {error}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
        Err(Error::Unavailable(last_error))
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = endpoint(address, self.request_timeout).map_err(|e| e.to_string())?;
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Failures that another attempt (after an election, on another node) may not see.
/// `Cancelled` is what a call gets when the node dies under it (its connection is reset).
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
    ) && !status.message().contains("too large")
}

/// How this crate reaches a node's native API, for callers holding their own channels (a node
/// forwarding requests to another): each call bounded by `request_timeout`, HTTP/2 keepalives
/// so a peer that vanished without closing is noticed, no Nagle delay.
pub fn endpoint(address: &str, request_timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(request_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .tcp_nodelay(true))
}
