//! The HTTP admin listener: `/health`, `/metrics` (Prometheus text), `/cluster` (JSON).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use replication::Cluster;
use serde_json::json;

use crate::broker::describe;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Admin {
    cluster: Cluster,
    metrics: Arc<Metrics>,
}

/// The admin routes.
pub fn router(cluster: Cluster, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/cluster", get(cluster_json))
        .with_state(Admin { cluster, metrics })
}

async fn health(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.cluster.is_stopped() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], admin.metrics.render(&admin.cluster))
}

async fn cluster_json(State(admin): State<Admin>) -> impl IntoResponse {
    let catalog = admin.cluster.catalog();
    let topics: Vec<_> =
        catalog.topics.values().map(|topic| crate::cli::topic_json(&describe(&admin.cluster, topic))).collect();
    let body = json!({
        "node_id": admin.cluster.node_id().0,
        "metadata_leader": admin.cluster.metadata_leader().map(|n| n.0),
        "leaders_here": admin.cluster.leader_count(),
        "nodes": catalog.nodes.values().map(|n| json!({"id": n.id.0, "address": n.address, "removed": n.removed})).collect::<Vec<_>>(),
        "topics": topics,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}
