//! sluice: a PostgreSQL connection-limiting proxy.
pub mod auth;
pub mod config;
pub mod protocol;
pub mod pgcluster;
pub mod params;
pub mod pool;
pub mod server;
