//! One backend connection: connect and log in, know its key and parameters, run the small
//! maintenance queries sluice needs (parameter sync, reset, rollback), and close politely.
//! Policy (when to connect, reuse or close) belongs to the pool, not here.

mod credentials;
mod login;
mod wire;

pub use credentials::SaltedPasswords;

use crate::clock::Instant;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::Secret;
use crate::params::Params;
use crate::pool::Slot;
use crate::protocol::error::{code, PgError};
use crate::protocol::messages::{self, tag};

/// Bytes an idle backend may have sent (ParameterStatus, notices) before it is closed instead
/// of handed out.
const IDLE_CHATTER_LIMIT: usize = 64 * 1024;

/// Where and as whom a pool's backends connect.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub secret: Option<Secret>,
    pub connect_timeout: Duration,
}

/// A backend's cancel key, from its BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: u32,
}

/// Why a backend could not be used.
#[derive(Debug)]
pub enum ServerError {
    Io(std::io::Error),
    Timeout,
    /// The server said no (bad password, too many connections, no such database...).
    Rejected(PgError),
    /// sluice cannot log in with what users.toml holds, or the server spoke out of turn.
    Login(String),
}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        ServerError::Io(e)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Io(e) => write!(f, "{e}"),
            ServerError::Timeout => write!(f, "timed out"),
            ServerError::Rejected(e) => write!(f, "server said: {}", e.message),
            ServerError::Login(s) => write!(f, "{s}"),
        }
    }
}

impl ServerError {
    /// The error a client sees when its backend could not be had.
    pub fn to_client(&self, database: &str) -> PgError {
        match self {
            ServerError::Rejected(e) => e.clone(),
            other => PgError::fatal(
                code::CONNECTION_FAILURE,
                format!(
                    "sluice could not connect to the server for database \"{database}\": {other}"
                ),
            ),
        }
    }
}

/// A backend as the pool holds and hands it out: boxed, so that handing it from the pool
/// to a client and back moves a pointer rather than the whole connection.
pub type Backend = Box<ServerConn>;

/// A logged-in backend connection. Owns a capacity slot in its pool: dropping the connection
/// closes it and gives the slot back.
pub struct ServerConn {
    pub stream: TcpStream,
    pub id: u64,
    pub key: BackendKey,
    pub addr: SocketAddr,
    /// What the backend has now: reported by ParameterStatus, or SET by sluice.
    pub params: Params,
    /// The versions of a client's parameters and of `params` when they were last made to
    /// match: while both are unchanged, the next bind by those parameters needs no comparison.
    pub synced: Option<(u64, u64)>,
    /// Read buffer for the forward path; kept with the backend so its allocation is reused.
    pub rbuf: BytesMut,
    /// Shared prepared statements this backend has (transaction mode).
    pub statements: crate::prepared::BackendStatements,
    pub created: Instant,
    pub last_used: Instant,
    /// When the current client got it (for the transaction time the adaptive limit learns).
    pub checked_out_at: Instant,
    /// The pool's connect-target generation it was made under.
    pub generation: u64,
    pub(crate) slot: Slot,
    /// Waiting clients whose queries the pool put on this backend to go after its user's own
    /// (`pool.pipeline_depth`). Empty except between such a checkout and the driver taking
    /// them.
    pub riders: Vec<crate::pool::Rider>,
}

impl fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerConn(#{} pid {})", self.id, self.key.pid)
    }
}

impl ServerConn {
    /// Connect and log in within the target's connect timeout.
    pub async fn connect(
        target: &ConnectTarget,
        salted: &SaltedPasswords,
        slot: Slot,
        id: u64,
    ) -> Result<ServerConn, ServerError> {
        let work = async {
            let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
            stream.set_nodelay(true)?;
            let addr = stream.peer_addr()?;
            let (key, params) = login::login(&mut stream, target, salted).await?;
            Ok::<_, ServerError>((stream, addr, key, params))
        };
        let (stream, addr, key, params) = tokio::time::timeout(target.connect_timeout, work)
            .await
            .map_err(|_| ServerError::Timeout)??;
        let now = Instant::now();
        Ok(ServerConn {
            stream,
            id,
            key,
            addr,
            params,
            synced: None,
            rbuf: BytesMut::new(),
            statements: Default::default(),
            created: now,
            last_used: now,
            checked_out_at: now,
            generation: 0,
            slot,
            riders: Vec::new(),
        })
    }

    /// Before handing an idle backend out: is it still there and quiet? Reads without
    /// waiting; takes in ParameterStatus and drops notices that arrived while it sat idle.
    pub fn check_idle(&mut self) -> bool {
        // Into the read buffer, empty between clients: a stack buffer would be cleared at
        // every checkout, and a socket with nothing to read (the usual case) is not touched.
        debug_assert!(self.rbuf.is_empty(), "bytes left from the last client");
        loop {
            match self.stream.try_read_buf(&mut self.rbuf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) | Ok(0) => return false,
                // Not what an idle server sends; and the read buffer stays bounded.
                Ok(_) if self.rbuf.len() > IDLE_CHATTER_LIMIT => return false,
                Ok(_) => {}
            }
        }
        if self.rbuf.is_empty() {
            return true;
        }
        let quiet = wire::absorb_async(&self.rbuf, &mut self.params);
        self.rbuf.clear();
        quiet
    }

    /// Run one simple query whose results nobody wants (SET, DISCARD ALL, ROLLBACK) and wait
    /// for ReadyForQuery. Returns the transaction status, or the server's error.
    pub async fn run_quiet(&mut self, sql: &str, limit: Duration) -> Result<u8, ServerError> {
        let work = async {
            let mut out = BytesMut::with_capacity(sql.len() + 6);
            messages::query(&mut out, sql);
            self.stream.write_all(&out).await?;
            let mut failure = None;
            let status = loop {
                let frame = wire::read_frame(&mut self.stream, &mut self.rbuf).await?;
                let body = &frame[5..];
                match frame[0] {
                    tag::READY_FOR_QUERY => break body.first().copied().unwrap_or(b'E'),
                    tag::ERROR_RESPONSE => failure = Some(PgError::decode(body)),
                    tag::PARAMETER_STATUS => wire::note_parameter(body, &mut self.params),
                    _ => {}
                }
            };
            match failure {
                Some(e) => Err(ServerError::Rejected(e)),
                None => Ok(status),
            }
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ServerError::Timeout)?
    }

    /// Read and discard the backend's output up to its next ReadyForQuery; return its status.
    pub async fn read_until_ready(&mut self) -> Result<u8, ServerError> {
        loop {
            let frame = wire::read_frame(&mut self.stream, &mut self.rbuf).await?;
            match frame[0] {
                tag::READY_FOR_QUERY => return Ok(frame.get(5).copied().unwrap_or(b'E')),
                tag::PARAMETER_STATUS => wire::note_parameter(&frame[5..], &mut self.params),
                _ => {}
            }
        }
    }

    pub async fn send_sync(&mut self) -> Result<(), ServerError> {
        Ok(self.stream.write_all(&[b'S', 0, 0, 0, 4]).await?)
    }

    /// Is this backend past its lifetime?
    pub fn expired(&self, now: Instant, lifetime: Duration) -> bool {
        now.duration_since(self.created) >= lifetime
    }

    /// The pool this backend counts against.
    pub fn pool_id(&self) -> usize {
        self.slot.pool()
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Say goodbye without waiting; the socket closes right after either way.
        let _ = self.stream.try_write(&messages::TERMINATE);
    }
}
