//! The registry of live client sessions, for SHOW CLIENTS, KILL_CLIENT, KILL and the
//! advisor. A client registers once logged in and is removed when its task ends. Its state
//! (idle, waiting for a backend, active on one) is one atomic the session updates at bind and
//! unbind; the registry's lock is taken only at login, logout and by the admin side.

use crate::clock::Instant;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;

use crate::pool::PoolId;
use crate::protocol::error::{code, PgError};
use crate::server::ServerConn;

/// Where a client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Logged in, holding no backend (transaction mode, between transactions).
    Idle,
    /// Queued for a backend.
    Waiting,
    /// Bound to a backend (in a transaction, pinned, or session mode).
    Active,
}

impl ClientState {
    pub const ALL: [ClientState; 3] =
        [ClientState::Active, ClientState::Idle, ClientState::Waiting];

    pub fn label(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }
}

/// The backend a client is bound to.
#[derive(Debug, Clone)]
pub struct ServerLink {
    pub id: u64,
    pub pid: u32,
    pub addr: SocketAddr,
    pub connected: Instant,
    pub generation: u64,
}

impl ServerLink {
    pub fn of(server: &ServerConn) -> ServerLink {
        ServerLink {
            id: server.id,
            pid: server.key.pid,
            addr: server.addr,
            connected: server.created,
            generation: server.generation,
        }
    }
}

/// What a client is registered with.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// The client's cancel key pid: its id in SHOW CLIENTS and KILL_CLIENT.
    pub id: u32,
    pub user: Arc<str>,
    pub database: Arc<str>,
    /// None for admin console sessions.
    pub pool: Option<PoolId>,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub application_name: Arc<str>,
}

/// A pool's clients by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolClients {
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
    /// The longest wait of a client waiting now.
    pub max_wait: Duration,
}

impl PoolClients {
    pub fn count(&self, state: ClientState) -> usize {
        match state {
            ClientState::Active => self.active,
            ClientState::Idle => self.idle,
            ClientState::Waiting => self.waiting,
        }
    }
}

/// One live client.
pub struct ClientEntry {
    pub info: NewClient,
    pub connected_at: SystemTime,
    state: AtomicU8,
    /// Microseconds since `epoch()`: when the current wait began.
    waiting_since: AtomicU64,
    /// Microseconds since `epoch()`: the client's latest request.
    request_at: AtomicU64,
    /// Microseconds since `epoch()` plus one: idle inside a transaction since then (0: not).
    idle_in_tx_since: AtomicU64,
    server: Mutex<Option<ServerLink>>,
    pinned: OnceLock<String>,
    kill: KillSwitch,
    kill_reason: OnceLock<String>,
}

/// What the entries' microsecond times count from: the first registration.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros(since: Instant, at: Instant) -> u64 {
    at.micros_since(since)
}

impl ClientEntry {
    pub fn id(&self) -> u32 {
        self.info.id
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The client asked for a backend at `at` and may queue for it.
    pub fn waiting(&self, at: Instant) {
        let now = micros(epoch(), at);
        self.waiting_since.store(now, Ordering::Relaxed);
        self.request_at.store(now, Ordering::Relaxed);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
    }

    /// The client got a backend.
    pub fn bound(&self, server: &ServerConn) {
        *self.server.lock().unwrap() = Some(ServerLink::of(server));
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
    }

    /// The client gave its backend back (or was refused one).
    pub fn unbound(&self) {
        *self.server.lock().unwrap() = None;
        self.idle_in_tx_since.store(0, Ordering::Relaxed);
        self.state.store(ClientState::Idle as u8, Ordering::Relaxed);
    }

    /// The client sent a request now.
    pub fn requested(&self, now: Instant) {
        self.request_at
            .store(micros(epoch(), now), Ordering::Relaxed);
    }

    /// The client sits inside a transaction with nothing running since `since` (None: not).
    pub fn idle_in_transaction(&self, since: Option<Instant>) {
        let v = since.map_or(0, |at| micros(epoch(), at) + 1);
        self.idle_in_tx_since.store(v, Ordering::Relaxed);
    }

    /// How long the client has sat idle inside a transaction, if it does.
    pub fn idle_in_transaction_for(&self, now: Instant) -> Option<Duration> {
        match self.idle_in_tx_since.load(Ordering::Relaxed) {
            0 => None,
            v => Some(now.saturating_duration_since(self.at(v - 1))),
        }
    }

    /// Transaction pooling keeps this client on its backend, for this reason.
    pub fn pin(&self, reason: &str) {
        let _ = self.pinned.set(reason.to_string());
    }

    pub fn pinned(&self) -> Option<&str> {
        self.pinned.get().map(String::as_str)
    }

    pub fn server(&self) -> Option<ServerLink> {
        self.server.lock().unwrap().clone()
    }

    /// How long the client has waited for a backend, while it waits.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        if self.state() != ClientState::Waiting {
            return None;
        }
        let since = self.at(self.waiting_since.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(since))
    }

    /// Wall-clock time of the latest request (or of the connection, before any).
    pub fn request_time(&self) -> SystemTime {
        let at = self.at(self.request_at.load(Ordering::Relaxed));
        let ago = Instant::now().saturating_duration_since(at);
        SystemTime::now() - ago
    }

    fn at(&self, micros: u64) -> Instant {
        epoch() + Duration::from_micros(micros)
    }

    /// Ask the client's task to end the session, telling the client `reason`.
    pub fn kill(&self, reason: &str) {
        let _ = self.kill_reason.set(reason.to_string());
        self.kill.pull();
    }
}

/// Every live client by id.
#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<u32, Arc<ClientEntry>>>,
}

/// Removes a client from the registry when its session ends.
pub struct Registration<'a> {
    registry: &'a ClientRegistry,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let id = self.entry.id();
        self.registry.clients.lock().unwrap().remove(&id);
    }
}

impl ClientRegistry {
    pub fn register(&self, info: NewClient) -> Registration<'_> {
        epoch(); // counts from no later than this entry's first time
        let entry = Arc::new(ClientEntry {
            info,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            waiting_since: AtomicU64::new(0),
            request_at: AtomicU64::new(0),
            idle_in_tx_since: AtomicU64::new(0),
            server: Mutex::new(None),
            pinned: OnceLock::new(),
            kill: KillSwitch::default(),
            kill_reason: OnceLock::new(),
        });
        let id = entry.id();
        self.clients.lock().unwrap().insert(id, entry.clone());
        Registration {
            registry: self,
            entry,
        }
    }

    /// Every live client, by id.
    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self.clients.lock().unwrap().values().cloned().collect();
        all.sort_by_key(|c| c.id());
        all
    }

    pub fn len(&self) -> usize {
        self.clients.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients of each pool by state, and the longest current wait.
    pub fn by_pool(&self, now: Instant) -> HashMap<PoolId, PoolClients> {
        let mut out: HashMap<PoolId, PoolClients> = HashMap::new();
        for c in self.clients.lock().unwrap().values() {
            let Some(pool) = c.info.pool else { continue };
            let e = out.entry(pool).or_default();
            match c.state() {
                ClientState::Active => e.active += 1,
                ClientState::Idle => e.idle += 1,
                ClientState::Waiting => e.waiting += 1,
            }
            e.max_wait = e.max_wait.max(c.wait(now).unwrap_or_default());
        }
        out
    }

    /// KILL_CLIENT: false when no such client.
    pub fn kill(&self, id: u32, reason: &str) -> bool {
        let found = self.clients.lock().unwrap().get(&id).cloned();
        found.map(|c| c.kill(reason)).is_some()
    }

    /// KILL db: end every session of `database`; how many.
    pub fn kill_database(&self, database: &str, reason: &str) -> usize {
        let doomed: Vec<_> = self
            .list()
            .into_iter()
            .filter(|c| *c.info.database == *database && c.info.pool.is_some())
            .collect();
        doomed.iter().for_each(|c| c.kill(reason));
        doomed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: u32, database: &str) -> NewClient {
        NewClient {
            id,
            user: "u".into(),
            database: database.into(),
            pool: Some(0),
            peer: "127.0.0.1:5000".parse().unwrap(),
            local: None,
            application_name: "".into(),
        }
    }

    #[test]
    fn registration_lasts_as_long_as_the_guard() {
        let reg = ClientRegistry::default();
        let a = reg.register(client(7, "app"));
        let _b = reg.register(client(8, "other"));
        assert_eq!(
            reg.list().iter().map(|c| c.id()).collect::<Vec<_>>(),
            [7, 8]
        );
        a.entry.waiting(Instant::now());
        assert_eq!(a.entry.state(), ClientState::Waiting);
        assert!(a.entry.wait(Instant::now()).is_some());
        a.entry.unbound();
        assert_eq!(a.entry.state(), ClientState::Idle);
        assert_eq!(a.entry.wait(Instant::now()), None);
        let now = Instant::now();
        a.entry.idle_in_transaction(Some(now));
        assert!(a.entry.idle_in_transaction_for(now).is_some());
        a.entry.idle_in_transaction(None);
        assert!(a.entry.idle_in_transaction_for(now).is_none());
        assert_eq!(reg.kill_database("app", "KILL app"), 1);
        assert!(a.entry.kill.pulled());
        assert!(!reg.kill(99, "x"));
        drop(a);
        assert_eq!(reg.len(), 1);
    }
}

/// The admin console's kill switch for one session: a flag and the session task's waker. The
/// session checks the flag on every wake-up (one atomic load) instead of polling a second
/// future beside it.
#[derive(Default)]
pub struct KillSwitch {
    pulled: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl KillSwitch {
    pub fn pull(&self) {
        self.pulled.store(true, Ordering::SeqCst);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub fn pulled(&self) -> bool {
        self.pulled.load(Ordering::SeqCst)
    }
}

/// A client's session that the admin console can end: it runs the session until it finishes
/// or its kill switch is pulled. On a kill the session is dropped at once (a backend it holds
/// is closed rather than reused), and a client that was idle is told why with FATAL 57P01 on
/// a duplicate of its socket `fd`. It owns the session's future, so the client's task holds
/// only a pointer to it.
pub struct Killable<F> {
    entry: Arc<ClientEntry>,
    fd: RawFd,
    /// The waker last handed to the switch, so it is replaced only when the task's changes.
    registered: Option<Waker>,
    /// None once finished or killed.
    session: Option<F>,
}

impl<F: Future<Output = ()>> Killable<F> {
    pub fn new(entry: Arc<ClientEntry>, fd: RawFd, session: F) -> Killable<F> {
        Killable {
            entry,
            fd,
            registered: None,
            session: Some(session),
        }
    }

    /// The switch was pulled: tell an idle client why, with the session's socket still open,
    /// then drop the session.
    fn kill(entry: &ClientEntry, fd: RawFd, mut session: Pin<&mut Option<F>>) {
        let idle = entry.state() == ClientState::Idle;
        // SAFETY: `fd` belongs to the socket the session owns, which is still open (the
        // session is dropped below): dup() gives an independent descriptor for the same
        // socket, owned by `notice` from here on.
        let notice = idle
            .then(|| unsafe { libc::dup(fd) })
            .filter(|&d| d >= 0)
            .map(|d| unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(d) });
        session.set(None);
        let reason = entry
            .kill_reason
            .get()
            .map_or("KILL_CLIENT", String::as_str);
        tracing::info!(client = entry.id(), user = %entry.info.user, reason, "client killed by the admin console");
        if let Some(mut stream) = notice {
            let err = PgError::fatal(
                code::ADMIN_SHUTDOWN,
                format!("terminating connection due to administrator command ({reason})"),
            );
            let mut out = BytesMut::new();
            err.encode(&mut out);
            let _ = std::io::Write::write_all(&mut stream, &out);
        }
    }
}

impl<F: Future<Output = ()>> Future for Killable<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `session` is pinned with `self`: it is never moved out, only polled in
        // place or dropped in place with `Pin::set`, and Killable has no Drop impl.
        let this = unsafe { self.get_unchecked_mut() };
        let mut session = unsafe { Pin::new_unchecked(&mut this.session) };
        let switch = &this.entry.kill;
        if !switch.pulled() {
            let Some(running) = session.as_mut().as_pin_mut() else {
                return Poll::Ready(());
            };
            if running.poll(cx).is_ready() {
                session.set(None);
                return Poll::Ready(());
            }
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            let waker = cx.waker().clone();
            *switch.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            this.registered = Some(waker);
            // A pull between the check above and the registration found no waker to wake.
            if !switch.pulled() {
                return Poll::Pending;
            }
        }
        if session.is_some() {
            Self::kill(&this.entry, this.fd, session);
        }
        Poll::Ready(())
    }
}
