//! Operator controls over the pools, for the admin console: PAUSE and RESUME (one database or
//! all), RECONNECT and KILL (retire a database's backends), a view of idle backends for SHOW
//! SERVERS, and backend connect outcomes for the metrics. The state lives under the pool lock
//! (see `State`); when nothing is paused each check costs one branch.

use crate::clock::Instant;
use std::net::SocketAddr;
use std::time::Duration;

use super::{PoolId, PoolSet};
use crate::server::{ServerConn, ServerError};

/// How a backend connect attempt ended; also the label of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Ok,
    /// The server could not be reached (refused, reset, unreachable).
    Unreachable,
    /// No login within `pool.connect_timeout`.
    Timeout,
    /// The server refused sluice's login, or sluice had no password it accepts.
    Refused,
}

impl ConnectOutcome {
    pub const ALL: [ConnectOutcome; 4] = [
        ConnectOutcome::Ok,
        ConnectOutcome::Unreachable,
        ConnectOutcome::Timeout,
        ConnectOutcome::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnectOutcome::Ok => "ok",
            ConnectOutcome::Unreachable => "unreachable",
            ConnectOutcome::Timeout => "timeout",
            ConnectOutcome::Refused => "refused",
        }
    }

    pub(super) fn of(result: &Result<ServerConn, ServerError>) -> ConnectOutcome {
        match result {
            Ok(_) => ConnectOutcome::Ok,
            Err(ServerError::Io(_)) => ConnectOutcome::Unreachable,
            Err(ServerError::Timeout) => ConnectOutcome::Timeout,
            Err(ServerError::Rejected(_) | ServerError::Login(_)) => ConnectOutcome::Refused,
        }
    }
}

/// An idle backend as SHOW SERVERS lists it.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub id: u64,
    pub pool: PoolId,
    pub database: String,
    pub user: String,
    /// The backend's process id (from its BackendKeyData).
    pub pid: u32,
    pub addr: SocketAddr,
    pub local: Option<SocketAddr>,
    /// How long ago it connected and was last used.
    pub age: Duration,
    pub idle_for: Duration,
}

impl ServerView {
    pub(super) fn of(server: &ServerConn, database: &str, user: &str, now: Instant) -> Self {
        ServerView {
            id: server.id,
            pool: server.pool_id(),
            database: database.to_string(),
            user: user.to_string(),
            pid: server.key.pid,
            addr: server.addr,
            local: server.stream.local_addr().ok(),
            age: now.duration_since(server.created),
            idle_for: now.duration_since(server.last_used),
        }
    }
}

/// What the pool lock guards for the operator: which databases are paused, and connect
/// outcomes.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// PAUSE without a database: every database is paused.
    all: bool,
    /// Databases paused by name.
    paused: Vec<String>,
    /// Connect attempts, in `ConnectOutcome::ALL` order.
    pub(super) connects: [u64; 4],
}

impl Control {
    /// Does `database` hold new checkouts? One branch when nothing is paused.
    #[inline]
    pub(super) fn is_paused(&self, database: &str) -> bool {
        self.all || (!self.paused.is_empty() && self.paused.iter().any(|d| d == database))
    }

    pub(super) fn pause(&mut self, database: Option<&str>) {
        match database {
            None => self.all = true,
            Some(d) if !self.paused.iter().any(|p| p == d) => self.paused.push(d.to_string()),
            Some(_) => {}
        }
    }

    /// Lift a pause. Resuming one database while all are paused is refused: say which.
    pub(super) fn resume(&mut self, database: Option<&str>) -> Result<(), String> {
        match database {
            None => {
                if !self.all && self.paused.is_empty() {
                    return Err("nothing is paused".into());
                }
                self.all = false;
                self.paused.clear();
            }
            Some(_) if self.all => {
                return Err("every database is paused: RESUME without a database name".into())
            }
            Some(d) => {
                let before = self.paused.len();
                self.paused.retain(|p| p != d);
                if self.paused.len() == before {
                    return Err(format!("database \"{d}\" is not paused"));
                }
            }
        }
        Ok(())
    }

    pub(super) fn count_connect(&mut self, outcome: ConnectOutcome) {
        self.connects[outcome as usize] += 1;
    }
}

/// Does a pool of `database` fall under a command naming `target` (None: every database)?
pub(super) fn covers(target: Option<&str>, database: &str) -> bool {
    target.is_none_or(|t| t == database)
}

impl PoolSet {
    /// PAUSE: hold new checkouts of `database` (None: all) in the queue and close its idle
    /// backends; busy ones close as their transactions end.
    pub fn pause(&self, database: Option<&str>) {
        let mut doomed = Vec::new();
        {
            let mut st = self.lock();
            st.pause(database, &mut doomed);
            // Capacity the closed backends held may serve other databases' waiters.
            st.grant_freed(&self.me, Instant::now());
        }
        drop(doomed);
    }

    /// RESUME: let held checkouts through again.
    pub fn resume(&self, database: Option<&str>) -> Result<(), String> {
        let mut st = self.lock();
        st.resume(database)?;
        st.grant_freed(&self.me, Instant::now());
        Ok(())
    }

    /// RECONNECT: close idle backends of `database` (None: all) now and busy ones as they
    /// come free; new ones connect on demand.
    pub fn reconnect(&self, database: Option<&str>) {
        let mut doomed = Vec::new();
        {
            let mut st = self.lock();
            st.reconnect(database, &mut doomed);
            st.grant_freed(&self.me, Instant::now());
        }
        drop(doomed);
    }

    pub fn is_paused(&self, database: &str) -> bool {
        self.lock().is_paused(database)
    }

    /// Backends of `database` (None: all) serving clients or connecting.
    pub fn in_use(&self, database: Option<&str>) -> usize {
        self.lock().in_use_of(database)
    }

    /// Idle backends, for SHOW SERVERS.
    pub fn idle_servers(&self) -> Vec<ServerView> {
        self.lock().idle_servers(Instant::now())
    }

    /// Backend connect attempts by outcome, in `ConnectOutcome::ALL` order.
    pub fn connects(&self) -> [u64; 4] {
        self.lock().connect_counts()
    }

    /// The current connect-target generation of a pool: backends made under an older one
    /// close at checkin.
    pub fn generation(&self, pool: PoolId) -> u64 {
        self.lock().target(pool).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_by_name_and_all() {
        let mut c = Control::default();
        assert!(!c.is_paused("app"));
        c.pause(Some("app"));
        assert!(c.is_paused("app") && !c.is_paused("other"));
        assert!(c.resume(Some("other")).is_err());
        c.resume(Some("app")).unwrap();
        assert!(!c.is_paused("app"));
        c.pause(None);
        assert!(c.is_paused("other"));
        assert!(c.resume(Some("other")).is_err());
        c.resume(None).unwrap();
        assert!(c.resume(None).is_err());
    }
}
