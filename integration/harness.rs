//! Starting sluice for a test: a config written to a temp dir (so the real loader runs),
//! pointed at the shared cluster, served in-process on a free port.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use sluice::{Config, Proxy};

use crate::cluster::{cluster, DATABASE, PASSWORD, ROLES};

pub struct TestProxy {
    pub proxy: Option<Proxy>,
    pub dir: PathBuf,
}

/// Builds a sluice config for a test, section by section, as TOML lines.
pub struct ProxyBuilder {
    auth: String,
    limits: Vec<String>,
    pool: Vec<String>,
    database: Vec<String>,
    users: Vec<(String, String)>,
    user_options: Vec<(String, String)>,
    admins: Vec<String>,
    reload: Vec<String>,
}

pub fn proxy() -> ProxyBuilder {
    ProxyBuilder {
        user_options: vec![],
        admins: vec![],
        reload: vec![],
        auth: "scram-sha-256".into(),
        limits: vec![],
        pool: vec![],
        database: vec![],
        users: ROLES
            .iter()
            .map(|r| (r.to_string(), PASSWORD.to_string()))
            .collect(),
    }
}

impl ProxyBuilder {
    pub fn auth(mut self, kind: &str) -> Self {
        self.auth = kind.into();
        self
    }
    pub fn limits(mut self, line: &str) -> Self {
        self.limits.push(line.into());
        self
    }
    pub fn pool(mut self, line: &str) -> Self {
        self.pool.push(line.into());
        self
    }
    pub fn database(mut self, line: &str) -> Self {
        self.database.push(line.into());
        self
    }
    /// Add a line to a user's users.toml entry (e.g. "weight = 2").
    pub fn user_option(mut self, user: &str, line: &str) -> Self {
        self.user_options.push((user.into(), line.into()));
        self
    }
    /// Lines for the [reload] section.
    pub fn reload_section(mut self, lines: &str) -> Self {
        self.reload.push(lines.into());
        self
    }
    /// List a user in auth.admin_users.
    pub fn admin(mut self, user: &str) -> Self {
        self.admins.push(user.into());
        self
    }
    /// Replace a user's users.toml password entry (plain, md5 hash or SCRAM secret).
    pub fn user_secret(mut self, user: &str, secret: &str) -> Self {
        self.users.retain(|(u, _)| u != user);
        self.users.push((user.into(), secret.into()));
        self
    }

    pub fn toml(&self) -> (String, String) {
        let c = cluster();
        let main = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ntype = \"{}\"\nfile = \"users.toml\"\nadmin_users = {:?}\n\
             [limits]\n{}\n[pool]\n{}\n[databases.{DATABASE}]\nhost = \"127.0.0.1\"\nport = {}\n{}\n",
            self.auth,
            self.admins,
            self.limits.join("\n"),
            self.pool.join("\n"),
            c.port(),
            self.database.join("\n"),
        ) + &format!("[reload]\n{}\n", self.reload.join("\n"));
        let users = self
            .users
            .iter()
            .map(|(u, p)| {
                let options: String = self
                    .user_options
                    .iter()
                    .filter(|(o, _)| o == u)
                    .map(|(_, line)| format!("{line}\n"))
                    .collect();
                format!("[users.{u}]\npassword = \"{p}\"\n{options}")
            })
            .collect::<String>();
        (main, users)
    }

    pub async fn start(self) -> TestProxy {
        let (main, users) = self.toml();
        let dir = std::env::temp_dir().join(format!("sluice-it-{:016x}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sluice.toml"), main).unwrap();
        std::fs::write(dir.join("users.toml"), users).unwrap();
        let config = Config::load(&dir.join("sluice.toml")).expect("test config is valid");
        let proxy = Proxy::start(config).await.expect("sluice starts");
        TestProxy {
            proxy: Some(proxy),
            dir,
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

impl TestProxy {
    pub fn port(&self) -> u16 {
        self.proxy.as_ref().unwrap().addr().port()
    }

    pub fn url(&self, user: &str) -> String {
        format!(
            "postgresql://{user}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.port()
        )
    }

    pub fn config(&self, user: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port())
            .user(user)
            .password(PASSWORD)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connect through sluice with tokio-postgres.
    pub async fn connect(
        &self,
        user: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect_with(self.config(user)).await
    }

    pub fn stats(&self) -> Vec<sluice::pool::PoolStats> {
        self.proxy.as_ref().unwrap().shared().pools.all_stats()
    }

    pub async fn stop(mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown(Duration::from_secs(5)).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.shared().pools.close();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn connect_with(
    config: tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
/// Run psql against `url` (extra args after the connection) with `env` set, optionally
/// feeding stdin; its output once it exits (within 30 s).
pub async fn psql_with_env(
    url: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("running psql");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
            let _ = pipe.shutdown().await;
        });
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("psql {args:?} did not finish within 30s"))
        .expect("psql output")
}

pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// The server's message of a tokio-postgres error, if the server sent one.
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A bare protocol client for tests that must choose statement names or message order
/// exactly. Logs in with trust (use a proxy with `.auth("trust")`).
pub struct RawClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One backend message: its tag and body.
pub type Message = (u8, Vec<u8>);

impl RawClient {
    pub async fn connect(port: u16, user: &str) -> RawClient {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let startup = sluice::protocol::startup::startup_message(&[
            ("user", user),
            ("database", crate::cluster::DATABASE),
        ]);
        stream.write_all(&startup).await.unwrap();
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        let login = c.until_ready().await;
        assert!(
            login.iter().any(|(t, _)| *t == b'R'),
            "logged in: {login:?}"
        );
        c
    }

    /// Connect and write `bytes` in one write, reading nothing yet: a client that sends its
    /// login and first request without waiting for the answers.
    pub async fn pipelined(port: u16, bytes: &[u8]) -> RawClient {
        let mut c = RawClient {
            stream: tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
            buf: Vec::new(),
        };
        c.send(bytes).await;
        c
    }

    /// Read `n` bytes outside any message (the one-byte answer to an SSLRequest).
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut out))
            .await
            .expect("reply within 10s")
            .unwrap();
        out
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let m = self.next().await;
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    pub async fn next(&mut self) -> Message {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let frame: Vec<u8> = self.buf.drain(..len + 1).collect();
                    return (frame[0], frame[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("reply within 10s")
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Frames for RawClient.
pub mod frames {
    use bytes::BytesMut;
    use sluice::protocol::{extended, messages};

    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        extended::build_parse(&mut b, name, sql, &[0, 0]);
        b.to_vec()
    }
    pub fn bind(statement: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        // No parameters, no result formats.
        extended::build_bind(&mut b, "", statement, &[0, 0, 0, 0, 0, 0]);
        b.to_vec()
    }
    pub fn execute() -> Vec<u8> {
        vec![b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]
    }
    pub fn close(name: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        extended::build_target(&mut b, b'C', b'S', name);
        b.to_vec()
    }
    pub fn describe(name: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        extended::build_target(&mut b, b'D', b'S', name);
        b.to_vec()
    }
    pub fn sync() -> Vec<u8> {
        extended::SYNC.to_vec()
    }
    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        messages::query(&mut b, sql);
        b.to_vec()
    }
    /// Tags of a reply, as a string ("12DCZ").
    pub fn tags(reply: &[super::Message]) -> String {
        reply.iter().map(|(t, _)| *t as char).collect()
    }
    /// The SQLSTATE of the first error in a reply.
    pub fn sqlstate(reply: &[super::Message]) -> Option<String> {
        let (_, body) = reply.iter().find(|(t, _)| *t == b'E')?;
        Some(sluice::protocol::PgError::decode(body).code)
    }
}

impl TestProxy {
    /// Rewrite this proxy's config files from `builder` (without reloading).
    pub fn write_config(&self, builder: &ProxyBuilder) {
        let (main, users) = builder.toml();
        std::fs::write(self.dir.join("sluice.toml"), main).unwrap();
        std::fs::write(self.dir.join("users.toml"), users).unwrap();
    }

    /// Rewrite the config files from `builder` and reload, as an admin's RELOAD would.
    pub fn reload_with(&self, builder: &ProxyBuilder, force: bool) -> Result<String, String> {
        self.write_config(builder);
        self.shared().reloader.reload_from("test", force)
    }

    pub fn shared(&self) -> &std::sync::Arc<sluice::proxy::Shared> {
        self.proxy.as_ref().unwrap().shared()
    }
}
