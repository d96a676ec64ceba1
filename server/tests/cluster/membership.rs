//! Membership: a node added and another removed while a producer runs — the removed node's
//! replicas move to the new one through joint-consensus conf changes, and nothing
//! acknowledged is lost.

use std::time::Duration;

use crate::harness::{assert_same_log, replica_values, TestCluster};

/// Waits until every partition's voters, as the given nodes' replicas see them, equal its
/// replicas and exclude `gone`, and the metadata group's voters, as each of them sees them,
/// are exactly `nodes`.
async fn wait_for_settled_voters(cluster: &TestCluster, nodes: &[u64], topic: &str, gone: u64) {
    let mut members = nodes.to_vec();
    members.sort();
    for _ in 0..400 {
        let mut settled = true;
        for id in nodes {
            match cluster.client_of(*id).with_retry_deadline(Duration::from_secs(2)).cluster_status().await {
                Ok(status) => {
                    let mut voters = status.metadata_voters.clone();
                    voters.sort();
                    settled &= voters == members;
                }
                Err(_) => settled = false,
            }
            let Ok(description) =
                cluster.client_of(*id).with_retry_deadline(Duration::from_secs(2)).describe_topic(topic).await
            else {
                settled = false;
                continue;
            };
            for partition in &description.partitions {
                let mut voters = partition.voters.clone();
                let mut replicas = partition.replicas.clone();
                voters.sort();
                replicas.sort();
                if voters != replicas || voters.contains(&gone) {
                    settled = false;
                }
            }
        }
        if settled {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replica moves away from node {gone} did not finish");
}

/// Raft logs trimmed constantly: the new node's replicas arrive as snapshots of logs in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_and_one_removed_while_producing_loses_nothing() {
    add_one_remove_one("[raft]\nflush_interval_ms = 100\nlog_retained_entries = 30\n").await;
}

/// Raft logs never trimmed (the defaults, in a short test): the new node must still learn
/// each group's whole configuration, founders included — it once rebuilt it from conf-change
/// entries alone, believed itself the only voter, and could have elected itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_groups_with_untrimmed_logs_learns_every_voter() {
    add_one_remove_one("").await;
}

async fn add_one_remove_one(config: &str) {
    let mut cluster = TestCluster::start_with(3, config);
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("members", 2, 3).await.unwrap();

    let producer_client = cluster.client();
    let producer = tokio::spawn(async move {
        let mut acknowledged: Vec<Vec<(u64, String)>> = vec![Vec::new(), Vec::new()];
        for i in 0..300u32 {
            let partition = i % 2;
            let value = format!("m{i}");
            if let Ok((base, _)) =
                producer_client.produce("members", partition, &[client::record(None, value.as_bytes())]).await
            {
                acknowledged[partition as usize].push((base, value));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acknowledged
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = cluster.start_joining_node();
    client.add_node(joined, &cluster.node(joined).grpc.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.remove_node(1).await.unwrap();
    wait_for_settled_voters(&cluster, &[2, 3, joined], "members", 1).await;
    cluster.kill(1);
    // The new node came in by snapshots (the catalog among them): after a kill -9 it restarts
    // from what they left and still sees every group whole.
    cluster.kill(joined);
    cluster.restart(joined);
    wait_for_settled_voters(&cluster, &[2, 3, joined], "members", 1).await;

    let acknowledged = producer.await.unwrap();
    let survivors = cluster.client_of(joined);
    for (partition, acks) in acknowledged.iter().enumerate() {
        assert!(acks.len() > 100, "most produces were acknowledged");
        let mut read = Vec::new();
        let high_watermark = acks.last().unwrap().0 + 1;
        while (read.len() as u64) < high_watermark {
            let (records, _) =
                survivors.fetch_records("members", partition as u32, read.len() as u64, 1 << 20, 1000).await.unwrap();
            read.extend(records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
        for (offset, value) in acks {
            assert_eq!(&read[*offset as usize], value, "acknowledged record at {partition}/{offset}");
        }
    }
    // The new node holds full, identical replicas.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [2, 3, joined] {
        cluster.stop(id);
    }
    for partition in 0..2 {
        let reference = replica_values(&cluster.partition_dir(2, "members", partition));
        for id in [3, joined] {
            let replica = replica_values(&cluster.partition_dir(id, "members", partition));
            assert_same_log(&replica, &reference, &format!("partition {partition} on node {id}"));
        }
    }
}
