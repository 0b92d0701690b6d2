//! Pools of backend connections, one per (database, user), bounded at three levels at once:
//! the pool's size, the database's `max_connections` and `limits.max_server_connections`.
//! None is ever exceeded: capacity is a counted `Slot` taken under one lock before any connect.
//!
//! Idle backends are reused last-in first-out, so a quiet pool's extra backends age out.
//! Clients that find no capacity wait in a FIFO queue until their deadline; a returned backend
//! goes straight to the oldest waiter of its pool, and freed capacity to the oldest waiter that
//! can use it. The lock is a plain mutex held for a few field updates, never across an await.

mod slot;
mod state;

pub use slot::Slot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::params::Params;
use crate::server::{ConnectTarget, SaltedPasswords, ServerConn, ServerError};
use state::{Grant, State, Take};

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
}

/// Why no backend was handed out.
#[derive(Debug)]
pub enum CheckoutError {
    /// Nothing came free before the deadline.
    QueueTimeout,
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
}

pub struct PoolSet {
    state: Mutex<State>,
    me: Weak<PoolSet>,
    next_server_id: AtomicU64,
    salted: SaltedPasswords,
}

impl PoolSet {
    pub fn new(max_server_connections: usize) -> Arc<PoolSet> {
        Arc::new_cyclic(|me| PoolSet {
            state: Mutex::new(State::new(max_server_connections)),
            me: me.clone(),
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
    /// to come free before `deadline`.
    pub async fn checkout(
        &self,
        pool: PoolId,
        deadline: Instant,
    ) -> Result<ServerConn, CheckoutError> {
        loop {
            let server = match self.try_take(pool, deadline) {
                Take::Idle(server) => server,
                Take::Connect(slot) => self.connect(pool, slot).await?,
                Take::Wait(id, rx) => match self.wait(pool, id, rx, deadline).await? {
                    Grant::Server(server) => server,
                    Grant::Slot(slot) => self.connect(pool, slot).await?,
                },
                Take::Timeout => return Err(CheckoutError::QueueTimeout),
                Take::Closed => return Err(CheckoutError::Closed),
            };
            let mut server = server;
            if server.check_idle() {
                return Ok(server);
            }
            tracing::debug!(server = server.id, "idle backend went away; taking another");
        }
    }

    fn try_take(&self, pool: PoolId, deadline: Instant) -> Take {
        let mut doomed = Vec::new();
        let take = self.lock().take(pool, deadline, &self.me, &mut doomed);
        drop(doomed); // closes outside the lock: dropping a backend takes the lock again
        take
    }

    async fn wait(
        &self,
        pool: PoolId,
        id: u64,
        mut rx: oneshot::Receiver<Grant>,
        deadline: Instant,
    ) -> Result<Grant, CheckoutError> {
        match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(Ok(grant)) => Ok(grant),
            Ok(Err(_)) => Err(CheckoutError::Closed),
            Err(_) => {
                self.lock().forget_waiter(pool, id);
                // A grant may have landed between the timeout and taking the lock.
                rx.try_recv().map_err(|_| CheckoutError::QueueTimeout)
            }
        }
    }

    async fn connect(&self, pool: PoolId, slot: Slot) -> Result<ServerConn, CheckoutError> {
        let target = self.lock().target(pool);
        let id = self.next_server_id.fetch_add(1, Ordering::Relaxed);
        let server = ServerConn::connect(&target, &self.salted, slot, id)
            .await
            .map_err(CheckoutError::Connect)?;
        self.lock().learn_params(pool, &server.params);
        tracing::debug!(server = id, pid = server.key.pid, "backend connected");
        Ok(server)
    }

    /// Give a backend back. The caller vouches that it is idle, outside any transaction.
    pub fn checkin(&self, mut server: ServerConn) {
        server.last_used = Instant::now();
        let doomed = self.lock().checkin(server);
        drop(doomed);
    }

    /// Called by a dropped `Slot`: uncount it and hand the capacity to a waiter.
    fn release(&self, pool: PoolId) {
        let mut st = self.lock();
        st.uncount(pool);
        st.grant_freed(&self.me);
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
        let warm = self.lock().maintain(Instant::now(), &self.me, &mut doomed);
        drop(doomed);
        for (pool, slot) in warm {
            let set = self.clone();
            tokio::spawn(async move {
                if let Ok(server) = set.connect(pool, slot).await {
                    set.checkin(server);
                }
            });
        }
    }

    /// Run `maintain` every second until the set is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
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
