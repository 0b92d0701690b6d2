//! Admission control and load shedding against real PostgreSQL: the door's caps, rates and
//! failed-login limit; the queue's bound, CoDel, fair shares, reserves and adaptive limit; the
//! leak and runaway-work timeouts; and a surge of 300 clients on a pool of 5.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::cluster::{psql_super, PASSWORD, U_SCRAM};
use crate::harness::{connect_with, message, proxy, sqlstate, TestProxy};
use crate::pools::{role, Sampler};

fn sleep_query(
    c: &tokio_postgres::Client,
    secs: f64,
) -> impl std::future::Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> + '_
{
    let sql = format!("select pg_sleep({secs})");
    async move { c.query_typed(&sql, &[]).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caps_per_database_and_user_but_admins_always_get_in() {
    let admin = role("u_door_admin");
    let capped = role("u_door_capped");
    let p = proxy()
        .user_secret(&admin, PASSWORD)
        .user_secret(&capped, PASSWORD)
        .user_option(&capped, "max_client_connections = 1")
        .admin(&admin)
        .database("max_client_connections = 3")
        .start()
        .await;
    // The user cap: one for `capped`, others unaffected.
    let _one = p.connect(&capped).await.unwrap();
    let Err(err) = p.connect(&capped).await else {
        panic!("user cap refuses the second");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(
        message(&err).contains(&format!("users.{capped}.max_client_connections (1)")),
        "{}",
        message(&err)
    );
    // The database cap: three in all.
    let _two = p.connect(U_SCRAM).await.unwrap();
    let _three = p.connect(U_SCRAM).await.unwrap();
    let Err(err) = p.connect(U_SCRAM).await else {
        panic!("database cap refuses the fourth");
    };
    assert!(
        message(&err).contains("databases.sluice_test.max_client_connections (3)"),
        "{}",
        message(&err)
    );
    // Admins pass every cap.
    let a = p.connect(&admin).await.expect("admin gets in past the cap");
    assert_eq!(
        a.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    let refusals = p.proxy.as_ref().unwrap().shared().door.refusals();
    let count = |label: &str| refusals.iter().find(|(r, _)| r.label() == label).unwrap().1;
    assert_eq!(
        (count("user_client_cap"), count("database_client_cap")),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_and_failed_logins_are_limited_with_a_retry_hint() {
    // Trust: no password work, so three logins fit well inside one second.
    let p = proxy()
        .auth("trust")
        .limits("connection_rate = 1")
        .limits("connection_burst = 2")
        .start()
        .await;
    let _a = p.connect(U_SCRAM).await.unwrap();
    let _b = p.connect(U_SCRAM).await.unwrap();
    let started = Instant::now();
    let Err(err) = p.connect(U_SCRAM).await else {
        panic!("third connection within the second refused");
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(message(&err).contains("limits.connection_rate"));
    let hint = err.as_db_error().unwrap().hint().unwrap().to_string();
    assert!(hint.starts_with("Retry after"), "{hint}");

    let p = proxy().limits("auth_failures_per_minute = 2").start().await;
    for _ in 0..3 {
        let mut bad = p.config(U_SCRAM);
        bad.password("wrong");
        assert!(connect_with(bad).await.is_err());
    }
    // Even the right password is refused now, before any password work.
    let Err(err) = p.connect(U_SCRAM).await else {
        panic!("address refused after repeated failures");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(
        message(&err).contains("too many failed logins"),
        "{}",
        message(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_says_nothing_is_closed_at_the_login_timeout() {
    let p = proxy().limits("login_timeout = \"300ms\"").start().await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", p.port()))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(buf.first(), Some(&b'E'), "an error, then the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_clients_with_57p03_while_sessions_finish() {
    let mut p = proxy().start().await;
    let c = p.connect(U_SCRAM).await.unwrap();
    let proxy = p.proxy.take().unwrap();
    let port = proxy.addr().port();
    let shared = proxy.shared().clone();
    let drain = tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(U_SCRAM)
        .password(PASSWORD)
        .dbname(crate::cluster::DATABASE);
    let Err(err) = connect_with(cfg).await else {
        panic!("new clients refused while draining");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"));
    // The session already in goes on.
    assert_eq!(
        c.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain ends once the session leaves")
        .unwrap();
    assert!(shared
        .door
        .refusals()
        .iter()
        .any(|(r, n)| r.label() == "draining" && *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_waiting_refuses_at_once() {
    let u = role("u_maxwait");
    let p = proxy()
        .user_secret(&u, PASSWORD)
        .pool("size = 1")
        .pool("max_waiting = 1")
        .pool("queue_timeout = \"3s\"")
        .start()
        .await;
    let holder = p.connect(&u).await.unwrap();
    holder.batch_execute("begin").await.unwrap();
    let w1 = p.connect(&u).await.unwrap();
    let w2 = p.connect(&u).await.unwrap();
    let first = tokio::spawn(async move { w1.query_typed("select 1", &[]).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let err = w2.query_typed("select 1", &[]).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not after the queue timeout"
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(
        message(&err).contains("pool.max_waiting"),
        "{}",
        message(&err)
    );
    holder.batch_execute("commit").await.unwrap();
    first.await.unwrap().expect("the one waiter is served");
    let stats = &p.stats()[0];
    assert_eq!(stats.shed[0], 1, "one queue_full shed counted: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_past_the_timeout_is_fatal_25p03_and_rolled_back() {
    let u = role("u_idle_tx");
    psql_super(&format!("DROP TABLE IF EXISTS idle_tx_t; CREATE TABLE idle_tx_t (a int); GRANT ALL ON idle_tx_t TO {u};"));
    let p = proxy()
        .user_secret(&u, PASSWORD)
        .pool("size = 1")
        .pool("idle_transaction_timeout = \"300ms\"")
        .start()
        .await;
    let c = p.connect(&u).await.unwrap();
    c.batch_execute("begin; insert into idle_tx_t values (1); lock table idle_tx_t")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let err = c.query_typed("select 1", &[]).await.unwrap_err();
    assert!(
        sqlstate(&err).as_deref() == Some("25P03") || c.is_closed(),
        "the client was told and disconnected: {err}"
    );
    // The backend went back to the pool rolled back: the next client gets it, no lock, no row.
    let other = p.connect(&u).await.unwrap();
    let row = other
        .query_one("select count(*) from idle_tx_t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    let stats = &p.stats()[0];
    assert_eq!(stats.idle_transaction_timeouts, 1);
    assert_eq!(stats.open, 1, "the same backend, reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_on_the_backend_with_57014() {
    let u = role("u_query_timeout");
    let p = proxy()
        .user_secret(&u, PASSWORD)
        .pool("query_timeout = \"300ms\"")
        .start()
        .await;
    let c = p.connect(&u).await.unwrap();
    let started = Instant::now();
    let err = sleep_query(&c, 10.0).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    // The session lives on.
    assert_eq!(
        c.query_typed("select 3", &[]).await.unwrap()[0].get::<_, i32>(0),
        3
    );
    assert_eq!(p.stats()[0].query_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_idle_clients_in_both_modes() {
    for mode in ["transaction", "session"] {
        let p = proxy()
            .pool(&format!("mode = \"{mode}\""))
            .pool("client_idle_timeout = \"300ms\"")
            .start()
            .await;
        let c = p.connect(U_SCRAM).await.unwrap();
        c.query_typed("select 1", &[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            c.query_typed("select 1", &[]).await.is_err(),
            "{mode}: closed"
        );
        assert_eq!(p.stats()[0].client_idle_timeouts, 1, "{mode}");
    }
}

/// Outcomes of a closed-loop load: per transaction, (admitted, latency).
type Outcomes = Arc<Mutex<Vec<(bool, Duration, Option<String>)>>>;

/// Run a closed-loop load against the proxy from a runtime of its own, so the load
/// generator's tasks do not queue in front of sluice's on the test's runtime.
async fn closed_loop(
    p: &TestProxy,
    user: &str,
    clients: usize,
    run_for: Duration,
    query_secs: f64,
) -> Vec<(bool, Duration, Option<String>)> {
    let cfg = p.config(user);
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(load(cfg, clients, run_for, query_secs))
    })
    .await
    .unwrap()
}

async fn load(
    cfg: tokio_postgres::Config,
    clients: usize,
    run_for: Duration,
    query_secs: f64,
) -> Vec<(bool, Duration, Option<String>)> {
    let outcomes: Outcomes = Arc::default();
    // Everyone connects first; the clock starts when all are in.
    let start = Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let cfg = cfg.clone();
        let outcomes = outcomes.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect_with(cfg).await.expect("connect");
            start.wait().await;
            let until = Instant::now() + run_for;
            while Instant::now() < until {
                let started = Instant::now();
                let r = sleep_query(&c, query_secs).await;
                let took = started.elapsed();
                let code = r.as_ref().err().and_then(sqlstate);
                let admitted = r.is_ok();
                outcomes.lock().unwrap().push((admitted, took, code));
                if !admitted {
                    // As the HINT asks: back off before retrying.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = outcomes.lock().unwrap().clone();
    v
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_of_300_clients_on_a_pool_of_5_keeps_goodput_and_refuses_fast() {
    let u = role("u_surge");
    let p = proxy()
        .user_secret(&u, PASSWORD)
        .pool("size = 5")
        .pool("queue_timeout = \"200ms\"")
        .pool("queue = \"codel\"")
        .pool("connect_timeout = \"30s\"")
        .limits("login_timeout = \"60s\"")
        .start()
        .await;
    let sampler = Sampler::start(&[&u]).await;
    let run_for = Duration::from_secs(4);
    let outcomes = closed_loop(&p, &u, 300, run_for, 0.02).await;
    let max_backends = sampler.stop();
    let admitted: Vec<Duration> = outcomes.iter().filter(|o| o.0).map(|o| o.1).collect();
    let refused: Vec<&(bool, Duration, Option<String>)> =
        outcomes.iter().filter(|o| !o.0).collect();
    let goodput = admitted.len() as f64 / run_for.as_secs_f64();
    let capacity = 5.0 / 0.02;
    eprintln!(
        "surge: {} admitted ({goodput:.0}/s of {capacity:.0}/s), {} refused, admitted p99 {:?}, refusal p99 {:?}, max backends {max_backends}",
        admitted.len(),
        refused.len(),
        p99(admitted.clone()),
        p99(refused.iter().map(|o| o.1).collect())
    );
    eprintln!("surge stats: {:?}", p.stats());
    assert!(
        (1..=5).contains(&max_backends),
        "PostgreSQL saw {max_backends}"
    );
    assert!(goodput >= 0.6 * capacity, "goodput {goodput:.0}/s");
    assert!(
        refused.iter().all(|o| o.2.as_deref() == Some("53300")),
        "every refusal is 53300"
    );
    let refusal_p100 = refused.iter().map(|o| o.1).max().unwrap_or_default();
    assert!(
        refusal_p100 < Duration::from_millis(200 + 300),
        "refused within the deadline plus a margin: {refusal_p100:?}"
    );
    assert!(
        p99(admitted) < Duration::from_millis(200),
        "admitted p99 under the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codel_sheds_a_standing_queue_early_instead_of_at_the_timeout() {
    let u = role("u_codel");
    let p = proxy()
        .user_secret(&u, PASSWORD)
        .pool("size = 1")
        .pool("queue = \"codel\"")
        .pool("codel_interval = \"50ms\"")
        .pool("codel_target = \"5ms\"")
        .pool("queue_timeout = \"5s\"")
        .start()
        .await;
    let outcomes = closed_loop(&p, &u, 20, Duration::from_secs(2), 0.02).await;
    let refused: Vec<_> = outcomes.iter().filter(|o| !o.0).collect();
    eprintln!(
        "codel: {} outcomes, {} refused, stats {:?}",
        outcomes.len(),
        refused.len(),
        p.stats()
    );
    assert!(!refused.is_empty(), "a standing queue sheds");
    let slowest = refused.iter().map(|o| o.1).max().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "shed long before the 5s queue timeout: {slowest:?}"
    );
    assert!(p.stats()[0].shed[2] > 0, "counted as codel sheds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_from_one_user_cannot_starve_another_and_reserves_hold() {
    let a = role("u_fair_dashboard");
    let b = role("u_fair_chat");
    let c = role("u_fair_reserved");
    let p = proxy()
        .user_secret(&a, PASSWORD)
        .user_secret(&b, PASSWORD)
        .user_secret(&c, PASSWORD)
        .user_option(&c, "reserve = 1")
        .database("max_connections = 4")
        .pool("size = 4")
        .pool("queue_timeout = \"3s\"")
        .start()
        .await;
    let sampler = Sampler::start(&[&b]).await;
    // The dashboard spikes: 30 clients of long transactions.
    let spike = {
        let cfg = p.config(&a);
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..30 {
                let cfg = cfg.clone();
                tasks.push(tokio::spawn(async move {
                    let client = connect_with(cfg).await.unwrap();
                    let until = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < until {
                        let _ = client.query_typed("select pg_sleep(0.1)", &[]).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The reserved user gets through at once.
    let reserved = p.connect(&c).await.unwrap();
    let started = Instant::now();
    reserved
        .query_typed("select 1", &[])
        .await
        .expect("reserved capacity");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // Chat keeps working during the spike, with its share of the database.
    let chat_failures = Arc::new(AtomicUsize::new(0));
    let mut chats = Vec::new();
    for _ in 0..4 {
        let cfg = p.config(&b);
        let failures = chat_failures.clone();
        chats.push(tokio::spawn(async move {
            let client = connect_with(cfg).await.unwrap();
            for _ in 0..10 {
                if client
                    .query_typed("select pg_sleep(0.05)", &[])
                    .await
                    .is_err()
                {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in chats {
        t.await.unwrap();
    }
    spike.await.unwrap();
    let chat_max = sampler.stop();
    assert_eq!(
        chat_failures.load(Ordering::Relaxed),
        0,
        "chat never starved"
    );
    assert!(chat_max >= 1, "chat got backends: {chat_max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limit_shrinks_when_the_database_slows_down() {
    let u = role("u_adaptive");
    let p = proxy()
        .user_secret(&u, PASSWORD)
        .database("adaptive = true")
        .database("adaptive_min = 2")
        .pool("size = 10")
        .pool("queue_timeout = \"10s\"")
        .start()
        .await;
    let fast = closed_loop(&p, &u, 10, Duration::from_secs(2), 0.002).await;
    assert!(fast.iter().all(|o| o.0));
    assert_eq!(
        p.stats()[0].adaptive_limit,
        Some(10),
        "steady latency keeps the full pool"
    );
    // The gradient reacts to a change in latency: watch the limit while the database slows.
    let shared = p.proxy.as_ref().unwrap().shared().clone();
    let lowest = Arc::new(AtomicUsize::new(usize::MAX));
    let seen = lowest.clone();
    let watch = tokio::spawn(async move {
        loop {
            if let Some(limit) = shared.pools.all_stats()[0].adaptive_limit {
                seen.fetch_min(limit, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let slow = closed_loop(&p, &u, 10, Duration::from_secs(2), 0.1).await;
    watch.abort();
    assert!(slow.iter().all(|o| o.0), "slower, but nobody refused");
    let limit = lowest.load(Ordering::Relaxed);
    assert!((2..10).contains(&limit), "the limit came down: {limit}");
}
