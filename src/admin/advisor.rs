//! The pool advisor: warnings an operator should see before an outage. A pool that has had
//! clients queued or shed for 30 s running is named with its size and the size its load calls
//! for (again every 5 minutes while it lasts); clients that hold a server connection idle
//! inside a transaction for over 10 s are named (id, user, address) once per episode, since
//! that is how leaks starve a pool.

use crate::clock::Instant;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::pool::PoolId;

/// Saturated this long, continuously, before a warning.
pub const SATURATED_FOR: Duration = Duration::from_secs(30);
/// Repeat the warning this often while saturation lasts.
pub const REPEAT: Duration = Duration::from_secs(300);
/// Idle inside a transaction this long is suspicious.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// One pool, as one advisor pass sees it.
#[derive(Debug, Clone)]
pub struct PoolSignal {
    pub pool: PoolId,
    pub name: String,
    pub size: usize,
    pub waiting: usize,
    /// Sheds so far (cumulative).
    pub shed: u64,
    pub suggested: usize,
}

/// A client idle inside a transaction.
#[derive(Debug, Clone)]
pub struct IdleClient {
    pub id: u32,
    pub user: String,
    pub peer: SocketAddr,
    pub idle_for: Duration,
}

#[derive(Debug, Default)]
struct Saturation {
    since: Option<Instant>,
    last_shed: u64,
    warned_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Advisor {
    pools: HashMap<PoolId, Saturation>,
    /// Clients already named for their current idle-in-transaction episode.
    named: HashSet<u32>,
}

impl Advisor {
    /// Warnings about pools saturated for `SATURATED_FOR` as of `now`.
    pub fn pools(&mut self, now: Instant, signals: &[PoolSignal]) -> Vec<String> {
        let mut warnings = Vec::new();
        for s in signals {
            let st = self.pools.entry(s.pool).or_default();
            let shed_now = s.shed > st.last_shed;
            st.last_shed = s.shed;
            if s.waiting == 0 && !shed_now {
                *st = Saturation {
                    last_shed: s.shed,
                    ..Default::default()
                };
                continue;
            }
            let since = *st.since.get_or_insert(now);
            let due = st
                .warned_at
                .is_none_or(|at| now.duration_since(at) >= REPEAT);
            if now.duration_since(since) >= SATURATED_FOR && due {
                st.warned_at = Some(now);
                let suggestion = match s.suggested {
                    0 => String::new(),
                    n => format!(
                        "; its load calls for about {n} (Little's law, busiest 10 s of the last minute)"
                    ),
                };
                warnings.push(format!(
                    "pool \"{}\" saturated for {}s ({} clients waiting, {} refused so far): size {}{suggestion}",
                    s.name,
                    now.duration_since(since).as_secs(),
                    s.waiting,
                    s.shed,
                    s.size
                ));
            }
        }
        warnings
    }

    /// A warning naming clients newly seen idle in a transaction past the threshold.
    pub fn idle_in_transaction(&mut self, idle: &[IdleClient]) -> Option<String> {
        let long: Vec<&IdleClient> = idle
            .iter()
            .filter(|c| c.idle_for >= IDLE_IN_TRANSACTION)
            .collect();
        let still: HashSet<u32> = long.iter().map(|c| c.id).collect();
        self.named.retain(|id| still.contains(id));
        let fresh: Vec<String> = long
            .iter()
            .filter(|c| self.named.insert(c.id))
            .map(|c| {
                format!(
                    "client {} (user {}, {}) for {}s",
                    c.id,
                    c.user,
                    c.peer,
                    c.idle_for.as_secs()
                )
            })
            .collect();
        if fresh.is_empty() {
            return None;
        }
        Some(format!(
            "server connections held idle in transaction, a leak suspect: {}",
            fresh.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(waiting: usize, shed: u64) -> PoolSignal {
        PoolSignal {
            pool: 0,
            name: "app/alice".into(),
            size: 5,
            waiting,
            shed,
            suggested: 12,
        }
    }

    #[test]
    fn sustained_saturation_warns_once_then_every_few_minutes() {
        let mut a = Advisor::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(a.pools(at(0), &[signal(3, 0)]).is_empty());
        assert!(
            a.pools(at(20), &[signal(0, 4)]).is_empty(),
            "sheds keep it saturated"
        );
        let w = a.pools(at(31), &[signal(2, 4)]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("\"app/alice\"") && w[0].contains("size 5") && w[0].contains("about 12"),
            "{}",
            w[0]
        );
        assert!(a.pools(at(60), &[signal(2, 4)]).is_empty());
        assert_eq!(a.pools(at(332), &[signal(2, 4)]).len(), 1);
        // Quiet again: the clock restarts.
        assert!(a.pools(at(333), &[signal(0, 4)]).is_empty());
        assert!(a.pools(at(340), &[signal(1, 4)]).is_empty());
    }

    #[test]
    fn idle_in_transaction_clients_are_named_once_per_episode() {
        let mut a = Advisor::default();
        let client = |idle: u64| IdleClient {
            id: 7,
            user: "alice".into(),
            peer: "10.0.0.5:4000".parse().unwrap(),
            idle_for: Duration::from_secs(idle),
        };
        assert!(a.idle_in_transaction(&[client(5)]).is_none());
        let w = a.idle_in_transaction(&[client(11)]).unwrap();
        assert!(w.contains("client 7 (user alice, 10.0.0.5:4000)"), "{w}");
        assert!(a.idle_in_transaction(&[client(12)]).is_none());
        assert!(a.idle_in_transaction(&[]).is_none());
        assert!(a.idle_in_transaction(&[client(15)]).is_some());
    }
}
