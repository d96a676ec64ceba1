//! A node's Raft log stays near its purge threshold under sustained writes: raft-engine purges
//! (or keeps for reuse) files whose entries were trimmed, and the groups whose old entries pin
//! its oldest files are trimmed when it names them. Nothing acknowledged is lost on the way.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{replica_values, TestCluster};

/// Files of 1 MiB, purged past 4 MiB. The partition flushes every 1 MiB, but the default
/// 10,000 entries kept for lagging followers cover the whole test's log: only trimming at
/// raft-engine's request bounds it.
const CONFIG: &str = "[raft]\nlog_file_bytes = 1048576\nlog_purge_threshold_bytes = 4194304\nflush_bytes = 1048576\n";
/// Purge threshold, plus 1.5 times it in emptied files kept for reuse, plus the file being written.
const RAFT_DIR_BYTES_MAX: u64 = 4 * 1_048_576 + 6 * 1_048_576 + 1_048_576 + 512 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_log_stays_near_its_purge_threshold_and_keeps_every_acknowledged_record() {
    let mut cluster = TestCluster::start_with(3, CONFIG);
    cluster.wait_ready().await;
    let client = cluster.client();
    client.create_topic("steady", 1, 3).await.unwrap();

    // 48 MiB, twelve times the threshold, in 16 KiB batches.
    let padding = "x".repeat(1000);
    let mut acknowledged = Vec::new();
    for batch in 0..3_000 {
        let values: Vec<String> = (0..16).map(|i| format!("b{batch}-r{i}-{padding}")).collect();
        let records: Vec<_> = values.iter().map(|v| client::record(None, v.as_bytes())).collect();
        let (base, last) = client.produce("steady", 0, &records).await.unwrap();
        assert_eq!(last - base + 1, 16);
        acknowledged.extend((base..=last).zip(values));
    }

    // raft-engine is asked to purge every 2 s; each node's Raft log must come down to the bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1..=3 {
        let raft_dir = cluster.node(id).dir.join("raft");
        loop {
            let bytes = dir_bytes(&raft_dir);
            if bytes <= RAFT_DIR_BYTES_MAX {
                break;
            }
            assert!(Instant::now() < deadline, "node {id}'s Raft log holds {bytes} bytes, over {RAFT_DIR_BYTES_MAX}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let trimmed =
        (1..=3).filter(|id| cluster.node_log(*id).contains("trimmed Raft logs that kept raft-engine")).count();
    assert!(trimmed > 0, "no node trimmed a Raft log at raft-engine's request");

    // Killed (-9) and restarted, every node recovers from its trimmed log and its reused
    // files with every acknowledged record at its offset, and the cluster takes writes again.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_ready().await;
    let client = cluster.client().with_retry_deadline(Duration::from_secs(20));
    let (base, _) = client.produce("steady", 0, &[client::record(None, b"after")]).await.unwrap();
    assert_eq!(base, acknowledged.len() as u64);
    for id in 1..=3 {
        cluster.stop(id);
        let values = replica_values(&cluster.partition_dir(id, "steady", 0));
        assert_eq!(values.len(), acknowledged.len() + 1, "node {id}'s replica");
        for (offset, value) in &acknowledged {
            assert_eq!(values.get(*offset as usize), Some(value), "node {id}, acknowledged record at offset {offset}");
        }
    }
}

/// Bytes of the regular files in a directory.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}
