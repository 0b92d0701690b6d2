//! The admin side's clock: once a second it records every pool's meters for the rates, runs
//! the advisor, and every `log.stats_period` logs the stats line. Holds the proxy weakly, so
//! it ends with it.

use crate::clock::Instant;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::pool::PoolStats;
use crate::proxy::Shared;

use super::advisor::{Advisor, IdleClient, PoolSignal};
use super::rates::SUGGESTION_WINDOW;
use super::stats_log;

const TICK: Duration = Duration::from_secs(1);

pub fn spawn(shared: &Arc<Shared>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut advisor = Advisor::default();
        let mut last_log = Instant::now();
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            if shared.shutdown.is_cancelled() {
                return;
            }
            let now = Instant::now();
            let stats = shared.pools.all_stats();
            record(&shared, &stats, now);
            advise(&shared, &mut advisor, &stats, now);
            if now.duration_since(last_log) >= shared.config.load().log.stats_period {
                last_log = now;
                stats_log::log(&shared, &stats);
            }
        }
    });
}

fn record(shared: &Shared, stats: &[PoolStats], now: Instant) {
    let keep = shared.config.load().log.stats_period.max(SUGGESTION_WINDOW) + 2 * TICK;
    for (pool, s) in stats.iter().enumerate() {
        let reading = shared
            .admin
            .meters
            .get(pool)
            .map(|m| m.read())
            .unwrap_or_default();
        let shed = s.shed.iter().sum();
        shared.admin.rates.record(pool, now, reading, shed, keep);
    }
}

fn advise(shared: &Shared, advisor: &mut Advisor, stats: &[PoolStats], now: Instant) {
    let signals: Vec<PoolSignal> = stats
        .iter()
        .enumerate()
        .map(|(pool, s)| PoolSignal {
            pool,
            name: format!("{}/{}", s.database, s.user),
            size: s.size,
            waiting: s.waiting,
            shed: s.shed.iter().sum(),
            // Only a pool that queues or sheds can be saturated; spare the others the work.
            suggested: if s.waiting > 0 || s.shed.iter().any(|&n| n > 0) {
                shared.admin.rates.suggested_size(pool)
            } else {
                0
            },
        })
        .collect();
    for warning in advisor.pools(now, &signals) {
        tracing::warn!(target: "sluice::advisor", "{warning}");
    }
    let idle: Vec<IdleClient> = shared
        .admin
        .clients
        .list()
        .iter()
        .filter_map(|c| {
            Some(IdleClient {
                id: c.id(),
                user: c.info.user.to_string(),
                peer: c.info.peer,
                idle_for: c.idle_in_transaction_for(now)?,
            })
        })
        .collect();
    if let Some(warning) = advisor.idle_in_transaction(&idle) {
        tracing::warn!(target: "sluice::advisor", "{warning}");
    }
}
