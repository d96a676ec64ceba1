//! A fault-injecting TCP proxy on every ordered pair of nodes: node A reaches node B only
//! through the proxy of link (A, B) (the node's `--dial-via`), so the harness can cut, delay
//! and lose traffic between nodes without root or kernel help (this kernel has no `netem`).
//!
//! Each accepted connection is forwarded to the target node in both directions, a chunk at a
//! time, in order. A link's state decides what happens to each chunk:
//! * **cut**: nothing is forwarded until the link heals (bytes wait, as behind a blackhole
//!   route; TCP would retransmit them after the heal) and no new upstream connection is made;
//! * **delay**: each chunk leaves `delay` (± `jitter`) after it arrived;
//! * **loss**: TCP never shows a loss to the application, only its cost: a lost segment is
//!   sent again after the retransmission timeout (200 ms on Linux, doubling while the
//!   retransmission is lost too) and everything behind it waits. A lost chunk is held that long.
//!
//! The proxies run on a runtime of their own, so a busy workload cannot slow the network.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::run::Rng;

/// Linux's minimum retransmission timeout: what one lost segment costs.
const RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(200);
/// Chunks in flight per direction before the proxy stops reading (back-pressure).
const CHUNKS_IN_FLIGHT: usize = 64;
const CHUNK_BYTES: usize = 64 << 10;

/// What a link does to its traffic now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkState {
    pub cut: bool,
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a chunk is lost (and retransmitted after the timeout).
    pub loss: f64,
}

/// The proxies of one run, one per ordered node pair.
pub struct Proxies {
    /// Taken when dropped (the connections end with it).
    runtime: Option<tokio::runtime::Runtime>,
    links: BTreeMap<(u64, u64), watch::Sender<LinkState>>,
    listen: BTreeMap<(u64, u64), String>,
}

impl Proxies {
    /// Starts a proxy for every ordered pair of `targets` (node id → its gRPC address),
    /// listening on 127.0.0.1.
    pub fn start(targets: &BTreeMap<u64, String>, seed: u64) -> Result<Proxies> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("jepsen-proxy")
            .enable_all()
            .build()
            .context("starting the proxy runtime")?;
        let mut links = BTreeMap::new();
        let mut listen = BTreeMap::new();
        let connections = Arc::new(AtomicU64::new(seed));
        for &from in targets.keys() {
            for (&to, target) in targets {
                if from == to {
                    continue;
                }
                let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).context("binding a proxy")?;
                listen.insert((from, to), listener.local_addr()?.to_string());
                let (state, watcher) = watch::channel(LinkState::default());
                runtime.spawn(accept(listener, target.clone(), watcher, connections.clone()));
                links.insert((from, to), state);
            }
        }
        Ok(Proxies { runtime: Some(runtime), links, listen })
    }

    /// The `ID=HOST:PORT` overrides node `from` is started with (`--dial-via`).
    pub fn dial_via(&self, from: u64) -> Vec<String> {
        self.listen
            .iter()
            .filter(|((a, _), _)| *a == from)
            .map(|((_, to), address)| format!("{to}={address}"))
            .collect()
    }

    /// Changes both directions of the link between `a` and `b`.
    pub fn set(&self, a: u64, b: u64, change: impl Fn(&mut LinkState)) {
        for key in [(a, b), (b, a)] {
            if let Some(link) = self.links.get(&key) {
                link.send_modify(&change);
            }
        }
    }

    /// Cuts the links between each pair of nodes (both directions).
    pub fn cut(&self, pairs: &std::collections::BTreeSet<(u64, u64)>) {
        for &(a, b) in pairs {
            self.set(a, b, |state| state.cut = true);
        }
    }

    /// Applies `change` to every link that touches a node of `nodes`.
    pub fn degrade(&self, nodes: &std::collections::BTreeSet<u64>, change: impl Fn(&mut LinkState)) {
        for (&(a, b), link) in &self.links {
            if nodes.contains(&a) || nodes.contains(&b) {
                link.send_modify(&change);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.send_replace(LinkState::default());
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepts connections to one link for as long as the runtime lives.
async fn accept(listener: TcpListener, target: String, state: watch::Receiver<LinkState>, counter: Arc<AtomicU64>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors or similar: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let seed = counter.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        tokio::spawn(connect(inbound, target.clone(), state.clone(), seed));
    }
}

/// Forwards one connection: waits while the link is cut, connects to the target, pumps both ways.
async fn connect(inbound: TcpStream, target: String, mut state: watch::Receiver<LinkState>, seed: u64) {
    // A cut link makes no new connections: the caller's connect hangs as on a dead route.
    if state.wait_for(|s| !s.cut).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(&target).await else { return };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let forward = pump(in_read, out_write, state.clone(), Rng::new(seed));
    let backward = pump(out_read, in_write, state, Rng::new(seed ^ 0x5555));
    // When either direction ends, both sockets close (dropped with the futures).
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
    }
}

/// One direction of a connection: chunks are read as they come, stamped with when they may
/// leave, and written in order at that time while the link is not cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<LinkState>,
    mut rng: Rng,
) {
    let (chunks, mut queue) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let mut cut = state.clone();
    let reader = async move {
        let mut last_due = Instant::now();
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            // Queued chunks hold what was read, not a whole read buffer each.
            let chunk = buffer[..read].to_vec();
            let link = *state.borrow();
            let mut wait = link.delay;
            if !link.jitter.is_zero() {
                wait += Duration::from_micros(rng.below(link.jitter.as_micros() as u64 * 2));
                wait = wait.saturating_sub(link.jitter);
            }
            let mut timeout = RETRANSMIT_TIMEOUT;
            while link.loss > 0.0 && (rng.below(1_000_000) as f64) < link.loss * 1_000_000.0 {
                wait += timeout;
                timeout = (timeout * 2).min(Duration::from_secs(10));
            }
            // In order: a chunk never overtakes the one before it.
            last_due = last_due.max(Instant::now() + wait);
            if chunks.send((last_due, chunk)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            if cut.wait_for(|s| !s.cut).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}
