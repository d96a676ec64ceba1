//! `bench log-store`: one partition's `log_store::Log` on local disk, against the disk's limit.
//!
//! In one run: (1) measure the disk's sequential write limit on the filesystem of the bench
//! directory ([`crate::disk`]); (2) append pre-built 64 KiB RecordBatch v2 batches for `--seconds`,
//! flushing every `--flush-bytes`; (3) read everything back with a `LogReader`; (1b) delete the log
//! and measure the buffered disk pattern once more, keeping the higher figure; (4) print the figures beside the
//! targets of the log-store issue, then one JSON line.
//!
//! Targets: append ≥ 70 % of the disk's sequential bandwidth (the buffered + fsync figure, the
//! log's own access pattern) and ≥ 1 M records/s; read ≥ 2× append.
//!
//! The crate `log_store` is named `::log_store` here, because this module has the same name.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use serde_json::json;

use ::log_store::batch::{self, BatchBuilder, Compression, NewRecord};
use ::log_store::{Log, LogConfig, Offset};

use crate::disk::{self, Pattern};
use crate::report::{json_line, mib_per_s, micros, per_s, round, thousands, Percentiles, Table, Verdict};

/// Pre-built batches appended round-robin, so the timed loop measures the log, not the builder.
const POOL_BATCHES: usize = 16;
/// Bytes asked for per `LogReader::read` call.
const READ_BYTES: usize = 1 << 20;

const TARGET_APPEND_TO_DISK: f64 = 0.70;
const TARGET_RECORDS_S: f64 = 1_000_000.0;
const TARGET_READ_TO_APPEND: f64 = 2.0;

/// Options of the `log-store` mode.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of appending.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Directory on the filesystem to measure; a fresh subdirectory is made in it and removed at
    /// the end. Default: `target/bench-tmp` under the current directory (not /tmp, often tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Largest size of a batch; records are added while the batch stays within it.
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Call `Log::flush` after every this many appended bytes (0: only the final flush).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    flush_bytes: u64,
    /// Bytes written by the O_DIRECT disk measurement (the buffered one runs for `--seconds`).
    #[arg(long, default_value_t = 1 << 30)]
    disk_bytes: u64,
    /// Drop the page cache before reading (needs root and a writable /proc/sys/vm/drop_caches);
    /// without it, or when that is impossible, the read is warm (from the page cache).
    #[arg(long)]
    cold: bool,
}

/// Runs the mode.
pub fn run(args: Args) -> Result<()> {
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    ensure!(args.record_bytes > 0 && args.batch_bytes > 0, "--record-bytes and --batch-bytes must be positive");
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?.join("target").join("bench-tmp"),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let work =
        tempfile::Builder::new().prefix("log-store-").tempdir_in(&base).context("creating the bench directory")?;
    let filesystem = disk::filesystem_of(work.path());
    println!("bench log-store");
    println!("  directory : {}", work.path().display());
    println!("  filesystem: {filesystem}");
    if filesystem.starts_with("tmpfs") || filesystem.starts_with("ramfs") {
        println!("  WARNING   : this is a memory filesystem; pass --dir on a real disk");
    }

    let pool = build_pool(args.record_bytes, args.batch_bytes)?;
    let batch_len = pool[0].bytes.len();
    let records_per_batch = pool[0].records;

    println!();
    println!(
        "1. disk limit: O_DIRECT {} MiB; buffered {batch_len} B pwrites + fdatasync every {} B for {} s (as long as the append)…",
        args.disk_bytes >> 20,
        args.flush_bytes,
        args.seconds
    );
    let pattern = Pattern {
        direct_bytes: args.disk_bytes,
        buffered_duration: Duration::from_secs_f64(args.seconds),
        write_bytes: batch_len,
        fsync_every: args.flush_bytes,
    };
    disk::wait_for_idle_storage();
    let mut limit = disk::measure(work.path(), pattern)?;
    for note in &limit.notes {
        println!("   note: {note}");
    }
    println!(
        "   direct (O_DIRECT, 64 KiB)           : {} — measured with {}",
        fmt_mib(limit.direct_mib_s),
        limit.method
    );
    println!(
        "   buffered pwrite + fdatasync         : {:.1} MiB/s — the log's own pattern (no O_DIRECT); measured again after the read",
        limit.buffered_fsync_mib_s
    );

    println!();
    println!(
        "2. append: {POOL_BATCHES} pre-built batches of {records_per_batch} × {} B records ({batch_len} B each), for {} s, {}…",
        args.record_bytes,
        args.seconds,
        flush_policy(args.flush_bytes)
    );
    let log_dir = work.path().join("log");
    let mut log = Log::open(&log_dir, LogConfig::default()).context("opening the log")?;
    let append = append_for(&mut log, &pool, Duration::from_secs_f64(args.seconds), args.flush_bytes)?;
    let append_mib_s = mib_per_s(append.bytes, append.elapsed);
    let append_records_s = per_s(append.records, append.elapsed);
    let mut latencies = append.latencies.clone();
    let latency = Percentiles::of(&mut latencies);
    let mut flush_latencies = append.flush_latencies.clone();
    let flush = Percentiles::of(&mut flush_latencies);
    let share = |part: Duration| 100.0 * part.as_secs_f64() / append.elapsed.as_secs_f64();
    println!(
        "   {} batches, {} records, {:.2} GiB in {:.2} s; {} flushes",
        thousands(append.batches as f64),
        thousands(append.records as f64),
        append.bytes as f64 / (1u64 << 30) as f64,
        append.elapsed.as_secs_f64(),
        flush.count
    );
    println!(
        "   time split: Log::append {:.1} %, Log::flush {:.1} %, copying the pooled batch into the append buffer (a {} B memcpy per append) {:.1} %, loop {:.1} %",
        share(append.in_append),
        share(append.in_flush),
        batch_len,
        share(append.in_copy),
        share(append.elapsed.saturating_sub(append.in_append + append.in_flush + append.in_copy))
    );
    println!(
        "   flush latency: mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        micros(flush.mean),
        micros(flush.p50),
        micros(flush.p99),
        micros(flush.max)
    );

    println!();
    let cold = args.cold && drop_page_cache()?;
    let read_kind = if cold {
        "cold (page cache dropped)"
    } else if args.cold {
        "warm (page cache) — could not drop the page cache (needs root and a writable /proc/sys/vm/drop_caches)"
    } else {
        "warm (page cache)"
    };
    println!("3. read everything back, {read_kind}…");
    let read = read_all(&log)?;
    ensure!(
        read.records == append.records && read.bytes == append.bytes,
        "read back {} records / {} B, appended {} records / {} B",
        read.records,
        read.bytes,
        append.records,
        append.bytes
    );
    let read_mib_s = mib_per_s(read.bytes, read.elapsed);
    let read_records_s = per_s(read.records, read.elapsed);
    let read_share = |part: Duration| 100.0 * part.as_secs_f64() / read.elapsed.as_secs_f64();
    println!(
        "   {} records, {:.2} GiB in {:.2} s, {} read calls; time split: LogReader::read {:.1} % (pread + CRC check), batches() {:.1} % (CRC check again)",
        thousands(read.records as f64),
        read.bytes as f64 / (1u64 << 30) as f64,
        read.elapsed.as_secs_f64(),
        thousands(read.calls as f64),
        read_share(read.in_read),
        read_share(read.in_iterate)
    );
    log.close().context("closing the log")?;
    // Free the log's page cache first, so this run reuses memory as the append did.
    std::fs::remove_dir_all(&log_dir).with_context(|| format!("removing {}", log_dir.display()))?;
    disk::wait_for_idle_storage();

    println!();
    let again = limit.measure_buffered_again(work.path(), pattern)?;
    println!(
        "4. log deleted; disk limit again, buffered pwrite + fdatasync for {} s: {again:.1} MiB/s (before the append: {:.1}); the higher, {:.1} MiB/s, is the denominator",
        args.seconds,
        limit.buffered_runs_mib_s[0],
        limit.buffered_fsync_mib_s
    );

    let ratio_append_to_disk = append_mib_s / limit.buffered_fsync_mib_s;
    let ratio_read_to_append = read_mib_s / append_mib_s;
    let direct_ratio = limit.direct_mib_s.map(|direct| append_mib_s / direct);

    println!();
    println!(
        "log-store: {} B records, {batch_len} B batches ({records_per_batch} records), {} s, {}, filesystem {filesystem}",
        args.record_bytes,
        args.seconds,
        flush_policy(args.flush_bytes)
    );
    let mut table = Table::default();
    table
        .figure("append MiB/s", format!("{append_mib_s:.1}"))
        .target(
            "append records/s",
            thousands(append_records_s),
            &format!("≥ {}", thousands(TARGET_RECORDS_S)),
            Verdict::of(append_records_s >= TARGET_RECORDS_S),
        )
        .figure(
            "append latency p50/p99/p999 (µs, per batch)",
            format!("{:.0} / {:.0} / {:.0}", micros(latency.p50), micros(latency.p99), micros(latency.p999)),
        )
        .figure("append latency mean (µs, per batch)", format!("{:.1}", micros(latency.mean)))
        .figure("disk: buffered + fdatasync MiB/s (denominator)", format!("{:.1}", limit.buffered_fsync_mib_s))
        .figure(
            "  (runs before / after the append)",
            limit.buffered_runs_mib_s.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" / "),
        )
        .figure(
            &format!("disk: O_DIRECT MiB/s ({})", limit.method),
            limit.direct_mib_s.map_or("n/a".to_string(), |v| format!("{v:.1}")),
        )
        .target(
            "append / disk (buffered + fdatasync)",
            format!("{:.1} %", 100.0 * ratio_append_to_disk),
            &format!("≥ {:.0} %", 100.0 * TARGET_APPEND_TO_DISK),
            Verdict::of(ratio_append_to_disk >= TARGET_APPEND_TO_DISK),
        )
        .figure(
            "append / disk (O_DIRECT), for reference",
            direct_ratio.map_or("n/a".to_string(), |r| format!("{:.1} %", 100.0 * r)),
        )
        .figure(&format!("read MiB/s, {}", if cold { "cold" } else { "warm" }), format!("{read_mib_s:.1}"))
        .figure("read records/s", thousands(read_records_s))
        .target(
            "read / append",
            format!("{ratio_read_to_append:.2}×"),
            &format!("≥ {TARGET_READ_TO_APPEND:.0}×"),
            Verdict::of(ratio_read_to_append >= TARGET_READ_TO_APPEND),
        );
    table.print();
    println!("  (the append ratio's denominator is the higher buffered + fdatasync figure: the log writes through the page cache, not O_DIRECT)");
    println!();

    json_line(&json!({
        "mode": "log-store",
        "record_bytes": args.record_bytes,
        "batch_bytes": args.batch_bytes,
        "seconds": args.seconds,
        "append_mib_s": round(append_mib_s, 1),
        "append_records_s": round(append_records_s, 0),
        "append_p50_us": round(micros(latency.p50), 1),
        "append_p99_us": round(micros(latency.p99), 1),
        "append_p999_us": round(micros(latency.p999), 1),
        "read_mib_s": round(read_mib_s, 1),
        "read_records_s": round(read_records_s, 0),
        "disk_direct_mib_s": limit.direct_mib_s.map(|v| round(v, 1)),
        "disk_buffered_fsync_mib_s": round(limit.buffered_fsync_mib_s, 1),
        "disk_buffered_fsync_runs_mib_s": limit.buffered_runs_mib_s.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "disk_method": limit.method,
        "ratio_append_to_disk": round(ratio_append_to_disk, 3),
        "ratio_read_to_append": round(ratio_read_to_append, 3),
        "read_cold": cold,
        "flush_bytes": args.flush_bytes,
        "records_per_batch": records_per_batch,
        "append_mean_us": round(micros(latency.mean), 1),
        "append_flush_share": round(share(append.in_flush) / 100.0, 3),
        "flush_mean_us": round(micros(flush.mean), 0),
    }));

    work.close().context("removing the bench directory")?;
    Ok(())
}

/// A pre-built batch.
pub(crate) struct PooledBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: u64,
}

/// Builds [`POOL_BATCHES`] batches of random-valued records, each within `batch_bytes`.
pub(crate) fn build_pool(record_bytes: usize, batch_bytes: usize) -> Result<Vec<PooledBatch>> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut seed = 1u64;
    let mut pool = Vec::with_capacity(POOL_BATCHES);
    for _ in 0..POOL_BATCHES {
        let mut builder = BatchBuilder::new(Compression::None);
        // Grows by at most one varint byte per field as offset deltas grow: keep some slack.
        let mut next_record_len = 0;
        while builder.is_empty() || builder.uncompressed_len() + next_record_len <= batch_bytes {
            let mut value = vec![0u8; record_bytes];
            disk::fill_pseudo_random(&mut value, seed);
            seed += 1;
            let record = NewRecord { key: None, value: Some(Bytes::from(value)), headers: vec![], timestamp: now_ms };
            let before = builder.uncompressed_len();
            builder.push(&record);
            next_record_len = builder.uncompressed_len() - before + 2;
        }
        let records = builder.len() as u64;
        let bytes = builder.build()?;
        pool.push(PooledBatch { bytes, records });
    }
    Ok(pool)
}

/// What the timed append loop measured.
pub(crate) struct AppendRun {
    pub(crate) elapsed: Duration,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
    pub(crate) batches: u64,
    pub(crate) latencies: Vec<Duration>,
    flush_latencies: Vec<Duration>,
    in_append: Duration,
    in_flush: Duration,
    in_copy: Duration,
}

/// Appends pooled batches round-robin until `duration` has passed, flushing every `flush_bytes`
/// and once at the end, all inside the timed region.
pub(crate) fn append_for(
    log: &mut Log,
    pool: &[PooledBatch],
    duration: Duration,
    flush_bytes: u64,
) -> Result<AppendRun> {
    let largest = pool.iter().map(|batch| batch.bytes.len()).max().unwrap_or(0);
    let mut buffer = Vec::with_capacity(largest);
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut flush_latencies = Vec::with_capacity(4096);
    let (mut bytes, mut records, mut batches, mut since_flush) = (0u64, 0u64, 0u64, 0u64);
    let (mut in_append, mut in_flush, mut in_copy) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let expected_first = log.next_offset();
    let start = Instant::now();
    let deadline = start + duration;
    let mut now = start;
    while now < deadline {
        let pooled = &pool[batches as usize % pool.len()];
        buffer.clear();
        buffer.extend_from_slice(&pooled.bytes);
        let before_append = Instant::now();
        in_copy += before_append - now;
        let appended = log.append(&mut buffer).context("append")?;
        let after_append = Instant::now();
        let latency = after_append - before_append;
        in_append += latency;
        latencies.push(latency);
        if batches == 0 && appended.base_offset != expected_first {
            bail!("first append landed at {}, expected {}", appended.base_offset, expected_first);
        }
        batches += 1;
        records += pooled.records;
        bytes += buffer.len() as u64;
        since_flush += buffer.len() as u64;
        now = after_append;
        if flush_bytes > 0 && since_flush >= flush_bytes {
            log.flush().context("flush")?;
            since_flush = 0;
            let after_flush = Instant::now();
            flush_latencies.push(after_flush - now);
            in_flush += after_flush - now;
            now = after_flush;
        }
    }
    let before_flush = Instant::now();
    log.flush().context("final flush")?;
    let end = Instant::now();
    flush_latencies.push(end - before_flush);
    in_flush += end - before_flush;
    Ok(AppendRun {
        elapsed: end - start,
        bytes,
        records,
        batches,
        latencies,
        flush_latencies,
        in_append,
        in_flush,
        in_copy,
    })
}

/// The log's own append rate for the `replicated` mode: opens a fresh `Log` in `dir`, appends
/// `pool` round-robin for `duration` with [`append_for`] (flushing every `flush_bytes`), closes
/// and removes it.
pub(crate) fn append_reference(
    dir: &Path,
    pool: &[PooledBatch],
    duration: Duration,
    flush_bytes: u64,
) -> Result<AppendRun> {
    let mut log = Log::open(dir, LogConfig::default()).context("opening the log")?;
    let run = append_for(&mut log, pool, duration, flush_bytes)?;
    log.close().context("closing the log")?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(run)
}

/// What reading the log back measured.
struct ReadRun {
    elapsed: Duration,
    bytes: u64,
    records: u64,
    calls: u64,
    in_read: Duration,
    in_iterate: Duration,
}

/// Reads the whole log from its start offset, `READ_BYTES` per call, walking the batches.
fn read_all(log: &Log) -> Result<ReadRun> {
    let reader = log.reader();
    let end = log.next_offset();
    let mut offset: Offset = log.log_start_offset();
    let (mut bytes, mut records, mut calls) = (0u64, 0u64, 0u64);
    let (mut in_read, mut in_iterate) = (Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    while offset < end {
        let before_read = Instant::now();
        let chunk = reader.read(offset, READ_BYTES).with_context(|| format!("read at offset {offset}"))?;
        let after_read = Instant::now();
        in_read += after_read - before_read;
        calls += 1;
        if chunk.is_empty() {
            bail!("empty read at offset {offset}, before the end {end}");
        }
        bytes += chunk.len() as u64;
        for batch in batch::batches(chunk) {
            let batch = batch.with_context(|| format!("a batch read at offset {offset}"))?;
            let header = batch.header();
            records += header.records_count as u64;
            offset = header.last_offset().plus(1);
        }
        in_iterate += after_read.elapsed();
    }
    Ok(ReadRun { elapsed: start.elapsed(), bytes, records, calls, in_read, in_iterate })
}

/// Drops the page cache if we are root and /proc/sys/vm/drop_caches is writable; returns whether
/// it was dropped.
fn drop_page_cache() -> Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(false);
    }
    let path = Path::new("/proc/sys/vm/drop_caches");
    let Ok(mut file) = OpenOptions::new().write(true).open(path) else {
        return Ok(false);
    };
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    Ok(file.write_all(b"3\n").is_ok())
}

fn flush_policy(flush_bytes: u64) -> String {
    if flush_bytes == 0 {
        "Log::flush only at the end".to_string()
    } else {
        format!("Log::flush every {flush_bytes} B")
    }
}

fn fmt_mib(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), |v| format!("{v:.1} MiB/s"))
}
