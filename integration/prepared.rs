//! Transaction pooling that applications do not notice: named prepared statements from real
//! drivers over tiny pools, Close/DEALLOCATE/DISCARD per client, re-prepare after DDL, and
//! each kind of session state under each `pool.session_state`.

use std::time::Duration;

use tokio::process::Command;

use crate::cluster::{cluster, psql_super, PASSWORD, U_PLAIN2, U_SCRAM};
use crate::harness::{connect_with, message, proxy, psql_with_env, sqlstate, RawClient, TestProxy};

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.simple_query("select pg_backend_pid()")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_and_extended_with_50_clients_over_a_pool_of_4() {
    const DB: &str = "sluice_pgbench_prepared";
    let c = cluster();
    psql_super(&format!(
        "DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB} OWNER {U_PLAIN2};"
    ));
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            c.host(),
            "-p",
            &c.port().to_string(),
            "-U",
            U_PLAIN2,
            DB,
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let p = proxy()
        .pool("size = 4")
        .pool("queue_timeout = \"30s\"")
        .database(&format!("dbname = \"{DB}\""))
        .start()
        .await;
    for mode in ["prepared", "extended"] {
        let run = Command::new("pgbench")
            .args(["-M", mode, "-c", "50", "-j", "2", "-T", "4", "-n"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &p.port().to_string(),
                "-U",
                U_PLAIN2,
                crate::cluster::DATABASE,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout).to_string();
        let err = String::from_utf8_lossy(&run.stderr).to_string();
        assert!(run.status.success(), "pgbench -M {mode}: {out}\n{err}");
        let failed = out
            .lines()
            .find(|l| l.starts_with("number of failed transactions"))
            .unwrap_or("");
        assert!(
            failed.starts_with("number of failed transactions: 0 "),
            "-M {mode}: {out}"
        );
        let processed: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        assert!(processed > 100, "-M {mode} processed {processed}: {out}");
    }
    assert!(p.stats().iter().all(|s| s.open <= 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_from_many_clients_over_a_pool_of_2() {
    let p = proxy()
        .pool("size = 2")
        .pool("queue_timeout = \"30s\"")
        .start()
        .await;
    let mut tasks = Vec::new();
    for i in 0..20i32 {
        let cfg = p.config(U_SCRAM);
        tasks.push(tokio::spawn(async move {
            let c = connect_with(cfg).await.unwrap();
            let double = c.prepare("select $1::int * 2").await.unwrap();
            let concat = c
                .prepare("select $1::text || '-' || $2::text")
                .await
                .unwrap();
            for r in 0..10i32 {
                let row = c.query_one(&double, &[&(i * 100 + r)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), 2 * (i * 100 + r));
                let row = c
                    .query_one(&concat, &[&format!("c{i}"), &format!("r{r}")])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), format!("c{i}-r{r}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Twenty clients preparing the same two queries share two server-side statements.
    assert_eq!(p.proxy.as_ref().unwrap().shared().statements.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_with_its_statement_cache_over_a_pool_of_2() {
    use sqlx::Connection;
    let p = proxy()
        .pool("size = 2")
        .pool("queue_timeout = \"30s\"")
        .start()
        .await;
    let mut tasks = Vec::new();
    for i in 0..10i64 {
        let url = p.url(U_SCRAM);
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            for r in 0..10i64 {
                let (v, s): (i64, String) = sqlx::query_as("select $1::int8 + 1, $2::text")
                    .bind(i * 1000 + r)
                    .bind(format!("x{i}"))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!((v, s), (i * 1000 + r + 1, format!("x{i}")));
            }
            conn.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_statement_follows_its_client_to_another_backend() {
    let p = proxy().pool("size = 2").start().await;
    let a = p.connect(U_SCRAM).await.unwrap();
    let other = p.connect(U_SCRAM).await.unwrap();
    let stmt = a
        .prepare("select $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    let first = a.query_one(&stmt, &[&1i32]).await.unwrap();
    // Idle backends are reused last-in first-out, so `other` gets the one `a` just used, and
    // holds it in a transaction.
    other.batch_execute("begin").await.unwrap();
    assert_eq!(pid(&other).await, first.get::<_, i32>(1));
    let second = a.query_one(&stmt, &[&41i32]).await.unwrap();
    assert_eq!(second.get::<_, i32>(0), 42);
    assert_ne!(
        second.get::<_, i32>(1),
        first.get::<_, i32>(1),
        "served by another backend"
    );
    other.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_deallocate_and_discard_all_act_for_that_client_only() {
    use crate::harness::frames::*;
    let p = proxy().auth("trust").pool("size = 1").start().await;
    let mut a = RawClient::connect(p.port(), U_SCRAM).await;
    let mut b = RawClient::connect(p.port(), U_SCRAM).await;
    // Both clients name a statement "s1"; each has its own.
    for (c, sql) in [(&mut a, "select 11"), (&mut b, "select 22")] {
        c.send(&[parse("s1", sql), sync()].concat()).await;
        assert_eq!(tags(&c.until_ready().await), "1Z");
    }
    let run = [bind("s1"), execute(), sync()].concat();
    a.send(&run).await;
    let reply = a.until_ready().await;
    assert_eq!(tags(&reply), "2DCZ");
    assert_eq!(reply[1].1[6..], *b"11");
    // A second Parse of a name in use: PostgreSQL's 42P05, and the batch is skipped to Sync.
    a.send(&[parse("s1", "select 33"), bind("s1"), execute(), sync()].concat())
        .await;
    let reply = a.until_ready().await;
    assert_eq!(
        (tags(&reply).as_str(), sqlstate(&reply).as_deref()),
        ("EZ", Some("42P05"))
    );
    // DEALLOCATE: a's s1 is gone, b's is not.
    a.send(&query("DEALLOCATE s1")).await;
    let reply = a.until_ready().await;
    assert_eq!(tags(&reply), "CZ");
    assert_eq!(&reply[0].1[..10], b"DEALLOCATE");
    a.send(&run).await;
    assert_eq!(sqlstate(&a.until_ready().await).as_deref(), Some("26000"));
    b.send(&run).await;
    let reply = b.until_ready().await;
    assert_eq!(reply[1].1[6..], *b"22");
    // DEALLOCATE of a name the client never had: PostgreSQL's own error.
    a.send(&query("DEALLOCATE nope")).await;
    assert_eq!(sqlstate(&a.until_ready().await).as_deref(), Some("26000"));
    // Close frees the name at once; CloseComplete even for a name that does not exist.
    b.send(&[close("s1"), close("never"), sync()].concat())
        .await;
    assert_eq!(tags(&b.until_ready().await), "33Z");
    b.send(&run).await;
    assert_eq!(sqlstate(&b.until_ready().await).as_deref(), Some("26000"));
    b.send(&[parse("s1", "select 44"), bind("s1"), execute(), sync()].concat())
        .await;
    let reply = b.until_ready().await;
    assert_eq!(tags(&reply), "12DCZ");
    assert_eq!(reply[2].1[6..], *b"44");
    // DISCARD ALL forgets all of a's statements, and b's still work.
    a.send(&[parse("s2", "select 55"), parse("s3", "select 66"), sync()].concat())
        .await;
    assert_eq!(tags(&a.until_ready().await), "11Z");
    a.send(&query("DISCARD ALL")).await;
    assert_eq!(tags(&a.until_ready().await), "CZ");
    a.send(&[bind("s2"), execute(), sync()].concat()).await;
    assert_eq!(sqlstate(&a.until_ready().await).as_deref(), Some("26000"));
    b.send(&run).await;
    assert_eq!(b.until_ready().await[1].1[6..], *b"44");
    // Describe of a statement prepared on another backend than the one now serving.
    b.send(&[describe("s1"), sync()].concat()).await;
    assert_eq!(tags(&b.until_ready().await), "tTZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_type_change_fails_once_then_the_statement_works_again() {
    use crate::harness::frames::*;
    psql_super(&format!(
        "DROP TABLE IF EXISTS ddl_t; CREATE TABLE ddl_t (a int); INSERT INTO ddl_t VALUES (1); \
         GRANT ALL ON ddl_t TO {U_SCRAM};"
    ));
    // A raw client: drivers such as tokio-postgres check rows against the description they
    // cached at prepare time, which is the driver's business, not the pooler's.
    let p = proxy().auth("trust").pool("size = 1").start().await;
    let mut c = RawClient::connect(p.port(), U_SCRAM).await;
    c.send(&[parse("s1", "select * from ddl_t"), sync()].concat())
        .await;
    assert_eq!(tags(&c.until_ready().await), "1Z");
    let run = [bind("s1"), execute(), sync()].concat();
    c.send(&run).await;
    assert_eq!(tags(&c.until_ready().await), "2DCZ");
    psql_super("ALTER TABLE ddl_t ADD COLUMN b int");
    c.send(&run).await;
    let reply = c.until_ready().await;
    assert_eq!(sqlstate(&reply).as_deref(), Some("0A000"), "{reply:?}");
    // The next attempt re-prepares and sees both columns, without an endless loop of errors.
    c.send(&run).await;
    let reply = c.until_ready().await;
    assert_eq!(tags(&reply), "2DCZ");
    assert_eq!(
        u16::from_be_bytes([reply[1].1[0], reply[1].1[1]]),
        2,
        "two columns now"
    );
    c.send(&run).await;
    assert_eq!(tags(&c.until_ready().await), "2DCZ");
}

/// Each kind of session state, and the statement that shows it is still there.
const STATE_KINDS: &[(&str, &str)] = &[
    ("SET work_mem = '7MB'", "show work_mem"),
    (
        "LISTEN sluice_ch",
        "select count(*) from pg_listening_channels()",
    ),
    (
        "select pg_advisory_lock(4242)",
        "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
    ),
    (
        "PREPARE sq AS select 1",
        "select count(*) from pg_prepared_statements where name = 'sq'",
    ),
    (
        "BEGIN; DECLARE hc CURSOR WITH HOLD FOR select 1; COMMIT",
        "select count(*) from pg_cursors where name = 'hc'",
    ),
    (
        "CREATE TEMP TABLE tt (a int)",
        "select count(*) from pg_tables where tablename = 'tt' and schemaname like 'pg_temp%'",
    ),
];

async fn first_value(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        })
        .unwrap()
}

async fn state_proxy(policy: &str) -> TestProxy {
    proxy()
        .pool("size = 1")
        .pool("queue_timeout = \"300ms\"")
        .pool(&format!("session_state = \"{policy}\""))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_the_client_to_its_backend() {
    for (statement, probe) in STATE_KINDS {
        let p = state_proxy("pin").await;
        let a = p.connect(U_PLAIN2).await.unwrap();
        let b = p.connect(U_PLAIN2).await.unwrap();
        let before = pid(&a).await;
        a.batch_execute(statement).await.unwrap();
        // a keeps its backend (and its state) between transactions...
        assert_eq!(pid(&a).await, before, "{statement}");
        let shown = first_value(&a, probe).await;
        assert!(
            shown != "0" && shown != "4MB",
            "{statement}: state kept ({shown})"
        );
        // ...so the pool of one has nothing for b until a leaves.
        let err = b.simple_query("select 1").await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{statement}");
        drop(a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The backend came back reset: b sees none of a's state.
        assert_eq!(pid(&b).await, before);
        let shown = first_value(&b, probe).await;
        assert!(
            shown == "0" || shown == "4MB",
            "{statement}: state reset for b ({shown})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_refused_with_an_error_naming_it() {
    for (statement, probe) in STATE_KINDS {
        let p = state_proxy("error").await;
        let a = p.connect(U_PLAIN2).await.unwrap();
        let err = a.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("0A000"),
            "{statement}: {}",
            message(&err)
        );
        assert!(
            message(&err).contains("pool.session_state"),
            "{}",
            message(&err)
        );
        // The session lives on, without the state.
        let _ = a.batch_execute("rollback").await;
        let shown = first_value(&a, probe).await;
        assert!(
            shown == "0" || shown == "4MB",
            "{statement}: nothing left behind ({shown})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_allowed_passes_through_unpinned() {
    for (statement, probe) in STATE_KINDS {
        let p = state_proxy("allow").await;
        let a = p.connect(U_PLAIN2).await.unwrap();
        let b = p.connect(U_PLAIN2).await.unwrap();
        a.batch_execute(statement).await.unwrap();
        // Not pinned: b gets the same (only) backend, and with it a's state, as PgBouncer.
        let shown = first_value(&b, probe).await;
        assert!(
            shown != "0" && shown != "4MB",
            "{statement}: state visible to b ({shown})"
        );
    }
}

/// psql as a LATIN1 client (`client_encoding = LATIN1`): `script` goes in on stdin as raw
/// bytes, which are not UTF-8 where they spell a letter past ASCII.
async fn latin1_psql(p: &TestProxy, script: &[u8]) -> std::process::Output {
    psql_with_env(
        &p.url(U_PLAIN2),
        &[],
        Some(script),
        &[("PGCLIENTENCODING", "LATIN1")],
    )
    .await
}

/// `SET search_path TO "café", public` with the é as LATIN1's one byte 0xE9: not UTF-8.
const LATIN1_SET: &[u8] = b"SET search_path TO \"caf\xe9\", public;\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_in_a_latin1_query_is_refused_like_any_other() {
    let p = state_proxy("error").await;
    let out = latin1_psql(&p, LATIN1_SET).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the SET ran: {err}");
    assert!(err.contains("pool.session_state"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_in_a_latin1_query_pins_and_never_reaches_another_client() {
    let p = state_proxy("pin").await;
    // a sets its search_path in LATIN1 and stays connected for three seconds.
    let mut script = LATIN1_SET.to_vec();
    script.extend_from_slice(b"\\! sleep 3\nshow search_path;\n");
    let a = latin1_psql(&p, &script);
    let b = async {
        // Once a's SET has run on the backend (the server shows its text in UTF8).
        let started = std::time::Instant::now();
        loop {
            let seen = tokio::task::spawn_blocking(|| {
                psql_super(
                    "select count(*) from pg_stat_activity \
                     where query like 'SET search_path TO \"caf\u{e9}\"%'",
                )
            })
            .await
            .unwrap();
            if seen.trim() == "1" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "a's SET never ran"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let b = p.connect(U_PLAIN2).await.unwrap();
        b.simple_query("show search_path").await
    };
    let (a, b) = tokio::join!(a, b);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    // a kept its backend and its setting (shown back to it in LATIN1)...
    assert_eq!(a.stdout, b"SET\n\"caf\xe9\", public\n");
    // ...so the pool of one had nothing for b while a was connected, rather than a backend
    // with a's search_path on it.
    match b {
        Err(err) => assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}"),
        Ok(rows) => panic!("b was served while a held the only backend: {rows:?}"),
    }
}

/// pgbench -M prepared, 2 clients, 50 transactions each, as a client in `encoding` running
/// `script`; panics unless every transaction ran without error.
async fn pgbench_prepared_script(p: &TestProxy, encoding: &str, script: &[u8]) {
    let dir = std::env::temp_dir().join(format!(
        "sluice-{}-{}-{encoding}",
        std::process::id(),
        p.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script.sql");
    std::fs::write(&file, script).unwrap();
    let run = Command::new("pgbench")
        .args([
            "-M", "prepared", "-c", "2", "-j", "1", "-t", "50", "-n", "-f",
        ])
        .arg(&file)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p.port().to_string(),
            "-U",
            U_PLAIN2,
        ])
        .arg(crate::cluster::DATABASE)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCLIENTENCODING", encoding)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{encoding}: {out}\n{err}");
    assert!(
        out.contains("number of transactions actually processed: 100/100"),
        "{encoding}: {out}\n{err}"
    );
    assert!(
        out.contains("number of failed transactions: 0 "),
        "{encoding}: {out}"
    );
}

/// A pgbench script that fails (division by zero) unless 'café' spelled with `e_acute`'s
/// bytes is `chars` characters long to the server.
fn length_check(e_acute: &[u8], chars: u32) -> Vec<u8> {
    let mut script = b"SELECT length('caf".to_vec();
    script.extend_from_slice(e_acute);
    script.extend_from_slice(
        format!("') AS n \\gset\n\\if :n != {chars}\nSELECT 1/0;\n\\endif\n").as_bytes(),
    );
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_in_two_client_encodings_are_two_statements() {
    // C3 A9 is é in UTF8 and the two letters Ã© in LATIN1: one text, two statements. Over a
    // pool of one, the LATIN1 clients come to the backend on which the UTF8 ones prepared
    // theirs; sharing it would run the UTF8 reading for them.
    let p = proxy()
        .pool("size = 1")
        .pool("queue_timeout = \"30s\"")
        .start()
        .await;
    pgbench_prepared_script(&p, "UTF8", &length_check(b"\xc3\xa9", 4)).await;
    pgbench_prepared_script(&p, "LATIN1", &length_check(b"\xc3\xa9", 5)).await;
    pgbench_prepared_script(&p, "UTF8", &length_check(b"\xc3\xa9", 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_with_latin1_text_are_renamed_and_shared() {
    // pgbench -M prepared names its statements and sends this text as it is: in LATIN1, with
    // the é as one byte. Two clients over a pool of one use the statement on one backend;
    // length() counts characters, 4 only when the server read the text as LATIN1.
    let p = proxy()
        .pool("size = 1")
        .pool("queue_timeout = \"30s\"")
        .start()
        .await;
    pgbench_prepared_script(&p, "LATIN1", &length_check(b"\xe9", 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_what_was_refused_whatever_quotes_and_dollars_it_holds() {
    // sluice raises the refusal through the server, in SQL that quotes the statement's name:
    // a name holding the dollar quote's tag, a quote and a backslash must come back in the
    // message as it was written, with standard_conforming_strings on and off.
    let p = state_proxy("error").await;
    let a = p.connect(U_PLAIN2).await.unwrap();
    let name = r#"x$sluice$'\y"#;
    for conforming in ["on", "off"] {
        a.batch_execute(&format!("SET standard_conforming_strings = {conforming}"))
            .await
            .unwrap();
        let err = a
            .batch_execute(&format!("SET \"{name}\" = 1"))
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("0A000"),
            "{conforming}: {}",
            message(&err)
        );
        assert!(
            message(&err).starts_with(&format!("SET {name} is not allowed")),
            "{conforming}: {}",
            message(&err)
        );
    }
}
