//! Configuration: the TOML schema, defaults, validation, and the immutable snapshot the rest of
//! sluice reads. Loading never half-succeeds: a `Config` either validates whole or not at all.
//!
//! Shape: `Config::load(path)` reads the main file and the users file it names, fills in
//! defaults, validates cross-field rules, and returns a snapshot. Errors name file, key and
//! reason, e.g. `conf/sluice.toml: pool.size: must be at least 1 (got 0)`.

pub mod diff;
mod effective;
pub mod live;
mod load;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::Secret;

/// Why a configuration was refused: the file, the dotted key (empty when no single key
/// applies, e.g. a TOML syntax error, whose reason then starts with the line and column),
/// and a reason a DBA can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if self.key.is_empty() {
            write!(f, "{file}: {}", self.reason)
        } else {
            write!(f, "{file}: {}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// How a client's backend is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Bound for the whole client session; reset with DISCARD ALL before reuse.
    Session,
    /// Bound from the first message of a transaction until ReadyForQuery 'I'.
    Transaction,
}

/// What transaction pooling does with a statement that leaves session state on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatePolicy {
    /// Keep the client on its backend for the rest of its session.
    Pin,
    /// Refuse the statement with an ERROR naming it.
    Error,
    /// Let it through, as PgBouncer does.
    Allow,
}

/// What sluice asks clients for at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Trust,
    Md5,
    ScramSha256,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The main config file this snapshot was read from.
    pub source: PathBuf,
    pub listen: Listen,
    pub auth: Auth,
    pub limits: Limits,
    pub pool: PoolDefaults,
    pub databases: BTreeMap<String, Database>,
    /// From the users file named by `auth.file`.
    pub users: BTreeMap<String, User>,
    pub reload: Reload,
    pub log: Log,
}

/// How sluice logs.
#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    /// How often the per-pool stats line is logged (and the window of SHOW STATS averages).
    pub stats_period: Duration,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How sluice takes a new config: triggers, guard rails, and the watch after applying.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Reload when the config or users file changes on disk.
    pub watch: bool,
    /// Wait for the files to stay unchanged this long before reloading.
    pub debounce: Duration,
    /// A change that cuts any capacity by more than this percentage is refused.
    pub max_shrink_percent: u32,
    /// How long health is compared against the time before an apply.
    pub watch_window: Duration,
    /// Roll back when the share of failed requests rises by more than this (absolute).
    pub rollback_error_rate: f64,
    /// ...or when p99 latency grows more than this many times...
    pub rollback_latency_factor: f64,
    /// ...and is above this floor.
    pub rollback_latency_floor: Duration,
    /// How often health is sampled during the watch.
    pub sample_interval: Duration,
    /// Consecutive bad samples that trigger a rollback.
    pub rollback_samples: u32,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub http: Option<SocketAddr>,
    /// Event-loop threads (restart-only). One, like PgBouncer, is the cheapest per
    /// transaction; more spread clients over cores at the cost of cross-thread wake-ups.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub kind: AuthType,
    /// Resolved against the directory of the main config file.
    pub file: PathBuf,
    pub admin_users: Vec<String>,
    /// Users who may read the admin console (SHOW) but not run its commands.
    pub stats_users: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_client_connections: usize,
    pub max_server_connections: usize,
    /// Largest client message sluice accepts; larger gets FATAL 08P01.
    pub max_message_size: usize,
    /// Time a new client has to finish startup and authentication.
    pub login_timeout: Duration,
    /// Memory for the shared registry of prepared statements.
    pub prepared_statement_memory: usize,
    /// New connections per second allowed per (user, database) and per client address;
    /// 0 turns the limit off.
    pub connection_rate: u32,
    /// How many connections may arrive at once before the rate applies.
    pub connection_burst: u32,
    /// Failed logins per minute allowed per client address before it is refused at the door;
    /// 0 turns the limit off.
    pub auth_failures_per_minute: u32,
}

/// How a pool's waiting clients are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePolicy {
    /// Oldest first, each up to `queue_timeout`.
    Fifo,
    /// Controlled delay: under sustained queueing, newest first and old waiters shed.
    Codel,
}

#[derive(Debug, Clone)]
pub struct PoolDefaults {
    pub mode: PoolMode,
    pub size: usize,
    pub min_size: usize,
    pub queue_timeout: Duration,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra startup parameters (beyond the built-in list) that follow a client to every backend.
    pub track_extra_params: Vec<String>,
    /// Prepared statements kept per backend in transaction mode (least recently used closed).
    pub max_prepared_statements: usize,
    pub session_state: SessionStatePolicy,
    /// Clients allowed to wait per pool; beyond it, refused at once.
    pub max_waiting: usize,
    pub queue: QueuePolicy,
    pub codel_interval: Duration,
    pub codel_target: Duration,
    /// A client idle inside a transaction this long is disconnected (0: never).
    pub idle_transaction_timeout: Duration,
    /// A statement running this long is cancelled (0: never).
    pub query_timeout: Duration,
    /// A client idle between transactions this long is disconnected (0: never).
    pub client_idle_timeout: Duration,
    /// Up to this many waiting clients' single-statement queries go to one backend in one
    /// write (1: off). See README, "Pipelining waiting queries".
    pub pipeline_depth: usize,
}

#[derive(Debug, Clone)]
pub struct Database {
    pub host: String,
    pub port: u16,
    /// The real database name on the server.
    pub dbname: String,
    pub pool_size: Option<usize>,
    /// Cap over all users' pools of this database; None = only the global cap applies.
    pub max_connections: Option<usize>,
    pub mode: Option<PoolMode>,
    /// Cap on clients connected to this database.
    pub max_client_connections: Option<usize>,
    /// Limit concurrent transactions by measured latency.
    pub adaptive: bool,
    /// The adaptive limit never goes below this.
    pub adaptive_min: usize,
}

#[derive(Debug, Clone)]
pub struct User {
    pub password: Secret,
    pub pool_size: Option<usize>,
    /// Cap on this user's connected clients.
    pub max_client_connections: Option<usize>,
    /// Share of a saturated database's connections, relative to other users.
    pub weight: usize,
    /// Backends of each database kept for this user alone.
    pub reserve: usize,
}

impl Config {
    /// Read the main file and the users file it names (`auth.file`, relative to the main
    /// file's directory), apply defaults, validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load::load(path)
    }

    /// Same as [`Config::load`] from in-memory text: `source` names the main file in errors
    /// and anchors `auth.file`; `users_text` is the users file's content (None: read the file
    /// named by `auth.file` from disk).
    pub fn parse(
        main_text: &str,
        source: &Path,
        users_text: Option<&str>,
    ) -> Result<Config, ConfigError> {
        load::parse(main_text, source, users_text)
    }

    /// The effective settings as TOML text: every key with its resolved value, and users with
    /// their pool_size and the *kind* of password they have, never the password itself.
    pub fn effective(&self) -> String {
        effective::render(self)
    }

    /// Effective pool size for (database, user): user's pool_size, else the database's
    /// pool_size, else pool.size.
    pub fn pool_size(&self, database: &str, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.pool_size)
            .or_else(|| self.databases.get(database).and_then(|d| d.pool_size))
            .unwrap_or(self.pool.size)
    }

    /// Pool mode for a database.
    pub fn pool_mode(&self, database: &str) -> PoolMode {
        self.databases
            .get(database)
            .and_then(|d| d.mode)
            .unwrap_or(self.pool.mode)
    }
}
