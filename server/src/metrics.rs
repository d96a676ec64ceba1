//! Prometheus metrics of the node, in the process-wide default registry (raft-engine registers
//! its own there too: fsync latency is `raft_engine_sync_log_duration_seconds`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use replication::Cluster;

/// The node's own metrics.
pub struct Metrics {
    /// Produce requests by outcome (`ok`, `error`, `forwarded`).
    pub produce_requests: IntCounterVec,
    /// Bytes of record batches appended through this node.
    pub produce_bytes: IntCounter,
    /// Time from a produce request to its commit and apply on the leader.
    pub commit_latency: Histogram,
    /// Fetch requests by outcome.
    pub fetch_requests: IntCounterVec,
    /// Raft groups this node leads (set at scrape time).
    pub leaders: IntGauge,
    /// Entries each follower is behind, per group this node leads (set at scrape time).
    pub follower_lag: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register() -> Metrics {
        let registry = prometheus::default_registry();
        let metrics = Metrics {
            produce_requests: IntCounterVec::new(
                Opts::new("robustmq_produce_requests_total", "Produce requests by outcome"),
                &["outcome"],
            )
            .expect("valid metric"),
            produce_bytes: IntCounter::new("robustmq_produce_bytes_total", "Bytes of record batches appended")
                .expect("valid metric"),
            commit_latency: Histogram::with_opts(
                HistogramOpts::new("robustmq_commit_latency_seconds", "Produce to commit and apply on the leader")
                    .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("valid metric"),
            fetch_requests: IntCounterVec::new(
                Opts::new("robustmq_fetch_requests_total", "Fetch requests by outcome"),
                &["outcome"],
            )
            .expect("valid metric"),
            leaders: IntGauge::new("robustmq_leaders", "Raft groups this node leads").expect("valid metric"),
            follower_lag: IntGaugeVec::new(
                Opts::new(
                    "robustmq_follower_lag_entries",
                    "Raft entries a follower is behind, per group this node leads",
                ),
                &["group", "follower"],
            )
            .expect("valid metric"),
        };
        let _ = registry.register(Box::new(metrics.produce_requests.clone()));
        let _ = registry.register(Box::new(metrics.produce_bytes.clone()));
        let _ = registry.register(Box::new(metrics.commit_latency.clone()));
        let _ = registry.register(Box::new(metrics.fetch_requests.clone()));
        let _ = registry.register(Box::new(metrics.leaders.clone()));
        let _ = registry.register(Box::new(metrics.follower_lag.clone()));
        metrics
    }

    /// The Prometheus text exposition of every registered metric, with the gauges that are
    /// read from the cluster brought up to date first.
    pub fn render(&self, cluster: &Cluster) -> String {
        self.leaders.set(cluster.leader_count() as i64);
        self.follower_lag.reset();
        for ((group, follower), lag) in cluster.follower_lag() {
            self.follower_lag.with_label_values(&[&group.0.to_string(), &follower.0.to_string()]).set(lag as i64);
        }
        let mut out = String::new();
        let families = prometheus::default_registry().gather();
        if prometheus::TextEncoder::new().encode_utf8(&families, &mut out).is_err() {
            out.clear();
        }
        out
    }
}
