//! Every version of every API the Kafka listener advertises is answered, and the answer decodes.
//!
//! The codec refuses to encode a field a version does not have; a handler that set one (as
//! ListOffsets once set the leader epoch below v4) would close the client's connection on that
//! version only. Real clients each use one version per API, so this walks them all with
//! requests encoded by the `kafka-protocol` crate.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::harness::TestCluster;
use crate::kafka_wire::{batch, call, decode, idempotent_batch, name};

const TOPIC: &str = "versions";

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// Calls `ask` until the coordinator is ready (the offsets topic is created on first use and its
/// partitions load on first request); returns its last (error code, value).
fn retry_coordinator(mut ask: impl FnMut() -> (i16, i32)) -> (i16, i32) {
    const RETRIABLE: [i16; 3] = [14, 15, 16]; // load in progress, not available, not coordinator
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = ask();
        if !RETRIABLE.contains(&answer.0) || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_of_every_api_is_answered() {
    // No initial rebalance delay: every JoinGroup version completes at once.
    let cluster = TestCluster::start_with(1, "[kafka]\ngroup_initial_rebalance_delay_ms = 0\n");
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic(TOPIC, 1, 1).await.unwrap();
    // Wait for the partition's leader and the node's registered Kafka endpoint.
    for _ in 0..200 {
        let leader = client.describe_topic(TOPIC).await.unwrap().partitions[0].leader.is_some();
        let registered = client.cluster_status().await.unwrap().nodes.iter().all(|n| n.endpoints.contains_key("kafka"));
        if leader && registered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = TcpStream::connect(&cluster.node(1).kafka).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let versions: ApiVersionsResponse =
        decode(call(&mut stream, ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default()), ApiKey::ApiVersions, 0);
    assert_eq!(versions.error_code, 0);
    let mut correlation_id = 10;
    let mut produced = 0i64;
    let mut answered = 0;
    let mut producer_ids = Vec::new();
    // JoinGroup version → (member id, generation) of the one member of group "join-v{version}".
    let mut joined: BTreeMap<i16, (StrBytes, i32)> = BTreeMap::new();
    // AddPartitionsToTxn version → (producer id, epoch) of transactional id "txn-v{version}".
    let mut transactions: BTreeMap<i16, (i64, i16)> = BTreeMap::new();
    for advertised in &versions.api_keys {
        let api_key = ApiKey::try_from(advertised.api_key).unwrap();
        for version in advertised.min_version..=advertised.max_version {
            if api_key == ApiKey::Produce && version < 3 {
                continue; // listed on purpose, refused (message formats v0/v1)
            }
            correlation_id += 1;
            let id = correlation_id;
            let s = &mut stream;
            match api_key {
                ApiKey::ApiVersions => {
                    let request = ApiVersionsRequest::default()
                        .with_client_software_name(StrBytes::from_static_str("test"))
                        .with_client_software_version(StrBytes::from_static_str("1"));
                    let request = if version >= 3 { request } else { ApiVersionsRequest::default() };
                    let r: ApiVersionsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.error_code, 0);
                }
                ApiKey::Metadata => {
                    let topic = MetadataRequestTopic::default().with_name(Some(name(TOPIC)));
                    let request = MetadataRequest::default().with_topics(Some(vec![topic]));
                    let r: MetadataResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.brokers.len(), 1, "v{version}");
                    assert_eq!((r.topics[0].error_code, r.topics[0].partitions[0].leader_id.0), (0, 1), "v{version}");
                }
                ApiKey::Produce => {
                    let data = PartitionProduceData::default().with_index(0).with_records(Some(batch()));
                    let topic = TopicProduceData::default().with_name(name(TOPIC)).with_partition_data(vec![data]);
                    let request =
                        ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![topic]);
                    let r: ProduceResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    let partition = &r.responses[0].partition_responses[0];
                    assert_eq!((partition.error_code, partition.base_offset), (0, produced), "v{version}");
                    produced += 1;
                }
                ApiKey::Fetch => {
                    let partition = FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20);
                    let topic = FetchTopic::default().with_topic(name(TOPIC)).with_partitions(vec![partition]);
                    let request = FetchRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_max_bytes(1 << 20)
                        .with_topics(vec![topic]);
                    let r: FetchResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    let partition = &r.responses[0].partitions[0];
                    assert_eq!((partition.error_code, partition.high_watermark), (0, produced), "v{version}");
                    assert!(partition.records.as_ref().is_some_and(|r| !r.is_empty()), "v{version}: records");
                }
                ApiKey::ListOffsets => {
                    let partition = ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1);
                    let topic = ListOffsetsTopic::default().with_name(name(TOPIC)).with_partitions(vec![partition]);
                    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
                    let r: ListOffsetsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    let partition = &r.topics[0].partitions[0];
                    assert_eq!((partition.error_code, partition.offset), (0, produced), "v{version}");
                }
                ApiKey::CreateTopics => {
                    let topic = CreatableTopic::default()
                        .with_name(name(&format!("created-{version}")))
                        .with_num_partitions(1)
                        .with_replication_factor(1);
                    let request = CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![topic]);
                    let r: CreateTopicsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.topics[0].error_code, 0, "v{version}: {:?}", r.topics[0].error_message);
                }
                ApiKey::DeleteTopics => {
                    // CreateTopics (2–7) ran first: delete one of those per version.
                    let victim = name(&format!("created-{}", version + 1));
                    let request = if version >= 6 {
                        DeleteTopicsRequest::default()
                            .with_topics(vec![DeleteTopicState::default().with_name(Some(victim))])
                    } else {
                        DeleteTopicsRequest::default().with_topic_names(vec![victim])
                    };
                    let request = request.with_timeout_ms(10_000);
                    let r: DeleteTopicsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.responses[0].error_code, 0, "v{version}");
                }
                ApiKey::OffsetForLeaderEpoch => {
                    // The current epoch (from ListOffsets) ends at the log's end; a newer
                    // current_leader_epoch than the leader's is UNKNOWN_LEADER_EPOCH.
                    let partition = ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1);
                    let topic = ListOffsetsTopic::default().with_name(name(TOPIC)).with_partitions(vec![partition]);
                    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
                    let r: ListOffsetsResponse =
                        decode(call(s, ApiKey::ListOffsets, 7, id, &request), ApiKey::ListOffsets, 7);
                    let epoch = r.topics[0].partitions[0].leader_epoch;
                    let ask = |s: &mut TcpStream, current: i32, requested: i32| {
                        let partition = OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(current)
                            .with_leader_epoch(requested);
                        let topic =
                            OffsetForLeaderTopic::default().with_topic(name(TOPIC)).with_partitions(vec![partition]);
                        let request = OffsetForLeaderEpochRequest::default().with_topics(vec![topic]);
                        let r: OffsetForLeaderEpochResponse =
                            decode(call(s, api_key, version, id, &request), api_key, version);
                        let p = &r.topics[0].partitions[0];
                        (p.error_code, p.leader_epoch, p.end_offset)
                    };
                    assert_eq!(ask(s, epoch, epoch), (0, epoch, produced), "v{version}");
                    assert_eq!(ask(s, -1, epoch + 5), (0, -1, -1), "v{version}: a future epoch");
                    assert_eq!(ask(s, epoch + 1, epoch).0, 75, "v{version}: UNKNOWN_LEADER_EPOCH");
                }
                ApiKey::CreatePartitions => {
                    // "versions" grows by one partition per version: 2, 3, 4, 5.
                    let topic = CreatePartitionsTopic::default().with_name(name(TOPIC)).with_count(version as i32 + 2);
                    let request = CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![topic]);
                    let r: CreatePartitionsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.results[0].error_code, 0, "v{version}: {:?}", r.results[0].error_message);
                    let shrink = CreatePartitionsTopic::default().with_name(name(TOPIC)).with_count(1);
                    let request = CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![shrink]);
                    let r: CreatePartitionsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.results[0].error_code, 37, "v{version}: INVALID_PARTITIONS");
                }
                ApiKey::DescribeConfigs => {
                    let topic = DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text(TOPIC))
                        .with_configuration_keys(None);
                    let node = DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(text("1"))
                        .with_configuration_keys(None);
                    let request = DescribeConfigsRequest::default().with_resources(vec![topic, node]);
                    let r: DescribeConfigsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!((r.results[0].error_code, r.results[0].configs.len()), (0, 6), "v{version}");
                    assert_eq!(r.results[1].error_code, 0, "v{version}");
                    assert!(!r.results[1].configs.is_empty(), "v{version}");
                }
                ApiKey::IncrementalAlterConfigs => {
                    let retention = format!("{}", 86_400_000 + version as i64);
                    let change = AlterableConfig::default()
                        .with_name(text("retention.ms"))
                        .with_config_operation(0)
                        .with_value(Some(text(&retention)));
                    let resource = AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text(TOPIC))
                        .with_configs(vec![change]);
                    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![resource]);
                    let r: IncrementalAlterConfigsResponse =
                        decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.responses[0].error_code, 0, "v{version}: {:?}", r.responses[0].error_message);
                    let topic = DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text(TOPIC))
                        .with_configuration_keys(Some(vec![text("retention.ms")]));
                    let request = DescribeConfigsRequest::default().with_resources(vec![topic]);
                    let r: DescribeConfigsResponse =
                        decode(call(s, ApiKey::DescribeConfigs, 4, id, &request), ApiKey::DescribeConfigs, 4);
                    let entry = &r.results[0].configs[0];
                    assert_eq!(entry.value.as_deref(), Some(retention.as_str()), "v{version}: the change is visible");
                    assert_eq!(entry.config_source, 1, "v{version}: a topic-level setting");
                }
                ApiKey::DescribeCluster => {
                    let r: DescribeClusterResponse =
                        decode(call(s, api_key, version, id, &DescribeClusterRequest::default()), api_key, version);
                    assert_eq!((r.error_code, r.brokers.len(), r.controller_id.0), (0, 1, 1), "v{version}");
                    assert!(!r.cluster_id.is_empty(), "v{version}");
                }
                ApiKey::AddPartitionsToTxn => {
                    // A transactional producer per version: find its coordinator (which creates
                    // __transaction_state), init it, then add a partition.
                    let txn = format!("txn-v{version}");
                    let find = FindCoordinatorRequest::default().with_key(text(&txn)).with_key_type(1);
                    let found = retry_coordinator(|| {
                        let r: FindCoordinatorResponse =
                            decode(call(s, ApiKey::FindCoordinator, 3, id, &find), ApiKey::FindCoordinator, 3);
                        (r.error_code, r.node_id.0)
                    });
                    assert_eq!(found, (0, 1));
                    let init = InitProducerIdRequest::default()
                        .with_transactional_id(Some(TransactionalId(text(&txn))))
                        .with_transaction_timeout_ms(60_000);
                    let mut producer = (0, 0);
                    let code = retry_coordinator(|| {
                        let r: InitProducerIdResponse =
                            decode(call(s, ApiKey::InitProducerId, 4, id, &init), ApiKey::InitProducerId, 4);
                        producer = (r.producer_id.0, r.producer_epoch);
                        (r.error_code, 0)
                    });
                    assert_eq!(code.0, 0, "v{version}: InitProducerId with a transactional id");
                    transactions.insert(version, producer);
                    let topic = AddPartitionsToTxnTopic::default().with_name(name(TOPIC)).with_partitions(vec![0]);
                    let request = AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(TransactionalId(text(&txn)))
                        .with_v3_and_below_producer_id(ProducerId(producer.0))
                        .with_v3_and_below_producer_epoch(producer.1)
                        .with_v3_and_below_topics(vec![topic]);
                    let r: AddPartitionsToTxnResponse =
                        decode(call(s, api_key, version, id, &request), api_key, version);
                    let result = &r.results_by_topic_v3_and_below[0].results_by_partition[0];
                    assert_eq!(result.partition_error_code, 0, "v{version}");
                }
                ApiKey::AddOffsetsToTxn => {
                    let (producer_id, epoch) = transactions[&version];
                    let request = AddOffsetsToTxnRequest::default()
                        .with_transactional_id(TransactionalId(text(&format!("txn-v{version}"))))
                        .with_producer_id(ProducerId(producer_id))
                        .with_producer_epoch(epoch)
                        .with_group_id(GroupId(text("txn-group")));
                    let r: AddOffsetsToTxnResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.error_code, 0, "v{version}");
                }
                ApiKey::TxnOffsetCommit => {
                    let (producer_id, epoch) = transactions[&version];
                    let partition =
                        TxnOffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(1);
                    let topic =
                        TxnOffsetCommitRequestTopic::default().with_name(name(TOPIC)).with_partitions(vec![partition]);
                    let request = TxnOffsetCommitRequest::default()
                        .with_transactional_id(TransactionalId(text(&format!("txn-v{version}"))))
                        .with_group_id(GroupId(text("txn-group")))
                        .with_producer_id(ProducerId(producer_id))
                        .with_producer_epoch(epoch)
                        .with_generation_id(-1)
                        .with_topics(vec![topic]);
                    let r: TxnOffsetCommitResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "v{version}");
                }
                ApiKey::EndTxn => {
                    let (producer_id, epoch) = transactions[&version];
                    let request = EndTxnRequest::default()
                        .with_transactional_id(TransactionalId(text(&format!("txn-v{version}"))))
                        .with_producer_id(ProducerId(producer_id))
                        .with_producer_epoch(epoch)
                        .with_committed(version % 2 == 0);
                    let r: EndTxnResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.error_code, 0, "v{version}");
                    let again: EndTxnResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(again.error_code, 0, "v{version}: a retried EndTxn succeeds");
                    let wrong = request.with_committed(version % 2 != 0);
                    let r: EndTxnResponse = decode(call(s, api_key, version, id, &wrong), api_key, version);
                    assert_eq!(r.error_code, 48, "v{version}: INVALID_TXN_STATE for the other outcome");
                }
                ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => {
                    // This listener has no SASL: the answer refuses, then the connection closes
                    // (so each goes on a connection of its own).
                    let mut own = TcpStream::connect(&cluster.node(1).kafka).unwrap();
                    own.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let code = if api_key == ApiKey::SaslHandshake {
                        let request = SaslHandshakeRequest::default().with_mechanism(text("PLAIN"));
                        let r: SaslHandshakeResponse =
                            decode(call(&mut own, api_key, version, id, &request), api_key, version);
                        r.error_code
                    } else {
                        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0a\0b"));
                        let r: SaslAuthenticateResponse =
                            decode(call(&mut own, api_key, version, id, &request), api_key, version);
                        r.error_code
                    };
                    let expected = if api_key == ApiKey::SaslHandshake { 33 } else { 34 };
                    assert_eq!(code, expected, "v{version}: UNSUPPORTED_SASL_MECHANISM / ILLEGAL_SASL_STATE");
                }
                ApiKey::InitProducerId => {
                    let request = InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000);
                    let r: InitProducerIdResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!((r.error_code, r.producer_epoch), (0, 0), "v{version}");
                    assert!(!producer_ids.contains(&r.producer_id.0), "v{version}: producer ids are never reused");
                    producer_ids.push(r.producer_id.0);
                }
                ApiKey::FindCoordinator => {
                    // The first ask creates __consumer_offsets; retry until its leaders exist.
                    let key = text(&format!("find-v{version}"));
                    let request = if version >= 4 {
                        FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
                    } else {
                        FindCoordinatorRequest::default().with_key(key)
                    };
                    let found = retry_coordinator(|| {
                        let r: FindCoordinatorResponse =
                            decode(call(s, api_key, version, id, &request), api_key, version);
                        let (code, node) = match r.coordinators.first() {
                            Some(c) => (c.error_code, c.node_id.0),
                            None => (r.error_code, r.node_id.0),
                        };
                        (code, node)
                    });
                    assert_eq!(found, (0, 1), "v{version}");
                }
                ApiKey::JoinGroup => {
                    let protocol = JoinGroupRequestProtocol::default()
                        .with_name(text("range"))
                        .with_metadata(Bytes::from_static(b"subscription"));
                    let mut request = JoinGroupRequest::default()
                        .with_group_id(GroupId(text(&format!("join-v{version}"))))
                        .with_session_timeout_ms(10_000)
                        .with_protocol_type(text("consumer"))
                        .with_protocols(vec![protocol]);
                    if version >= 1 {
                        request.rebalance_timeout_ms = 10_000;
                    }
                    let mut r: JoinGroupResponse = JoinGroupResponse::default();
                    retry_coordinator(|| {
                        r = decode(call(s, api_key, version, id, &request), api_key, version);
                        (r.error_code, 0)
                    });
                    if version >= 4 {
                        assert_eq!(r.error_code, 79, "v{version}: MEMBER_ID_REQUIRED first");
                        request.member_id = r.member_id.clone();
                        r = decode(call(s, api_key, version, id, &request), api_key, version);
                    }
                    assert_eq!((r.error_code, r.generation_id), (0, 1), "v{version}");
                    assert_eq!(r.leader, r.member_id, "v{version}: the only member leads");
                    assert_eq!(r.members.len(), 1, "v{version}");
                    assert_eq!(r.protocol_name.as_deref(), Some("range"), "v{version}");
                    joined.insert(version, (r.member_id, r.generation_id));
                }
                ApiKey::SyncGroup => {
                    let (member, generation) = joined[&version].clone();
                    let assignment = SyncGroupRequestAssignment::default()
                        .with_member_id(member.clone())
                        .with_assignment(Bytes::from_static(b"A"));
                    let mut request = SyncGroupRequest::default()
                        .with_group_id(GroupId(text(&format!("join-v{version}"))))
                        .with_generation_id(generation)
                        .with_member_id(member)
                        .with_assignments(vec![assignment]);
                    if version >= 5 {
                        request.protocol_type = Some(text("consumer"));
                        request.protocol_name = Some(text("range"));
                    }
                    let r: SyncGroupResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!((r.error_code, r.assignment.as_ref()), (0, &b"A"[..]), "v{version}");
                }
                ApiKey::Heartbeat => {
                    let (member, generation) = joined[&version].clone();
                    let request = HeartbeatRequest::default()
                        .with_group_id(GroupId(text(&format!("join-v{version}"))))
                        .with_generation_id(generation)
                        .with_member_id(member);
                    let r: HeartbeatResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.error_code, 0, "v{version}");
                }
                ApiKey::LeaveGroup => {
                    let (member, _) = joined[&version].clone();
                    let request =
                        LeaveGroupRequest::default().with_group_id(GroupId(text(&format!("join-v{version}"))));
                    let request = if version >= 3 {
                        request.with_members(vec![MemberIdentity::default().with_member_id(member)])
                    } else {
                        request.with_member_id(member)
                    };
                    let r: LeaveGroupResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.error_code, 0, "v{version}");
                    if version >= 3 {
                        assert_eq!(r.members[0].error_code, 0, "v{version}");
                    }
                }
                ApiKey::OffsetCommit => {
                    let partition = OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(version as i64)
                        .with_committed_metadata(Some(text("meta")));
                    let topic =
                        OffsetCommitRequestTopic::default().with_name(name(TOPIC)).with_partitions(vec![partition]);
                    let request = OffsetCommitRequest::default()
                        .with_group_id(GroupId(text(&format!("commit-v{version}"))))
                        .with_generation_id_or_member_epoch(-1)
                        .with_topics(vec![topic]);
                    let mut code = -1;
                    retry_coordinator(|| {
                        let r: OffsetCommitResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                        code = r.topics[0].partitions[0].error_code;
                        (code, 0)
                    });
                    assert_eq!(code, 0, "v{version}");
                }
                ApiKey::OffsetFetch => {
                    // Reads what OffsetCommit v(version + 1) wrote (commit versions are 2..=9).
                    let group = GroupId(text(&format!("commit-v{}", version + 1)));
                    let (offset, metadata) = if version >= 8 {
                        let group = OffsetFetchRequestGroup::default().with_group_id(group).with_topics(None);
                        let request = OffsetFetchRequest::default().with_groups(vec![group]);
                        let r: OffsetFetchResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                        assert_eq!(r.groups[0].error_code, 0);
                        let p = &r.groups[0].topics[0].partitions[0];
                        (p.committed_offset, p.metadata.clone())
                    } else {
                        let topic =
                            OffsetFetchRequestTopic::default().with_name(name(TOPIC)).with_partition_indexes(vec![0]);
                        let request = OffsetFetchRequest::default().with_group_id(group).with_topics(Some(vec![topic]));
                        let r: OffsetFetchResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                        assert_eq!((r.error_code, r.topics[0].partitions[0].error_code), (0, 0), "v{version}");
                        let p = &r.topics[0].partitions[0];
                        (p.committed_offset, p.metadata.clone())
                    };
                    assert_eq!((offset, metadata.as_deref()), (version as i64 + 1, Some("meta")), "v{version}");
                }
                ApiKey::DescribeGroups => {
                    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(text("join-v0"))]);
                    let r: DescribeGroupsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    let group = &r.groups[0];
                    assert_eq!((group.error_code, group.group_state.as_str()), (0, "Empty"), "v{version}");
                }
                ApiKey::ListGroups => {
                    let r: ListGroupsResponse =
                        decode(call(s, api_key, version, id, &ListGroupsRequest::default()), api_key, version);
                    assert_eq!(r.error_code, 0, "v{version}");
                    assert!(r.groups.iter().any(|g| g.group_id.as_str() == "join-v0"), "v{version}");
                }
                ApiKey::DeleteGroups => {
                    let request = DeleteGroupsRequest::default()
                        .with_groups_names(vec![GroupId(text(&format!("commit-v{}", version + 2)))]);
                    let r: DeleteGroupsResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!(r.results[0].error_code, 0, "v{version}");
                }
                other => panic!("{other:?} is advertised but this test does not know it"),
            }
            answered += 1;
        }
    }
    assert!(answered >= 40, "only {answered} API versions were tried");
    // Transaction markers took offsets too: continue from the log's end.
    let produced = {
        let partition = ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1);
        let topic = ListOffsetsTopic::default().with_name(name(TOPIC)).with_partitions(vec![partition]);
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
        let r: ListOffsetsResponse =
            decode(call(&mut stream, ApiKey::ListOffsets, 7, 799, &request), ApiKey::ListOffsets, 7);
        assert!(r.topics[0].partitions[0].offset >= produced);
        r.topics[0].partitions[0].offset
    };

    // At the end of the log, min_bytes 0 answers at once (the read times out after 20 s,
    // before the 30 s wait would end); min_bytes 1 waits out max_wait_ms and answers empty.
    for (min_bytes, max_wait_ms) in [(0, 30_000), (1, 200)] {
        let partition =
            FetchPartition::default().with_partition(0).with_fetch_offset(produced).with_partition_max_bytes(1 << 20);
        let topic = FetchTopic::default().with_topic(name(TOPIC)).with_partitions(vec![partition]);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_min_bytes(min_bytes)
            .with_max_wait_ms(max_wait_ms)
            .with_max_bytes(1 << 20)
            .with_topics(vec![topic]);
        let r: FetchResponse = decode(call(&mut stream, ApiKey::Fetch, 12, 900, &request), ApiKey::Fetch, 12);
        let partition = &r.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0);
        assert!(partition.records.as_ref().is_none_or(|r| r.is_empty()), "min_bytes {min_bytes}: nothing to return");
    }

    // An idempotent producer's retry gets the original offset and appends nothing; a gap in
    // sequences is OUT_OF_ORDER_SEQUENCE_NUMBER.
    let producer_id = *producer_ids.last().expect("InitProducerId is advertised");
    let mut produce = |sequence: i32, correlation_id: i32| {
        let data = PartitionProduceData::default().with_index(0).with_records(Some(idempotent_batch(
            producer_id,
            0,
            sequence,
        )));
        let topic = TopicProduceData::default().with_name(name(TOPIC)).with_partition_data(vec![data]);
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![topic]);
        let r: ProduceResponse =
            decode(call(&mut stream, ApiKey::Produce, 11, correlation_id, &request), ApiKey::Produce, 11);
        let partition = &r.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    };
    assert_eq!(produce(0, 800), (0, produced));
    assert_eq!(produce(0, 801), (0, produced), "a retried batch keeps its offset");
    assert_eq!(produce(1, 802), (0, produced + 1));
    assert_eq!(produce(5, 803).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(produce(2, 804), (0, produced + 2), "the gap appended nothing");

    // A lookup by timestamp answers with the found record's timestamp (the records carry 1).
    let partition = ListOffsetsPartition::default().with_partition_index(0).with_timestamp(0);
    let topic = ListOffsetsTopic::default().with_name(name(TOPIC)).with_partitions(vec![partition]);
    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
    let r: ListOffsetsResponse =
        decode(call(&mut stream, ApiKey::ListOffsets, 7, 805, &request), ApiKey::ListOffsets, 7);
    let partition = &r.topics[0].partitions[0];
    assert_eq!((partition.error_code, partition.offset, partition.timestamp), (0, 0, 1));
    assert!(partition.leader_epoch >= 1, "the epoch of the batch holding the record");

    // validate_only reports an existing topic as Kafka does.
    let topic = CreatableTopic::default().with_name(name(TOPIC)).with_num_partitions(1).with_replication_factor(1);
    let request =
        CreateTopicsRequest::default().with_timeout_ms(10_000).with_validate_only(true).with_topics(vec![topic]);
    let r: CreateTopicsResponse =
        decode(call(&mut stream, ApiKey::CreateTopics, 7, 901, &request), ApiKey::CreateTopics, 7);
    assert_eq!(r.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
}
