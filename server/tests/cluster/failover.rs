//! Leader failure: kill -9 of a partition leader mid-stream loses no acknowledged record, and
//! the restarted node catches up until every replica holds the same log.

use std::time::Duration;

use client::Error;

use crate::harness::{replica_values, TestCluster};

const RECORDS: usize = 10_000;
const BATCH: usize = 100;

/// Produces `RECORDS` records in batches, retrying failed batches with new values, and
/// returns the acknowledged values by the offsets the cluster gave them.
async fn produce_all(client: &client::Client, topic: &str, on_progress: &mut dyn FnMut(usize)) -> Vec<(u64, String)> {
    let mut acknowledged = Vec::new();
    let mut attempt = 0;
    let mut sent = 0;
    while sent < RECORDS {
        attempt += 1;
        let values: Vec<String> = (sent..sent + BATCH).map(|i| format!("r{i}-a{attempt}")).collect();
        let records: Vec<_> = values.iter().map(|v| client::record(None, v.as_bytes())).collect();
        match client.produce(topic, 0, &records).await {
            Ok((base, last)) => {
                assert_eq!(last - base + 1, BATCH as u64);
                acknowledged.extend(values.into_iter().enumerate().map(|(i, v)| (base + i as u64, v)));
                sent += BATCH;
                on_progress(sent);
            }
            Err(Error::Unavailable(_)) => continue,
            Err(other) => panic!("produce failed for good: {other}"),
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_mid_stream_loses_no_acknowledged_record() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("events", 1, 3).await.unwrap();

    // Find the partition's leader once it has one, to kill it a third of the way in.
    let mut leader = None;
    for _ in 0..100 {
        leader = client.describe_topic("events").await.unwrap().partitions[0].leader;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = leader.expect("the partition elected a leader");
    let mut killed = false;
    let cluster_ref = std::cell::RefCell::new(&mut cluster);
    let acknowledged = produce_all(&client, "events", &mut |sent| {
        if sent >= RECORDS / 3 && !killed {
            cluster_ref.borrow_mut().kill(victim);
            killed = true;
        }
    })
    .await;
    assert!(killed);
    cluster.restart(victim);

    // Every acknowledged record is readable, exactly once, at its acknowledged offset.
    let mut read = Vec::new();
    let mut offset = 0;
    while read.len() < acknowledged.last().unwrap().0 as usize + 1 {
        let (records, _) = client.fetch_records("events", 0, offset, 1 << 20, 1000).await.unwrap();
        for record in records {
            read.push((record.offset.0, String::from_utf8(record.value.unwrap().to_vec()).unwrap()));
            offset = record.offset.0 + 1;
        }
    }
    let by_offset: std::collections::HashMap<u64, &String> = read.iter().map(|(o, v)| (*o, v)).collect();
    for (offset, value) in &acknowledged {
        assert_eq!(by_offset.get(offset), Some(&value), "acknowledged record at {offset} must be there");
    }
    let mut values: Vec<&String> = read.iter().map(|(_, v)| v).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), read.len(), "no record is stored twice");

    // The restarted node catches up: wait until its replica reports the full high watermark.
    let high_watermark = read.len() as u64;
    let restarted = cluster.client_of(victim);
    let mut caught_up = false;
    for _ in 0..200 {
        let topic = restarted.describe_topic("events").await.unwrap();
        if topic.partitions[0].high_watermark == high_watermark {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "node {victim} caught up with the leader");

    // Every replica holds exactly the same log.
    for id in 1..=3 {
        cluster.stop(id);
    }
    let logs: Vec<Vec<String>> = (1..=3).map(|id| replica_values(&cluster.partition_dir(id, "events", 0))).collect();
    let expected: Vec<String> = read.into_iter().map(|(_, v)| v).collect();
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log, &expected, "replica on node {} differs", i + 1);
    }
}
