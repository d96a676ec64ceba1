//! `robustmq`: the node binary. It only wires configuration, logging and subcommands; every
//! capability lives in a library crate.
//!
//! Today a node opens its data directory and waits for a shutdown signal: replication (issue 3)
//! and the protocol façades (issues 4+) plug in here as they land.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// RobustMQ: a replicated commit log with MQTT, Kafka and AMQP façades.
#[derive(Debug, Parser)]
#[command(name = "robustmq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default when no subcommand is given).
    Serve(ServeArgs),
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// This node's id in the cluster.
    #[arg(long, env = "ROBUSTMQ_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// Where the node keeps its logs.
    #[arg(long, env = "ROBUSTMQ_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs { node_id: 1, data_dir: PathBuf::from("./data") })) {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let probe = args.data_dir.join(".write-probe");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("the data directory {} is not writable", args.data_dir.display()))?;
    std::fs::remove_file(&probe).ok();
    info!(node_id = args.node_id, data_dir = %args.data_dir.display(), "node started; no listeners yet (replication and façades are not built)");
    wait_for_shutdown_signal()?;
    info!("shutdown signal received; stopping");
    Ok(())
}

/// Blocks until SIGINT or SIGTERM arrives (no polling: the thread sleeps in `sigwait`).
fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    // SAFETY: plain libc calls on a locally owned, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let status = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        anyhow::ensure!(status == 0, "cannot block shutdown signals: error {status}");
        let mut received: libc::c_int = 0;
        let status = libc::sigwait(&set, &mut received);
        anyhow::ensure!(status == 0, "sigwait failed: error {status}");
    }
    Ok(())
}
