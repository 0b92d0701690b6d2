//! Protocol paths beyond plain queries, end to end through sluice against real PostgreSQL:
//! COPY in both directions (tokio-postgres and psql), cancel routing, clients that vanish
//! mid-transaction, pipelined extended queries, notices and notifications, the message size
//! limit, fastpath FunctionCall (large objects) and session-mode reset.
//!
//! Every test uses its own tables (suffixed with the test's name): all tests share one
//! database and run concurrently.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use crate::cluster::{psql_super, U_PLAIN2, U_TRUST};
use crate::harness::{proxy, psql_with_env, sqlstate, RawClient, TestProxy};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Run a test body with an overall deadline, so a broken sluice fails a test instead of
/// hanging it.
async fn bounded(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test did not finish within 60s");
}

/// Run SQL as the superuser without blocking a runtime worker (sluice runs on the same ones).
async fn superuser(sql: impl Into<String>) -> String {
    let sql = sql.into();
    tokio::task::spawn_blocking(move || psql_super(&sql))
        .await
        .expect("psql_super panicked")
}

/// Poll `sql` (as the superuser) until it returns `want`, or panic after `limit`.
async fn wait_for(sql: &str, want: &str, limit: Duration, what: &str) {
    let started = Instant::now();
    loop {
        let got = superuser(sql).await;
        if got.trim() == want {
            return;
        }
        if started.elapsed() > limit {
            panic!("{what}: after {limit:?}, {sql:?} returned {got:?}, wanted {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until a statement whose text starts with `prefix` is running on some backend.
async fn wait_running(prefix: &str) {
    let sql = format!(
        "select count(*) > 0 from pg_stat_activity where state = 'active' \
         and pid <> pg_backend_pid() and query like '{}%'",
        prefix.replace('\'', "''")
    );
    wait_for(
        &sql,
        "t",
        Duration::from_secs(10),
        &format!("waiting for {prefix:?} to run"),
    )
    .await;
}

/// Locks anyone holds on `table`.
async fn locks_on(table: &str) -> String {
    superuser(format!(
        "select count(*) from pg_locks where relation = 'public.{table}'::regclass"
    ))
    .await
}

/// A client whose connection task can be killed, so the socket closes without Terminate.
async fn connect_killable(p: &TestProxy, user: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, conn) = p
        .config(user)
        .connect(NoTls)
        .await
        .expect("connect through sluice");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

/// Close a client's socket abruptly: no Terminate message, as if the process died.
async fn kill(client: Client, task: tokio::task::JoinHandle<()>) {
    // Abort the connection task first: dropping the Client while the task runs would make
    // tokio-postgres send a polite Terminate.
    task.abort();
    let _ = task.await;
    drop(client);
}

/// A client whose notices and notifications arrive on a channel.
async fn connect_with_messages(
    config: tokio_postgres::Config,
) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>) {
    let (client, mut conn) = config.connect(NoTls).await.expect("connect through sluice");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    (client, rx)
}

/// Run psql against `url` (extra args after the connection), optionally feeding stdin.
async fn psql(url: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    psql_with_env(url, args, stdin, &[]).await
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: psql failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory for one test's files.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sluice-pp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// COPY text rows `id \t payload \n`, payloads of varying length; also the sum of the
/// payload lengths.
fn copy_rows(rows: usize, width: usize) -> (Vec<u8>, i64) {
    let mut data = Vec::with_capacity(rows * (width + 24));
    let mut sum = 0i64;
    for i in 0..rows {
        let len = width + i % 17;
        let c = b'a' + (i % 26) as u8;
        data.extend_from_slice(format!("{i}\t").as_bytes());
        data.extend(std::iter::repeat_n(c, len));
        data.push(b'\n');
        sum += len as i64;
    }
    (data, sum)
}

/// Deterministic pseudo-random bytes (all 256 values), for binary round trips.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn backend_pid(c: &Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn simple_values(msgs: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(String::from)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1, 2: COPY

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_pipelined_with_its_first_queries_is_served_in_order() {
    use crate::harness::frames::{query, tags};
    bounded(async {
        let p = proxy().auth("trust").start().await;
        // SSLRequest, StartupMessage and two queries, all in one write: sluice reads the
        // login in as few reads as it can and must hand what follows to the session intact.
        let mut first = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        first.extend_from_slice(&sluice::protocol::startup::startup_message(&[
            ("user", U_TRUST),
            ("database", crate::cluster::DATABASE),
        ]));
        first.extend_from_slice(&query("select 41 + 1"));
        first.extend_from_slice(&query("select 'second'"));
        let mut c = RawClient::pipelined(p.port(), &first).await;
        assert_eq!(c.read_bytes(1).await, b"N", "no TLS");
        let login = c.until_ready().await;
        assert_eq!(login.first().map(|m| m.0), Some(b'R'), "{login:?}");
        for want in ["42", "second"] {
            let reply = c.until_ready().await;
            assert_eq!(tags(&reply), "TDCZ", "{reply:?}");
            let row = &reply[1].1;
            assert_eq!(&row[row.len() - want.len()..], want.as_bytes(), "{reply:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_of_10mb_with_tokio_postgres_through_a_pool_of_one() {
    bounded(async {
        let p = proxy()
            .pool("size = 1")
            .pool("queue_timeout = \"20s\"")
            .start()
            .await;
        let c = p.connect(U_PLAIN2).await.unwrap();
        c.batch_execute(
            "drop table if exists copy_tp_big; create table copy_tp_big (id int, payload text)",
        )
        .await
        .unwrap();
        let pid = backend_pid(&c).await;

        // ~10 MB in, in many chunks that cut across rows.
        let (data, payload_sum) = copy_rows(10_000, 1_000);
        assert!(data.len() > 10_000_000);
        let sink = c
            .copy_in::<_, Bytes>("copy copy_tp_big (id, payload) from stdin")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        for chunk in data.chunks(7_919) {
            sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let copied = tokio::time::timeout(Duration::from_secs(60), sink.as_mut().finish())
            .await
            .expect("COPY FROM STDIN finishes")
            .expect("COPY FROM STDIN succeeds");
        assert_eq!(copied, 10_000);
        let row = c
            .query_one(
                "select count(*), sum(length(payload))::bigint from copy_tp_big",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 10_000);
        assert_eq!(row.get::<_, i64>(1), payload_sum);

        // The same ~10 MB back out.
        let stream = c
            .copy_out("copy (select id, payload from copy_tp_big order by id) to stdout")
            .await
            .unwrap();
        let chunks: Vec<Bytes> =
            tokio::time::timeout(Duration::from_secs(60), stream.try_collect())
                .await
                .expect("COPY TO STDOUT finishes")
                .expect("COPY TO STDOUT succeeds");
        let out: Vec<u8> = chunks.concat();
        assert_eq!(out.len(), data.len(), "bytes out == bytes in");
        assert!(out == data, "COPY TO STDOUT returns exactly what went in");

        // A COPY the client abandons (CopyFail) leaves the backend usable too.
        {
            let sink = c
                .copy_in::<_, Bytes>("copy copy_tp_big from stdin")
                .await
                .unwrap();
            futures_util::pin_mut!(sink);
            sink.send(Bytes::from_static(b"1\tabandoned\n2\tabandoned\n"))
                .await
                .unwrap();
            // Dropped unfinished: tokio-postgres sends CopyFail and Sync.
        }

        // The one backend came back clean: the same client and a second one are served by it.
        let row = c
            .query_one("select count(*), pg_backend_pid() from copy_tp_big", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            10_000,
            "the abandoned COPY added nothing"
        );
        assert_eq!(row.get::<_, i32>(1), pid, "pool of one: same backend");
        let c2 = p.connect(U_PLAIN2).await.unwrap();
        let row = tokio::time::timeout(
            Duration::from_secs(10),
            c2.query_one("select count(*), pg_backend_pid() from copy_tp_big", &[]),
        )
        .await
        .expect("second client is served")
        .unwrap();
        assert_eq!(row.get::<_, i64>(0), 10_000);
        assert_eq!(row.get::<_, i32>(1), pid);
        let stats = p.stats();
        assert_eq!((stats[0].open, stats[0].idle), (1, 1), "{stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_with_psql() {
    bounded(async {
    let p = proxy().pool("size = 1").start().await;
    let url = p.url(U_TRUST);
    let dir = Scratch::new("copy_psql");
    let (data, _) = copy_rows(3_000, 1_000);
    let input = dir.path("in.tsv");
    std::fs::write(&input, &data).unwrap();

    ok(
        &psql(
            &url,
            &[
                "-c",
                "drop table if exists copy_psql_file, copy_psql_stdin",
                "-c",
                "create table copy_psql_file (id int, payload text)",
                "-c",
                "create table copy_psql_stdin (id int, payload text)",
            ],
            None,
        )
        .await,
        "create tables",
    );
    // \copy: psql reads the file and sends COPY FROM STDIN.
    let out = ok(
        &psql(
            &url,
            &["-c", &format!("\\copy copy_psql_file from '{input}'")],
            None,
        )
        .await,
        "\\copy from file",
    );
    assert_eq!(out.trim(), "COPY 3000");
    // COPY FROM STDIN fed from psql's own stdin.
    let out = ok(
        &psql(
            &url,
            &["-c", "copy copy_psql_stdin from stdin"],
            Some(&data),
        )
        .await,
        "COPY FROM STDIN",
    );
    assert_eq!(out.trim(), "COPY 3000");

    // Back out: \copy to a file, and COPY TO STDOUT on psql's stdout.
    let exported = dir.path("out.tsv");
    ok(
        &psql(
            &url,
            &[
                "-c",
                &format!("\\copy (select * from copy_psql_file order by id) to '{exported}'"),
            ],
            None,
        )
        .await,
        "\\copy to file",
    );
    assert!(
        std::fs::read(&exported).unwrap() == data,
        "\\copy out == in"
    );
    let out = psql(
        &url,
        &[
            "-q",
            "-c",
            "copy (select * from copy_psql_stdin order by id) to stdout",
        ],
        None,
    )
    .await;
    ok(&out, "COPY TO STDOUT");
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "COPY TO STDOUT out == in");

    let counts = ok(
        &psql(
            &url,
            &["-c", "select (select count(*) from copy_psql_file) + (select count(*) from copy_psql_stdin)"],
            None,
        )
        .await,
        "count",
    );
    assert_eq!(counts.trim(), "6000");
    let stats = p.stats();
    assert_eq!((stats[0].open, stats[0].idle), (1, 1), "{stats:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3: cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_exactly_the_clients_own_backend() {
    bounded(async {
        let p = proxy().pool("size = 2").start().await;
        let a = p.connect(U_PLAIN2).await.unwrap();
        let b = p.connect(U_PLAIN2).await.unwrap();
        let a_token = a.cancel_token();
        let a_query = tokio::spawn(async move {
            let r = a
                .simple_query("select 'cancel_route_a', pg_sleep(30)")
                .await;
            (r, a)
        });
        let b_started = Instant::now();
        let b_query = tokio::spawn(async move {
            let r = b.simple_query("select 'cancel_route_b', pg_sleep(3)").await;
            (r, b)
        });
        wait_running("select 'cancel_route_a'").await;
        wait_running("select 'cancel_route_b'").await;

        let cancelled_at = Instant::now();
        a_token
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
        let (a_result, a) = tokio::time::timeout(Duration::from_secs(10), a_query)
            .await
            .expect("A's query ends after the cancel, not after 30s")
            .unwrap();
        let err = a_result.expect_err("A's query was cancelled");
        assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "A cancelled in {:?}",
            cancelled_at.elapsed()
        );

        let (b_result, b) = tokio::time::timeout(Duration::from_secs(15), b_query)
            .await
            .expect("B finishes")
            .unwrap();
        let rows = b_result.expect("B's query is not cancelled");
        assert_eq!(simple_values(&rows), [Some("cancel_route_b".to_string())]);
        assert!(
            b_started.elapsed() >= Duration::from_secs(3),
            "B really slept"
        );

        // Both sessions go on. (Simple queries: tokio-postgres's named statements need one
        // backend for prepare and execute, which a pool of two in transaction mode does not
        // promise.)
        let rows = a.simple_query("select 1").await.unwrap();
        assert_eq!(simple_values(&rows), [Some("1".to_string())]);
        let rows = b.simple_query("select 2").await.unwrap();
        assert_eq!(simple_values(&rows), [Some("2".to_string())]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_for_an_idle_client_touches_nobody() {
    bounded(async {
        // One backend: the idle client A used it last, and B is running on it when A's cancel
        // comes in. The cancel must not reach B, and A must keep working.
        let p = proxy()
            .pool("size = 1")
            .pool("queue_timeout = \"20s\"")
            .start()
            .await;
        let a = p.connect(U_PLAIN2).await.unwrap();
        let b = p.connect(U_PLAIN2).await.unwrap();
        let pid = backend_pid(&a).await;
        let b_query = tokio::spawn(async move {
            let r = b
                .simple_query("select 'idle_cancel_b', pg_backend_pid(), pg_sleep(2)")
                .await;
            (r, b)
        });
        wait_running("select 'idle_cancel_b'").await;
        a.cancel_token()
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
        // Also one when nothing at all runs, below.
        let (b_result, b) = tokio::time::timeout(Duration::from_secs(15), b_query)
            .await
            .expect("B finishes")
            .unwrap();
        let rows = b_result.expect("B is not cancelled by A's cancel");
        let row = rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("B's row");
        assert_eq!(
            row.get(1),
            Some(pid.to_string().as_str()),
            "B ran on the backend A used last"
        );
        assert_eq!(
            a.query_one("select 10", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            10
        );
        a.cancel_token()
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            a.query_one("select 11", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            11
        );
        assert_eq!(
            b.query_one("select 12", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            12
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4: clients that vanish mid-transaction

/// What the next client on the backend sees: a fresh transaction, nothing of the dead one.
async fn assert_fresh(b: &Client, table: &str) {
    let row = b
        .query_one(
            "select current_setting('transaction_isolation'), txid_current_if_assigned()::text, \
             to_regclass('pg_temp.kill_tmp')::text, current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "read committed",
        "isolation level of the dead transaction"
    );
    assert_eq!(
        row.get::<_, Option<String>>(1),
        None,
        "a transaction id is already assigned"
    );
    assert_eq!(
        row.get::<_, Option<String>>(2),
        None,
        "the dead transaction's temp table"
    );
    assert_ne!(
        row.get::<_, String>(3),
        "8MB",
        "the dead transaction's SET LOCAL"
    );
    // The lock is free and the uncommitted row is gone.
    let started = Instant::now();
    let rows = tokio::time::timeout(
        Duration::from_secs(10),
        b.simple_query(&format!(
            "begin; set local lock_timeout = '3s'; lock table {table} in access exclusive mode; \
             select count(*) from {table}; commit"
        )),
    )
    .await
    .expect("B is served")
    .unwrap_or_else(|e| panic!("B cannot lock {table}: {e} ({:?})", sqlstate(&e)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "lock took {:?}",
        started.elapsed()
    );
    assert_eq!(
        simple_values(&rows),
        [Some("0".to_string())],
        "the dead client's insert is gone"
    );
}

async fn begin_dirty_transaction(a: &Client, table: &str) {
    a.batch_execute(&format!(
        "begin isolation level serializable; \
         lock table {table} in access exclusive mode; \
         insert into {table} values (1); \
         create temp table kill_tmp (x int); \
         set local work_mem = '8MB'; \
         select txid_current()"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_idle_in_transaction_leaves_no_lock_and_no_dirty_backend() {
    bounded(async {
        let table = "kill_idle_t";
        let p = proxy()
            .pool("size = 1")
            .pool("queue_timeout = \"20s\"")
            .start()
            .await;
        let setup = p.connect(U_PLAIN2).await.unwrap();
        setup
            .batch_execute(&format!(
                "drop table if exists {table}; create table {table} (id int)"
            ))
            .await
            .unwrap();
        drop(setup);

        let (a, a_task) = connect_killable(&p, U_PLAIN2).await;
        begin_dirty_transaction(&a, table).await;
        assert_ne!(locks_on(table).await.trim(), "0", "A holds its locks");
        kill(a, a_task).await;

        wait_for(
            &format!("select count(*) from pg_locks where relation = 'public.{table}'::regclass"),
            "0",
            Duration::from_secs(5),
            "the dead client's lock is released",
        )
        .await;
        let b = p.connect(U_PLAIN2).await.unwrap();
        assert_fresh(&b, table).await;
        assert_eq!(locks_on(table).await.trim(), "0");
        let stats = p.stats();
        assert_eq!(
            stats[0].idle, stats[0].open,
            "no backend left busy: {stats:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_while_its_query_runs_leaves_no_lock_and_no_dirty_backend() {
    bounded(async {
    let table = "kill_running_t";
    let p = proxy()
        .pool("size = 1")
        .pool("queue_timeout = \"20s\"")
        .start()
        .await;
    let setup = p.connect(U_PLAIN2).await.unwrap();
    setup
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (id int)"
        ))
        .await
        .unwrap();
    drop(setup);

    let (a, a_task) = connect_killable(&p, U_PLAIN2).await;
    begin_dirty_transaction(&a, table).await;
    let a = std::sync::Arc::new(a);
    let running = {
        let a = a.clone();
        tokio::spawn(async move {
            let _ = a
                .simple_query("select 'kill_running_a', pg_sleep(30)")
                .await;
        })
    };
    wait_running("select 'kill_running_a'").await;
    running.abort();
    let _ = running.await;
    let killed_at = Instant::now();
    kill(std::sync::Arc::into_inner(a).unwrap(), a_task).await;

    // B queues for the one backend, which must be freed well before the 30 s sleep ends.
    let b = p.connect(U_PLAIN2).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(8), b.query_one("select 1", &[]))
        .await
        .expect("B is served within seconds of A's death, not after A's 30s sleep");
    served.unwrap();
    assert!(killed_at.elapsed() < Duration::from_secs(8));
    assert_eq!(
        locks_on(table).await.trim(),
        "0",
        "the dead client's lock is released"
    );
    assert_fresh(&b, table).await;
    assert_eq!(
        superuser("select count(*) from pg_stat_activity where query like 'select ''kill_running_a''%' and state = 'active'")
            .await
            .trim(),
        "0",
        "the dead client's query no longer runs"
    );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5, 6: pipelining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_queries_from_three_clients_over_a_pool_of_one() {
    bounded(async {
        let p = proxy()
            .pool("size = 1")
            .pool("queue_timeout = \"30s\"")
            .start()
            .await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(p.connect(U_PLAIN2).await.unwrap());
        }
        let work = clients.iter().enumerate().map(|(k, c)| async move {
            for round in 0..2 {
                let base = (k * 1000 + round * 100) as i32;
                let results = futures_util::future::join_all(
                    (0..50).map(|i| async move { c.query("select $1::int", &[&(base + i)]).await }),
                )
                .await;
                for (i, r) in results.into_iter().enumerate() {
                    let rows =
                        r.unwrap_or_else(|e| panic!("client {k} round {round} query {i}: {e}"));
                    assert_eq!(rows.len(), 1);
                    assert_eq!(
                        rows[0].get::<_, i32>(0),
                        base + i as i32,
                        "client {k} query {i}"
                    );
                }
                // And the one-round-trip form (unnamed statements: Parse, Bind, Execute, Sync).
                let results = futures_util::future::join_all((0..50).map(|i| async move {
                    c.query_typed(
                        "select $1::int + 1",
                        &[(&(base + i), tokio_postgres::types::Type::INT4)],
                    )
                    .await
                }))
                .await;
                for (i, r) in results.into_iter().enumerate() {
                    let rows =
                        r.unwrap_or_else(|e| panic!("client {k} round {round} typed {i}: {e}"));
                    assert_eq!(
                        rows[0].get::<_, i32>(0),
                        base + i as i32 + 1,
                        "client {k} typed {i}"
                    );
                }
            }
        });
        tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(work),
        )
        .await
        .expect("pipelines complete");
        let stats = p.stats();
        assert_eq!((stats[0].open, stats[0].idle), (1, 1), "{stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_the_middle_of_a_pipeline_fails_only_its_own_query() {
    bounded(async {
        let p = proxy().pool("size = 1").start().await;
        let c = p.connect(U_PLAIN2).await.unwrap();
        let queries = [
            "select 1",
            "select 1/0",
            "select 3",
            "select * from no_such_table_pipeline",
            "select 5",
        ];
        for _ in 0..2 {
            let results =
                futures_util::future::join_all(queries.iter().map(|q| c.query(*q, &[]))).await;
            assert_eq!(results[0].as_ref().unwrap()[0].get::<_, i32>(0), 1);
            let e = results[1].as_ref().unwrap_err();
            assert_eq!(sqlstate(e).as_deref(), Some("22012"), "{e}");
            assert_eq!(results[2].as_ref().unwrap()[0].get::<_, i32>(0), 3);
            let e = results[3].as_ref().unwrap_err();
            assert_eq!(sqlstate(e).as_deref(), Some("42P01"), "{e}");
            assert_eq!(results[4].as_ref().unwrap()[0].get::<_, i32>(0), 5);

            // The same with unnamed statements, one Sync each.
            let results =
                futures_util::future::join_all(queries.iter().map(|q| c.query_typed(q, &[]))).await;
            assert_eq!(results[0].as_ref().unwrap()[0].get::<_, i32>(0), 1);
            assert_eq!(
                sqlstate(results[1].as_ref().unwrap_err()).as_deref(),
                Some("22012")
            );
            assert_eq!(results[2].as_ref().unwrap()[0].get::<_, i32>(0), 3);
            assert_eq!(
                sqlstate(results[3].as_ref().unwrap_err()).as_deref(),
                Some("42P01")
            );
            assert_eq!(results[4].as_ref().unwrap()[0].get::<_, i32>(0), 5);
        }
        // The client keeps working, and so does the backend for someone else.
        assert_eq!(
            c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0),
            7
        );
        let c2 = p.connect(U_PLAIN2).await.unwrap();
        let row = tokio::time::timeout(Duration::from_secs(10), c2.query_one("select 8", &[]))
            .await
            .expect("second client is served")
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 8);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7: notices and notifications

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_client() {
    bounded(async {
        let p = proxy().pool("size = 1").start().await;
        let (c, mut messages) = connect_with_messages(p.config(U_PLAIN2)).await;
        c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
            .await
            .unwrap();
        let notice = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("a notice arrives")
            .expect("connection alive");
        match notice {
            AsyncMessage::Notice(n) => {
                assert_eq!(n.message(), "hello 42");
                assert_eq!(n.severity(), "NOTICE");
            }
            other => panic!("expected a notice, got {other:?}"),
        }
        // Through the extended protocol as well.
        c.execute("DO $$ BEGIN RAISE NOTICE 'again %', 7; END $$", &[])
            .await
            .unwrap();
        let notice = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("a second notice arrives")
            .expect("connection alive");
        assert!(
            matches!(&notice, AsyncMessage::Notice(n) if n.message() == "again 7"),
            "{notice:?}"
        );

        let out = psql(
            &p.url(U_TRUST),
            &["-c", "DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$"],
            None,
        )
        .await;
        ok(&out, "psql notice");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("NOTICE:  hello 42"),
            "psql stderr: {stderr}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_a_listener_in_session_mode() {
    bounded(async {
        let p = proxy()
            .pool("size = 2")
            .pool("mode = \"session\"")
            .start()
            .await;
        let (listener, mut messages) = connect_with_messages(p.config(U_PLAIN2)).await;
        listener.batch_execute("LISTEN pp_channel").await.unwrap();
        let notifier = p.connect(U_PLAIN2).await.unwrap();
        notifier
            .batch_execute("NOTIFY pp_channel, 'x1'")
            .await
            .unwrap();
        notifier
            .query("select pg_notify('pp_channel', $1)", &[&"x2"])
            .await
            .unwrap();
        // The listener is idle: the notifications come unasked.
        for want in ["x1", "x2"] {
            let m = tokio::time::timeout(Duration::from_secs(5), messages.recv())
                .await
                .unwrap_or_else(|_| panic!("notification {want} arrives at the idle listener"))
                .expect("connection alive");
            match m {
                AsyncMessage::Notification(n) => {
                    assert_eq!(n.channel(), "pp_channel");
                    assert_eq!(n.payload(), want);
                }
                other => panic!("expected a notification, got {other:?}"),
            }
        }
        assert_eq!(
            listener
                .query_one("select 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8: message size limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_size_is_refused_with_08p01() {
    bounded(async {
        let p = proxy()
            .pool("size = 1")
            .limits("max_message_size = \"64kB\"")
            .start()
            .await;
        let literal = |n: usize| format!("select length('{}')", "x".repeat(n));
        for extended in [false, true] {
            let c = p.connect(U_PLAIN2).await.unwrap();
            let big = literal(100_000);
            let err = if extended {
                c.query(big.as_str(), &[]).await.map(|_| ()).unwrap_err()
            } else {
                c.simple_query(&big).await.map(|_| ()).unwrap_err()
            };
            assert_eq!(
                sqlstate(&err).as_deref(),
                Some("08P01"),
                "extended={extended}: {err} ({err:?})"
            );
            let db = err.as_db_error().unwrap();
            assert_eq!(db.severity(), "FATAL");
            assert!(
                db.message().contains("max_message_size"),
                "{}",
                db.message()
            );
            // The connection is over.
            assert!(c.simple_query("select 1").await.is_err());

            let c = p.connect(U_PLAIN2).await.unwrap();
            let small = literal(10_000);
            let rows = c.simple_query(&small).await.unwrap();
            assert_eq!(simple_values(&rows), [Some("10000".to_string())]);
            let row = c.query_one(small.as_str(), &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 10_000);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9: FunctionCall

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_via_fastpath_function_calls_round_trip() {
    bounded(async {
        let p = proxy().pool("size = 1").start().await;
        let url = p.url(U_TRUST);
        let dir = Scratch::new("lo");
        let original = noise(300_000, 0x5eed);
        let input = dir.path("in.bin");
        std::fs::write(&input, &original).unwrap();

        let out = ok(
            &psql(&url, &["-c", &format!("\\lo_import '{input}'")], None).await,
            "\\lo_import",
        );
        let oid: u32 = out
            .trim()
            .strip_prefix("lo_import ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected \\lo_import output {out:?}"));
        let exported = dir.path("out.bin");
        ok(
            &psql(
                &url,
                &["-c", &format!("\\lo_export {oid} '{exported}'")],
                None,
            )
            .await,
            "\\lo_export",
        );
        assert!(
            std::fs::read(&exported).unwrap() == original,
            "exported bytes == imported bytes"
        );
        // The server agrees about the size.
        let size = ok(
            &psql(
                &url,
                &["-c", &format!("select length(lo_get({oid}))")],
                None,
            )
            .await,
            "lo_get",
        );
        assert_eq!(size.trim(), original.len().to_string());
        ok(
            &psql(&url, &["-c", &format!("\\lo_unlink {oid}")], None).await,
            "\\lo_unlink",
        );
        let stats = p.stats();
        assert_eq!((stats[0].open, stats[0].idle), (1, 1), "{stats:?}");
    })
    .await;
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A FunctionCall message: binary int4 arguments, binary result.
fn function_call(oid: u32, args: &[i32]) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&1u16.to_be_bytes()); // one format code for all arguments:
    body.extend_from_slice(&1u16.to_be_bytes()); // binary
    body.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        body.extend_from_slice(&4u32.to_be_bytes());
        body.extend_from_slice(&a.to_be_bytes());
    }
    body.extend_from_slice(&1u16.to_be_bytes()); // binary result
    frame(b'F', &body)
}

/// The int4 in a FunctionCallResponse body.
fn function_result(body: &[u8]) -> i32 {
    assert_eq!(&body[..4], &4u32.to_be_bytes(), "a 4-byte result");
    i32::from_be_bytes(body[4..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_calls_outside_a_transaction_keep_their_backend_until_answered() {
    bounded(async {
        // FunctionCall outside any transaction: the backend must stay with the client until the
        // call's ReadyForQuery, and then serve others. Pool of one, another client in between.
        let int4pl: u32 = superuser("select 'int4pl(int4,int4)'::regprocedure::oid")
            .await
            .trim()
            .parse()
            .unwrap();
        let pid_fn: u32 = superuser("select 'pg_backend_pid()'::regprocedure::oid")
            .await
            .trim()
            .parse()
            .unwrap();
        let p = proxy()
            .auth("trust")
            .pool("size = 1")
            .pool("queue_timeout = \"20s\"")
            .start()
            .await;
        let other = p.connect(U_TRUST).await.unwrap();
        let pid = backend_pid_of(&other).await;
        let mut raw = RawClient::connect(p.port(), U_TRUST).await;
        for round in 0..3 {
            // Two calls and a query in one write: three ReadyForQuery owed.
            let mut out = function_call(int4pl, &[40, round]);
            out.extend(function_call(pid_fn, &[]));
            out.extend(frame(b'Q', b"select 'after_fastpath'\0"));
            raw.send(&out).await;
            let first = raw.until_ready().await;
            let tags: Vec<u8> = first.iter().map(|m| m.0).collect();
            assert_eq!(tags, b"VZ", "round {round}: {first:?}");
            assert_eq!(function_result(&first[0].1), 40 + round);
            assert_eq!(first[1].1, b"I");
            let second = raw.until_ready().await;
            assert_eq!(
                second.iter().map(|m| m.0).collect::<Vec<u8>>(),
                b"VZ",
                "{second:?}"
            );
            assert_eq!(
                function_result(&second[0].1) as u32,
                pid,
                "pool of one: the same backend"
            );
            let third = raw.until_ready().await;
            assert_eq!(
                third.iter().map(|m| m.0).collect::<Vec<u8>>(),
                b"TDCZ",
                "{third:?}"
            );
            assert!(third[1].1.ends_with(b"after_fastpath"), "{third:?}");
            // The backend went back clean: the other client is served by it in between.
            let row = tokio::time::timeout(
                Duration::from_secs(10),
                other.query_one("select pg_backend_pid(), 1", &[]),
            )
            .await
            .expect("the other client is served")
            .unwrap();
            assert_eq!(row.get::<_, i32>(0) as u32, pid);
        }
        // A failing call (integer overflow) answers ErrorResponse and ReadyForQuery, and frees
        // the backend too.
        raw.send(&function_call(int4pl, &[i32::MAX, 1])).await;
        let failed = raw.until_ready().await;
        assert_eq!(
            failed.iter().map(|m| m.0).collect::<Vec<u8>>(),
            b"EZ",
            "{failed:?}"
        );
        assert!(
            String::from_utf8_lossy(&failed[0].1).contains("22003"),
            "{failed:?}"
        );
        assert_eq!(
            other
                .query_one("select 2", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            2
        );
        raw.send(&frame(b'X', b"")).await;
    })
    .await;
}

async fn backend_pid_of(c: &Client) -> u32 {
    backend_pid(c).await as u32
}

// ---------------------------------------------------------------------------------------------
// 10: session mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_state_for_one_client_and_resets_it_for_the_next() {
    bounded(async {
        let p = proxy()
            .pool("size = 1")
            .pool("mode = \"session\"")
            .pool("queue_timeout = \"20s\"")
            .start()
            .await;
        let c1 = p.connect(U_PLAIN2).await.unwrap();
        let pid = backend_pid(&c1).await;
        let default_work_mem: String = c1
            .query_one("select current_setting('work_mem')", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(default_work_mem, "7MB");
        c1.batch_execute(
            "set application_name = 'pp_session'; set work_mem = '7MB'; \
         create temp table pp_session_tmp (x int); \
         prepare pp_session_stmt as select 42",
        )
        .await
        .unwrap();
        // Several transactions later, all of it is still there.
        for i in 0..3 {
            c1.batch_execute(&format!(
                "begin; insert into pp_session_tmp values ({i}); commit"
            ))
            .await
            .unwrap();
        }
        let row = c1
            .query_one(
                "select current_setting('application_name'), current_setting('work_mem'), \
             (select count(*) from pp_session_tmp), pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "pp_session");
        assert_eq!(row.get::<_, String>(1), "7MB");
        assert_eq!(row.get::<_, i64>(2), 3);
        assert_eq!(
            row.get::<_, i32>(3),
            pid,
            "one backend for the whole session"
        );
        let rows = c1.simple_query("execute pp_session_stmt").await.unwrap();
        assert_eq!(simple_values(&rows), [Some("42".to_string())]);
        drop(c1);

        // The next client gets the same backend (pool of one), reset.
        let c2 = tokio::time::timeout(Duration::from_secs(15), p.connect(U_PLAIN2))
            .await
            .expect("second client logs in once the first has left")
            .unwrap();
        let row = c2
            .query_one(
                "select current_setting('application_name'), current_setting('work_mem'), \
             to_regclass('pg_temp.pp_session_tmp')::text, pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(3),
            pid,
            "pool of one: the same backend, so the reset matters"
        );
        assert_eq!(row.get::<_, String>(0), "", "application_name reset");
        assert_eq!(row.get::<_, String>(1), default_work_mem, "work_mem reset");
        assert_eq!(row.get::<_, Option<String>>(2), None, "temp table gone");
        let err = c2
            .simple_query("execute pp_session_stmt")
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("26000"),
            "prepared statement gone: {err}"
        );
    })
    .await;
}
