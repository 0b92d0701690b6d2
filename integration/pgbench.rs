//! pgbench through sluice: 200 clients in transaction mode over a pool of 10 finish with no
//! failed transaction, while PostgreSQL never sees more than 10 backends for them.
//!
//! The pgbench tables live in their own database, `sluice_pgbench`, owned by `u_plain2` and
//! initialised directly against the cluster. sluice serves it under the harness's usual name
//! (`[databases.sluice_test]` with `dbname = "sluice_pgbench"`), so no other test's tables or
//! connections mix with these: the sampler counts backends of that database alone.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::pgcluster::ClusterOptions;
use tokio::process::Command;

use crate::cluster::{cluster, psql_super, DATABASE, PASSWORD, U_PLAIN2};
use crate::harness::{connect_with, proxy};

/// The real database holding the pgbench tables.
const BENCH_DB: &str = "sluice_pgbench";
const CLIENTS: usize = 200;
const POOL_SIZE: usize = 10;
/// Seconds pgbench runs for (`-T`).
const SECONDS: u64 = 8;
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_200_clients_over_a_pool_of_10() {
    let c = cluster();
    psql_super(&format!(
        "DROP DATABASE IF EXISTS {BENCH_DB}; CREATE DATABASE {BENCH_DB} OWNER {U_PLAIN2};"
    ));
    let init = pgbench(c.port(), BENCH_DB, &["-i", "-s", "1", "-q"])
        .output()
        .await
        .expect("running pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i failed: {}\n{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );

    let p = proxy()
        .pool("mode = \"transaction\"")
        .pool(&format!("size = {POOL_SIZE}"))
        .database(&format!("dbname = \"{BENCH_DB}\""))
        .start()
        .await;

    // A direct superuser connection to the cluster (trust), kept for the whole run.
    let mut direct = tokio_postgres::Config::new();
    direct
        .host(c.host())
        .port(c.port())
        .user("postgres")
        .dbname(DATABASE)
        .connect_timeout(Duration::from_secs(10));
    let monitor = connect_with(direct)
        .await
        .expect("direct superuser connection");
    let count = monitor
        .prepare(
            "select count(*) from pg_stat_activity \
             where usename = $1 and datname = $2 and backend_type = 'client backend'",
        )
        .await
        .unwrap();
    // pgbench -i's own connection must be gone before sampling, or it would count.
    let settle = Instant::now() + Duration::from_secs(5);
    while backends(&monitor, &count).await > 0 {
        assert!(Instant::now() < settle, "pgbench -i's backend lingers");
        tokio::time::sleep(SAMPLE_EVERY).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let pools = p.proxy.as_ref().unwrap().shared().pools.clone();
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut max_pg, mut max_open, mut samples) = (0i64, 0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                max_pg = max_pg.max(backends(&monitor, &count).await);
                let open = pools.all_stats().iter().map(|s| s.open).sum::<usize>();
                max_open = max_open.max(open);
                samples += 1;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            (max_pg, max_open, samples)
        })
    };

    let started = Instant::now();
    let (clients, seconds) = (CLIENTS.to_string(), SECONDS.to_string());
    let args = ["-S", "-n", "-j", "2", "-c", &clients, "-T", &seconds];
    let run = pgbench(p.port(), DATABASE, &args).output();
    let run = tokio::time::timeout(Duration::from_secs(SECONDS + 30), run)
        .await
        .expect("pgbench finishes")
        .expect("running pgbench");
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (max_pg, max_open, samples) = sampler.await.unwrap();

    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let report = format!("pgbench stdout:\n{stdout}\npgbench stderr:\n{stderr}");
    println!(
        "{report}\nran {elapsed:?}; {samples} samples; most backends PostgreSQL saw: {max_pg}; \
         most sluice had open: {max_open}"
    );
    assert!(
        run.status.success(),
        "pgbench exited {}\n{report}",
        run.status
    );
    assert_eq!(
        field(&stdout, "number of failed transactions:").as_deref(),
        Some("0"),
        "{report}"
    );
    let processed: u64 = field(&stdout, "number of transactions actually processed:")
        .and_then(|n| n.split('/').next().and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no processed count\n{report}"));
    assert!(processed > 0, "{report}");
    assert!(samples > 10, "only {samples} samples");
    assert!(
        (1..=POOL_SIZE as i64).contains(&max_pg),
        "PostgreSQL saw up to {max_pg} backends for a pool of {POOL_SIZE}\n{report}"
    );
    assert!(max_open <= POOL_SIZE, "sluice had up to {max_open} open");
    let stats = p.stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert!(stats[0].open <= POOL_SIZE, "{stats:?}");
    assert_eq!(stats[0].waiting, 0, "{stats:?}");
    p.stop().await;
}

/// Backends of `u_plain2` in the pgbench database, as PostgreSQL sees them.
async fn backends(monitor: &tokio_postgres::Client, count: &tokio_postgres::Statement) -> i64 {
    let row = monitor.query_one(count, &[&U_PLAIN2, &BENCH_DB]).await;
    row.expect("sampling pg_stat_activity").get(0)
}

/// pgbench with `args`, as `u_plain2` (SCRAM on both legs), against `port` on 127.0.0.1,
/// database `db`.
fn pgbench(port: u16, db: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(ClusterOptions::default().bin_dir.join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", U_PLAIN2])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "PGOPTIONS",
        "PGPASSFILE",
        "PGSERVICE",
        "PGAPPNAME",
        "PGCLIENTENCODING",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The rest of the line of pgbench's report that starts with `label`, up to any " (".
fn field(report: &str, label: &str) -> Option<String> {
    report.lines().find_map(|line| {
        let rest = line.strip_prefix(label)?.trim();
        Some(rest.split(" (").next().unwrap_or(rest).to_string())
    })
}
