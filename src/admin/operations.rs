//! The admin console's controls: PAUSE, RESUME, RECONNECT, KILL, KILL_CLIENT and SHUTDOWN.
//! Each logs what it did and who asked. PAUSE returns once the database's running
//! transactions have ended (or it is resumed meanwhile); new transactions queue meanwhile,
//! each for up to `pool.queue_timeout`, as they would for a full pool.

use std::time::Duration;

use crate::protocol::error::PgError;
use crate::proxy::Shared;

/// How often PAUSE checks whether the running transactions have ended.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// SQLSTATE for a control that does not fit the current state (object_not_in_prerequisite_state).
const NOT_IN_STATE: &str = "55000";
/// SQLSTATE for a database or client the console does not know (undefined_object).
const UNDEFINED: &str = "42704";

/// Check that `database` (when named) is configured.
fn known(shared: &Shared, database: Option<&str>) -> Result<(), PgError> {
    match database {
        Some(d) if !shared.config.load().databases.contains_key(d) => {
            Err(PgError::error(UNDEFINED, format!("no such database: {d}")))
        }
        _ => Ok(()),
    }
}

fn what(database: Option<&str>) -> String {
    database.map_or_else(
        || "every database".to_string(),
        |d| format!("database \"{d}\""),
    )
}

pub async fn pause(shared: &Shared, database: Option<&str>, by: &str) -> Result<(), PgError> {
    known(shared, database)?;
    shared.pools.pause(database);
    tracing::info!(by, "PAUSE: holding new transactions of {}", what(database));
    loop {
        let held = database.is_none_or(|d| shared.pools.is_paused(d));
        if shared.pools.in_use(database) == 0 || !held {
            return Ok(());
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
}

pub fn resume(shared: &Shared, database: Option<&str>, by: &str) -> Result<(), PgError> {
    known(shared, database)?;
    shared
        .pools
        .resume(database)
        .map_err(|e| PgError::error(NOT_IN_STATE, e))?;
    tracing::info!(by, "RESUME: {} serves again", what(database));
    Ok(())
}

pub fn reconnect(shared: &Shared, database: Option<&str>, by: &str) -> Result<(), PgError> {
    known(shared, database)?;
    shared.pools.reconnect(database);
    tracing::info!(
        by,
        "RECONNECT: replacing the server connections of {}",
        what(database)
    );
    Ok(())
}

/// KILL db: hold the database (until RESUME), drop its clients, close its backends.
pub fn kill(shared: &Shared, database: &str, by: &str) -> Result<(), PgError> {
    known(shared, Some(database))?;
    shared.pools.pause(Some(database));
    shared.pools.reconnect(Some(database));
    let reason = format!("KILL {database}");
    let clients = shared.admin.clients.kill_database(database, &reason);
    tracing::warn!(by, clients, "KILL: dropped the clients and server connections of database \"{database}\"; it is paused until RESUME");
    Ok(())
}

pub fn kill_client(shared: &Shared, id: u32, by: &str) -> Result<(), PgError> {
    let reason = format!("KILL_CLIENT {id}");
    if !shared.admin.clients.kill(id, &reason) {
        return Err(PgError::error(UNDEFINED, format!("no such client: {id}")));
    }
    tracing::warn!(by, client = id, "KILL_CLIENT");
    Ok(())
}

/// SHUTDOWN: refuse new clients from now on and ask the process to drain and exit.
pub fn shutdown(shared: &Shared, by: &str) {
    tracing::warn!(by, "SHUTDOWN requested from the admin console");
    shared.door.start_draining();
    shared.admin.stop.cancel();
}
