//! `/metrics` in the Prometheus text format (version 0.0.4), written by hand from the pools,
//! the meters, the client registry, the door and the reloader. Per-pool series carry
//! `database` and `user` labels; counters end in `_total`; the two latency histograms use the
//! buckets of `histogram::BOUNDS`.

use crate::clock::Instant;
use std::fmt::{Display, Write};

use crate::admission::Refusal;
use crate::pool::{ConnectOutcome, PoolStats, Shed};
use crate::proxy::Shared;

use super::clients::ClientState;
use super::histogram::{HistogramSnapshot, BOUNDS};
use super::meters::{MeterReading, PoolMeters};

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
struct Out(String);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let bounds = BOUNDS.iter().map(|b| b.to_string());
        let les: Vec<String> = bounds.chain(["+Inf".to_string()]).collect();
        for (le, n) in les.iter().zip(&h.cumulative) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

/// A metric family: name, help, and how to read its value from `T`.
type Family<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// One pool's numbers, read once.
struct PoolView {
    stats: PoolStats,
    meters: Option<std::sync::Arc<PoolMeters>>,
    reading: MeterReading,
    suggested: usize,
}

/// Render every metric.
pub fn render(shared: &Shared) -> String {
    let mut out = Out::default();
    let pools: Vec<PoolView> = shared
        .pools
        .all_stats()
        .into_iter()
        .enumerate()
        .map(|(id, stats)| {
            let meters = shared.admin.meters.get(id);
            let reading = meters.as_ref().map(|m| m.read()).unwrap_or_default();
            let suggested = shared.admin.rates.suggested_size(id);
            PoolView {
                stats,
                meters,
                reading,
                suggested,
            }
        })
        .collect();
    connections(&mut out, shared, &pools);
    traffic(&mut out, &pools);
    refusals(&mut out, shared, &pools);
    latency(&mut out, &pools);
    config(&mut out, shared);
    out.0
}

fn connections(out: &mut Out, shared: &Shared, pools: &[PoolView]) {
    let clients = shared.admin.clients.by_pool(Instant::now());
    out.family(
        "sluice_clients",
        "gauge",
        "Client sessions of each pool by state: active (on a server connection), idle, waiting.",
    );
    for (id, p) in pools.iter().enumerate() {
        let c = clients.get(&id).copied().unwrap_or_default();
        for state in ClientState::ALL {
            let l = [
                ("database", p.stats.database.as_str()),
                ("user", &p.stats.user),
                ("state", state.label()),
            ];
            out.sample("sluice_clients", &l, c.count(state));
        }
    }
    out.family(
        "sluice_servers",
        "gauge",
        "Server connections of each pool: active (serving a client or connecting) and idle.",
    );
    for p in pools {
        let s = &p.stats;
        for (state, n) in [("active", s.open - s.idle), ("idle", s.idle)] {
            out.sample(
                "sluice_servers",
                &[
                    ("database", &s.database),
                    ("user", &s.user),
                    ("state", state),
                ],
                n,
            );
        }
    }
    let gauges: [Family<PoolView, usize>; 3] = [
        (
            "sluice_pool_size",
            "Most server connections the pool may open.",
            |p| p.stats.size,
        ),
        (
            "sluice_pool_waiting",
            "Clients queued for a server connection.",
            |p| p.stats.waiting,
        ),
        (
            "sluice_pool_suggested_size",
            "Pool size the load calls for: Little's law over the busiest 10 s of the last minute; 0 without traffic.",
            |p| p.suggested,
        ),
    ];
    for (name, help, get) in gauges {
        out.family(name, "gauge", help);
        for p in pools {
            out.sample(
                name,
                &[("database", &p.stats.database), ("user", &p.stats.user)],
                get(p),
            );
        }
    }
    out.family(
        "sluice_client_connections",
        "gauge",
        "Client connections open, logged in or not.",
    );
    out.sample("sluice_client_connections", &[], shared.client_count());
}

fn traffic(out: &mut Out, pools: &[PoolView]) {
    let counters: [Family<MeterReading, u64>; 2] = [
        (
            "sluice_transactions_total",
            "Transactions served (ReadyForQuery with status idle).",
            |r| r.transactions,
        ),
        (
            "sluice_queries_total",
            "Queries served (ReadyForQuery messages).",
            |r| r.queries,
        ),
    ];
    for (name, help, get) in counters {
        out.family(name, "counter", help);
        for p in pools {
            out.sample(
                name,
                &[("database", &p.stats.database), ("user", &p.stats.user)],
                get(&p.reading),
            );
        }
    }
    out.family(
        "sluice_bytes_total",
        "counter",
        "Bytes received from and sent to clients while they held a server connection.",
    );
    for p in pools {
        for (direction, n) in [("received", p.reading.received), ("sent", p.reading.sent)] {
            let l = [
                ("database", p.stats.database.as_str()),
                ("user", &p.stats.user),
                ("direction", direction),
            ];
            out.sample("sluice_bytes_total", &l, n);
        }
    }
}

fn refusals(out: &mut Out, shared: &Shared, pools: &[PoolView]) {
    out.family(
        "sluice_shed_total",
        "counter",
        "Transactions refused by a pool's queue, by reason.",
    );
    for p in pools {
        for why in Shed::ALL {
            let l = [
                ("database", p.stats.database.as_str()),
                ("user", &p.stats.user),
                ("reason", why.label()),
            ];
            out.sample("sluice_shed_total", &l, p.stats.shed[why as usize]);
        }
    }
    out.family(
        "sluice_timeouts_total",
        "counter",
        "Sessions ended or statements cancelled by a pool timeout.",
    );
    for p in pools {
        let s = &p.stats;
        for (timeout, n) in [
            ("idle_transaction", s.idle_transaction_timeouts),
            ("query", s.query_timeouts),
            ("client_idle", s.client_idle_timeouts),
        ] {
            out.sample(
                "sluice_timeouts_total",
                &[
                    ("database", &s.database),
                    ("user", &s.user),
                    ("timeout", timeout),
                ],
                n,
            );
        }
    }
    out.family(
        "sluice_pool_rides_total",
        "counter",
        "Queries sent on another waiting client's server connection (pool.pipeline_depth).",
    );
    for p in pools {
        let s = &p.stats;
        let l = [("database", s.database.as_str()), ("user", &s.user)];
        out.sample("sluice_pool_rides_total", &l, s.rides);
    }
    out.family(
        "sluice_refusals_total",
        "counter",
        "New clients refused at the door, by reason.",
    );
    for (why, n) in shared.door.refusals() {
        out.sample(
            "sluice_refusals_total",
            &[("reason", Refusal::label(why))],
            n,
        );
    }
    out.family(
        "sluice_errors_total",
        "counter",
        "Errors sluice sent to clients itself, by SQLSTATE class.",
    );
    for (class, n) in shared.admin.errors.read() {
        out.sample("sluice_errors_total", &[("class", class)], n);
    }
    out.family(
        "sluice_server_connects_total",
        "counter",
        "Server connection attempts, by outcome.",
    );
    let connects = shared.pools.connects();
    for outcome in ConnectOutcome::ALL {
        out.sample(
            "sluice_server_connects_total",
            &[("outcome", outcome.label())],
            connects[outcome as usize],
        );
    }
}

fn latency(out: &mut Out, pools: &[PoolView]) {
    let families: [Family<PoolMeters, HistogramSnapshot>; 2] = [
        (
            "sluice_queue_wait_seconds",
            "Time clients waited for a server connection.",
            |m| m.queue_wait.snapshot(),
        ),
        (
            "sluice_transaction_seconds",
            "Transaction time on the server connection.",
            |m| m.transaction_time.snapshot(),
        ),
    ];
    let empty = PoolMeters::default();
    for (name, help, get) in families {
        out.family(name, "histogram", help);
        for p in pools {
            let h = get(p.meters.as_deref().unwrap_or(&empty));
            out.histogram(
                name,
                &[("database", &p.stats.database), ("user", &p.stats.user)],
                &h,
            );
        }
    }
}

fn config(out: &mut Out, shared: &Shared) {
    let counts = &shared.reloader.counts;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    out.family(
        "sluice_config_reloads_total",
        "counter",
        "Config reloads, by outcome.",
    );
    for (outcome, n) in [
        ("applied", get(&counts.applied)),
        ("refused", get(&counts.refused)),
        ("unchanged", get(&counts.unchanged)),
    ] {
        out.sample("sluice_config_reloads_total", &[("outcome", outcome)], n);
    }
    out.family(
        "sluice_config_rollbacks_total",
        "counter",
        "Config changes rolled back (automatically or by ROLLBACK).",
    );
    out.sample("sluice_config_rollbacks_total", &[], get(&counts.rollbacks));
    out.family(
        "sluice_config_version",
        "gauge",
        "Version of the config in force (1 at start, +1 per applied change or rollback).",
    );
    out.sample("sluice_config_version", &[], shared.reloader.version());
    out.family(
        "sluice_paused",
        "gauge",
        "1 while a database is paused (PAUSE or KILL).",
    );
    for name in shared.config.load().databases.keys() {
        out.sample(
            "sluice_paused",
            &[("database", name)],
            u8::from(shared.pools.is_paused(name)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_escape_labels_and_histograms_are_cumulative() {
        let mut out = Out::default();
        out.sample("m", &[("a", "x\"y\\z\n")], 1);
        assert_eq!(out.0, "m{a=\"x\\\"y\\\\z\\n\"} 1\n");
        let h = super::super::histogram::Histogram::default();
        h.observe(std::time::Duration::from_millis(3));
        let mut out = Out::default();
        out.histogram("h", &[("p", "q")], &h.snapshot());
        assert!(out.0.contains("h_bucket{p=\"q\",le=\"0.0025\"} 0\n"));
        assert!(out.0.contains("h_bucket{p=\"q\",le=\"0.005\"} 1\n"));
        assert!(out.0.contains("h_bucket{p=\"q\",le=\"+Inf\"} 1\n"));
        assert!(out.0.contains("h_count{p=\"q\"} 1\n"));
    }
}
