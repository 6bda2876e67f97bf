//! The small runtime every GMMAS service shares: configuration, JSON logging, the NATS bus and
//! object store, the PostgreSQL pool, the stage worker with its outbox and sweeper, health,
//! metrics and shutdown.

pub mod access;
pub mod auth;
pub mod bus;
pub mod bus_auth;
pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod objects;
pub mod outbox;
pub mod registry;
pub mod shutdown;
pub mod supervise;
pub mod sweeper;
pub mod telemetry;
pub mod worker;

pub use config::{CommonConfig, load_config};
pub use shutdown::Shutdown;
