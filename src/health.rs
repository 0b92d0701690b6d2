//! What clients experience, recorded cheaply so a reload can be judged by it: every
//! transaction's outcome (served, or refused / timed out / failed by sluice) and its latency
//! (queue wait plus transaction time) in a fixed-bucket histogram. Snapshots of the
//! cumulative counts are compared over windows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds; the last bucket is unbounded.
const BOUNDS_US: [u64; 16] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    2_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

#[derive(Default)]
pub struct Health {
    served: AtomicU64,
    failed: AtomicU64,
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
}

impl Health {
    /// A transaction was served; `latency` runs from its first message to its end.
    pub fn served(&self, latency: Duration) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// sluice refused, timed out or failed a client's request.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// Cumulative counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub served: u64,
    pub failed: u64,
    pub buckets: [u64; BOUNDS_US.len() + 1],
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            served: self.served - earlier.served,
            failed: self.failed - earlier.failed,
            buckets: std::array::from_fn(|i| self.buckets[i] - earlier.buckets[i]),
        }
    }

    pub fn requests(&self) -> u64 {
        self.served + self.failed
    }

    /// Share of requests sluice refused, timed out or failed (0 with no requests).
    pub fn error_share(&self) -> f64 {
        match self.requests() {
            0 => 0.0,
            n => self.failed as f64 / n as f64,
        }
    }

    /// The 99th percentile of served latency, as the upper bound of its bucket.
    pub fn p99(&self) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 99).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(2 * BOUNDS_US[BOUNDS_US.len() - 1]);
                return Some(Duration::from_micros(us));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_give_error_share_and_p99() {
        let h = Health::default();
        let before = h.snapshot();
        for _ in 0..98 {
            h.served(Duration::from_millis(3));
        }
        h.served(Duration::from_millis(40));
        h.served(Duration::from_millis(400));
        h.failed();
        let w = h.snapshot().since(&before);
        assert_eq!(w.requests(), 101);
        assert!((w.error_share() - 1.0 / 101.0).abs() < 1e-9);
        assert_eq!(w.p99(), Some(Duration::from_millis(50)));
        assert_eq!(Snapshot::default().p99(), None);
        assert_eq!(Snapshot::default().error_share(), 0.0);
    }
}
