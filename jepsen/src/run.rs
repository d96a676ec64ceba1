//! One run: a cluster of real node processes, a workload recording its history, a nemesis
//! injecting faults on a seeded schedule, then heal, recovery, a final read, the checker and
//! the report.
//!
//! Workloads: `native` (the project's own client: producers of unique values, one consumer per
//! partition), `kafka-queue` and `kafka-txn` (Python workers on librdkafka and kafka-python).
//! With network faults, nodes run each in a network namespace of its own (`net`, root) or on
//! loopback addresses of their own behind a fault proxy per node pair (`proxy`); otherwise on
//! loopback. The faults are in `nemesis`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::tests::cluster::{LocalCluster, Placement};
use anyhow::{bail, Context, Result};
use client::Client;

use crate::checker::{self, Verdict};
use crate::history::{Event, Function, Kind, Read};
use crate::nemesis::{self, Links, Nemesis};
use crate::net::Network;
use crate::proxy::Proxies;
use crate::report::{self, Fault};

pub(crate) const TOPIC: &str = "jepsen";
pub(crate) const PARTITIONS: u32 = 4;
const PRODUCERS: u64 = 4;
/// Longest a single operation may take before it is recorded as `info`.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the cluster may take to serve again after the final heal.
const RECOVERY_MAX: Duration = Duration::from_secs(60);

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: String,
    pub nemesis: Vec<Nemesis>,
    pub nodes: u64,
    pub time_limit: Duration,
    pub seed: u64,
    pub results: PathBuf,
    pub robustmq: PathBuf,
    /// Debug builds of the node only: acknowledge every N-th produce without appending it
    /// (the harness must then report lost writes).
    pub inject_drop_every: Option<u64>,
    /// How links between nodes are made when a fault needs them.
    pub network: NetworkMode,
}

/// How links between nodes are made when a fault needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Namespaces when root and only cuts are asked for; the proxies otherwise.
    Auto,
    /// Network namespaces (root): cuts only.
    Netns,
    /// A fault proxy per node pair (no root): cuts, delay, loss.
    Proxy,
}

/// A small deterministic random source (xorshift64*): the schedule replays from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// The history being recorded.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    fn record(&self, mut event: Event) {
        event.time_ms = self.start.elapsed().as_millis() as u64;
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        event.index = events.len();
        events.push(event);
    }
}

/// Runs the whole test; returns the checker's verdict (the report is written).
pub fn run(options: &Options) -> Result<Verdict> {
    if !matches!(options.workload.as_str(), "native" | "kafka-queue" | "kafka-txn") {
        bail!("workload {:?} is not built yet (native, kafka-queue and kafka-txn are)", options.workload);
    }
    std::fs::create_dir_all(&options.results)?;
    let data = options.results.join("data");
    // A replay into the same folder starts from empty nodes.
    let _ = std::fs::remove_dir_all(&data);
    // Nodes are spawned from this thread only (a current-thread runtime), so PR_SET_PDEATHSIG
    // ties them to the harness's life.
    let env: Vec<(String, String)> = options
        .inject_drop_every
        .map(|every| ("ROBUSTMQ_INJECT_DROP_EVERY".to_string(), every.to_string()))
        .into_iter()
        .collect();
    let (mut cluster, mut links) = start_cluster(options, &data, env)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(drive(&mut cluster, &mut links, options));
    cluster.kill_all();
    drop(links);
    let (history, faults, recovery, failure) = outcome?;
    // kafka-queue's second producer has no idempotence: at-least-once (see kafka_workers).
    let at_least_once: BTreeSet<u64> = if options.workload == "kafka-queue" { [1001].into() } else { BTreeSet::new() };
    let verdict = checker::check_with(&history, &at_least_once);
    crate::history::write(&options.results.join("history.jsonl"), &history)?;
    report::write(&options.results, options, &history, &faults, recovery, &verdict)?;
    if let Some(failure) = failure {
        bail!("the nemesis failed ({failure}); the history was still checked: see {}", options.results.display());
    }
    Ok(verdict)
}

/// What a run produced: its history, the fault windows, the recovery time after the final
/// heal, and why the nemesis stopped early, if it did.
type Outcome = (Vec<Event>, Vec<Fault>, Duration, Option<String>);

/// Places the nodes as the faults need (see [`NetworkMode`]) and starts them.
fn start_cluster(
    options: &Options,
    data: &std::path::Path,
    env: Vec<(String, String)>,
) -> Result<(LocalCluster, Links)> {
    let needs_links = options.nemesis.iter().any(|n| n.needs_links());
    let needs_proxies = options.nemesis.iter().any(|n| n.needs_proxies());
    if options.nemesis.contains(&Nemesis::Membership) && options.nodes <= 3 {
        bail!("the membership nemesis needs more nodes than the replication factor 3 (--nodes 4 or more)");
    }
    let proxied = match options.network {
        NetworkMode::Proxy => needs_links,
        NetworkMode::Netns if needs_proxies => bail!("delay and loss need the proxies: --network proxy or auto"),
        NetworkMode::Netns => false,
        NetworkMode::Auto => needs_links && (needs_proxies || !Network::available()),
    };
    let (mut cluster, links) = if proxied {
        let mut cluster =
            LocalCluster::plan(&options.robustmq, data, options.nodes, env, &Placement::LoopbackAddresses)?;
        let targets = cluster.nodes.iter().map(|n| (n.id, n.grpc.clone())).collect();
        let proxies = Proxies::start(&targets, options.seed)?;
        for node in &mut cluster.nodes {
            node.dial_via = proxies.dial_via(node.id);
        }
        (cluster, Links::Proxies(proxies))
    } else if needs_links {
        if !Network::available() {
            bail!("network namespaces need root and iproute2 (--network proxy works without)");
        }
        let network = Network::create(options.nodes, std::process::id())?;
        let cluster =
            LocalCluster::plan(&options.robustmq, data, options.nodes, env, &Placement::Namespaces(network.hosts()))?;
        (cluster, Links::Namespaces(network))
    } else {
        (LocalCluster::plan(&options.robustmq, data, options.nodes, env, &Placement::Loopback)?, Links::Direct)
    };
    if options.nemesis.contains(&Nemesis::Clock) {
        nemesis::prepare_clocks(&mut cluster, data)?;
    }
    for id in 1..=options.nodes {
        cluster.spawn(id)?;
    }
    Ok((cluster, links))
}

async fn drive(cluster: &mut LocalCluster, links: &mut Links, options: &Options) -> Result<Outcome> {
    cluster.wait_ready().await?;
    let replication = options.nodes.min(3) as u32;
    cluster.client(None).create_topic(TOPIC, PARTITIONS, replication).await.context("creating the topic")?;
    for partition in 0..PARTITIONS {
        wait_writable(cluster, partition).await?;
    }
    let recorder = Recorder { start: Instant::now(), events: Arc::default() };
    let stop = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    if options.workload.starts_with("kafka-") {
        let bootstrap = cluster.nodes.iter().map(|n| n.kafka.clone()).collect::<Vec<_>>().join(",");
        let workers = kafka_workers(&bootstrap, &options.workload, options, &recorder)?;
        let (faults, failure) = faults_until_the_end(cluster, links, options, recorder.start).await;
        for worker in workers {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
        if options.workload == "kafka-txn" {
            // The final read must skip aborted transactions: a read_committed Kafka consumer.
            let healed = Instant::now();
            for partition in 0..PARTITIONS {
                wait_writable(cluster, partition).await?;
            }
            let recovery = healed.elapsed();
            let partitions = PARTITIONS.to_string();
            let args = vec!["final-read".to_string(), bootstrap, TOPIC.to_string(), partitions];
            let reader = spawn_worker(args, &recorder, &options.results)?;
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
            let history = std::mem::take(&mut *recorder.events.lock().unwrap_or_else(|p| p.into_inner()));
            final_read_covers(&history, PARTITIONS)
                .with_context(|| format!("see {}", options.results.join("workers").display()))?;
            return Ok((history, faults, recovery, failure));
        }
        return finish(cluster, recorder, faults, failure).await;
    }
    for producer in 0..PRODUCERS {
        let (client, recorder, stop, next_value) =
            (cluster.client(None), recorder.clone(), stop.clone(), next_value.clone());
        let seed = options.seed.wrapping_add(producer);
        tasks.push(tokio::spawn(produce(client, recorder, stop, next_value, producer, seed)));
    }
    for partition in 0..PARTITIONS {
        let (client, recorder, stop) = (cluster.client(None), recorder.clone(), stop.clone());
        tasks.push(tokio::spawn(consume(client, recorder, stop, 100 + partition as u64, partition)));
    }

    let (faults, failure) = faults_until_the_end(cluster, links, options, recorder.start).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }

    finish(cluster, recorder, faults, failure).await
}

/// Runs the nemesis; if a fault step fails (a node crashed, a membership change could not be
/// made), heals everything so the run can still read, check and report, and returns the error.
async fn faults_until_the_end(
    cluster: &mut LocalCluster,
    links: &mut Links,
    options: &Options,
    start: Instant,
) -> (Vec<Fault>, Option<String>) {
    let mut faults = Vec::new();
    match nemesis::run(cluster, links, options, start, &mut faults).await {
        Ok(()) => (faults, None),
        Err(error) => {
            eprintln!("jepsen: the nemesis failed: {error:#}; healing everything for the final read");
            nemesis::heal_all(cluster, links, options);
            (faults, Some(format!("{error:#}")))
        }
    }
}

/// After the faults: waits for every partition to have a leader (the recovery time), reads
/// every partition whole, and returns the history.
async fn finish(
    cluster: &mut LocalCluster,
    recorder: Recorder,
    faults: Vec<Fault>,
    failure: Option<String>,
) -> Result<Outcome> {
    // Heal (the nemesis already restarted and resumed everything) and measure recovery.
    let healed = Instant::now();
    for partition in 0..PARTITIONS {
        wait_writable(cluster, partition).await?;
    }
    let recovery = healed.elapsed();
    let client = cluster.client(None);
    for partition in 0..PARTITIONS {
        let reads = read_everything(&client, partition).await?;
        let mut done = Event::new(900 + partition as u64, Kind::Ok, Function::FinalRead, 0);
        done.partition = Some(partition);
        done.reads = reads;
        recorder.record(done);
    }
    let history = std::mem::take(&mut *recorder.events.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((history, faults, recovery, failure))
}

/// Starts the librdkafka workers (`tests/kafka/jepsen_worker.py`). `kafka-queue`: an
/// idempotent producer (process 1000), a producer without idempotence (1001: at-least-once —
/// a write whose leader stepped down before answering can commit anyway and be sent again),
/// and two consumers of one group (2000 librdkafka, 2001 kafka-python). `kafka-txn`: two
/// transactional producers (3000, 3001) and the same two read_committed consumers. Each worker stops by itself at the time limit.
fn kafka_workers(
    bootstrap: &str,
    workload: &str,
    options: &Options,
    recorder: &Recorder,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let seconds = options.time_limit.as_secs().to_string();
    let partitions = PARTITIONS.to_string();
    let mut commands: Vec<Vec<String>> = Vec::new();
    for i in 0..2u64 {
        let producer = if workload == "kafka-txn" {
            let (process, first) = ((3000 + i).to_string(), ((i + 3) * 1_000_000_000).to_string());
            let txn_id = format!("jepsen-txn-{i}");
            ["txn-producer", bootstrap, TOPIC, &partitions, &process, &first, &txn_id, &seconds]
                .map(String::from)
                .to_vec()
        } else {
            let (process, first) = ((1000 + i).to_string(), ((i + 1) * 1_000_000_000).to_string());
            let idempotent = if i == 0 { "1" } else { "0" };
            ["producer", bootstrap, TOPIC, &partitions, &process, &first, idempotent, &seconds]
                .map(String::from)
                .to_vec()
        };
        commands.push(producer);
        // One librdkafka consumer and one kafka-python consumer by default: two implementations
        // of the group protocol. JEPSEN_KAFKA_CONSUMERS=librdkafka,librdkafka picks both.
        let process = (2000 + i).to_string();
        let choice = std::env::var("JEPSEN_KAFKA_CONSUMERS").unwrap_or_else(|_| "librdkafka,kafka-python".into());
        let library = choice.split(',').nth(i as usize).unwrap_or("librdkafka");
        let kind = if library == "kafka-python" { "consumer-python" } else { "consumer" };
        commands.push([kind, bootstrap, TOPIC, "jepsen-group", &process, &seconds].map(String::from).to_vec());
    }
    commands.into_iter().map(|args| spawn_worker(args, recorder, &options.results)).collect()
}

/// Runs one worker; a thread records the events it prints and reaps it. Its stderr (client
/// library logs; `JEPSEN_CLIENT_DEBUG` turns librdkafka's debug contexts on) goes to
/// `workers/<mode>-<process>.log` in the results folder.
fn spawn_worker(
    args: Vec<String>,
    recorder: &Recorder,
    results: &std::path::Path,
) -> Result<std::thread::JoinHandle<()>> {
    use std::io::BufRead;
    let script = PathBuf::from("tests/kafka/jepsen_worker.py");
    anyhow::ensure!(script.is_file(), "run from the repository root: {} is missing", script.display());
    let python =
        std::env::var_os("ROBUSTMQ_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    anyhow::ensure!(python.is_file(), "{} is missing: tests/run.sh creates the venv", python.display());
    let mut command = std::process::Command::new(&python);
    command.arg(&script).args(&args).stdout(std::process::Stdio::piped()).stderr(worker_log(results, &args)?);
    // Workers die with the harness (as the nodes do) instead of polling dead brokers for the
    // rest of their time limit.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| format!("starting {}", script.display()))?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let recorder = recorder.clone();
    Ok(std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => recorder.record(event),
                Err(error) => eprintln!("jepsen: unreadable worker event ({error}): {line}"),
            }
        }
        let _ = child.wait();
    }))
}

fn worker_log(results: &std::path::Path, args: &[String]) -> Result<std::process::Stdio> {
    let dir = results.join("workers");
    std::fs::create_dir_all(&dir)?;
    let name = format!("{}-{}.log", args[0], args.get(4).map_or("x", |s| s.as_str()));
    Ok(std::fs::File::create(dir.join(name))?.into())
}

/// Waits until a partition has a leader again, as the leader itself says (a node without a
/// replica of the partition does not know its leader).
async fn wait_writable(cluster: &LocalCluster, partition: u32) -> Result<()> {
    let deadline = Instant::now() + RECOVERY_MAX;
    loop {
        for node in &cluster.nodes {
            let client = cluster.client_of(node.id);
            if let Ok(topic) = client.describe_topic(TOPIC).await {
                if topic.partitions.get(partition as usize).and_then(|p| p.leader) == Some(node.id) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("partition {partition} has no leader {} s after the heal", RECOVERY_MAX.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn produce(
    client: Client,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicU64>,
    producer: u64,
    seed: u64,
) {
    // Idempotent: the client's own retries must not store a value twice.
    let client = client.with_retry_deadline(Duration::from_secs(2)).idempotent();
    let mut rng = Rng::new(seed);
    let mut process = producer;
    while !stop.load(Ordering::Relaxed) {
        let value = next_value.fetch_add(1, Ordering::Relaxed);
        let partition = rng.below(PARTITIONS as u64) as u32;
        let mut invoke = Event::new(process, Kind::Invoke, Function::Send, 0);
        invoke.value = Some(value);
        invoke.partition = Some(partition);
        recorder.record(invoke.clone());
        let record = client::record(None, value.to_string().as_bytes());
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, client.produce(TOPIC, partition, &[record])).await;
        let mut done = invoke;
        match outcome {
            Ok(Ok((base, _))) => {
                done.kind = Kind::Ok;
                done.offset = Some(base);
            }
            // Refused before anything was proposed: certainly not written.
            Ok(Err(client::Error::Rejected {
                code: client::Code::InvalidArgument | client::Code::NotFound,
                message,
            })) => {
                done.kind = Kind::Fail;
                done.error = Some(message);
            }
            // Anything else may or may not have been appended.
            Ok(Err(error)) => {
                done.kind = Kind::Info;
                done.error = Some(error.to_string());
            }
            Err(_) => {
                done.kind = Kind::Info;
                done.error = Some("timed out".into());
            }
        }
        let unknown = done.kind == Kind::Info;
        recorder.record(done);
        if unknown {
            // Jepsen's rule: a process whose operation is indeterminate is retired.
            process += PRODUCERS * 1000;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn consume(client: Client, recorder: Recorder, stop: Arc<AtomicBool>, process: u64, partition: u32) {
    let client = client.with_retry_deadline(Duration::from_secs(2));
    let mut position = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let invoke = Event::new(process, Kind::Invoke, Function::Poll, 0);
        recorder.record(invoke.clone());
        let outcome =
            tokio::time::timeout(OPERATION_TIMEOUT, client.fetch_records(TOPIC, partition, position, 1 << 20, 500))
                .await;
        let mut done = invoke;
        match outcome {
            Ok(Ok((records, _))) => {
                done.kind = Kind::Ok;
                done.reads = records.iter().filter_map(|r| to_read(partition, r)).collect();
                if let Some(last) = records.last() {
                    position = last.offset.0 + 1;
                }
            }
            Ok(Err(error)) => {
                done.kind = Kind::Fail;
                done.error = Some(error.to_string());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                done.kind = Kind::Fail;
                done.error = Some("timed out".into());
            }
        }
        recorder.record(done);
    }
}

fn to_read(partition: u32, record: &log_store::batch::Record) -> Option<Read> {
    let value = std::str::from_utf8(record.value.as_ref()?).ok()?.parse().ok()?;
    Some(Read { partition, offset: record.offset.0, value })
}

/// Reads a whole partition from its start to its high watermark.
async fn read_everything(client: &Client, partition: u32) -> Result<Vec<Read>> {
    let mut reads = Vec::new();
    let mut position = 0u64;
    let deadline = Instant::now() + RECOVERY_MAX;
    loop {
        let (records, high_watermark) = match client.fetch_records(TOPIC, partition, position, 4 << 20, 0).await {
            Ok(answer) => answer,
            Err(error) if Instant::now() < deadline => {
                eprintln!("jepsen: the final read of partition {partition} retries: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(error) => bail!("final read of partition {partition}: {error}"),
        };
        reads.extend(records.iter().filter_map(|r| to_read(partition, r)));
        if let Some(last) = records.last() {
            position = last.offset.0 + 1;
        }
        if position >= high_watermark || records.is_empty() {
            return Ok(reads);
        }
    }
}

/// Fails unless the history holds a completed final read of every partition: without one, lost
/// writes cannot be told from unseen ones (the checker skips that check), so such a run is a
/// failed run, never a valid one.
fn final_read_covers(history: &[Event], partitions: u32) -> Result<()> {
    let read: BTreeSet<u32> = history
        .iter()
        .filter(|e| e.f == Function::FinalRead && e.kind == Kind::Ok)
        .filter_map(|e| e.partition)
        .collect();
    if (0..partitions).any(|p| !read.contains(&p)) {
        bail!("the final read covered partitions {read:?} of 0..{partitions}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_a_whole_final_read_fails() {
        let read = |partition: u32, kind: Kind| {
            let mut event = Event::new(900, kind, Function::FinalRead, 0);
            event.partition = Some(partition);
            event
        };
        assert!(final_read_covers(&[], 2).is_err());
        assert!(final_read_covers(&[read(0, Kind::Ok), read(1, Kind::Fail)], 2).is_err());
        assert!(final_read_covers(&[read(0, Kind::Ok), read(1, Kind::Ok)], 2).is_ok());
    }
}
