//! Real `robustmq` node processes on loopback: start, kill -9, stop, restart.

use std::net::TcpListener;
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
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
            cluster.restart(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Adds a node process that joins the running cluster (it still has to be added with
    /// `add_node` through the API); returns its id.
    ///
    /// Waits until it listens. Its ports were free when chosen, but another test's connection
    /// may take one as its local port before the node binds it; the node then exits with
    /// "cannot listen" and is started again on fresh ports. Any other exit fails the test
    /// with the node's log.
    pub fn start_joining_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let root = self.nodes[0].dir.parent().unwrap().to_path_buf();
        self.nodes.push(Node::new(id, &root, true));
        for _ in 0..5 {
            self.restart(id);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if std::net::TcpStream::connect(&self.node(id).grpc).is_ok() {
                    return id;
                }
                let node = &mut self.nodes[(id - 1) as usize];
                if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                    node.child = None;
                    let log = self.node_log(id);
                    assert!(log.contains("cannot listen"), "node {id} exited ({status}) while starting:\n{log}");
                    let starts = self.nodes[(id - 1) as usize].starts;
                    self.nodes[(id - 1) as usize] = Node { starts, ..Node::new(id, &root, true) };
                    break;
                }
                assert!(Instant::now() < deadline, "node {id} never started listening");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("node {id} found no free ports in five attempts");
    }

    /// Starts (or starts again) a node with the same data directory and ports.
    pub fn restart(&mut self, id: u64) {
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
        node.child = Some(command.spawn().unwrap());
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

impl Drop for TestCluster {
    fn drop(&mut self) {
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
