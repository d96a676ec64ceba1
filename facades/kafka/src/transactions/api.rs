//! The transaction coordinator's requests: InitProducerId with a transactional id (0–5),
//! AddPartitionsToTxn (0–3), AddOffsetsToTxn (0–3) and EndTxn (0–3).

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};
use kafka_protocol::ResponseError;

use super::{complete, Status, TxnMeta, TxnState, TIMEOUT_MAX_MS};
use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::groups::records::{now_ms, OFFSETS_TOPIC};

/// What InitProducerId decided under the lock.
enum Init {
    Ready(i64, i16, crate::shards::Write),
    /// A producer id must be allocated first (a new id, or the epoch ran out).
    NeedsProducerId,
}

/// InitProducerId for a transactional id: a new producer id at epoch 0, or the known one with
/// its epoch bumped (fencing the previous producer; its open transaction is aborted first, and
/// the client is told to retry meanwhile with CONCURRENT_TRANSACTIONS).
pub(crate) async fn init_producer_id(
    broker: &Broker,
    id: &str,
    request: &InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    let timeout_ms = request.transaction_timeout_ms;
    if timeout_ms <= 0 || timeout_ms > TIMEOUT_MAX_MS {
        response.error_code = ResponseError::InvalidTransactionTimeout.code();
        return response;
    }
    let (asked_id, asked_epoch) = (request.producer_id.0, request.producer_epoch);
    let mut fresh: Option<i64> = None;
    for _ in 0..2 {
        let decided = broker
            .transactions
            .shards
            .with(broker, id, true, |state, context| {
                let state = state.expect("created on demand");
                let empty = |producer_id, epoch| TxnMeta {
                    producer_id,
                    epoch,
                    timeout_ms,
                    status: Status::Empty,
                    partitions: Default::default(),
                    started_ms: 0,
                };
                let meta = match (state.meta.as_mut(), fresh) {
                    (None, None) => return Ok(Init::NeedsProducerId),
                    (None, Some(producer_id)) => {
                        state.meta = Some(empty(producer_id, 0));
                        return Ok(Init::Ready(producer_id, 0, state.persist(id, context)));
                    }
                    (Some(meta), _) => meta,
                };
                if state.completing || matches!(meta.status, Status::PrepareCommit | Status::PrepareAbort) {
                    return Err(ResponseError::ConcurrentTransactions);
                }
                if asked_id >= 0 && (asked_id != meta.producer_id || asked_epoch != meta.epoch) {
                    return Err(ResponseError::ProducerFenced);
                }
                if meta.status == Status::Ongoing {
                    // Fence the old producer and abort what it left open; the client retries.
                    meta.epoch = meta.epoch.saturating_add(1);
                    meta.status = Status::PrepareAbort;
                    let write = state.persist(id, context);
                    tokio::spawn(async move {
                        let _ = write.await;
                    });
                    return Err(ResponseError::ConcurrentTransactions);
                }
                if let Some(producer_id) = fresh.filter(|_| meta.epoch >= i16::MAX - 1) {
                    *meta = empty(producer_id, 0);
                } else if meta.epoch >= i16::MAX - 1 {
                    return Ok(Init::NeedsProducerId);
                } else {
                    meta.epoch += 1;
                    meta.status = Status::Empty;
                    meta.partitions.clear();
                    meta.timeout_ms = timeout_ms;
                }
                let (producer_id, epoch) = (meta.producer_id, meta.epoch);
                Ok(Init::Ready(producer_id, epoch, state.persist(id, context)))
            })
            .await
            .and_then(|decided| decided);
        match decided {
            Ok(Init::Ready(producer_id, epoch, write)) => {
                if let Err(error) = write.await {
                    response.error_code = error.code();
                } else {
                    response.producer_id = ProducerId(producer_id);
                    response.producer_epoch = epoch;
                }
                return response;
            }
            Ok(Init::NeedsProducerId) => match crate::init_producer_id::next_producer_id(broker).await {
                Ok(producer_id) => fresh = Some(producer_id),
                Err(error) => {
                    response.error_code = error.code();
                    return response;
                }
            },
            // CONCURRENT_TRANSACTIONS: the timer finishes the abort; the client asks again.
            Err(error) => {
                response.error_code = error.code();
                return response;
            }
        }
    }
    response.error_code = ResponseError::CoordinatorNotAvailable.code();
    response
}

/// Adds partitions to the producer's transaction (making it Ongoing) and persists that.
async fn add(
    broker: &Broker,
    id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Result<(), ResponseError> {
    let write = broker
        .transactions
        .shards
        .with(broker, id, false, |state, context| {
            let state: &mut TxnState = state.ok_or(ResponseError::InvalidProducerIdMapping)?;
            state.check(producer_id, epoch)?;
            let meta = state.meta.as_mut().expect("checked");
            if meta.status != Status::Ongoing {
                meta.status = Status::Ongoing;
                meta.started_ms = now_ms();
            }
            meta.partitions.extend(partitions);
            Ok(state.persist(id, context))
        })
        .await
        .and_then(|write| write)?;
    write.await
}

pub(crate) async fn add_partitions_to_txn(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: AddPartitionsToTxnRequest = request.decode()?;
    let id = body.v3_and_below_transactional_id.0.to_string();
    let exists = |topic: &str, partition: i32| {
        broker
            .cluster
            .with_catalog(|c| c.topics.get(topic).is_some_and(|t| (0..t.partitions.len() as i32).contains(&partition)))
    };
    let wanted: Vec<(String, i32)> = body
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p)))
        .collect();
    let unknown: Vec<&(String, i32)> = wanted.iter().filter(|(t, p)| !exists(t, *p)).collect();
    let outcome = if unknown.is_empty() {
        add(broker, &id, body.v3_and_below_producer_id.0, body.v3_and_below_producer_epoch, wanted.clone()).await
    } else {
        Err(ResponseError::OperationNotAttempted)
    };
    let results = body
        .v3_and_below_topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let code = match &outcome {
                        Ok(()) => 0,
                        Err(_) if !exists(&topic.name.0, *p) => ResponseError::UnknownTopicOrPartition.code(),
                        Err(error) => error.code(),
                    };
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default().with_name(topic.name.clone()).with_results_by_partition(partitions)
        })
        .collect();
    encode(&AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results), version)
}

pub(crate) async fn add_offsets_to_txn(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: AddOffsetsToTxnRequest = request.decode()?;
    let outcome = match crate::groups::Coordinator::partition_of(broker, &body.group_id.0) {
        Some(partition) => {
            let partitions = vec![(OFFSETS_TOPIC.to_string(), partition as i32)];
            add(broker, &body.transactional_id.0, body.producer_id.0, body.producer_epoch, partitions).await
        }
        None => Err(ResponseError::CoordinatorNotAvailable),
    };
    let code = outcome.err().map_or(0, |error| error.code());
    encode(&AddOffsetsToTxnResponse::default().with_error_code(code), version)
}

pub(crate) async fn end_txn(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: EndTxnRequest = request.decode()?;
    let id = body.transactional_id.0.to_string();
    let (producer_id, epoch, commit) = (body.producer_id.0, body.producer_epoch, body.committed);
    let prepared = broker
        .transactions
        .shards
        .with(broker, &id, false, |state, context| {
            let state: &mut TxnState = state.ok_or(ResponseError::InvalidProducerIdMapping)?;
            let meta = state.meta.as_ref().ok_or(ResponseError::InvalidProducerIdMapping)?;
            // A retried EndTxn of a transaction that already completed the same way succeeds.
            let done = if commit { Status::CompleteCommit } else { Status::CompleteAbort };
            if meta.producer_id == producer_id && meta.epoch == epoch && meta.status == done && !state.completing {
                return Ok(None);
            }
            let meta = state.check(producer_id, epoch)?;
            if meta.status != Status::Ongoing {
                return Err(ResponseError::InvalidTxnState);
            }
            let meta = state.meta.as_mut().expect("checked");
            meta.status = if commit { Status::PrepareCommit } else { Status::PrepareAbort };
            Ok(Some(state.persist(&id, context)))
        })
        .await
        .and_then(|prepared| prepared);
    let outcome = match prepared {
        Ok(None) => Ok(()),
        Ok(Some(write)) => match write.await {
            Ok(()) => complete(broker, &id).await.map(|_| ()),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    let code = outcome.err().map_or(0, |error| error.code());
    encode(&EndTxnResponse::default().with_error_code(code), version)
}
