//! Everything the pool lock guards: the counts at each level, idle backends, waiters, and the
//! queue policies (CoDel, fair shares, reserves, the adaptive limit). Plain synchronous code;
//! the only I/O it may cause is dropping backends, which callers do after the lock is released
//! (they collect them in a `doomed` list).

use crate::clock::Instant;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::control::{covers, ConnectOutcome, Control, ServerView};
use super::ride::{Offer, Ride, RideRequest, Rider};
use super::{Event, PoolId, PoolSet, PoolSettings, PoolStats, Shed, Slot};
use crate::admission::adaptive::Gradient;
use crate::admission::codel::Codel;
use crate::config::QueuePolicy;
use crate::params::Params;
use crate::server::{Backend, ConnectTarget};

/// What a waiter receives: a backend ready to use, capacity to connect one, a seat on another
/// waiter's backend, or a refusal.
pub(super) enum Grant {
    Server(Backend),
    Slot(Slot),
    Ride(Ride),
    Shed(Shed),
}

/// What `take` decided.
pub(super) enum Take {
    Idle(Backend),
    Connect(Slot),
    /// Queued; true when the sweeper of queue timeouts must be woken for its deadline.
    Wait(oneshot::Receiver<Grant>, bool),
    Shed(Shed),
    Closed,
}

struct Waiter {
    since: Instant,
    /// When it is refused with `Shed::QueueTimeout` if nothing came free (`expire_waiters`).
    deadline: Instant,
    tx: oneshot::Sender<Grant>,
    /// Offered when the client's request could ride on another's backend.
    ride: Option<RideRequest>,
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

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    checkouts: u64,
    shed: [u64; 3],
    idle_transaction_timeouts: u64,
    query_timeouts: u64,
    client_idle_timeouts: u64,
    rides: u64,
}

struct Pool {
    database: String,
    user: String,
    db: usize,
    settings: PoolSettings,
    target: Arc<ConnectTarget>,
    open: usize,
    /// Most recently used last.
    idle: Vec<Backend>,
    waiters: VecDeque<Waiter>,
    server_params: Option<Arc<Params>>,
    /// Held by the one login that connects to learn `server_params`; the others wait on it.
    learning: Arc<tokio::sync::Mutex<()>>,
    codel: Codel,
    adaptive: Option<Gradient>,
    counters: Counters,
    /// Bumped when the pool's connect target changes; older backends close at checkin.
    generation: u64,
    /// Whether the waiters' deadlines rise from front to back, as they do while every client
    /// waits `pool.queue_timeout` from its arrival. Then the sweeper looks only at the front.
    deadlines_ordered: bool,
}

impl Pool {
    /// Backends connected or connecting and not idle: serving clients.
    fn in_use(&self) -> usize {
        self.open - self.idle.len()
    }

    fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        self.waiters.front().map(|w| now.duration_since(w.since))
    }
}

pub(super) struct State {
    global: Cap,
    dbs: Vec<(String, Cap)>,
    pools: Vec<Pool>,
    /// database -> user -> pool: found by `&str` at every login, without copying the names.
    index: HashMap<String, HashMap<String, PoolId>>,
    /// Users with reserved backends in every database, and how many.
    reserves: Vec<(String, usize)>,
    /// The earliest deadline the sweeper of queue timeouts knows of (None: it sleeps until
    /// told); a waiter due sooner must wake it.
    sweep_at: Option<Instant>,
    closed: bool,
    /// PAUSE/RESUME and connect outcomes, for the admin console.
    control: Control,
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
            reserves: Vec::new(),
            sweep_at: None,
            closed: false,
            control: Control::default(),
        }
    }

    pub(super) fn set_reserves(&mut self, reserves: Vec<(String, usize)>) {
        self.reserves = reserves;
    }

    pub(super) fn pool_for(
        &mut self,
        database: &str,
        user: &str,
        settings: impl FnOnce() -> PoolSettings,
    ) -> PoolId {
        if let Some(id) = self.pool_id(database, user) {
            return id;
        }
        let settings = settings();
        let db = self.db_for(database, settings.database_max);
        let id = self.pools.len();
        let now = Instant::now();
        self.pools.push(Pool {
            database: database.to_string(),
            user: user.to_string(),
            db,
            target: Arc::new(settings.target.clone()),
            codel: Codel::new(settings.codel_interval, settings.codel_target, now),
            adaptive: settings
                .adaptive_min
                .map(|min| Gradient::new(min, settings.size)),
            settings,
            open: 0,
            idle: Vec::new(),
            waiters: VecDeque::new(),
            server_params: None,
            learning: Arc::default(),
            counters: Counters::default(),
            generation: 0,
            deadlines_ordered: true,
        });
        self.index
            .entry(database.to_string())
            .or_default()
            .insert(user.to_string(), id);
        id
    }

    fn pool_id(&self, database: &str, user: &str) -> Option<PoolId> {
        self.index.get(database)?.get(user).copied()
    }

    fn db_for(&mut self, database: &str, max: Option<usize>) -> usize {
        if let Some(i) = self.dbs.iter().position(|(name, _)| name == database) {
            return i;
        }
        let max = max.unwrap_or(usize::MAX);
        self.dbs.push((database.to_string(), Cap { open: 0, max }));
        self.dbs.len() - 1
    }

    /// Can `pool` open one more backend under all three caps and others' reserves?
    fn can_open(&self, pool: PoolId) -> bool {
        let p = &self.pools[pool];
        if p.open >= p.settings.size || self.dbs[p.db].1.full() || self.global.full() {
            return false;
        }
        self.reserves.is_empty() || !self.reserved_for_others(pool)
    }

    /// Would one more backend for `pool` eat into capacity another user has reserved?
    fn reserved_for_others(&self, pool: PoolId) -> bool {
        let p = &self.pools[pool];
        let unused: usize = self
            .reserves
            .iter()
            .filter(|(user, _)| *user != p.user)
            .map(|(user, reserve)| {
                let open = self
                    .pool_id(&p.database, user)
                    .map_or(0, |q| self.pools[q].open);
                reserve.saturating_sub(open)
            })
            .sum();
        let db = &self.dbs[p.db].1;
        let (open, max) = if db.max < usize::MAX {
            (db.open, db.max)
        } else {
            (self.global.open, self.global.max)
        };
        open + unused >= max
    }

    /// May `pool` put one more backend to work under its adaptive limit?
    fn may_use(&self, pool: PoolId) -> bool {
        let p = &self.pools[pool];
        p.adaptive.as_ref().is_none_or(|g| p.in_use() < g.limit())
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
        now: Instant,
        deadline: Instant,
        offer: Offer<'_>,
        set: &Weak<PoolSet>,
        doomed: &mut Vec<Backend>,
    ) -> Take {
        if self.closed {
            return Take::Closed;
        }
        self.shed_stale(pool, now);
        // Waiters come first: a newcomer takes nothing while others queue.
        let paused = self.control.is_paused(&self.pools[pool].database);
        if self.pools[pool].waiters.is_empty() && self.may_use(pool) && !paused {
            if let Some(take) = self.take_now(pool, now, set, doomed) {
                return take;
            }
        }
        let p = &mut self.pools[pool];
        if p.waiters.len() >= p.settings.max_waiting {
            p.counters.shed[Shed::QueueFull as usize] += 1;
            return Take::Shed(Shed::QueueFull);
        }
        if now >= deadline {
            p.counters.shed[Shed::QueueTimeout as usize] += 1;
            return Take::Shed(Shed::QueueTimeout);
        }
        let (tx, rx) = oneshot::channel();
        let ride = match offer {
            Some(offer) if p.settings.pipeline_depth > 1 => offer(),
            _ => None,
        };
        if p.waiters.back().is_some_and(|w| deadline < w.deadline) {
            // A shorter queue_timeout since a reload, or a client queueing again.
            p.deadlines_ordered = false;
        }
        p.waiters.push_back(Waiter {
            since: now,
            deadline,
            tx,
            ride,
        });
        let sweep = self.sweep_at.is_none_or(|at| deadline < at);
        if sweep {
            self.sweep_at = Some(deadline);
        }
        Take::Wait(rx, sweep)
    }

    /// Refuse every waiter whose deadline has passed (`Shed::QueueTimeout`), and return the
    /// earliest deadline still ahead, which the sweeper sleeps until. One sweeper for all
    /// pools instead of a timer per waiting client: with FIFO queues and one
    /// `pool.queue_timeout` the earliest deadline is the oldest waiter's, so the sweeper
    /// wakes about once per timeout while queues stand, not once per wait.
    pub(super) fn expire_waiters(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for p in &mut self.pools {
            let refuse = |w: Waiter, counters: &mut Counters| {
                if w.tx.send(Grant::Shed(Shed::QueueTimeout)).is_ok() {
                    counters.shed[Shed::QueueTimeout as usize] += 1;
                }
            };
            if p.deadlines_ordered {
                // The due ones are at the front, and the front's deadline is the pool's next.
                while p.waiters.front().is_some_and(|w| w.deadline <= now) {
                    let w = p.waiters.pop_front().expect("front exists");
                    refuse(w, &mut p.counters);
                }
            } else {
                let (due, kept) = std::mem::take(&mut p.waiters)
                    .into_iter()
                    .partition::<VecDeque<_>, _>(|w| w.deadline <= now);
                p.waiters = kept;
                due.into_iter().for_each(|w| refuse(w, &mut p.counters));
                p.deadlines_ordered = p
                    .waiters
                    .iter()
                    .zip(p.waiters.iter().skip(1))
                    .all(|(a, b)| a.deadline <= b.deadline);
            }
            let earliest = if p.deadlines_ordered {
                p.waiters.front().map(|w| w.deadline)
            } else {
                p.waiters.iter().map(|w| w.deadline).min()
            };
            next = next.into_iter().chain(earliest).min();
        }
        self.sweep_at = next;
        next
    }

    /// An idle backend, or capacity for a new one, if there is any right now.
    fn take_now(
        &mut self,
        pool: PoolId,
        now: Instant,
        set: &Weak<PoolSet>,
        doomed: &mut Vec<Backend>,
    ) -> Option<Take> {
        let lifetime = self.pools[pool].settings.lifetime;
        let mut take = None;
        while let Some(server) = self.pools[pool].idle.pop() {
            if !server.expired(now, lifetime) {
                take = Some(Take::Idle(server));
                break;
            }
            doomed.push(server);
        }
        // Backends that expired just now still hold their slots until dropped; count them
        // as gone so this client may use the capacity they free.
        for server in doomed.iter_mut() {
            self.uncount(server.pool_id());
            server.slot.disarm();
        }
        let take = take
            .or_else(|| self.reserve(pool, set).map(Take::Connect))
            .or_else(|| self.steal_idle(pool, doomed).map(Take::Connect))?;
        self.served(pool, Duration::ZERO, now);
        Some(take)
    }

    /// A client of `pool` got a backend while the head of its queue had waited `head`.
    fn served(&mut self, pool: PoolId, head: Duration, now: Instant) {
        let p = &mut self.pools[pool];
        p.counters.checkouts += 1;
        let oldest = p.oldest_wait(now);
        p.codel.served(head, now, oldest);
    }

    /// Under CoDel, while the queue stands, refuse waiters older than twice the target.
    fn shed_stale(&mut self, pool: PoolId, now: Instant) {
        let p = &mut self.pools[pool];
        if p.settings.queue != QueuePolicy::Codel {
            return;
        }
        let oldest = p.oldest_wait(now);
        p.codel.roll(now, oldest);
        if !p.codel.overloaded() {
            return;
        }
        let limit = p.codel.shed_after();
        while let Some(w) = p.waiters.front() {
            if now.duration_since(w.since) <= limit {
                break;
            }
            let w = p.waiters.pop_front().expect("front exists");
            if w.tx.send(Grant::Shed(Shed::Codel)).is_ok() {
                p.counters.shed[Shed::Codel as usize] += 1;
                p.codel.shed();
            }
        }
    }

    /// The waiter to serve next: oldest first, newest first while CoDel finds overload.
    fn next_waiter(&mut self, pool: PoolId, now: Instant) -> Option<Waiter> {
        self.shed_stale(pool, now);
        let p = &mut self.pools[pool];
        let head = p.oldest_wait(now)?;
        let lifo = p.settings.queue == QueuePolicy::Codel && p.codel.overloaded();
        let w = if lifo {
            p.waiters.pop_back()
        } else {
            p.waiters.pop_front()
        }?;
        self.served(pool, head, now);
        Some(w)
    }

    /// When `pool` is under its own size but a shared cap is full, close the least recently
    /// used idle backend of another pool that holds that shared capacity, and move its slot.
    fn steal_idle(&mut self, pool: PoolId, doomed: &mut Vec<Backend>) -> Option<Slot> {
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

    /// Hand freed capacity to waiters that can use it, for as long as there is any: pools
    /// under their fair share first, then the oldest waiter.
    pub(super) fn grant_freed(&mut self, set: &Weak<PoolSet>, now: Instant) {
        while let Some(pool) = self.next_pool_to_grant(now) {
            let Some(waiter) = self.next_waiter(pool, now) else {
                continue;
            };
            let slot = self.reserve(pool, set).expect("can open");
            if let Err(Grant::Slot(mut slot)) = waiter.tx.send(Grant::Slot(slot)) {
                // The waiter gave up; take the capacity back without re-entering the lock.
                slot.disarm();
                self.uncount(pool);
            }
        }
    }

    fn next_pool_to_grant(&self, now: Instant) -> Option<PoolId> {
        let candidates = (0..self.pools.len())
            .filter(|&p| !self.pools[p].waiters.is_empty() && self.can_open(p) && self.may_use(p))
            .filter(|&p| !self.control.is_paused(&self.pools[p].database));
        candidates
            .map(|p| {
                let under_share = self.pools[p].open < self.fair_share(p);
                let waited = self.pools[p].oldest_wait(now).unwrap_or_default();
                (under_share, waited, p)
            })
            .max()
            .map(|(_, _, p)| p)
    }

    /// This pool's share of its database's cap (or the global cap), by weight among the
    /// pools of that database that are busy or waiting.
    fn fair_share(&self, pool: PoolId) -> usize {
        let p = &self.pools[pool];
        let db = &self.dbs[p.db].1;
        let cap = if db.max < usize::MAX {
            db.max
        } else {
            self.global.max
        };
        let total: usize = self
            .pools
            .iter()
            .filter(|q| q.db == p.db && (q.open > 0 || !q.waiters.is_empty()))
            .map(|q| q.settings.weight)
            .sum();
        (cap * p.settings.weight / total.max(p.settings.weight)).max(1)
    }

    /// Take a backend back; returns it if it must be closed instead.
    pub(super) fn checkin(&mut self, server: Backend, now: Instant) -> Option<Backend> {
        let pool = server.pool_id();
        let p = &mut self.pools[pool];
        let in_flight = p.in_use();
        if let Some(g) = p.adaptive.as_mut() {
            g.sample(now.duration_since(server.checked_out_at), in_flight);
        }
        let stale = server.generation != p.generation || server.expired(now, p.settings.lifetime);
        let paused = self.control.is_paused(&p.database);
        if self.closed || p.open > p.settings.size || stale || paused {
            return Some(server);
        }
        if self.yields_to_another(pool) {
            return Some(server);
        }
        self.pools[pool].idle.push(server);
        self.serve_idle(pool, now);
        None
    }

    /// Give idle backends to waiters while the adaptive limit allows, with riders where the
    /// pool pipelines.
    fn serve_idle(&mut self, pool: PoolId, now: Instant) {
        while !self.pools[pool].idle.is_empty() && self.may_use(pool) {
            let Some(waiter) = self.next_waiter(pool, now) else {
                return;
            };
            let mut server = self.pools[pool].idle.pop().expect("not empty");
            let seats = self.board_riders(pool, &waiter, &mut server);
            match waiter.tx.send(Grant::Server(server)) {
                Ok(()) => {
                    for (tx, ride) in seats {
                        // A rider that is gone drops its channel; the driver discards its
                        // replies.
                        let _ = tx.send(Grant::Ride(ride));
                    }
                }
                Err(Grant::Server(mut back)) => {
                    // Only a waiter whose task was dropped (shutdown) refuses; its riders'
                    // channels close, which tells them the backend is lost.
                    back.riders.clear();
                    self.pools[pool].idle.push(back);
                }
                Err(_) => unreachable!("sent a server"),
            }
        }
    }

    /// Put on `server`, whose next user is `driver`, the waiters queued right behind it that
    /// may ride along: each waits with a request to ride, with the driver's parameters, which
    /// the backend already has (so binding it takes no round trip that could fail). Returns
    /// where each rider's seat goes once the driver has the backend.
    fn board_riders(
        &mut self,
        pool: PoolId,
        driver: &Waiter,
        server: &mut Backend,
    ) -> Vec<(oneshot::Sender<Grant>, Ride)> {
        let p = &mut self.pools[pool];
        let lifo = p.settings.queue == QueuePolicy::Codel && p.codel.overloaded();
        let Some(own) = driver.ride.as_ref() else {
            return Vec::new();
        };
        // The backend is checked here as the driver will check it (a closed one, or one
        // whose parameters just changed, takes no riders): riders are not to be lost with a
        // backend that was gone before anything was sent for them.
        if p.settings.pipeline_depth < 2
            || lifo
            || driver.tx.is_closed()
            || !server.check_idle()
            || server.synced != Some((own.params, server.params.version()))
        {
            return Vec::new();
        }
        let most = p.settings.pipeline_depth - 1;
        let mut seats = Vec::new();
        while server.riders.len() < most {
            let boards = p.waiters.front().is_some_and(|w| {
                !w.tx.is_closed() && w.ride.as_ref().is_some_and(|r| r.params == own.params)
            });
            if !boards {
                break;
            }
            if seats.is_empty() {
                // One allocation each for the whole batch.
                seats.reserve_exact(most);
                server.riders.reserve_exact(most);
            }
            let w = p.waiters.pop_front().expect("front exists");
            let (rider, ride) = Rider::new(w.ride.expect("checked"));
            server.riders.push(rider);
            seats.push((w.tx, ride));
            p.counters.checkouts += 1;
            p.counters.rides += 1;
        }
        seats
    }

    /// Should a backend returned to `pool` be closed so another pool waiting on shared
    /// capacity can have it? Yes when that pool is under its fair share and this one is over
    /// its own, or has nobody waiting.
    fn yields_to_another(&self, pool: PoolId) -> bool {
        let me = &self.pools[pool];
        let db = me.db;
        let mine_waiting = !me.waiters.is_empty();
        let over_share = me.open > self.fair_share(pool);
        self.pools.iter().enumerate().any(|(q, other)| {
            q != pool
                && !other.waiters.is_empty()
                && other.open < other.settings.size
                // Blocked by a cap this backend also counts against (a reserve included).
                && !self.can_open(q)
                && (other.db == db || self.global.full())
                && (!mine_waiting || (over_share && other.open < self.fair_share(q)))
        })
    }

    pub(super) fn count_event(&mut self, pool: PoolId, event: Event) {
        let c = &mut self.pools[pool].counters;
        match event {
            Event::Shed(why) => c.shed[why as usize] += 1,
            Event::IdleTransactionTimeout => c.idle_transaction_timeouts += 1,
            Event::QueryTimeout => c.query_timeouts += 1,
            Event::ClientIdleTimeout => c.client_idle_timeouts += 1,
        }
    }

    pub(super) fn target(&self, pool: PoolId) -> (Arc<ConnectTarget>, u64) {
        (self.pools[pool].target.clone(), self.pools[pool].generation)
    }

    /// Take new settings for every pool, the global cap and the reserves. `settings_for`
    /// gives a pool's new settings (None: its database is gone, so it drains to nothing).
    /// Growth takes effect at once; idle backends over a smaller size are closed now, busy
    /// ones when their transaction ends.
    pub(super) fn reconfigure(
        &mut self,
        max_server_connections: usize,
        reserves: Vec<(String, usize)>,
        settings_for: impl Fn(&str, &str) -> Option<PoolSettings>,
        doomed: &mut Vec<Backend>,
    ) {
        self.global.max = max_server_connections;
        self.reserves = reserves;
        let now = Instant::now();
        for i in 0..self.pools.len() {
            let (database, user) = (self.pools[i].database.clone(), self.pools[i].user.clone());
            let mut next = settings_for(&database, &user).unwrap_or_else(|| PoolSettings {
                size: 0,
                min_size: 0,
                ..self.pools[i].settings.clone()
            });
            let db = self.pools[i].db;
            self.dbs[db].1.max = next.database_max.unwrap_or(usize::MAX);
            let p = &mut self.pools[i];
            let (a, b) = (&next.target, &p.settings.target);
            let moved =
                (&a.host, a.port, &a.dbname, &a.user) != (&b.host, b.port, &b.dbname, &b.user);
            // New connects use the new target (a new password or connect timeout included);
            // a different server replaces the backends already open as they come free.
            p.target = Arc::new(next.target.clone());
            if moved {
                p.generation += 1;
                doomed.append(&mut p.idle);
            }
            if (next.codel_interval, next.codel_target)
                != (p.settings.codel_interval, p.settings.codel_target)
            {
                p.codel = Codel::new(next.codel_interval, next.codel_target, now);
            }
            // Keep what the limiter learned unless its bounds changed.
            p.adaptive = match (next.adaptive_min, p.adaptive.take()) {
                (Some(min), Some(kept))
                    if p.settings.size == next.size && p.settings.adaptive_min == Some(min) =>
                {
                    Some(kept)
                }
                (Some(min), _) => Some(Gradient::new(min, next.size)),
                (None, _) => None,
            };
            std::mem::swap(&mut p.settings, &mut next);
            // Idle backends beyond the new size go now (oldest first); busy ones at checkin.
            let already = doomed.iter().filter(|s| s.pool_id() == i).count();
            let mut open = p.open - already;
            while open > p.settings.size && !p.idle.is_empty() {
                open -= 1;
                doomed.push(p.idle.remove(0));
            }
        }
        for server in doomed.iter_mut() {
            self.uncount(server.pool_id());
            server.slot.disarm();
        }
    }

    pub(super) fn learn_params(&mut self, pool: PoolId, params: &Params) {
        let p = &mut self.pools[pool];
        if p.server_params.is_none() {
            p.server_params = Some(Arc::new(params.clone()));
        }
    }

    pub(super) fn learning(&self, pool: PoolId) -> Arc<tokio::sync::Mutex<()>> {
        self.pools[pool].learning.clone()
    }

    pub(super) fn server_params(&self, pool: PoolId) -> Option<Arc<Params>> {
        self.pools[pool].server_params.clone()
    }

    pub(super) fn pool_count(&self) -> usize {
        self.pools.len()
    }

    pub(super) fn stats(&self, pool: PoolId) -> PoolStats {
        let p = &self.pools[pool];
        let c = p.counters;
        PoolStats {
            database: p.database.clone(),
            user: p.user.clone(),
            size: p.settings.size,
            open: p.open,
            idle: p.idle.len(),
            waiting: p.waiters.len(),
            adaptive_limit: p.adaptive.as_ref().map(Gradient::limit),
            overloaded: p.settings.queue == QueuePolicy::Codel && p.codel.overloaded(),
            checkouts: c.checkouts,
            shed: c.shed,
            idle_transaction_timeouts: c.idle_transaction_timeouts,
            query_timeouts: c.query_timeouts,
            client_idle_timeouts: c.client_idle_timeouts,
            rides: c.rides,
        }
    }

    /// Pick idle backends to retire, shed stale waiters, and reserve slots to bring pools up
    /// to `min_size`.
    pub(super) fn maintain(
        &mut self,
        now: Instant,
        set: &Weak<PoolSet>,
        doomed: &mut Vec<Backend>,
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
            self.shed_stale(pool, now);
            self.serve_idle(pool, now);
            if self.control.is_paused(&self.pools[pool].database) {
                continue;
            }
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

    pub(super) fn close(&mut self) -> Vec<Backend> {
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

/// Operator controls for the admin console (see `control.rs`).
impl State {
    pub(super) fn pause(&mut self, database: Option<&str>, doomed: &mut Vec<Backend>) {
        self.control.pause(database);
        self.close_idle(database, false, doomed);
    }

    pub(super) fn resume(&mut self, database: Option<&str>) -> Result<(), String> {
        self.control.resume(database)
    }

    /// Close idle backends of `database` now; busy ones close at checkin (a new generation).
    pub(super) fn reconnect(&mut self, database: Option<&str>, doomed: &mut Vec<Backend>) {
        self.close_idle(database, true, doomed);
    }

    fn close_idle(&mut self, database: Option<&str>, retire: bool, doomed: &mut Vec<Backend>) {
        let start = doomed.len();
        for p in self
            .pools
            .iter_mut()
            .filter(|p| covers(database, &p.database))
        {
            if retire {
                p.generation += 1;
            }
            doomed.append(&mut p.idle);
        }
        for server in doomed[start..].iter_mut() {
            self.uncount(server.pool_id());
            server.slot.disarm();
        }
    }

    pub(super) fn is_paused(&self, database: &str) -> bool {
        self.control.is_paused(database)
    }

    pub(super) fn in_use_of(&self, database: Option<&str>) -> usize {
        let pools = self.pools.iter().filter(|p| covers(database, &p.database));
        pools.map(Pool::in_use).sum()
    }

    pub(super) fn idle_servers(&self, now: Instant) -> Vec<ServerView> {
        let pools = self.pools.iter();
        let idle = pools.flat_map(|p| p.idle.iter().map(move |s| (p, s)));
        idle.map(|(p, s)| ServerView::of(s, &p.database, &p.user, now))
            .collect()
    }

    pub(super) fn count_connect(&mut self, outcome: ConnectOutcome) {
        self.control.count_connect(outcome);
    }

    pub(super) fn connect_counts(&self) -> [u64; 4] {
        self.control.connects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PoolSettings {
        PoolSettings {
            size: 1,
            min_size: 0,
            lifetime: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            database_max: None,
            target: ConnectTarget {
                host: "127.0.0.1".into(),
                port: 1,
                dbname: "d".into(),
                user: "u".into(),
                secret: None,
                connect_timeout: Duration::from_secs(1),
            },
            max_waiting: 100,
            queue: QueuePolicy::Fifo,
            codel_interval: Duration::from_millis(100),
            codel_target: Duration::from_millis(5),
            weight: 1,
            reserve: 0,
            adaptive_min: None,
            pipeline_depth: 1,
        }
    }

    /// Queue a client that must wait (the global cap is 0) until `deadline`: its channel,
    /// and whether the sweeper had to be woken for it.
    fn wait(
        st: &mut State,
        pool: PoolId,
        now: Instant,
        deadline: Instant,
    ) -> (oneshot::Receiver<Grant>, bool) {
        match st.take(pool, now, deadline, None, &Weak::new(), &mut Vec::new()) {
            Take::Wait(rx, sweep) => (rx, sweep),
            _ => panic!("the client should have queued"),
        }
    }

    fn refused(rx: &mut oneshot::Receiver<Grant>) -> bool {
        matches!(rx.try_recv(), Ok(Grant::Shed(Shed::QueueTimeout)))
    }

    #[test]
    fn the_sweeper_refuses_each_waiter_at_its_own_deadline() {
        let mut st = State::new(0);
        let pool = st.pool_for("d", "u", settings);
        let (t0, s) = (Instant::now(), Duration::from_secs(1));
        let (mut a, wake_a) = wait(&mut st, pool, t0, t0 + 3 * s);
        let (mut b, wake_b) = wait(&mut st, pool, t0, t0 + 5 * s);
        // Due before the others (a shorter queue_timeout since a reload): out of order.
        let (mut c, wake_c) = wait(&mut st, pool, t0, t0 + 2 * s);
        assert!(
            wake_a && !wake_b && wake_c,
            "woken only for a sooner deadline"
        );
        assert_eq!(st.expire_waiters(t0 + s), Some(t0 + 2 * s));
        assert!(!refused(&mut a) && !refused(&mut b) && !refused(&mut c));
        assert_eq!(st.expire_waiters(t0 + 3 * s), Some(t0 + 5 * s));
        assert!(refused(&mut a) && refused(&mut c) && !refused(&mut b));
        let stats = st.stats(pool);
        assert_eq!(
            (stats.waiting, stats.shed[Shed::QueueTimeout as usize]),
            (1, 2)
        );
        // In order again: only the front is looked at.
        let (mut d, wake_d) = wait(&mut st, pool, t0, t0 + 6 * s);
        assert!(!wake_d);
        assert_eq!(st.expire_waiters(t0 + 5 * s), Some(t0 + 6 * s));
        assert!(refused(&mut b) && !refused(&mut d));
        assert_eq!(st.expire_waiters(t0 + 6 * s), None);
        assert!(refused(&mut d));
        // A client that left before its deadline is dropped without a count.
        let (e, _) = wait(&mut st, pool, t0, t0 + 7 * s);
        drop(e);
        assert_eq!(st.expire_waiters(t0 + 7 * s), None);
        assert_eq!(st.stats(pool).shed[Shed::QueueTimeout as usize], 4);
    }
}
