//! The transaction coordinator: each transactional id's producer id, epoch, state and
//! partitions, hosted by the leader of its partition of the compacted `__transaction_state`
//! topic (loaded and failed over by `shards`, like consumer groups).
//!
//! A transaction goes Empty → Ongoing (AddPartitionsToTxn / AddOffsetsToTxn) → PrepareCommit
//! or PrepareAbort (EndTxn, or its timeout) → CompleteCommit / CompleteAbort once a marker
//! (control batch) is in every partition it touched. Each state is written before it is acted
//! on, so a coordinator that takes over finds a Prepare state and finishes writing the markers.
//! Markers go through Raft like any batch: to partitions this node leads directly, to others
//! through the native API, which forwards to their leaders. A new InitProducerId for the id
//! bumps the epoch (fencing the previous producer, whose open transaction is aborted); so does
//! a timeout.
//!
//! * `api` — InitProducerId (with a transactional id), AddPartitionsToTxn, AddOffsetsToTxn,
//!   EndTxn.

pub(crate) mod api;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use log_store::batch::{Batch, BatchBuilder, Compression, NewRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::groups::records::now_ms;
use crate::shards::{Context, Shard, Shards};

/// The internal topic, as in Kafka.
pub(crate) const TRANSACTION_TOPIC: &str = "__transaction_state";
/// Longest transaction timeout a producer may ask for (Kafka's `transaction.max.timeout.ms`).
pub(crate) const TIMEOUT_MAX_MS: i32 = 900_000;
/// How often timeouts and unfinished completions are checked.
const TICK: Duration = Duration::from_millis(200);
/// How long writing one marker is retried before the completion is left to the timer.
const MARKER_RETRY: Duration = Duration::from_secs(30);
/// Longest one attempt at writing a marker may take. An attempt that never ended (a forward
/// to a node that stopped answering) once left a transaction prepared for good: its
/// partitions' last stable offset stuck, read_committed consumers stalled, and the producer
/// got CONCURRENT_TRANSACTIONS for ever.
const MARKER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Status {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

/// A transactional id's persisted state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub status: Status,
    pub partitions: BTreeSet<(String, i32)>,
    /// When the transaction became Ongoing, in ms since the epoch.
    pub started_ms: i64,
}

/// One transactional id on its coordinator.
#[derive(Debug, Default)]
pub(crate) struct TxnState {
    pub meta: Option<TxnMeta>,
    /// Markers are being written right now.
    pub completing: bool,
}

impl TxnState {
    /// Persists the state (the write is awaited by whoever needs it to be durable).
    pub fn persist(&self, id: &str, context: &mut Context) -> crate::shards::Write {
        let value = self.meta.as_ref().map(|meta| serde_json::to_vec(meta).expect("serialisable"));
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&NewRecord {
            key: Some(Bytes::from(id.as_bytes().to_vec())),
            value: value.map(Bytes::from),
            headers: Vec::new(),
            timestamp: now_ms(),
        });
        context.write(builder.build().expect("one record builds")).0
    }

    /// The producer checks every transactional request makes.
    pub fn check(&self, producer_id: i64, epoch: i16) -> Result<&TxnMeta, ResponseError> {
        let meta = self.meta.as_ref().ok_or(ResponseError::InvalidProducerIdMapping)?;
        if meta.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != meta.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if self.completing || matches!(meta.status, Status::PrepareCommit | Status::PrepareAbort) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(meta)
    }
}

impl Shard for TxnState {
    const TOPIC: &'static str = TRANSACTION_TOPIC;

    fn new(_key: &str) -> TxnState {
        TxnState::default()
    }

    fn rebuild(batches: Vec<Batch>) -> HashMap<String, TxnState> {
        let mut states = HashMap::new();
        for batch in batches {
            let Ok(records) = batch.records(64 << 20) else { continue };
            for record in records.filter_map(|r| r.ok()) {
                let Some(key) = record.key.and_then(|k| String::from_utf8(k.to_vec()).ok()) else { continue };
                let meta = record.value.and_then(|v| serde_json::from_slice::<TxnMeta>(&v).ok());
                match meta {
                    Some(meta) => {
                        states.insert(key, TxnState { meta: Some(meta), completing: false });
                    }
                    None => {
                        states.remove(&key);
                    }
                }
            }
        }
        states
    }
}

/// Every transactional id this node coordinates.
#[derive(Default)]
pub(crate) struct TxnCoordinator {
    pub shards: Shards<TxnState>,
}

/// Writes one marker to a partition: directly when this node leads it, else forwarded.
async fn write_marker(broker: &Broker, topic: &str, partition: i32, marker: Vec<u8>) -> Result<(), String> {
    let index = u32::try_from(partition).map_err(|_| format!("partition {partition}"))?;
    match broker.cluster.append(topic, index, marker.clone().into()).await {
        Ok(_) => Ok(()),
        Err(replication::Error::NotLeader { .. }) => {
            broker.admin.produce_batch(topic, index, marker).await.map(|_| ()).map_err(|error| error.to_string())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Writes the markers of a prepared transaction and records it complete. Returns the final
/// status, or the error that stopped it (the timer tries again).
pub(crate) async fn complete(broker: &Broker, id: &str) -> Result<Status, ResponseError> {
    let coordinator = &broker.transactions;
    let started = coordinator
        .shards
        .with(broker, id, false, |state, _| {
            let state = state?;
            let meta = state.meta.clone()?;
            let commit = match meta.status {
                Status::PrepareCommit => true,
                Status::PrepareAbort => false,
                _ => return None,
            };
            if state.completing {
                return None;
            }
            state.completing = true;
            Some((meta, commit))
        })
        .await?;
    let Some((meta, commit)) = started else {
        return Err(ResponseError::ConcurrentTransactions);
    };
    let term = broker
        .cluster
        .partition_status(TRANSACTION_TOPIC, Shards::<TxnState>::partition_of(broker, id).unwrap_or(0))
        .map_or(0, |s| s.leader_epoch as i32);
    let mut failed = None;
    for (topic, partition) in &meta.partitions {
        let marker = BatchBuilder::marker(meta.producer_id, meta.epoch, commit, term, now_ms());
        let deadline = tokio::time::Instant::now() + MARKER_RETRY;
        loop {
            let attempt =
                tokio::time::timeout(MARKER_ATTEMPT_TIMEOUT, write_marker(broker, topic, *partition, marker.clone()));
            match attempt.await.unwrap_or_else(|_| Err(format!("no answer within {MARKER_ATTEMPT_TIMEOUT:?}"))) {
                Ok(()) => break,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    warn!(transactional_id = id, %topic, partition, %error, "retrying a transaction marker");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if failed.is_some() {
            break;
        }
    }
    let outcome = coordinator
        .shards
        .with(broker, id, false, |state, context| {
            let state = state?;
            state.completing = false;
            if failed.is_some() {
                return None;
            }
            let meta = state.meta.as_mut()?;
            meta.status = if commit { Status::CompleteCommit } else { Status::CompleteAbort };
            meta.partitions.clear();
            Some(state.persist(id, context))
        })
        .await?;
    if let Some(error) = failed {
        warn!(transactional_id = id, %error, "transaction markers not written yet; the coordinator retries");
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    match outcome {
        Some(write) => {
            write.await?;
            info!(
                transactional_id = id,
                committed = commit,
                partitions = meta.partitions.len(),
                "transaction completed"
            );
            Ok(if commit { Status::CompleteCommit } else { Status::CompleteAbort })
        }
        None => Err(ResponseError::NotCoordinator),
    }
}

/// Aborts an open transaction after its timeout, fencing its producer with a new epoch.
fn expire(id: &str, state: &mut TxnState, context: &mut Context) -> bool {
    let Some(meta) = state.meta.as_mut() else { return false };
    let expired = meta.status == Status::Ongoing && now_ms() > meta.started_ms + meta.timeout_ms as i64;
    if !expired || state.completing {
        return matches!(meta.status, Status::PrepareCommit | Status::PrepareAbort) && !state.completing;
    }
    info!(transactional_id = id, producer_id = meta.producer_id, "transaction timed out: aborting it");
    meta.epoch = meta.epoch.saturating_add(1);
    meta.status = Status::PrepareAbort;
    let write = state.persist(id, context);
    tokio::spawn(async move {
        if let Err(error) = write.await {
            warn!(?error, "cannot persist a timed-out transaction's abort");
        }
    });
    true
}

/// Runs the coordinator's timer until `stop` turns true: timeouts, and prepared transactions
/// whose markers are not all written (after a failover, say).
pub(crate) async fn run_timers(broker: Arc<Broker>, stop: watch::Receiver<bool>) {
    crate::shards::every(TICK, stop, || {
        let mut due = Vec::new();
        broker.transactions.shards.tick(&broker, |id, state, context| {
            if expire(id, state, context) {
                due.push(id.to_string());
            }
        });
        for id in due {
            let broker = broker.clone();
            tokio::spawn(async move {
                let _ = complete(&broker, &id).await;
            });
        }
    })
    .await
}
