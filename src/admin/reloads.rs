//! The reload commands of the admin console: RELOAD [FORCE], ROLLBACK and SHOW RELOADS, on
//! top of the reloader (`crate::reload`). A reload's summary comes back as a NOTICE before
//! the command tag; a refused reload or rollback is an ERROR naming why.

use crate::protocol::error::PgError;
use crate::protocol::rows::{oid, Table};
use crate::proxy::Shared;

use super::show::{int, text};
use super::timefmt::utc;

/// SQLSTATE of a refused reload or rollback (object_not_in_prerequisite_state).
const REFUSED: &str = "55000";

pub async fn reload(shared: &Shared, force: bool, by: &str) -> Result<String, PgError> {
    tracing::info!(by, force, "RELOAD requested from the admin console");
    shared
        .reloader
        .reload(force)
        .await
        .map_err(|e| PgError::error(REFUSED, e))
}

pub fn rollback(shared: &Shared, by: &str) -> Result<String, PgError> {
    tracing::info!(by, "ROLLBACK requested from the admin console");
    shared
        .reloader
        .rollback()
        .map_err(|e| PgError::error(REFUSED, e))
}

pub fn history(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("at", oid::TEXT),
        ("trigger", oid::TEXT),
        ("version", oid::INT8),
        ("hash", oid::TEXT),
        ("summary", oid::TEXT),
        ("outcome", oid::TEXT),
    ]);
    for r in shared.reloader.history() {
        t.push(vec![
            text(utc(r.at)),
            text(r.trigger),
            int(r.version),
            text(r.hash),
            text(r.summary),
            text(r.outcome),
        ]);
    }
    t
}
