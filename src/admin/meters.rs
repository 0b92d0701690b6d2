//! Traffic meters: per pool, what its clients did (bytes each way, queries, transactions and
//! their time, waits for a backend, time holding one), and over all of sluice the errors it
//! raised by SQLSTATE class. Relaxed atomics only: sessions add, the admin side reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::histogram::Histogram;
use crate::pool::PoolId;
use crate::protocol::error::PgError;

/// One pool's meters.
#[derive(Debug, Default)]
pub struct PoolMeters {
    pub database: String,
    pub user: String,
    /// Bytes read from this pool's clients.
    pub received: AtomicU64,
    /// Bytes written to them.
    pub sent: AtomicU64,
    /// ReadyForQuery messages: one per query (or extended-protocol Sync).
    pub queries: AtomicU64,
    /// ReadyForQuery messages that ended a transaction (status idle).
    pub transactions: AtomicU64,
    pub query_us: AtomicU64,
    pub transaction_us: AtomicU64,
    /// Backends handed to clients, and the time clients waited for them.
    pub checkouts: AtomicU64,
    pub wait_us: AtomicU64,
    /// Time backends spent with a client, from checkout to checkin.
    pub held_us: AtomicU64,
    pub queue_wait: Histogram,
    pub transaction_time: Histogram,
}

/// Cumulative meter readings at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterReading {
    pub received: u64,
    pub sent: u64,
    pub queries: u64,
    pub transactions: u64,
    pub query_us: u64,
    pub transaction_us: u64,
    pub checkouts: u64,
    pub wait_us: u64,
    pub held_us: u64,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl PoolMeters {
    /// A client got a backend after waiting `wait` for it.
    pub fn checked_out(&self, wait: Duration) {
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        self.wait_us.fetch_add(us(wait), Ordering::Relaxed);
        self.queue_wait.observe(wait);
    }

    /// A backend went back to the pool (or was closed) after serving a client for `held`.
    pub fn checked_in(&self, held: Duration) {
        self.held_us.fetch_add(us(held), Ordering::Relaxed);
    }

    pub fn read(&self) -> MeterReading {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MeterReading {
            received: get(&self.received),
            sent: get(&self.sent),
            queries: get(&self.queries),
            transactions: get(&self.transactions),
            query_us: get(&self.query_us),
            transaction_us: get(&self.transaction_us),
            checkouts: get(&self.checkouts),
            wait_us: get(&self.wait_us),
            held_us: get(&self.held_us),
        }
    }
}

impl MeterReading {
    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &MeterReading) -> MeterReading {
        MeterReading {
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
            queries: self.queries.saturating_sub(earlier.queries),
            transactions: self.transactions.saturating_sub(earlier.transactions),
            query_us: self.query_us.saturating_sub(earlier.query_us),
            transaction_us: self.transaction_us.saturating_sub(earlier.transaction_us),
            checkouts: self.checkouts.saturating_sub(earlier.checkouts),
            wait_us: self.wait_us.saturating_sub(earlier.wait_us),
            held_us: self.held_us.saturating_sub(earlier.held_us),
        }
    }

    /// Add another pool's reading (for per-database totals).
    pub fn add(&mut self, other: &MeterReading) {
        self.received += other.received;
        self.sent += other.sent;
        self.queries += other.queries;
        self.transactions += other.transactions;
        self.query_us += other.query_us;
        self.transaction_us += other.transaction_us;
        self.checkouts += other.checkouts;
        self.wait_us += other.wait_us;
        self.held_us += other.held_us;
    }
}

/// Every pool's meters, by pool id (pools are never removed, so ids stay valid).
#[derive(Debug, Default)]
pub struct Meters {
    pools: RwLock<Vec<Option<Arc<PoolMeters>>>>,
}

impl Meters {
    /// The meters of `pool`, made on first use. A session asks once, at login.
    pub fn pool(&self, pool: PoolId, database: &str, user: &str) -> Arc<PoolMeters> {
        if let Some(Some(m)) = self.pools.read().unwrap().get(pool) {
            return m.clone();
        }
        let mut pools = self.pools.write().unwrap();
        if pools.len() <= pool {
            pools.resize(pool + 1, None);
        }
        pools[pool]
            .get_or_insert_with(|| {
                Arc::new(PoolMeters {
                    database: database.to_string(),
                    user: user.to_string(),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// The meters of `pool`, if any session of it has logged in.
    pub fn get(&self, pool: PoolId) -> Option<Arc<PoolMeters>> {
        self.pools.read().unwrap().get(pool).cloned().flatten()
    }
}

/// SQLSTATE classes sluice raises itself; anything else counts as "other".
const CLASSES: [&str; 10] = ["08", "0A", "22", "25", "26", "28", "3D", "42", "53", "57"];

/// Errors sluice sent to clients itself, by SQLSTATE class.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    counts: [AtomicU64; CLASSES.len() + 1],
}

impl ErrorCounts {
    pub fn count(&self, err: &PgError) {
        let class = err.code.get(..2).unwrap_or("");
        let i = CLASSES
            .iter()
            .position(|&c| c == class)
            .unwrap_or(CLASSES.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (class, count) for every class, "other" last.
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        let names = CLASSES.iter().copied().chain(["other"]);
        names
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_are_made_once_per_pool() {
        let m = Meters::default();
        let a = m.pool(3, "app", "alice");
        a.checked_out(Duration::from_millis(2));
        let b = m.pool(3, "ignored", "ignored");
        assert_eq!(b.database, "app");
        assert_eq!(b.read().checkouts, 1);
        assert_eq!(b.read().wait_us, 2000);
        assert!(m.get(0).is_none());
    }

    #[test]
    fn errors_count_by_class() {
        let e = ErrorCounts::default();
        e.count(&PgError::error("53300", "x"));
        e.count(&PgError::error("53300", "x"));
        e.count(&PgError::error("P0001", "x"));
        let read = e.read();
        assert!(read.contains(&("53", 2)));
        assert!(read.contains(&("other", 1)));
    }
}
