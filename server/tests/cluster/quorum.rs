//! Quorum: losing a minority keeps a partition writable; losing a majority refuses writes
//! with an error (never a false acknowledgement) and the cluster recovers by itself when the
//! nodes return; a full restart of every node loses nothing.

use std::time::Duration;

use crate::harness::TestCluster;

async fn produce_range(client: &client::Client, topic: &str, range: std::ops::Range<u32>) -> (u64, u64) {
    let records: Vec<_> = range.map(|i| client::record(None, format!("v{i}").as_bytes())).collect();
    client.produce(topic, 0, &records).await.unwrap()
}

async fn read_values(client: &client::Client, topic: &str, count: usize) -> Vec<String> {
    let mut values = Vec::new();
    while values.len() < count {
        let (records, _) = client.fetch_records(topic, 0, values.len() as u64, 1 << 20, 1000).await.unwrap();
        values.extend(records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_loss_serves_majority_loss_refuses_then_recovers() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("q", 1, 3).await.unwrap();
    produce_range(&client, "q", 0..100).await;

    cluster.kill(3);
    produce_range(&client, "q", 100..200).await;

    cluster.kill(2);
    let impatient = cluster.client_of(1).with_retry_deadline(Duration::from_secs(3));
    let records = vec![client::record(None, b"must-not-be-acknowledged")];
    let refused = impatient.produce("q", 0, &records).await;
    assert!(refused.is_err(), "a lone node must not acknowledge a write: {refused:?}");

    cluster.restart(2);
    cluster.restart(3);
    produce_range(&client, "q", 200..300).await;
    let values = read_values(&client, "q", 300).await;
    let acknowledged: Vec<String> = (0..300).map(|i| format!("v{i}")).collect();
    let kept: Vec<String> = values.into_iter().filter(|v| v != "must-not-be-acknowledged").collect();
    assert_eq!(kept, acknowledged, "every acknowledged record, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_of_every_node_loses_nothing() {
    let mut cluster = TestCluster::start_with(3, "[raft]\nflush_interval_ms = 50\n");
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("r", 1, 3).await.unwrap();
    for chunk in 0..10 {
        produce_range(&client, "r", chunk * 100..chunk * 100 + 100).await;
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_ready().await;
    let values = read_values(&client, "r", 1000).await;
    assert_eq!(values, (0..1000).map(|i| format!("v{i}")).collect::<Vec<_>>());
    produce_range(&client, "r", 1000..1010).await;
}
