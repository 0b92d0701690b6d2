//! The PostgreSQL cluster shared by every integration test.
//!
//! All integration tests run in one process and share one throwaway cluster,
//! started on first use by [`cluster()`]. Statics are never dropped, so an
//! `atexit` hook stops it and removes its directory when the test binary
//! exits; if the process is killed instead, the server still dies with it
//! (see `sluice::pgcluster`).
//!
//! Roles (all with password [`PASSWORD`]) and how they authenticate over TCP
//! to 127.0.0.1:
//!
//! | role       | stored as     | pg_hba method   |
//! |------------|---------------|-----------------|
//! | `u_trust`  | scram-sha-256 | trust           |
//! | `u_md5`    | md5           | md5             |
//! | `u_scram`  | scram-sha-256 | scram-sha-256   |
//! | `u_plain2` | scram-sha-256 | scram-sha-256   |
//! | `postgres` | (superuser)   | trust           |
//!
//! Each has all privileges on database [`DATABASE`] and its `public` schema.

// Not every test file uses every helper.
#![allow(dead_code)]

use std::sync::OnceLock;

use sluice::pgcluster::{ClusterOptions, PgCluster};

/// The password of every test role.
pub const PASSWORD: &str = "sluice-test-pw";
/// The test database, owned by `postgres`.
pub const DATABASE: &str = "sluice_test";
/// Role whose pg_hba method is `trust`.
pub const U_TRUST: &str = "u_trust";
/// Role with an md5-hashed password and pg_hba method `md5`.
pub const U_MD5: &str = "u_md5";
/// Role with a SCRAM verifier and pg_hba method `scram-sha-256`.
pub const U_SCRAM: &str = "u_scram";
/// A second SCRAM role, for multi-user tests.
pub const U_PLAIN2: &str = "u_plain2";
/// All test roles.
pub const ROLES: [&str; 4] = [U_TRUST, U_MD5, U_SCRAM, U_PLAIN2];

pub struct TestCluster {
    pub pg: PgCluster,
}

impl TestCluster {
    pub fn host(&self) -> &str {
        self.pg.host()
    }

    pub fn port(&self) -> u16 {
        self.pg.port()
    }
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The shared cluster, started (and populated) on first call.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        let pg = start().unwrap_or_else(|e| panic!("starting the test PostgreSQL cluster: {e}"));
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        TestCluster { pg }
    })
}

fn start() -> std::io::Result<PgCluster> {
    let opts = ClusterOptions {
        max_connections: 300,
        hba: vec![
            format!("host all {U_MD5} 127.0.0.1/32 md5"),
            format!("host all {U_SCRAM} 127.0.0.1/32 scram-sha-256"),
            format!("host all {U_PLAIN2} 127.0.0.1/32 scram-sha-256"),
            format!("host all {U_TRUST} 127.0.0.1/32 trust"),
        ],
        ..ClusterOptions::default()
    };
    let pg = PgCluster::start(opts)?;
    pg.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {U_MD5} LOGIN PASSWORD '{PASSWORD}';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE {U_SCRAM} LOGIN PASSWORD '{PASSWORD}';
             CREATE ROLE {U_PLAIN2} LOGIN PASSWORD '{PASSWORD}';
             CREATE ROLE {U_TRUST} LOGIN PASSWORD '{PASSWORD}';
             CREATE DATABASE {DATABASE} OWNER postgres;"
        ),
    )?;
    let roles = ROLES.join(", ");
    pg.psql(
        DATABASE,
        &format!(
            "GRANT ALL ON DATABASE {DATABASE} TO {roles};
             GRANT ALL ON SCHEMA public TO {roles};"
        ),
    )?;
    Ok(pg)
}

extern "C" fn stop_at_exit() {
    // Never unwind out of an extern "C" function.
    let _ = std::panic::catch_unwind(|| {
        if let Some(c) = CLUSTER.get() {
            c.pg.shutdown();
        }
    });
}

/// Run SQL as the superuser in [`DATABASE`]; panics on error.
pub fn psql_super(sql: &str) -> String {
    cluster()
        .pg
        .psql(DATABASE, sql)
        .unwrap_or_else(|e| panic!("psql as postgres failed for {sql:?}: {e}"))
}

/// Number of client backends currently connected as `user`.
pub fn backends_for(user: &str) -> usize {
    let out = psql_super(&format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename = '{}' AND backend_type = 'client backend'",
        user.replace('\'', "''")
    ));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("unexpected count {out:?}: {e}"))
}
