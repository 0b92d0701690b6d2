//! Everything the pool lock guards: the counts at each level, idle backends, waiters. Plain
//! synchronous code; the only I/O it may cause is dropping backends, which callers do after
//! the lock is released (they collect them in a `doomed` list).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{PoolId, PoolSet, PoolSettings, PoolStats, Slot};
use crate::params::Params;
use crate::server::{ConnectTarget, ServerConn};

/// What a waiter receives: a backend ready to use, or capacity to connect one.
// Moved once per hand-off; boxing the backend would cost an allocation per checkout.
#[allow(clippy::large_enum_variant)]
pub(super) enum Grant {
    Server(ServerConn),
    Slot(Slot),
}

/// What `take` decided.
#[allow(clippy::large_enum_variant)]
pub(super) enum Take {
    Idle(ServerConn),
    Connect(Slot),
    Wait(u64, oneshot::Receiver<Grant>),
    Timeout,
    Closed,
}

struct Waiter {
    id: u64,
    since: Instant,
    tx: oneshot::Sender<Grant>,
}

#[derive(Debug)]
struct Cap {
    open: usize,
    max: usize,
}

impl Cap {
    fn full(&self) -> bool {
        self.open >= self.max
    }
}

struct Pool {
    database: String,
    user: String,
    db: usize,
    settings: PoolSettings,
    target: Arc<ConnectTarget>,
    open: usize,
    /// Most recently used last.
    idle: Vec<ServerConn>,
    waiters: VecDeque<Waiter>,
    server_params: Option<Arc<Params>>,
}

pub(super) struct State {
    global: Cap,
    dbs: Vec<(String, Cap)>,
    pools: Vec<Pool>,
    index: HashMap<(String, String), PoolId>,
    next_waiter: u64,
    closed: bool,
}

impl State {
    pub(super) fn new(max_server_connections: usize) -> State {
        State {
            global: Cap {
                open: 0,
                max: max_server_connections,
            },
            dbs: Vec::new(),
            pools: Vec::new(),
            index: HashMap::new(),
            next_waiter: 0,
            closed: false,
        }
    }

    pub(super) fn pool_for(
        &mut self,
        database: &str,
        user: &str,
        settings: impl FnOnce() -> PoolSettings,
    ) -> PoolId {
        if let Some(&id) = self.index.get(&(database.to_string(), user.to_string())) {
            return id;
        }
        let settings = settings();
        let db = self.db_for(database, settings.database_max);
        let id = self.pools.len();
        self.pools.push(Pool {
            database: database.to_string(),
            user: user.to_string(),
            db,
            target: Arc::new(settings.target.clone()),
            settings,
            open: 0,
            idle: Vec::new(),
            waiters: VecDeque::new(),
            server_params: None,
        });
        self.index
            .insert((database.to_string(), user.to_string()), id);
        id
    }

    fn db_for(&mut self, database: &str, max: Option<usize>) -> usize {
        if let Some(i) = self.dbs.iter().position(|(name, _)| name == database) {
            return i;
        }
        let max = max.unwrap_or(usize::MAX);
        self.dbs.push((database.to_string(), Cap { open: 0, max }));
        self.dbs.len() - 1
    }

    /// Can `pool` open one more backend under all three caps?
    fn can_open(&self, pool: PoolId) -> bool {
        let p = &self.pools[pool];
        p.open < p.settings.size && !self.dbs[p.db].1.full() && !self.global.full()
    }

    fn count(&mut self, pool: PoolId) {
        let db = self.pools[pool].db;
        self.pools[pool].open += 1;
        self.dbs[db].1.open += 1;
        self.global.open += 1;
    }

    pub(super) fn uncount(&mut self, pool: PoolId) {
        let db = self.pools[pool].db;
        self.pools[pool].open -= 1;
        self.dbs[db].1.open -= 1;
        self.global.open -= 1;
    }

    fn reserve(&mut self, pool: PoolId, set: &Weak<PoolSet>) -> Option<Slot> {
        if !self.can_open(pool) {
            return None;
        }
        self.count(pool);
        Some(Slot::counted(set.clone(), pool))
    }

    pub(super) fn take(
        &mut self,
        pool: PoolId,
        deadline: Instant,
        set: &Weak<PoolSet>,
        doomed: &mut Vec<ServerConn>,
    ) -> Take {
        if self.closed {
            return Take::Closed;
        }
        let now = Instant::now();
        let lifetime = self.pools[pool].settings.lifetime;
        while let Some(server) = self.pools[pool].idle.pop() {
            if !server.expired(now, lifetime) {
                return Take::Idle(server);
            }
            doomed.push(server);
        }
        // Backends that expired just now still hold their slots until dropped; count them
        // as gone so this client may use the capacity they free.
        for server in doomed.iter_mut() {
            self.uncount(server.pool_id());
            server.slot.disarm();
        }
        if let Some(slot) = self.reserve(pool, set) {
            return Take::Connect(slot);
        }
        if let Some(slot) = self.steal_idle(pool, doomed) {
            return Take::Connect(slot);
        }
        if now >= deadline {
            return Take::Timeout;
        }
        let (tx, rx) = oneshot::channel();
        self.next_waiter += 1;
        let id = self.next_waiter;
        self.pools[pool]
            .waiters
            .push_back(Waiter { id, since: now, tx });
        Take::Wait(id, rx)
    }

    /// When `pool` is under its own size but a shared cap is full, close the least recently
    /// used idle backend of another pool that holds that shared capacity, and move its slot.
    fn steal_idle(&mut self, pool: PoolId, doomed: &mut Vec<ServerConn>) -> Option<Slot> {
        let p = &self.pools[pool];
        if p.open >= p.settings.size {
            return None;
        }
        let db = p.db;
        let db_full = self.dbs[db].1.full();
        let victim = (0..self.pools.len()).find(|&q| {
            q != pool && !self.pools[q].idle.is_empty() && (!db_full || self.pools[q].db == db)
        })?;
        let mut server = self.pools[victim].idle.remove(0);
        self.uncount(victim);
        self.count(pool);
        let mut slot = std::mem::replace(&mut server.slot, Slot::empty());
        slot.move_to(pool);
        doomed.push(server);
        Some(slot)
    }

    pub(super) fn forget_waiter(&mut self, pool: PoolId, id: u64) {
        self.pools[pool].waiters.retain(|w| w.id != id);
    }

    /// Hand freed capacity to the oldest waiter that can use it, for as long as there is any.
    pub(super) fn grant_freed(&mut self, set: &Weak<PoolSet>) {
        while let Some(pool) = self.oldest_waiting_that_can_open() {
            let waiter = self.pools[pool].waiters.pop_front().expect("has waiters");
            let slot = self.reserve(pool, set).expect("can open");
            if let Err(Grant::Slot(mut slot)) = waiter.tx.send(Grant::Slot(slot)) {
                // The waiter gave up; take the capacity back without re-entering the lock.
                slot.disarm();
                self.uncount(pool);
            }
        }
    }

    fn oldest_waiting_that_can_open(&self) -> Option<PoolId> {
        (0..self.pools.len())
            .filter(|&p| self.can_open(p))
            .filter_map(|p| self.pools[p].waiters.front().map(|w| (w.since, p)))
            .min()
            .map(|(_, p)| p)
    }

    /// Take a backend back; returns it if it must be closed instead.
    pub(super) fn checkin(&mut self, server: ServerConn) -> Option<ServerConn> {
        let pool = server.pool_id();
        let p = &mut self.pools[pool];
        if self.closed
            || p.open > p.settings.size
            || server.expired(Instant::now(), p.settings.lifetime)
        {
            return Some(server);
        }
        let mut server = server;
        while let Some(waiter) = p.waiters.pop_front() {
            match waiter.tx.send(Grant::Server(server)) {
                Ok(()) => return None,
                Err(Grant::Server(back)) => server = back,
                Err(Grant::Slot(_)) => unreachable!("sent a server"),
            }
        }
        if self.blocks_another(pool) {
            return Some(server);
        }
        self.pools[pool].idle.push(server);
        None
    }

    /// Is some other pool waiting on shared capacity that an idle backend of `pool` holds?
    fn blocks_another(&self, pool: PoolId) -> bool {
        let db = self.pools[pool].db;
        self.pools.iter().enumerate().any(|(q, other)| {
            q != pool
                && !other.waiters.is_empty()
                && other.open < other.settings.size
                && (self.global.full() || (other.db == db && self.dbs[db].1.full()))
        })
    }

    pub(super) fn target(&self, pool: PoolId) -> Arc<ConnectTarget> {
        self.pools[pool].target.clone()
    }

    pub(super) fn learn_params(&mut self, pool: PoolId, params: &Params) {
        let p = &mut self.pools[pool];
        if p.server_params.is_none() {
            p.server_params = Some(Arc::new(params.clone()));
        }
    }

    pub(super) fn server_params(&self, pool: PoolId) -> Option<Arc<Params>> {
        self.pools[pool].server_params.clone()
    }

    pub(super) fn pool_count(&self) -> usize {
        self.pools.len()
    }

    pub(super) fn stats(&self, pool: PoolId) -> PoolStats {
        let p = &self.pools[pool];
        PoolStats {
            database: p.database.clone(),
            user: p.user.clone(),
            size: p.settings.size,
            open: p.open,
            idle: p.idle.len(),
            waiting: p.waiters.len(),
        }
    }

    /// Pick idle backends to retire, and reserve slots to bring pools up to `min_size`.
    pub(super) fn maintain(
        &mut self,
        now: Instant,
        set: &Weak<PoolSet>,
        doomed: &mut Vec<ServerConn>,
    ) -> Vec<(PoolId, Slot)> {
        for p in &mut self.pools {
            let mut open = p.open;
            let mut i = 0;
            // Oldest first: idle backends are kept most recently used last.
            while i < p.idle.len() {
                let server = &p.idle[i];
                let stale = now.duration_since(server.last_used) >= p.settings.idle_timeout
                    && open > p.settings.min_size;
                if stale || server.expired(now, p.settings.lifetime) {
                    doomed.push(p.idle.remove(i));
                    open -= 1;
                } else {
                    i += 1;
                }
            }
        }
        let mut warm = Vec::new();
        if self.closed {
            return warm;
        }
        for pool in 0..self.pools.len() {
            let floor = self.pools[pool]
                .settings
                .min_size
                .min(self.pools[pool].settings.size);
            while self.pools[pool].open < floor {
                match self.reserve(pool, set) {
                    Some(slot) => warm.push((pool, slot)),
                    None => break,
                }
            }
        }
        warm
    }

    pub(super) fn close(&mut self) -> Vec<ServerConn> {
        self.closed = true;
        for p in &mut self.pools {
            p.waiters.clear();
        }
        self.pools
            .iter_mut()
            .flat_map(|p| p.idle.drain(..))
            .collect()
    }
}
