//! `jepsen`: runs a RobustMQ cluster under faults with a workload, checks the history, writes
//! the report; exits 0 when the history is valid, 1 when an anomaly is found, 2 on error.
//!
//! `cargo run --release -p jepsen -- --workload native --nemesis kill,pause --nodes 5
//! --time-limit 60 --seed 7` (the node binary is `target/release/robustmq`; build it first).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use jepsen::nemesis::Nemesis;
use jepsen::run::{self, NetworkMode, Options};

/// Jepsen-style consistency test of a real RobustMQ cluster.
#[derive(Debug, Parser)]
#[command(name = "jepsen", version)]
struct Cli {
    /// The workload: native, kafka-queue or kafka-txn (mqtt-qos is not built yet).
    #[arg(long, default_value = "native")]
    workload: String,
    /// Comma-separated fault kinds: kill, pause, partition, disk (kill -9 and lose every
    /// unflushed partition-log byte), delay, loss, clock (libfaketime), membership (remove,
    /// wipe and re-add a node; needs 4+ nodes), bitflip and truncate (damage a partition log's
    /// tail, fsynced data included), full (a node's disk fills: it must stop on its own).
    #[arg(long, default_value = "kill,pause", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Node processes.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of every random choice (the fault schedule, partitions chosen).
    #[arg(long)]
    seed: Option<u64>,
    /// Results folder (default `jepsen/results/<seed>`).
    #[arg(long)]
    results: Option<PathBuf>,
    /// The node binary (default `robustmq` next to this executable).
    #[arg(long)]
    robustmq: Option<PathBuf>,
    /// Self-test: a debug-built node acknowledges every N-th produce without appending it;
    /// the run must then fail with lost writes.
    #[arg(long, value_name = "N")]
    inject: Option<u64>,
    /// Links between nodes for network faults: netns (network namespaces, root), proxy (a
    /// fault proxy per node pair, no root; the only way to delay or lose), auto.
    #[arg(long, default_value = "auto")]
    network: String,
}

fn main() {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("jepsen: {error:#}");
            std::process::exit(2);
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<bool> {
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let nemesis =
        cli.nemesis.iter().filter(|n| !n.is_empty()).map(|n| Nemesis::parse(n)).collect::<Result<Vec<_>, _>>()?;
    let robustmq = match cli.robustmq {
        Some(path) => path,
        None => std::env::current_exe()?.parent().map(|d| d.join("robustmq")).unwrap_or_default(),
    };
    anyhow::ensure!(robustmq.is_file(), "no node binary at {} (cargo build --release -p robustmq)", robustmq.display());
    let results = cli.results.unwrap_or_else(|| PathBuf::from("jepsen/results").join(seed.to_string()));
    let options = Options {
        workload: cli.workload,
        nemesis,
        nodes: cli.nodes,
        time_limit: Duration::from_secs(cli.time_limit),
        seed,
        results: results.clone(),
        robustmq,
        inject_drop_every: cli.inject,
        network: match cli.network.as_str() {
            "auto" => NetworkMode::Auto,
            "netns" => NetworkMode::Netns,
            "proxy" => NetworkMode::Proxy,
            other => anyhow::bail!("unknown --network {other:?} (auto, netns, proxy)"),
        },
    };
    println!("jepsen: seed {seed}, results in {}", results.display());
    let verdict = run::run(&options)?;
    print!("{}", std::fs::read_to_string(results.join("summary.txt"))?);
    Ok(verdict.valid())
}
