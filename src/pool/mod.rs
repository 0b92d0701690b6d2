//! Pools of backend connections, one per (database, user), bounded at three levels at once:
//! the pool's size, the database's `max_connections` and `limits.max_server_connections`.
//! None is ever exceeded: capacity is a counted `Slot` taken under one lock before any connect.
//!
//! Idle backends are reused last-in first-out, so a quiet pool's extra backends age out.
//! Clients that find no capacity wait in a FIFO queue until their deadline, which one sweeper
//! task enforces for every queue (no timer per waiting client); a returned backend goes
//! straight to the oldest waiter of its pool, and freed capacity to the oldest waiter that can
//! use it. The lock is a plain mutex held for a few field updates, never across an await.

mod control;
mod ride;
mod slot;
mod state;

pub use control::{ConnectOutcome, ServerView};
pub use ride::{Offer, Reply, Ride, RideRequest, Rider};
pub use slot::Slot;

use crate::boxed::boxed;
use crate::clock::Instant;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::QueuePolicy;
use crate::params::Params;
use crate::server::{Backend, ConnectTarget, SaltedPasswords, ServerConn, ServerError};
use state::{Grant, State, Take};

/// A backend about to be handed out at `now`, if it is still there and quiet (else it is
/// dropped).
fn ready(mut server: Backend, now: Instant) -> Option<Backend> {
    if server.check_idle() {
        server.checked_out_at = now;
        return Some(server);
    }
    tracing::debug!(server = server.id, "idle backend went away; taking another");
    None
}

/// Index of a pool in its `PoolSet`. Pools are never removed, so an id stays valid.
pub type PoolId = usize;

/// What a pool is made from: its limits and where its backends connect.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    /// The database-wide cap, shared by every user's pool of that database.
    pub database_max: Option<usize>,
    pub target: ConnectTarget,
    /// Clients allowed to wait; beyond it, refused at once.
    pub max_waiting: usize,
    pub queue: QueuePolicy,
    pub codel_interval: Duration,
    pub codel_target: Duration,
    /// This pool's weight in its database's fair shares.
    pub weight: usize,
    /// Backends of the database kept for this pool alone.
    pub reserve: usize,
    /// The adaptive limit's floor, when the database uses one.
    pub adaptive_min: Option<usize>,
    /// Queries per backend write when waiting clients ride along (1: nobody rides).
    pub pipeline_depth: usize,
}

/// Why a waiting client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `pool.max_waiting` clients were already waiting.
    QueueFull,
    /// Nothing came free before `pool.queue_timeout`.
    QueueTimeout,
    /// CoDel found the queue standing and this client too old to serve.
    Codel,
}

impl Shed {
    pub const ALL: [Shed; 3] = [Shed::QueueFull, Shed::QueueTimeout, Shed::Codel];

    pub fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
            Shed::Codel => "codel",
        }
    }
}

/// Per-pool events counted for the metrics: sheds and the timeouts sessions enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Shed(Shed),
    IdleTransactionTimeout,
    QueryTimeout,
    ClientIdleTimeout,
}

/// Why no backend was handed out.
#[derive(Debug)]
pub enum CheckoutError {
    /// Refused by the queue: full, timed out, or shed by CoDel.
    Shed(Shed),
    /// A new backend was needed and could not be connected.
    Connect(ServerError),
    /// sluice is shutting down.
    Closed,
}

/// A point-in-time view of one pool, for tests, logs and the admin console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub database: String,
    pub user: String,
    pub size: usize,
    /// Backends connected or connecting.
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
    /// The adaptive limit on backends in use, when the database has one.
    pub adaptive_limit: Option<usize>,
    /// Whether CoDel currently finds the queue standing.
    pub overloaded: bool,
    /// Backends handed out.
    pub checkouts: u64,
    /// Sheds by reason, in `Shed::ALL` order.
    pub shed: [u64; 3],
    pub idle_transaction_timeouts: u64,
    pub query_timeouts: u64,
    pub client_idle_timeouts: u64,
    /// Queries that rode on another client's backend (`pool.pipeline_depth`).
    pub rides: u64,
}

/// What a checkout gives a client: a backend of its own (carrying riders, if the pool put
/// any on it), or a seat on another client's.
pub enum Seat {
    Server(Backend),
    Ride(Ride),
}

pub struct PoolSet {
    state: Mutex<State>,
    me: Weak<PoolSet>,
    /// Wakes the sweeper of queue timeouts when a waiter is due before anything it knew of.
    sweep: Arc<Notify>,
    next_server_id: AtomicU64,
    salted: SaltedPasswords,
}

impl PoolSet {
    pub fn new(max_server_connections: usize) -> Arc<PoolSet> {
        Arc::new_cyclic(|me| PoolSet {
            state: Mutex::new(State::new(max_server_connections)),
            me: me.clone(),
            sweep: Arc::default(),
            next_server_id: AtomicU64::new(1),
            salted: SaltedPasswords::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool for (database, user), made from `settings()` the first time it is asked for.
    pub fn pool_for(
        &self,
        database: &str,
        user: &str,
        settings: impl FnOnce() -> PoolSettings,
    ) -> PoolId {
        self.lock().pool_for(database, user, settings)
    }

    /// Get a backend for `pool`: an idle one, a new one if every cap allows, or the next one
    /// to come free before `deadline`. `now` is the caller's clock reading, taken just before:
    /// a backend handed out at once counts as checked out then.
    pub async fn checkout(
        &self,
        pool: PoolId,
        now: Instant,
        deadline: Instant,
    ) -> Result<Backend, CheckoutError> {
        match self.checkout_or_ride(pool, now, deadline, None).await? {
            Seat::Server(server) => Ok(server),
            Seat::Ride(_) => unreachable!("no ride was asked for"),
        }
    }

    /// `checkout`, for a client that would also ride on another's backend if it has to wait
    /// and the pool pipelines (`offer`, asked only then; see `ride.rs`). A backend handed out
    /// may carry riders in `riders`.
    pub async fn checkout_or_ride(
        &self,
        pool: PoolId,
        now: Instant,
        deadline: Instant,
        offer: Offer<'_>,
    ) -> Result<Seat, CheckoutError> {
        // The common case, an idle backend, needs no await; the rest is boxed so that its
        // state (timers, a connect) doesn't size every caller's future.
        let take = match self.take_idle(pool, now, deadline, offer) {
            Ok(server) => return Ok(Seat::Server(server)),
            Err(take) => take,
        };
        boxed(|| self.checkout_slow(pool, take, deadline)).await
    }

    /// An idle backend that is still healthy, or what else `take` decided.
    fn take_idle(
        &self,
        pool: PoolId,
        now: Instant,
        deadline: Instant,
        offer: Offer<'_>,
    ) -> Result<Backend, Take> {
        loop {
            match self.try_take(pool, now, deadline, offer) {
                Take::Idle(server) => {
                    if let Some(server) = ready(server, now) {
                        return Ok(server);
                    }
                }
                other => return Err(other),
            }
        }
    }

    async fn checkout_slow(
        &self,
        pool: PoolId,
        mut take: Take,
        deadline: Instant,
    ) -> Result<Seat, CheckoutError> {
        loop {
            let server = match take {
                Take::Idle(server) => server,
                Take::Connect(slot) => self.connect(pool, slot).await?,
                // Refused at its deadline by the sweeper (`sweep_queue_timeouts`); no timer
                // of its own.
                Take::Wait(rx, _) => match rx.await.map_err(|_| CheckoutError::Closed)? {
                    Grant::Server(server) => server,
                    Grant::Ride(ride) => return Ok(Seat::Ride(ride)),
                    Grant::Slot(slot) => self.connect(pool, slot).await?,
                    Grant::Shed(why) => return Err(CheckoutError::Shed(why)),
                },
                Take::Shed(why) => return Err(CheckoutError::Shed(why)),
                Take::Closed => return Err(CheckoutError::Closed),
            };
            let now = Instant::now();
            // (A backend that went away while idle takes its riders with it: they are told
            // the server closed the connection.)
            if let Some(server) = ready(server, now) {
                return Ok(Seat::Server(server));
            }
            take = self.try_take(pool, now, deadline, None);
        }
    }

    fn try_take(&self, pool: PoolId, now: Instant, deadline: Instant, offer: Offer<'_>) -> Take {
        let mut doomed = Vec::new();
        let take = self
            .lock()
            .take(pool, now, deadline, offer, &self.me, &mut doomed);
        drop(doomed); // closes outside the lock: dropping a backend takes the lock again
        if let Take::Wait(_, true) = take {
            self.sweep.notify_one();
        }
        take
    }

    /// Connect a backend for `pool` on `slot`. Boxed: a login's state is over a kilobyte, and
    /// inline it would size every waiting client's checkout, which connects only rarely.
    fn connect(
        &self,
        pool: PoolId,
        slot: Slot,
    ) -> Pin<Box<dyn Future<Output = Result<Backend, CheckoutError>> + Send + '_>> {
        Box::pin(self.connect_now(pool, slot))
    }

    async fn connect_now(&self, pool: PoolId, slot: Slot) -> Result<Backend, CheckoutError> {
        let (target, generation) = self.lock().target(pool);
        let id = self.next_server_id.fetch_add(1, Ordering::Relaxed);
        let result = ServerConn::connect(&target, &self.salted, slot, id).await;
        self.lock()
            .count_connect(control::ConnectOutcome::of(&result));
        let mut server = result.map_err(CheckoutError::Connect)?;
        server.generation = generation;
        self.lock().learn_params(pool, &server.params);
        tracing::debug!(server = id, pid = server.key.pid, "backend connected");
        Ok(Box::new(server))
    }

    /// Give a backend back, idle since `now` (the caller's clock reading). The caller vouches
    /// that it is idle, outside any transaction.
    pub fn checkin(&self, mut server: Backend, now: Instant) {
        server.last_used = now;
        // Riders belong to one hand-out; they must never travel with the backend to its next
        // user (whose input nobody checked). Dropped, they are told the backend was lost.
        debug_assert!(server.riders.is_empty(), "riders checked in");
        server.riders.clear();
        let doomed = {
            let mut st = self.lock();
            let doomed = st.checkin(server, now);
            // A shorter queue or a higher adaptive limit may let waiters connect now.
            st.grant_freed(&self.me, now);
            doomed
        };
        drop(doomed);
    }

    /// Apply a new config to every pool (see `State::reconfigure`), then hand any capacity
    /// that growth freed to waiters.
    pub fn reconfigure(
        &self,
        max_server_connections: usize,
        reserves: Vec<(String, usize)>,
        settings_for: impl Fn(&str, &str) -> Option<PoolSettings>,
    ) {
        let mut doomed = Vec::new();
        {
            let mut st = self.lock();
            st.reconfigure(max_server_connections, reserves, settings_for, &mut doomed);
            st.grant_freed(&self.me, Instant::now());
        }
        drop(doomed);
    }

    /// Count an event against a pool.
    pub fn count(&self, pool: PoolId, event: Event) {
        self.lock().count_event(pool, event);
    }

    /// Users whose reserved backends every database keeps for them.
    pub fn set_reserves(&self, reserves: Vec<(String, usize)>) {
        self.lock().set_reserves(reserves);
    }

    /// Called by a dropped `Slot`: uncount it and hand the capacity to a waiter.
    fn release(&self, pool: PoolId) {
        let mut st = self.lock();
        st.uncount(pool);
        st.grant_freed(&self.me, Instant::now());
    }

    /// The parameters this pool's backends report at login, connecting one if none has yet.
    /// Concurrent first logins share that one connect instead of each queueing for a backend.
    pub async fn learn_server_params(
        &self,
        pool: PoolId,
        deadline: Instant,
    ) -> Result<Arc<Params>, CheckoutError> {
        if let Some(params) = self.server_params(pool) {
            return Ok(params);
        }
        let learning = self.lock().learning(pool);
        let _turn = learning.lock().await;
        if let Some(params) = self.server_params(pool) {
            return Ok(params);
        }
        let server = self.checkout(pool, Instant::now(), deadline).await?;
        self.checkin(server, Instant::now());
        self.server_params(pool).ok_or(CheckoutError::Closed)
    }

    /// The parameters a backend of this pool reports at login, once one has connected.
    pub fn server_params(&self, pool: PoolId) -> Option<Arc<Params>> {
        self.lock().server_params(pool)
    }

    pub fn stats(&self, pool: PoolId) -> PoolStats {
        self.lock().stats(pool)
    }

    pub fn all_stats(&self) -> Vec<PoolStats> {
        let st = self.lock();
        (0..st.pool_count()).map(|p| st.stats(p)).collect()
    }

    /// Retire idle backends past their idle timeout or lifetime, and open backends for pools
    /// under their `min_size`. Run about once a second.
    pub fn maintain(self: &Arc<Self>) {
        let mut doomed = Vec::new();
        let warm = {
            let mut st = self.lock();
            let now = Instant::now();
            let warm = st.maintain(now, &self.me, &mut doomed);
            st.grant_freed(&self.me, now);
            warm
        };
        drop(doomed);
        for (pool, slot) in warm {
            let set = self.clone();
            tokio::spawn(async move {
                if let Ok(server) = set.connect(pool, slot).await {
                    set.checkin(server, Instant::now());
                }
            });
        }
    }

    /// Run `maintain` every second, and refuse waiters at their deadlines, until the set is
    /// dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        tokio::spawn(sweep_queue_timeouts(
            Arc::downgrade(self),
            self.sweep.clone(),
        ));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(set) => set.maintain(),
                    None => return,
                }
            }
        });
    }

    /// Stop handing out backends and close the idle ones; busy ones close at checkin.
    pub fn close(&self) {
        let doomed = self.lock().close();
        drop(doomed);
    }
}

/// Refuse waiters whose `pool.queue_timeout` has passed, sleeping until the earliest deadline
/// (or until `wake`: a waiter due sooner, or the set dropped), for as long as the set lives.
async fn sweep_queue_timeouts(set: Weak<PoolSet>, wake: Arc<Notify>) {
    loop {
        // Only a weak hold while asleep, so that the set drops with the proxy.
        let Some(next) = set
            .upgrade()
            .map(|s| s.lock().expire_waiters(Instant::now()))
        else {
            return;
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl Drop for PoolSet {
    fn drop(&mut self) {
        // Let the sweeper see that the set is gone.
        self.sweep.notify_one();
    }
}
