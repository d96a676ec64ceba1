//! `robustmq`: the node binary and its command-line client. It only wires configuration,
//! logging, listeners and subcommands; every capability lives in a library crate.
//!
//! # Layout
//! * `config` — embedded defaults, TOML file, flags.
//! * `node` — `serve`: replication, the gRPC and admin listeners, graceful shutdown.
//! * `broker` — the native client API, with one-hop forwarding to leaders.
//! * `admin`, `metrics` — `/health`, `/metrics`, `/cluster`.
//! * `cli` — topic, produce, consume and cluster subcommands.

mod admin;
mod broker;
mod cli;
mod config;
mod inject;
mod metrics;
mod node;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::cli::{Connection, ConsumeArgs, ProduceArgs, TopicCommand};
use crate::config::{NodeConfig, Peer};

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
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Write stdin, one record per line, to a topic partition.
    Produce {
        #[command(flatten)]
        args: ProduceArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a topic partition's records, one per line.
    Consume {
        #[command(flatten)]
        args: ConsumeArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cluster membership and state.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The nodes and who leads the metadata group.
    Status,
    /// Add a node that was started with --join.
    AddNode {
        /// Its node id.
        #[arg(long)]
        id: u64,
        /// Its gRPC address, as the other nodes reach it.
        #[arg(long)]
        address: String,
    },
    /// Remove a node: its replicas move to the other nodes; waits until they have.
    RemoveNode {
        /// Its node id.
        #[arg(long)]
        id: u64,
        /// Give up waiting for the replicas to move after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Even out replicas and preferred leaders over the nodes (after adding nodes); waits until
    /// the replicas have moved.
    Rebalance {
        /// Give up waiting for the replicas to move after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
}

/// Flags of `serve`; each overrides the config file, which overrides the embedded defaults.
#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see config/ for examples).
    #[arg(long, env = "ROBUSTMQ_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Where the node keeps its data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address of the native gRPC API.
    #[arg(long)]
    grpc_listen: Option<String>,
    /// Address other nodes and clients reach this node at.
    #[arg(long)]
    advertised_address: Option<String>,
    /// Listen address of the HTTP admin API.
    #[arg(long)]
    admin_listen: Option<String>,
    /// A member of the initial cluster as ID=HOST:PORT; repeat for each (this node included).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<Peer>,
    /// Connect to node ID at HOST:PORT instead of its advertised address (a proxy or NAT in
    /// between) as ID=HOST:PORT; repeat for each.
    #[arg(long = "dial-via", value_parser = parse_peer)]
    dial_via: Vec<Peer>,
    /// Join a running cluster (reached through the --peer nodes) instead of founding one.
    #[arg(long)]
    join: bool,
    /// Listen address of the Kafka protocol.
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Address Kafka clients reach this node at.
    #[arg(long)]
    kafka_advertised_address: Option<String>,
}

fn parse_peer(text: &str) -> Result<Peer, String> {
    let (id, address) = text.split_once('=').ok_or("expected ID=HOST:PORT")?;
    let id = id.parse().map_err(|_| format!("bad node id {id:?}"))?;
    Ok(Peer { id, address: address.to_string() })
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(node_id) = self.node_id {
            config.node_id = node_id;
        }
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(grpc_listen) = self.grpc_listen {
            config.grpc_listen = grpc_listen;
        }
        if let Some(advertised) = self.advertised_address {
            config.advertised_address = Some(advertised);
        }
        if let Some(admin_listen) = self.admin_listen {
            config.admin_listen = admin_listen;
        }
        if !self.peers.is_empty() {
            config.peers = self.peers;
        }
        if !self.dial_via.is_empty() {
            config.dial_via = self.dial_via;
        }
        if self.join {
            config.join = true;
        }
        if let Some(listen) = self.kafka_listen {
            config.kafka.listen = listen;
        }
        if let Some(advertised) = self.kafka_advertised_address {
            config.kafka.advertised_address = Some(advertised);
        }
        Ok(config)
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The cause chain on one line; no backtrace for an operator's mistake. Written
            // without `eprintln!`, which panics when stderr cannot be written (a full disk).
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(if serving { "info" } else { "warn" })),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (its disk is full) must not panic the node.
        .log_internal_errors(false)
        .init();
    if serving {
        // A file-size limit (RLIMIT_FSIZE) then fails the write with EFBIG, which the node
        // handles as it handles a full disk, instead of killing it with SIGXFSZ.
        // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
            Command::Serve(args) => node::serve(args.into_config()?).await,
            Command::Topic { command, connection } => cli::topic(&connection, command).await,
            Command::Produce { args, connection } => cli::produce(&connection, args).await,
            Command::Consume { args, connection } => cli::consume(&connection, args).await,
            Command::Cluster { command: ClusterCommand::Status, connection } => cli::cluster_status(&connection).await,
            Command::Cluster { command: ClusterCommand::AddNode { id, address }, connection } => {
                cli::add_node(&connection, id, &address).await
            }
            Command::Cluster { command: ClusterCommand::RemoveNode { id, timeout_s }, connection } => {
                cli::remove_node(&connection, id, timeout_s).await
            }
            Command::Cluster { command: ClusterCommand::Rebalance { timeout_s }, connection } => {
                cli::rebalance(&connection, timeout_s).await
            }
        }
    })
}
