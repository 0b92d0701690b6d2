//! SHOW LIMITS (sluice's own): every limit, what it is set to, how much of it is in use, and
//! how often it refused someone, by reason. The door's refusals are counted over all of
//! sluice; sheds and timeouts per pool. Columns: scope, limit (the config key), setting,
//! in_use, reason, refused (NULL where a limit has no use or no refusals of its own).

use crate::admission::Refusal;
use crate::config::units::format_duration;
use crate::config::{Config, QueuePolicy};
use crate::pool::{PoolStats, Shed};
use crate::protocol::rows::{oid, Table};
use crate::proxy::Shared;

use super::show::{int, text};

struct Row<'a> {
    scope: &'a str,
    limit: String,
    setting: Option<String>,
    in_use: Option<String>,
    reason: Option<&'a str>,
    refused: Option<u64>,
}

fn push(t: &mut Table, r: Row) {
    t.push(vec![
        text(r.scope),
        text(r.limit),
        r.setting,
        r.in_use,
        r.reason.map(str::to_string),
        r.refused.map(|n| n.to_string()),
    ]);
}

fn cap(n: Option<usize>) -> Option<String> {
    text(n.map_or_else(|| "none".to_string(), |n| n.to_string()))
}

pub fn limits(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("scope", oid::TEXT),
        ("limit", oid::TEXT),
        ("setting", oid::TEXT),
        ("in_use", oid::INT8),
        ("reason", oid::TEXT),
        ("refused", oid::INT8),
    ]);
    let config = shared.config.load();
    let stats = shared.pools.all_stats();
    door_rows(&mut t, shared, &config, &stats);
    scoped_rows(&mut t, shared, &config, &stats);
    for s in &stats {
        pool_rows(&mut t, &config, s);
    }
    t
}

/// The limits of the door and the global caps.
fn door_rows(t: &mut Table, shared: &Shared, config: &Config, stats: &[PoolStats]) {
    let l = &config.limits;
    let open: usize = stats.iter().map(|s| s.open).sum();
    let limit_of = |r: Refusal| -> (String, Option<String>, Option<String>) {
        match r {
            Refusal::ClientCap => (
                "limits.max_client_connections".into(),
                int(l.max_client_connections),
                int(shared.client_count()),
            ),
            Refusal::DatabaseCap => ("databases.*.max_client_connections".into(), None, None),
            Refusal::UserCap => ("users.*.max_client_connections".into(), None, None),
            Refusal::UserDatabaseRate | Refusal::AddressRate => (
                "limits.connection_rate".into(),
                int(l.connection_rate),
                None,
            ),
            Refusal::AuthFailures => (
                "limits.auth_failures_per_minute".into(),
                int(l.auth_failures_per_minute),
                None,
            ),
            Refusal::Draining => ("shutdown".into(), None, None),
        }
    };
    for (r, n) in shared.door.refusals() {
        let (limit, setting, in_use) = limit_of(r);
        let row = Row {
            scope: "sluice",
            limit,
            setting,
            in_use,
            reason: Some(r.label()),
            refused: Some(n),
        };
        push(t, row);
    }
    let row = Row {
        scope: "sluice",
        limit: "limits.max_server_connections".into(),
        setting: int(l.max_server_connections),
        in_use: int(open),
        reason: None,
        refused: None,
    };
    push(t, row);
}

/// Per-database and per-user caps with their current use.
fn scoped_rows(t: &mut Table, shared: &Shared, config: &Config, stats: &[PoolStats]) {
    let clients = shared.admin.clients.list();
    let count = |f: &dyn Fn(&super::clients::ClientEntry) -> bool| {
        clients
            .iter()
            .filter(|c| c.info.pool.is_some() && f(c))
            .count()
    };
    for (name, db) in &config.databases {
        let scope = format!("database {name}");
        let open: usize = stats
            .iter()
            .filter(|s| &s.database == name)
            .map(|s| s.open)
            .sum();
        let key = |k: &str| format!("databases.{name}.{k}");
        for (limit, setting, in_use) in [
            (
                key("max_client_connections"),
                db.max_client_connections,
                count(&|c| *c.info.database == **name),
            ),
            (key("max_connections"), db.max_connections, open),
        ] {
            let row = Row {
                scope: &scope,
                limit,
                setting: cap(setting),
                in_use: int(in_use),
                reason: None,
                refused: None,
            };
            push(t, row);
        }
    }
    for (name, user) in config
        .users
        .iter()
        .filter(|(_, u)| u.max_client_connections.is_some())
    {
        let scope = format!("user {name}");
        let row = Row {
            scope: &scope,
            limit: format!("users.{name}.max_client_connections"),
            setting: cap(user.max_client_connections),
            in_use: int(count(&|c| *c.info.user == **name)),
            reason: None,
            refused: None,
        };
        push(t, row);
    }
}

/// The config key that sets a pool's size.
fn size_key(config: &Config, s: &PoolStats) -> String {
    if config
        .users
        .get(&s.user)
        .and_then(|u| u.pool_size)
        .is_some()
    {
        format!("users.{}.pool_size", s.user)
    } else if config
        .databases
        .get(&s.database)
        .and_then(|d| d.pool_size)
        .is_some()
    {
        format!("databases.{}.pool_size", s.database)
    } else {
        "pool.size".into()
    }
}

/// A pool's size, queue and timeouts, with its sheds and timeouts by reason.
fn pool_rows(t: &mut Table, config: &Config, s: &PoolStats) {
    let scope = format!("pool {}/{}", s.database, s.user);
    let p = &config.pool;
    let busy = s.open - s.idle;
    let queue = match p.queue {
        QueuePolicy::Fifo => "fifo",
        QueuePolicy::Codel => "codel",
    };
    let d = format_duration;
    let shed = |why: Shed| Some(s.shed[why as usize]);
    let mut rows = vec![
        (size_key(config, s), int(s.size), int(busy), None, None),
        (
            "pool.max_waiting".into(),
            int(p.max_waiting),
            int(s.waiting),
            Some(Shed::QueueFull.label()),
            shed(Shed::QueueFull),
        ),
        (
            "pool.queue_timeout".into(),
            text(d(p.queue_timeout)),
            None,
            Some(Shed::QueueTimeout.label()),
            shed(Shed::QueueTimeout),
        ),
        (
            "pool.queue".into(),
            text(queue),
            None,
            Some(Shed::Codel.label()),
            shed(Shed::Codel),
        ),
        (
            "pool.idle_transaction_timeout".into(),
            text(d(p.idle_transaction_timeout)),
            None,
            Some("idle_transaction_timeout"),
            Some(s.idle_transaction_timeouts),
        ),
        (
            "pool.query_timeout".into(),
            text(d(p.query_timeout)),
            None,
            Some("query_timeout"),
            Some(s.query_timeouts),
        ),
        (
            "pool.client_idle_timeout".into(),
            text(d(p.client_idle_timeout)),
            None,
            Some("client_idle_timeout"),
            Some(s.client_idle_timeouts),
        ),
    ];
    if let Some(limit) = s.adaptive_limit {
        let key = format!("databases.{}.adaptive", s.database);
        rows.insert(1, (key, int(limit), int(busy), None, None));
    }
    for (limit, setting, in_use, reason, refused) in rows {
        push(
            t,
            Row {
                scope: &scope,
                limit,
                setting,
                in_use,
                reason,
                refused,
            },
        );
    }
}
