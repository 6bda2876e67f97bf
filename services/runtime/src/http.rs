//! The HTTP surface every service has: `/healthz` (alive), `/readyz` (bus and database
//! reachable) and `/metrics` (Prometheus text), plus the shared metrics registry.

use std::sync::Arc;
use std::time::Duration;

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

/// Time limits of an HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send its request headers within this (slowloris protection).
    pub header_timeout: Duration,
    /// A request (body included) must be handled within this, else 408.
    pub request_timeout: Duration,
    /// On shutdown, connections still open after this are closed.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A running listener: its address, and a handle that completes once it has drained.
#[derive(Debug)]
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub done: tokio::task::JoinHandle<()>,
}

/// Binds `addr`, logs the bound address, and serves `router` until shutdown with default limits.
pub async fn serve(addr: &str, router: Router, shutdown: crate::Shutdown) -> anyhow::Result<std::net::SocketAddr> {
    Ok(serve_with(addr, router, shutdown, HttpLimits::default()).await?.addr)
}

/// Serves `router` on the service's listener until shutdown, then waits for it to drain (the
/// whole life of a service whose work is its HTTP API).
pub async fn serve_until_shutdown(
    cfg: &crate::CommonConfig,
    router: Router,
    shutdown: crate::Shutdown,
) -> anyhow::Result<()> {
    let server = serve_with(&cfg.http_addr, router, shutdown.clone(), cfg.http_limits()).await?;
    shutdown.wait().await;
    let _ = server.done.await;
    Ok(())
}

/// Serves `router` (HTTP/1.1) with header and request time limits. On shutdown it stops
/// accepting, lets requests in progress finish (up to `drain_timeout`), then completes `done`.
pub async fn serve_with(
    addr: &str,
    router: Router,
    shutdown: crate::Shutdown,
    limits: HttpLimits,
) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(http_addr = %local, "listening");
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let done = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.wait() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let shutdown = shutdown.clone();
            conns.spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => { let _ = r; }
                    _ = shutdown.wait() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(limits.drain_timeout, drain).await.is_err() {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    });
    Ok(Server { addr: local, done })
}

/// The one error type of GMMAS HTTP handlers. 4xx carry their message to the caller; a 500
/// logs the whole cause chain and returns a generic body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// No valid bearer token: 401 with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token without the role the route needs.
    #[error("{0}")]
    Forbidden(String),
    /// The `Host` header names no host this listener serves.
    #[error("{0}")]
    MisdirectedRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// Too much work queued or in progress: try again after `retry_after_s`.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = serde_json::json!({ "error": self.to_string(), "status": status.as_u16() });
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::Unauthorized(reason) = &self {
            let challenge =
                format!("Bearer error=\"invalid_token\", error_description=\"{}\"", reason.replace('"', "'"));
            if let Ok(v) = axum::http::HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, v);
            }
        }
        if let ApiError::TooManyRequests { retry_after_s, .. } = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after_s));
        }
        response
    }
}
