//! Hot reload against real PostgreSQL under load: growth takes effect without errors,
//! shrinking never interrupts a transaction, an invalid file changes nothing, the 100 -> 10
//! cut is refused, the same cut with the guard raised is applied and then rolled back by
//! sluice when errors spike, no client is dropped by any of it, and a client connected before
//! a reload gets its settings at its next request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::PASSWORD;
use crate::harness::{connect_with, proxy, sqlstate, ProxyBuilder, TestProxy};
use crate::pools::{role, Sampler};

fn base(user: &str) -> ProxyBuilder {
    proxy()
        .user_secret(user, PASSWORD)
        .limits("max_server_connections = 200")
}

/// Clients running `select pg_sleep(secs)` in a loop until stopped; counts failures and
/// checks at the end that every client is still connected.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<bool>>,
}

impl Load {
    async fn start(p: &TestProxy, user: &str, clients: usize, secs: f64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let c = connect_with(p.config(user)).await.unwrap();
            let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
            let sql = format!("select pg_sleep({secs})");
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match c.query_typed(&sql, &[]).await {
                        Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
                // Still connected, still served.
                c.query_typed("select 1", &[]).await.is_ok()
            }));
        }
        Load {
            stop,
            failures,
            served,
            tasks,
        }
    }

    /// Stop; returns (served, failures, clients still connected and working).
    async fn stop(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut alive = 0;
        for t in self.tasks {
            alive += usize::from(t.await.unwrap());
        }
        (
            self.served.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            alive,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_a_pool_under_load_takes_effect_without_errors() {
    let u = role("u_reload_grow");
    let p = base(&u)
        .pool("size = 2")
        .pool("queue_timeout = \"10s\"")
        .start()
        .await;
    let load = Load::start(&p, &u, 8, 0.03).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sampler = Sampler::start(&[&u]).await;
    let outcome = p.reload_with(
        &base(&u).pool("size = 6").pool("queue_timeout = \"10s\""),
        false,
    );
    assert!(
        outcome
            .as_ref()
            .is_ok_and(|o| o.contains("pool.size: 2 -> 6")),
        "{outcome:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let max = sampler.stop();
    let (served, failures, alive) = load.stop().await;
    assert_eq!(failures, 0);
    assert_eq!(alive, 8, "no client dropped");
    assert!(served > 0);
    assert!(
        (3..=6).contains(&max),
        "the bigger pool is used: {max} backends"
    );
    assert_eq!(p.shared().reloader.version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrinking_never_interrupts_a_transaction() {
    let u = role("u_reload_shrink");
    let p = base(&u).pool("size = 4").start().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = p.connect(&u).await.unwrap();
        c.batch_execute(&format!("begin; select {i}"))
            .await
            .unwrap();
        clients.push(c);
    }
    assert_eq!(p.stats()[0].open, 4);
    p.reload_with(&base(&u).pool("size = 2"), false)
        .expect("a 50% cut is within the guard");
    // Every open transaction carries on to its end on its own backend.
    for c in &clients {
        c.batch_execute("select pg_sleep(0.01); commit")
            .await
            .expect("not interrupted");
    }
    let stats = &p.stats()[0];
    assert!(
        stats.open <= 2,
        "busy backends closed at transaction end: {stats:?}"
    );
    for c in &clients {
        c.query_typed("select 1", &[])
            .await
            .expect("no client dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing() {
    let u = role("u_reload_invalid");
    let p = base(&u).pool("size = 3").start().await;
    let c = p.connect(&u).await.unwrap();
    std::fs::write(p.dir.join("sluice.toml"), "[pool]\nsize = \"lots\"\n").unwrap();
    let err = p.shared().reloader.reload_from("test", false).unwrap_err();
    assert!(
        err.contains("sluice.toml") && err.contains("pool.size"),
        "{err}"
    );
    assert_eq!(p.shared().reloader.version(), 1);
    assert_eq!(p.shared().config.load().pool.size, 3);
    let last = p.shared().reloader.history().pop().unwrap();
    assert!(last.outcome.starts_with("refused"), "{last:?}");
    c.query_typed("select 1", &[])
        .await
        .expect("clients unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_100_to_10_cut_is_refused_by_default() {
    let u = role("u_reload_cut");
    let p = base(&u).pool("size = 100").start().await;
    let c = p.connect(&u).await.unwrap();
    let err = p
        .reload_with(&base(&u).pool("size = 10"), false)
        .unwrap_err();
    assert!(
        err.contains("pool.size: 100 -> 10 cuts capacity by 90%"),
        "{err}"
    );
    assert_eq!(p.shared().config.load().pool.size, 100);
    assert_eq!(p.stats()[0].size, 100);
    c.query_typed("select 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_with_the_guard_raised_is_applied_then_rolled_back_when_errors_spike() {
    let u = role("u_reload_rollback");
    let watch = |b: ProxyBuilder| {
        b.pool("queue_timeout = \"100ms\"")
            .database("max_connections = 100")
    };
    let reload_lines = "watch_window = \"15s\"\nsample_interval = \"300ms\"\nrollback_samples = 2";
    let healthy = watch(base(&u).pool("size = 20")).reload_section(reload_lines);
    let p = healthy.start().await;
    let load = Load::start(&p, &u, 10, 0.05).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = watch(base(&u).pool("size = 1"))
        .reload_section(&format!("{reload_lines}\nmax_shrink_percent = 100"));
    let applied = p
        .reload_with(&cut, false)
        .expect("the new file raised the guard");
    assert!(applied.contains("pool.size: 20 -> 1"), "{applied}");
    let applied_at = Instant::now();
    let rolled_back = loop {
        let h = p.shared().reloader.history();
        if let Some(r) = h.iter().find(|r| r.outcome.starts_with("rolled back")) {
            break r.clone();
        }
        assert!(
            applied_at.elapsed() < Duration::from_secs(12),
            "no rollback within the window: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        rolled_back.outcome.contains("error share"),
        "{rolled_back:?}"
    );
    assert_eq!(p.shared().config.load().pool.size, 20);
    assert_eq!(p.stats()[0].size, 20);
    assert_eq!(
        p.shared().reloader.counts.rollbacks.load(Ordering::Relaxed),
        1
    );
    // The rolled-back file is not re-applied by the watcher until it changes.
    let (_, _, alive) = load.stop().await;
    assert_eq!(alive, 10, "no client dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_in_several_writes_reloads_once() {
    let u = role("u_reload_watch");
    let lines = "watch = true\ndebounce = \"300ms\"";
    let p = base(&u)
        .pool("size = 3")
        .reload_section(lines)
        .start()
        .await;
    let next = base(&u).pool("size = 5").reload_section(lines);
    let (main, users) = next.toml();
    let path = p.dir.join("sluice.toml");
    // An editor's save: truncate, then the text in pieces.
    std::fs::write(&path, "").unwrap();
    let (a, b) = main.split_at(main.len() / 2);
    std::fs::write(&path, a).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&path, [a, b].concat()).unwrap();
    std::fs::write(p.dir.join("users.toml"), users).unwrap();
    let started = Instant::now();
    while p.shared().config.load().pool.size != 5 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the watcher applied the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let history = p.shared().reloader.history();
    let applied = history.iter().filter(|r| r.outcome == "applied").count();
    assert_eq!(applied, 1, "{history:?}");
    assert!(
        history.iter().all(|r| !r.outcome.starts_with("refused")),
        "no half-written file applied: {history:?}"
    );
}

/// A client connected before a reload gets the new settings at its next request: each session
/// keeps its own copy of the configuration and must see that a newer one is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_query_timeout_reaches_clients_connected_before_the_reload() {
    let u = role("u_reload_timeout");
    let p = base(&u).start().await;
    let c = p.connect(&u).await.unwrap();
    // No timeout yet: a 0.5 s statement runs to its end, and the session's copy is taken.
    c.query_typed("select pg_sleep(0.5)", &[]).await.unwrap();
    p.reload_with(&base(&u).pool("query_timeout = \"300ms\""), false)
        .unwrap();
    let started = Instant::now();
    let err = c.query_typed("select pg_sleep(10)", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.stats()[0].query_timeouts, 1);
}
