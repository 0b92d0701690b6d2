//! An adaptive concurrency limit for a pool, after the gradient limiter of Netflix's
//! concurrency-limits: compare a long-run average of transaction latency with the recent one.
//! When recent latency rises above the long-run level (the database is slowing down), the
//! gradient drops below 1 and the limit shrinks, so sluice stops piling work on; when latency
//! is steady the limit grows by a small queue allowance. The limit stays between
//! `adaptive_min` and the pool size.

use std::time::Duration;

/// How far recent latency may exceed the long-run level before the limit shrinks.
const TOLERANCE: f64 = 1.5;
/// Weight of a new limit against the old one.
const SMOOTHING: f64 = 0.2;
/// Long-run average: about the last 100 transactions.
const LONG_WINDOW: f64 = 100.0;
/// Recent average: about the last 10 transactions.
const SHORT_WINDOW: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct Gradient {
    limit: f64,
    min: f64,
    max: f64,
    long_rtt: Option<f64>,
    short_rtt: Option<f64>,
}

impl Gradient {
    /// `min` above `max` (a user's pool smaller than `adaptive_min`) is taken as `max`.
    pub fn new(min: usize, max: usize) -> Gradient {
        let min = min.min(max).max(1);
        Gradient {
            limit: max as f64,
            min: min as f64,
            max: max as f64,
            long_rtt: None,
            short_rtt: None,
        }
    }

    /// Backends that may be in use at once now.
    pub fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    /// A transaction took `rtt` with `in_flight` transactions running (itself included).
    pub fn sample(&mut self, rtt: Duration, in_flight: usize) {
        let rtt = rtt.as_secs_f64().max(1e-6);
        let short = ewma(self.short_rtt, rtt, SHORT_WINDOW);
        let mut long = ewma(self.long_rtt, rtt, LONG_WINDOW);
        // After a long slow spell, let the long-run level come back down faster.
        if long / short > 2.0 {
            long *= 0.95;
        }
        self.short_rtt = Some(short);
        self.long_rtt = Some(long);
        // Too little load to learn anything about the limit: leave it.
        if (in_flight as f64) < self.limit / 2.0 {
            return;
        }
        let gradient = (TOLERANCE * long / short).clamp(0.5, 1.0);
        let allowance = self.limit.sqrt();
        let target = self.limit * gradient + allowance;
        let next = self.limit * (1.0 - SMOOTHING) + target * SMOOTHING;
        self.limit = next.clamp(self.min, self.max);
    }
}

fn ewma(prev: Option<f64>, sample: f64, window: f64) -> f64 {
    match prev {
        None => sample,
        Some(p) => p + (sample - p) / window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn steady_latency_keeps_the_limit_at_the_pool_size() {
        let mut g = Gradient::new(2, 20);
        for _ in 0..500 {
            g.sample(10 * MS, 20);
        }
        assert_eq!(g.limit(), 20);
    }

    #[test]
    fn a_slowing_database_shrinks_the_limit_and_recovery_grows_it() {
        let mut g = Gradient::new(2, 20);
        for _ in 0..300 {
            g.sample(10 * MS, 20);
        }
        for _ in 0..40 {
            g.sample(100 * MS, 20);
        }
        let squeezed = g.limit();
        assert!(squeezed < 10, "limit {squeezed} after latency rose tenfold");
        assert!(squeezed >= 2);
        for _ in 0..2000 {
            g.sample(10 * MS, g.limit().max(1));
        }
        assert!(g.limit() > squeezed, "recovers to {}", g.limit());
    }

    #[test]
    fn a_floor_above_the_pool_size_does_not_panic() {
        let mut g = Gradient::new(5, 2);
        g.sample(10 * MS, 2);
        g.sample(500 * MS, 2);
        assert!(g.limit() <= 2);
    }

    #[test]
    fn light_load_teaches_nothing() {
        let mut g = Gradient::new(2, 20);
        for _ in 0..100 {
            g.sample(10 * MS, 20);
        }
        for _ in 0..100 {
            g.sample(500 * MS, 1);
        }
        assert_eq!(g.limit(), 20);
    }
}
