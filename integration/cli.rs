//! The `sluice` binary itself: `check --against` for review pipelines, and SIGHUP reloading a
//! running proxy.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{cluster, DATABASE, PASSWORD, U_SCRAM};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main_toml(port: u16, pool_size: usize, extra: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n[auth]\ntype = \"scram-sha-256\"\nfile = \"users.toml\"\n\
         [limits]\nmax_server_connections = 200\n[pool]\nsize = {pool_size}\n{extra}\n\
         [databases.{DATABASE}]\nport = {}\n",
        cluster().port()
    )
}

#[test]
fn check_against_prints_the_diff_and_refuses_the_100_to_10_cut() {
    let dir = temp_dir("check");
    std::fs::write(dir.join("users.toml"), "").unwrap();
    std::fs::write(dir.join("old.toml"), main_toml(6432, 100, "")).unwrap();
    std::fs::write(dir.join("cut.toml"), main_toml(6432, 10, "")).unwrap();
    std::fs::write(dir.join("grow.toml"), main_toml(6432, 120, "")).unwrap();
    let run = |new: &str| {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(dir.join(new))
            .arg("--against")
            .arg(dir.join("old.toml"))
            .output()
            .unwrap()
    };
    let cut = run("cut.toml");
    let out = String::from_utf8_lossy(&cut.stdout);
    assert_eq!(cut.status.code(), Some(1), "{out}");
    assert!(out.contains("pool.size: 100 -> 10"), "{out}");
    assert!(out.contains("verdict: would be refused"), "{out}");
    let grow = run("grow.toml");
    let out = String::from_utf8_lossy(&grow.stdout);
    assert_eq!(grow.status.code(), Some(0), "{out}");
    assert!(
        out.contains("pool.size: 100 -> 120") && out.contains("verdict: would be applied"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_reloads_a_running_sluice() {
    let dir = temp_dir("sighup");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("users.toml"),
        format!("[users.{U_SCRAM}]\npassword = \"{PASSWORD}\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("sluice.toml"), main_toml(port, 4, "")).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("sluice.toml"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if line.contains(needle) {
                    return Some(line);
                }
            }
        }
        None
    };
    assert!(wait_for("sluice listening").is_some(), "sluice started");
    std::fs::write(dir.join("sluice.toml"), main_toml(port, 6, "")).unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let applied = wait_for("SIGHUP:");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    let line = applied.expect("SIGHUP was answered");
    assert!(
        line.contains("applied version 2") && line.contains("pool.size: 4 -> 6"),
        "{line}"
    );
}
