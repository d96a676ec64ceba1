//! The HTTP admin listener: health, Prometheus metrics, cluster JSON.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::harness::TestCluster;

/// A plain HTTP/1.1 GET; returns (status code, body).
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_cluster_state_are_served() {
    let cluster = TestCluster::start(3);
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("observed", 1, 3).await.unwrap();
    client.produce("observed", 0, &[client::record(None, b"x")]).await.unwrap();
    let leader = client.describe_topic("observed").await.unwrap().partitions[0].leader.unwrap();
    let admin = cluster.node(leader).admin.clone();

    assert_eq!(get(&admin, "/health"), (200, "ok\n".to_string()));
    // Follower lag is sampled by the leader a few times a second.
    let mut metrics = String::new();
    for _ in 0..40 {
        let (status, body) = get(&admin, "/metrics");
        assert_eq!(status, 200);
        metrics = body;
        if metrics.contains("robustmq_follower_lag_entries{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for name in [
        "robustmq_produce_requests_total",
        "robustmq_commit_latency_seconds_bucket",
        "robustmq_leaders",
        "robustmq_follower_lag_entries",
        "raft_engine_sync_log_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    let (status, state) = get(&admin, "/cluster");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(state["topics"][0]["name"], "observed");
    assert_eq!(state["topics"][0]["partitions"][0]["high_watermark"], 1);
}
