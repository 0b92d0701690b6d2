//! `/readyz`: sluice is ready when it takes new clients (not draining or shutting down) and
//! every configured database server accepts a TCP connection within a second. The probes run
//! at once, so the answer takes at most a second whatever the number of databases.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::proxy::Shared;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Ok, or why not, naming each unreachable database.
pub async fn check(shared: &Shared) -> Result<(), String> {
    if shared.door.is_draining() || shared.shutdown.is_cancelled() {
        return Err("draining: new clients are refused".into());
    }
    let mut probes = JoinSet::new();
    for (name, db) in &shared.config.load().databases {
        let (name, host, port) = (name.clone(), db.host.clone(), db.port);
        probes.spawn(async move {
            let connect = TcpStream::connect((host.as_str(), port));
            match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("database \"{name}\" ({host}:{port}): {e}")),
                Err(_) => Some(format!(
                    "database \"{name}\" ({host}:{port}): no answer within 1s"
                )),
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = probes.join_next().await {
        if let Ok(Some(why)) = done {
            failures.push(why);
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort();
    Err(failures.join("; "))
}
