//! Integration tests: one test binary, one shared PostgreSQL cluster.

mod admin;
mod admission;
mod basics;
mod cli;
mod cluster;
mod harness;
mod pgbench;
mod pipelining;
mod pools;
mod prepared;
mod protocol_paths;
mod reload;

use cluster::{cluster, psql_super, DATABASE, PASSWORD, ROLES, U_MD5, U_SCRAM};

/// Connect directly (not through sluice) as `user` with `password` via psql.
fn direct_login(user: &str, password: &str) -> bool {
    let c = cluster();
    std::process::Command::new("psql")
        .args(["-X", "-At", "-c", "select 1", "-h", c.host()])
        .args(["-p", &c.port().to_string(), "-U", user, "-d", DATABASE])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("running psql")
        .status
        .success()
}

#[test]
fn cluster_starts() {
    let c = cluster();
    assert_eq!(
        c.pg.psql(DATABASE, "select current_user").unwrap(),
        "postgres"
    );
    assert_eq!(
        psql_super(&format!(
            "select rolname || ':' || left(rolpassword, 3) from pg_authid \
             where rolname in ('{U_MD5}', '{U_SCRAM}') order by rolname"
        )),
        "u_md5:md5\nu_scram:SCR"
    );
    for user in ROLES {
        assert!(
            direct_login(user, PASSWORD),
            "{user} with the right password"
        );
    }
    assert!(!direct_login(U_MD5, "wrong"));
    assert!(!direct_login(U_SCRAM, "wrong"));
    assert!(direct_login("u_trust", "wrong"), "u_trust is trusted");
}
