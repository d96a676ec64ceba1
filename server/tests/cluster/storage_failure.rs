//! A node whose storage refuses writes (a full disk) stops on its own, says why once, and keeps
//! everything it acknowledged. The test fails the writes with a file-size limit (EFBIG), which
//! reaches the node's code the way ENOSPC does.

use std::time::Duration;

use crate::harness::{replica_values, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_refuses_writes_stops_and_keeps_what_it_acknowledged() {
    // raft-engine allocates its files ahead, so its write is the first to fail.
    disk_refuses_writes("", "the Raft log store failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_partition_log_cannot_be_written_stops_and_keeps_what_it_acknowledged() {
    // Raft log files of 1 MiB stay under the cap: the partition log's segment reaches it first.
    disk_refuses_writes("[raft]\nlog_file_bytes = 1048576\n", "the partition log of group").await;
}

/// Fills a one-node cluster whose files are capped at 8 MiB until a produce fails, then checks
/// the node exited on its own, said why (`cause`) once, and after a restart without the cap
/// holds every acknowledged record.
async fn disk_refuses_writes(extra_config: &str, cause: &str) {
    let mut cluster = TestCluster::start_with(1, extra_config);
    cluster.wait_ready().await;
    cluster.client().create_topic("full", 1, 1).await.unwrap();
    cluster.stop(1);
    cluster.nodes[0].file_bytes_limit = Some(8 << 20);
    cluster.restart(1);
    cluster.wait_ready().await;

    let client = cluster.client().with_retry_deadline(Duration::from_secs(2));
    let padding = "x".repeat(1000);
    let mut acknowledged = Vec::new();
    let mut exited = None;
    // 32 MiB in all, four times the cap. A refused produce may also be a timeout on a busy
    // machine: go on until the node has exited.
    let began = std::time::Instant::now();
    for batch in 0..2_000 {
        // A node that stops its store loop but not its process would time every produce out.
        assert!(began.elapsed() < Duration::from_secs(90), "the node neither took the writes nor stopped");
        let values: Vec<String> = (0..16).map(|i| format!("b{batch}-r{i}-{padding}")).collect();
        let records: Vec<_> = values.iter().map(|v| client::record(None, v.as_bytes())).collect();
        match client.produce("full", 0, &records).await {
            Ok((base, last)) => {
                assert_eq!(last - base + 1, 16);
                acknowledged.extend((base..=last).zip(values));
            }
            Err(_) => {
                exited = cluster.exit_status(1);
                if exited.is_some() {
                    break;
                }
            }
        }
    }
    assert!(acknowledged.len() > 1_000, "only {} records were acknowledged before the failure", acknowledged.len());
    let status = exited.unwrap_or_else(|| cluster.wait_exit(1, Duration::from_secs(20)));
    assert_eq!(status.code(), Some(1), "the node exits with a failure status, not a crash or a hang");
    let log = cluster.node_log(1);
    assert_eq!(log.matches("stopping its store loop").count(), 1, "logged once:\n{log}");
    assert_eq!(log.matches("the node stopped").count(), 1, "the process says why it ended:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains(cause), "the failure named is {cause:?}:\n{log}");

    // With room again, the node comes back with every acknowledged record at its offset.
    cluster.nodes[0].file_bytes_limit = None;
    cluster.restart(1);
    cluster.wait_ready().await;
    let client = cluster.client();
    let (base, _) = client.produce("full", 0, &[client::record(None, b"after")]).await.unwrap();
    assert!(base >= acknowledged.len() as u64);
    cluster.stop(1);
    let values = replica_values(&cluster.partition_dir(1, "full", 0));
    for (offset, value) in &acknowledged {
        assert_eq!(values.get(*offset as usize), Some(value), "acknowledged record at offset {offset}");
    }
    assert_eq!(values.last().map(String::as_str), Some("after"));
}
