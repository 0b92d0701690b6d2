//! `sluice quickstart`: a throwaway PostgreSQL from the local server binaries with sluice in
//! front of it, for trying sluice in one command. Ctrl-C stops both and removes every file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pgcluster::{ClusterOptions, PgCluster};
use crate::{Config, Proxy};

const USER: &str = "app";
const DATABASE: &str = "app";

/// Start PostgreSQL and sluice, print how to connect, and wait for Ctrl-C.
pub async fn run(listen: &str) -> Result<(), String> {
    let password = format!("app-{:08x}", rand::random::<u32>());
    let mut pg = tokio::task::spawn_blocking(start_cluster)
        .await
        .map_err(|e| e.to_string())??;
    let setup = format!(
        "CREATE ROLE {USER} LOGIN PASSWORD '{password}'; CREATE DATABASE {DATABASE} OWNER {USER};"
    );
    pg.psql("postgres", &setup)
        .map_err(|e| format!("setting up PostgreSQL: {e}"))?;
    let dir = pg
        .data_dir()
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join("sluice-conf");
    let config = write_config(&dir, listen, pg.port(), &password)?;
    let proxy = Proxy::start(config)
        .await
        .map_err(|e| format!("starting sluice on {listen}: {e}"))?;
    let addr = proxy.addr();
    println!(
        "PostgreSQL is running on port {} (data in {}).",
        pg.port(),
        pg.data_dir().display()
    );
    println!("sluice is listening on {addr}, transaction pooling, pool size 10.\n");
    println!("Connect with:\n");
    println!(
        "    psql \"postgresql://{USER}:{password}@{}:{}/{DATABASE}\"\n",
        addr.ip(),
        addr.port()
    );
    println!("Press Ctrl-C to stop both and remove the temporary files.");
    let _ = tokio::signal::ctrl_c().await;
    println!("\nstopping...");
    proxy.shutdown(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn start_cluster() -> Result<PgCluster, String> {
    let opts = ClusterOptions {
        hba: vec![format!("host all {USER} 127.0.0.1/32 scram-sha-256")],
        ..ClusterOptions::default()
    };
    let bin = opts.bin_dir.clone();
    PgCluster::start(opts).map_err(|e| {
        format!(
            "could not start PostgreSQL from {} ({e}); install the PostgreSQL 15 server or set SLUICE_PG_BIN",
            bin.display()
        )
    })
}

fn write_config(dir: &Path, listen: &str, pg_port: u16, password: &str) -> Result<Config, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let main = format!(
        r#"# Written by `sluice quickstart`.
[listen]
addr = "{listen}"
[auth]
type = "scram-sha-256"
file = "users.toml"
[pool]
mode = "transaction"
size = 10
[databases.{DATABASE}]
host = "127.0.0.1"
port = {pg_port}
"#
    );
    let users = format!("[users.{USER}]\npassword = \"{password}\"\n");
    let main_path: PathBuf = dir.join("sluice.toml");
    std::fs::write(&main_path, main).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("users.toml"), users).map_err(|e| e.to_string())?;
    Config::load(&main_path).map_err(|e| e.to_string())
}
