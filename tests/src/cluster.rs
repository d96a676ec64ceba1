//! Node processes for the benchmarks and the Jepsen harness: `robustmq serve` children, each
//! with its own data directory and log, on loopback ports or each in a network namespace of
//! its own ([`Placement`]), all killed when the cluster is dropped (and by `PR_SET_PDEATHSIG`
//! if the parent itself dies). Faults: kill -9, pause (SIGSTOP) and resume, restart.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use client::Client;

/// How long a node or a leader may take before the run gives up.
const WAIT_MAX: Duration = Duration::from_secs(120);

/// One `robustmq serve` process.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub grpc: String,
    pub admin: String,
    pub kafka: String,
    pub child: Option<Child>,
    starts: u32,
    /// The network namespace the node runs in, if any.
    netns: Option<String>,
    /// `ID=HOST:PORT` overrides of where this node connects to its peers (`--dial-via`).
    pub dial_via: Vec<String>,
    /// Extra environment of this node only (beside the cluster's).
    pub env: Vec<(String, String)>,
    /// Start with `--join` (a node re-added after it was removed and wiped).
    pub join: bool,
}

impl Node {
    /// The log of the node's current (or last) process.
    fn log(&self) -> PathBuf {
        self.dir.with_extension(format!("log{}", self.starts))
    }

    /// The last five lines of [`Node::log`].
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Where node processes run.
#[derive(Clone, Debug)]
pub enum Placement {
    /// 127.0.0.1 with free ports.
    Loopback,
    /// Node i (from 1) on loopback address 127.0.1.i with free ports: each node has an address
    /// of its own, as on separate machines (the Jepsen harness's fallback without root).
    LoopbackAddresses,
    /// Node i (from 1) in namespace `namespaces[i - 1].0`, listening on its address `.1`.
    Namespaces(Vec<(String, String)>),
}

/// Node processes on loopback, all killed when this is dropped.
pub struct LocalCluster {
    binary: PathBuf,
    pub nodes: Vec<Node>,
    peers: Vec<String>,
    /// Extra environment of every node process.
    env: Vec<(String, String)>,
}

fn loopback_node(id: u64, dir: PathBuf, ip: &str) -> Result<Node> {
    Ok(Node {
        id,
        dir,
        grpc: format!("{ip}:{}", crate::ports::free_port_on(ip)?),
        admin: format!("{ip}:{}", crate::ports::free_port_on(ip)?),
        kafka: format!("{ip}:{}", crate::ports::free_port_on(ip)?),
        child: None,
        starts: 0,
        netns: None,
        dial_via: Vec::new(),
        env: Vec::new(),
        join: false,
    })
}

impl LocalCluster {
    /// Starts `size` nodes with data under `root`, each listing all as peers.
    ///
    /// Must run on the main thread: `PR_SET_PDEATHSIG` fires when the *thread* that spawned
    /// the child exits.
    pub fn start(binary: &Path, root: &Path, size: u64) -> Result<LocalCluster> {
        LocalCluster::start_with_env(binary, root, size, Vec::new())
    }

    /// As [`LocalCluster::start`], with extra environment variables for every node.
    pub fn start_with_env(binary: &Path, root: &Path, size: u64, env: Vec<(String, String)>) -> Result<LocalCluster> {
        LocalCluster::start_placed(binary, root, size, env, &Placement::Loopback)
    }

    /// Starts `size` nodes where `placement` says.
    pub fn start_placed(
        binary: &Path,
        root: &Path,
        size: u64,
        env: Vec<(String, String)>,
        placement: &Placement,
    ) -> Result<LocalCluster> {
        let mut cluster = LocalCluster::plan(binary, root, size, env, placement)?;
        for id in 1..=size {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Chooses every node's addresses without starting any (then adjust the nodes, e.g. their
    /// `dial_via`, and [`spawn`](Self::spawn) each).
    pub fn plan(
        binary: &Path,
        root: &Path,
        size: u64,
        env: Vec<(String, String)>,
        placement: &Placement,
    ) -> Result<LocalCluster> {
        let mut nodes = Vec::new();
        for id in 1..=size {
            let dir = root.join(format!("node{id}"));
            let node = match placement {
                Placement::Loopback => loopback_node(id, dir, "127.0.0.1")?,
                Placement::LoopbackAddresses => loopback_node(id, dir, &format!("127.0.1.{id}"))?,
                Placement::Namespaces(hosts) => {
                    let (netns, address) = hosts.get(id as usize - 1).context("fewer namespaces than nodes")?;
                    Node {
                        id,
                        dir,
                        grpc: format!("{address}:9300"),
                        admin: format!("{address}:8080"),
                        kafka: format!("{address}:9092"),
                        child: None,
                        starts: 0,
                        netns: Some(netns.clone()),
                        dial_via: Vec::new(),
                        env: Vec::new(),
                        join: false,
                    }
                }
            };
            nodes.push(node);
        }
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.grpc)).collect();
        Ok(LocalCluster { binary: binary.to_path_buf(), nodes, peers, env })
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts (again) node `id` with its data directory and ports; stderr goes to
    /// `nodeN.logK` beside its data directory.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let binary = self.binary.clone();
        let peers = self.peers.clone();
        let env = self.env.clone();
        let node = &mut self.nodes[(id - 1) as usize];
        ensure!(node.child.is_none(), "node {id} is running");
        node.starts += 1;
        std::fs::create_dir_all(&node.dir).with_context(|| format!("creating {}", node.dir.display()))?;
        let log_path = node.dir.with_extension(format!("log{}", node.starts));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        // `ip netns exec` enters the namespace and execs the node: same process, same pid.
        let mut command = match &node.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .args(["serve", "--node-id", &id.to_string(), "--data-dir"])
            .arg(&node.dir)
            .args(["--grpc-listen", &node.grpc, "--admin-listen", &node.admin, "--kafka-listen", &node.kafka])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for peer in &peers {
            command.args(["--peer", peer]);
        }
        for via in &node.dial_via {
            command.args(["--dial-via", via]);
        }
        if node.join {
            command.arg("--join");
        }
        command.envs(env).envs(node.env.iter().cloned());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        node.child = Some(command.spawn().with_context(|| format!("starting {}", binary.display()))?);
        Ok(())
    }

    /// Sends `signal` to node `id` if it runs (SIGSTOP to pause, SIGCONT to resume).
    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Whether node `id` runs (it may be paused).
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// SIGKILL and reap: no flush, no goodbye.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().with_context(|| format!("killing node {id}"))?;
            child.wait().with_context(|| format!("reaping node {id}"))?;
        }
        Ok(())
    }

    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Caps every file node `id` writes at `bytes` from now on (`RLIMIT_FSIZE` of the running
    /// process; `None` lifts the cap): a write past it fails with EFBIG, as on a full disk (the
    /// node ignores `SIGXFSZ`).
    pub fn limit_file_size(&self, id: u64, bytes: Option<u64>) -> Result<()> {
        let pid = self.pid(id).with_context(|| format!("node {id} is not running"))?;
        let limit = bytes.unwrap_or(libc::RLIM_INFINITY);
        let limit = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit reads `limit` and writes nothing (no old-limit pointer).
        let result = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        ensure!(result == 0, "prlimit on node {id}: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Node `id`'s exit status and the tail of its log, if it has exited on its own (it then
    /// counts as not running).
    pub fn exited(&mut self, id: u64) -> Result<Option<(std::process::ExitStatus, String)>> {
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(child) = &mut node.child else { return Ok(None) };
        let Some(status) = child.try_wait()? else { return Ok(None) };
        node.child = None;
        Ok(Some((status, node.log_tail())))
    }

    /// Fails if a node that should run has exited, naming its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {} exited with {status}; its log {}:\n{}",
                        node.id,
                        node.log().display(),
                        node.log_tail()
                    );
                }
            }
        }
        Ok(())
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// A client of every node, `first` (if any) tried first.
    pub fn client(&self, first: Option<u64>) -> Client {
        let mut addresses: Vec<String> = self.nodes.iter().map(|n| n.grpc.clone()).collect();
        if let Some(first) = first {
            addresses.rotate_left((first - 1) as usize);
        }
        Client::new(addresses)
    }

    /// A client of node `id` only, that gives up quickly.
    pub fn client_of(&self, id: u64) -> Client {
        Client::new(vec![self.node(id).grpc.clone()]).with_retry_deadline(Duration::from_millis(500))
    }

    /// Waits until a metadata leader is known, as seen through any node.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + WAIT_MAX;
        let client = self.client(None).with_retry_deadline(Duration::from_secs(1));
        while Instant::now() < deadline {
            self.check_alive()?;
            if let Ok(status) = client.cluster_status().await {
                if status.metadata_leader.is_some() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the cluster elected no metadata leader within {} s", WAIT_MAX.as_secs())
    }

    /// The leader of `topic`'s partition 0, confirmed by the leader itself (`except`: not that node).
    pub async fn leader(&mut self, topic: &str, except: Option<u64>) -> Result<u64> {
        self.partition_leader(topic, 0, except).await
    }

    /// The leader of one partition of `topic`, confirmed by the leader itself (`except`: not that node).
    pub async fn partition_leader(&mut self, topic: &str, partition: u32, except: Option<u64>) -> Result<u64> {
        let deadline = Instant::now() + WAIT_MAX;
        while Instant::now() < deadline {
            self.check_alive()?;
            for node in &self.nodes {
                if node.child.is_none() || Some(node.id) == except {
                    continue;
                }
                let Ok(topic) = self.client_of(node.id).describe_topic(topic).await else { continue };
                let described = topic.partitions.iter().find(|p| p.partition == partition);
                if described.and_then(|p| p.leader) == Some(node.id) {
                    return Ok(node.id);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("partition {partition} has no leader after {} s", WAIT_MAX.as_secs())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
