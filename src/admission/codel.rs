//! Controlled delay for a pool's wait queue, after Facebook's CoDel-for-queues: watch the
//! shortest wait in each interval. If even the shortest exceeded the target, the queue is
//! standing, not absorbing a burst: serve newest first (they can still make their deadlines)
//! and shed waiters older than twice the target, so admitted work stays fast and the rest
//! fails fast instead of everyone timing out.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Codel {
    interval: Duration,
    target: Duration,
    window_start: Instant,
    /// Shortest wait of a client served in the current window.
    min_wait: Option<Duration>,
    overloaded: bool,
}

impl Codel {
    pub fn new(interval: Duration, target: Duration, now: Instant) -> Codel {
        Codel {
            interval,
            target,
            window_start: now,
            min_wait: None,
            overloaded: false,
        }
    }

    /// A client got a backend after waiting `wait` (zero when one was free at once).
    pub fn served(&mut self, wait: Duration, now: Instant, oldest_waiting: Option<Duration>) {
        self.roll(now, oldest_waiting);
        self.min_wait = Some(self.min_wait.map_or(wait, |m| m.min(wait)));
    }

    /// Close the window once an interval has passed. With nobody served in it, the oldest
    /// waiter's age stands in for the shortest wait.
    pub fn roll(&mut self, now: Instant, oldest_waiting: Option<Duration>) {
        if now.duration_since(self.window_start) < self.interval {
            return;
        }
        let shortest = self.min_wait.or(oldest_waiting);
        self.overloaded = shortest.is_some_and(|m| m > self.target);
        self.window_start = now;
        self.min_wait = None;
    }

    pub fn overloaded(&self) -> bool {
        self.overloaded
    }

    /// While overloaded, waiters older than this are shed.
    pub fn shed_after(&self) -> Duration {
        self.target * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_that_drains_is_not_overload() {
        let t0 = Instant::now();
        let mut c = Codel::new(100 * MS, 5 * MS, t0);
        c.served(40 * MS, t0 + 10 * MS, None);
        c.served(Duration::ZERO, t0 + 50 * MS, None);
        c.roll(t0 + 101 * MS, None);
        assert!(!c.overloaded(), "someone got through at once");
    }

    #[test]
    fn a_standing_queue_is_overload_until_it_drains() {
        let t0 = Instant::now();
        let mut c = Codel::new(100 * MS, 5 * MS, t0);
        c.served(20 * MS, t0 + 10 * MS, Some(30 * MS));
        c.served(8 * MS, t0 + 60 * MS, Some(30 * MS));
        c.roll(t0 + 100 * MS, Some(30 * MS));
        assert!(c.overloaded());
        assert_eq!(c.shed_after(), 10 * MS);
        // Nobody served in the next window, but nobody waits long either.
        c.roll(t0 + 200 * MS, Some(2 * MS));
        assert!(!c.overloaded());
    }

    #[test]
    fn waiting_with_nobody_served_is_overload() {
        let t0 = Instant::now();
        let mut c = Codel::new(100 * MS, 5 * MS, t0);
        c.roll(t0 + 100 * MS, Some(90 * MS));
        assert!(c.overloaded());
    }
}
