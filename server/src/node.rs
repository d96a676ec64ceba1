//! `robustmq serve`: starts replication, the gRPC listener and the admin listener, and stops
//! them gracefully on SIGINT/SIGTERM (stop accepting, let in-flight requests finish, flush).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::broker::{BrokerService, MESSAGE_BYTES_MAX};
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// How long leaderships get to move to other nodes after a shutdown signal.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish after that. Peers' Raft streams never finish on
/// their own, so this is also how long the listener lingers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the node until a shutdown signal.
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
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

    shutdown_signal().await?;
    info!("shutdown signal received: handing leadership over, then finishing in-flight requests");
    cluster.hand_off_leadership(HAND_OFF_TIMEOUT).await;
    let _ = stop_sender.send(true);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, grpc).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, admin).await;
    cluster.shutdown().await;
    info!("stopped");
    Ok(())
}

fn tokio_stream_listener(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
