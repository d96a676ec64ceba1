//! Real `robustmq` node processes on loopback: start, kill -9, stop, restart.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::Client;

pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub grpc: String,
    pub admin: String,
    /// The Kafka listener, `127.0.0.1:port`.
    pub kafka: String,
    child: Option<Child>,
    starts: u32,
    join: bool,
    /// Caps every file the process writes at this many bytes (`RLIMIT_FSIZE`; the node ignores
    /// `SIGXFSZ`): a write past it fails with EFBIG, as one fails with ENOSPC on a full disk.
    pub file_bytes_limit: Option<u64>,
}

/// A cluster of node processes that are all killed when it is dropped.
pub struct TestCluster {
    pub nodes: Vec<Node>,
    peers: Vec<String>,
    /// Extra TOML appended to every node's config file.
    extra_config: String,
    _root: tempfile::TempDir,
}

impl Node {
    /// A node not started yet, with data under `root` and free loopback ports.
    fn new(id: u64, root: &Path, join: bool) -> Node {
        Node {
            id,
            dir: root.join(format!("node{id}")),
            grpc: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            kafka: format!("127.0.0.1:{}", free_port()),
            child: None,
            starts: 0,
            join,
            file_bytes_limit: None,
        }
    }
}

/// Outside the ephemeral range: no other test's outgoing connection can take it (see `tests::ports`).
fn free_port() -> u16 {
    tests::ports::free_port_on("127.0.0.1").unwrap()
}

impl TestCluster {
    pub fn start(size: u64) -> TestCluster {
        TestCluster::start_with(size, "")
    }

    /// A cluster whose nodes get `extra_config` (TOML) in their config file.
    pub fn start_with(size: u64, extra_config: &str) -> TestCluster {
        let root = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (1..=size).map(|id| Node::new(id, root.path(), false)).collect();
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.grpc)).collect();
        let mut cluster = TestCluster { nodes, peers, extra_config: extra_config.to_string(), _root: root };
        for id in 1..=size {
            cluster.spawn(id);
        }
        for id in 1..=size {
            cluster.wait_listening(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Adds a node process that joins the running cluster (it still has to be added with
    /// `add_node` through the API); returns its id once it listens.
    pub fn start_joining_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let root = self.nodes[0].dir.parent().unwrap().to_path_buf();
        self.nodes.push(Node::new(id, &root, true));
        self.restart(id);
        id
    }

    /// Waits until node `id` accepts connections on all its ports (it binds them all before it
    /// starts anything else); a node that exits first fails the test with its log.
    fn wait_listening(&mut self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = |node: &Node| {
            [&node.grpc, &node.admin, &node.kafka].iter().all(|address| std::net::TcpStream::connect(address).is_ok())
        };
        while !listening(self.node(id)) {
            let node = &mut self.nodes[(id - 1) as usize];
            if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                node.child = None;
                panic!("node {id} exited ({status}) while starting:\n{}", self.node_log(id));
            }
            assert!(Instant::now() < deadline, "node {id} never started listening:\n{}", self.node_log(id));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts (or starts again) a node with the same data directory and ports; returns once
    /// it listens.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_listening(id);
    }

    /// Starts the node's process.
    fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let extra_config = self.extra_config.clone();
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} is running");
        node.starts += 1;
        std::fs::create_dir_all(&node.dir).unwrap();
        let log = std::fs::File::create(node.dir.with_extension(format!("log{}", node.starts))).unwrap();
        let mut config = format!(
            "node_id = {id}\ndata_dir = {:?}\ngrpc_listen = {:?}\nadmin_listen = {:?}\n",
            node.dir, node.grpc, node.admin
        );
        if node.join {
            config.push_str("join = true\n");
        }
        for peer in &peers {
            let (peer_id, address) = peer.split_once('=').unwrap();
            config.push_str(&format!("[[peers]]\nid = {peer_id}\naddress = {address:?}\n"));
        }
        config.push_str(&extra_config);
        let config_path = node.dir.with_extension("toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_robustmq"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--kafka-listen", &node.kafka])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = node.file_bytes_limit {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        node.child = Some(command.spawn().unwrap());
    }

    /// Node `id`'s exit status if it has exited on its own (it is then no longer running).
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[(id - 1) as usize];
        let status = node.child.as_mut()?.try_wait().unwrap()?;
        node.child = None;
        Some(status)
    }

    /// Waits up to `timeout` for node `id` to exit on its own; its exit status.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let node = &mut self.nodes[(id - 1) as usize];
        let child = node.child.as_mut().expect("the node runs");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                node.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "node {id} exited with {status} after SIGTERM");
        }
    }

    /// Every node's Kafka listener, comma-separated (a Kafka client's bootstrap list).
    pub fn kafka_bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.kafka.clone()).collect::<Vec<_>>().join(",")
    }

    pub fn client(&self) -> Client {
        Client::new(self.nodes.iter().map(|n| n.grpc.clone()).collect())
    }

    /// A client talking to one node only.
    pub fn client_of(&self, id: u64) -> Client {
        Client::new(vec![self.node(id).grpc.clone()])
    }

    /// Waits until the metadata group has a leader, as seen through any node.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = self.client().with_retry_deadline(Duration::from_secs(2));
        while Instant::now() < deadline {
            if let Ok(status) = client.cluster_status().await {
                if status.metadata_leader.is_some() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cluster never elected a metadata leader");
    }

    /// Waits until node `id` answers on its native API (its signal handlers are installed by then).
    pub async fn wait_serving(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = self.client_of(id).with_retry_deadline(Duration::from_secs(1));
        while client.cluster_status().await.is_err() {
            assert!(Instant::now() < deadline, "node {id} never started serving");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a node wrote to stderr over all its starts.
    pub fn node_log(&self, id: u64) -> String {
        let node = self.node(id);
        (1..=node.starts)
            .map(|start| std::fs::read_to_string(node.dir.with_extension(format!("log{start}"))).unwrap_or_default())
            .collect()
    }

    /// The partition's data directory on a node.
    pub fn partition_dir(&self, id: u64, topic: &str, partition: u32) -> PathBuf {
        self.node(id).dir.join("partitions").join(format!("{topic}-{partition}"))
    }
}

impl TestCluster {
    /// For a failing test: which nodes are still running, and the last lines each one logged
    /// (a node that died unseen, or one that stalled, shows here rather than as a bare timeout).
    fn post_mortem(&mut self) -> String {
        let mut report = String::from("post-mortem of the test cluster:\n");
        for index in 0..self.nodes.len() {
            let id = self.nodes[index].id;
            let state = match self.nodes[index].child.as_mut().map(|child| child.try_wait()) {
                None => "not running (stopped or killed by the test)".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("EXITED on its own ({status})"),
                Some(Err(error)) => format!("unknown ({error})"),
            };
            let log = self.node_log(id);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            report.push_str(&format!("--- node {id}: {state}; last lines of its log:\n{tail}\n"));
        }
        report
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.post_mortem());
        }
        // ROBUSTMQ_TEST_KEEP=1 keeps the data directories and node logs for a post-mortem.
        if std::env::var_os("ROBUSTMQ_TEST_KEEP").is_some() {
            if let Ok(empty) = tempfile::tempdir() {
                let kept = std::mem::replace(&mut self._root, empty).keep();
                eprintln!("node data and logs kept in {}", kept.display());
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Every record value in a partition directory, read with the log-store directly (the node
/// must be stopped). Offsets are checked to be dense from 0.
pub fn replica_values(dir: &Path) -> Vec<String> {
    let log = log_store::Log::open(dir, log_store::LogConfig::default()).unwrap();
    let reader = log.reader();
    let mut from = reader.log_start_offset();
    let mut values = Vec::new();
    loop {
        let bytes = reader.read(from, 1 << 20).unwrap();
        if bytes.is_empty() {
            return values;
        }
        for batch in log_store::batch::batches(bytes) {
            let batch = batch.unwrap();
            for record in batch.records(1 << 24).unwrap() {
                let record = record.unwrap();
                assert_eq!(record.offset.0, values.len() as u64, "offsets are dense");
                values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
            }
            from = log_store::Offset(batch.header().last_offset().0 + 1);
        }
    }
}

/// Asserts two logs are equal, naming the first difference instead of printing them whole.
pub fn assert_same_log(actual: &[String], expected: &[String], what: &str) {
    if let Some(index) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        panic!(
            "{what}: first difference at offset {index}: {:?} where {:?} was expected",
            actual[index], expected[index]
        );
    }
    assert_eq!(actual.len(), expected.len(), "{what}: length differs");
}
