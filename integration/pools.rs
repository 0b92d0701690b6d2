//! Pool bounds against real PostgreSQL: backends never exceed the pool, database or global
//! cap; waiting clients get 53300 at the queue deadline and keep their session; the client cap
//! refuses at once; each client's parameters follow it from backend to backend; a backend
//! PostgreSQL ended while it sat idle is replaced, not handed out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{cluster, psql_super, PASSWORD};
use crate::harness::{connect_with, message, proxy, sqlstate, TestProxy};

/// A login role used by one test only, so backend counts are that test's alone.
pub fn role(name: &str) -> String {
    // Concurrent GRANTs on one schema race in PostgreSQL ("tuple concurrently updated"):
    // tests running in parallel make their roles one at a time.
    static ROLES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = ROLES.lock().unwrap_or_else(|e| e.into_inner());
    psql_super(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN \
         CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'; END IF; END $$; \
         GRANT ALL ON SCHEMA public TO {name};"
    ));
    name.to_string()
}

/// Samples how many client backends PostgreSQL has for `users`, keeping the maximum.
pub struct Sampler {
    max: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub async fn start(users: &[&str]) -> Sampler {
        let c = cluster();
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(c.host())
            .port(c.port())
            .user("postgres")
            .dbname("postgres");
        let direct = connect_with(cfg)
            .await
            .expect("direct superuser connection");
        let list = users
            .iter()
            .map(|u| format!("'{u}'"))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "select count(*) from pg_stat_activity where usename in ({list}) and backend_type = 'client backend'"
        );
        let max = Arc::new(AtomicUsize::new(0));
        let seen = max.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(row) = direct.query_one(sql.as_str(), &[]).await {
                    seen.fetch_max(row.get::<_, i64>(0) as usize, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Sampler { max, task }
    }

    pub fn stop(self) -> usize {
        self.task.abort();
        self.max.load(Ordering::Relaxed)
    }
}

/// `clients` concurrent clients each run `rounds` short transactions (some implicit, some
/// explicit) as `user`; returns how many statements failed.
async fn storm(p: &TestProxy, user: &str, clients: usize, rounds: usize) -> usize {
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let cfg = p.config(user);
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let c = match connect_with(cfg).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("connect failed: {e} {}", message(&e));
                    failures.fetch_add(rounds, Ordering::Relaxed);
                    return;
                }
            };
            for r in 0..rounds {
                let ok = if r % 2 == 0 {
                    // Unnamed statements: Parse, Bind, Execute and Sync in one transaction.
                    // (Named statements across backends are the prepared-statement work.)
                    let rows = c
                        .query_typed(
                            "select $1::int * 2, pg_sleep(0.005)::text",
                            &[(&(i as i32), tokio_postgres::types::Type::INT4)],
                        )
                        .await;
                    match rows {
                        Ok(rows) => rows[0].get::<_, i32>(0) == 2 * i as i32,
                        Err(e) => {
                            eprintln!("query failed: {e} {}", message(&e));
                            false
                        }
                    }
                } else {
                    let done = c
                        .batch_execute("begin; select pg_sleep(0.005); commit")
                        .await;
                    if let Err(e) = &done {
                        eprintln!("transaction failed: {e} {}", message(e));
                    }
                    done.is_ok()
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    failures.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_a_pool_of_five_without_exceeding_it() {
    let user = role("u_pool_storm");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 5")
        .pool("queue_timeout = \"60s\"")
        // The point is the bound, not login speed on a machine other tests keep busy.
        .pool("connect_timeout = \"30s\"")
        .limits("login_timeout = \"60s\"")
        .start()
        .await;
    let sampler = Sampler::start(&[&user]).await;
    let failed = storm(&p, &user, 200, 4).await;
    let max = sampler.stop();
    assert_eq!(failed, 0, "every query answered");
    assert!(
        (1..=5).contains(&max),
        "PostgreSQL saw {max} backends for a pool of 5"
    );
    let stats = p.stats();
    assert!(stats.iter().all(|s| s.open <= 5), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_cap_binds_across_users_and_idle_backends_move_between_pools() {
    let a = role("u_dbcap_a");
    let b = role("u_dbcap_b");
    let p = proxy()
        .user_secret(&a, PASSWORD)
        .user_secret(&b, PASSWORD)
        .pool("size = 5")
        .pool("queue_timeout = \"60s\"")
        .database("max_connections = 3")
        .start()
        .await;
    let sampler = Sampler::start(&[&a, &b]).await;
    let (fa, fb) = tokio::join!(storm(&p, &a, 30, 4), storm(&p, &b, 30, 4));
    let max = sampler.stop();
    assert_eq!(fa + fb, 0);
    assert!(
        (1..=3).contains(&max),
        "database cap 3, PostgreSQL saw {max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cap_binds_over_every_pool() {
    let a = role("u_global_a");
    let b = role("u_global_b");
    let p = proxy()
        .user_secret(&a, PASSWORD)
        .user_secret(&b, PASSWORD)
        .limits("max_server_connections = 2")
        .pool("size = 2")
        .pool("queue_timeout = \"60s\"")
        .start()
        .await;
    let sampler = Sampler::start(&[&a, &b]).await;
    let (fa, fb) = tokio::join!(storm(&p, &a, 20, 4), storm(&p, &b, 20, 4));
    let max = sampler.stop();
    assert_eq!(fa + fb, 0);
    assert!((1..=2).contains(&max), "global cap 2, PostgreSQL saw {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_gives_53300_and_the_session_lives_on() {
    let user = role("u_queue");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .pool("queue_timeout = \"300ms\"")
        .start()
        .await;
    let holder = p.connect(&user).await.unwrap();
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = p.connect(&user).await.unwrap();
    let started = Instant::now();
    let err = waiter.query_one("select 1", &[]).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    assert!(
        message(&err).contains("pool.queue_timeout"),
        "{}",
        message(&err)
    );
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    holder.batch_execute("commit").await.unwrap();
    let row = waiter.query_one("select 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// `check_idle` at checkout: a backend that PostgreSQL ended while it sat in the pool (its
/// FATAL and close arrive while nobody reads it) is closed, and the client gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_ended_while_idle_is_not_handed_out() {
    let user = role("u_idle_ended");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .start()
        .await;
    let client = p.connect(&user).await.unwrap();
    let pid = "select pg_backend_pid()";
    let first: i32 = client.query_one(pid, &[]).await.unwrap().get(0);
    psql_super(&format!("select pg_terminate_backend({first})"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second: i32 = client.query_one(pid, &[]).await.unwrap().get(0);
    assert_ne!(first, second, "a new backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cap_refuses_the_next_client_at_once() {
    let p = proxy().limits("max_client_connections = 3").start().await;
    let user = crate::cluster::U_SCRAM;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(p.connect(user).await.unwrap());
    }
    let started = Instant::now();
    let Err(err) = p.connect(user).await else {
        panic!("fourth client refused");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(
        message(&err).contains("limits.max_client_connections (3)"),
        "{}",
        message(&err)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held.pop());
    // The freed place is usable once the proxy has seen the close.
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok(c) = p.connect(user).await {
            admitted = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = admitted.expect("a place came free");
    assert_eq!(
        c.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_login_waits_then_gets_fatal_53300() {
    let user = role("u_session_q");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("mode = \"session\"")
        .pool("size = 1")
        .pool("queue_timeout = \"300ms\"")
        .start()
        .await;
    let first = p.connect(&user).await.unwrap();
    let Err(err) = p.connect(&user).await else {
        panic!("second session refused");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert_eq!(
        first
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop(first);
    let mut second = None;
    for _ in 0..50 {
        if let Ok(c) = p.connect(&user).await {
            second = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        second.is_some(),
        "the session's backend came back to the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_follow_each_client_across_one_backend() {
    let user = role("u_params");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .start()
        .await;
    let mut ca = p.config(&user);
    ca.application_name("alpha")
        .options("-c TimeZone=Asia/Tokyo");
    let mut cb = p.config(&user);
    cb.application_name("beta").options("-c TimeZone=UTC");
    let a = connect_with(ca).await.unwrap();
    let b = connect_with(cb).await.unwrap();
    let sql =
        "select current_setting('application_name'), current_setting('TimeZone'), pg_backend_pid()";
    let mut pids = Vec::new();
    for _ in 0..3 {
        for (c, app, tz) in [(&a, "alpha", "Asia/Tokyo"), (&b, "beta", "UTC")] {
            let row = c.query_one(sql, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), app);
            assert_eq!(row.get::<_, String>(1), tz);
            pids.push(row.get::<_, i32>(2));
        }
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one backend served both clients");
    // A SET of a tracked parameter moves with the client too.
    a.batch_execute("set application_name = 'alpha2'")
        .await
        .unwrap();
    b.query_one("select 1", &[]).await.unwrap();
    let row = a.query_one(sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "alpha2");
    let row = b.query_one(sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_startup_parameter_is_refused_by_name() {
    let p = proxy().start().await;
    let mut cfg = p.config(crate::cluster::U_SCRAM);
    cfg.options("-c search_path=public");
    let Err(err) = connect_with(cfg).await else {
        panic!("refused");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"));
    assert!(message(&err).contains("search_path"));
    let p = proxy()
        .pool("track_extra_params = [\"search_path\"]")
        .start()
        .await;
    let mut cfg = p.config(crate::cluster::U_SCRAM);
    cfg.options("-c search_path=pg_catalog");
    let c = connect_with(cfg).await.unwrap();
    let row = c
        .query_one("select current_setting('search_path')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pg_catalog");
}
