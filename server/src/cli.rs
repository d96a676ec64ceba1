//! The client subcommands of `robustmq`: topics, produce, consume, cluster status.
//! Tables for people by default, `--output json` for scripts.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use client::{Client, TopicDescription};
use log_store::batch::NewRecord;
use serde_json::json;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document (or one per line for consume) for scripts.
    Json,
}

/// Options every client subcommand takes.
#[derive(Debug, Args)]
pub struct Connection {
    /// Node(s) to talk to, `host:port[,host:port…]`; any node serves any request.
    #[arg(long, global = true, env = "ROBUSTMQ_BOOTSTRAP", default_value = "127.0.0.1:9300", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `robustmq topic …`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 of [a-zA-Z0-9._-].
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition; 0 takes the cluster default (3, or the node count if smaller).
        #[arg(long, default_value_t = 0)]
        replication_factor: u32,
        /// Keep only the latest record per key.
        #[arg(long)]
        compacted: bool,
        /// Delete data older than this.
        #[arg(long)]
        retention_ms: Option<i64>,
        /// Delete the oldest data past this size per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Segment size in bytes.
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Largest batch accepted, in bytes.
        #[arg(long)]
        max_message_bytes: Option<u32>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, replicas, leaders and offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// `robustmq produce`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to; records are read from stdin, one per line.
    pub topic: String,
    /// Partition to write to.
    #[arg(long, default_value_t = 0)]
    pub partition: u32,
    /// Key for every record.
    #[arg(long)]
    pub key: Option<String>,
    /// Records per batch.
    #[arg(long, default_value_t = 500)]
    pub batch_records: usize,
}

/// `robustmq consume`
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Partition to read.
    #[arg(long, default_value_t = 0)]
    pub partition: u32,
    /// Start at the first retained record (default: only new records).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset.
    #[arg(long, conflicts_with = "from_beginning")]
    pub offset: Option<u64>,
    /// Stop after this many records.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// Stop when nothing arrives for this long (default: wait forever).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
}

pub async fn topic(connection: &Connection, command: TopicCommand) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            compacted,
            retention_ms,
            retention_bytes,
            segment_bytes,
            max_message_bytes,
        } => {
            let config = client::TopicConfig {
                retention_ms,
                retention_bytes,
                segment_bytes,
                compacted,
                min_insync_replicas: None,
                max_message_bytes,
            };
            let topic = client.create_topic_with_config(&name, partitions, replication_factor, config).await?;
            print_topics(connection.output, &[topic]);
        }
        TopicCommand::List => print_topics(connection.output, &client.list_topics().await?),
        TopicCommand::Describe { name } => print_topics(connection.output, &[client.describe_topic(&name).await?]),
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            match connection.output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted topic {name}"),
            }
        }
    }
    Ok(())
}

/// A topic as JSON, the same for the CLI's `--output json` and the admin `/cluster` page.
pub fn topic_json(topic: &TopicDescription) -> serde_json::Value {
    json!({
        "name": topic.name,
        "replication_factor": topic.replication_factor,
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "group": p.group_id,
            "replicas": p.replicas,
            "voters": p.voters,
            "leader": p.leader,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
        })).collect::<Vec<_>>(),
    })
}

fn print_topics(output: Output, topics: &[TopicDescription]) {
    match output {
        Output::Json => {
            println!("{}", serde_json::Value::Array(topics.iter().map(topic_json).collect()));
        }
        Output::Table => {
            println!(
                "{:<30} {:>9} {:<12} {:>6} {:>14} {:>14}",
                "TOPIC", "PARTITION", "REPLICAS", "LEADER", "LOG-START", "HIGH-WATERMARK"
            );
            for topic in topics {
                for p in &topic.partitions {
                    let replicas = p.replicas.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
                    let leader = p.leader.map_or("-".to_string(), |l| l.to_string());
                    println!(
                        "{:<30} {:>9} {:<12} {:>6} {:>14} {:>14}",
                        topic.name, p.partition, replicas, leader, p.log_start_offset, p.high_watermark
                    );
                }
            }
        }
    }
}

pub async fn produce(connection: &Connection, args: ProduceArgs) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    let key = args.key.map(Bytes::from);
    let mut pending: Vec<NewRecord> = Vec::with_capacity(args.batch_records);
    let (mut first, mut last, mut count) = (None, 0u64, 0u64);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines.next().transpose().context("cannot read stdin")?;
        if let Some(line) = &line {
            let mut record = client::record(None, line.as_bytes());
            record.key = key.clone();
            pending.push(record);
        }
        if pending.len() >= args.batch_records.max(1) || (line.is_none() && !pending.is_empty()) {
            let (base, end) = client.produce(&args.topic, args.partition, &pending).await?;
            first.get_or_insert(base);
            last = end;
            count += pending.len() as u64;
            pending.clear();
        }
        if line.is_none() {
            break;
        }
    }
    match connection.output {
        Output::Json => {
            println!("{}", json!({"records": count, "first_offset": first, "last_offset": first.map(|_| last)}))
        }
        Output::Table => match first {
            Some(first) => println!("produced {count} records at offsets {first}..={last}"),
            None => println!("produced 0 records"),
        },
    }
    Ok(())
}

pub async fn consume(connection: &Connection, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    let first = client.fetch(&args.topic, args.partition, 0, 1, 0).await;
    let mut offset = match (args.offset, args.from_beginning) {
        (Some(offset), _) => offset,
        (None, true) => match first {
            Ok(response) => response.log_start_offset,
            Err(client::Error::Rejected { code: tonic::Code::OutOfRange, .. }) => client
                .describe_topic(&args.topic)
                .await?
                .partitions
                .get(args.partition as usize)
                .map_or(0, |p| p.log_start_offset),
            Err(error) => return Err(error.into()),
        },
        (None, false) => match first {
            Ok(response) => response.high_watermark,
            Err(_) => client
                .describe_topic(&args.topic)
                .await?
                .partitions
                .get(args.partition as usize)
                .map_or(0, |p| p.high_watermark),
        },
    };
    let mut seen = 0u64;
    let mut idle_since = std::time::Instant::now();
    let stdout = std::io::stdout();
    loop {
        if args.max_records.is_some_and(|max| seen >= max) {
            break;
        }
        let (records, _) = client.fetch_records(&args.topic, args.partition, offset, 1 << 20, 500).await?;
        if records.is_empty() {
            if args.idle_timeout_ms.is_some_and(|idle| idle_since.elapsed().as_millis() as u64 >= idle) {
                break;
            }
            continue;
        }
        idle_since = std::time::Instant::now();
        let mut out = stdout.lock();
        for record in records {
            if args.max_records.is_some_and(|max| seen >= max) {
                break;
            }
            let value = record.value.as_deref().map(String::from_utf8_lossy);
            match connection.output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    json!({
                        "offset": record.offset.0,
                        "timestamp": record.timestamp,
                        "key": record.key.as_deref().map(String::from_utf8_lossy),
                        "value": value,
                    })
                )?,
                Output::Table => writeln!(out, "{}", value.unwrap_or_default())?,
            }
            offset = record.offset.0 + 1;
            seen += 1;
        }
        out.flush()?;
    }
    Ok(())
}

pub async fn cluster_status(connection: &Connection) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    let status = client.cluster_status().await?;
    match connection.output {
        Output::Json => println!(
            "{}",
            json!({
                "answered_by": status.answered_by,
                "metadata_leader": status.metadata_leader,
                "nodes": status.nodes.iter().map(|n| json!({"id": n.id, "address": n.address, "removed": n.removed})).collect::<Vec<_>>(),
            })
        ),
        Output::Table => {
            println!("{:>6} {:<24} ROLE", "NODE", "ADDRESS");
            for node in &status.nodes {
                let role = match (status.metadata_leader == Some(node.id), node.removed) {
                    (_, true) => "removed",
                    (true, false) => "metadata leader",
                    (false, false) => "",
                };
                println!("{:>6} {:<24} {}", node.id, node.address, role);
            }
        }
    }
    if status.nodes.is_empty() {
        bail!("the node answered with no members");
    }
    Ok(())
}

pub async fn add_node(connection: &Connection, id: u64, address: &str) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    client.add_node(id, address).await?;
    match connection.output {
        Output::Json => println!("{}", json!({"added": id, "address": address})),
        Output::Table => println!("added node {id} at {address}"),
    }
    Ok(())
}

/// Rebalances replicas and preferred leaders, then waits until every move has finished.
pub async fn rebalance(connection: &Connection, timeout_s: u64) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    let moved = client.rebalance().await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    loop {
        let pending = client.moves_pending().await;
        if matches!(pending, Ok(0)) {
            break;
        }
        if std::time::Instant::now() >= deadline {
            match pending {
                Ok(pending) => bail!("{moved} partitions were reassigned; {pending} have not finished moving"),
                Err(error) => bail!("{moved} partitions were reassigned; cannot tell whether they moved: {error}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match connection.output {
        Output::Json => println!("{}", json!({"partitions_moved": moved})),
        Output::Table => println!("rebalanced: {moved} partitions got new replicas or preferred leaders"),
    }
    Ok(())
}

/// Removes a node, then waits until no replica of any partition, on any node, still counts it
/// among the group's voters.
pub async fn remove_node(connection: &Connection, id: u64, timeout_s: u64) -> anyhow::Result<()> {
    let client = Client::new(connection.bootstrap.clone());
    client.remove_node(id).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    loop {
        let pending = client.removal_pending(id).await?;
        if pending.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "node {id} is removed from the catalog but {} groups still count it as a voter: {}",
                pending.len(),
                pending.join("; ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match connection.output {
        Output::Json => println!("{}", json!({"removed": id})),
        Output::Table => println!("removed node {id}; its replicas have moved"),
    }
    Ok(())
}
