//! Printing a [`Config`] as the TOML of its effective settings: every key with its resolved
//! value (defaults and inherited pool settings filled in), and users without their secrets.

use std::path::Path;

use toml::Value;

use super::load::{join_key, toml_key};
use super::units::{format_duration, format_size};
use super::{AuthType, Config, LogFormat, PoolMode, QueuePolicy, SessionStatePolicy};
use crate::auth::Secret;

/// Render `config` as TOML text (it parses as TOML; users appear as `password_kind`).
pub(super) fn render(config: &Config) -> String {
    let mut out = Out::default();
    out.line(&format!(
        "# Effective configuration of {} (defaults applied).",
        config.source.display()
    ));
    listen_and_auth(&mut out, config);
    limits_and_pool(&mut out, config);
    reload(&mut out, config);
    log(&mut out, config);
    databases(&mut out, config);
    users(&mut out, config);
    out.0
}

fn listen_and_auth(out: &mut Out, config: &Config) {
    out.header("listen");
    out.kv("addr", string(&config.listen.addr.to_string()));
    match config.listen.http {
        Some(http) => out.kv("http", string(&http.to_string())),
        None => out.line("# http: not set (no HTTP listener)"),
    }
    out.kv("workers", config.listen.workers.to_string());
    out.header("auth");
    let kind = match config.auth.kind {
        AuthType::Trust => "trust",
        AuthType::Md5 => "md5",
        AuthType::ScramSha256 => "scram-sha-256",
    };
    out.kv("type", string(kind));
    out.kv("file", path(&config.auth.file));
    out.kv("admin_users", list(&config.auth.admin_users));
    out.kv("stats_users", list(&config.auth.stats_users));
}

fn limits_and_pool(out: &mut Out, config: &Config) {
    let limits = &config.limits;
    out.header("limits");
    out.kv(
        "max_client_connections",
        limits.max_client_connections.to_string(),
    );
    out.kv(
        "max_server_connections",
        limits.max_server_connections.to_string(),
    );
    out.kv(
        "max_message_size",
        string(&format_size(limits.max_message_size)),
    );
    out.kv(
        "login_timeout",
        string(&format_duration(limits.login_timeout)),
    );
    out.kv(
        "prepared_statement_memory",
        string(&format_size(limits.prepared_statement_memory)),
    );
    out.kv("connection_rate", limits.connection_rate.to_string());
    out.kv("connection_burst", limits.connection_burst.to_string());
    out.kv(
        "auth_failures_per_minute",
        limits.auth_failures_per_minute.to_string(),
    );
    let pool = &config.pool;
    out.header("pool");
    out.kv("mode", string(mode(pool.mode)));
    out.kv("size", pool.size.to_string());
    out.kv("min_size", pool.min_size.to_string());
    out.kv(
        "queue_timeout",
        string(&format_duration(pool.queue_timeout)),
    );
    out.kv(
        "server_lifetime",
        string(&format_duration(pool.server_lifetime)),
    );
    let idle = format_duration(pool.server_idle_timeout);
    out.kv("server_idle_timeout", string(&idle));
    out.kv(
        "connect_timeout",
        string(&format_duration(pool.connect_timeout)),
    );
    out.kv("track_extra_params", list(&pool.track_extra_params));
    out.kv(
        "max_prepared_statements",
        pool.max_prepared_statements.to_string(),
    );
    let policy = match pool.session_state {
        SessionStatePolicy::Pin => "pin",
        SessionStatePolicy::Error => "error",
        SessionStatePolicy::Allow => "allow",
    };
    out.kv("session_state", string(policy));
    out.kv("max_waiting", pool.max_waiting.to_string());
    let queue = match pool.queue {
        QueuePolicy::Fifo => "fifo",
        QueuePolicy::Codel => "codel",
    };
    out.kv("queue", string(queue));
    for (key, d) in [
        ("codel_interval", pool.codel_interval),
        ("codel_target", pool.codel_target),
        ("idle_transaction_timeout", pool.idle_transaction_timeout),
        ("query_timeout", pool.query_timeout),
        ("client_idle_timeout", pool.client_idle_timeout),
    ] {
        out.kv(key, string(&format_duration(d)));
    }
    out.kv("pipeline_depth", pool.pipeline_depth.to_string());
}

fn log(out: &mut Out, config: &Config) {
    out.header("log");
    let format = match config.log.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    out.kv("format", string(format));
    let period = format_duration(config.log.stats_period);
    out.kv("stats_period", string(&period));
}

fn reload(out: &mut Out, config: &Config) {
    let r = &config.reload;
    out.header("reload");
    out.kv("watch", r.watch.to_string());
    out.kv("debounce", string(&format_duration(r.debounce)));
    out.kv("max_shrink_percent", r.max_shrink_percent.to_string());
    out.kv("watch_window", string(&format_duration(r.watch_window)));
    out.kv("rollback_error_rate", r.rollback_error_rate.to_string());
    out.kv(
        "rollback_latency_factor",
        r.rollback_latency_factor.to_string(),
    );
    let floor = format_duration(r.rollback_latency_floor);
    out.kv("rollback_latency_floor", string(&floor));
    out.kv(
        "sample_interval",
        string(&format_duration(r.sample_interval)),
    );
    out.kv("rollback_samples", r.rollback_samples.to_string());
}

fn databases(out: &mut Out, config: &Config) {
    for (name, db) in &config.databases {
        out.header(&join_key("databases", name));
        out.kv("host", string(&db.host));
        out.kv("port", db.port.to_string());
        out.kv("dbname", string(&db.dbname));
        let size = db.pool_size.unwrap_or(config.pool.size);
        let inherited = if db.pool_size.is_none() {
            "  # from pool.size"
        } else {
            ""
        };
        out.kv("pool_size", format!("{size}{inherited}"));
        match db.max_connections {
            Some(n) => out.kv("max_connections", n.to_string()),
            None => {
                out.line("# max_connections: not set (only limits.max_server_connections applies)")
            }
        }
        let inherited = if db.mode.is_none() {
            "  # from pool.mode"
        } else {
            ""
        };
        let mode = mode(db.mode.unwrap_or(config.pool.mode));
        out.kv("mode", format!("{}{inherited}", string(mode)));
        optional(out, "max_client_connections", db.max_client_connections);
        out.kv("adaptive", db.adaptive.to_string());
        out.kv("adaptive_min", db.adaptive_min.to_string());
    }
}

fn optional(out: &mut Out, key: &str, value: Option<usize>) {
    match value {
        Some(n) => out.kv(key, n.to_string()),
        None => out.line(&format!("# {key}: not set")),
    }
}

fn users(out: &mut Out, config: &Config) {
    out.line("");
    out.line(&format!(
        "# Users from {}: password kinds only, never the secrets.",
        config.auth.file.display()
    ));
    if config.users.is_empty() {
        out.line("# (no users)");
    }
    for (name, user) in &config.users {
        out.header(&join_key("users", name));
        let kind = match user.password {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram",
        };
        out.kv("password_kind", string(kind));
        match user.pool_size {
            Some(n) => out.kv("pool_size", n.to_string()),
            None => out.line("# pool_size: not set (the database's pool_size applies)"),
        }
        optional(out, "max_client_connections", user.max_client_connections);
        out.kv("weight", user.weight.to_string());
        out.kv("reserve", user.reserve.to_string());
    }
}

/// The text being built, a line at a time.
#[derive(Default)]
struct Out(String);

impl Out {
    fn line(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
    }

    fn header(&mut self, table: &str) {
        self.line("");
        self.line(&format!("[{table}]"));
    }

    /// `key = value`, where `value` is already TOML.
    fn kv(&mut self, key: &str, value: String) {
        self.line(&format!("{} = {value}", toml_key(key)));
    }
}

/// A TOML string literal.
fn string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn path(p: &Path) -> String {
    string(&p.to_string_lossy())
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| string(s)).collect();
    format!("[{}]", items.join(", "))
}

fn mode(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use toml::Table;

    use super::*;

    const MAIN: &str = r#"
[listen]
http = "127.0.0.1:9930"
[auth]
admin_users = ["admin"]
[limits]
max_message_size = 1048576
login_timeout = "1500ms"
[pool]
queue_timeout = "0s"
track_extra_params = ["search_path"]
[databases.bench]
pool_size = 30
max_connections = 50
mode = "session"
[databases."odd.name"]
host = "db2"
"#;

    const USERS: &str = r#"
[users.alice]
password = "hunter2"
pool_size = 10
[users.bob]
password = "md51025b22cc2f7bd04505759b389e1d353"
[users.carol]
password = "SCRAM-SHA-256$4096:jB89Kpt+b1BBorPE1eb3CA==$je2jP7bhuOmdTTtOTrzB7tg90c1udb9u3hQTBrsLiIM=:W0LxJYOMu0ZAKdE7M7eQpe7ozTTxus2r+f463BFamW0="
"#;

    fn effective() -> String {
        Config::parse(MAIN, Path::new("conf/sluice.toml"), Some(USERS))
            .unwrap()
            .effective()
    }

    #[test]
    fn shows_every_resolved_value() {
        let text = effective();
        for line in [
            "# Effective configuration of conf/sluice.toml (defaults applied).",
            "[listen]\naddr = \"127.0.0.1:6432\"\nhttp = \"127.0.0.1:9930\"\n",
            "[auth]\ntype = \"scram-sha-256\"\nfile = \"conf/users.toml\"\nadmin_users = [\"admin\"]\n",
            "[limits]\nmax_client_connections = 5000\nmax_server_connections = 100\n\
             max_message_size = \"1MB\"\nlogin_timeout = \"1500ms\"\n",
            "[pool]\nmode = \"transaction\"\nsize = 20\nmin_size = 0\nqueue_timeout = \"0s\"\n\
             server_lifetime = \"1h\"\nserver_idle_timeout = \"10m\"\nconnect_timeout = \"5s\"\n\
             track_extra_params = [\"search_path\"]\n",
            "[databases.bench]\nhost = \"127.0.0.1\"\nport = 5432\ndbname = \"bench\"\n\
             pool_size = 30\nmax_connections = 50\nmode = \"session\"\n",
            "[databases.\"odd.name\"]\nhost = \"db2\"\nport = 5432\ndbname = \"odd.name\"\n\
             pool_size = 20  # from pool.size\n\
             # max_connections: not set (only limits.max_server_connections applies)\n\
             mode = \"transaction\"  # from pool.mode\n",
            "[users.alice]\npassword_kind = \"plain\"\npool_size = 10\n",
            "[users.bob]\npassword_kind = \"md5\"\n\
             # pool_size: not set (the database's pool_size applies)\n",
            "[users.carol]\npassword_kind = \"scram\"\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn never_shows_a_secret() {
        let text = effective();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("1025b22cc2f7bd04505759b389e1d353"), "{text}");
        assert!(!text.contains("jB89Kpt"), "{text}");
        assert!(!text.contains("password ="), "{text}");
    }

    #[test]
    fn is_valid_toml_with_the_same_values() {
        let table: Table = effective().parse().unwrap();
        assert_eq!(table["pool"]["queue_timeout"].as_str(), Some("0s"));
        assert_eq!(
            table["databases"]["odd.name"]["pool_size"].as_integer(),
            Some(20)
        );
        assert_eq!(
            table["users"]["carol"]["password_kind"].as_str(),
            Some("scram")
        );
        assert!(table["listen"].get("http").is_some());
        assert!(table["databases"]["odd.name"]
            .get("max_connections")
            .is_none());
    }

    #[test]
    fn notes_absent_http_and_users() {
        let c = Config::parse("[databases.x]", Path::new("sluice.toml"), Some("")).unwrap();
        let text = c.effective();
        assert!(
            text.contains("# http: not set (no HTTP listener)\n"),
            "{text}"
        );
        assert!(
            text.contains("# Users from users.toml: password kinds only"),
            "{text}"
        );
        assert!(text.contains("# (no users)\n"), "{text}");
    }
}
