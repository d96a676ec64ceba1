//! Crash safety: a child process appends and flushes until it is killed with SIGKILL at a random
//! moment; the parent reopens the log and checks every batch up to the last reported flush,
//! that no partial batch is visible, and that appends continue. Every other round also cuts the
//! newest segment at a random point after the last flush, as a power loss would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use log_store::batch::Compression;
use log_store::{Log, LogConfig, Offset};

use crate::common::{payload, payload_batch, read_all};

const CHILD_ENV: &str = "LOG_STORE_CRASH_CHILD_DIR";
const TEST_NAME: &str = "crash::kill_9_while_appending_keeps_every_flushed_batch";

fn crash_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256 * 1024,
        index_interval_bytes: 2048,
        write_behind_bytes: 16 * 1024,
        ..LogConfig::default()
    }
}

/// A small xorshift generator: the test prints its seed so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_while_appending_keeps_every_flushed_batch() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        append_until_killed(&dir);
        return;
    }
    let seed = std::env::var("LOG_STORE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("crash test seed {seed} (replay with LOG_STORE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..16 {
        let flushes_before_kill = 1 + rng.next() % 25;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last_flushed = None;
        let mut seen = 0;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if let Some(offset) = line.unwrap().strip_prefix("flushed ") {
                last_flushed = Some(offset.parse::<u64>().unwrap());
                seen += 1;
                if seen == flushes_before_kill {
                    std::thread::sleep(Duration::from_micros(rng.next() % 3000));
                    break;
                }
            }
        }
        child.kill().unwrap();
        // Flushes the child reported before it died also count.
        for line in lines {
            if let Some(offset) = line.unwrap().strip_prefix("flushed ") {
                last_flushed = Some(offset.parse::<u64>().unwrap());
            }
        }
        child.wait().unwrap();
        let last_flushed = last_flushed.expect("the child reported at least one flush");
        if round % 2 == 1 {
            lose_unflushed_tail(dir.path(), &mut rng);
        }

        let mut log = Log::open(dir.path(), crash_config()).unwrap();
        let next = log.next_offset().0;
        assert!(next >= last_flushed, "round {round}: next offset {next} is below the flushed {last_flushed}");
        let records = read_all(&log.reader());
        assert_eq!(records.len() as u64, next, "round {round}: offsets must be dense from 0");
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.offset, Offset(i as u64));
            assert_eq!(record.value.as_deref(), Some(&payload(i as u64)[..]), "round {round}: record {i}");
        }
        let mut batch = payload_batch(next, 3, Compression::None);
        assert_eq!(log.append(&mut batch).unwrap().base_offset, Offset(next), "round {round}: appends continue");
        log.close().unwrap();
    }
}

/// Simulates a power loss on top of the kill: the newest segment loses a random part of what
/// was written after the recovery point (possibly mid-batch), as an un-fsynced page cache would.
/// The recovery point is read from the checkpoint file (layout in docs/log-format.md).
fn lose_unflushed_tail(dir: &std::path::Path, rng: &mut Rng) {
    let checkpoint = std::fs::read(dir.join("log.checkpoint")).unwrap();
    let word = |i: usize| u64::from_be_bytes(checkpoint[12 + 8 * i..20 + 8 * i].try_into().unwrap());
    let (recovery_segment, recovery_position) = (word(0), word(1));
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let newest_base: u64 = newest.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let durable = if newest_base == recovery_segment { recovery_position } else { 0 };
    let len = std::fs::metadata(&newest).unwrap().len();
    let cut = durable + rng.next() % (len - durable + 1);
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(cut).unwrap();
}

/// The child: appends batches of deterministic records forever, flushing every few batches
/// and reporting each flush on stdout.
fn append_until_killed(dir: &str) {
    let mut log = Log::open(dir, crash_config()).unwrap();
    let mut rng = Rng((std::process::id() as u64 * 2654435761) | 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let next = log.next_offset().0;
        let count = 1 + rng.next() % 30;
        let codec = Compression::ALL[(rng.next() % 5) as usize];
        let mut batch = payload_batch(next, count, codec);
        log.append(&mut batch).unwrap();
        if rng.next().is_multiple_of(4) {
            let flushed = log.flush().unwrap();
            println!("flushed {}", flushed.0);
        }
    }
}
