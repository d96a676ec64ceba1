//! `robustmq serve`: starts replication, the gRPC listener and the admin listener, and stops
//! them gracefully on SIGINT/SIGTERM (stop accepting, let in-flight requests finish, flush).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use replication::Cluster;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::{BrokerService, MESSAGE_BYTES_MAX};
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// How often a node checks that the catalog holds its protocol endpoints.
const ENDPOINT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long leaderships get to move to other nodes after a shutdown signal.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish after that. Peers' Raft streams never finish on
/// their own, so this is also how long the listener lingers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the node until a shutdown signal, or until its storage fails (then returns the error).
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    // Installed first: a SIGTERM that arrives while the node starts still stops it gracefully.
    let shutdown = shutdown_signal()?;
    let replication = config.replication()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let probe = config.data_dir.join(".write-probe");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("the data directory {} is not writable", config.data_dir.display()))?;
    std::fs::remove_file(&probe).ok();
    // Bind both listeners before starting anything, so a busy port fails fast and cleanly.
    let grpc_address: SocketAddr = config.grpc_listen.parse()?;
    let grpc_listener = TcpListener::bind(grpc_address)
        .await
        .with_context(|| format!("cannot listen on {grpc_address} (grpc_listen): is another node running?"))?;
    let admin_listener = TcpListener::bind(&config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin_listen)", config.admin_listen))?;
    let kafka = if config.kafka.enabled {
        let facade = config.kafka.facade()?;
        let listener = TcpListener::bind(&config.kafka.listen)
            .await
            .with_context(|| format!("cannot listen on {} (kafka.listen)", config.kafka.listen))?;
        Some((facade, listener))
    } else {
        None
    };

    let metrics = Arc::new(Metrics::register());
    let (cluster, raft_service) = replication::start(replication).context("cannot start replication")?;
    info!(
        node_id = config.node_id,
        grpc = %grpc_address,
        admin = %config.admin_listen,
        data_dir = %config.data_dir.display(),
        "node started"
    );

    let (stop_sender, stop) = watch::channel(false);
    let broker = proto::v1::broker_server::BrokerServer::new(BrokerService::new(cluster.clone(), metrics.clone()))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let mut grpc_stop = stop.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            // Peers may send DATA frames of up to 1 MiB instead of HTTP/2's 16 KiB default: a
            // 64 KiB produce or a Raft batch then crosses h2 as one frame, not four or more
            // (RF 3 used 5-9 % fewer core-seconds per GiB). Flow-control windows stay as they were.
            .max_frame_size(1 << 20)
            .add_service(raft_service.into_server())
            .add_service(broker)
            .serve_with_incoming_shutdown(tokio_stream_listener(grpc_listener), async move {
                let _ = grpc_stop.wait_for(|stopping| *stopping).await;
            }),
    );
    let mut admin_stop = stop.clone();
    let admin_router = crate::admin::router(cluster.clone(), metrics);
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|stopping| *stopping).await;
            })
            .await
    });

    let mut endpoints = std::collections::HashMap::new();
    let mut kafka_task = None;
    if let Some((facade, listener)) = kafka {
        endpoints.insert(facade_kafka::ENDPOINT.to_string(), facade.advertised_address.clone());
        let admin = client::Client::new(vec![config.own_grpc()?]);
        kafka_task = Some(tokio::spawn(facade_kafka::serve(listener, cluster.clone(), admin, facade, stop.clone())));
    }
    let registration = tokio::spawn(register_endpoints(cluster.clone(), config.own_grpc()?, endpoints));

    tokio::select! {
        () = shutdown => {}
        reason = cluster.storage_failed() => {
            // Logged by the store loop. Nothing can be replicated or acknowledged any more, so
            // the process ends and clients and peers turn to the other nodes.
            registration.abort();
            let _ = stop_sender.send(true);
            anyhow::bail!("this node's storage failed ({reason}); the node stopped");
        }
    }
    registration.abort();
    info!("shutdown signal received: handing leadership over, then finishing in-flight requests");
    cluster.hand_off_leadership(HAND_OFF_TIMEOUT).await;
    let _ = stop_sender.send(true);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, grpc).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, admin).await;
    if let Some(kafka) = kafka_task {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, kafka).await;
    }
    cluster.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Records this node's protocol endpoints in the catalog (through the metadata leader), and
/// again whenever the catalog loses them (a restart with other addresses, a re-added node).
async fn register_endpoints(cluster: Cluster, own_address: String, endpoints: HashMap<String, String>) {
    let wanted: BTreeMap<String, String> = endpoints.clone().into_iter().collect();
    let client = client::Client::new(vec![own_address]);
    loop {
        let registered = cluster
            .with_catalog(|c| c.nodes.get(&cluster.node_id()).map(|node| (node.removed, node.endpoints == wanted)));
        match registered {
            // Registered already, or removed from the cluster (nothing to register any more).
            Some((true, _)) | Some((false, true)) => {}
            // Not (yet) a member: a joining node waits for `cluster add-node`.
            None => {}
            Some((false, false)) => match client.set_endpoints(cluster.node_id().0, endpoints.clone()).await {
                Ok(()) => info!(?wanted, "registered protocol endpoints"),
                Err(error) => warn!(%error, "cannot register protocol endpoints yet"),
            },
        }
        tokio::time::sleep(ENDPOINT_CHECK_INTERVAL).await;
    }
}

fn tokio_stream_listener(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
