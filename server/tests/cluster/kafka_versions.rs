//! Every version of every API the Kafka listener advertises is answered, and the answer decodes.
//!
//! The codec refuses to encode a field a version does not have; a handler that set one (as
//! ListOffsets once set the leader epoch below v4) would close the client's connection on that
//! version only. Real clients each use one version per API, so this walks them all with
//! requests encoded by the `kafka-protocol` crate.

use std::net::TcpStream;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::harness::TestCluster;
use crate::kafka_wire::{batch, call, decode, idempotent_batch, name};

const TOPIC: &str = "versions";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_of_every_api_is_answered() {
    let cluster = TestCluster::start(1);
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
                ApiKey::InitProducerId => {
                    let request = InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000);
                    let r: InitProducerIdResponse = decode(call(s, api_key, version, id, &request), api_key, version);
                    assert_eq!((r.error_code, r.producer_epoch), (0, 0), "v{version}");
                    assert!(!producer_ids.contains(&r.producer_id.0), "v{version}: producer ids are never reused");
                    producer_ids.push(r.producer_id.0);
                }
                other => panic!("{other:?} is advertised but this test does not know it"),
            }
            answered += 1;
        }
    }
    assert!(answered >= 40, "only {answered} API versions were tried");

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

    // validate_only reports an existing topic as Kafka does.
    let topic = CreatableTopic::default().with_name(name(TOPIC)).with_num_partitions(1).with_replication_factor(1);
    let request =
        CreateTopicsRequest::default().with_timeout_ms(10_000).with_validate_only(true).with_topics(vec![topic]);
    let r: CreateTopicsResponse =
        decode(call(&mut stream, ApiKey::CreateTopics, 7, 901, &request), ApiKey::CreateTopics, 7);
    assert_eq!(r.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
}
