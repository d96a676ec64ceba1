//! Rebalancing onto an added node while a producer runs: replicas and preferred leaders even
//! out, the nodes that gave replicas away drop them, nothing acknowledged is lost. The metadata
//! log is compacted all along: the added node gets the catalog as a snapshot, and a node killed
//! with -9 restarts from its own image.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{assert_same_log, replica_values, TestCluster};

const TOPIC: &str = "spread";
const PARTITIONS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_onto_an_added_node_moves_replicas_and_drops_the_old_ones() {
    let mut cluster = TestCluster::start_with(
        3,
        "[raft]\nmetadata_log_compact_entries = 8\nflush_interval_ms = 100\nlog_retained_entries = 30\n",
    );
    cluster.wait_ready().await;
    let client = cluster.client();
    // Metadata entries enough for every node to cut its metadata log more than once.
    for i in 0..10 {
        client.create_topic(&format!("filler-{i}"), 1, 1).await.unwrap();
    }
    client.create_topic(TOPIC, PARTITIONS, 2).await.unwrap();

    let producer_client = cluster.client();
    let producer = tokio::spawn(async move {
        let mut acknowledged: Vec<Vec<(u64, String)>> = vec![Vec::new(); PARTITIONS as usize];
        for i in 0..600u32 {
            let partition = i % PARTITIONS;
            let value = format!("r{i}");
            if let Ok((base, _)) =
                producer_client.produce(TOPIC, partition, &[client::record(None, value.as_bytes())]).await
            {
                acknowledged[partition as usize].push((base, value));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acknowledged
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let joined = cluster.start_joining_node();
    client.add_node(joined, &cluster.node(joined).grpc.clone()).await.unwrap();
    let before = client.describe_topic(TOPIC).await.unwrap();

    // The CLI: it returns once every replica has moved.
    let output = Command::new(env!("CARGO_BIN_EXE_robustmq"))
        .args(["cluster", "rebalance", "--timeout-s", "90", "--output", "json", "--bootstrap"])
        .arg(&cluster.node(2).grpc)
        .output()
        .unwrap();
    assert!(output.status.success(), "rebalance failed: {}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(answer["partitions_moved"].as_u64().unwrap() > 0, "{answer}");

    // Replicas and preferred leaders are even over the four nodes, counting every topic.
    let mut replicas: BTreeMap<u64, usize> = (1..=joined).map(|id| (id, 0)).collect();
    let mut leaders = replicas.clone();
    for topic in client.list_topics().await.unwrap() {
        for partition in &topic.partitions {
            for node in &partition.replicas {
                *replicas.get_mut(node).unwrap() += 1;
            }
            *leaders.get_mut(&partition.replicas[0]).unwrap() += 1;
        }
    }
    let spread = |load: &BTreeMap<u64, usize>| load.values().max().unwrap() - load.values().min().unwrap();
    assert!(spread(&replicas) <= 1, "replicas per node: {replicas:?}");
    assert!(spread(&leaders) <= 1, "preferred leaders per node: {leaders:?}");

    // Every node that gave a replica away drops it: its directory goes.
    let after = client.describe_topic(TOPIC).await.unwrap();
    let mut given_away = Vec::new();
    for (old, new) in before.partitions.iter().zip(&after.partitions) {
        for node in old.replicas.iter().filter(|node| !new.replicas.contains(node)) {
            given_away.push((*node, old.partition));
        }
    }
    assert!(!given_away.is_empty(), "the added node took replicas from others");
    let deadline = Instant::now() + Duration::from_secs(30);
    for (node, partition) in &given_away {
        while cluster.partition_dir(*node, TOPIC, *partition).exists() {
            assert!(Instant::now() < deadline, "node {node} kept its moved-away replica of partition {partition}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Every node has cut its metadata log; the added node started from a snapshot of it.
    for id in 1..=joined {
        let status = cluster.client_of(id).cluster_status().await.unwrap();
        assert!(status.metadata_truncated_index > 5, "node {id}: metadata log never cut: {status:?}");
    }
    // A node restarts from its catalog image and sees the same placement.
    cluster.kill(2);
    cluster.restart(2);
    cluster.wait_serving(2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = cluster.client_of(2).describe_topic(TOPIC).await;
        let placements =
            |d: &client::TopicDescription| d.partitions.iter().map(|p| p.replicas.clone()).collect::<Vec<_>>();
        if seen.as_ref().is_ok_and(|seen| placements(seen) == placements(&after)) {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 restarted with another catalog: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.client_of(2).list_topics().await.unwrap().len(), 11);

    let acknowledged = producer.await.unwrap();
    let reader = cluster.client_of(joined);
    for (partition, acks) in acknowledged.iter().enumerate() {
        assert!(acks.len() > 50, "most produces to partition {partition} were acknowledged");
        let high_watermark = acks.last().unwrap().0 + 1;
        let mut read = Vec::new();
        while (read.len() as u64) < high_watermark {
            let (records, _) =
                reader.fetch_records(TOPIC, partition as u32, read.len() as u64, 1 << 20, 1000).await.unwrap();
            read.extend(records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
        for (offset, value) in acks {
            assert_eq!(&read[*offset as usize], value, "acknowledged record at {partition}/{offset}");
        }
    }
    // The replicas of the final placement are whole and identical.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=joined {
        cluster.stop(id);
    }
    for partition in &after.partitions {
        let reference = replica_values(&cluster.partition_dir(partition.replicas[0], TOPIC, partition.partition));
        for node in &partition.replicas[1..] {
            let replica = replica_values(&cluster.partition_dir(*node, TOPIC, partition.partition));
            assert_same_log(&replica, &reference, &format!("partition {} on node {node}", partition.partition));
        }
    }
}
