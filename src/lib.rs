//! sluice: a PostgreSQL connection-limiting proxy. Clients speak the PostgreSQL protocol to
//! sluice; sluice serves them over small, bounded pools of backend connections.
//!
//! `proxy` wires the parts: `client` (one task per client), `pool` (bounded backend pools),
//! `server` (one backend connection), `protocol` (framing and messages), `auth` (password
//! math), `config` (the immutable settings snapshot), `cancel` (cancel routing).

pub mod admin;
pub mod admission;
pub mod auth;
pub mod boxed;
pub mod cancel;
pub mod client;
pub mod clock;
pub mod config;
pub mod health;
pub mod params;
pub mod pgcluster;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod rlimit;
pub mod server;

pub use config::Config;
pub use proxy::Proxy;
pub mod prepared;
pub mod quickstart;
