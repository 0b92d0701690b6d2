//! The admin side of sluice: the console (PgBouncer-compatible SHOW and commands on the
//! virtual database `sluice`, alias `pgbouncer`), HTTP (`/metrics`, `/healthz`, `/readyz`),
//! and what feeds them: the registry of live clients, per-pool traffic meters counted on the
//! forward path, rates over recent time (with the suggested pool size), the periodic stats
//! line and the pool advisor.
//!
//! Shape: `Admin` lives in `Shared`; `start` binds the HTTP listener and starts the sampler;
//! the client task hands console logins to `console::serve` and registers pooled sessions in
//! `clients`; sessions count into `meters` through a `tally::Tally`.

pub mod advisor;
pub mod clients;
pub mod command;
pub mod console;
pub mod histogram;
pub mod http;
pub mod limits;
pub mod listing;
pub mod meters;
pub mod metrics;
pub mod operations;
pub mod rates;
pub mod readiness;
pub mod reloads;
pub mod sampler;
pub mod settings;
pub mod show;
pub mod stats_log;
pub mod tally;
pub mod timefmt;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::proxy::Shared;

/// What the admin side keeps, shared by every client task.
#[derive(Default)]
pub struct Admin {
    pub clients: clients::ClientRegistry,
    pub meters: meters::Meters,
    pub errors: meters::ErrorCounts,
    pub rates: rates::Rates,
    /// Cancelled by SHUTDOWN: the process should drain and exit (see `main.rs`).
    pub stop: CancellationToken,
    http_addr: OnceLock<SocketAddr>,
}

impl Admin {
    /// Where `/metrics` is served, once bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr.get().copied()
    }
}

/// Bind the HTTP listener (when `listen.http` is set) and start the sampler.
pub async fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    let http = shared.config.load().listen.http;
    if let Some(addr) = http {
        let bound = http::spawn(shared, addr).await?;
        let _ = shared.admin.http_addr.set(bound);
    }
    sampler::spawn(shared);
    Ok(())
}
