//! The Kafka façade driven by real Kafka clients (librdkafka through confluent-kafka, kafka-python
//! and kcat) against real node processes, plus raw frames a client would never send.
//!
//! The Python clients come from the venv `tests/run.sh` creates (`.venv/` at the repo root, or
//! `ROBUSTMQ_PYTHON`); the scripts they run are in `tests/kafka/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::TestCluster;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python() -> PathBuf {
    let python =
        std::env::var_os("ROBUSTMQ_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(python.exists(), "{} is missing: run tests/run.sh once to create the venv", python.display());
    python
}

fn script(name: &str) -> Command {
    let mut command = Command::new(python());
    command.arg(repo_root().join("tests/kafka").join(name));
    command
}

/// Runs a command to its end; panics with its output unless it succeeded.
fn run(mut command: Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {what}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

async fn kafka_cluster(size: u64) -> TestCluster {
    kafka_cluster_with(size, "").await
}

/// As [`kafka_cluster`], with extra TOML in every node's config.
async fn kafka_cluster_with(size: u64, extra_config: &str) -> TestCluster {
    let cluster = TestCluster::start_with(size, extra_config);
    cluster.wait_ready().await;
    // Every node registers its Kafka endpoint once it is a member; wait for all of them.
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.cluster_status().await.unwrap();
        if status.nodes.len() == size as usize && status.nodes.iter().all(|n| n.endpoints.contains_key("kafka")) {
            return cluster;
        }
        assert!(Instant::now() < deadline, "kafka endpoints never registered: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_clients_round_trip_every_codec_on_three_nodes() {
    let cluster = kafka_cluster(3).await;
    let bootstrap = cluster.kafka_bootstrap();
    for client in ["confluent", "kafka-python"] {
        let mut command = script("roundtrip.py");
        command.args([client, bootstrap.as_str(), &format!("roundtrip-{client}"), "3", "3"]);
        let out = run(command, &format!("roundtrip.py {client}"));
        assert!(out.starts_with("ok:"), "{out}");
    }
    // kcat: one record per codec, then everything back with keys.
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let mut kcat = Command::new("kcat");
        kcat.args(["-b", &bootstrap, "-P", "-t", "kcat", "-z", codec, "-K", ":"]).stdin(Stdio::piped());
        let mut child = kcat.spawn().expect("kcat is installed by tests/run.sh");
        child.stdin.take().unwrap().write_all(format!("{codec}:value-{codec}\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "kcat produce with {codec}");
    }
    let mut consume = Command::new("kcat");
    consume.args(["-b", &bootstrap, "-C", "-t", "kcat", "-o", "beginning", "-e", "-f", "%o %k %s\\n"]);
    let out = run(consume, "kcat consume");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["0 none value-none", "1 gzip value-gzip", "2 snappy value-snappy", "3 lz4 value-lz4", "4 zstd value-zstd"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_producer_follows_a_killed_leader_and_loses_nothing_acknowledged() {
    let mut cluster = kafka_cluster(3).await;
    let bootstrap = cluster.kafka_bootstrap();
    let ready = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::remove_file(&ready).ok();
    let mut command = script("failover.py");
    command.args([bootstrap.as_str(), "failover", "8"]).arg(&ready).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut producer = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the producer never got going");
        if let Some(status) = producer.try_wait().unwrap() {
            let mut err = String::new();
            producer.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("failover.py ended early ({status}): {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let topic = cluster.client().describe_topic("failover").await.unwrap();
    let leader = topic.partitions[0].leader.expect("partition 0 has a leader");
    cluster.kill(leader);
    let output = producer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("missing 0") && stdout.contains("duplicates 0"), "{stdout}");
    eprintln!("failover.py: {stdout}");
    cluster.restart(leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_and_scram_let_the_right_users_in_and_no_one_else() {
    let config = "[kafka]\nsasl_mechanisms = [\"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\"]\n\
                  [[kafka.users]]\nname = \"alice\"\npassword = \"alice-secret\"\n";
    let cluster = kafka_cluster_with(3, config).await;
    let mut command = script("sasl.py");
    command.args([cluster.kafka_bootstrap().as_str(), "sasl-topic", "alice", "alice-secret"]);
    eprintln!("sasl.py: {}", run(command, "sasl.py"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_abort_fence_and_time_out_as_read_committed_consumers_expect() {
    let cluster = kafka_cluster(3).await;
    let mut command = script("transactions.py");
    command.args([cluster.kafka_bootstrap().as_str(), "txn"]);
    eprintln!("transactions.py: {}", run(command, "transactions.py"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clients_grow_topics_and_config_changes_take_effect() {
    let cluster = kafka_cluster(3).await;
    let mut command = script("admin.py");
    command.args([cluster.kafka_bootstrap().as_str(), "admin-topic"]);
    eprintln!("admin.py: {}", run(command, "admin.py"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_rebalance_around_killed_members_and_offsets_survive_coordinator_failover() {
    let mut cluster = kafka_cluster(3).await;
    let bootstrap = cluster.kafka_bootstrap();
    let mut coordinator = 0;
    for (topic, group, strategy, kind) in [
        ("groups-a", "group-a", "cooperative-sticky", "dynamic"),
        ("groups-b", "group-b", "roundrobin", "static"),
        ("groups-c", "group-c", "range", "dynamic"),
    ] {
        let mut command = script("groups.py");
        command.args(["run", &bootstrap, topic, group, strategy, kind]);
        let output = run(command, &format!("groups.py run {strategy} {kind}"));
        eprintln!("groups.py: {output}");
        if group == "group-a" {
            let line = output.lines().find(|l| l.starts_with("coordinator ")).expect("the coordinator is printed");
            coordinator = line["coordinator ".len()..].trim().parse().unwrap();
        }
    }
    // The committed offsets of group-a outlive its coordinator: the next leader of the offsets
    // partition loads them from the log.
    cluster.kill(coordinator);
    let mut command = script("groups.py");
    command.args(["committed", &bootstrap, "groups-a", "group-a"]);
    run(command, "groups.py committed after the coordinator was killed");
    cluster.restart(coordinator);
    // The restarted node learns the offsets partitions' leaders when their groups next talk to
    // it (idle groups are quiet); kafka-python's admin client does not retry a
    // COORDINATOR_NOT_AVAILABLE, so wait for that first.
    cluster.wait_serving(coordinator).await;
    let restarted = cluster.client_of(coordinator);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known = restarted
            .describe_topic("__consumer_offsets")
            .await
            .is_ok_and(|t| t.partitions.iter().all(|p| p.leader.is_some()));
        if known {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted node never learnt the offsets partitions' leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut command = script("groups.py");
    command.args(["admin", &bootstrap, "groups-a", "group-a"]);
    run(command, "groups.py admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_the_same_leader_and_epoch_even_without_a_replica() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

    use crate::kafka_wire::{call, decode, name};

    let cluster = kafka_cluster(3).await;
    // One replica per partition: each node leads one partition and holds none of the others.
    cluster.client().create_topic("spread", 3, 1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut views = Vec::new();
    loop {
        views.clear();
        for id in 1..=3 {
            let mut stream = TcpStream::connect(&cluster.node(id).kafka).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let topic = MetadataRequestTopic::default().with_name(Some(name("spread")));
            let request = MetadataRequest::default().with_topics(Some(vec![topic]));
            let answer: MetadataResponse =
                decode(call(&mut stream, ApiKey::Metadata, 12, 1, &request), ApiKey::Metadata, 12);
            let mut partitions: Vec<(i32, i32, i32)> = answer.topics[0]
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.leader_id.0, p.leader_epoch))
                .collect();
            partitions.sort();
            views.push(partitions);
        }
        let known = views.iter().all(|v| v.len() == 3 && v.iter().all(|(_, leader, epoch)| *leader > 0 && *epoch > 0));
        if known && views.iter().all(|v| *v == views[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "nodes disagree on leaders or do not know them: {views:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A frame of `body` with the 4-byte size prefix.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// A request header v1: api key, version, correlation id, null client id.
fn header(api_key: i16, version: i16, correlation_id: i32) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&api_key.to_be_bytes());
    header.extend_from_slice(&version.to_be_bytes());
    header.extend_from_slice(&correlation_id.to_be_bytes());
    header.extend_from_slice(&(-1i16).to_be_bytes());
    header
}

/// Reads one response frame; `None` if the broker closed the connection.
fn response(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// ApiVersions v0 answers with error 0 and correlation id 1.
fn assert_api_versions_answered(address: &str) {
    let mut stream = connect(address);
    stream.write_all(&frame(&header(18, 0, 1))).unwrap();
    let body = response(&mut stream).expect("an ApiVersions answer");
    assert_eq!(&body[0..4], &1i32.to_be_bytes());
    assert_eq!(&body[4..6], &0i16.to_be_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_own_connection() {
    let cluster = kafka_cluster(1).await;
    let address = cluster.node(1).kafka.clone();
    let bystander = {
        let mut stream = connect(&address);
        stream.write_all(&frame(&header(18, 0, 1))).unwrap();
        response(&mut stream).unwrap();
        stream
    };

    // A too-new ApiVersions gets UNSUPPORTED_VERSION (35) and our version table, in a v0 body.
    let mut stream = connect(&address);
    stream.write_all(&frame(&header(18, 99, 5))).unwrap();
    let body = response(&mut stream).expect("an answer to a too-new ApiVersions");
    assert_eq!(&body[0..4], &5i32.to_be_bytes());
    assert_eq!(&body[4..6], &35i16.to_be_bytes());
    assert!(i32::from_be_bytes(body[6..10].try_into().unwrap()) >= 5, "the table lists our APIs");

    let mut huge_array = header(3, 0, 2);
    huge_array.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("a negative frame size", (-5i32).to_be_bytes().to_vec()),
        ("a frame larger than allowed", (200i32 << 20).to_be_bytes().to_vec()),
        ("an unknown API key", frame(&header(999, 0, 1))),
        ("an unsupported Fetch version", frame(&header(1, 99, 1))),
        ("a Metadata request claiming 2^31 topics", frame(&huge_array)),
        ("a truncated Produce body", frame(&[header(0, 9, 1), vec![0, 1]].concat())),
    ];
    for (what, bytes) in garbage {
        let mut stream = connect(&address);
        stream.write_all(&bytes).unwrap();
        assert!(response(&mut stream).is_none(), "{what}: the connection should be closed");
        assert_api_versions_answered(&address);
    }
    // The connection opened before all that still works.
    let mut bystander = bystander;
    bystander.write_all(&frame(&header(18, 0, 9))).unwrap();
    assert_eq!(&response(&mut bystander).unwrap()[0..4], &9i32.to_be_bytes());
}
