//! A running proxy: the listener, the state every client task shares, and the door. Built from
//! a `Config` by `Proxy::start`, so one test process can run many proxies side by side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admitted, Door, Refusal};
use crate::cancel::CancelRegistry;
use crate::client::{self, ClientSecrets};
use crate::config::live::Live;
use crate::config::Config;
use crate::pool::{PoolSet, PoolSettings};
use crate::prepared::Registry;
use crate::protocol::error::{code, PgError};
use crate::server::ConnectTarget;

/// Descriptors kept back for backends, the listener, logs and the admin side.
const FD_RESERVE: usize = 64;

/// What every client task of one proxy shares.
pub struct Shared {
    pub config: Live<Config>,
    pub pools: Arc<PoolSet>,
    pub cancels: CancelRegistry,
    pub secrets: ClientSecrets,
    pub door: Arc<Door>,
    /// What clients experience, for judging a reload.
    pub health: crate::health::Health,
    pub reloader: crate::reload::Reloader,
    /// The admin console, metrics and the client registry.
    pub admin: crate::admin::Admin,
    /// Prepared statements shared by every client, for transaction mode.
    pub statements: Registry,
    /// Clients' session parameters, shared between clients with the same ones.
    pub params: crate::params::Interner,
    /// Connections accepted and not yet closed.
    clients: AtomicUsize,
    /// Clients the open-file limit leaves room for.
    fd_client_budget: usize,
    /// The listener's address when it is one address (not a wildcard): every client
    /// connection's own end.
    pub local: Option<SocketAddr>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The door: refuse a new client when a client cap or rate is reached (this connection
    /// is already counted), before any work is done for it. Admin users always get in.
    pub fn admit(
        &self,
        config: &Config,
        peer: std::net::IpAddr,
        database: &str,
        user: &str,
    ) -> Result<Admitted, PgError> {
        let admin = config.auth.admin_users.iter().any(|a| a == user);
        if !admin {
            self.check_client_cap(config)?;
        }
        self.door.enter(config, peer, database, user)
    }

    fn check_client_cap(&self, config: &Config) -> Result<(), PgError> {
        let cap = config
            .limits
            .max_client_connections
            .min(self.fd_client_budget);
        if self.clients.load(Ordering::Relaxed) <= cap {
            return Ok(());
        }
        let limit = if cap == config.limits.max_client_connections {
            format!("limits.max_client_connections ({cap})")
        } else {
            format!("the open-file limit (room for {cap} clients)")
        };
        let err = PgError::fatal(
            code::TOO_MANY_CONNECTIONS,
            format!("sorry, too many clients already: {limit} reached"),
        )
        .with_hint("Retry with backoff; sluice is at its client connection cap.");
        Err(self.door.refuse(Refusal::ClientCap, err))
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Clients logged in (or logging in), not counting refused connections on their way out.
    fn sessions(&self) -> usize {
        self.door.admitted()
    }
}

/// Counts a connection from accept to close.
struct ClientCount(Arc<Shared>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The settings of the (database, user) pool under `config`.
pub fn pool_settings(config: &Config, database: &str, user: &str) -> PoolSettings {
    let db = &config.databases[database];
    let u = config.users.get(user);
    PoolSettings {
        max_waiting: config.pool.max_waiting,
        pipeline_depth: config.pool.pipeline_depth,
        queue: config.pool.queue,
        codel_interval: config.pool.codel_interval,
        codel_target: config.pool.codel_target,
        weight: u.map_or(1, |u| u.weight),
        reserve: u.map_or(0, |u| u.reserve),
        adaptive_min: db.adaptive.then_some(db.adaptive_min),
        size: config.pool_size(database, user),
        min_size: config.pool.min_size,
        lifetime: config.pool.server_lifetime,
        idle_timeout: config.pool.server_idle_timeout,
        database_max: db.max_connections,
        target: ConnectTarget {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone(),
            user: user.to_string(),
            secret: config.users.get(user).map(|u| u.password.clone()),
            connect_timeout: config.pool.connect_timeout,
        },
    }
}

/// Users with reserved backends, from the users file.
pub fn reserves(config: &Config) -> Vec<(String, usize)> {
    config
        .users
        .iter()
        .filter(|(_, u)| u.reserve > 0)
        .map(|(name, u)| (name.clone(), u.reserve))
        .collect()
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Bind the listener and start serving.
    pub async fn start(config: Config) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(config.listen.addr).await?;
        defer_accept(&listener);
        let addr = listener.local_addr()?;
        let nofile = crate::rlimit::raise_nofile();
        let fd_client_budget = nofile
            .saturating_sub(config.limits.max_server_connections + FD_RESERVE)
            .max(1);
        if fd_client_budget < config.limits.max_client_connections {
            tracing::warn!(
                nofile,
                max_client_connections = config.limits.max_client_connections,
                "the open-file limit leaves room for only {fd_client_budget} clients; refusing beyond that"
            );
        }
        let pools = PoolSet::new(config.limits.max_server_connections);
        pools.set_reserves(reserves(&config));
        let statements = Registry::new(config.limits.prepared_statement_memory);
        let door = Arc::new(Door::new(&config));
        let reloader = crate::reload::Reloader::new(&config);
        pools.spawn_maintenance();
        let shared = Arc::new(Shared {
            config: Live::new(config),
            pools,
            cancels: CancelRegistry::default(),
            secrets: ClientSecrets::default(),
            door,
            health: Default::default(),
            reloader,
            admin: Default::default(),
            statements,
            params: Default::default(),
            clients: AtomicUsize::new(0),
            fd_client_budget,
            local: Some(addr).filter(|a| !a.ip().is_unspecified()),
            shutdown: CancellationToken::new(),
        });
        shared.reloader.attach(&shared);
        crate::admin::start(&shared).await?;
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        spawn_tidying(&shared);
        tracing::info!(%addr, "sluice listening");
        Ok(Proxy {
            shared,
            addr,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Drain: refuse new clients with 57P03 while sessions finish, for up to `grace`; then
    /// stop accepting and close every backend.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.door.start_draining();
        let deadline = tokio::time::Instant::now() + grace;
        while self.shared.sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shared.shutdown.cancel();
        let _ = self.accept.await;
        self.shared.pools.close();
    }
}

/// Forget rate-limit state of keys not seen lately, every ten seconds, until shutdown.
fn spawn_tidying(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(shared) if !shared.shutdown.is_cancelled() => shared.door.tidy(),
                _ => return,
            }
        }
    });
}

/// Hand over a connection only once its first bytes (the startup packet) have come, as
/// PgBouncer does by default (`tcp_defer_accept`): accepting and reading the startup then take
/// one wakeup instead of two. A client that connects and says nothing waits in the kernel for
/// a second or two, then is handed over (and meets the login timeout). Linux only; elsewhere,
/// and if refused, accept as usual.
fn defer_accept(listener: &TcpListener) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let seconds: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&seconds as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_DEFER_ACCEPT refused");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                shared.clients.fetch_add(1, Ordering::Relaxed);
                let count = ClientCount(shared.clone());
                tokio::spawn(client::serve(stream, peer, shared.clone(), count));
            }
            Err(e) => {
                // Out of descriptors or a transient accept error: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
