//! Logging setup: JSON lines by default (one object per event, for log shippers), or a
//! human-readable format; the level comes from `RUST_LOG` (default `info`).

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(service: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = if format == "pretty" {
        fmt().with_env_filter(filter).with_target(false).try_init()
    } else {
        fmt().json().with_env_filter(filter).with_current_span(false).flatten_event(true).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
