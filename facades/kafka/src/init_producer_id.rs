//! InitProducerId for idempotent producers: a producer id no other producer in the cluster gets
//! (transactional ids go to the transaction coordinator, `transactions::api`).
//!
//! Ids come from the catalog in blocks (`AllocateProducerIds` through the metadata group), so a
//! node asks the metadata leader once per [`BLOCK`] producers. Deduplication itself is
//! partition state (see `replication`'s producer state), so nothing else is kept here. An
//! epoch-bump request (KIP-360, v3+) without a transactional id gets a fresh id at epoch 0, as
//! Kafka does.

use std::ops::Range;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tokio::sync::Mutex;
use tracing::warn;

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};

/// Producer ids taken from the catalog at once.
const BLOCK: u32 = 1000;

/// The ids this node may still hand out.
#[derive(Default)]
pub(crate) struct ProducerIdBlock(Mutex<Range<i64>>);

pub(crate) async fn handle(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: InitProducerIdRequest = request.decode()?;
    let mut response = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if let Some(id) = &body.transactional_id {
        let response = crate::transactions::api::init_producer_id(broker, &id.0, &body).await;
        return encode(&response, version);
    }
    match next_producer_id(broker).await {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(error) => response.error_code = error.code(),
    }
    encode(&response, version)
}

pub(crate) async fn next_producer_id(broker: &Broker) -> Result<i64, ResponseError> {
    let mut block = broker.producer_ids.0.lock().await;
    if block.is_empty() {
        let first = if broker.cluster.metadata_leader() == Some(broker.cluster.node_id()) {
            broker.cluster.allocate_producer_ids(BLOCK).await.map_err(|error| error.to_string())
        } else {
            broker.admin.allocate_producer_ids(BLOCK).await.map_err(|error| error.to_string())
        };
        let first = first.map_err(|error| {
            warn!(%error, "cannot allocate producer ids");
            ResponseError::CoordinatorNotAvailable
        })?;
        *block = first..first + BLOCK as i64;
    }
    let id = block.start;
    block.start += 1;
    Ok(id)
}
