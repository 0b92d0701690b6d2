//! The periodic stats line, like PgBouncer's: every `log.stats_period`, one line per pool that
//! did anything in the period, with its rates and mean times. Fields are structured, so with
//! `log.format = "json"` each is its own key. Names and numbers only, never a password.

use crate::pool::PoolStats;
use crate::proxy::Shared;

use super::rates::Window;

/// Log the stats line of every pool active over the last `log.stats_period`.
pub fn log(shared: &Shared, stats: &[PoolStats]) {
    let period = shared.config.load().log.stats_period;
    for (pool, s) in stats.iter().enumerate() {
        let Some(w) = shared.admin.rates.window(pool, period) else {
            continue;
        };
        let d = &w.delta;
        if d.queries == 0 && d.checkouts == 0 && w.shed == 0 {
            continue;
        }
        let rate = |n: u64| w.per_second(n);
        let (xact_us, query_us, wait_us) = (
            Window::mean_us(d.transaction_us, d.transactions),
            Window::mean_us(d.query_us, d.queries),
            Window::mean_us(d.wait_us, d.checkouts),
        );
        let (xacts, queries, shed) = (rate(d.transactions), rate(d.queries), rate(w.shed));
        let (received, sent) = (rate(d.received), rate(d.sent));
        tracing::info!(
            target: "sluice::stats",
            pool = %format!("{}/{}", s.database, s.user),
            xacts_per_s = xacts,
            queries_per_s = queries,
            in_bytes_per_s = received,
            out_bytes_per_s = sent,
            xact_us,
            query_us,
            wait_us,
            shed_per_s = shed,
            waiting = s.waiting,
            "stats: {}/{}: {xacts:.1} xacts/s, {queries:.1} queries/s, in {received:.0} B/s, out {sent:.0} B/s, xact {xact_us} us, query {query_us} us, wait {wait_us} us, shed {shed:.1}/s",
            s.database,
            s.user,
        );
    }
}
