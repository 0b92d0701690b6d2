//! A fixed-bucket latency histogram for the metrics: one relaxed atomic add per bucket hit,
//! plus the sum and count, so any number of sessions record into it without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus `le`); +Inf is implied.
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is over every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram read at one moment, cumulative as Prometheus exposes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or under each bound in `BOUNDS`, then the total count.
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_accumulate() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // on the first bound: le="0.0005"
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[5], 1, "30ms is over 25ms");
        assert_eq!(s.cumulative[6], 2);
        assert_eq!(s.cumulative[BOUNDS.len() - 1], 2);
        assert_eq!(s.count(), 3);
        assert!((s.sum_seconds - 60.0305).abs() < 1e-9);
    }
}
