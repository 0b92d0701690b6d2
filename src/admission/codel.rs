//! Controlled delay for a pool's wait queue, after Facebook's CoDel-for-queues: watch the
//! shortest wait in each interval. If even the shortest exceeded the target, the queue is
//! standing, not absorbing a burst: serve newest first (they can still make their deadlines)
//! and shed waiters older than twice the target, so admitted work stays fast and the rest
//! fails fast instead of everyone timing out.
//!
//! The wait measured is the head of the queue's (its oldest waiter's) at each hand-out, not
//! the wait of whoever was served: once serving newest first, the served wait is near zero
//! even while the queue stands. And once overloaded, shedding keeps the head young on
//! purpose, so overload ends only when the queue actually empties during an interval;
//! otherwise the detector would flip back to FIFO every other interval.

use crate::clock::Instant;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Codel {
    interval: Duration,
    target: Duration,
    window_start: Instant,
    /// Shortest head-of-queue wait at a hand-out in the current window.
    min_wait: Option<Duration>,
    /// The queue was empty at some hand-out in the current window.
    drained: bool,
    /// Waiters were shed in the current window: an empty queue then proves nothing.
    shed: bool,
    overloaded: bool,
}

impl Codel {
    pub fn new(interval: Duration, target: Duration, now: Instant) -> Codel {
        Codel {
            interval,
            target,
            window_start: now,
            min_wait: None,
            drained: false,
            shed: false,
            overloaded: false,
        }
    }

    /// Waiters were shed: the queue emptied only because of it.
    pub fn shed(&mut self) {
        self.shed = true;
    }

    /// A backend was handed out while the head of the queue had waited `head` (zero when
    /// nobody was waiting).
    /// `oldest_waiting` is the head's age after the hand-out (None: the queue is empty).
    pub fn served(&mut self, head: Duration, now: Instant, oldest_waiting: Option<Duration>) {
        self.roll(now, oldest_waiting);
        self.min_wait = Some(self.min_wait.map_or(head, |m| m.min(head)));
        self.drained |= oldest_waiting.is_none();
    }

    /// Close the window once an interval has passed. With nobody served in it, the oldest
    /// waiter's age stands in for the shortest wait.
    pub fn roll(&mut self, now: Instant, oldest_waiting: Option<Duration>) {
        // A head that has waited a whole interval means the queue has stood that long:
        // no need to wait for the window to close to say so.
        if !self.overloaded && oldest_waiting.is_some_and(|w| w > self.interval) {
            self.overloaded = true;
            self.window_start = now;
            self.min_wait = None;
            self.drained = false;
            self.shed = false;
            return;
        }
        if now.duration_since(self.window_start) < self.interval {
            return;
        }
        self.overloaded = if self.overloaded {
            // Over only once a window drains by itself, without shedding anyone.
            let drained_by_itself = self.drained && !self.shed;
            let still_queueing = oldest_waiting.is_some() || self.shed;
            !drained_by_itself && still_queueing
        } else {
            let shortest = self.min_wait.or(oldest_waiting);
            shortest.is_some_and(|m| m > self.target)
        };
        self.window_start = now;
        self.min_wait = None;
        self.drained = false;
        self.shed = false;
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
        // Shedding keeps the head young, but the queue never empties: still overloaded.
        c.served(MS, t0 + 150 * MS, Some(MS));
        c.roll(t0 + 200 * MS, Some(2 * MS));
        assert!(c.overloaded());
        // The queue empties, but only because waiters were shed: still overloaded.
        c.shed();
        c.served(MS, t0 + 250 * MS, None);
        c.roll(t0 + 300 * MS, None);
        assert!(c.overloaded());
        // A window that drains without shedding anyone ends it.
        c.served(MS, t0 + 350 * MS, None);
        c.roll(t0 + 400 * MS, None);
        assert!(!c.overloaded());
    }

    #[test]
    fn a_head_older_than_the_interval_is_overload_at_once() {
        let t0 = Instant::now();
        let mut c = Codel::new(100 * MS, 5 * MS, t0);
        c.served(Duration::ZERO, t0 + 10 * MS, None);
        c.roll(t0 + 60 * MS, Some(101 * MS));
        assert!(c.overloaded(), "mid-window");
    }

    #[test]
    fn waiting_with_nobody_served_is_overload() {
        let t0 = Instant::now();
        let mut c = Codel::new(100 * MS, 5 * MS, t0);
        c.roll(t0 + 100 * MS, Some(90 * MS));
        assert!(c.overloaded());
    }
}
