//! `pool.pipeline_depth` against real PostgreSQL: queued clients' single-statement queries
//! ride on another client's backend, and each client still gets exactly its own rows, its own
//! errors and its own cancels; transactions never ride.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::cluster::PASSWORD;
use crate::harness::{message, proxy, sqlstate, TestProxy};
use crate::pools::{role, Sampler};

/// The first column of the first row of a simple query's reply.
fn first_value(reply: &[SimpleQueryMessage]) -> Option<String> {
    reply.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

fn rides(p: &TestProxy, user: &str) -> u64 {
    p.stats()
        .iter()
        .filter(|s| s.user == user)
        .map(|s| s.rides)
        .sum()
}

/// `n` clients logged in through `p`, to be shared with tasks.
async fn logged_in(p: &TestProxy, user: &str, n: usize) -> Vec<Arc<tokio_postgres::Client>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(Arc::new(p.connect(user).await.unwrap()));
    }
    clients
}

type Reply = tokio::task::JoinHandle<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>>;

/// Run a simple query on its own task.
fn run(c: &Arc<tokio_postgres::Client>, sql: &'static str) -> Reply {
    let c = c.clone();
    tokio::spawn(async move { c.simple_query(sql).await })
}

/// Send `sqls[i]` from `clients[i]`, in order and a little apart: the first takes the pool's
/// one backend and holds it while the others queue behind it in that order.
async fn in_queue_order<const N: usize>(
    clients: &[Arc<tokio_postgres::Client>],
    sqls: [&'static str; N],
) -> [Reply; N] {
    let mut replies = Vec::new();
    for (i, sql) in sqls.into_iter().enumerate() {
        replies.push(run(&clients[i], sql));
        let gap = if i == 0 { 50 } else { 20 };
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    replies
        .try_into()
        .map_err(|_| ())
        .expect("one reply per query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_queries_ride_and_each_client_gets_only_its_own_replies() {
    let user = role("u_pipeline");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 2")
        .pool("pipeline_depth = 4")
        .start()
        .await;
    let sampler = Sampler::start(&[&user]).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..40usize {
        let cfg = p.config(&user);
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let c = crate::harness::connect_with(cfg).await.expect("connect");
            let bad = |what: String| {
                eprintln!("client {i}: {what}");
                failures.fetch_add(1, Ordering::Relaxed);
            };
            for round in 0..15usize {
                match (i + round) % 5 {
                    // An error in one client's query stays that client's.
                    0 => match c.simple_query("select 1 / (0 * pg_backend_pid())").await {
                        Err(e) if sqlstate(&e).as_deref() == Some("22012") => {}
                        other => bad(format!("division by zero gave {other:?}")),
                    },
                    // A transaction never rides: its statements see one transaction.
                    1 => {
                        let reply = c
                            .simple_query(
                                "begin; select txid_current(); select pg_sleep(0.002); select txid_current(); commit",
                            )
                            .await
                            .expect("transaction");
                        let ids: Vec<String> = reply
                            .iter()
                            .filter_map(|m| match m {
                                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                _ => None,
                            })
                            .filter(|v| !v.is_empty())
                            .collect();
                        if ids.len() != 2 || ids[0] != ids[1] {
                            bad(format!("transaction saw txids {ids:?}"));
                        }
                    }
                    // The extended protocol on the unnamed statement (Parse, Bind, Execute,
                    // Sync in one write) rides too.
                    2 => {
                        let rows = c
                            .query_typed(
                                "select $1::int * 3 from pg_sleep(0.001)",
                                &[(&(i as i32), tokio_postgres::types::Type::INT4)],
                            )
                            .await;
                        match rows {
                            Ok(rows) if rows.len() == 1 && rows[0].get::<_, i32>(0) == 3 * i as i32 => {}
                            other => bad(format!("extended query gave {other:?}")),
                        }
                    }
                    // Rows: this client's number, many rows, a short sleep.
                    _ => {
                        let want = format!("{i}-{round}");
                        let sql = format!(
                            "select '{want}' || '/' || count(*) from generate_series(1, {}) , pg_sleep(0.001)",
                            100 * (round + 1)
                        );
                        match c.simple_query(&sql).await {
                            Ok(reply) => {
                                let got = first_value(&reply);
                                let expected = format!("{want}/{}", 100 * (round + 1));
                                if got.as_deref() != Some(expected.as_str()) {
                                    bad(format!("wanted {expected}, got {got:?}"));
                                }
                            }
                            Err(e) => bad(format!("query failed: {}", message(&e))),
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let most = sampler.stop();
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(most <= 2, "pool of 2, PostgreSQL saw {most} backends");
    let rode = rides(&p, &user);
    assert!(
        rode > 0,
        "40 clients on 2 backends: some queries should have ridden"
    );
    // Afterwards the pool's backends are clean and idle.
    let c = p.connect(&user).await.unwrap();
    let reply = c.simple_query("select 41 + 1").await.unwrap();
    assert_eq!(first_value(&reply).as_deref(), Some("42"));
}

/// Clients queued in order behind a busy pool of one backend: the first gets it with the
/// others riding behind; a cancel (the client's own, or pool.query_timeout's) reaches the
/// rider whose query is running and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_riding_query_it_was_meant_for() {
    let user = role("u_pipeline_cancel");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .pool("pipeline_depth = 8")
        .pool("query_timeout = \"400ms\"")
        .start()
        .await;
    let clients = logged_in(&p, &user, 5).await;
    let sqls = [
        "select pg_sleep(0.3)",
        "select 'driver'",
        "select pg_sleep(5)",
        "select pg_sleep(5)",
        "select 'last'",
    ];
    let [holder, driver, timed_out, cancelled, last] = in_queue_order(&clients, sqls).await;

    holder.await.unwrap().expect("holder");
    let reply = driver.await.unwrap().expect("driver");
    assert_eq!(first_value(&reply).as_deref(), Some("driver"));
    let err = timed_out.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    // The third client's query runs once the timed-out one is cancelled; its own cancel
    // then stops it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    clients[3]
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let err = cancelled.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    let reply = last
        .await
        .unwrap()
        .expect("the query behind the cancelled ones");
    assert_eq!(first_value(&reply).as_deref(), Some("last"));
    assert_eq!(rides(&p, &user), 3, "three queries rode behind the driver");
    // Only the first sleeper ran into pool.query_timeout: the client's own cancel stopped
    // the second well before its timeout would have.
    let timeouts: u64 = p
        .stats()
        .iter()
        .filter(|s| s.user == user)
        .map(|s| s.query_timeouts)
        .sum();
    assert_eq!(timeouts, 1);
    // Every client's session goes on.
    for (i, c) in clients.iter().enumerate() {
        let reply = c.simple_query(&format!("select {i}")).await.unwrap();
        assert_eq!(first_value(&reply), Some(i.to_string()));
    }
}

/// A backend lost under a batch: the driver sees PostgreSQL's own FATAL, the riders are told
/// the server closed the connection, and the pool connects a fresh backend for what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riders_of_a_lost_backend_are_told_and_the_pool_recovers() {
    let user = role("u_pipeline_lost");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .pool("pipeline_depth = 4")
        .start()
        .await;
    let clients = logged_in(&p, &user, 3).await;
    let sqls = [
        "select pg_sleep(0.2)",
        "select pg_terminate_backend(pg_backend_pid())",
        "select 'never'",
    ];
    let [holder, driver, rider] = in_queue_order(&clients, sqls).await;
    holder.await.unwrap().expect("holder");
    let err = driver.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err}");
    let err = rider.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err}");
    assert!(
        message(&err).contains("server closed the connection"),
        "{err}"
    );
    assert_eq!(rides(&p, &user), 1);
    let fresh = p.connect(&user).await.unwrap();
    let reply = fresh.simple_query("select 'again'").await.unwrap();
    assert_eq!(first_value(&reply).as_deref(), Some("again"));
}

/// libpq-style extended requests on the unnamed statement ride like Query messages; a
/// request with a named statement waits for a backend of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_extended_requests_ride_and_named_ones_do_not() {
    let user = role("u_pipeline_ext");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .pool("pipeline_depth = 4")
        .start()
        .await;
    let clients = logged_in(&p, &user, 4).await;
    let holder = run(&clients[0], "select pg_sleep(0.3)");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut queued = Vec::new();
    for (i, c) in clients.iter().enumerate().skip(1) {
        let c = c.clone();
        queued.push(tokio::spawn(async move {
            let sql = "select $1::int * 5";
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), _); 1] =
                [(&(i as i32), tokio_postgres::types::Type::INT4)];
            let rows = if i < 3 {
                c.query_typed(sql, &params).await?
            } else {
                // A named statement: prepared first, then bound by name.
                c.query(sql, &[&(i as i32)]).await?
            };
            Ok::<i32, tokio_postgres::Error>(rows[0].get(0))
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.await.unwrap().expect("holder");
    for (i, q) in queued.into_iter().enumerate() {
        assert_eq!(q.await.unwrap().expect("query"), 5 * (i as i32 + 1));
    }
    assert_eq!(
        rides(&p, &user),
        1,
        "the second unnamed request rode; the named one did not"
    );
}

/// `pool.pipeline_depth` is reloadable: queued clients start riding once it is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_pipeline_depth_by_reload_lets_queued_queries_ride() {
    let user = role("u_pipeline_reload");
    let base = || proxy().user_secret(&user, PASSWORD).pool("size = 1");
    let p = base().start().await;
    let clients = logged_in(&p, &user, 3).await;
    let sqls = ["select pg_sleep(0.2)", "select 1", "select 2"];
    for reply in in_queue_order(&clients, sqls).await {
        reply.await.unwrap().expect("query");
    }
    assert_eq!(rides(&p, &user), 0, "off by default");
    let outcome = p.reload_with(&base().pool("pipeline_depth = 4"), false);
    assert!(
        outcome
            .as_ref()
            .is_ok_and(|o| o.contains("pool.pipeline_depth: 1 -> 4")),
        "{outcome:?}"
    );
    let [holder, first, second] = in_queue_order(&clients, sqls).await;
    holder.await.unwrap().expect("holder");
    assert_eq!(
        first_value(&first.await.unwrap().unwrap()).as_deref(),
        Some("1")
    );
    assert_eq!(
        first_value(&second.await.unwrap().unwrap()).as_deref(),
        Some("2")
    );
    assert_eq!(rides(&p, &user), 1);
}

/// A rider's long result streams through in pieces, and the rider behind it still gets its
/// own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_riders_long_result_streams_through_whole() {
    let user = role("u_pipeline_long");
    let p = proxy()
        .user_secret(&user, PASSWORD)
        .pool("size = 1")
        .pool("pipeline_depth = 4")
        .start()
        .await;
    let clients = logged_in(&p, &user, 4).await;
    let sqls = [
        "select pg_sleep(0.2)",
        "select 'driver'",
        "select i, repeat('x', 1000) from generate_series(1, 3000) i",
        "select 'after'",
    ];
    let [holder, driver, long, after] = in_queue_order(&clients, sqls).await;
    holder.await.unwrap().expect("holder");
    let reply = driver.await.unwrap().expect("driver");
    assert_eq!(first_value(&reply).as_deref(), Some("driver"));
    let rows: Vec<(String, usize)> = long
        .await
        .unwrap()
        .expect("long result")
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0)?.to_string(), r.get(1)?.len())),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 3000);
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, (n, len))| *n == (i + 1).to_string() && *len == 1000));
    let reply = after.await.unwrap().expect("after");
    assert_eq!(first_value(&reply).as_deref(), Some("after"));
    assert_eq!(rides(&p, &user), 2);
}
