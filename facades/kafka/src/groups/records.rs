//! What the group coordinator writes to its `__consumer_offsets` partition: committed offsets,
//! group metadata (generation, members, assignments) and load barriers, as keyed records of a
//! compacted topic, so the latest value per key is what survives.
//!
//! Keys and values are JSON (not Kafka's binary schemas: no tool reads this topic but the
//! coordinator). A null value is a tombstone: a deleted offset or group. Offsets committed in a
//! transaction are the same records in a transactional batch of the producer.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use log_store::batch::{BatchBuilder, Compression, NewRecord};
use serde::{Deserialize, Serialize};

/// The internal topic's name, as in Kafka.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A record's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordKey {
    /// A committed offset of one group for one partition.
    Offset { group: String, topic: String, partition: i32 },
    /// A group's membership.
    Group { group: String },
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp: i64,
}

/// A member as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Subscription metadata for the group's protocol.
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// A group's membership as persisted after each rebalance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupValue {
    pub protocol_type: Option<String>,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<StoredMember>,
}

/// One record to write: a key and a value, `None` for a tombstone.
pub(crate) type Entry = (RecordKey, Option<Vec<u8>>);

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The record for a committed offset.
pub(crate) fn offset_entry(group: &str, topic: &str, partition: i32, value: &OffsetValue) -> Entry {
    let key = RecordKey::Offset { group: group.into(), topic: topic.into(), partition };
    (key, Some(serde_json::to_vec(value).expect("serialisable")))
}

/// The record for a group's membership.
pub(crate) fn group_entry(group: &str, value: &GroupValue) -> Entry {
    (RecordKey::Group { group: group.into() }, Some(serde_json::to_vec(value).expect("serialisable")))
}

/// One batch of records (zstd-compressed when large).
pub(crate) fn batch(entries: &[Entry]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(_, v)| v.as_ref().map_or(0, Vec::len)).sum();
    let compression = if size > 4096 { Compression::Zstd } else { Compression::None };
    fill(BatchBuilder::new(compression), entries)
}

/// The same records as a transactional batch of a producer (TxnOffsetCommit): no sequence, as
/// the coordinator writes it, not the producer.
pub(crate) fn transactional_batch(entries: &[Entry], producer_id: i64, epoch: i16) -> Vec<u8> {
    fill(BatchBuilder::new(Compression::None).producer(producer_id, epoch, -1).transactional(), entries)
}

fn fill(mut builder: BatchBuilder, entries: &[Entry]) -> Vec<u8> {
    let timestamp = now_ms();
    for (key, value) in entries {
        builder.push(&NewRecord {
            key: Some(Bytes::from(serde_json::to_vec(key).expect("serialisable"))),
            value: value.clone().map(Bytes::from),
            headers: Vec::new(),
            timestamp,
        });
    }
    builder.build().expect("records build into a batch")
}

/// A stored record decoded; `None` for records this version does not understand (skipped).
pub(crate) fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<Decoded> {
    let key: RecordKey = serde_json::from_slice(key?).ok()?;
    Some(match key {
        RecordKey::Offset { group, topic, partition } => {
            let value = match value {
                Some(bytes) => Some(serde_json::from_slice(bytes).ok()?),
                None => None,
            };
            Decoded::Offset { group, topic, partition, value }
        }
        RecordKey::Group { group } => {
            let value = match value {
                Some(bytes) => Some(serde_json::from_slice(bytes).ok()?),
                None => None,
            };
            Decoded::Group { group, value }
        }
    })
}

/// A decoded record.
pub(crate) enum Decoded {
    Offset { group: String, topic: String, partition: i32, value: Option<OffsetValue> },
    Group { group: String, value: Option<GroupValue> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use log_store::batch::Batch;

    #[test]
    fn records_round_trip_through_a_batch() {
        let offset = OffsetValue { offset: 42, leader_epoch: 3, metadata: Some("m".into()), commit_timestamp: 1 };
        let entries = vec![offset_entry("g", "t", 1, &offset), (RecordKey::Group { group: "g".into() }, None)];
        let batch = Batch::new(Bytes::from(batch(&entries))).unwrap();
        let decoded: Vec<Decoded> = batch
            .records(1 << 20)
            .unwrap()
            .map(|r| r.unwrap())
            .filter_map(|r| decode(r.key.as_deref(), r.value.as_deref()))
            .collect();
        assert!(matches!(&decoded[0], Decoded::Offset { value: Some(v), partition: 1, .. } if *v == offset));
        assert!(matches!(&decoded[1], Decoded::Group { value: None, .. }));
    }
}
