//! The SHOW commands whose columns are PgBouncer 1.18's, in its order, so exporters and
//! dashboards read sluice as they read PgBouncer: POOLS, STATS, DATABASES, USERS, LISTS,
//! VERSION. What sluice does not have is 0 or empty, never made up. sluice's own columns
//! come after PgBouncer's (`suggested_size` in SHOW POOLS, `total_requests` in SHOW STATS for
//! exporters written against PgBouncer before 1.8).

use crate::clock::Instant;
use std::collections::BTreeMap;

use crate::config::{Config, PoolMode};
use crate::protocol::rows::{oid, Table};
use crate::proxy::Shared;

use super::meters::MeterReading;
use super::rates::Window;

/// A value for a row.
pub fn int(n: impl ToString) -> Option<String> {
    Some(n.to_string())
}

pub fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

pub fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

/// What SHOW VERSION says: the PgBouncer release whose console sluice speaks first, for tools
/// that pick their queries by it, then sluice's own version.
pub fn version() -> String {
    format!("PgBouncer 1.18.0 (sluice {})", env!("CARGO_PKG_VERSION"))
}

pub fn show_version() -> Table {
    let mut t = Table::new(&[("version", oid::TEXT)]);
    t.push(vec![text(version())]);
    t
}

pub fn pools(shared: &Shared) -> Table {
    const INT_COLUMNS: [&str; 13] = [
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
    ];
    let mut columns = vec![("database", oid::TEXT), ("user", oid::TEXT)];
    columns.extend(INT_COLUMNS.iter().map(|&c| (c, oid::INT4)));
    columns.extend([("pool_mode", oid::TEXT), ("suggested_size", oid::INT4)]);
    let mut t = Table::new(&columns);
    let config = shared.config.load();
    let clients = shared.admin.clients.by_pool(Instant::now());
    for (pool, s) in shared.pools.all_stats().into_iter().enumerate() {
        let c = clients.get(&pool).copied().unwrap_or_default();
        let mode = config
            .databases
            .contains_key(&s.database)
            .then(|| mode_name(config.pool_mode(&s.database)));
        t.push(vec![
            text(&s.database),
            text(&s.user),
            int(c.active + c.idle),
            int(c.waiting),
            int(0),
            int(0),
            int(s.open - s.idle),
            int(0),
            int(0),
            int(s.idle),
            int(0),
            int(0),
            int(0),
            int(c.max_wait.as_secs()),
            int(c.max_wait.subsec_micros()),
            mode.map(str::to_string),
            int(shared.admin.rates.suggested_size(pool)),
        ]);
    }
    t
}

/// Totals and recent averages of one database, summed over its pools.
#[derive(Default)]
struct DatabaseStats {
    total: MeterReading,
    window: Window,
}

fn database_stats(shared: &Shared) -> BTreeMap<String, DatabaseStats> {
    let period = shared.config.load().log.stats_period;
    let mut out: BTreeMap<String, DatabaseStats> = BTreeMap::new();
    for (pool, s) in shared.pools.all_stats().iter().enumerate() {
        let Some(m) = shared.admin.meters.get(pool) else {
            continue;
        };
        let e = out.entry(s.database.clone()).or_default();
        e.total.add(&m.read());
        if let Some(w) = shared.admin.rates.window(pool, period) {
            e.window.delta.add(&w.delta);
            e.window.elapsed = e.window.elapsed.max(w.elapsed);
        }
    }
    out
}

/// SHOW STATS: totals since start, and averages over the last `log.stats_period`.
pub fn stats(shared: &Shared) -> Table {
    const NUMERIC: [&str; 15] = [
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "total_requests",
    ];
    let mut columns = vec![("database", oid::TEXT)];
    columns.extend(NUMERIC.iter().map(|&c| (c, oid::NUMERIC)));
    let mut t = Table::new(&columns);
    for (database, s) in database_stats(shared) {
        let (a, w) = (&s.total, &s.window);
        let d = &w.delta;
        let rate = |n: u64| w.per_second(n) as u64;
        t.push(vec![
            text(database),
            int(a.transactions),
            int(a.queries),
            int(a.received),
            int(a.sent),
            int(a.transaction_us),
            int(a.query_us),
            int(a.wait_us),
            int(rate(d.transactions)),
            int(rate(d.queries)),
            int(rate(d.received)),
            int(rate(d.sent)),
            int(Window::mean_us(d.transaction_us, d.transactions)),
            int(Window::mean_us(d.query_us, d.queries)),
            int(Window::mean_us(d.wait_us, d.checkouts)),
            int(a.queries),
        ]);
    }
    t
}

pub fn databases(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("name", oid::TEXT),
        ("host", oid::TEXT),
        ("port", oid::INT4),
        ("database", oid::TEXT),
        ("force_user", oid::TEXT),
        ("pool_size", oid::INT4),
        ("min_pool_size", oid::INT4),
        ("reserve_pool", oid::INT4),
        ("pool_mode", oid::TEXT),
        ("max_connections", oid::INT4),
        ("current_connections", oid::INT4),
        ("paused", oid::INT4),
        ("disabled", oid::INT4),
    ]);
    let config: &Config = &shared.config.load();
    let stats = shared.pools.all_stats();
    for (name, db) in &config.databases {
        let open: usize = stats
            .iter()
            .filter(|s| &s.database == name)
            .map(|s| s.open)
            .sum();
        t.push(vec![
            text(name),
            text(&db.host),
            int(db.port),
            text(&db.dbname),
            None,
            int(db.pool_size.unwrap_or(config.pool.size)),
            int(config.pool.min_size),
            int(0),
            db.mode.map(|m| mode_name(m).to_string()),
            int(db.max_connections.unwrap_or(0)),
            int(open),
            int(u8::from(shared.pools.is_paused(name))),
            int(0),
        ]);
    }
    t
}

pub fn users(shared: &Shared) -> Table {
    let mut t = Table::new(&[("name", oid::TEXT), ("pool_mode", oid::TEXT)]);
    for name in shared.config.load().users.keys() {
        t.push(vec![text(name), None]);
    }
    t
}

pub fn lists(shared: &Shared) -> Table {
    let config = shared.config.load();
    let stats = shared.pools.all_stats();
    let registered = shared.admin.clients.len();
    let accepted = shared.client_count();
    let items = [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", stats.len()),
        ("free_clients", 0),
        ("used_clients", registered),
        ("login_clients", accepted.saturating_sub(registered)),
        ("free_servers", 0),
        ("used_servers", stats.iter().map(|s| s.open).sum()),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    let mut t = Table::new(&[("list", oid::TEXT), ("items", oid::INT4)]);
    for (name, n) in items {
        t.push(vec![text(name), int(n)]);
    }
    t
}
