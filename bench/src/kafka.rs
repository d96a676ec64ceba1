//! `bench kafka`: what a Kafka client gets, measured with this bench's own load generator
//! speaking the Kafka protocol (frames encoded with the `kafka-protocol` crate, as a client
//! library would).
//!
//! In one run:
//! 1. **Disk limit**: buffered `pwrite` + `fdatasync` every 8 MiB in batch-sized writes (the
//!    log's pattern) and O_DIRECT sequential writes ([`disk`]), on the directory the nodes use.
//! 2. For each size of `--clusters` (1 node with RF 1, 3 nodes on this machine with RF 3), on a
//!    fresh cluster with a topic of `--partitions` partitions, connecting straight to each
//!    partition leader's Kafka listener, as a Kafka client does:
//!    * **max**: `--connections` connections per partition, each with `--in-flight` Produce
//!      requests (v9, acks=all) in flight, each carrying one 64 KiB batch of 1 KiB records, for
//!      `--seconds` after `--warmup-seconds`. Produce latency is send → acknowledgement; each
//!      batch is stamped with its send time, and a consumer per partition long-polling Fetch
//!      (v12) on its own connection records end-to-end latency (fetched − stamped, millisecond
//!      resolution).
//!    * **half**: the same, paced at half the max throughput: the latency target's condition.
//!    * **keyed**: one record per batch (`linger.ms=0`), keys drawn from `--keys`, the
//!      workload where per-partition consensus pays per request. With several partitions each
//!      connection sends its keys to its own partition, not by key hash as a Kafka client would.
//!
//!    For every workload, the cores each node and the load generator kept busy and the bytes
//!    the disk under the nodes' data wrote (its sectors written), both over the timed window.
//! 3. The disk limit once more (on a VM the first write to fresh blocks is slower; the higher
//!    figure counts).
//! 4. The table with the targets (1 node ≥ 300 MiB/s, 3 nodes ≥ 150 MiB/s, p99 produce
//!    ≤ 10 ms at half load) and the two physical ceilings of each max run: the disk's (its
//!    limit over the bytes written per acknowledged byte) and the CPU's; then one JSON line.
//!
//! The load generator and every node share this machine's cores; the report says how many.
//! Before the first disk measurement and after each cluster's data is deleted, the bench waits
//! (at most 90 s) until the storage is idle ([`disk::wait_until_idle`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use log_store::batch::{BatchBuilder, Compression, NewRecord};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cpu;
use crate::disk::{self, Pattern};
use crate::log_store::{build_pool, PooledBatch};
use crate::report::{json_line, mib_per_s, per_s, round, thousands, Percentiles, Table, Verdict};
use ::tests::cluster::LocalCluster;

const TOPIC: &str = "bench";
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
/// fdatasync interval of the buffered disk measurement (the partition log's flush size).
const DISK_FSYNC_EVERY: u64 = 8 << 20;
const TARGET_RF1_MIB_S: f64 = 300.0;
const TARGET_RF3_MIB_S: f64 = 150.0;
const TARGET_P99: Duration = Duration::from_millis(10);

/// Options of the `kafka` mode.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of timed load per workload.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Untimed load before each timed window.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Partitions of the topic. The load goes to every partition's leader; on 3 nodes, 3
    /// partitions spread the leaders over the nodes as a Kafka topic's usually are.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Producer connections to each partition's leader.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Produce requests in flight per connection (librdkafka's default is 5).
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Largest size of a batch in the max and half workloads.
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Distinct keys of the keyed workload.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Cluster sizes to measure, each with a replication factor of its size: 1, 3 or both.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
    clusters: Vec<u64>,
    /// Seconds of the buffered disk measurement.
    #[arg(long, default_value_t = 5.0)]
    disk_seconds: f64,
    /// Directory for the nodes' data (default `target/bench-tmp`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The node binary. Default: `robustmq` next to this executable.
    #[arg(long)]
    robustmq: Option<PathBuf>,
    /// Keep the data directories and node logs.
    #[arg(long)]
    keep: bool,
}

/// What one workload measured.
struct LoadRun {
    elapsed: Duration,
    bytes: u64,
    records: u64,
    requests: u64,
    errors: u64,
    produce: Percentiles,
    end_to_end: Percentiles,
    /// Cores each node and the load generator kept busy over the timed window.
    cpu: Vec<(String, f64)>,
    /// Bytes the disk under the nodes' data wrote over the timed window.
    written: Option<u64>,
}

impl LoadRun {
    fn mib_s(&self) -> f64 {
        mib_per_s(self.bytes, self.elapsed)
    }

    fn busy_cores(&self) -> f64 {
        cpu::total(&self.cpu)
    }

    /// Bytes written to storage per acknowledged byte.
    fn write_amplification(&self) -> Option<f64> {
        self.written.filter(|_| self.bytes > 0).map(|written| written as f64 / self.bytes as f64)
    }

    /// The throughput at which this run's writes would fill a disk that sustains `disk_mib_s`.
    fn disk_ceiling(&self, disk_mib_s: f64) -> Option<f64> {
        self.write_amplification().filter(|a| *a > 0.0).map(|a| disk_mib_s / a)
    }
}

/// What each produce request carries.
#[derive(Clone)]
enum Workload {
    /// Pre-built batches, restamped with the send time.
    Batches(Arc<Vec<PooledBatch>>),
    /// One keyed record per batch.
    Keyed { keys: u64, record_bytes: usize },
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Offsets of the v2 batch header fields rewritten before each send.
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const CRC: usize = 17;

/// Sets a pooled batch's timestamps to `now` (record deltas are 0) and recomputes its CRC.
fn stamp(batch: &mut [u8], now: i64) {
    batch[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&now.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now.to_be_bytes());
    let crc = log_store::batch::compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

impl Workload {
    /// The next batch to send and its record count.
    fn next(&self, n: u64) -> Result<(Bytes, u64)> {
        match self {
            Workload::Batches(pool) => {
                let pooled = &pool[n as usize % pool.len()];
                let mut bytes = pooled.bytes.clone();
                stamp(&mut bytes, now_ms());
                Ok((Bytes::from(bytes), pooled.records))
            }
            Workload::Keyed { keys, record_bytes } => {
                let mut value = vec![0u8; *record_bytes];
                disk::fill_pseudo_random(&mut value, n);
                let key = format!("key-{}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % keys);
                let mut builder = BatchBuilder::new(Compression::None);
                builder.push(&NewRecord {
                    key: Some(Bytes::from(key)),
                    value: Some(Bytes::from(value)),
                    headers: Vec::new(),
                    timestamp: now_ms(),
                });
                Ok((Bytes::from(builder.build()?), 1))
            }
        }
    }
}

/// Encodes one request frame.
fn frame<T: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("robustmq-bench")));
    let mut buf = BytesMut::with_capacity(128);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    header.encode(&mut buf, api_key.request_header_version(version))?;
    body.encode(&mut buf, version)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

/// Reads one response frame and decodes its body.
async fn response<T: Decodable>(stream: &mut (impl AsyncReadExt + Unpin), api_key: ApiKey, version: i16) -> Result<T> {
    let size = stream.read_i32().await.context("reading a response")?;
    ensure!((4..=256 << 20).contains(&size), "response of {size} bytes");
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await?;
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, api_key.response_header_version(version))?;
    T::decode(&mut body, version).with_context(|| format!("decoding a {api_key:?} response"))
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

/// One partition of the topic and its leader's Kafka listener.
#[derive(Clone, Debug)]
struct Target {
    partition: i32,
    address: String,
}

fn produce_request(partition: i32, records: Bytes) -> ProduceRequest {
    let partition = PartitionProduceData::default().with_index(partition).with_records(Some(records));
    let topic = TopicProduceData::default().with_name(topic_name()).with_partition_data(vec![partition]);
    ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![topic])
}

/// The partition's end offset.
async fn latest_offset(target: &Target) -> Result<i64> {
    let mut stream = TcpStream::connect(&target.address).await?;
    let partition = ListOffsetsPartition::default().with_partition_index(target.partition).with_timestamp(-1);
    let topic = ListOffsetsTopic::default().with_name(topic_name()).with_partitions(vec![partition]);
    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
    stream.write_all(&frame(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, 1, &request)?).await?;
    let answer: ListOffsetsResponse = response(&mut stream, ApiKey::ListOffsets, LIST_OFFSETS_VERSION).await?;
    let partition = &answer.topics[0].partitions[0];
    ensure!(partition.error_code == 0, "ListOffsets error {}", partition.error_code);
    Ok(partition.offset)
}

/// Shared state of one workload's tasks.
struct Window {
    start: Instant,
    timed_from: Instant,
    timed_to: Instant,
    stop: AtomicBool,
    bytes: AtomicU64,
    records: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    produce: Mutex<Vec<Duration>>,
    end_to_end: Mutex<Vec<Duration>>,
}

impl Window {
    fn timed(&self, at: Instant) -> bool {
        at >= self.timed_from && at < self.timed_to
    }
}

/// One producer connection: sends while the window is open, at most `in_flight` requests
/// unanswered, paced to `bytes_per_s` when given.
async fn producer(
    target: Target,
    workload: Workload,
    window: Arc<Window>,
    in_flight: usize,
    bytes_per_s: Option<f64>,
    seed: u64,
) -> Result<()> {
    let address = &target.address;
    let stream = TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let (sent, mut unanswered) = tokio::sync::mpsc::channel::<(Instant, u64, u64)>(in_flight.max(2) - 1);
    let reading = {
        let window = window.clone();
        tokio::spawn(async move {
            while let Some((sent_at, bytes, records)) = unanswered.recv().await {
                let answer: ProduceResponse = response(&mut reader, ApiKey::Produce, PRODUCE_VERSION).await?;
                let done = Instant::now();
                let code =
                    answer.responses.first().and_then(|t| t.partition_responses.first()).map_or(-1, |p| p.error_code);
                if window.timed(sent_at) {
                    if code == 0 {
                        window.bytes.fetch_add(bytes, Ordering::Relaxed);
                        window.records.fetch_add(records, Ordering::Relaxed);
                        window.requests.fetch_add(1, Ordering::Relaxed);
                        window.produce.lock().unwrap_or_else(|p| p.into_inner()).push(done - sent_at);
                    } else {
                        window.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let mut n = seed;
    let mut next_send = Instant::now();
    while !window.stop.load(Ordering::Relaxed) && Instant::now() < window.timed_to {
        let (batch, records) = workload.next(n)?;
        n += 1;
        if let Some(rate) = bytes_per_s {
            tokio::time::sleep_until(next_send.into()).await;
            next_send += Duration::from_secs_f64(batch.len() as f64 / rate);
        }
        let bytes = batch.len() as u64;
        let request = frame(ApiKey::Produce, PRODUCE_VERSION, n as i32, &produce_request(target.partition, batch))?;
        let sent_at = Instant::now();
        if sent.send((sent_at, bytes, records)).await.is_err() {
            break;
        }
        writer.write_all(&request).await?;
    }
    drop(sent);
    reading.await??;
    Ok(())
}

/// Long-polls the partition from `from`, recording fetched − stamped for each batch.
async fn consumer(target: Target, window: Arc<Window>, from: i64) -> Result<()> {
    let mut stream = TcpStream::connect(&target.address).await?;
    stream.set_nodelay(true)?;
    let mut offset = from;
    let mut correlation_id = 0;
    while !window.stop.load(Ordering::Relaxed) {
        let partition = FetchPartition::default()
            .with_partition(target.partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(16 << 20);
        let topic = FetchTopic::default().with_topic(topic_name()).with_partitions(vec![partition]);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(200)
            .with_min_bytes(1)
            .with_max_bytes(32 << 20)
            .with_topics(vec![topic]);
        correlation_id += 1;
        stream.write_all(&frame(ApiKey::Fetch, FETCH_VERSION, correlation_id, &request)?).await?;
        let answer: FetchResponse = response(&mut stream, ApiKey::Fetch, FETCH_VERSION).await?;
        let fetched_ms = now_ms();
        let Some(partition) = answer.responses.first().and_then(|t| t.partitions.first()) else { continue };
        ensure!(partition.error_code == 0, "Fetch error {}", partition.error_code);
        let Some(records) = partition.records.clone() else { continue };
        for stored in log_store::batch::batches(records) {
            let header = *stored?.header();
            let stamped_ago = Duration::from_millis((fetched_ms - header.max_timestamp).max(0) as u64);
            let stamped_at = Instant::now().checked_sub(stamped_ago).unwrap_or(window.start);
            if window.timed(stamped_at) {
                window.end_to_end.lock().unwrap_or_else(|p| p.into_inner()).push(stamped_ago);
            }
            offset = offset.max(header.last_offset().0 as i64 + 1);
        }
    }
    Ok(())
}

/// Runs one workload against every partition's leader; `processes` (name, pid) are the ones
/// whose CPU time is measured over the timed window, and `data` the nodes' data directory,
/// whose device's writes are counted over it.
#[allow(clippy::too_many_arguments)]
async fn load(
    targets: &[Target],
    processes: &[(String, String)],
    data: &Path,
    workload: Workload,
    connections: usize,
    in_flight: usize,
    bytes_per_s: Option<f64>,
    warmup: Duration,
    timed: Duration,
) -> Result<LoadRun> {
    let mut from = Vec::new();
    for target in targets {
        from.push(latest_offset(target).await?);
    }
    let start = Instant::now();
    let window = Arc::new(Window {
        start,
        timed_from: start + warmup,
        timed_to: start + warmup + timed,
        stop: AtomicBool::new(false),
        bytes: AtomicU64::new(0),
        records: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        produce: Mutex::new(Vec::new()),
        end_to_end: Mutex::new(Vec::new()),
    });
    let sampling = {
        let processes = processes.to_vec();
        let data = data.to_path_buf();
        let (from, to) = (window.timed_from, window.timed_to);
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let before = cpu::Sample::take(&processes);
            let written_before = disk::device_written_bytes(&data);
            tokio::time::sleep_until(to.into()).await;
            let written = disk::device_written_bytes(&data)
                .zip(written_before)
                .map(|(after, before)| after.saturating_sub(before));
            (before.cores_since(), written)
        })
    };
    let readers: Vec<_> = targets
        .iter()
        .zip(from)
        .map(|(target, from)| tokio::spawn(consumer(target.clone(), window.clone(), from)))
        .collect();
    let per_connection = bytes_per_s.map(|rate| rate / (connections * targets.len()) as f64);
    let producers: Vec<_> = (0..connections * targets.len())
        .map(|c| {
            tokio::spawn(producer(
                targets[c % targets.len()].clone(),
                workload.clone(),
                window.clone(),
                in_flight,
                per_connection,
                (c as u64) << 40,
            ))
        })
        .collect();
    for producer in producers {
        producer.await??;
    }
    // Let the consumer catch up with the last acknowledged batches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    window.stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await??;
    }
    let (cpu, written) = sampling.await?;
    let mut produce = std::mem::take(&mut *window.produce.lock().unwrap_or_else(|p| p.into_inner()));
    let mut end_to_end = std::mem::take(&mut *window.end_to_end.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(LoadRun {
        elapsed: timed,
        bytes: window.bytes.load(Ordering::Relaxed),
        records: window.records.load(Ordering::Relaxed),
        requests: window.requests.load(Ordering::Relaxed),
        errors: window.errors.load(Ordering::Relaxed),
        produce: Percentiles::of(&mut produce),
        end_to_end: Percentiles::of(&mut end_to_end),
        cpu,
        written,
    })
}

/// The three workloads on one cluster.
struct ClusterRun {
    max: LoadRun,
    half: LoadRun,
    keyed: LoadRun,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// `"the device wrote 1003.2 MiB/s, 6.02 B per acknowledged B"`.
fn written_summary(run: &LoadRun) -> String {
    match (run.written, run.write_amplification()) {
        (Some(written), Some(amplification)) => format!(
            "the device wrote {:.1} MiB/s, {amplification:.2} B per acknowledged B",
            mib_per_s(written, run.elapsed)
        ),
        _ => "?".to_string(),
    }
}

/// `"6.02 B written per B; the disk's 986 MiB/s allows at most 163.8 MiB/s (this run: 98 %)"`.
fn disk_ceiling_summary(run: &LoadRun, disk_mib_s: f64) -> String {
    match (run.write_amplification(), run.disk_ceiling(disk_mib_s)) {
        (Some(amplification), Some(ceiling)) => format!(
            "{amplification:.2} B written per B; the disk's {disk_mib_s:.0} MiB/s allows at most {ceiling:.1} MiB/s (this run: {:.0} %)",
            100.0 * run.mib_s() / ceiling
        ),
        _ => "?".to_string(),
    }
}

fn print_run(label: &str, run: &LoadRun) {
    println!(
        "   {label:<6} {:>8.1} MiB/s  {:>9} records/s  {:>7} req/s  produce p50/p99/p999 {} / {} / {} ms  e2e p50/p99 {} / {} ms{}",
        run.mib_s(),
        thousands(per_s(run.records, run.elapsed)),
        thousands(per_s(run.requests, run.elapsed)),
        ms(run.produce.p50),
        ms(run.produce.p99),
        ms(run.produce.p999),
        ms(run.end_to_end.p50),
        ms(run.end_to_end.p99),
        if run.errors > 0 { format!("  ({} errors)", run.errors) } else { String::new() }
    );
    println!(
        "          CPU cores busy {}; {}",
        cpu::summary(&run.cpu),
        cpu::ceiling_summary(run.busy_cores(), run.mib_s(), cpu::available())
    );
    println!("          disk: {}", written_summary(run));
}

/// Each partition's leader and its Kafka listener, once the listener answers; prints them when
/// there are several partitions.
async fn partition_leaders(cluster: &mut LocalCluster, partitions: u32) -> Result<(Vec<u64>, Vec<Target>)> {
    let mut leaders = Vec::new();
    let mut targets = Vec::new();
    for partition in 0..partitions {
        let leader = cluster.partition_leader(TOPIC, partition, None).await?;
        let target = Target { partition: partition as i32, address: cluster.node(leader).kafka.clone() };
        // The Kafka listener answers once the node runs; wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while latest_offset(&target).await.is_err() {
            if Instant::now() > deadline {
                bail!("the leader's Kafka listener {} does not answer", target.address);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        leaders.push(leader);
        targets.push(target);
    }
    if partitions > 1 {
        println!("   partition leaders: {}", leaders.iter().map(|l| format!("n{l}")).collect::<Vec<_>>().join(", "));
    }
    Ok((leaders, targets))
}

async fn run_cluster(
    cluster: &mut LocalCluster,
    data: &Path,
    nodes: u64,
    args: &Args,
    pool: &Arc<Vec<PooledBatch>>,
) -> Result<ClusterRun> {
    cluster.wait_ready().await?;
    let client = cluster.client(None);
    client.create_topic(TOPIC, args.partitions, nodes as u32).await.context("creating the topic")?;
    let (leaders, mut targets) = partition_leaders(cluster, args.partitions).await?;
    let processes: Vec<(String, String)> = (1..=nodes)
        .filter_map(|id| {
            let led = leaders.iter().filter(|l| **l == id).count();
            let role = match (led, args.partitions) {
                (0, _) => "follower".to_string(),
                (_, 1) => "leader".to_string(),
                (led, _) => format!("leads {led}"),
            };
            cluster.pid(id).map(|pid| (format!("n{id} {role}"), pid.to_string()))
        })
        .chain(std::iter::once(("load generator".to_string(), "self".to_string())))
        .collect();
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let timed = Duration::from_secs_f64(args.seconds);
    let batches = Workload::Batches(pool.clone());
    let max = load(&targets, &processes, data, batches.clone(), args.connections, args.in_flight, None, warmup, timed)
        .await?;
    print_run("max", &max);
    ensure!(max.bytes > 0, "the max workload got no acknowledgement");
    let half_rate = max.bytes as f64 / max.elapsed.as_secs_f64() / 2.0;
    // Leadership may have moved in between (preferred-leader balancing): ask again each time.
    (_, targets) = partition_leaders(cluster, args.partitions).await?;
    let half =
        load(&targets, &processes, data, batches, args.connections, args.in_flight, Some(half_rate), warmup, timed)
            .await?;
    print_run("half", &half);
    let keyed_workload = Workload::Keyed { keys: args.keys, record_bytes: args.record_bytes };
    (_, targets) = partition_leaders(cluster, args.partitions).await?;
    let keyed =
        load(&targets, &processes, data, keyed_workload, args.connections, args.in_flight, None, warmup, timed).await?;
    print_run("keyed", &keyed);
    Ok(ClusterRun { max, half, keyed })
}

/// Runs the mode.
pub fn run(args: Args) -> Result<()> {
    ensure!(
        args.seconds > 0.0 && args.connections > 0 && args.in_flight > 0 && args.partitions > 0,
        "nothing to measure"
    );
    ensure!(matches!(args.clusters.as_slice(), [1] | [3] | [1, 3]), "--clusters takes 1, 3 or 1,3");
    let binary = match &args.robustmq {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.parent().context("the bench binary has no directory")?.join("robustmq"),
    };
    ensure!(binary.is_file(), "no node binary at {} (bench/run.sh builds it)", binary.display());
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?.join("target").join("bench-tmp"),
    };
    std::fs::create_dir_all(&base)?;
    let mut work = tempfile::Builder::new().prefix("kafka-").tempdir_in(&base)?;
    // --keep keeps the directory with the node logs, also when the run fails.
    work.disable_cleanup(args.keep);
    let cores = cpu::available();
    println!("bench kafka");
    println!("  node binary: {}", binary.display());
    println!("  directory  : {} ({})", work.path().display(), disk::filesystem_of(work.path()));
    println!("  cores      : {cores} (the load generator and every node share them)");
    println!(
        "  load       : {} partition(s) × {} connections × {} requests in flight, acks=all, {} B records",
        args.partitions, args.connections, args.in_flight, args.record_bytes
    );

    let pool = Arc::new(build_pool(args.record_bytes, args.batch_bytes)?);
    let batch_len = pool[0].bytes.len();
    println!();
    println!("1. disk limit: {batch_len} B writes, fdatasync every {DISK_FSYNC_EVERY} B, {} s…", args.disk_seconds);
    let pattern = Pattern {
        direct_bytes: 1 << 30,
        buffered_duration: Duration::from_secs_f64(args.disk_seconds),
        write_bytes: batch_len,
        fsync_every: DISK_FSYNC_EVERY,
    };
    disk::wait_for_idle_storage();
    let mut limit = disk::measure(work.path(), pattern)?;
    println!(
        "   buffered + fdatasync: {:.1} MiB/s; O_DIRECT: {}",
        limit.buffered_fsync_mib_s,
        limit.direct_mib_s.map_or("n/a".into(), |v| format!("{v:.1} MiB/s ({})", limit.method))
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut runs = Vec::new();
    for (step, nodes) in (2..).zip(args.clusters.iter().copied()) {
        println!();
        println!("{step}. {nodes} node(s), RF {nodes}: max, half-max paced, keyed single-record batches…");
        let dir = work.path().join(format!("rf{nodes}"));
        let mut cluster = LocalCluster::start(&binary, &dir, nodes)?;
        let run = runtime.block_on(run_cluster(&mut cluster, &dir, nodes, &args, &pool))?;
        cluster.kill_all();
        drop(cluster);
        if !args.keep {
            let _ = std::fs::remove_dir_all(&dir);
            disk::wait_for_idle_storage();
        }
        runs.push((nodes, run));
    }
    println!();
    let again = limit.measure_buffered_again(work.path(), pattern)?;
    let disk_mib_s = limit.buffered_fsync_mib_s;
    println!(
        "{}. disk limit again, buffered + fdatasync: {again:.1} MiB/s (before the clusters: {:.1}); the higher, {disk_mib_s:.1} MiB/s, is the limit",
        args.clusters.len() + 2,
        limit.buffered_runs_mib_s[0]
    );

    println!();
    let mut table = Table::default();
    for (nodes, run) in &runs {
        let partitions =
            if args.partitions == 1 { "1 partition".to_string() } else { format!("{} partitions", args.partitions) };
        let label = if *nodes == 1 { format!("1 node, {partitions}") } else { format!("{nodes} nodes, {partitions}") };
        let target = if *nodes == 1 { TARGET_RF1_MIB_S } else { TARGET_RF3_MIB_S };
        table.target(
            &format!("{label}, acks=all, MiB/s"),
            format!("{:.1}", run.max.mib_s()),
            &format!(">= {target}"),
            Verdict::of(run.max.mib_s() >= target),
        );
        table.figure(
            &format!("{label}, max: disk writes and the ceiling they set"),
            disk_ceiling_summary(&run.max, disk_mib_s),
        );
        table.figure(
            &format!("{label}, max: CPU cost and the ceiling it sets"),
            cpu::ceiling_summary(run.max.busy_cores(), run.max.mib_s(), cores),
        );
        table.target(
            &format!("{label}, p99 produce at half load ({:.0} MiB/s)", run.half.mib_s()),
            format!("{} ms", ms(run.half.produce.p99)),
            &format!("<= {} ms", TARGET_P99.as_millis()),
            Verdict::of(run.half.produce.p99 <= TARGET_P99),
        );
        table.figure(&format!("{label}, e2e p99 at half load"), format!("{} ms", ms(run.half.end_to_end.p99)));
        table.figure(
            &format!("{label}, keyed 1-record batches"),
            format!(
                "{} records/s, p99 {} ms",
                thousands(per_s(run.keyed.records, run.keyed.elapsed)),
                ms(run.keyed.produce.p99)
            ),
        );
    }
    table.print();

    let figures = |run: &LoadRun| {
        let (cost, ceiling) = cpu::json_figures(run.busy_cores(), run.mib_s(), cores);
        json!({
            "mib_s": round(run.mib_s(), 1),
            "records_s": round(per_s(run.records, run.elapsed), 0),
            "produce_p50_ms": round(run.produce.p50.as_secs_f64() * 1e3, 3),
            "produce_p99_ms": round(run.produce.p99.as_secs_f64() * 1e3, 3),
            "produce_p999_ms": round(run.produce.p999.as_secs_f64() * 1e3, 3),
            "e2e_p50_ms": round(run.end_to_end.p50.as_secs_f64() * 1e3, 3),
            "e2e_p99_ms": round(run.end_to_end.p99.as_secs_f64() * 1e3, 3),
            "e2e_p999_ms": round(run.end_to_end.p999.as_secs_f64() * 1e3, 3),
            "errors": run.errors,
            "cpu_cores": round(run.busy_cores(), 2),
            "cpu_core_s_per_gib": cost,
            "cpu_ceiling_mib_s": ceiling,
            "disk_written_mib_s": run.written.map(|w| round(mib_per_s(w, run.elapsed), 1)),
            "disk_bytes_per_byte": run.write_amplification().map(|a| round(a, 2)),
            "disk_ceiling_mib_s": run.disk_ceiling(disk_mib_s).map(|c| round(c, 1)),
        })
    };
    let mut line = json!({
        "bench": "kafka",
        "cores": cores,
        "partitions": args.partitions,
        "disk_buffered_fsync_mib_s": round(disk_mib_s, 1),
        "disk_direct_mib_s": limit.direct_mib_s.map(|v| round(v, 1)),
    });
    for (nodes, run) in &runs {
        line[format!("rf{nodes}")] =
            json!({ "max": figures(&run.max), "half": figures(&run.half), "keyed": figures(&run.keyed) });
        line[format!("rf{nodes}_to_disk")] = json!(round(run.max.mib_s() / disk_mib_s, 3));
    }
    json_line(&line);
    Ok(())
}
