//! The door: every new client passes it after its startup packet and before authentication.
//! Client caps per database and per user, connection rates per (user, database) and per
//! client address (GCRA, from governor), and a harder limit on failed logins per address so
//! a password guesser is refused before it costs a PBKDF2. Admin users always get in.

use crate::clock::Instant;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::protocol::error::{code, PgError};

/// Why the door said no; also the label of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ClientCap,
    DatabaseCap,
    UserCap,
    UserDatabaseRate,
    AddressRate,
    AuthFailures,
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::ClientCap,
        Refusal::DatabaseCap,
        Refusal::UserCap,
        Refusal::UserDatabaseRate,
        Refusal::AddressRate,
        Refusal::AuthFailures,
        Refusal::Draining,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::ClientCap => "client_cap",
            Refusal::DatabaseCap => "database_client_cap",
            Refusal::UserCap => "user_client_cap",
            Refusal::UserDatabaseRate => "connection_rate_user_database",
            Refusal::AddressRate => "connection_rate_address",
            Refusal::AuthFailures => "auth_failures",
            Refusal::Draining => "draining",
        }
    }
}

type Keyed<K> = DefaultKeyedRateLimiter<K>;

struct Rates {
    per_user_database: Keyed<(String, String)>,
    per_address: Keyed<IpAddr>,
}

#[derive(Default)]
struct Counts {
    databases: HashMap<String, usize>,
    users: HashMap<String, usize>,
}

pub struct Door {
    counts: Mutex<Counts>,
    rates: ArcSwapOption<Rates>,
    failures: ArcSwapOption<Keyed<IpAddr>>,
    /// The limits the rate limiters were built from, to rebuild them only when they change.
    built_from: Mutex<(u32, u32, u32)>,
    /// Addresses refused until the given time for failing to log in too often.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    refused: [AtomicU64; 7],
    draining: AtomicBool,
    /// Database and user names, shared by the `Admitted` of every client using them.
    names: crate::params::Interner,
}

/// A client counted against its database's and user's caps until dropped.
pub struct Admitted {
    door: Arc<Door>,
    database: Arc<str>,
    user: Arc<str>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut guard = self.door.counts.lock().unwrap();
        let c = &mut *guard;
        for (map, key) in [
            (&mut c.databases, &self.database),
            (&mut c.users, &self.user),
        ] {
            if let Some(n) = map.get_mut(&**key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&**key);
                }
            }
        }
    }
}

impl Door {
    pub fn new(config: &Config) -> Door {
        let door = Door {
            counts: Mutex::new(Counts::default()),
            rates: ArcSwapOption::empty(),
            failures: ArcSwapOption::empty(),
            built_from: Mutex::new((u32::MAX, u32::MAX, u32::MAX)),
            blocked: Mutex::new(HashMap::new()),
            refused: Default::default(),
            draining: AtomicBool::new(false),
            names: Default::default(),
        };
        door.reconfigure(config);
        door
    }

    /// Take new rate limits from a reloaded config (state is kept when they did not change).
    pub fn reconfigure(&self, config: &Config) {
        let l = &config.limits;
        let wanted = (
            l.connection_rate,
            l.connection_burst,
            l.auth_failures_per_minute,
        );
        let mut built = self.built_from.lock().unwrap();
        if *built == wanted {
            return;
        }
        *built = wanted;
        let rates = NonZeroU32::new(l.connection_rate).map(|rate| {
            let double = rate.saturating_mul(NonZeroU32::new(2).unwrap());
            let burst = NonZeroU32::new(l.connection_burst).unwrap_or(double);
            let quota = Quota::per_second(rate).allow_burst(burst);
            Arc::new(Rates {
                per_user_database: RateLimiter::keyed(quota),
                per_address: RateLimiter::keyed(quota),
            })
        });
        self.rates.store(rates);
        let failures = NonZeroU32::new(l.auth_failures_per_minute)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        self.failures.store(failures);
    }

    /// Clients of `database` now connected.
    pub fn clients_of(&self, database: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .databases
            .get(database)
            .copied()
            .unwrap_or(0)
    }

    /// Let a client in, or say why not. Admin users skip every limit but draining.
    pub fn enter(
        self: &Arc<Self>,
        config: &Config,
        peer: IpAddr,
        database: &str,
        user: &str,
    ) -> Result<Admitted, PgError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(self.refuse(Refusal::Draining, draining()));
        }
        let admin = config.auth.admin_users.iter().any(|a| a == user);
        if !admin {
            self.check_blocked(peer)?;
            self.check_rates(peer, database, user)?;
        }
        let mut c = self.counts.lock().unwrap();
        if !admin {
            let db_cap = config
                .databases
                .get(database)
                .and_then(|d| d.max_client_connections);
            if let Some(cap) =
                db_cap.filter(|&cap| c.databases.get(database).copied().unwrap_or(0) >= cap)
            {
                let key = format!("databases.{database}.max_client_connections ({cap})");
                return Err(self.refuse(Refusal::DatabaseCap, too_many(&key)));
            }
            let user_cap = config
                .users
                .get(user)
                .and_then(|u| u.max_client_connections);
            if let Some(cap) =
                user_cap.filter(|&cap| c.users.get(user).copied().unwrap_or(0) >= cap)
            {
                let key = format!("users.{user}.max_client_connections ({cap})");
                return Err(self.refuse(Refusal::UserCap, too_many(&key)));
            }
        }
        count_in(&mut c.databases, database);
        count_in(&mut c.users, user);
        Ok(Admitted {
            door: self.clone(),
            database: self.names.name(database),
            user: self.names.name(user),
        })
    }

    fn check_rates(&self, peer: IpAddr, database: &str, user: &str) -> Result<(), PgError> {
        let rates = self.rates.load();
        let Some(rates) = rates.as_deref() else {
            return Ok(());
        };
        let now = DefaultClock::default().now();
        if let Err(wait) = rates.per_address.check_key(&peer) {
            let err = rate_limited(
                &format!("new connections from {peer}"),
                wait.wait_time_from(now),
            );
            return Err(self.refuse(Refusal::AddressRate, err));
        }
        let key = (user.to_string(), database.to_string());
        if let Err(wait) = rates.per_user_database.check_key(&key) {
            let what = format!("new connections for user \"{user}\" to database \"{database}\"");
            return Err(self.refuse(
                Refusal::UserDatabaseRate,
                rate_limited(&what, wait.wait_time_from(now)),
            ));
        }
        Ok(())
    }

    fn check_blocked(&self, peer: IpAddr) -> Result<(), PgError> {
        let mut blocked = self.blocked.lock().unwrap();
        match blocked.get(&peer) {
            Some(&until) if until > Instant::now() => {
                let wait = until - Instant::now();
                let err = PgError::fatal(
                    code::TOO_MANY_CONNECTIONS,
                    format!("too many failed logins from {peer}: limits.auth_failures_per_minute reached"),
                )
                .with_hint(retry_hint(wait));
                drop(blocked);
                Err(self.refuse(Refusal::AuthFailures, err))
            }
            Some(_) => {
                blocked.remove(&peer);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A login from `peer` failed; past the per-minute budget, refuse the address for a while.
    pub fn auth_failed(&self, peer: IpAddr) {
        let failures = self.failures.load();
        let Some(failures) = failures.as_deref() else {
            return;
        };
        if let Err(wait) = failures.check_key(&peer) {
            let wait = wait.wait_time_from(DefaultClock::default().now());
            self.blocked
                .lock()
                .unwrap()
                .insert(peer, Instant::now() + wait);
            tracing::warn!(%peer, "too many failed logins; refusing this address for {wait:?}");
        }
    }

    /// Count a refusal made elsewhere (the global client cap).
    pub fn refuse(&self, why: Refusal, err: PgError) -> PgError {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        err
    }

    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|&r| (r, self.refused[r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Clients admitted and not yet gone.
    pub fn admitted(&self) -> usize {
        self.counts.lock().unwrap().users.values().sum()
    }

    /// Refuse every new client with 57P03 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether new clients are refused because sluice is draining (for /readyz).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Forget rate-limit state for keys not seen lately, so memory stays bounded.
    pub fn tidy(&self) {
        if let Some(r) = self.rates.load().as_deref() {
            r.per_address.retain_recent();
            r.per_user_database.retain_recent();
        }
        if let Some(f) = self.failures.load().as_deref() {
            f.retain_recent();
        }
        let now = Instant::now();
        self.blocked.lock().unwrap().retain(|_, until| *until > now);
    }
}

/// One more under `name`; the name is copied only the first time it is counted.
fn count_in(counts: &mut HashMap<String, usize>, name: &str) {
    match counts.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            counts.insert(name.to_string(), 1);
        }
    }
}

fn too_many(limit: &str) -> PgError {
    PgError::fatal(
        code::TOO_MANY_CONNECTIONS,
        format!("sorry, too many clients already: {limit} reached"),
    )
    .with_hint("Retry with backoff; close idle connections or raise the limit.")
}

fn rate_limited(what: &str, wait: Duration) -> PgError {
    PgError::fatal(
        code::TOO_MANY_CONNECTIONS,
        format!("too many {what}: limits.connection_rate reached"),
    )
    .with_hint(retry_hint(wait))
}

fn draining() -> PgError {
    PgError::fatal(
        code::CANNOT_CONNECT_NOW,
        "sluice is draining: no new connections",
    )
    .with_hint("Connect to another sluice, or retry after the restart.")
}

fn retry_hint(wait: Duration) -> String {
    format!("Retry after {} ms.", wait.as_millis().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(main_extra: &str, users: &str) -> Config {
        let main = format!("[auth]\nadmin_users = [\"admin\"]\n{main_extra}\n[databases.app]\n");
        Config::parse(&main, std::path::Path::new("t.toml"), Some(users)).unwrap()
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn user_and_database_caps_count_live_clients() {
        let users = "[users.a]\npassword = \"x\"\nmax_client_connections = 1\n[users.admin]\npassword = \"x\"\nmax_client_connections = 1\n";
        let c = config("", users);
        let door = Arc::new(Door::new(&c));
        let first = door.enter(&c, LOCAL, "app", "a").unwrap();
        let err = door.enter(&c, LOCAL, "app", "a").err().unwrap();
        assert_eq!(err.code, "53300");
        assert!(err.message.contains("users.a.max_client_connections (1)"));
        // Admins always get in.
        let _a1 = door.enter(&c, LOCAL, "app", "admin").unwrap();
        let _a2 = door.enter(&c, LOCAL, "app", "admin").unwrap();
        drop(first);
        assert!(door.enter(&c, LOCAL, "app", "a").is_ok());
        assert_eq!(door.refusals()[Refusal::UserCap as usize].1, 1);
    }

    #[test]
    fn connection_rate_refuses_with_a_retry_hint() {
        let c = config("[limits]\nconnection_rate = 1\nconnection_burst = 2\n", "");
        let door = Arc::new(Door::new(&c));
        assert!(door.enter(&c, LOCAL, "app", "u").is_ok());
        assert!(door.enter(&c, LOCAL, "app", "u").is_ok());
        let err = door.enter(&c, LOCAL, "app", "u").err().unwrap();
        assert_eq!(err.code, "53300");
        assert!(err.hint.unwrap().starts_with("Retry after"));
    }

    #[test]
    fn failed_logins_block_the_address() {
        let c = config("[limits]\nauth_failures_per_minute = 2\n", "");
        let door = Arc::new(Door::new(&c));
        for _ in 0..3 {
            door.auth_failed(LOCAL);
        }
        let err = door.enter(&c, LOCAL, "app", "u").err().unwrap();
        assert!(err.message.contains("too many failed logins"));
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(door.enter(&c, other, "app", "u").is_ok());
    }

    #[test]
    fn draining_refuses_everyone_with_57p03() {
        let c = config("", "");
        let door = Arc::new(Door::new(&c));
        door.start_draining();
        assert_eq!(
            door.enter(&c, LOCAL, "app", "admin").err().unwrap().code,
            "57P03"
        );
    }
}
