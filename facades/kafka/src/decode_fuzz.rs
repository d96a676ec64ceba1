//! Fuzzing of request decoding (tests only): frames built from valid requests of every
//! advertised API and version, then truncated, bit-flipped, spliced with random bytes or
//! replaced outright, go through the connection's frame parser and the body decoder. Neither
//! may panic, and none may allocate by the peer's word (the vendored codec bounds array counts).
//!
//! `PROPTEST_CASES=100000 cargo test -p facade-kafka decode_fuzz` runs a longer campaign.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;

use crate::connection::parse;
use crate::versions::SUPPORTED;

/// A valid request body of `api_key` at `version`, with a few non-default fields so that arrays
/// and strings are present to be damaged.
fn valid_body(api_key: ApiKey, version: i16) -> Bytes {
    let name = || TopicName(StrBytes::from_static_str("topic"));
    let group = || GroupId(StrBytes::from_static_str("group"));
    let mut buf = BytesMut::new();
    macro_rules! put {
        ($value:expr) => {{
            $value.encode(&mut buf, version).unwrap_or_else(|e| panic!("seed {api_key:?} v{version}: {e}"));
        }};
    }
    match api_key {
        ApiKey::Produce => {
            put!(ProduceRequest::default().with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default().with_records(Some(Bytes::from_static(&[0u8; 70])))
                ])]))
        }
        ApiKey::Fetch => put!(FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name())
            .with_partitions(vec![fetch_request::FetchPartition::default()])])),
        ApiKey::ListOffsets => {
            put!(ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(name())
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()])]))
        }
        ApiKey::Metadata => put!(MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(name()))]))),
        ApiKey::OffsetForLeaderEpoch => put!(OffsetForLeaderEpochRequest::default().with_topics(vec![
            offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(name())
                .with_partitions(vec![Default::default()])
        ])),
        ApiKey::ApiVersions => put!(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => put!(CreateTopicsRequest::default()
            .with_topics(vec![create_topics_request::CreatableTopic::default().with_name(name())])),
        ApiKey::DeleteTopics => put!(DeleteTopicsRequest::default().with_topic_names(vec![name()])),
        ApiKey::CreatePartitions => put!(CreatePartitionsRequest::default()
            .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default().with_name(name())])),
        ApiKey::DescribeConfigs => put!(DescribeConfigsRequest::default()
            .with_resources(vec![describe_configs_request::DescribeConfigsResource::default()])),
        ApiKey::IncrementalAlterConfigs => put!(IncrementalAlterConfigsRequest::default()
            .with_resources(vec![incremental_alter_configs_request::AlterConfigsResource::default()
                .with_configs(vec![Default::default()])])),
        ApiKey::DescribeCluster => put!(DescribeClusterRequest::default()),
        ApiKey::SaslHandshake => {
            put!(SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")))
        }
        ApiKey::SaslAuthenticate => {
            put!(SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0user\0password")))
        }
        ApiKey::InitProducerId => put!(InitProducerIdRequest::default()),
        ApiKey::FindCoordinator if version >= 4 => {
            put!(FindCoordinatorRequest::default().with_coordinator_keys(vec![StrBytes::from_static_str("g")]))
        }
        ApiKey::FindCoordinator => put!(FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"))),
        ApiKey::JoinGroup => {
            put!(JoinGroupRequest::default()
                .with_group_id(group())
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))]))
        }
        ApiKey::SyncGroup => {
            put!(SyncGroupRequest::default().with_group_id(group()).with_assignments(vec![Default::default()]))
        }
        ApiKey::Heartbeat => put!(HeartbeatRequest::default().with_group_id(group())),
        ApiKey::LeaveGroup => put!(LeaveGroupRequest::default().with_group_id(group()).with_members(if version >= 3 {
            vec![Default::default()]
        } else {
            vec![]
        })),
        ApiKey::OffsetCommit => put!(OffsetCommitRequest::default().with_group_id(group()).with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name())
                .with_partitions(vec![Default::default()])
        ])),
        ApiKey::OffsetFetch if version >= 8 => put!(OffsetFetchRequest::default()
            .with_groups(vec![offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(group())])),
        ApiKey::OffsetFetch => put!(OffsetFetchRequest::default().with_group_id(group())),
        ApiKey::DescribeGroups => put!(DescribeGroupsRequest::default().with_groups(vec![group()])),
        ApiKey::ListGroups => put!(ListGroupsRequest::default()),
        ApiKey::DeleteGroups => put!(DeleteGroupsRequest::default().with_groups_names(vec![group()])),
        ApiKey::AddPartitionsToTxn => put!(AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
            .with_v3_and_below_topics(vec![add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(name())
                .with_partitions(vec![0, 1])])),
        ApiKey::AddOffsetsToTxn => put!(AddOffsetsToTxnRequest::default().with_group_id(group())),
        ApiKey::TxnOffsetCommit => put!(TxnOffsetCommitRequest::default().with_group_id(group()).with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(name())
                .with_partitions(vec![Default::default()])
        ])),
        ApiKey::EndTxn => put!(EndTxnRequest::default().with_committed(true)),
        _ => {}
    }
    buf.freeze()
}

/// A whole frame body (header + request) as the reader hands it to `parse`.
fn frame(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api_key.request_header_version(version)).expect("a valid header");
    buf.put_slice(body);
    buf.freeze()
}

/// Every (API, version) this broker answers.
fn advertised() -> Vec<(ApiKey, i16)> {
    SUPPORTED
        .iter()
        .flat_map(|(key, min, max)| (*min..=*max).map(move |v| (*key, v)))
        .filter(|(key, v)| *key != ApiKey::Produce || *v >= 3)
        .collect()
}

/// Parses and decodes like the connection and handlers do; the outcome does not matter.
fn exercise(frame: Bytes, api_key: ApiKey, version: i16) {
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("an address");
    if let Ok((request, _)) = parse(frame, peer) {
        let mut body = request.body.clone();
        let _ = RequestKind::decode(api_key, &mut body, version);
    }
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Splice(usize, Vec<u8>),
    Replace(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Damage::Flip(at, bits)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Damage::Splice(at, b)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        match d {
            Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            Damage::Flip(at, bits) if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= bits;
            }
            Damage::Flip(..) => {}
            Damage::Splice(at, extra) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Damage::Replace(new) => bytes = new.clone(),
        }
    }
    bytes
}

#[test]
fn every_valid_seed_decodes() {
    for (api_key, version) in advertised() {
        let body = valid_body(api_key, version);
        let (request, _) = parse(frame(api_key, version, &body), "127.0.0.1:1".parse().unwrap())
            .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
        let mut body = request.body;
        RequestKind::decode(api_key, &mut body, version).unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn damaged_frames_never_panic(pick in any::<usize>(), damages in proptest::collection::vec(damage(), 1..4)) {
        let all = advertised();
        let (api_key, version) = all[pick % all.len()];
        let whole = frame(api_key, version, &valid_body(api_key, version)).to_vec();
        // Damage the body only (the header names the API), and also the whole frame.
        let header_len = frame(api_key, version, &[]).len();
        let mut body_damaged = whole[..header_len].to_vec();
        body_damaged.extend(apply(whole[header_len..].to_vec(), &damages));
        exercise(Bytes::from(body_damaged), api_key, version);
        let frame_damaged = apply(whole, &damages);
        if frame_damaged.len() >= 8 {
            exercise(Bytes::from(frame_damaged), api_key, version);
        }
    }
}
