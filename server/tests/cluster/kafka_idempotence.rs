//! Idempotent-producer state is replicated partition state: a retried batch is recognised by a
//! new leader after the old one is killed, and by every node after a graceful full restart and
//! after a kill -9 of every node.
//!
//! Raw requests (`kafka_wire`) rather than a client library: the test decides exactly which
//! sequence numbers are sent again, and when.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
};

use crate::harness::TestCluster;
use crate::kafka_wire::{call, decode, idempotent_batch, name};

const TOPIC: &str = "idempotence";
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const LEADER_NOT_AVAILABLE: i16 = 5;
const REQUEST_TIMED_OUT: i16 = 7;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;

struct Producer<'a> {
    cluster: &'a TestCluster,
    alive: Vec<u64>,
    producer_id: i64,
    correlation_id: i32,
}

impl Producer<'_> {
    /// Produces the one-record batch with `sequence` the way a client does: to whichever live
    /// node leads the partition, retrying through elections. Returns (error code, base offset).
    fn send(&mut self, sequence: i32) -> (i16, i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for id in self.alive.clone() {
                let Ok(mut stream) = TcpStream::connect(&self.cluster.node(id).kafka) else { continue };
                stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                self.correlation_id += 1;
                let data = PartitionProduceData::default().with_index(0).with_records(Some(idempotent_batch(
                    self.producer_id,
                    0,
                    sequence,
                )));
                let topic = TopicProduceData::default().with_name(name(TOPIC)).with_partition_data(vec![data]);
                let request =
                    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![topic]);
                let response: ProduceResponse =
                    decode(call(&mut stream, ApiKey::Produce, 9, self.correlation_id, &request), ApiKey::Produce, 9);
                let partition = &response.responses[0].partition_responses[0];
                match partition.error_code {
                    // Retriable: a restarted node may not have replayed the catalog yet.
                    UNKNOWN_TOPIC_OR_PARTITION | NOT_LEADER_OR_FOLLOWER | LEADER_NOT_AVAILABLE | REQUEST_TIMED_OUT => {
                        continue
                    }
                    code => return (code, partition.base_offset),
                }
            }
            assert!(Instant::now() < deadline, "no node accepted sequence {sequence} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_are_recognised_after_leader_failover_and_full_restarts() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready().await;
    cluster.client().create_topic(TOPIC, 1, 3).await.unwrap();
    let producer_id = {
        let mut stream = TcpStream::connect(&cluster.node(1).kafka).unwrap();
        let request = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
        let response: InitProducerIdResponse =
            decode(call(&mut stream, ApiKey::InitProducerId, 4, 1, &request), ApiKey::InitProducerId, 4);
        assert_eq!(response.error_code, 0);
        response.producer_id.0
    };

    let mut producer = Producer { cluster: &cluster, alive: vec![1, 2, 3], producer_id, correlation_id: 10 };
    for sequence in 0..3 {
        assert_eq!(producer.send(sequence), (0, sequence as i64));
    }
    let leader = cluster.client().describe_topic(TOPIC).await.unwrap().partitions[0].leader.expect("a leader");

    // The leader dies; its successor knows the producer's last batches.
    cluster.kill(leader);
    let mut producer = Producer { cluster: &cluster, alive: vec![1, 2, 3], producer_id, correlation_id: 100 };
    producer.alive.retain(|id| *id != leader);
    assert_eq!(producer.send(2), (0, 2), "a retry after failover keeps its offset");
    assert_eq!(producer.send(4).0, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(producer.send(3), (0, 3));
    cluster.restart(leader);
    cluster.wait_serving(leader).await;

    // Every node stops gracefully (the state is saved) and starts again.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    for id in 1..=3 {
        cluster.wait_serving(id).await;
    }
    let mut producer = Producer { cluster: &cluster, alive: vec![1, 2, 3], producer_id, correlation_id: 200 };
    assert_eq!(producer.send(3), (0, 3), "a retry after a full restart keeps its offset");
    assert_eq!(producer.send(4), (0, 4));

    // Every node is killed: the state is rebuilt from what the log and its last snapshot hold.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    let mut producer = Producer { cluster: &cluster, alive: vec![1, 2, 3], producer_id, correlation_id: 300 };
    assert_eq!(producer.send(4), (0, 4), "a retry after every node was killed keeps its offset");
    assert_eq!(producer.send(5), (0, 5));
    assert_eq!(producer.send(0).0, OUT_OF_ORDER_SEQUENCE_NUMBER, "older than the five batches kept");
}
