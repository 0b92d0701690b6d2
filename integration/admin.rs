//! The admin console and HTTP endpoints against a running proxy: every SHOW with PgBouncer's
//! columns and live values, the controls (PAUSE holds new transactions until RESUME,
//! RECONNECT, KILL, KILL_CLIENT, SHUTDOWN), who may connect, `/metrics` parsed as Prometheus
//! text with counters that match the work done, and prometheus-pgbouncer-exporter scraping
//! the console.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use sluice::{Config, Proxy};

use crate::cluster::{cluster, DATABASE, PASSWORD, U_SCRAM};
use crate::harness::{connect_with, message, proxy, sqlstate, ProxyBuilder, TestProxy};
use crate::pools::role;

const ADMIN: &str = "console_admin";
const STATS: &str = "console_stats";

/// A proxy with an admin and a stats user, `/metrics` on a free port and a 1s stats period.
async fn start(builder: ProxyBuilder) -> TestProxy {
    static N: AtomicUsize = AtomicUsize::new(0);
    let builder = builder
        .admin(ADMIN)
        .user_secret(ADMIN, PASSWORD)
        .user_secret(STATS, PASSWORD);
    let (main, users) = builder.toml();
    let main = main
        .replacen("[listen]\n", "[listen]\nhttp = \"127.0.0.1:0\"\n", 1)
        .replacen(
            "[auth]\n",
            &format!("[auth]\nstats_users = [\"{STATS}\"]\n"),
            1,
        )
        + "[log]\nstats_period = \"1s\"\n";
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-admin-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sluice.toml"), main).unwrap();
    std::fs::write(dir.join("users.toml"), users).unwrap();
    let config = Config::load(&dir.join("sluice.toml")).expect("test config is valid");
    let proxy = Proxy::start(config).await.expect("sluice starts");
    TestProxy {
        proxy: Some(proxy),
        dir,
    }
}

fn shared(p: &TestProxy) -> &std::sync::Arc<sluice::proxy::Shared> {
    p.proxy.as_ref().unwrap().shared()
}

async fn console(p: &TestProxy, user: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
    let mut c = p.config(user);
    c.dbname(db);
    connect_with(c).await
}

async fn admin(p: &TestProxy) -> Client {
    console(p, ADMIN, "pgbouncer").await.expect("admin logs in")
}

/// One result set, by column name.
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    fn col(&self, name: &str) -> usize {
        let found = self.columns.iter().position(|c| c == name);
        found.unwrap_or_else(|| panic!("column {name} in {:?}", self.columns))
    }

    fn get(&self, row: usize, name: &str) -> Option<&str> {
        self.rows[row][self.col(name)].as_deref()
    }

    /// The row whose `column` is `value`.
    fn find(&self, column: &str, value: &str) -> usize {
        let c = self.col(column);
        let found = self
            .rows
            .iter()
            .position(|r| r[c].as_deref() == Some(value));
        found.unwrap_or_else(|| panic!("{column} = {value} in {:?}", self.rows))
    }

    fn int(&self, row: usize, name: &str) -> i64 {
        let v = self.get(row, name).unwrap_or("NULL");
        v.parse().unwrap_or_else(|_| panic!("{name} = {v}"))
    }
}

async fn show(c: &Client, sql: &str) -> Rows {
    let mut out = Rows {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for m in c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                out.columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                out.rows
                    .push((0..r.len()).map(|i| r.get(i).map(String::from)).collect());
            }
            _ => {}
        }
    }
    out
}

/// The first value of a simple query.
async fn value(c: &Client, sql: &str) -> String {
    for m in c.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or_default().to_string();
        }
    }
    panic!("{sql}: no row")
}

const CONNECTION_COLUMNS: [&str; 18] = [
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
];

const POOLS_COLUMNS: [&str; 17] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "suggested_size",
];

const STATS_COLUMNS: [&str; 16] = [
    "database",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "total_requests",
];

const DATABASES_COLUMNS: [&str; 13] = [
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];

const LISTS: [&str; 12] = [
    "databases",
    "users",
    "pools",
    "free_clients",
    "used_clients",
    "login_clients",
    "free_servers",
    "used_servers",
    "dns_names",
    "dns_zones",
    "dns_queries",
    "dns_pending",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncer_columns_and_live_values() {
    let user = role("u_adm_show");
    let p = start(proxy().user_secret(&user, PASSWORD).pool("size = 2")).await;
    // One client inside a transaction, one idle; 4 transactions and 5 queries done.
    let busy = p.connect(&user).await.unwrap();
    for _ in 0..3 {
        busy.simple_query("select 1").await.unwrap();
    }
    let busy_pid = value(&busy, "begin; select pg_backend_pid()").await;
    let idle = p.connect(&user).await.unwrap();
    idle.simple_query("select 2").await.unwrap();
    let a = admin(&p).await;
    check_pools_and_stats(&a, &user).await;
    check_clients_and_servers(&a, &user, &busy_pid, p.port()).await;
    check_databases_users_and_config(&a, &user).await;
    check_lists_and_limits(&a, &user).await;
    // The `sluice` name reaches the console too, and statements may be chained.
    let b = console(&p, ADMIN, "sluice").await.unwrap();
    let version = show(&b, "show version;").await;
    assert_eq!(version.columns, ["version"]);
    let text = version.get(0, "version").unwrap();
    assert!(text.starts_with("PgBouncer 1.18.0 (sluice "), "{text}");
    let replies = b.simple_query("SHOW VERSION; SHOW LISTS").await.unwrap();
    assert_eq!(replies.len(), (1 + 1 + 1) + (1 + LISTS.len() + 1));
    busy.simple_query("commit").await.unwrap();
}

async fn check_pools_and_stats(a: &Client, user: &str) {
    let pools = show(a, "SHOW POOLS").await;
    assert_eq!(pools.columns, POOLS_COLUMNS);
    let r = pools.find("user", user);
    assert_eq!(pools.get(r, "database"), Some(DATABASE));
    let live = ["cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait"];
    assert_eq!(live.map(|c| pools.int(r, c)), [2, 0, 1, 1, 0], "{live:?}");
    assert_eq!(pools.get(r, "pool_mode"), Some("transaction"));

    let stats = show(a, "SHOW STATS").await;
    assert_eq!(stats.columns, STATS_COLUMNS);
    let r = stats.find("database", DATABASE);
    let counts = ["total_xact_count", "total_query_count", "total_requests"];
    assert_eq!(counts.map(|c| stats.int(r, c)), [4, 5, 5], "{counts:?}");
    for c in ["total_received", "total_sent", "total_xact_time"] {
        assert!(stats.int(r, c) > 0, "{c}");
    }
}

async fn check_clients_and_servers(a: &Client, user: &str, busy_pid: &str, proxy_port: u16) {
    let clients = show(a, "SHOW CLIENTS").await;
    assert_eq!(clients.columns[..18], CONNECTION_COLUMNS);
    assert_eq!(clients.columns[18..], ["id", "pinned"]);
    let mine = (0..clients.rows.len()).filter(|&i| clients.get(i, "user") == Some(user));
    let mut states: Vec<&str> = mine.map(|i| clients.get(i, "state").unwrap()).collect();
    states.sort();
    assert_eq!(states, ["active", "idle"]);
    let active = clients.find("state", "active");
    assert_eq!(clients.get(active, "ptr"), clients.get(active, "id"));
    assert_eq!(clients.get(active, "addr"), Some("127.0.0.1"));
    assert!(clients.int(active, "port") > 0);
    // Both ends as accept gave them: sluice's own end is the listener's address.
    assert_eq!(clients.get(active, "local_addr"), Some("127.0.0.1"));
    assert_eq!(clients.int(active, "local_port"), i64::from(proxy_port));
    assert!(clients
        .get(active, "connect_time")
        .unwrap()
        .ends_with(" UTC"));
    let console_row = clients.find("user", ADMIN);
    assert_eq!(clients.get(console_row, "database"), Some("pgbouncer"));

    let servers = show(a, "SHOW SERVERS").await;
    assert_eq!(servers.columns, CONNECTION_COLUMNS);
    let s = servers.find("state", "active");
    assert_eq!(servers.get(s, "remote_pid"), Some(busy_pid));
    assert_eq!(servers.get(s, "link"), clients.get(active, "id"));
    assert_eq!(servers.int(s, "port"), i64::from(cluster().port()));
    let s = servers.find("state", "idle");
    assert_eq!(servers.get(s, "link"), Some(""));
}

async fn check_databases_users_and_config(a: &Client, user: &str) {
    let dbs = show(a, "SHOW DATABASES").await;
    assert_eq!(dbs.columns, DATABASES_COLUMNS);
    let r = dbs.find("name", DATABASE);
    let names = ["host", "database", "force_user"].map(|c| dbs.get(r, c));
    assert_eq!(names, [Some("127.0.0.1"), Some(DATABASE), None]);
    let live = ["port", "pool_size", "current_connections", "paused"].map(|c| dbs.int(r, c));
    assert_eq!(live, [i64::from(cluster().port()), 2, 2, 0]);

    let users = show(a, "SHOW USERS").await;
    assert_eq!(users.columns, ["name", "pool_mode"]);
    let r = users.find("name", user);
    assert_eq!(users.get(r, "pool_mode"), None);

    let config = show(a, "SHOW CONFIG").await;
    assert_eq!(config.columns, ["key", "value", "default", "changeable"]);
    let r = config.find("key", "pool.size");
    let row = ["value", "default", "changeable"].map(|c| config.get(r, c));
    assert_eq!(row, [Some("2"), Some("20"), Some("yes")]);
    let r = config.find("key", "listen.addr");
    assert_eq!(config.get(r, "changeable"), Some("no"));
    assert!(
        !format!("{:?}", config.rows).contains(PASSWORD),
        "no secret in SHOW CONFIG"
    );
}

async fn check_lists_and_limits(a: &Client, user: &str) {
    let lists = show(a, "SHOW LISTS").await;
    assert_eq!(lists.columns, ["list", "items"]);
    let names: Vec<&str> = (0..lists.rows.len())
        .map(|i| lists.get(i, "list").unwrap())
        .collect();
    assert_eq!(names, LISTS);
    let items = ["pools", "used_servers", "used_clients"]
        .map(|l| lists.int(lists.find("list", l), "items"));
    assert_eq!(items, [1, 2, 3], "two clients and this console");

    let limits = show(a, "SHOW LIMITS").await;
    assert_eq!(
        limits.columns,
        ["scope", "limit", "setting", "in_use", "reason", "refused"]
    );
    let r = limits.find("reason", "queue_timeout");
    let scope = format!("pool {DATABASE}/{user}");
    let row = ["scope", "limit", "setting", "refused"].map(|c| limits.get(r, c));
    assert_eq!(
        row,
        [
            Some(scope.as_str()),
            Some("pool.queue_timeout"),
            Some("5s"),
            Some("0")
        ]
    );
    let r = limits.find("reason", "client_cap");
    assert_eq!(limits.int(r, "in_use"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let user = role("u_adm_pause");
    let p = start(
        proxy()
            .user_secret(&user, PASSWORD)
            .pool("size = 2")
            .pool("queue_timeout = \"10s\""),
    )
    .await;
    let running = p.connect(&user).await.unwrap();
    let later = p.connect(&user).await.unwrap();
    running.simple_query("begin; select 1").await.unwrap();
    let a = admin(&p).await;
    let pause = tokio::spawn(async move {
        a.simple_query("PAUSE sluice_test").await.unwrap();
        a
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE waits for the running transaction"
    );
    let held = tokio::spawn(async move {
        let started = Instant::now();
        later.simple_query("select 1").await.unwrap();
        started.elapsed()
    });
    running
        .simple_query("select 2; commit")
        .await
        .expect("the running transaction ends normally");
    let a = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns")
        .unwrap();
    let dbs = show(&a, "SHOW DATABASES").await;
    assert_eq!(dbs.get(dbs.find("name", DATABASE), "paused"), Some("1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a new transaction is held while paused"
    );
    let pools = show(&a, "SHOW POOLS").await;
    let r = pools.find("user", &user);
    assert_eq!(
        (
            pools.int(r, "cl_waiting"),
            pools.int(r, "sv_active") + pools.int(r, "sv_idle")
        ),
        (1, 0),
        "held, and no server connection left"
    );
    let resumed = Instant::now();
    a.simple_query("RESUME sluice_test").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released")
        .unwrap();
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(resumed.elapsed() < Duration::from_secs(3));
    let err = a.simple_query("RESUME sluice_test").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err}");
    let err = a.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42704"), "{err}");
}

/// The id SHOW CLIENTS gives the client with this application_name.
async fn client_id(a: &Client, app: &str) -> String {
    let clients = show(a, "SHOW CLIENTS").await;
    clients
        .get(clients.find("application_name", app), "id")
        .unwrap()
        .to_string()
}

async fn until_closed(c: &Client) -> bool {
    for _ in 0..100 {
        if c.is_closed() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_kill_client_and_kill_database() {
    let user = role("u_adm_kill");
    let p = start(proxy().user_secret(&user, PASSWORD).pool("size = 2")).await;
    let c = p.connect(&user).await.unwrap();
    let before = value(&c, "select pg_backend_pid()").await;
    let a = admin(&p).await;
    a.simple_query("RECONNECT sluice_test").await.unwrap();
    let after = value(&c, "select pg_backend_pid()").await;
    assert_ne!(
        before, after,
        "RECONNECT replaced the idle server connection"
    );

    let mut cfg = p.config(&user);
    cfg.application_name("victim");
    let victim = connect_with(cfg).await.unwrap();
    victim.simple_query("select 1").await.unwrap();
    let id = client_id(&a, "victim").await;
    a.simple_query(&format!("KILL_CLIENT {id}")).await.unwrap();
    assert!(
        until_closed(&victim).await,
        "the killed client is disconnected"
    );
    assert!(victim.simple_query("select 1").await.is_err());
    let err = a.simple_query("KILL_CLIENT 999999999").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42704"), "{err}");

    a.simple_query("KILL sluice_test").await.unwrap();
    assert!(until_closed(&c).await, "KILL drops the database's clients");
    let dbs = show(&a, "SHOW DATABASES").await;
    let r = dbs.find("name", DATABASE);
    assert_eq!(
        (dbs.int(r, "paused"), dbs.int(r, "current_connections")),
        (1, 0)
    );
    a.simple_query("RESUME sluice_test").await.unwrap();
    let d = p.connect(&user).await.unwrap();
    assert_eq!(value(&d, "select 7").await, "7");
    assert!(!a.is_closed(), "the console is not the database's client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_and_stats_users_get_in_and_stats_users_only_read() {
    let p = start(proxy()).await;
    let Err(err) = console(&p, U_SCRAM, "pgbouncer").await else {
        panic!("a user not listed is refused");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(message(&err).contains("not allowed to connect to the admin console"));
    let s = console(&p, STATS, "sluice").await.unwrap();
    assert!(!show(&s, "SHOW POOLS").await.columns.is_empty());
    let err = s.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    assert!(message(&err).contains("admin access needed"));
    for bad in ["SHOW FOO", "select 1"] {
        let err = s.simple_query(bad).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42601"), "{bad}: {err}");
    }
    // The extended protocol is refused, and the session goes on.
    let err = s.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    assert_eq!(show(&s, "SHOW VERSION").await.rows.len(), 1);
}

/// GET `path` from the HTTP listener: (status line, body).
async fn http(p: &TestProxy, method: &str, path: &str) -> (String, String) {
    let addr = shared(p).admin.http_addr().expect("listen.http is bound");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: sluice\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

type Labels = BTreeMap<String, String>;

/// Parse the Prometheus text format strictly enough to catch mistakes: every sample belongs
/// to a family declared with HELP and TYPE, names and labels are well formed, values parse.
fn parse_metrics(text: &str) -> Vec<(String, Labels, f64)> {
    let mut declared = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            declared.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Labels::new()),
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect(line))),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| declared.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(declared.contains_key(family), "no TYPE for {line}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn parse_labels(text: &str) -> Labels {
    let mut labels = Labels::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("key=\"value\"");
        let end = after.find('"').expect("closing quote");
        labels.insert(key.to_string(), after[..end].to_string());
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

fn metric(samples: &[(String, Labels, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples.iter().find(|(n, l, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    });
    found.unwrap_or_else(|| panic!("{name} {labels:?}")).2
}

/// Check the text with the Prometheus client library's own parser, when it is installed.
fn python_parses(text: &str) {
    let code = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))";
    let Ok(mut child) = std::process::Command::new("/usr/bin/python3")
        .args(["-c", code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("python3 not found: skipping the prometheus_client parse");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        eprintln!("prometheus_client not installed: skipping its parse");
        return;
    }
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_the_work_done() {
    let user = role("u_adm_metrics");
    let pool = proxy().user_secret(&user, PASSWORD).pool("size = 1");
    let p = start(pool.pool("queue_timeout = \"300ms\"")).await;
    // 7 one-statement transactions, one explicit transaction (2 queries), one shed.
    let c = p.connect(&user).await.unwrap();
    for _ in 0..7 {
        c.simple_query("select 1").await.unwrap();
    }
    let holder = p.connect(&user).await.unwrap();
    holder.simple_query("begin; select 1").await.unwrap();
    let waiter = p.connect(&user).await.unwrap();
    let err = waiter.simple_query("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    holder.simple_query("commit").await.unwrap();

    let (status, body) = http(&p, "GET", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    python_parses(&body);
    check_pool_metrics(&parse_metrics(&body), &user);

    let ok = ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string());
    assert_eq!(http(&p, "GET", "/healthz").await, ok);
    assert_eq!(http(&p, "GET", "/readyz").await.0, "HTTP/1.1 200 OK");
    assert_eq!(
        http(&p, "GET", "/nothing").await.0,
        "HTTP/1.1 404 Not Found"
    );
    let post = http(&p, "POST", "/metrics").await.0;
    assert_eq!(post, "HTTP/1.1 405 Method Not Allowed");
}

fn check_pool_metrics(m: &[(String, Labels, f64)], user: &str) {
    let pool = [("database", DATABASE), ("user", user)];
    let with = |k: &'static str, v: &'static str| {
        let mut l = pool.to_vec();
        l.push((k, v));
        l
    };
    let exact = [
        ("sluice_transactions_total", pool.to_vec(), 8.0),
        ("sluice_queries_total", pool.to_vec(), 9.0),
        ("sluice_queue_wait_seconds_count", pool.to_vec(), 8.0),
        ("sluice_transaction_seconds_count", pool.to_vec(), 8.0),
        ("sluice_transaction_seconds_bucket", with("le", "+Inf"), 8.0),
        ("sluice_shed_total", with("reason", "queue_timeout"), 1.0),
        ("sluice_shed_total", with("reason", "queue_full"), 0.0),
        ("sluice_errors_total", vec![("class", "53")], 1.0),
        ("sluice_clients", with("state", "idle"), 3.0),
        ("sluice_clients", with("state", "waiting"), 0.0),
        ("sluice_servers", with("state", "idle"), 1.0),
        ("sluice_servers", with("state", "active"), 0.0),
        ("sluice_config_version", vec![], 1.0),
        ("sluice_config_rollbacks_total", vec![], 0.0),
        (
            "sluice_config_reloads_total",
            vec![("outcome", "applied")],
            0.0,
        ),
    ];
    for (name, labels, want) in exact {
        assert_eq!(metric(m, name, &labels), want, "{name} {labels:?}");
    }
    for (name, labels) in [
        ("sluice_bytes_total", with("direction", "received")),
        ("sluice_bytes_total", with("direction", "sent")),
        ("sluice_server_connects_total", vec![("outcome", "ok")]),
    ] {
        assert!(metric(m, name, &labels) > 0.0, "{name} {labels:?}");
    }
    let buckets = m.iter().filter(|(n, l, _)| {
        n == "sluice_queue_wait_seconds_bucket" && l.get("user").map(String::as_str) == Some(user)
    });
    let mut last = 0.0;
    for (_, l, v) in buckets {
        assert!(*v >= last, "buckets are cumulative at le={}", l["le"]);
        last = *v;
    }
    assert_eq!(last, 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggested_size_follows_littles_law_under_a_closed_loop() {
    let user = role("u_adm_little");
    let p = start(
        proxy()
            .user_secret(&user, PASSWORD)
            .pool("size = 2")
            .pool("queue_timeout = \"10s\""),
    )
    .await;
    let a = admin(&p).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(p.connect(&user).await.unwrap());
    }
    let until = Instant::now() + Duration::from_millis(4500);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                while Instant::now() < until {
                    c.simple_query("select pg_sleep(0.05)").await.unwrap();
                }
            })
        })
        .collect();
    // Look while the load runs: the sampler has a few seconds of it by then.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let pools = show(&a, "SHOW POOLS").await;
    let suggested = pools.int(pools.find("user", &user), "suggested_size");
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        (3..=6).contains(&suggested),
        "4 clients in a closed loop on a pool of 2: suggested {suggested}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_then_shutdown_drains_and_readyz_says_so() {
    let p = start(proxy()).await;
    let a = admin(&p).await;
    a.simple_query("RELOAD")
        .await
        .expect("reloading unchanged files is fine");
    let reloads = show(&a, "SHOW RELOADS").await;
    assert_eq!(
        reloads.columns,
        ["at", "trigger", "version", "hash", "summary", "outcome"]
    );
    assert_eq!(http(&p, "GET", "/readyz").await.0, "HTTP/1.1 200 OK");
    a.simple_query("SHUTDOWN").await.unwrap();
    assert!(
        shared(&p).admin.stop.is_cancelled(),
        "main is asked to drain and exit"
    );
    let err = p.connect(U_SCRAM).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
    let (status, body) = http(&p, "GET", "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("draining"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_pgbouncer_exporter_scrapes_the_console() {
    let exporter = "/usr/bin/prometheus-pgbouncer-exporter";
    if !std::path::Path::new(exporter).exists() {
        eprintln!(
            "{exporter} not installed (apt-get install prometheus-pgbouncer-exporter): skipped"
        );
        return;
    }
    let user = role("u_adm_export");
    let p = start(proxy().user_secret(&user, PASSWORD)).await;
    let c = p.connect(&user).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(exporter)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--pgbouncer-host",
            "127.0.0.1",
            "--pgbouncer-port",
            &p.port().to_string(),
        ])
        .args(["--pgbouncer-user", ADMIN])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut body = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            panic!("the exporter exited ({status}): {err}");
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).await.unwrap();
            body = Some(raw);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
    let body = body.expect("the exporter served /metrics");
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(
        body.contains(&format!(
            "pgbouncer_active_clients{{database=\"{DATABASE}\",user=\"{user}\"}} 1.0"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "pgbouncer_requests_total{{database=\"{DATABASE}\"}} 1.0"
        )),
        "{body}"
    );
    assert!(body.contains("pgbouncer_pools 1.0"), "{body}");
}
