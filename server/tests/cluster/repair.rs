//! Damaged durable data: a follower whose partition log lost fsynced bytes (cut short below its
//! recorded flush) and another whose log has a flipped byte both cut the damage off on restart,
//! fetch the missing batches from another replica, and end with the leader's log — while the
//! Raft entries that could have re-created them are long trimmed.

use std::time::Duration;

use crate::harness::{assert_same_log, replica_values, TestCluster};

async fn produce(client: &client::Client, from: usize, count: usize, acknowledged: &mut Vec<(u64, String)>) {
    for i in from..from + count {
        let value = format!("d{i}");
        for _ in 0..50 {
            match client.produce("damaged", 0, &[client::record(None, value.as_bytes())]).await {
                Ok((base, _)) => {
                    acknowledged.push((base, value.clone()));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_follower_logs_are_repaired_from_another_replica() {
    // Frequent flushes and a short Raft log tail: the damaged range is only in partition logs.
    let mut cluster = TestCluster::start_with(3, "[raft]\nflush_interval_ms = 50\nlog_retained_entries = 10\n");
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("damaged", 1, 3).await.unwrap();
    let mut acknowledged = Vec::new();
    produce(&client, 0, 300, &mut acknowledged).await;
    let leader = loop {
        if let Some(leader) = client.describe_topic("damaged").await.unwrap().partitions[0].leader {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    // Let every replica flush and record what it holds.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for &follower in &followers {
        cluster.kill(follower);
    }
    let cut = log_store::fault::truncate_tail(&cluster.partition_dir(followers[0], "damaged", 0), 700).unwrap();
    assert_eq!(cut, 700);
    let dir = cluster.partition_dir(followers[1], "damaged", 0);
    // A byte inside the last batch's records (CRC-covered; a flip in the partition leader
    // epoch would be invisible, as in Kafka).
    assert!(log_store::fault::flip_tail_byte(&dir, 20, 0x10).unwrap());
    for &follower in &followers {
        cluster.restart(follower);
    }
    // The leader alone holds the damaged range; the group still commits (the followers'
    // Raft logs are intact, so they acknowledge appends while they repair).
    produce(&client, 300, 100, &mut acknowledged).await;
    assert_eq!(acknowledged.len(), 400, "every produce was acknowledged");

    // Wait for both repairs, then compare every replica with the acknowledged values.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for &follower in &followers {
        while !cluster.node_log(follower).contains("partition log repaired from another replica") {
            assert!(std::time::Instant::now() < deadline, "node {follower} never repaired its log");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        cluster.stop(id);
    }
    let reference = replica_values(&cluster.partition_dir(leader, "damaged", 0));
    for (offset, value) in &acknowledged {
        assert_eq!(&reference[*offset as usize], value, "acknowledged record at {offset} on the leader");
    }
    for &follower in &followers {
        let replica = replica_values(&cluster.partition_dir(follower, "damaged", 0));
        assert_same_log(&replica, &reference, &format!("repaired replica on node {follower}"));
    }
}
