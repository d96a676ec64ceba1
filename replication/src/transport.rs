//! Node-to-node transport: one long-lived gRPC stream per peer carrying batched Raft messages.
//!
//! Outbound, each peer has a bounded queue and a task that (re)connects with backoff and pumps
//! the queue into a `Raft.Stream` call; when the queue is full, messages are dropped — Raft
//! retransmits, so dropping is safe and keeps a dead peer from growing memory. Inbound, the
//! `RaftService` decodes batches and hands them to the store loop without blocking.

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::Sender;
use proto::v1::raft_client::RaftClient;
use proto::v1::raft_server::Raft;
use proto::v1::{
    GroupVotersRequest, GroupVotersResponse, RaftAck, RaftBatch, RaftEnvelope, ReadReplicaRequest, ReadReplicaResponse,
};
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use std::sync::Arc;

use crate::cluster::Shared;
use crate::config::ReplicationConfig;
use crate::raft_storage::{decode_message, encode_message};
use crate::store::StoreMsg;

/// Largest chunk of snapshot data served per `ReadReplica` call.
pub(crate) const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 << 20;
/// Batches queued per peer before new ones are dropped.
const PEER_QUEUE_BATCHES: usize = 1024;
/// Largest `RaftBatch` the transport builds; a single larger message travels alone. A leader
/// catching a follower up emits up to `max_inflight_msgs` appends of up to 1 MiB at once: as
/// one batch, that went past the receiver's limit, the stream failed, the messages were lost,
/// and the leader sent the same burst again once the peer answered — a follower a few dozen
/// MiB behind never caught up.
const RAFT_BATCH_BYTES_MAX: usize = 4 << 20;
/// Largest `RaftBatch` (and `ReadReplica` answer) a node accepts: room for one batch of the
/// largest size any partition accepts, plus framing.
const RAFT_BATCH_DECODE_MAX: usize = crate::partition::BATCH_BYTES_LIMIT + (16 << 20);
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest one request/response call to another node (`ReadReplica`, `GroupVoters`) may take:
/// a peer that stops answering without closing fails the call instead of hanging its caller.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one-off request/response calls to another node's `Raft` service (snapshot
/// pulls, repairs, removal checks): bounded connect and call, keepalive, room for a chunk of
/// snapshot data.
pub(crate) async fn call_client(address: &str) -> Result<RaftClient<tonic::transport::Channel>, String> {
    call_client_within(address, CALL_TIMEOUT).await
}

async fn call_client_within(address: &str, timeout: Duration) -> Result<RaftClient<tonic::transport::Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let client = RaftClient::connect(endpoint).await.map_err(|e| e.to_string())?;
    // A chunk holds at least one whole batch, however large (up to `BATCH_BYTES_LIMIT`).
    Ok(client.max_decoding_message_size(RAFT_BATCH_DECODE_MAX))
}

/// Where the store loop sends Raft messages: the gRPC transport, or a simulated network.
pub(crate) trait Outbox: Send {
    /// Queues messages for a node; may drop them (Raft retransmits).
    fn send(&mut self, to: u64, messages: Vec<(u64, Message)>);
    /// Learns a node that joined the cluster.
    fn add_peer(&mut self, id: u64, address: &str);
}

/// The sending side, owned by the store loop.
pub(crate) struct Transport {
    node_id: u64,
    peers: HashMap<u64, mpsc::Sender<RaftBatch>>,
    /// Addresses that replace the advertised ones (`ReplicationConfig::dial_via`).
    dial_via: std::collections::BTreeMap<u64, String>,
    runtime: tokio::runtime::Handle,
    /// Where a lost peer is reported, so groups it leads wake up (see quiescence in `store`).
    inbox: Sender<StoreMsg>,
}

impl Transport {
    /// Starts one connection task per peer (inside the current tokio runtime).
    pub fn start(config: &ReplicationConfig, runtime: tokio::runtime::Handle, inbox: Sender<StoreMsg>) -> Transport {
        let mut transport = Transport {
            node_id: config.node_id,
            peers: HashMap::new(),
            dial_via: config.dial_via.clone(),
            runtime,
            inbox,
        };
        for peer in &config.peers {
            transport.add_peer(peer.id, &peer.address);
        }
        transport
    }
}

impl Outbox for Transport {
    /// Starts a connection to a node that joined (no-op if known, or if it is this node).
    fn add_peer(&mut self, id: u64, address: &str) {
        if id == self.node_id || self.peers.contains_key(&id) {
            return;
        }
        let (sender, queue) = mpsc::channel(PEER_QUEUE_BATCHES);
        let address = self.dial_via.get(&id).map_or(address, String::as_str);
        self.runtime.spawn(peer_link(id, address.to_string(), queue, self.inbox.clone()));
        self.peers.insert(id, sender);
    }

    /// Queues messages for a peer, in order and in batches of at most `RAFT_BATCH_BYTES_MAX`;
    /// drops them (from the first batch that does not fit on) if its queue is full or the peer
    /// is unknown.
    fn send(&mut self, to: u64, messages: Vec<(u64, Message)>) {
        let Some(peer) = self.peers.get(&to) else { return };
        for batch in batches(self.node_id, &messages, RAFT_BATCH_BYTES_MAX) {
            if peer.try_send(batch).is_err() {
                debug!(peer = to, "peer queue full or closed; dropping Raft messages");
                return;
            }
        }
    }
}

/// Messages for one peer as `RaftBatch`es of at most `bytes_max` encoded bytes each (a message
/// larger than that alone in its batch), in order.
fn batches(from_node: u64, messages: &[(u64, Message)], bytes_max: usize) -> Vec<RaftBatch> {
    let mut batches = Vec::new();
    let mut envelopes: Vec<RaftEnvelope> = Vec::new();
    let mut bytes = 0;
    for (group, message) in messages {
        let encoded = encode_message(message);
        if !envelopes.is_empty() && bytes + encoded.len() > bytes_max {
            batches.push(RaftBatch { from_node, envelopes: std::mem::take(&mut envelopes) });
            bytes = 0;
        }
        bytes += encoded.len();
        envelopes.push(RaftEnvelope { group_id: *group, message: encoded.into() });
    }
    if !envelopes.is_empty() {
        batches.push(RaftBatch { from_node, envelopes });
    }
    batches
}

async fn peer_link(peer: u64, address: String, mut queue: mpsc::Receiver<RaftBatch>, inbox: Sender<StoreMsg>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
            // HTTP/2 keepalive notices a peer cut off by the network, not only one that closed
            // its connection, so the groups it leads wake up and elect another leader.
            Ok(endpoint) => endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
            Err(error) => {
                tracing::error!(peer, %address, %error, "invalid peer address; not connecting");
                return;
            }
        };
        let mut client = match RaftClient::connect(endpoint).await {
            Ok(client) => client,
            Err(_) => {
                let _ = inbox.try_send(StoreMsg::PeerUnreachable(peer));
                // Messages queued while the peer is unreachable are stale by the time it returns.
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        info!(peer, %address, "connected to peer");
        let connected_at = std::time::Instant::now();
        let (stream_sender, stream) = mpsc::channel(64);
        let mut call = tokio::spawn(async move { client.stream(ReceiverStream::new(stream)).await });
        loop {
            tokio::select! {
                batch = queue.recv() => match batch {
                    Some(batch) => if stream_sender.send(batch).await.is_err() { break },
                    None => return,
                },
                _ = &mut call => break,
            }
        }
        info!(peer, %address, "stream to peer ended; reconnecting");
        let _ = inbox.try_send(StoreMsg::PeerUnreachable(peer));
        // A connection that ends at once (a proxy or load balancer in front of a dead node
        // accepts, then closes) counts as a failed attempt: back off, do not spin.
        if connected_at.elapsed() >= STABLE_CONNECTION {
            backoff = RECONNECT_BACKOFF_MIN;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
    }
}

/// The inbound side of the `Raft` gRPC service.
#[derive(Clone)]
pub struct RaftService {
    inbox: Sender<StoreMsg>,
    shared: Arc<Shared>,
}

impl RaftService {
    pub(crate) fn new(shared: Arc<Shared>) -> RaftService {
        RaftService { inbox: shared.inbox.clone(), shared }
    }

    /// The tonic service to mount on the node's gRPC server.
    pub fn into_server(self) -> proto::v1::raft_server::RaftServer<RaftService> {
        proto::v1::raft_server::RaftServer::new(self).max_decoding_message_size(RAFT_BATCH_DECODE_MAX)
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn stream(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            let messages: Vec<(u64, Message)> = batch
                .envelopes
                .iter()
                .filter_map(|envelope| decode_message(&envelope.message).map(|m| (envelope.group_id, m)))
                .collect();
            if messages.len() != batch.envelopes.len() {
                debug!(from = batch.from_node, "dropped undecodable Raft messages");
            }
            if self.inbox.try_send(StoreMsg::Raft(messages)).is_err() {
                debug!(from = batch.from_node, "store inbox full; dropping Raft messages");
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn read_replica(
        &self,
        request: Request<ReadReplicaRequest>,
    ) -> Result<Response<ReadReplicaResponse>, Status> {
        let request = request.into_inner();
        let handle = self
            .shared
            .partition_by_group(request.group_id)
            .ok_or_else(|| Status::not_found(format!("no replica of group {} here", request.group_id)))?;
        let reader = &handle.reader;
        let (log_start, next) = (reader.log_start_offset().0, reader.next_offset().0);
        let mut response =
            ReadReplicaResponse { batches: Default::default(), log_start_offset: log_start, next_offset: next };
        if request.offset < log_start || request.offset >= next.min(request.until_offset) {
            return Ok(Response::new(response));
        }
        let max_bytes = (request.max_bytes as usize).clamp(1, SNAPSHOT_CHUNK_BYTES_MAX);
        let bytes =
            reader.read(log_store::Offset(request.offset), max_bytes).map_err(|e| Status::internal(e.to_string()))?;
        // Only whole batches that end before the snapshot's end.
        let mut keep = 0;
        for stored in log_store::batch::batches(bytes.clone()) {
            let stored = stored.map_err(|e| Status::data_loss(e.to_string()))?;
            if stored.header().last_offset().0 >= request.until_offset {
                break;
            }
            keep += stored.bytes().len();
        }
        response.batches = bytes.slice(..keep);
        Ok(Response::new(response))
    }

    async fn group_voters(
        &self,
        request: Request<GroupVotersRequest>,
    ) -> Result<Response<GroupVotersResponse>, Status> {
        let group = request.into_inner().group_id;
        let voters = self
            .shared
            .partition_by_group(group)
            .map(|handle| handle.voters.read().unwrap_or_else(|p| p.into_inner()).iter().map(|n| n.0).collect())
            .unwrap_or_default();
        Ok(Response::new(GroupVotersResponse { voters }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_of(bytes: usize) -> Message {
        let entry = raft::eraftpb::Entry { data: vec![7u8; bytes].into(), ..Default::default() };
        let mut message = Message::default();
        message.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        message.entries = vec![entry].into();
        message
    }

    /// A catch-up burst (here 40 appends of 1 MiB) leaves as batches the receiver accepts, in
    /// order, none lost; a message over the cap travels alone.
    #[test]
    fn a_catch_up_burst_is_split_into_batches_under_the_cap() {
        let messages: Vec<(u64, Message)> = (0..40u64).map(|i| (1000 + i % 2, append_of(1 << 20))).collect();
        let split = batches(3, &messages, RAFT_BATCH_BYTES_MAX);
        assert!(split.len() >= 10, "{} batches", split.len());
        let mut groups = Vec::new();
        for batch in &split {
            let bytes: usize = batch.envelopes.iter().map(|e| e.message.len()).sum();
            assert!(bytes <= RAFT_BATCH_BYTES_MAX, "a batch of {bytes} bytes");
            assert_eq!(batch.from_node, 3);
            groups.extend(batch.envelopes.iter().map(|e| e.group_id));
        }
        assert_eq!(groups, messages.iter().map(|(g, _)| *g).collect::<Vec<_>>());

        let alone =
            batches(3, &[(1, append_of(64)), (1, append_of(6 << 20)), (1, append_of(64))], RAFT_BATCH_BYTES_MAX);
        assert_eq!(alone.iter().map(|b| b.envelopes.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    /// A node that accepts connections and never answers fails a snapshot pull or a removal
    /// check instead of hanging it (a hung pull kept its group "installing" for good).
    #[tokio::test]
    async fn a_call_to_a_node_that_never_answers_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept() {
                held.push(socket);
            }
        });
        let call = async {
            let mut client = call_client_within(&address, Duration::from_millis(500)).await?;
            let request = ReadReplicaRequest { group_id: 1000, offset: 0, until_offset: 10, max_bytes: 1024 };
            client.read_replica(request).await.map(|_| ()).map_err(|e| e.to_string())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), call).await;
        assert!(outcome.expect("the call hung on a node that never answers").is_err());
    }
}
