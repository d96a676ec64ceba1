//! The nemesis: faults on a seeded schedule, one at a time — quiet for a few seconds, one fault
//! on one node (or one side) for a few seconds, healed — until the time limit; then everything
//! is healed.
//!
//! Faults on disk (`disk`, `bitflip`, `truncate`) are applied to a killed node's files before
//! it restarts.
//!
//! What links between nodes are made of decides which network faults exist ([`Links`]): network
//! namespaces cut links with blackhole routes (root); the userspace proxies cut, delay and
//! lose traffic (no root needed, and the only way to delay or lose here: no `netem`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::tests::cluster::LocalCluster;
use anyhow::{bail, ensure, Context, Result};

use crate::net::Network;
use crate::proxy::Proxies;
use crate::report::Fault;
use crate::run::{Options, Rng};

/// Where libfaketime lives on Debian (package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// Files of a node under the `full` fault cannot grow past this.
const FULL_FILE_BYTES: u64 = 1 << 20;
/// How long a removed node's replicas may take to move away before the node is re-added
/// without being wiped.
const REMOVAL_MAX: Duration = Duration::from_secs(60);

/// Fault kinds, Jepsen's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Cut every link between a node (or a minority) and the rest.
    Partition,
    /// kill -9, then every partition log of the node loses what was not fsynced (a power loss).
    Disk,
    /// Every packet of a node's links (or a minority's) arrives 20–500 ms late, with jitter.
    Delay,
    /// 5–30 % of a node's (or a minority's) traffic is lost and retransmitted by TCP.
    Loss,
    /// A node's wall clock jumps forwards or backwards by up to an hour (libfaketime;
    /// monotonic clocks, which Raft's timing uses, are left alone, as NTP does).
    Clock,
    /// A node is removed from the cluster (its replicas move away), wiped, and added again.
    Membership,
    /// kill -9, then one byte near the end of one of the node's partition logs flips (fsynced
    /// data included), and the node restarts (Jepsen's `bitflip`).
    Bitflip,
    /// kill -9, then the newest segment of one of the node's partition logs loses up to 4 KiB
    /// of its end (fsynced data included), and the node restarts (Jepsen's `truncate-file`).
    Truncate,
    /// The node's disk fills: every write past 1 MiB into any of its files fails from now on
    /// (`RLIMIT_FSIZE`), so its next Raft log or partition log write fails. It must stop on its
    /// own as a node whose storage failed (exit status 1); it restarts with room again.
    Full,
}

impl Nemesis {
    pub fn parse(name: &str) -> Result<Nemesis> {
        Ok(match name {
            "kill" => Nemesis::Kill,
            "pause" => Nemesis::Pause,
            "partition" => Nemesis::Partition,
            "disk" => Nemesis::Disk,
            "delay" => Nemesis::Delay,
            "loss" => Nemesis::Loss,
            "clock" => Nemesis::Clock,
            "membership" | "member" => Nemesis::Membership,
            "bitflip" => Nemesis::Bitflip,
            "truncate" => Nemesis::Truncate,
            "full" => Nemesis::Full,
            other => bail!(
                "unknown nemesis {other:?} (kill, pause, partition, disk, delay, loss, clock, membership, bitflip, truncate, full)"
            ),
        })
    }

    /// Whether this fault needs links the harness controls.
    pub fn needs_links(self) -> bool {
        matches!(self, Nemesis::Partition | Nemesis::Delay | Nemesis::Loss)
    }

    /// Whether only the proxies can inject this fault (namespaces can only cut).
    pub fn needs_proxies(self) -> bool {
        matches!(self, Nemesis::Delay | Nemesis::Loss)
    }
}

/// How nodes reach each other in this run.
pub enum Links {
    /// Directly on loopback: no network faults.
    Direct,
    /// Network namespaces and a bridge (root).
    Namespaces(Network),
    /// A fault-injecting proxy on every node pair.
    Proxies(Proxies),
}

impl Links {
    fn cut(&mut self, pairs: &BTreeSet<(u64, u64)>) -> Result<()> {
        match self {
            Links::Direct => bail!("no controllable links for a partition"),
            Links::Namespaces(network) => network.cut(pairs),
            Links::Proxies(proxies) => {
                proxies.cut(pairs);
                Ok(())
            }
        }
    }

    fn heal(&mut self) -> Result<()> {
        match self {
            Links::Direct => Ok(()),
            Links::Namespaces(network) => network.heal(),
            Links::Proxies(proxies) => {
                proxies.heal();
                Ok(())
            }
        }
    }

    fn proxies(&self) -> Result<&Proxies> {
        match self {
            Links::Proxies(proxies) => Ok(proxies),
            _ => bail!("delay and loss need the proxies (--network proxy)"),
        }
    }
}

/// The file libfaketime reads node `id`'s clock offset from.
fn clock_file(data: &Path, id: u64) -> PathBuf {
    data.join(format!("node{id}.faketime"))
}

/// Makes every node's wall clock adjustable: each will run under libfaketime, reading its
/// offset from its own file (re-read every second; monotonic clocks are left alone).
pub fn prepare_clocks(cluster: &mut LocalCluster, data: &Path) -> Result<()> {
    anyhow::ensure!(
        Path::new(LIBFAKETIME).is_file(),
        "the clock nemesis needs libfaketime ({LIBFAKETIME}; apt-get install faketime)"
    );
    std::fs::create_dir_all(data)?;
    for node in &mut cluster.nodes {
        let file = clock_file(data, node.id);
        set_clock(data, node.id, 0)?;
        node.env = vec![
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
    }
    Ok(())
}

/// Sets node `id`'s wall clock `offset_s` seconds off (libfaketime re-reads the file each second).
fn set_clock(data: &Path, id: u64, offset_s: i64) -> Result<()> {
    let path = clock_file(data, id);
    std::fs::write(&path, format!("{offset_s:+}\n")).with_context(|| format!("writing {}", path.display()))
}

/// Injects faults until the time limit, appending each window to `faults`. On an error the
/// faults so far stay recorded; [`heal_all`] brings the cluster back for the final read.
pub async fn run(
    cluster: &mut LocalCluster,
    links: &mut Links,
    options: &Options,
    start: Instant,
    faults: &mut Vec<Fault>,
) -> Result<()> {
    let mut rng = Rng::new(options.seed ^ 0x006e_656d_6573_6973);
    let deadline = start + options.time_limit;
    let ms = |at: Instant| at.duration_since(start).as_millis() as u64;
    let data = options.results.join("data");
    let mut membership_removed = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(3000))).await;
        if options.nemesis.is_empty() || Instant::now() >= deadline {
            continue;
        }
        let kind = options.nemesis[rng.below(options.nemesis.len() as u64) as usize];
        let node = 1 + rng.below(options.nodes);
        // A side: one node alone, or a random minority.
        let side: BTreeSet<u64> = if rng.below(2) == 0 {
            [node].into()
        } else {
            let mut side = BTreeSet::from([node]);
            while side.len() < (options.nodes as usize).div_ceil(2) - 1 {
                side.insert(1 + rng.below(options.nodes));
            }
            side
        };
        let began = Instant::now();
        let mut what = match kind {
            Nemesis::Kill => {
                cluster.kill(node)?;
                "kill".to_string()
            }
            Nemesis::Pause => {
                cluster.signal(node, libc::SIGSTOP);
                "pause".to_string()
            }
            Nemesis::Partition => {
                let (pairs, what) = partition_shape(cluster, options.nodes, &side, &mut rng).await;
                links.cut(&pairs)?;
                what
            }
            Nemesis::Disk => {
                cluster.kill(node)?;
                let lost = lose_unflushed(&cluster.node(node).dir)?;
                format!("disk (power loss: {lost} unflushed bytes gone)")
            }
            Nemesis::Delay => {
                let delay = Duration::from_millis(20 + rng.below(480));
                links.proxies()?.degrade(&side, |link| {
                    link.delay = delay;
                    link.jitter = delay / 2;
                });
                format!("delay {} ms ± 50 % on the links of {side:?}", delay.as_millis())
            }
            Nemesis::Loss => {
                let loss = 0.05 + rng.below(26) as f64 / 100.0;
                links.proxies()?.degrade(&side, |link| link.loss = loss);
                format!("loss {:.0} % on the links of {side:?}", loss * 100.0)
            }
            Nemesis::Clock => {
                let magnitude = 1 + rng.below(3600) as i64;
                let offset = if rng.below(2) == 0 { magnitude } else { -magnitude };
                set_clock(&data, node, offset)?;
                format!("clock {offset:+} s")
            }
            Nemesis::Membership => {
                let (what, removed) = remove(cluster, node).await?;
                membership_removed = removed;
                what
            }
            Nemesis::Bitflip | Nemesis::Truncate => {
                cluster.kill(node)?;
                damage(&cluster.node(node).dir, kind, &mut rng)?
            }
            Nemesis::Full => {
                cluster.limit_file_size(node, Some(FULL_FILE_BYTES))?;
                "disk full".to_string()
            }
        };
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(4000))).await;
        match kind {
            Nemesis::Kill | Nemesis::Disk | Nemesis::Bitflip | Nemesis::Truncate => cluster.spawn(node)?,
            Nemesis::Pause => cluster.signal(node, libc::SIGCONT),
            Nemesis::Partition | Nemesis::Delay | Nemesis::Loss => links.heal()?,
            Nemesis::Clock => set_clock(&data, node, 0)?,
            Nemesis::Membership if membership_removed => what.push_str(&add_again(cluster, node).await?),
            Nemesis::Membership => {}
            Nemesis::Full => what.push_str(&refill(cluster, node).await?),
        }
        faults.push(Fault { kind: what, node, start_ms: ms(began), end_ms: ms(Instant::now()) });
        // A node that exited on its own (a crash) ends the faults here, with its log's tail.
        cluster.check_alive()?;
    }
    Ok(())
}

/// Ends a `full` fault: a node that stopped must have stopped as a node whose storage failed
/// does (status 1; the reason is in its log unless the log itself hit the cap); it restarts with
/// room again. One still running after a short wait (it wrote nothing past the cap) gets its
/// room back.
async fn refill(cluster: &mut LocalCluster, node: u64) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let exited = loop {
        match cluster.exited(node)? {
            Some(exit) => break Some(exit),
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            None => break None,
        }
    };
    match exited {
        Some((status, tail)) => {
            ensure!(
                status.code() == Some(1),
                "node {node} ended with {status} on a full disk instead of stopping as a node whose storage failed; its log ends:\n{tail}"
            );
            let said =
                if tail.contains("storage failed") { "" } else { " (its log, on the full disk, could not say why)" };
            cluster.spawn(node)?;
            Ok(format!(": the node stopped (exit 1){said}, restarted with room"))
        }
        None => {
            cluster.limit_file_size(node, None)?;
            Ok(": the node wrote nothing past the cap; room given back".to_string())
        }
    }
}

/// After a failed fault step: heals every link and clock, resumes and restarts every node, so
/// the run can still wait for recovery, read everything and write its report.
pub fn heal_all(cluster: &mut LocalCluster, links: &mut Links, options: &Options) {
    let _ = links.heal();
    let data = options.results.join("data");
    for id in 1..=options.nodes {
        if clock_file(&data, id).exists() {
            let _ = set_clock(&data, id, 0);
        }
    }
    let _ = cluster.check_alive();
    for id in 1..=options.nodes {
        cluster.signal(id, libc::SIGCONT);
        if !cluster.is_running(id) {
            let _ = cluster.spawn(id);
        }
    }
}

/// Which links a partition cuts, Jepsen's shapes: a node or a random minority (`side`) from
/// the rest, the node leading a random partition alone, or a bridge (two halves that reach
/// each other only through one node).
async fn partition_shape(
    cluster: &LocalCluster,
    nodes: u64,
    side: &BTreeSet<u64>,
    rng: &mut Rng,
) -> (BTreeSet<(u64, u64)>, String) {
    let between = |a: &BTreeSet<u64>, b: &BTreeSet<u64>| -> BTreeSet<(u64, u64)> {
        a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))).collect()
    };
    let all: BTreeSet<u64> = (1..=nodes).collect();
    let rest = |side: &BTreeSet<u64>| all.difference(side).copied().collect::<BTreeSet<u64>>();
    match rng.below(3) {
        0 => {
            let partition = rng.below(crate::run::PARTITIONS as u64) as u32;
            let client = cluster.client(None).with_retry_deadline(Duration::from_secs(1));
            let leader = match client.describe_topic(crate::run::TOPIC).await {
                Ok(topic) => topic.partitions.get(partition as usize).and_then(|p| p.leader),
                Err(_) => None,
            };
            match leader {
                Some(leader) => {
                    let alone = BTreeSet::from([leader]);
                    (
                        between(&alone, &rest(&alone)),
                        format!("partition: node {leader}, leader of partition {partition}, alone"),
                    )
                }
                None => (between(side, &rest(side)), format!("partition {side:?} from the rest (no leader known)")),
            }
        }
        1 if nodes >= 3 => {
            let mut order: Vec<u64> = all.iter().copied().collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let bridge = order[0];
            let half = (order.len() - 1) / 2;
            let left: BTreeSet<u64> = order[1..1 + half].iter().copied().collect();
            let right: BTreeSet<u64> = order[1 + half..].iter().copied().collect();
            (between(&left, &right), format!("partition: bridge {bridge} between {left:?} and {right:?}"))
        }
        _ => (between(side, &rest(side)), format!("partition {side:?} from the rest")),
    }
}

/// Removes `node` from the cluster and waits for every Raft group to drop it; then kills it and
/// wipes its data, as an operator replacing a machine would. If the groups do not settle in
/// time the node is left running with its data (re-adding it is then a plain add).
async fn remove(cluster: &mut LocalCluster, node: u64) -> Result<(String, bool)> {
    let client = cluster.client(None).with_retry_deadline(Duration::from_secs(10));
    if let Err(error) = client.remove_node(node).await {
        return Ok((format!("membership: removing node {node} refused ({error})"), false));
    }
    let deadline = Instant::now() + REMOVAL_MAX;
    loop {
        match client.removal_pending(node).await {
            Ok(pending) if pending.is_empty() => break,
            pending if Instant::now() >= deadline => {
                let left = match pending {
                    Ok(pending) => {
                        format!("{} groups left, e.g. {}", pending.len(), pending[..pending.len().min(2)].join("; "))
                    }
                    Err(error) => format!("cannot tell ({error})"),
                };
                let what = format!("membership: node {node} removed; its replicas had not moved after 60 s ({left})");
                return Ok((what, true));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    cluster.kill(node)?;
    let dir = cluster.node(node).dir.clone();
    std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
    cluster.node_mut(node).join = true;
    Ok((format!("membership: node {node} removed, stopped and wiped, then added again"), true))
}

/// Adds `node` back (restarting it first if it was wiped), then rebalances replicas onto it:
/// the others drop the replicas they give it. Says how the rebalance went.
async fn add_again(cluster: &mut LocalCluster, node: u64) -> Result<String> {
    if !cluster.is_running(node) {
        cluster.spawn(node)?;
    }
    let client = cluster.client(None).with_retry_deadline(Duration::from_secs(120));
    let address = cluster.node(node).grpc.clone();
    client.add_node(node, &address).await.with_context(|| format!("adding node {node} again"))?;
    // The moves run on in the background, under whatever faults come next.
    Ok(match client.rebalance().await {
        Ok(moved) => format!("; rebalanced, {moved} partitions moved"),
        Err(error) => format!("; rebalance refused ({error})"),
    })
}

/// Damages one partition log of a killed node: flips one byte of its last 4 KiB, or cuts up
/// to 4 KiB off its end. The node must cut the damage off and fetch it from another replica.
fn damage(node_dir: &Path, kind: Nemesis, rng: &mut Rng) -> Result<String> {
    let logs = partition_logs(node_dir);
    if logs.is_empty() {
        return Ok(format!("{kind:?}: no partition log to damage").to_lowercase());
    }
    let log = &logs[rng.below(logs.len() as u64) as usize];
    let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(match kind {
        Nemesis::Bitflip => {
            let back = rng.below(4096);
            let mask = 1u8 << rng.below(8);
            log_store::fault::flip_tail_byte(log, back, mask)?;
            format!("bitflip: {name}, byte {back} from the end, mask {mask:#04x}")
        }
        _ => {
            let bytes = 1 + rng.below(4096);
            let cut = log_store::fault::truncate_tail(log, bytes)?;
            format!("truncate: {name} lost its last {cut} bytes")
        }
    })
}

/// A power loss on a killed node: each partition log keeps only what it had fsynced. The Raft
/// log is left whole: raft-engine fsyncs every write that holds entries, a term, a vote or a
/// configuration, and what it writes unsynced (a commit index, an apply state) cannot be told
/// apart from outside the process. The replication crate's simulation drops that too
/// (`engine_fs`).
fn lose_unflushed(node_dir: &Path) -> Result<u64> {
    let mut lost = 0;
    for log in partition_logs(node_dir) {
        lost += log_store::fault::lose_unflushed(&log)?;
    }
    Ok(lost)
}

/// The partition log directories of a node, in name order (none before its first start).
fn partition_logs(node_dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = match std::fs::read_dir(node_dir.join("partitions")) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    logs.sort();
    logs
}
