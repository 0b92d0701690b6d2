//! Turning the TOML text of the main file and the users file into a validated [`Config`]:
//! tables are walked by hand so every error names its file, its dotted key and a reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::units::{format_size, parse_duration, parse_size};
use super::{
    Auth, AuthType, Config, ConfigError, Database, Limits, Listen, Log, LogFormat, PoolDefaults,
    PoolMode, QueuePolicy, Reload, SessionStatePolicy, User,
};
use crate::auth::Secret;

const TOP: &[&str] = &[
    "listen",
    "auth",
    "limits",
    "pool",
    "databases",
    "reload",
    "log",
];
const LOG: &[&str] = &["format", "stats_period"];
const RELOAD: &[&str] = &[
    "watch",
    "debounce",
    "max_shrink_percent",
    "watch_window",
    "rollback_error_rate",
    "rollback_latency_factor",
    "rollback_latency_floor",
    "sample_interval",
    "rollback_samples",
];
const LISTEN: &[&str] = &["addr", "http", "workers"];
const AUTH: &[&str] = &["type", "file", "admin_users", "stats_users"];
const LIMITS: &[&str] = &[
    "max_client_connections",
    "max_server_connections",
    "max_message_size",
    "login_timeout",
    "prepared_statement_memory",
    "connection_rate",
    "connection_burst",
    "auth_failures_per_minute",
];
const POOL: &[&str] = &[
    "mode",
    "size",
    "min_size",
    "queue_timeout",
    "server_lifetime",
    "server_idle_timeout",
    "connect_timeout",
    "track_extra_params",
    "max_prepared_statements",
    "session_state",
    "max_waiting",
    "queue",
    "codel_interval",
    "codel_target",
    "idle_transaction_timeout",
    "query_timeout",
    "client_idle_timeout",
    "pipeline_depth",
];
/// Deepest `pool.pipeline_depth`: past a few queries per write the saving is gone and the
/// wait behind the queries ahead keeps growing.
const MAX_PIPELINE_DEPTH: usize = 64;
const DATABASE: &[&str] = &[
    "host",
    "port",
    "dbname",
    "pool_size",
    "max_connections",
    "mode",
    "max_client_connections",
    "adaptive",
    "adaptive_min",
];
const USERS_TOP: &[&str] = &["users"];
const USER: &[&str] = &[
    "password",
    "pool_size",
    "max_client_connections",
    "weight",
    "reserve",
];
/// The fixed sections, for hinting at the right home of a key put in the wrong table.
const SECTIONS: &[(&str, &[&str])] = &[
    ("listen", LISTEN),
    ("auth", AUTH),
    ("limits", LIMITS),
    ("pool", POOL),
];

const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
const MAX_WORKERS: usize = 256;
const DEFAULT_USERS_FILE: &str = "users.toml";
const MIN_MESSAGE_SIZE: usize = 1 << 10;
const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Parse and validate the main file's text (`source` names it in errors and anchors
/// `auth.file`) and the users file (`users_text`, or read from disk when None).
pub(super) fn parse(
    main_text: &str,
    source: &Path,
    users_text: Option<&str>,
) -> Result<Config, ConfigError> {
    let root = parse_toml(main_text, source)?;
    let top = Section::new(source, String::new(), Some(&root), TOP)?;
    let listen = parse_listen(&top.section("listen", LISTEN)?)?;
    let auth = parse_auth(&top.section("auth", AUTH)?, source)?;
    let limits = parse_limits(&top.section("limits", LIMITS)?)?;
    let pool_section = top.section("pool", POOL)?;
    let pool = parse_pool(&pool_section)?;
    let databases = parse_databases(&top)?;
    let reload = parse_reload(&top.section("reload", RELOAD)?)?;
    let log = parse_log(&top.section("log", LOG)?)?;
    let users = match users_text {
        Some(text) => parse_users(text, &auth.file)?,
        None => parse_users(&read_users_file(&auth.file, source)?, &auth.file)?,
    };
    let config = Config {
        source: source.to_path_buf(),
        listen,
        auth,
        limits,
        pool,
        databases,
        users,
        reload,
        log,
    };
    validate(&config, pool_section.get("size").is_some())?;
    Ok(config)
}

/// Read the main file from disk and parse it.
pub(super) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(path, "", format!("cannot read config file: {e}")))?;
    parse(&text, path, None)
}

fn read_users_file(users: &Path, source: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(users).map_err(|e| {
        let reason = format!("cannot read users file {}: {e}", users.display());
        error(source, "auth.file", reason)
    })
}

fn parse_listen(s: &Section) -> Result<Listen, ConfigError> {
    let addr = match s.socket_addr("addr")? {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse().expect("default listen address"),
    };
    let http = s.socket_addr("http")?;
    // Port 0 asks for any free port, so two of them do not collide.
    if http == Some(addr) && addr.port() != 0 {
        return Err(s.err(
            "http",
            format!("must differ from listen.addr (both are {addr})"),
        ));
    }
    let workers = s.count("workers", 1)?.unwrap_or(1);
    if workers > MAX_WORKERS {
        return Err(s.err(
            "workers",
            format!("must be at most {MAX_WORKERS} (got {workers})"),
        ));
    }
    Ok(Listen {
        addr,
        http,
        workers,
    })
}

fn parse_auth(s: &Section, source: &Path) -> Result<Auth, ConfigError> {
    let kind = match s.string("type")? {
        None | Some("scram-sha-256") => AuthType::ScramSha256,
        Some("md5") => AuthType::Md5,
        Some("trust") => AuthType::Trust,
        Some(other) => {
            let reason = format!("must be \"trust\", \"md5\" or \"scram-sha-256\" (got {other:?})");
            return Err(s.err("type", reason));
        }
    };
    let file = s.nonempty_string("file")?.unwrap_or(DEFAULT_USERS_FILE);
    let file = source.parent().unwrap_or(Path::new("")).join(file);
    let admin_users = s.string_list("admin_users")?;
    if admin_users.iter().any(String::is_empty) {
        return Err(s.err("admin_users", "user names must not be empty"));
    }
    let stats_users = s.string_list("stats_users")?;
    if stats_users.iter().any(String::is_empty) {
        return Err(s.err("stats_users", "user names must not be empty"));
    }
    Ok(Auth {
        kind,
        file,
        admin_users,
        stats_users,
    })
}

fn parse_limits(s: &Section) -> Result<Limits, ConfigError> {
    let max_message_size = s.size("max_message_size")?.unwrap_or(64 << 20);
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&max_message_size) {
        let reason = format!(
            "must be between {} and {} (got {})",
            format_size(MIN_MESSAGE_SIZE),
            format_size(MAX_MESSAGE_SIZE),
            size_for_humans(max_message_size),
        );
        return Err(s.err("max_message_size", reason));
    }
    Ok(Limits {
        max_client_connections: s.count("max_client_connections", 1)?.unwrap_or(5000),
        max_server_connections: s.count("max_server_connections", 1)?.unwrap_or(100),
        max_message_size,
        login_timeout: s.duration("login_timeout", false)?.unwrap_or(secs(15)),
        prepared_statement_memory: match s.size("prepared_statement_memory")? {
            Some(n) if n < 1024 => {
                return Err(s.err(
                    "prepared_statement_memory",
                    format!("must be at least 1kB (got {n} bytes)"),
                ))
            }
            other => other.unwrap_or(64 << 20),
        },
        connection_rate: s.count("connection_rate", 0)?.unwrap_or(0) as u32,
        connection_burst: s.count("connection_burst", 0)?.unwrap_or(0) as u32,
        auth_failures_per_minute: s.count("auth_failures_per_minute", 0)?.unwrap_or(30) as u32,
    })
}

fn parse_pool(s: &Section) -> Result<PoolDefaults, ConfigError> {
    let track_extra_params = s.string_list("track_extra_params")?;
    if let Some(bad) = track_extra_params.iter().find(|p| !is_param_name(p)) {
        let reason = format!(
            "{bad:?} is not a parameter name (letters, digits, '_' and '.', not starting with a digit or '.')"
        );
        return Err(s.err("track_extra_params", reason));
    }
    let pipeline_depth = s.count("pipeline_depth", 1)?.unwrap_or(1);
    if pipeline_depth > MAX_PIPELINE_DEPTH {
        let reason = format!("must be at most {MAX_PIPELINE_DEPTH} (got {pipeline_depth})");
        return Err(s.err("pipeline_depth", reason));
    }
    Ok(PoolDefaults {
        mode: s.mode("mode")?.unwrap_or(PoolMode::Transaction),
        size: s.count("size", 1)?.unwrap_or(20),
        min_size: s.count("min_size", 0)?.unwrap_or(0),
        queue_timeout: s.duration("queue_timeout", true)?.unwrap_or(secs(5)),
        server_lifetime: s.duration("server_lifetime", false)?.unwrap_or(secs(3600)),
        server_idle_timeout: s
            .duration("server_idle_timeout", false)?
            .unwrap_or(secs(600)),
        connect_timeout: s.duration("connect_timeout", false)?.unwrap_or(secs(5)),
        track_extra_params,
        max_prepared_statements: s.count("max_prepared_statements", 1)?.unwrap_or(200),
        session_state: s
            .session_state("session_state")?
            .unwrap_or(SessionStatePolicy::Pin),
        max_waiting: s.count("max_waiting", 0)?.unwrap_or(1000),
        queue: s.queue("queue")?.unwrap_or(QueuePolicy::Fifo),
        codel_interval: s
            .duration("codel_interval", false)?
            .unwrap_or(Duration::from_millis(100)),
        codel_target: s
            .duration("codel_target", false)?
            .unwrap_or(Duration::from_millis(5)),
        idle_transaction_timeout: s
            .duration("idle_transaction_timeout", true)?
            .unwrap_or(Duration::ZERO),
        query_timeout: s.duration("query_timeout", true)?.unwrap_or(Duration::ZERO),
        client_idle_timeout: s
            .duration("client_idle_timeout", true)?
            .unwrap_or(Duration::ZERO),
        pipeline_depth,
    })
}

fn parse_log(s: &Section) -> Result<Log, ConfigError> {
    let format = match s.string("format")? {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            let reason = format!("must be \"text\" or \"json\" (got {other:?})");
            return Err(s.err("format", reason));
        }
    };
    Ok(Log {
        format,
        stats_period: s.duration("stats_period", false)?.unwrap_or(secs(60)),
    })
}

fn parse_reload(s: &Section) -> Result<Reload, ConfigError> {
    let max_shrink_percent = s.count("max_shrink_percent", 0)?.unwrap_or(50);
    if max_shrink_percent > 100 {
        let reason = format!("must be between 0 and 100 (got {max_shrink_percent})");
        return Err(s.err("max_shrink_percent", reason));
    }
    Ok(Reload {
        watch: s.boolean("watch")?.unwrap_or(false),
        debounce: s
            .duration("debounce", true)?
            .unwrap_or(Duration::from_millis(500)),
        max_shrink_percent: max_shrink_percent as u32,
        watch_window: s.duration("watch_window", true)?.unwrap_or(secs(30)),
        rollback_error_rate: s.fraction("rollback_error_rate")?.unwrap_or(0.05),
        rollback_latency_factor: s.factor("rollback_latency_factor")?.unwrap_or(3.0),
        rollback_latency_floor: s
            .duration("rollback_latency_floor", true)?
            .unwrap_or(Duration::from_millis(50)),
        sample_interval: s.duration("sample_interval", false)?.unwrap_or(secs(1)),
        rollback_samples: s.count("rollback_samples", 1)?.unwrap_or(3) as u32,
    })
}

fn parse_databases(top: &Section) -> Result<BTreeMap<String, Database>, ConfigError> {
    const NONE: &str = "at least one database is required: add a [databases.NAME] table";
    let table = top
        .table("databases")?
        .ok_or_else(|| top.err("databases", NONE))?;
    if table.is_empty() {
        return Err(top.err("databases", NONE));
    }
    let mut databases = BTreeMap::new();
    for (name, value) in table {
        let s = top.entry("databases", name, value, DATABASE)?;
        if name.is_empty() {
            return Err(error(s.file, &s.prefix, "database name must not be empty"));
        }
        databases.insert(name.clone(), parse_database(&s, name)?);
    }
    Ok(databases)
}

fn parse_database(s: &Section, name: &str) -> Result<Database, ConfigError> {
    let port = match s.count("port", 1)?.unwrap_or(5432) {
        port @ 1..=65535 => port as u16,
        port => return Err(s.err("port", format!("must be between 1 and 65535 (got {port})"))),
    };
    Ok(Database {
        host: s
            .nonempty_string("host")?
            .unwrap_or("127.0.0.1")
            .to_string(),
        port,
        dbname: s.nonempty_string("dbname")?.unwrap_or(name).to_string(),
        pool_size: s.count("pool_size", 1)?,
        max_connections: s.count("max_connections", 1)?,
        mode: s.mode("mode")?,
        max_client_connections: s.count("max_client_connections", 1)?,
        adaptive: s.boolean("adaptive")?.unwrap_or(false),
        adaptive_min: s.count("adaptive_min", 1)?.unwrap_or(1),
    })
}

/// Parse the users file's text; `file` (the resolved `auth.file`) names it in errors.
fn parse_users(text: &str, file: &Path) -> Result<BTreeMap<String, User>, ConfigError> {
    let root = parse_toml(text, file)?;
    let top = Section::new(file, String::new(), Some(&root), USERS_TOP)?;
    let mut users = BTreeMap::new();
    for (name, value) in top.table("users")?.into_iter().flatten() {
        let s = top.entry("users", name, value, USER)?;
        if name.is_empty() {
            return Err(error(file, &s.prefix, "user name must not be empty"));
        }
        let password = match s.string("password")? {
            None => return Err(s.err("password", PASSWORD_REQUIRED)),
            Some("") => return Err(s.err("password", "must not be empty")),
            Some(text) => Secret::parse(text).map_err(|e| s.err("password", e))?,
        };
        let user = User {
            password,
            pool_size: s.count("pool_size", 1)?,
            max_client_connections: s.count("max_client_connections", 1)?,
            weight: s.count("weight", 1)?.unwrap_or(1),
            reserve: s.count("reserve", 0)?.unwrap_or(0),
        };
        users.insert(name.clone(), user);
    }
    Ok(users)
}

const PASSWORD_REQUIRED: &str =
    "required: the plain-text password, its md5 hash (\"md5...\") or a SCRAM-SHA-256$... secret";

/// Cross-field rules, checked once every field has parsed. `pool_size_set` says whether
/// `pool.size` was written (so an error about it can say it is the default).
fn validate(config: &Config, pool_size_set: bool) -> Result<(), ConfigError> {
    let main = config.source.as_path();
    let pool = &config.pool;
    if pool.min_size > pool.size {
        let reason = format!(
            "must not exceed pool.size ({} > {})",
            pool.min_size, pool.size
        );
        return Err(error(main, "pool.min_size", reason));
    }
    let cap = config.limits.max_server_connections;
    let over_cap = |file: &Path, key: &str, n: usize, what: &str| {
        let reason = format!(
            "{what}{n} exceeds limits.max_server_connections ({cap}); no pool can use more \
             server connections than the global cap"
        );
        error(file, key, reason)
    };
    if pool.size > cap {
        let what = if pool_size_set { "" } else { "the default " };
        return Err(over_cap(main, "pool.size", pool.size, what));
    }
    for (name, db) in &config.databases {
        let key = |k| join_key(&join_key("databases", name), k);
        if let Some(n) = db.pool_size.filter(|&n| n > cap) {
            return Err(over_cap(main, &key("pool_size"), n, ""));
        }
        if let Some(n) = db.max_connections.filter(|&n| n > cap) {
            return Err(over_cap(main, &key("max_connections"), n, ""));
        }
    }
    for (name, user) in &config.users {
        if let Some(n) = user.pool_size.filter(|&n| n > cap) {
            let key = join_key(&join_key("users", name), "pool_size");
            return Err(over_cap(&config.auth.file, &key, n, ""));
        }
    }
    validate_reserves(config)?;
    validate_adaptive(config)
}

/// Reserved backends must fit in every cap they are carved from.
fn validate_reserves(config: &Config) -> Result<(), ConfigError> {
    let total: usize = config.users.values().map(|u| u.reserve).sum();
    if total == 0 {
        return Ok(());
    }
    let (name, _) = config
        .users
        .iter()
        .find(|(_, u)| u.reserve > 0)
        .expect("some reserve");
    let key = join_key(&join_key("users", name), "reserve");
    let mut caps = vec![(
        "limits.max_server_connections".to_string(),
        config.limits.max_server_connections,
    )];
    for (db, d) in &config.databases {
        if let Some(max) = d.max_connections {
            caps.push((join_key(&join_key("databases", db), "max_connections"), max));
        }
    }
    for (cap_key, cap) in caps {
        if total >= cap {
            let reason = format!(
                "reserves add up to {total}, which leaves nothing of {cap_key} ({cap}) for other users"
            );
            return Err(error(&config.auth.file, &key, reason));
        }
    }
    Ok(())
}

fn validate_adaptive(config: &Config) -> Result<(), ConfigError> {
    for (name, db) in &config.databases {
        let size = db.pool_size.unwrap_or(config.pool.size);
        if db.adaptive && db.adaptive_min > size {
            let key = join_key(&join_key("databases", name), "adaptive_min");
            let reason = format!(
                "must not exceed the pool size ({} > {size})",
                db.adaptive_min
            );
            return Err(error(&config.source, &key, reason));
        }
    }
    Ok(())
}

/// One TOML table being read (None: absent, so every key takes its default), with the file
/// and dotted prefix that errors about its keys must name.
struct Section<'a> {
    file: &'a Path,
    prefix: String,
    table: Option<&'a Table>,
}

impl<'a> Section<'a> {
    /// Wrap `table`, found at dotted `prefix`, refusing any key not in `allowed`.
    fn new(
        file: &'a Path,
        prefix: String,
        table: Option<&'a Table>,
        allowed: &[&str],
    ) -> Result<Self, ConfigError> {
        let section = Section {
            file,
            prefix,
            table,
        };
        let unknown = table
            .into_iter()
            .flat_map(|t| t.keys())
            .find(|k| !allowed.contains(&k.as_str()));
        match unknown {
            Some(k) => Err(section.err(k, unknown_key(&section.prefix, k, allowed))),
            None => Ok(section),
        }
    }

    /// The sub-table at `key` (absent is fine: all defaults), with its keys checked.
    fn section(&self, key: &str, allowed: &[&str]) -> Result<Section<'a>, ConfigError> {
        Section::new(self.file, self.key(key), self.table(key)?, allowed)
    }

    /// One named entry `value` of the table at `key` (e.g. databases.NAME), which must itself
    /// be a table.
    fn entry(
        &self,
        key: &str,
        name: &str,
        value: &'a Value,
        allowed: &[&str],
    ) -> Result<Section<'a>, ConfigError> {
        let prefix = join_key(&self.key(key), name);
        match value {
            Value::Table(t) => Section::new(self.file, prefix, Some(t), allowed),
            v => {
                let reason = format!("expected a table [{prefix}], got {}", describe(v));
                Err(error(self.file, &prefix, reason))
            }
        }
    }

    fn key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    fn err(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        error(self.file, &self.key(key), reason)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.table.and_then(|t| t.get(key))
    }

    fn expected(&self, key: &str, what: &str, got: &Value) -> ConfigError {
        self.err(key, format!("expected {what}, got {}", describe(got)))
    }

    fn table(&self, key: &str) -> Result<Option<&'a Table>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(v) => Err(self.expected(key, "a table", v)),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.expected(key, "a string", v)),
        }
    }

    fn nonempty_string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.string(key)? {
            Some(s) if s.trim().is_empty() => Err(self.err(key, "must not be empty")),
            s => Ok(s),
        }
    }

    fn string_list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(v) => return Err(self.expected(key, "an array of strings", v)),
        };
        let strings = items.iter().enumerate().map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            v => {
                let reason = format!("expected strings, but entry {} is {}", i + 1, describe(v));
                Err(self.err(key, reason))
            }
        });
        strings.collect()
    }

    /// A non-negative integer that must be at least `min`.
    fn count(&self, key: &str, min: usize) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => match usize::try_from(*n) {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(self.err(key, format!("must be at least {min} (got {n})"))),
            },
            Some(v) => Err(self.expected(key, "an integer", v)),
        }
    }

    /// A duration string; "0s" only when `allow_zero`.
    fn duration(&self, key: &str, allow_zero: bool) -> Result<Option<Duration>, ConfigError> {
        let d = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => parse_duration(s).map_err(|e| self.err(key, e))?,
            Some(Value::Integer(n)) => {
                let reason = format!(
                    "a bare number is ambiguous: write it with a unit, e.g. \"{n}s\" or \"{n}ms\""
                );
                return Err(self.err(key, reason));
            }
            Some(v) => return Err(self.expected(key, "a duration such as \"5s\"", v)),
        };
        if d.is_zero() && !allow_zero {
            return Err(self.err(key, "must be greater than 0"));
        }
        Ok(Some(d))
    }

    /// A byte size: an integer number of bytes or a string such as "64MB".
    fn size(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => match usize::try_from(*n) {
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(self.err(key, format!("must not be negative (got {n})"))),
            },
            Some(Value::String(s)) => parse_size(s).map(Some).map_err(|e| self.err(key, e)),
            Some(v) => Err(self.expected(key, "a size such as \"64MB\" or a byte count", v)),
        }
    }

    fn mode(&self, key: &str) -> Result<Option<PoolMode>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some("session") => Ok(Some(PoolMode::Session)),
            Some("transaction") => Ok(Some(PoolMode::Transaction)),
            Some(other) => {
                let reason = format!("must be \"session\" or \"transaction\" (got {other:?})");
                Err(self.err(key, reason))
            }
        }
    }

    /// A number between 0 and 1.
    fn fraction(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.number(key)? {
            Some(x) if !(0.0..=1.0).contains(&x) => {
                Err(self.err(key, format!("must be between 0 and 1 (got {x})")))
            }
            other => Ok(other),
        }
    }

    /// A number of at least 1.
    fn factor(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.number(key)? {
            Some(x) if x < 1.0 => Err(self.err(key, format!("must be at least 1 (got {x})"))),
            other => Ok(other),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Float(x)) => Ok(Some(*x)),
            Some(Value::Integer(n)) => Ok(Some(*n as f64)),
            Some(v) => Err(self.expected(key, "a number", v)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.expected(key, "true or false", v)),
        }
    }

    fn queue(&self, key: &str) -> Result<Option<QueuePolicy>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some("fifo") => Ok(Some(QueuePolicy::Fifo)),
            Some("codel") => Ok(Some(QueuePolicy::Codel)),
            Some(other) => {
                let reason = format!("must be \"fifo\" or \"codel\" (got {other:?})");
                Err(self.err(key, reason))
            }
        }
    }

    fn session_state(&self, key: &str) -> Result<Option<SessionStatePolicy>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some("pin") => Ok(Some(SessionStatePolicy::Pin)),
            Some("error") => Ok(Some(SessionStatePolicy::Error)),
            Some("allow") => Ok(Some(SessionStatePolicy::Allow)),
            Some(other) => {
                let reason = format!("must be \"pin\", \"error\" or \"allow\" (got {other:?})");
                Err(self.err(key, reason))
            }
        }
    }

    fn socket_addr(&self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        text.parse().map(Some).map_err(|_| {
            let reason = format!(
                "expected an IP address and port such as \"127.0.0.1:6432\" or \"[::1]:6432\", \
                 got {text:?} (host names are not resolved here)"
            );
            self.err(key, reason)
        })
    }
}

fn error(file: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parse TOML text, turning a syntax error into one naming the file, line and column.
fn parse_toml(text: &str, file: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let message: Vec<&str> = e.message().lines().map(str::trim).collect();
        let message = message.join(": ");
        let reason = match e.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}: invalid TOML: {message}")
            }
            None => format!("invalid TOML: {message}"),
        };
        error(file, "", reason)
    })
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// "pool" + "size" → "pool.size"; keys that are not bare TOML keys are quoted.
pub(super) fn join_key(prefix: &str, key: &str) -> String {
    let key = toml_key(key);
    match prefix {
        "" => key,
        p => format!("{p}.{key}"),
    }
}

/// A key as TOML would write it: bare if it can be, quoted otherwise.
pub(super) fn toml_key(key: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !key.is_empty() && key.chars().all(bare) {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(n) => format!("integer {n}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// "unknown key", with a hint at the likely intended key when there is one.
fn unknown_key(prefix: &str, key: &str, allowed: &[&str]) -> String {
    let threshold = if key.len() <= 3 { 1 } else { 2 };
    let near = allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, _)| *d <= threshold)
        .min();
    if let Some((_, a)) = near {
        return format!("unknown key (did you mean {}?)", join_key(prefix, a));
    }
    let home = SECTIONS.iter().find(|(_, keys)| keys.contains(&key));
    match home {
        Some((section, _)) => format!("unknown key here (did you mean {section}.{key}?)"),
        None => "unknown key".to_string(),
    }
}

/// Optimal-string-alignment distance: edits, counting a swap of neighbours as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A PostgreSQL run-time parameter name: [A-Za-z_][A-Za-z0-9_.]*.
fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// "100B" as "100 bytes", larger sizes in their unit ("2GB").
fn size_for_humans(bytes: usize) -> String {
    match format_size(bytes) {
        s if s.ends_with("kB") || s.ends_with("MB") || s.ends_with("GB") => s,
        _ => format!("{bytes} bytes"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const MAIN: &str = "conf/sluice.toml";
    const USERS: &str = "conf/users.toml";
    const MINIMAL: &str = "[databases.bench]\n";
    const ALICE: &str = "[users.alice]\npassword = \"hunter2\"\n";

    fn parse_with(main: &str, users: &str) -> Result<Config, ConfigError> {
        Config::parse(main, Path::new(MAIN), Some(users))
    }

    /// Parse `main` (with one user) expecting an error about `key` in `file`; return its
    /// reason after checking the message names both.
    fn reason(main: &str, users: &str, file: &str, key: &str) -> String {
        let err = parse_with(main, users).expect_err("config should be refused");
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (Path::new(file), key),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(&format!("{file}: {key}: ")),
            "{err}"
        );
        err.reason
    }

    fn main_reason(main: &str, key: &str) -> String {
        reason(main, ALICE, MAIN, key)
    }

    /// A scratch directory for tests that touch the disk, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("sluice-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn minimal_file_gets_every_default() {
        let c = parse_with(MINIMAL, "").unwrap();
        assert_eq!(c.source, Path::new(MAIN));
        assert_eq!(c.listen.addr, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(c.listen.http, None);
        assert_eq!(c.listen.workers, 1, "one event-loop thread by default");
        assert_eq!(c.auth.kind, AuthType::ScramSha256);
        assert_eq!(c.auth.file, Path::new("conf/users.toml"));
        assert!(c.auth.admin_users.is_empty());
        assert_eq!(c.limits.max_client_connections, 5000);
        assert_eq!(c.limits.max_server_connections, 100);
        assert_eq!(c.limits.max_message_size, 64 * 1024 * 1024);
        assert_eq!(c.limits.login_timeout, Duration::from_secs(15));
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!((c.pool.size, c.pool.min_size), (20, 0));
        assert_eq!(c.pool.queue_timeout, Duration::from_secs(5));
        assert_eq!(c.pool.server_lifetime, Duration::from_secs(3600));
        assert_eq!(c.pool.server_idle_timeout, Duration::from_secs(600));
        assert_eq!(c.pool.connect_timeout, Duration::from_secs(5));
        assert!(c.pool.track_extra_params.is_empty());
        let db = &c.databases["bench"];
        assert_eq!(
            (db.host.as_str(), db.port, db.dbname.as_str()),
            ("127.0.0.1", 5432, "bench")
        );
        assert_eq!(
            (db.pool_size, db.max_connections, db.mode),
            (None, None, None)
        );
        assert_eq!(c.databases.len(), 1);
        assert!(c.users.is_empty());
        assert_eq!(c.pool_size("bench", "nobody"), 20);
        assert_eq!(c.pool_mode("bench"), PoolMode::Transaction);
    }

    const FULL: &str = r#"
[listen]
addr = "0.0.0.0:7432"
http = "[::1]:9930"
[auth]
type = "md5"
file = "secret/people.toml"
admin_users = ["admin", "ops"]
[limits]
max_client_connections = 300
max_server_connections = 200
max_message_size = "512kB"
login_timeout = "250ms"
[pool]
mode = "session"
size = 30
min_size = 2
queue_timeout = "0s"
server_lifetime = "1d"
server_idle_timeout = "90s"
connect_timeout = "2m"
track_extra_params = ["search_path", "app.tenant_id", "_x1"]
[databases.bench]
host = "db1.internal"
port = 5433
dbname = "bench_real"
pool_size = 40
max_connections = 150
mode = "transaction"
[databases.other]
"#;

    const FULL_USERS: &str = r#"
[users.alice]
password = "hunter2"
pool_size = 10
[users.bob]
password = "md51025b22cc2f7bd04505759b389e1d353"
[users.carol]
password = "SCRAM-SHA-256$4096:jB89Kpt+b1BBorPE1eb3CA==$je2jP7bhuOmdTTtOTrzB7tg90c1udb9u3hQTBrsLiIM=:W0LxJYOMu0ZAKdE7M7eQpe7ozTTxus2r+f463BFamW0="
"#;

    #[test]
    fn full_file_parses_every_key() {
        let c = parse_with(FULL, FULL_USERS).unwrap();
        assert_eq!(c.listen.addr, "0.0.0.0:7432".parse().unwrap());
        assert_eq!(c.listen.http, Some("[::1]:9930".parse().unwrap()));
        assert_eq!(c.auth.kind, AuthType::Md5);
        assert_eq!(c.auth.file, Path::new("conf/secret/people.toml"));
        assert_eq!(c.auth.admin_users, ["admin", "ops"]);
        assert_eq!(c.limits.max_client_connections, 300);
        assert_eq!(c.limits.max_server_connections, 200);
        assert_eq!(c.limits.max_message_size, 512 * 1024);
        assert_eq!(c.limits.login_timeout, Duration::from_millis(250));
        assert_eq!(c.pool.mode, PoolMode::Session);
        assert_eq!((c.pool.size, c.pool.min_size), (30, 2));
        assert_eq!(c.pool.queue_timeout, Duration::ZERO);
        assert_eq!(c.pool.server_lifetime, Duration::from_secs(86_400));
        assert_eq!(c.pool.server_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.pool.connect_timeout, Duration::from_secs(120));
        assert_eq!(
            c.pool.track_extra_params,
            ["search_path", "app.tenant_id", "_x1"]
        );
        let db = &c.databases["bench"];
        assert_eq!(
            (db.host.as_str(), db.port, db.dbname.as_str()),
            ("db1.internal", 5433, "bench_real")
        );
        assert_eq!((db.pool_size, db.max_connections), (Some(40), Some(150)));
        assert_eq!(db.mode, Some(PoolMode::Transaction));
        assert_eq!(c.databases["other"].dbname, "other");
        assert!(matches!(&c.users["alice"].password, Secret::Plain(p) if p == "hunter2"));
        assert_eq!(c.users["alice"].pool_size, Some(10));
        assert!(matches!(c.users["bob"].password, Secret::Md5(_)));
        assert_eq!(c.users["bob"].pool_size, None);
        assert!(matches!(c.users["carol"].password, Secret::Scram(_)));
        assert_eq!(c.pool_size("bench", "alice"), 10);
        assert_eq!(c.pool_size("bench", "bob"), 40);
        assert_eq!(c.pool_size("other", "bob"), 30);
        assert_eq!(c.pool_mode("other"), PoolMode::Session);
    }

    #[test]
    fn field_rules_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[pool]\nsize = 0",
                "pool.size",
                "must be at least 1 (got 0)",
            ),
            (
                "[pool]\nsize = -3",
                "pool.size",
                "must be at least 1 (got -3)",
            ),
            (
                "[pool]\nmin_size = -1",
                "pool.min_size",
                "must be at least 0 (got -1)",
            ),
            (
                "[pool]\nmode = \"statement\"",
                "pool.mode",
                "must be \"session\" or \"transaction\" (got \"statement\")",
            ),
            (
                "[pool]\nserver_lifetime = \"0s\"",
                "pool.server_lifetime",
                "must be greater than 0",
            ),
            (
                "[pool]\nserver_idle_timeout = \"0\"",
                "pool.server_idle_timeout",
                "must be greater than 0",
            ),
            (
                "[pool]\nconnect_timeout = \"0ms\"",
                "pool.connect_timeout",
                "must be greater than 0",
            ),
            (
                "[pool]\nqueue_timeout = \"5 sec\"",
                "pool.queue_timeout",
                "unknown unit \"sec\"",
            ),
            (
                "[pool]\nqueue_timeout = 5",
                "pool.queue_timeout",
                "a bare number is ambiguous: write it with a unit, e.g. \"5s\" or \"5ms\"",
            ),
            (
                "[pool]\nqueue_timeout = true",
                "pool.queue_timeout",
                "expected a duration such as \"5s\", got boolean true",
            ),
            (
                "[pool]\ntrack_extra_params = [\"search_path\", \"1st\"]",
                "pool.track_extra_params",
                "\"1st\" is not a parameter name",
            ),
            (
                "[pool]\ntrack_extra_params = [\"a-b\"]",
                "pool.track_extra_params",
                "\"a-b\" is not a parameter name",
            ),
            (
                "[pool]\ntrack_extra_params = [\"ok\", 5]",
                "pool.track_extra_params",
                "expected strings, but entry 2 is integer 5",
            ),
            (
                "[pool]\ntrack_extra_params = \"search_path\"",
                "pool.track_extra_params",
                "expected an array of strings, got string \"search_path\"",
            ),
            (
                "[limits]\nmax_client_connections = 0",
                "limits.max_client_connections",
                "must be at least 1 (got 0)",
            ),
            (
                "[limits]\nmax_server_connections = \"lots\"",
                "limits.max_server_connections",
                "expected an integer, got string \"lots\"",
            ),
            (
                "[limits]\nmax_server_connections = 1.5",
                "limits.max_server_connections",
                "expected an integer, got float 1.5",
            ),
            (
                "[limits]\nmax_message_size = 100",
                "limits.max_message_size",
                "must be between 1kB and 1GB (got 100 bytes)",
            ),
            (
                "[limits]\nmax_message_size = \"2GB\"",
                "limits.max_message_size",
                "must be between 1kB and 1GB (got 2GB)",
            ),
            (
                "[limits]\nmax_message_size = -5",
                "limits.max_message_size",
                "must not be negative (got -5)",
            ),
            (
                "[limits]\nmax_message_size = \"64XB\"",
                "limits.max_message_size",
                "unknown unit \"XB\"",
            ),
            (
                "[limits]\nlogin_timeout = \"0s\"",
                "limits.login_timeout",
                "must be greater than 0",
            ),
            (
                "[listen]\naddr = \"localhost:6432\"",
                "listen.addr",
                "expected an IP address and port",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:6432\"",
                "listen.http",
                "must differ from listen.addr (both are 127.0.0.1:6432)",
            ),
            ("listen = 5", "listen", "expected a table, got integer 5"),
            (
                "[listen]\nworkers = 0",
                "listen.workers",
                "must be at least 1 (got 0)",
            ),
            (
                "[listen]\nworkers = 1000",
                "listen.workers",
                "must be at most 256 (got 1000)",
            ),
            (
                "[auth]\ntype = \"password\"",
                "auth.type",
                "must be \"trust\", \"md5\" or \"scram-sha-256\" (got \"password\")",
            ),
            ("[auth]\nfile = \"\"", "auth.file", "must not be empty"),
            (
                "[auth]\nadmin_users = [\"\"]",
                "auth.admin_users",
                "user names must not be empty",
            ),
            (
                "[databases.bench]\nport = 0",
                "databases.bench.port",
                "must be at least 1 (got 0)",
            ),
            (
                "[databases.bench]\nport = 70000",
                "databases.bench.port",
                "must be between 1 and 65535 (got 70000)",
            ),
            (
                "[databases.bench]\nhost = \"\"",
                "databases.bench.host",
                "must not be empty",
            ),
            (
                "[databases.bench]\ndbname = \" \"",
                "databases.bench.dbname",
                "must not be empty",
            ),
            (
                "[databases.bench]\npool_size = 0",
                "databases.bench.pool_size",
                "must be at least 1 (got 0)",
            ),
            (
                "[databases.bench]\nmax_connections = 0",
                "databases.bench.max_connections",
                "must be at least 1 (got 0)",
            ),
            (
                "[databases.bench]\nmode = \"tx\"",
                "databases.bench.mode",
                "must be \"session\" or \"transaction\" (got \"tx\")",
            ),
            (
                "[databases.\"my.db\"]\npool_size = 0",
                "databases.\"my.db\".pool_size",
                "must be at least 1 (got 0)",
            ),
            (
                "[databases]\nbench = 5",
                "databases.bench",
                "expected a table [databases.bench], got integer 5",
            ),
            (
                "[databases.\"\"]",
                "databases.\"\"",
                "database name must not be empty",
            ),
        ];
        for (main, key, want) in cases {
            let main = if main.contains("[databases") {
                main.to_string()
            } else {
                format!("{main}\n{MINIMAL}")
            };
            let got = main_reason(&main, key);
            assert!(got.contains(want), "{key}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn the_exact_message_names_file_key_and_reason() {
        let err = parse_with(&format!("{MINIMAL}[pool]\nsize = 0\n"), "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "conf/sluice.toml: pool.size: must be at least 1 (got 0)"
        );
        let err = parse_with(
            &format!("{MINIMAL}[limits]\nmax_server_connections = \"lots\"\n"),
            "",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "conf/sluice.toml: limits.max_server_connections: expected an integer, got string \"lots\""
        );
    }

    #[test]
    fn cross_field_rules_name_the_key_and_both_numbers() {
        let r = main_reason(
            &format!("{MINIMAL}[pool]\nsize = 5\nmin_size = 6"),
            "pool.min_size",
        );
        assert_eq!(r, "must not exceed pool.size (6 > 5)");
        let r = main_reason(&format!("{MINIMAL}[pool]\nsize = 150"), "pool.size");
        assert!(
            r.starts_with("150 exceeds limits.max_server_connections (100)"),
            "{r}"
        );
        let r = main_reason(
            &format!("{MINIMAL}[limits]\nmax_server_connections = 10"),
            "pool.size",
        );
        assert!(
            r.starts_with("the default 20 exceeds limits.max_server_connections (10)"),
            "{r}"
        );
        let main = "[limits]\nmax_server_connections = 50\n[databases.bench]\npool_size = 51";
        let r = main_reason(main, "databases.bench.pool_size");
        assert!(
            r.starts_with("51 exceeds limits.max_server_connections (50)"),
            "{r}"
        );
        let main = "[limits]\nmax_server_connections = 50\n[databases.bench]\nmax_connections = 60";
        let r = main_reason(main, "databases.bench.max_connections");
        assert!(
            r.starts_with("60 exceeds limits.max_server_connections (50)"),
            "{r}"
        );
        let users = "[users.alice]\npassword = \"x\"\npool_size = 101";
        let r = reason(MINIMAL, users, USERS, "users.alice.pool_size");
        assert!(
            r.starts_with("101 exceeds limits.max_server_connections (100)"),
            "{r}"
        );
        // At the cap is fine, and min_size may equal size.
        let main = "[limits]\nmax_server_connections = 50\n[pool]\nsize = 50\nmin_size = 50\n[databases.bench]\nmax_connections = 50";
        parse_with(main, "[users.a]\npassword = \"x\"\npool_size = 50").unwrap();
    }

    #[test]
    fn pipeline_depth_is_one_to_sixty_four_and_off_by_default() {
        assert_eq!(parse_with(MINIMAL, "").unwrap().pool.pipeline_depth, 1);
        let c = parse_with(&format!("{MINIMAL}[pool]\npipeline_depth = 64"), "").unwrap();
        assert_eq!(c.pool.pipeline_depth, 64);
        let r = main_reason(
            &format!("{MINIMAL}[pool]\npipeline_depth = 0"),
            "pool.pipeline_depth",
        );
        assert_eq!(r, "must be at least 1 (got 0)");
        let r = main_reason(
            &format!("{MINIMAL}[pool]\npipeline_depth = 65"),
            "pool.pipeline_depth",
        );
        assert_eq!(r, "must be at most 64 (got 65)");
    }

    #[test]
    fn at_least_one_database_is_required() {
        for main in ["", "[databases]\n", "[pool]\nsize = 5\n"] {
            let r = main_reason(main, "databases");
            assert_eq!(
                r,
                "at least one database is required: add a [databases.NAME] table"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_hints() {
        let cases = [
            (
                "[pool]\nszie = 5",
                "pool.szie",
                "unknown key (did you mean pool.size?)",
            ),
            (
                "[limits]\nmax_server_conections = 5",
                "limits.max_server_conections",
                "unknown key (did you mean limits.max_server_connections?)",
            ),
            (
                "[pool]\nmax_server_connections = 5",
                "pool.max_server_connections",
                "unknown key here (did you mean limits.max_server_connections?)",
            ),
            (
                "[databse.x]",
                "databse",
                "unknown key (did you mean databases?)",
            ),
            (
                "[databases.bench]\npoolsize = 5",
                "databases.bench.poolsize",
                "unknown key (did you mean databases.bench.pool_size?)",
            ),
            (
                "[databases.bench]\nflavour = \"pg\"",
                "databases.bench.flavour",
                "unknown key",
            ),
            ("verbose = true", "verbose", "unknown key"),
        ];
        for (main, key, want) in cases {
            let main = if main.contains("[databases.bench]") {
                main.to_string()
            } else {
                format!("{main}\n{MINIMAL}")
            };
            assert_eq!(main_reason(&main, key), want, "{main}");
        }
    }

    #[test]
    fn users_file_rules_name_the_users_file() {
        let cases = [
            (
                "[users.alice]\npool_size = 5",
                "users.alice.password",
                "required: the plain-text password",
            ),
            (
                "[users.alice]\npassword = \"\"",
                "users.alice.password",
                "must not be empty",
            ),
            (
                "[users.alice]\npassword = 42",
                "users.alice.password",
                "expected a string, got integer 42",
            ),
            (
                "[users.alice]\npassword = \"SCRAM-SHA-256$4096:abc\"",
                "users.alice.password",
                "",
            ),
            (
                "[users.alice]\npassword = \"x\"\npool_size = 0",
                "users.alice.pool_size",
                "must be at least 1 (got 0)",
            ),
            (
                "[users.alice]\npasword = \"x\"",
                "users.alice.pasword",
                "unknown key (did you mean users.alice.password?)",
            ),
            (
                "[user.alice]\npassword = \"x\"",
                "user",
                "unknown key (did you mean users?)",
            ),
            (
                "users = [\"alice\"]",
                "users",
                "expected a table, got an array",
            ),
            (
                "[users]\nalice = \"hunter2\"",
                "users.alice",
                "expected a table [users.alice], got string \"hunter2\"",
            ),
        ];
        for (users, key, want) in cases {
            let got = reason(MINIMAL, users, USERS, key);
            assert!(got.starts_with(want), "{key}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn empty_users_and_absent_admins_are_fine() {
        let main = format!("[auth]\ntype = \"trust\"\nadmin_users = [\"admin\"]\n{MINIMAL}");
        for users in ["", "[users]\n", "# nobody yet\n"] {
            let c = parse_with(&main, users).unwrap();
            assert!(c.users.is_empty());
            assert_eq!(c.auth.kind, AuthType::Trust);
            assert_eq!(c.auth.admin_users, ["admin"]);
        }
    }

    #[test]
    fn toml_syntax_errors_name_the_file_and_line() {
        let err = parse_with("[databases.bench]\nport = = 5\n", "").unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (Path::new(MAIN), "")
        );
        assert!(
            err.reason.starts_with("line 2, column 8: invalid TOML: "),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("conf/sluice.toml: line 2, column 8: "),
            "{err}"
        );
        let err = parse_with(MINIMAL, "[users.alice\n").unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (Path::new(USERS), "")
        );
        assert!(
            err.reason.starts_with("line 1, column 13: invalid TOML"),
            "{err}"
        );
        let err =
            parse_with("[pool]\nsize = 1\n[pool]\nsize = 2\n[databases.x]\n", "").unwrap_err();
        assert!(
            err.reason.starts_with("line 3, column 1: invalid TOML"),
            "{err}"
        );
    }

    #[test]
    fn users_file_is_resolved_against_the_main_files_directory() {
        let dir = TempDir::new("resolve");
        let main = dir.write(
            "etc/sluice.toml",
            "[auth]\nfile = \"auth/people.toml\"\n[databases.bench]\n",
        );
        dir.write("etc/auth/people.toml", ALICE);
        let c = Config::load(&main).unwrap();
        assert_eq!(c.source, main);
        assert_eq!(c.auth.file, dir.0.join("etc/auth/people.toml"));
        assert!(c.users.contains_key("alice"));
        // An absolute auth.file is used as is.
        let elsewhere = dir.write("elsewhere.toml", "[users.bob]\npassword = \"pw\"\n");
        let text = format!(
            "[auth]\nfile = {}\n{MINIMAL}",
            Value::String(elsewhere.display().to_string())
        );
        let main = dir.write("etc/abs.toml", &text);
        let c = Config::load(&main).unwrap();
        assert_eq!(c.auth.file, elsewhere);
        assert!(c.users.contains_key("bob"));
        // A bare file name has no directory: the users file is taken from the same (current) one.
        let c = Config::parse(MINIMAL, Path::new("sluice.toml"), Some("")).unwrap();
        assert_eq!(c.auth.file, Path::new("users.toml"));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("missing");
        let main = dir.write("sluice.toml", MINIMAL);
        let err = Config::load(&main).unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (main.as_path(), "auth.file")
        );
        let users = dir.0.join("users.toml");
        let want = format!("cannot read users file {}: ", users.display());
        assert!(err.reason.starts_with(&want), "{err}");
        let absent = dir.0.join("nope.toml");
        let err = Config::load(&absent).unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (absent.as_path(), "")
        );
        assert!(err.reason.starts_with("cannot read config file: "), "{err}");
    }

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/sluice.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.listen.addr, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(c.listen.http, Some("127.0.0.1:9930".parse().unwrap()));
        assert_eq!(c.auth.kind, AuthType::ScramSha256);
        assert_eq!(
            c.auth.file,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/users.toml")
        );
        assert_eq!(c.auth.admin_users, ["admin"]);
        let db = &c.databases["bench"];
        assert_eq!(
            (db.host.as_str(), db.port, db.dbname.as_str()),
            ("127.0.0.1", 5432, "bench")
        );
        assert_eq!((db.pool_size, db.max_connections), (Some(20), Some(50)));
        assert_eq!(c.databases.len(), 1);
        assert!(matches!(&c.users["bench"].password, Secret::Plain(p) if p == "bench"));
        assert!(matches!(&c.users["admin"].password, Secret::Plain(p) if p == "admin-change-me"));
        assert_eq!(c.users.len(), 2);
    }

    #[test]
    fn shipped_commented_examples_are_valid_secrets() {
        let users = include_str!("../../conf/users.toml");
        let uncommented: String = users
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|l| l.starts_with('[') || l.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse_with(MINIMAL, &uncommented).unwrap();
        assert!(matches!(c.users["carol"].password, Secret::Md5(_)));
        assert!(matches!(c.users["dave"].password, Secret::Scram(_)));
        assert_eq!(c.users["dave"].pool_size, Some(5));
    }

    #[test]
    fn did_you_mean_distance() {
        assert_eq!(edit_distance("size", "size"), 0);
        assert_eq!(edit_distance("szie", "size"), 1);
        assert_eq!(edit_distance("siz", "size"), 1);
        assert_eq!(edit_distance("mode", "port"), 3);
        assert_eq!(unknown_key("pool", "xyz", POOL), "unknown key");
    }

    #[test]
    fn stats_users_and_the_log_section() {
        let main = format!(
            "[auth]\nstats_users = [\"watcher\"]\n[log]\nformat = \"json\"\nstats_period = \"15s\"\n{MINIMAL}"
        );
        let c = parse_with(&main, ALICE).unwrap();
        assert_eq!(c.auth.stats_users, ["watcher"]);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.stats_period, secs(15));
        let d = parse_with(MINIMAL, ALICE).unwrap();
        assert!(d.auth.stats_users.is_empty());
        assert_eq!(
            (d.log.format, d.log.stats_period),
            (LogFormat::Text, secs(60))
        );
        let bad = format!("[log]\nformat = \"xml\"\n{MINIMAL}");
        assert!(main_reason(&bad, "log.format").contains("\"text\" or \"json\""));
        let empty = format!("[auth]\nstats_users = [\"\"]\n{MINIMAL}");
        assert!(main_reason(&empty, "auth.stats_users").contains("must not be empty"));
        let zero = format!("[listen]\naddr = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n{MINIMAL}");
        assert!(
            parse_with(&zero, ALICE).is_ok(),
            "two port-0 listeners do not collide"
        );
    }
}
