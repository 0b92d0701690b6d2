//! surge-loadgen: an open-loop load generator for PostgreSQL proxies.
//!
//! Arrivals come from a clock (Poisson or fixed interval) at `--rate` per second, whatever
//! the proxy does with them. Each arrival takes an idle connection from a set opened before
//! the clock starts and runs one statement (`--sql`, simple query protocol) on it; when no
//! connection is idle, the arrival is counted as a client-side drop. Latency is measured from
//! the arrival's *scheduled* time (so a late clock cannot hide queueing) to the end of the
//! statement (ReadyForQuery). A client-side timeout (`--client-timeout-ms`) ends the wait;
//! the connection is then closed and replaced in the background, as is any connection the
//! proxy closes. A side connection straight to PostgreSQL samples `pg_stat_activity` to find
//! the most backends the proxy held at once.
//!
//! Arrivals in the first `--warmup` seconds are run but not counted; the next `--duration`
//! seconds are the measured window. The result is one JSON object on stdout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, NoTls};

#[derive(Clone, Copy, PartialEq)]
enum Arrivals {
    Poisson,
    Fixed,
}

#[derive(Clone)]
struct Args {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    db: String,
    conns: usize,
    rate: f64,
    warmup: f64,
    duration: f64,
    client_timeout: Duration,
    sql: String,
    arrivals: Arrivals,
    seed: u64,
    pg_port: Option<u16>,
    pg_user: String,
    watch_user: String,
    connect_concurrency: usize,
    threads: usize,
    sample_ms: u64,
}

const USAGE: &str = "usage: surge-loadgen --port PORT --rate R [--host 127.0.0.1] [--user bench] \
[--password PW] [--db bench] [--conns 2000] [--warmup 2] [--duration 10] \
[--client-timeout-ms 2000] [--sql 'select pg_sleep(0.02)'] [--arrivals poisson|fixed] [--seed 1] \
[--pg-port PORT --pg-user postgres --watch-user bench] [--connect-concurrency 32] [--threads 2] \
[--sample-ms 20]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 0,
        user: "bench".into(),
        password: None,
        db: "bench".into(),
        conns: 2000,
        rate: 0.0,
        warmup: 2.0,
        duration: 10.0,
        client_timeout: Duration::from_millis(2000),
        sql: "select pg_sleep(0.02)".into(),
        arrivals: Arrivals::Poisson,
        seed: 1,
        pg_port: None,
        pg_user: "postgres".into(),
        watch_user: "bench".into(),
        connect_concurrency: 32,
        threads: 2,
        sample_ms: 20,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let key = argv[i].as_str();
        if key == "-h" || key == "--help" {
            return Err(USAGE.into());
        }
        let val = argv
            .get(i + 1)
            .ok_or_else(|| format!("{key} needs a value\n{USAGE}"))?
            .clone();
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{key}: not a number: {v}"))
        };
        match key {
            "--host" => a.host = val,
            "--port" => a.port = num(&val)? as u16,
            "--user" => a.user = val,
            "--password" => a.password = Some(val),
            "--db" => a.db = val,
            "--conns" => a.conns = num(&val)? as usize,
            "--rate" => a.rate = num(&val)?,
            "--warmup" => a.warmup = num(&val)?,
            "--duration" => a.duration = num(&val)?,
            "--client-timeout-ms" => a.client_timeout = Duration::from_millis(num(&val)? as u64),
            "--sql" => a.sql = val,
            "--arrivals" => {
                a.arrivals = match val.as_str() {
                    "poisson" => Arrivals::Poisson,
                    "fixed" => Arrivals::Fixed,
                    other => return Err(format!("--arrivals: poisson or fixed, not {other}")),
                }
            }
            "--seed" => a.seed = num(&val)? as u64,
            "--pg-port" => a.pg_port = Some(num(&val)? as u16),
            "--pg-user" => a.pg_user = val,
            "--watch-user" => a.watch_user = val,
            "--connect-concurrency" => a.connect_concurrency = (num(&val)? as usize).max(1),
            "--threads" => a.threads = (num(&val)? as usize).max(1),
            "--sample-ms" => a.sample_ms = (num(&val)? as u64).max(1),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
        i += 2;
    }
    if a.port == 0 || a.rate <= 0.0 || a.duration <= 0.0 || a.conns == 0 {
        return Err(format!(
            "--port, --rate > 0, --duration > 0 and --conns > 0 are needed\n{USAGE}"
        ));
    }
    Ok(a)
}

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    /// An ErrorResponse from the proxy (or the server): its SQLSTATE and its message with
    /// every run of digits replaced by `N` (so messages of one kind count together).
    Db(String, String),
    /// The connection ended without an ErrorResponse for this statement.
    Closed,
    /// Other client-side error (I/O, protocol).
    Other,
    /// The client-side timeout fired first.
    Timeout,
    /// No idle connection at arrival.
    Drop,
}

struct Record {
    /// Scheduled arrival, µs after t0.
    at_us: u64,
    /// Dispatch time minus scheduled time, µs (how late the clock ran).
    lag_us: u64,
    /// Scheduled arrival to completion, µs.
    lat_us: u64,
    outcome: Outcome,
}

struct Shared {
    args: Args,
    cfg: Config,
    idle: Mutex<Vec<Client>>,
    records: Mutex<Vec<Record>>,
    messages: Mutex<BTreeMap<String, String>>,
    t0: Instant,
    stopping: AtomicBool,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    lost: AtomicU64,
}

async fn connect(cfg: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Replace a connection that was closed (by the proxy, or by us after a client timeout).
fn replenish(shared: Arc<Shared>) {
    shared.lost.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        for attempt in 0..100u64 {
            if shared.stopping.load(Ordering::Relaxed) {
                return;
            }
            match connect(&shared.cfg).await {
                Ok(c) => {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    shared.idle.lock().unwrap().push(c);
                    return;
                }
                Err(_) => {
                    shared.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10 * attempt.min(20) + 5)).await;
                }
            }
        }
    });
}

/// A message with its numbers blanked out, cut to 120 characters.
fn kind_of(message: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
        if out.len() >= 120 {
            break;
        }
    }
    out
}

/// This process's user + system CPU time, from /proc/self/stat (Linux).
fn self_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn dispatch(shared: &Arc<Shared>, scheduled: Instant) {
    let now = Instant::now();
    let at_us = micros(scheduled - shared.t0);
    let lag_us = micros(now.saturating_duration_since(scheduled));
    let client = shared.idle.lock().unwrap().pop();
    let Some(client) = client else {
        shared.records.lock().unwrap().push(Record {
            at_us,
            lag_us,
            lat_us: 0,
            outcome: Outcome::Drop,
        });
        return;
    };
    let n = shared.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_inflight.fetch_max(n, Ordering::Relaxed);
    let shared = shared.clone();
    tokio::spawn(async move {
        let deadline = scheduled + shared.args.client_timeout;
        let res =
            tokio::time::timeout_at(deadline.into(), client.batch_execute(&shared.args.sql)).await;
        let done = Instant::now();
        let lat_us = micros(done.saturating_duration_since(scheduled));
        let (outcome, keep) = match res {
            Ok(Ok(())) => (Outcome::Ok, true),
            Ok(Err(e)) => {
                let outcome = if let Some(db) = e.as_db_error() {
                    let code = db.code().code().to_string();
                    let mut m = shared.messages.lock().unwrap();
                    if !m.contains_key(&code) {
                        m.insert(code.clone(), format!("{}: {}", db.severity(), db.message()));
                    }
                    Outcome::Db(code, kind_of(db.message()))
                } else if e.is_closed() {
                    Outcome::Closed
                } else {
                    let mut m = shared.messages.lock().unwrap();
                    m.entry("other".into()).or_insert_with(|| e.to_string());
                    Outcome::Other
                };
                (outcome, !client.is_closed())
            }
            Err(_) => (Outcome::Timeout, false),
        };
        shared.records.lock().unwrap().push(Record {
            at_us,
            lag_us,
            lat_us,
            outcome,
        });
        if keep {
            shared.idle.lock().unwrap().push(client);
        } else {
            drop(client);
            replenish(shared.clone());
        }
        shared.inflight.fetch_sub(1, Ordering::Relaxed);
    });
}

/// splitmix64: a small seeded generator for the arrival gaps.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn pct(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1000.0)
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn sampler(
    args: Args,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(u64, i64, i64)>, String> {
    let Some(port) = args.pg_port else {
        return Ok(Vec::new());
    };
    let mut cfg = Config::new();
    cfg.host(&args.host)
        .port(port)
        .user(&args.pg_user)
        .dbname("postgres");
    let client = connect(&cfg)
        .await
        .map_err(|e| format!("sampler: connect to PostgreSQL: {e}"))?;
    let stmt = client
        .prepare(
            "select count(*)::int8, (count(*) filter (where state <> 'idle'))::int8 \
             from pg_stat_activity where usename = $1 and backend_type = 'client backend'",
        )
        .await
        .map_err(|e| format!("sampler: {e}"))?;
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(args.sample_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let row = client
            .query_one(&stmt, &[&args.watch_user])
            .await
            .map_err(|e| format!("sampler: {e}"))?;
        let at = micros(Instant::now().saturating_duration_since(t0));
        out.push((at, row.get(0), row.get(1)));
    }
    Ok(out)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("surge-loadgen: {e}");
            std::process::exit(1);
        }
    }
    // Connections and tasks still open are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(500));
}

async fn run(args: Args) -> Result<String, String> {
    let mut cfg = Config::new();
    cfg.host(&args.host)
        .port(args.port)
        .user(&args.user)
        .dbname(&args.db)
        .application_name("surge-loadgen")
        .connect_timeout(Duration::from_secs(10));
    if let Some(pw) = &args.password {
        cfg.password(pw);
    }

    // Open every connection before the clock starts.
    let connect_start = Instant::now();
    let opened: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::with_capacity(args.conns)));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.connect_concurrency.min(args.conns) {
        let (cfg, opened, first_error, next, n) = (
            cfg.clone(),
            opened.clone(),
            first_error.clone(),
            next.clone(),
            args.conns,
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match connect(&cfg).await {
                    Ok(c) => opened.lock().unwrap().push(c),
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let clients = std::mem::take(&mut *opened.lock().unwrap());
    let connect_s = connect_start.elapsed().as_secs_f64();
    if clients.len() < args.conns {
        return Err(format!(
            "opened only {} of {} connections; first error: {}",
            clients.len(),
            args.conns,
            first_error.lock().unwrap().clone().unwrap_or_default()
        ));
    }
    eprintln!(
        "surge-loadgen: {} connections open in {:.1}s; {:.0} arrivals/s for {}s + {}s warm-up",
        clients.len(),
        connect_s,
        args.rate,
        args.duration,
        args.warmup
    );

    let t0 = Instant::now() + Duration::from_millis(100);
    let shared = Arc::new(Shared {
        args: args.clone(),
        cfg,
        idle: Mutex::new(clients),
        records: Mutex::new(Vec::with_capacity(
            ((args.warmup + args.duration) * args.rate * 1.2) as usize + 16,
        )),
        messages: Mutex::new(BTreeMap::new()),
        t0,
        stopping: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        max_inflight: AtomicUsize::new(0),
        reconnects: AtomicU64::new(0),
        reconnect_failures: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });

    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler_task = tokio::spawn(sampler(args.clone(), t0, stop_sampler.clone()));

    // The clock: every arrival due by now is dispatched with its scheduled time.
    let warm_end = t0 + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let mut rng = Rng(args.seed.wrapping_mul(0x2545F4914F6CDD1D) ^ 0x5DEECE66D);
    let mut gap = || -> Duration {
        let secs = match args.arrivals {
            Arrivals::Fixed => 1.0 / args.rate,
            Arrivals::Poisson => -(1.0 - rng.next_f64()).ln() / args.rate,
        };
        Duration::from_secs_f64(secs)
    };
    let mut next_at = t0 + gap();
    while next_at < end {
        tokio::time::sleep_until(next_at.into()).await;
        let now = Instant::now();
        while next_at <= now && next_at < end {
            dispatch(&shared, next_at);
            next_at += gap();
        }
    }

    // Let what is in flight finish (each has its client timeout).
    let drain_deadline = Instant::now() + args.client_timeout + Duration::from_secs(2);
    while shared.inflight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unfinished = shared.inflight.load(Ordering::Relaxed);
    shared.stopping.store(true, Ordering::Relaxed);
    stop_sampler.store(true, Ordering::Relaxed);
    let samples = match sampler_task.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(e.to_string()),
    };

    // Statistics over the measured window.
    let warm_us = micros(warm_end - t0);
    let end_us = micros(end - t0);
    let records = std::mem::take(&mut *shared.records.lock().unwrap());
    let mut ok_lat = Vec::new();
    let mut refusal_lat = Vec::new();
    let mut lags = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let (mut arrivals, mut timeouts, mut drops, mut closed, mut other) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut warm_arrivals = 0u64;
    for r in &records {
        if r.at_us < warm_us {
            warm_arrivals += 1;
            continue;
        }
        arrivals += 1;
        lags.push(r.lag_us);
        match &r.outcome {
            Outcome::Ok => ok_lat.push(r.lat_us),
            Outcome::Db(code, kind) => {
                *errors.entry(code.clone()).or_default() += 1;
                *kinds.entry(format!("{code} {kind}")).or_default() += 1;
                refusal_lat.push(r.lat_us);
            }
            Outcome::Closed => {
                closed += 1;
                refusal_lat.push(r.lat_us);
            }
            Outcome::Other => {
                other += 1;
                refusal_lat.push(r.lat_us);
            }
            Outcome::Timeout => timeouts += 1,
            Outcome::Drop => drops += 1,
        }
    }
    ok_lat.sort_unstable();
    refusal_lat.sort_unstable();
    lags.sort_unstable();
    let window_s = args.duration;
    let max_backends = samples.iter().map(|s| s.1).max();
    let max_active = samples.iter().map(|s| s.2).max();
    let window_samples: Vec<_> = samples
        .iter()
        .filter(|s| s.0 >= warm_us && s.0 <= end_us)
        .collect();
    let max_backends_window = window_samples.iter().map(|s| s.1).max();
    let mean_active_window = if window_samples.is_empty() {
        None
    } else {
        Some(window_samples.iter().map(|s| s.2 as f64).sum::<f64>() / window_samples.len() as f64)
    };

    let messages = shared.messages.lock().unwrap().clone();
    let mut j = String::from("{");
    let mut field = |k: &str, v: String| {
        if j.len() > 1 {
            j.push(',');
        }
        j.push_str(&json_str(k));
        j.push(':');
        j.push_str(&v);
    };
    field("rate", format!("{}", args.rate));
    field(
        "arrivals_mode",
        json_str(if args.arrivals == Arrivals::Poisson {
            "poisson"
        } else {
            "fixed"
        }),
    );
    field("conns", format!("{}", args.conns));
    field("connect_s", json_num(Some(connect_s)));
    field("warmup_s", format!("{}", args.warmup));
    field("window_s", format!("{}", window_s));
    field("warmup_arrivals", format!("{warm_arrivals}"));
    field("arrivals", format!("{arrivals}"));
    field("offered_per_s", json_num(Some(arrivals as f64 / window_s)));
    field("ok", format!("{}", ok_lat.len()));
    field("goodput", json_num(Some(ok_lat.len() as f64 / window_s)));
    field("p50_ms", json_num(pct(&ok_lat, 0.50)));
    field("p90_ms", json_num(pct(&ok_lat, 0.90)));
    field("p99_ms", json_num(pct(&ok_lat, 0.99)));
    field(
        "max_ms",
        json_num(ok_lat.last().map(|&v| v as f64 / 1000.0)),
    );
    field("refusals", format!("{}", refusal_lat.len()));
    field("refusal_p50_ms", json_num(pct(&refusal_lat, 0.50)));
    field("refusal_p99_ms", json_num(pct(&refusal_lat, 0.99)));
    let errs: Vec<String> = errors
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    field("errors", format!("{{{}}}", errs.join(",")));
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    field("error_kinds", format!("{{{}}}", kinds.join(",")));
    let msgs: Vec<String> = messages
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
        .collect();
    field("messages", format!("{{{}}}", msgs.join(",")));
    field("closed", format!("{closed}"));
    field("other_errors", format!("{other}"));
    field("client_timeouts", format!("{timeouts}"));
    field("client_drops", format!("{drops}"));
    field("unfinished", format!("{unfinished}"));
    field(
        "max_inflight",
        format!("{}", shared.max_inflight.load(Ordering::Relaxed)),
    );
    field(
        "connections_lost",
        format!("{}", shared.lost.load(Ordering::Relaxed)),
    );
    field(
        "reconnects",
        format!("{}", shared.reconnects.load(Ordering::Relaxed)),
    );
    field(
        "reconnect_failures",
        format!("{}", shared.reconnect_failures.load(Ordering::Relaxed)),
    );
    field("clock_lag_p99_ms", json_num(pct(&lags, 0.99)));
    field(
        "clock_lag_max_ms",
        json_num(lags.last().map(|&v| v as f64 / 1000.0)),
    );
    field(
        "max_backends",
        max_backends.map_or("null".into(), |v| v.to_string()),
    );
    field(
        "max_backends_window",
        max_backends_window.map_or("null".into(), |v| v.to_string()),
    );
    field(
        "max_active_backends",
        max_active.map_or("null".into(), |v| v.to_string()),
    );
    field("mean_active_backends_window", json_num(mean_active_window));
    field("backend_samples", format!("{}", samples.len()));
    field("loadgen_cpu_s", json_num(self_cpu_s()));
    // Per 100 ms of scheduled arrival time over the whole run (warm-up included):
    // [start s, arrivals, ok, refused, client timeouts + drops, max admitted ms, max refusal ms].
    let buckets = end_us.div_ceil(100_000) as usize;
    let mut tl = vec![[0f64; 6]; buckets.max(1)];
    for r in &records {
        let b = ((r.at_us / 100_000) as usize).min(tl.len() - 1);
        let ms = r.lat_us as f64 / 1000.0;
        tl[b][0] += 1.0;
        match r.outcome {
            Outcome::Ok => {
                tl[b][1] += 1.0;
                tl[b][4] = tl[b][4].max(ms);
            }
            Outcome::Db(..) | Outcome::Closed | Outcome::Other => {
                tl[b][2] += 1.0;
                tl[b][5] = tl[b][5].max(ms);
            }
            Outcome::Timeout | Outcome::Drop => tl[b][3] += 1.0,
        }
    }
    let rows: Vec<String> = tl
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "[{:.1},{},{},{},{},{:.1},{:.1}]",
                i as f64 / 10.0,
                b[0],
                b[1],
                b[2],
                b[3],
                b[4],
                b[5]
            )
        })
        .collect();
    field("timeline", format!("[{}]", rows.join(",")));
    j.push('}');
    Ok(j)
}
