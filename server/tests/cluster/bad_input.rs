//! Bad input gets a clear error, never a crash: unknown topic or partition, oversized and
//! malformed batches, bad names, a malformed config file, a busy port.

use std::process::Command;

use client::Error;
use tonic::Code;

use crate::harness::TestCluster;

fn code(result: Result<impl std::fmt::Debug, Error>) -> Code {
    match result {
        Err(Error::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_succeed_are_rejected_with_the_right_code() {
    let cluster = TestCluster::start(1);
    cluster.wait_ready().await;
    let client = cluster.client();
    let small = client::TopicConfig { max_message_bytes: Some(1000), ..Default::default() };
    client.create_topic_with_config("small", 2, 1, small).await.unwrap();
    let record = [client::record(None, b"x")];
    assert_eq!(code(client.produce("nope", 0, &record).await), Code::NotFound);
    assert_eq!(code(client.produce("small", 7, &record).await), Code::NotFound);
    assert_eq!(code(client.produce("small", 0, &[client::record(None, &[7u8; 2000])]).await), Code::InvalidArgument);
    assert_eq!(code(client.produce_batch("small", 0, vec![1, 2, 3]).await), Code::InvalidArgument);
    assert_eq!(code(client.create_topic("small", 1, 1).await), Code::AlreadyExists);
    assert_eq!(code(client.create_topic("bad/name", 1, 1).await), Code::InvalidArgument);
    assert_eq!(code(client.create_topic("rf", 1, 3).await), Code::InvalidArgument);
    assert_eq!(code(client.fetch("small", 0, 99, 1000, 0).await), Code::OutOfRange);
    // The node is still healthy after all that.
    assert_eq!(client.produce("small", 0, &record).await.unwrap(), (0, 0));
}

#[test]
fn a_malformed_config_an_unusable_data_dir_or_a_busy_port_exits_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "node_id = \"one\"\n").unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_robustmq")).arg("serve").arg("--config").arg(&config).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid config file"));

    // SASL settings that cannot work are refused at start, with the reason.
    for (toml, reason) in [
        ("[kafka]\nsasl_mechanisms = [\"PLAIN\"]\n", "no [[kafka.users]]"),
        ("[kafka]\nsasl_mechanisms = [\"GSSAPI\"]\n[[kafka.users]]\nname = \"a\"\npassword = \"b\"\n", "GSSAPI"),
    ] {
        std::fs::write(&config, toml).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_robustmq"))
            .args(["serve", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--kafka-listen"])
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("sasl-data"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(reason), "{toml}: {stderr}");
    }

    // A data directory that cannot be created (its parent is a file; root ignores permissions).
    let not_a_directory = dir.path().join("plain-file");
    std::fs::write(&not_a_directory, b"x").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_robustmq"))
        .args(["serve", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(not_a_directory.join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot create the data directory"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let output = Command::new(env!("CARGO_BIN_EXE_robustmq"))
        .args(["serve", "--grpc-listen", &format!("127.0.0.1:{port}"), "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
