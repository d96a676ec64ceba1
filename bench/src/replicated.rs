//! `bench replicated`: produce through real `robustmq` node processes, one node (RF 1) and three
//! nodes on loopback (RF 3), against the log-store's own append rate measured in the same run.
//!
//! In one run:
//! 1. **RF 1**: start a one-node cluster (the release `robustmq` binary next to this one), create
//!    a topic with one partition and RF 1, produce pre-built 64 KiB batches of 1 KiB records
//!    with `--concurrency` calls in flight (tokio tasks sharing one [`client::Client`]) for
//!    `--seconds`, after `--warmup-seconds` of untimed producing. Each call completes once the
//!    batch is committed by a Raft majority and applied on the leader; its latency is the
//!    commit latency. The leader's `/metrics` is scraped before and after the timed window:
//!    the raft-engine fsync histogram's `_count` gives fsyncs per second, and
//!    `robustmq_commit_latency_seconds` (the node's own view of the same latency) cross-checks
//!    the client's. CPU time of every process, and of the leader's `store-loop` thread, comes
//!    from `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat`.
//! 2. **log-store**: the same batches appended to a bare `log_store::Log` for
//!    `--log-store-seconds` (the `log-store` mode's own append loop, flush every 8 MiB): the
//!    denominator of "RF 1 ≥ 50 % of the log-store".
//! 3. **RF 3**: as 1, with three nodes on this machine and RF 3.
//! 4. **Failover**, on the RF 3 cluster: one producer loop (one call in flight) runs while the
//!    partition leader is killed with SIGKILL; the time from the kill to the first acknowledged
//!    produce that cannot be the dead leader's is the failover time. The killed node is
//!    restarted and waited for (caught up to the high watermark seen at its restart) between
//!    `--failover-trials` trials.
//! 5. The table with the targets, then one JSON line.
//!
//! The client talks to the partition leader first in phases 1 and 3 (as a Kafka producer would);
//! the failover client lists every node and relies on the client's retries. Every node started
//! is killed when the run ends, also on error or panic ([`LocalCluster`]'s `Drop`, plus
//! `PR_SET_PDEATHSIG` in case the bench itself is killed). Data lives under
//! `target/bench-tmp/replicated-<random>` and is removed at the end (`--keep` keeps it, with the
//! node logs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use client::Client;
use serde_json::json;

use crate::log_store::{append_reference, build_pool, PooledBatch};
use crate::report::{json_line, mib_per_s, per_s, round, thousands, Percentiles, Table, Verdict};
use crate::{cpu, disk};
use ::tests::cluster::LocalCluster;

/// The topic every phase produces to (partition 0).
const TOPIC: &str = "bench";
/// `Log::flush` interval of the log-store reference (the `log-store` mode's default).
const LOG_STORE_FLUSH_BYTES: u64 = 8 << 20;
/// raft-engine's fsync histogram (it registers it in the default registry the node exposes).
const SYNC_METRIC: &str = "raft_engine_sync_log_duration_seconds";
/// raft-engine's write histogram (a whole `Engine::write`, fsync included).
const WRITE_METRIC: &str = "raft_engine_write_duration_seconds";
/// The node's produce → commit-and-apply histogram.
const COMMIT_METRIC: &str = "robustmq_commit_latency_seconds";
/// An acknowledgement that arrives this long after the kill cannot come from the killed leader
/// (its last answers were on the wire at the kill; no new leader is elected this fast).
const OLD_LEADER_ACK_WINDOW: Duration = Duration::from_millis(100);
/// Produce calls slower than this are counted apart (they make the p999).
const SLOW_CALL: Duration = Duration::from_millis(50);
/// How long a node, a leader or a recovery may take before the run gives up.
const WAIT_MAX: Duration = Duration::from_secs(120);

const TARGET_RF1_TO_LOG: f64 = 0.50;
const TARGET_RF3_TO_RF1: f64 = 0.50;
const TARGET_P99: Duration = Duration::from_millis(10);
const TARGET_FAILOVER: Duration = Duration::from_secs(2);

/// Options of the `replicated` mode.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of timed producing, for RF 1 and again for RF 3.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Produce calls in flight (tokio tasks sharing one client) in the throughput phases.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Untimed producing before each timed window (connections, allocator, page cache).
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Seconds of the log-store append reference.
    #[arg(long, default_value_t = 5.0)]
    log_store_seconds: f64,
    /// Leader kills in the failover phase (0 skips it).
    #[arg(long, default_value_t = 3)]
    failover_trials: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Largest size of a batch.
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Directory for the nodes' data; a fresh subdirectory is made in it. Default:
    /// `target/bench-tmp` under the current directory (not /tmp, often tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The node binary. Default: `robustmq` next to this executable (`target/release/`).
    #[arg(long)]
    robustmq: Option<PathBuf>,
    /// Keep the data directories and node logs (their path is printed).
    #[arg(long)]
    keep: bool,
}

/// Runs the mode.
pub fn run(args: Args) -> Result<()> {
    ensure!(args.seconds > 0.0 && args.log_store_seconds > 0.0, "--seconds and --log-store-seconds must be positive");
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.record_bytes > 0 && args.batch_bytes > 0, "--record-bytes and --batch-bytes must be positive");
    let binary = match &args.robustmq {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.parent().context("the bench binary has no directory")?.join("robustmq"),
    };
    ensure!(
        binary.is_file(),
        "no node binary at {} (build it with `cargo build --release -p robustmq -p bench`, which bench/run.sh does)",
        binary.display()
    );
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?.join("target").join("bench-tmp"),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mut work =
        tempfile::Builder::new().prefix("replicated-").tempdir_in(&base).context("creating the bench directory")?;
    // --keep keeps it also when the run fails: that is when the logs matter most.
    work.disable_cleanup(args.keep);
    let filesystem = disk::filesystem_of(work.path());
    let cores = cpu::available();
    println!("bench replicated");
    println!("  node binary: {}", binary.display());
    println!("  directory  : {}", work.path().display());
    println!("  filesystem : {filesystem}");
    println!("  cores      : {cores} (the bench client and every node share them)");

    let pool = Arc::new(build_pool(args.record_bytes, args.batch_bytes)?);
    let batch_len = pool[0].bytes.len();
    let records_per_batch = pool[0].records;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let timed = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64(args.warmup_seconds);

    println!();
    println!(
        "1. RF 1: one node, {} calls in flight, {} × {} B records per {batch_len} B batch, {} s warm-up + {} s timed…",
        args.concurrency, records_per_batch, args.record_bytes, args.warmup_seconds, args.seconds
    );
    let rf1 = {
        let mut cluster = LocalCluster::start(&binary, &work.path().join("rf1"), 1)?;
        let figures = runtime.block_on(throughput(&mut cluster, 1, &pool, args.concurrency, warmup, timed))?;
        cluster.kill_all();
        figures
    };
    remove_dir(&work.path().join("rf1"), args.keep);
    rf1.print();

    println!();
    println!(
        "2. log-store reference: the same batches appended to a bare log_store::Log for {} s, Log::flush every {} B…",
        args.log_store_seconds, LOG_STORE_FLUSH_BYTES
    );
    let reference = append_reference(
        &work.path().join("log-store"),
        &pool,
        Duration::from_secs_f64(args.log_store_seconds),
        LOG_STORE_FLUSH_BYTES,
    )?;
    let log_mib_s = mib_per_s(reference.bytes, reference.elapsed);
    let log_records_s = per_s(reference.records, reference.elapsed);
    println!(
        "   {} batches in {:.2} s: {log_mib_s:.1} MiB/s, {} records/s",
        thousands(reference.batches as f64),
        reference.elapsed.as_secs_f64(),
        thousands(log_records_s)
    );

    println!();
    println!("3. RF 3: three nodes on this machine, otherwise as 1…");
    let mut cluster = LocalCluster::start(&binary, &work.path().join("rf3"), 3)?;
    let rf3 = runtime.block_on(throughput(&mut cluster, 3, &pool, args.concurrency, warmup, timed))?;
    rf3.print();

    println!();
    println!(
        "4. failover: one producer loop (1 call in flight) on the RF 3 cluster; kill -9 the partition leader, {} times…",
        args.failover_trials
    );
    let trials = runtime.block_on(failover(&mut cluster, &pool, args.failover_trials))?;
    cluster.kill_all();
    drop(cluster);
    if trials.iter().any(|trial| trial.failover > TARGET_FAILOVER) && !args.keep {
        keep_node_logs(&work.path().join("rf3"))?;
    }
    remove_dir(&work.path().join("rf3"), args.keep);

    let rf1_to_log = rf1.mib_s() / log_mib_s;
    let rf3_to_rf1 = rf3.mib_s() / rf1.mib_s();
    let failover_max = trials.iter().map(|t| t.failover).max();
    let fmt_ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    let lat = |p: &Percentiles| format!("{} / {} / {}", fmt_ms(p.p50), fmt_ms(p.p99), fmt_ms(p.p999));

    println!();
    println!(
        "replicated: {} B records, {batch_len} B batches ({records_per_batch} records), {} calls in flight, {} s per phase, {cores} cores, filesystem {filesystem}",
        args.record_bytes, args.concurrency, args.seconds
    );
    let mut table = Table::default();
    for phase in [&rf1, &rf3] {
        let rf = phase.rf;
        table
            .figure(&format!("RF{rf} MiB/s"), format!("{:.1}", phase.mib_s()))
            .figure(&format!("RF{rf} records/s"), thousands(phase.records_s()))
            .target(
                &format!("RF{rf} commit latency p50/p99/p999 (ms, per call)"),
                lat(&phase.latency),
                &format!("p99 ≤ {} ms", TARGET_P99.as_millis()),
                Verdict::of(phase.latency.p99 <= TARGET_P99),
            )
            .figure(
                &format!("RF{rf} node's view: mean commit ms, share ≤ 10 ms"),
                format!(
                    "{:.2}, {:.1} %",
                    phase.leader_diff.commit_mean().as_secs_f64() * 1e3,
                    100.0 * phase.leader_diff.commit_share_within_10ms()
                ),
            )
            .figure(&format!("RF{rf} leader fsyncs/s (raft-engine)"), format!("{:.0}", phase.fsyncs_s()))
            .figure(
                &format!("RF{rf} produce calls per fsync, mean fsync ms"),
                format!("{:.2}, {:.2}", phase.calls_per_fsync(), phase.leader_diff.sync_mean().as_secs_f64() * 1e3),
            )
            .figure(&format!("RF{rf} CPU cores busy (of {cores})"), phase.cpu_summary())
            .figure(
                &format!("RF{rf} CPU cost and the ceiling it sets"),
                cpu::ceiling_summary(phase.busy_cores(), phase.mib_s(), cores),
            )
            .figure(
                &format!("RF{rf} leader store-loop thread, cores busy"),
                phase.store_loop.map_or("?".to_string(), |cores| format!("{cores:.2}")),
            );
    }
    table
        .figure("log-store append MiB/s (same run)", format!("{log_mib_s:.1}"))
        .target(
            "RF1 / log-store append",
            format!("{:.1} %", 100.0 * rf1_to_log),
            &format!("≥ {:.0} %", 100.0 * TARGET_RF1_TO_LOG),
            Verdict::of(rf1_to_log >= TARGET_RF1_TO_LOG),
        )
        .target(
            "RF3 / RF1",
            format!("{:.1} %", 100.0 * rf3_to_rf1),
            &format!("≥ {:.0} %", 100.0 * TARGET_RF3_TO_RF1),
            Verdict::of(rf3_to_rf1 >= TARGET_RF3_TO_RF1),
        );
    if let Some(max) = failover_max {
        table
            .figure(
                "failover per trial (s)",
                trials.iter().map(|t| format!("{:.2}", t.failover.as_secs_f64())).collect::<Vec<_>>().join(" / "),
            )
            .figure(
                "  new leader seen after (s)",
                trials
                    .iter()
                    .map(|t| t.elected.map_or("?".to_string(), |d| format!("{:.2}", d.as_secs_f64())))
                    .collect::<Vec<_>>()
                    .join(" / "),
            )
            .target(
                "failover max (s)",
                format!("{:.2}", max.as_secs_f64()),
                &format!("≤ {} s", TARGET_FAILOVER.as_secs()),
                Verdict::of(max <= TARGET_FAILOVER),
            );
    }
    table.print();
    println!("  (latency: client-side per produce_batch call; fsyncs: diff of {SYNC_METRIC}_count on the leader over the timed window)");
    println!();

    let micros_ms = |d: Duration| round(d.as_secs_f64() * 1e3, 3);
    let phase_json = |phase: &Phase| {
        let (cost, ceiling) = cpu::json_figures(phase.busy_cores(), phase.mib_s(), cores);
        json!({
            "mib_s": round(phase.mib_s(), 1),
            "records_s": round(phase.records_s(), 0),
            "calls": phase.run.calls,
            "p50_ms": micros_ms(phase.latency.p50),
            "p99_ms": micros_ms(phase.latency.p99),
            "p999_ms": micros_ms(phase.latency.p999),
            "max_ms": micros_ms(phase.latency.max),
            "calls_over_50ms": phase.slow_calls(),
            "mean_ms": micros_ms(phase.latency.mean),
            "leader": phase.leader,
            "leader_fsyncs_s": round(phase.fsyncs_s(), 1),
            "leader_fsync_mean_ms": micros_ms(phase.leader_diff.sync_mean()),
            "calls_per_fsync": round(phase.calls_per_fsync(), 2),
            "server_commit_mean_ms": micros_ms(phase.leader_diff.commit_mean()),
            "server_commits": phase.leader_diff.commits,
            "server_commit_share_le_10ms": round(phase.leader_diff.commit_share_within_10ms(), 4),
            "leader_store_loop_cores": phase.store_loop.map(|cores| round(cores, 2)),
            "leader_raft_engine_write_share": round(phase.leader_diff.write_seconds / phase.run.elapsed.as_secs_f64(), 3),
            "cpu_core_s_per_gib": cost,
            "cpu_ceiling_mib_s": ceiling,
            "cpu_cores": phase.cpu.iter().map(|(name, cores)| (name.clone(), json!(round(*cores, 2)))).collect::<serde_json::Map<_, _>>(),
        })
    };
    json_line(&json!({
        "mode": "replicated",
        "record_bytes": args.record_bytes,
        "batch_bytes": args.batch_bytes,
        "records_per_batch": records_per_batch,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "cores": cores,
        "rf1": phase_json(&rf1),
        "rf3": phase_json(&rf3),
        "log_store_append_mib_s": round(log_mib_s, 1),
        "log_store_append_records_s": round(log_records_s, 0),
        "log_store_seconds": args.log_store_seconds,
        "ratio_rf1_to_log_store": round(rf1_to_log, 3),
        "ratio_rf3_to_rf1": round(rf3_to_rf1, 3),
        "failover_s": trials.iter().map(|t| round(t.failover.as_secs_f64(), 3)).collect::<Vec<_>>(),
        "failover_max_s": failover_max.map(|d| round(d.as_secs_f64(), 3)),
        "failover_new_leader_seen_s": trials.iter().map(|t| t.elected.map(|d| round(d.as_secs_f64(), 3))).collect::<Vec<_>>(),
        "failover_killed": trials.iter().map(|t| t.killed).collect::<Vec<_>>(),
        "failover_recovery_s": trials.iter().map(|t| round(t.recovery.as_secs_f64(), 2)).collect::<Vec<_>>(),
        "met_rf1_to_log_store": rf1_to_log >= TARGET_RF1_TO_LOG,
        "met_rf3_to_rf1": rf3_to_rf1 >= TARGET_RF3_TO_RF1,
        "met_p99_rf1": rf1.latency.p99 <= TARGET_P99,
        "met_p99_rf3": rf3.latency.p99 <= TARGET_P99,
        "met_failover": failover_max.map(|max| max <= TARGET_FAILOVER),
    }));

    if args.keep {
        eprintln!("data and node logs kept in {}", work.path().display());
    } else {
        work.close().context("removing the bench directory")?;
    }
    Ok(())
}

/// Copies the node logs of a phase out of its data directory before that is removed, so a
/// slow failover can be looked into; prints where they went.
fn keep_node_logs(phase: &Path) -> Result<()> {
    let kept = tempfile::Builder::new()
        .prefix("failover-logs-")
        .tempdir_in(phase.parent().and_then(Path::parent).unwrap_or(phase))?
        .keep();
    for entry in std::fs::read_dir(phase)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext.to_string_lossy().starts_with("log")) {
            std::fs::copy(&path, kept.join(path.file_name().unwrap_or_default()))?;
        }
    }
    eprintln!("a failover took longer than the target: node logs kept in {}", kept.display());
    Ok(())
}

fn remove_dir(dir: &Path, keep: bool) {
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and CPU

/// Counters read off a node's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    syncs: f64,
    sync_seconds: f64,
    write_seconds: f64,
    commits: f64,
    commit_seconds: f64,
    commits_within_10ms: f64,
}

impl Counters {
    fn minus(self, before: Counters) -> Counters {
        Counters {
            syncs: self.syncs - before.syncs,
            sync_seconds: self.sync_seconds - before.sync_seconds,
            write_seconds: self.write_seconds - before.write_seconds,
            commits: self.commits - before.commits,
            commit_seconds: self.commit_seconds - before.commit_seconds,
            commits_within_10ms: self.commits_within_10ms - before.commits_within_10ms,
        }
    }

    fn sync_mean(&self) -> Duration {
        Duration::from_secs_f64(if self.syncs > 0.0 { self.sync_seconds / self.syncs } else { 0.0 })
    }

    fn commit_mean(&self) -> Duration {
        Duration::from_secs_f64(if self.commits > 0.0 { self.commit_seconds / self.commits } else { 0.0 })
    }

    fn commit_share_within_10ms(&self) -> f64 {
        if self.commits > 0.0 {
            self.commits_within_10ms / self.commits
        } else {
            0.0
        }
    }
}

/// `GET /metrics` over plain HTTP/1.0.
fn scrape(admin: &str) -> Result<String> {
    let mut stream = TcpStream::connect(admin).with_context(|| format!("connecting to {admin}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("reading http://{admin}/metrics"))?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    Ok(body.to_string())
}

/// Sum of every sample of metric `name` whose labels contain `label` (e.g. `le="0.01"`).
fn sample(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(labelled) => match labelled.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if label.is_some_and(|label| !labels.split(',').any(|l| l == label)) {
            continue;
        }
        if let Some(value) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

fn counters(admin: &str) -> Result<Counters> {
    let text = scrape(admin)?;
    let need = |name: &str, label: Option<&str>| {
        sample(&text, name, label).with_context(|| {
            let similar: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("# TYPE") && (l.contains("sync") || l.contains("commit")))
                .collect();
            format!("{name} not in http://{admin}/metrics; similar: {similar:?}")
        })
    };
    Ok(Counters {
        syncs: need(&format!("{SYNC_METRIC}_count"), None)?,
        sync_seconds: need(&format!("{SYNC_METRIC}_sum"), None)?,
        write_seconds: need(&format!("{WRITE_METRIC}_sum"), None)?,
        commits: need(&format!("{COMMIT_METRIC}_count"), None)?,
        commit_seconds: need(&format!("{COMMIT_METRIC}_sum"), None)?,
        commits_within_10ms: need(&format!("{COMMIT_METRIC}_bucket"), Some("le=\"0.01\""))?,
    })
}

// ---------------------------------------------------------------------------------------------
// Throughput phases

/// What a produce loop measured.
#[derive(Default)]
struct ProduceRun {
    elapsed: Duration,
    calls: u64,
    records: u64,
    bytes: u64,
    latencies: Vec<Duration>,
}

/// `concurrency` tasks produce pooled batches round-robin through one client for `duration`.
/// Any failed call fails the run (the client already retried transient errors).
async fn produce_for(
    client: &Arc<Client>,
    pool: &Arc<Vec<PooledBatch>>,
    concurrency: usize,
    duration: Duration,
) -> Result<ProduceRun> {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (client, pool) = (client.clone(), pool.clone());
            tokio::spawn(async move {
                let mut run = ProduceRun { latencies: Vec::with_capacity(1 << 16), ..ProduceRun::default() };
                let mut next = task;
                while Instant::now() < deadline {
                    let pooled = &pool[next % pool.len()];
                    next += 1;
                    let batch = pooled.bytes.clone();
                    let before = Instant::now();
                    client.produce_batch(TOPIC, 0, batch).await.context("produce_batch")?;
                    run.latencies.push(before.elapsed());
                    run.calls += 1;
                    run.records += pooled.records;
                    run.bytes += pooled.bytes.len() as u64;
                }
                anyhow::Ok(run)
            })
        })
        .collect();
    let mut total = ProduceRun::default();
    for task in tasks {
        let run = task.await.context("a producer task panicked")??;
        total.calls += run.calls;
        total.records += run.records;
        total.bytes += run.bytes;
        total.latencies.extend(run.latencies);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Figures of one throughput phase.
struct Phase {
    rf: u32,
    leader: u64,
    run: ProduceRun,
    latency: Percentiles,
    leader_diff: Counters,
    /// (process, CPU cores busy on average over the timed window); `client` is the bench.
    cpu: Vec<(String, f64)>,
    /// CPU cores busy in the leader's store-loop thread (part of the leader's figure).
    store_loop: Option<f64>,
}

impl Phase {
    fn mib_s(&self) -> f64 {
        mib_per_s(self.run.bytes, self.run.elapsed)
    }

    fn records_s(&self) -> f64 {
        per_s(self.run.records, self.run.elapsed)
    }

    fn fsyncs_s(&self) -> f64 {
        self.leader_diff.syncs / self.run.elapsed.as_secs_f64()
    }

    fn calls_per_fsync(&self) -> f64 {
        if self.leader_diff.syncs > 0.0 {
            self.run.calls as f64 / self.leader_diff.syncs
        } else {
            0.0
        }
    }

    /// `"1.07 = n1 leader 0.80 + client 0.27"` (client: this process).
    fn cpu_summary(&self) -> String {
        cpu::summary(&self.cpu)
    }

    fn busy_cores(&self) -> f64 {
        cpu::total(&self.cpu)
    }

    /// Calls slower than [`SLOW_CALL`].
    fn slow_calls(&self) -> usize {
        self.run.latencies.iter().filter(|latency| **latency > SLOW_CALL).count()
    }

    fn print(&self) {
        println!(
            "   leader node {}: {} calls, {} records, {:.2} GiB in {:.2} s = {:.1} MiB/s, {} records/s",
            self.leader,
            thousands(self.run.calls as f64),
            thousands(self.run.records as f64),
            self.run.bytes as f64 / (1u64 << 30) as f64,
            self.run.elapsed.as_secs_f64(),
            self.mib_s(),
            thousands(self.records_s())
        );
        println!(
            "   commit latency per call: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms, mean {:.2} ms (node's histogram: mean {:.2} ms over {} commits, {:.1} % ≤ 10 ms)",
            self.latency.p50.as_secs_f64() * 1e3,
            self.latency.p99.as_secs_f64() * 1e3,
            self.latency.p999.as_secs_f64() * 1e3,
            self.latency.max.as_secs_f64() * 1e3,
            self.latency.mean.as_secs_f64() * 1e3,
            self.leader_diff.commit_mean().as_secs_f64() * 1e3,
            self.leader_diff.commits,
            100.0 * self.leader_diff.commit_share_within_10ms()
        );
        println!(
            "   leader raft-engine fsyncs: {:.0} in the window = {:.0}/s, mean {:.2} ms each ({:.0} % of the window), {:.2} produce calls per fsync",
            self.leader_diff.syncs,
            self.fsyncs_s(),
            self.leader_diff.sync_mean().as_secs_f64() * 1e3,
            100.0 * self.leader_diff.sync_seconds / self.run.elapsed.as_secs_f64(),
            self.calls_per_fsync()
        );
        println!("   calls slower than {} ms: {}", SLOW_CALL.as_millis(), self.slow_calls());
        println!("   CPU cores busy over the window: {}", self.cpu_summary());
        println!("   CPU cost: {}", cpu::ceiling_summary(self.busy_cores(), self.mib_s(), cpu::available()));
        println!(
            "   leader's store-loop thread: {} cores busy; in raft-engine writes {:.0} % of the window (of which fsync {:.0} %)",
            self.store_loop.map_or("?".to_string(), |cores| format!("{cores:.2}")),
            100.0 * self.leader_diff.write_seconds / self.run.elapsed.as_secs_f64(),
            100.0 * self.leader_diff.sync_seconds / self.run.elapsed.as_secs_f64()
        );
    }
}

/// Creates the topic with RF `rf`, warms up, and measures one timed window.
async fn throughput(
    cluster: &mut LocalCluster,
    rf: u32,
    pool: &Arc<Vec<PooledBatch>>,
    concurrency: usize,
    warmup: Duration,
    timed: Duration,
) -> Result<Phase> {
    cluster.wait_ready().await?;
    cluster.client(None).with_retry_deadline(Duration::from_secs(30)).create_topic(TOPIC, 1, rf).await?;
    let leader = cluster.leader(TOPIC, None).await?;
    let client = Arc::new(cluster.client(Some(leader)));
    if !warmup.is_zero() {
        produce_for(&client, pool, concurrency, warmup).await.context("warm-up")?;
    }
    let admin = cluster.node(leader).admin.clone();
    let pids: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .filter_map(|n| {
            let role = if n.id == leader { "leader" } else { "follower" };
            cluster.pid(n.id).map(|pid| (format!("n{} {role}", n.id), pid.to_string()))
        })
        .chain(std::iter::once(("client".to_string(), "self".to_string())))
        .collect();
    let cpu_before = cpu::Sample::take(&pids);
    let store_loop = cluster.pid(leader).and_then(|pid| cpu::thread_stat(pid, "store-loop"));
    let store_loop_before = store_loop.as_deref().and_then(cpu::cpu_seconds_of);
    let before = counters(&admin)?;
    let mut run = produce_for(&client, pool, concurrency, timed).await?;
    let after = counters(&admin)?;
    let cpu = cpu_before.cores_since();
    let store_loop = store_loop
        .as_deref()
        .and_then(cpu::cpu_seconds_of)
        .zip(store_loop_before)
        .map(|(after, before)| (after - before) / run.elapsed.as_secs_f64());
    cluster.check_alive()?;
    let latency = Percentiles::of(&mut run.latencies);
    Ok(Phase { rf, leader, run, latency, leader_diff: after.minus(before), cpu, store_loop })
}

// ---------------------------------------------------------------------------------------------
// Failover

/// One produce call of the failover loop.
#[derive(Clone, Copy)]
struct Call {
    start: Instant,
    end: Instant,
    ok: bool,
}

/// One leader kill.
struct Trial {
    killed: u64,
    /// Kill → first acknowledgement that cannot be the killed leader's.
    failover: Duration,
    /// Kill → a surviving node first reported a new leader (polled every 10 ms).
    elected: Option<Duration>,
    /// Restart → the restarted node caught up.
    recovery: Duration,
}

async fn failover(cluster: &mut LocalCluster, pool: &Arc<Vec<PooledBatch>>, trials: usize) -> Result<Vec<Trial>> {
    if trials == 0 {
        return Ok(Vec::new());
    }
    let client = Arc::new(cluster.client(None).with_retry_deadline(Duration::from_secs(60)));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (client, pool, calls, stop) = (client.clone(), pool.clone(), calls.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let batch = pool[next % pool.len()].bytes.clone();
                next += 1;
                let start = Instant::now();
                let ok = client.produce_batch(TOPIC, 0, batch).await.is_ok();
                calls.lock().unwrap().push(Call { start, end: Instant::now(), ok });
            }
        })
    };
    let mut results = Vec::new();
    let outcome: Result<()> = async {
        for trial in 1..=trials {
            // Steady state first: the loop must be acknowledging.
            let steady_from = Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let acked = calls.lock().unwrap().iter().filter(|c| c.ok && c.start >= steady_from).count();
            ensure!(acked > 0, "trial {trial}: the producer loop got no acknowledgement in 1 s before the kill");
            let leader = cluster.leader(TOPIC, None).await?;
            let metadata_leader = cluster.client_of(leader).cluster_status().await.ok().and_then(|s| s.metadata_leader);
            let killed_at = Instant::now();
            cluster.kill(leader)?;
            let survivors: Vec<u64> = cluster.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect();
            let deadline = killed_at + WAIT_MAX;
            let (mut ack, mut elected) = (None, None);
            while ack.is_none() || elected.is_none() {
                ensure!(Instant::now() < deadline, "trial {trial}: no acknowledgement or no new leader after the kill");
                if ack.is_none() {
                    ack = calls
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|c| {
                            c.ok && c.end > killed_at
                                && (c.start >= killed_at || c.end >= killed_at + OLD_LEADER_ACK_WINDOW)
                        })
                        .map(|c| c.end - killed_at);
                }
                if elected.is_none() {
                    for &id in &survivors {
                        if let Ok(topic) = cluster.client_of(id).describe_topic(TOPIC).await {
                            if topic.partitions.first().and_then(|p| p.leader).is_some_and(|l| l != leader) {
                                elected = Some(killed_at.elapsed());
                                break;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let failover = ack.expect("loop ends with an ack");
            let failed = calls.lock().unwrap().iter().filter(|c| !c.ok && c.end > killed_at).count();
            // Restart the killed node and wait until it has caught up.
            let new_leader = cluster.leader(TOPIC, Some(leader)).await?;
            let high_watermark = cluster
                .client_of(new_leader)
                .describe_topic(TOPIC)
                .await?
                .partitions
                .first()
                .map_or(0, |p| p.high_watermark);
            let restarted_at = Instant::now();
            cluster.spawn(leader)?;
            loop {
                ensure!(restarted_at.elapsed() < WAIT_MAX, "trial {trial}: node {leader} did not catch up after its restart");
                cluster.check_alive()?;
                if let Ok(topic) = cluster.client_of(leader).describe_topic(TOPIC).await {
                    if topic.partitions.first().is_some_and(|p| p.leader.is_some() && p.high_watermark >= high_watermark) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let recovery = restarted_at.elapsed();
            println!(
                "   trial {trial}: killed node {leader} (partition leader{}); new leader node {new_leader}, seen after {}; first ack after {:.3} s; {failed} failed calls; node {leader} restarted and caught up in {:.2} s",
                if metadata_leader == Some(leader) { " and metadata leader" } else { "" },
                elected.map_or("?".to_string(), |d| format!("{:.3} s", d.as_secs_f64())),
                failover.as_secs_f64(),
                recovery.as_secs_f64()
            );
            results.push(Trial { killed: leader, failover, elected, recovery });
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), producer).await;
    outcome?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n# TYPE raft_engine_sync_log_duration_seconds histogram\n\
        raft_engine_sync_log_duration_seconds_bucket{le=\"0.01\"} 7\n\
        raft_engine_sync_log_duration_seconds_sum 0.5\n\
        raft_engine_sync_log_duration_seconds_count 9\n\
        robustmq_produce_requests_total{outcome=\"ok\"} 3\n\
        robustmq_produce_requests_total{outcome=\"forwarded\"} 4\n";

    #[test]
    fn samples_are_read_by_exact_name_and_label() {
        assert_eq!(sample(TEXT, "raft_engine_sync_log_duration_seconds_count", None), Some(9.0));
        assert_eq!(sample(TEXT, "raft_engine_sync_log_duration_seconds_sum", None), Some(0.5));
        assert_eq!(sample(TEXT, "raft_engine_sync_log_duration_seconds_bucket", Some("le=\"0.01\"")), Some(7.0));
        assert_eq!(sample(TEXT, "raft_engine_sync_log_duration_seconds", None), None);
        assert_eq!(sample(TEXT, "robustmq_produce_requests_total", None), Some(7.0));
        assert_eq!(sample(TEXT, "robustmq_produce_requests_total", Some("outcome=\"ok\"")), Some(3.0));
    }
}
