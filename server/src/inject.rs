//! Fault injection for the Jepsen harness's self-test, compiled into debug builds only.
//!
//! With `ROBUSTMQ_INJECT_DROP_EVERY=N` in its environment, a debug-built node acknowledges
//! every N-th native produce it leads without appending it (answering with the offset the
//! batch would have had): an acknowledged write that is then lost, which the harness must
//! report. Release builds ignore the variable.

use proto::v1::ProduceResponse;
use replication::Cluster;

/// The fake acknowledgement of a dropped append, when one is due.
#[cfg(debug_assertions)]
pub fn dropped_append(cluster: &Cluster, topic: &str, partition: u32) -> Option<ProduceResponse> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static EVERY: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let every = (*EVERY.get_or_init(|| {
        std::env::var("ROBUSTMQ_INJECT_DROP_EVERY").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0)
    }))?;
    let status = cluster.partition_status(topic, partition)?;
    if status.leader != Some(cluster.node_id()) || COUNT.fetch_add(1, Ordering::Relaxed) % every != every - 1 {
        return None;
    }
    tracing::warn!(topic, partition, "injected fault: acknowledging a produce that is not appended");
    let offset = status.high_watermark.0;
    Some(ProduceResponse { base_offset: offset, last_offset: offset })
}

/// Release builds never inject.
#[cfg(not(debug_assertions))]
pub fn dropped_append(_cluster: &Cluster, _topic: &str, _partition: u32) -> Option<ProduceResponse> {
    None
}
