//! Logging in on both legs with every auth method, and simple and extended queries.

use crate::cluster::{PASSWORD, U_MD5, U_PLAIN2, U_SCRAM, U_TRUST};
use crate::harness::{message, proxy, sqlstate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_auth_method_accepts_the_right_password_and_refuses_a_wrong_one() {
    for kind in ["trust", "md5", "scram-sha-256"] {
        let p = proxy().auth(kind).start().await;
        // The backend leg differs per role: trust, md5 and scram on the PostgreSQL side.
        for user in [U_TRUST, U_MD5, U_SCRAM] {
            let c = p
                .connect(user)
                .await
                .unwrap_or_else(|e| panic!("{kind}/{user}: {e}"));
            let row = c.query_one("select current_user::text", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), user, "{kind}");
            let mut bad = p.config(user);
            bad.password("wrong");
            let result = crate::harness::connect_with(bad).await;
            if kind == "trust" {
                assert!(result.is_ok(), "trust ignores the password");
            } else {
                let Err(err) = result else {
                    panic!("wrong password refused");
                };
                assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{kind}/{user}");
                assert!(message(&err).contains(&format!(
                    "password authentication failed for user \"{user}\""
                )));
            }
        }
        // An unknown user fails exactly like a wrong password (no user enumeration).
        if kind != "trust" {
            let mut ghost = p.config("nobody");
            ghost.password(PASSWORD);
            let Err(err) = crate::harness::connect_with(ghost).await else {
                panic!("unknown user refused");
            };
            assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
            assert!(message(&err).contains("password authentication failed for user \"nobody\""));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_hash_and_scram_secret_entries_authenticate_clients() {
    let md5_entry = sluice::auth::md5::stored(U_MD5, PASSWORD);
    let scram_entry = sluice::auth::scram::ScramSecret::generate(PASSWORD).to_string();
    // An md5 hash also logs in to an md5 backend; a SCRAM secret can only check clients, so
    // its user logs in to a trust backend.
    let p = proxy()
        .auth("md5")
        .user_secret(U_MD5, &md5_entry)
        .user_secret(U_TRUST, &scram_entry)
        .start()
        .await;
    for user in [U_MD5, U_TRUST] {
        let c = p
            .connect(user)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(
            c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0),
            7
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_pass_through() {
    let p = proxy().pool("size = 2").start().await;
    let c = p.connect(U_PLAIN2).await.unwrap();
    let rows = c
        .simple_query("select 1; select 'a' || 'b' as x")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "ab"]);
    let row = c
        .query_one("select $1::int + $2::int, $3::text", &[&40i32, &2i32, &"z"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "z");
    let err = c.query("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    // The session lives on after an error.
    assert_eq!(
        c.query_one("select 5", &[]).await.unwrap().get::<_, i32>(0),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_taken_in_when_its_startup_packet_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy().start().await;
    // Connected but silent: the kernel holds it (TCP_DEFER_ACCEPT), so sluice has not
    // accepted it and counts no client.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", p.port()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        p.shared().client_count(),
        0,
        "a silent connection was accepted"
    );
    // Once it speaks, it is accepted and answered like any other.
    let startup = sluice::protocol::startup::startup_message(&[
        ("user", U_SCRAM),
        ("database", crate::cluster::DATABASE),
    ]);
    silent.write_all(&startup).await.unwrap();
    let mut tag = [0u8; 1];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        silent.read_exact(&mut tag),
    )
    .await
    .expect("an answer to the startup packet")
    .unwrap();
    assert_eq!(tag[0], b'R', "an authentication request");
    assert_eq!(p.shared().client_count(), 1);
    drop(silent);
    p.stop().await;
}
