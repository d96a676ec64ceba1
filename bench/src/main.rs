//! `bench`: RobustMQ's benchmarks. Every mode prints our figure beside the limit (or the peer)
//! measured in the same run, then one JSON line with all the figures (DESIGN.md §6).
//!
//! One subcommand per mode, one file per mode:
//! * `log-store` ([`log_store`]) — append and read throughput of one partition's `log_store::Log`
//!   against the sequential write bandwidth of the disk under it ([`disk`]).
//! * `replicated` ([`replicated`]) — produce through real `robustmq` node processes with RF 1
//!   (one node) and RF 3 (three nodes on loopback) against the log-store's own append rate;
//!   fsyncs per second; leader failover time under kill -9.
//!
//! * `kafka` ([`kafka`]) — the Kafka protocol with its own load generator: acks=all throughput,
//!   produce and end-to-end latency at full and half load, and a small-batch keyed workload, on
//!   one node and on three, against the disk's limit.
//!
//! [`report`] holds the shared printing: the human-readable table and percentiles; node
//! processes come from the `tests` crate's `cluster`.

mod cpu;
mod disk;
mod kafka;
mod log_store;
mod replicated;
mod report;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// RobustMQ benchmarks: each mode prints our figure beside the limit measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// One partition's log on local disk: append and read throughput vs. the disk's limit.
    LogStore(log_store::Args),
    /// Produce through 1 and 3 node processes (RF 1, RF 3) vs. the log-store; fsyncs; failover.
    Replicated(replicated::Args),
    /// Kafka clients' view: acks=all produce and end-to-end latency on 1 and 3 nodes vs. the disk.
    Kafka(kafka::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::LogStore(args) => log_store::run(args),
        Mode::Replicated(args) => replicated::run(args),
        Mode::Kafka(args) => kafka::run(args),
    }
}
