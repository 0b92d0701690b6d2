//! SHOW CLIENTS and SHOW SERVERS: one row per connection, PgBouncer 1.18's columns in its
//! order. `ptr` and `link` carry sluice's ids (a client's id is its cancel key pid, the one
//! KILL_CLIENT takes; a backend's is sluice's serial number). SHOW CLIENTS adds `id` and
//! `pinned` (why transaction pooling keeps the client on its backend) after PgBouncer's.
//! A client's state is `active` (on a backend), `idle` (logged in, holding none; PgBouncer
//! counts these as active) or `waiting`.

use crate::clock::Instant;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::protocol::rows::{oid, Table};
use crate::proxy::Shared;

use super::show::{int, text};
use super::timefmt::utc;

const CONNECTION_COLUMNS: [(&str, u32); 18] = [
    ("type", oid::TEXT),
    ("user", oid::TEXT),
    ("database", oid::TEXT),
    ("state", oid::TEXT),
    ("addr", oid::TEXT),
    ("port", oid::INT4),
    ("local_addr", oid::TEXT),
    ("local_port", oid::INT4),
    ("connect_time", oid::TEXT),
    ("request_time", oid::TEXT),
    ("wait", oid::INT4),
    ("wait_us", oid::INT4),
    ("close_needed", oid::INT4),
    ("ptr", oid::TEXT),
    ("link", oid::TEXT),
    ("remote_pid", oid::INT4),
    ("tls", oid::TEXT),
    ("application_name", oid::TEXT),
];

fn ip(addr: Option<SocketAddr>) -> Option<String> {
    text(addr.map(|a| a.ip().to_string()).unwrap_or_default())
}

fn port(addr: Option<SocketAddr>) -> Option<String> {
    int(addr.map_or(0, |a| a.port()))
}

pub fn clients(shared: &Shared) -> Table {
    let mut columns = CONNECTION_COLUMNS.to_vec();
    columns.extend([("id", oid::INT8), ("pinned", oid::TEXT)]);
    let mut t = Table::new(&columns);
    let now = Instant::now();
    for c in shared.admin.clients.list() {
        let i = &c.info;
        let wait = c.wait(now).unwrap_or_default();
        let server = c.server();
        t.push(vec![
            text("C"),
            text(&*i.user),
            text(&*i.database),
            text(c.state().label()),
            ip(Some(i.peer)),
            port(Some(i.peer)),
            ip(i.local),
            port(i.local),
            text(utc(c.connected_at)),
            text(utc(c.request_time())),
            int(wait.as_secs()),
            int(wait.subsec_micros()),
            int(0),
            text(i.id.to_string()),
            text(server.map(|s| s.id.to_string()).unwrap_or_default()),
            int(0),
            text(""),
            text(&*i.application_name),
            int(i.id),
            c.pinned().map(str::to_string),
        ]);
    }
    t
}

/// Wall-clock time `ago` before now.
fn before_now(ago: std::time::Duration) -> String {
    utc(SystemTime::now() - ago)
}

pub fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(&CONNECTION_COLUMNS);
    let now = Instant::now();
    for c in shared.admin.clients.list() {
        let (Some(s), Some(pool)) = (c.server(), c.info.pool) else {
            continue;
        };
        let retired = s.generation < shared.pools.generation(pool);
        t.push(vec![
            text("S"),
            text(&*c.info.user),
            text(&*c.info.database),
            text("active"),
            ip(Some(s.addr)),
            port(Some(s.addr)),
            text(""),
            int(0),
            text(before_now(now.saturating_duration_since(s.connected))),
            text(utc(c.request_time())),
            int(0),
            int(0),
            int(u8::from(retired)),
            text(s.id.to_string()),
            text(c.id().to_string()),
            int(s.pid),
            text(""),
            text(&*c.info.application_name),
        ]);
    }
    for s in shared.pools.idle_servers() {
        t.push(vec![
            text("S"),
            text(&s.user),
            text(&s.database),
            text("idle"),
            ip(Some(s.addr)),
            port(Some(s.addr)),
            ip(s.local),
            port(s.local),
            text(before_now(s.age)),
            text(before_now(s.idle_for)),
            int(0),
            int(0),
            int(0),
            text(s.id.to_string()),
            text(""),
            int(s.pid),
            text(""),
            text(""),
        ]);
    }
    t
}
