//! The HTTP surface every service has: `/healthz` (alive), `/readyz` (bus and database
//! reachable) and `/metrics` (Prometheus text), plus the shared metrics registry.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use sqlx::PgPool;

use crate::bus::Bus;
pub use crate::metrics::Metrics;

#[derive(Clone)]
struct HealthState {
    bus: Option<Bus>,
    db: Option<PgPool>,
    metrics: Metrics,
}

/// Routes for health and metrics; merge into a service's router.
pub fn health_routes<S: Clone + Send + Sync + 'static>(
    bus: Option<Bus>,
    db: Option<PgPool>,
    metrics: Metrics,
) -> Router<S> {
    let state = Arc::new(HealthState { bus, db, metrics });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<HealthState>>) -> impl IntoResponse {
    if let Some(bus) = &s.bus
        && !bus.is_connected()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "nats: not connected".to_string());
    }
    if let Some(db) = &s.db
        && let Err(e) = sqlx::query("SELECT 1").execute(db).await
    {
        tracing::warn!(error = %e, "readiness: database check failed");
        return (StatusCode::SERVICE_UNAVAILABLE, "database: unreachable".to_string());
    }
    (StatusCode::OK, "ready".to_string())
}

async fn metrics_text(State(s): State<Arc<HealthState>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render())
}

/// Binds `addr`, logs the bound address, and serves `router` until shutdown.
pub async fn serve(addr: &str, router: Router, shutdown: crate::Shutdown) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(http_addr = %local, "listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.wait().await }).await;
    });
    Ok(local)
}

/// The one error type of GMMAS HTTP handlers. 4xx carry their message to the caller; a 500
/// logs the whole cause chain and returns a generic body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = serde_json::json!({ "error": self.to_string(), "status": status.as_u16() });
        (status, axum::Json(body)).into_response()
    }
}
