//! What one session counts while it forwards: bytes each way, queries and transactions (from
//! ReadyForQuery, as PgBouncer counts them) and their time. Kept in plain fields on the
//! forward path and added to the pool's meters once per read or write (`flush`), so the cost
//! per message is an add, and per read a handful of relaxed atomics at most.

use crate::clock::Instant;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use super::clients::ClientEntry;
use super::meters::PoolMeters;

pub struct Tally {
    pub meters: Arc<PoolMeters>,
    pub client: Arc<ClientEntry>,
    received: u64,
    sent: u64,
    queries: u64,
    transactions: u64,
    query_us: u64,
    transaction_us: u64,
    query_start: Option<Instant>,
    transaction_start: Option<Instant>,
    /// Idle inside a transaction since then, as last told to the registry.
    idle_in_transaction: Option<Instant>,
    pin_reported: bool,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn add(counter: &AtomicU64, n: &mut u64) {
    if *n > 0 {
        counter.fetch_add(std::mem::take(n), Ordering::Relaxed);
    }
}

impl Tally {
    pub fn new(meters: Arc<PoolMeters>, client: Arc<ClientEntry>) -> Tally {
        Tally {
            meters,
            client,
            received: 0,
            sent: 0,
            queries: 0,
            transactions: 0,
            query_us: 0,
            transaction_us: 0,
            query_start: None,
            transaction_start: None,
            idle_in_transaction: None,
            pin_reported: false,
        }
    }

    #[inline]
    pub fn received(&mut self, n: usize) {
        self.received += n as u64;
    }

    #[inline]
    pub fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// The client's messages so far leave `pending` replies owed: a query is running.
    #[inline]
    pub fn requests(&mut self, pending: u32) {
        if pending == 0 || self.query_start.is_some() {
            return;
        }
        let now = Instant::now();
        self.query_start = Some(now);
        self.transaction_start.get_or_insert(now);
        self.client.requested(now);
    }

    /// A ReadyForQuery with `status` arrived; `pending` replies are still owed after it.
    pub fn ready(&mut self, status: u8, pending: u32) {
        let now = Instant::now();
        self.queries += 1;
        if let Some(start) = self.query_start.take() {
            self.query_us += now.micros_since(start);
        }
        if pending > 0 {
            self.query_start = Some(now);
        }
        if status != b'I' {
            return;
        }
        self.transactions += 1;
        if let Some(start) = self.transaction_start.take() {
            let took = now.saturating_duration_since(start);
            self.transaction_us += us(took);
            self.meters.transaction_time.observe(took);
        }
        if pending > 0 {
            self.transaction_start = Some(now);
        }
    }

    /// Add what was counted to the pool's meters, and tell the registry whether the client
    /// now sits idle inside a transaction and why it is pinned.
    pub fn flush(&mut self, idle_in_transaction: bool, pinned: Option<&str>) {
        let m = &self.meters;
        add(&m.received, &mut self.received);
        add(&m.sent, &mut self.sent);
        add(&m.queries, &mut self.queries);
        add(&m.transactions, &mut self.transactions);
        add(&m.query_us, &mut self.query_us);
        add(&m.transaction_us, &mut self.transaction_us);
        if idle_in_transaction != self.idle_in_transaction.is_some() {
            self.idle_in_transaction = idle_in_transaction.then(Instant::now);
            self.client.idle_in_transaction(self.idle_in_transaction);
        }
        if let (Some(reason), false) = (pinned, self.pin_reported) {
            self.client.pin(reason);
            self.pin_reported = true;
        }
    }

    /// `n` bytes read from a client holding no backend (transaction mode, between
    /// transactions): count them, with what was answered locally, now.
    pub fn between_transactions(&mut self, n: usize) {
        self.received(n);
        self.flush(false, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::clients::{ClientRegistry, NewClient};

    #[test]
    fn ready_for_query_counts_queries_and_transactions() {
        let reg = ClientRegistry::default();
        let r = reg.register(NewClient {
            id: 1,
            user: "u".into(),
            database: "d".into(),
            pool: Some(0),
            peer: "127.0.0.1:1".parse().unwrap(),
            local: None,
            application_name: "".into(),
        });
        let meters = Arc::new(PoolMeters::default());
        let mut t = Tally::new(meters.clone(), r.entry.clone());
        t.received(10);
        t.requests(1); // BEGIN
        t.ready(b'T', 0);
        t.flush(true, None);
        assert!(r.entry.idle_in_transaction_for(Instant::now()).is_some());
        t.requests(1); // COMMIT
        t.ready(b'I', 0);
        t.sent(5);
        t.flush(false, Some("SET work_mem"));
        let m = meters.read();
        assert_eq!(
            (m.queries, m.transactions, m.received, m.sent),
            (2, 1, 10, 5)
        );
        assert_eq!(meters.transaction_time.snapshot().count(), 1);
        assert!(r.entry.idle_in_transaction_for(Instant::now()).is_none());
        assert_eq!(r.entry.pinned(), Some("SET work_mem"));
    }
}
