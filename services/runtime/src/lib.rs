//! The small runtime every GMMAS service shares: configuration, JSON logging, the NATS bus and
//! object store, the PostgreSQL pool and stage bookkeeping, health and metrics, and shutdown.

pub mod bus;
pub mod config;
pub mod db;
pub mod http;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;

pub use config::{CommonConfig, load_config};
pub use shutdown::Shutdown;
