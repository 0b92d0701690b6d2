//! Rates over recent time, per pool: the sampler records each pool's cumulative meters and
//! sheds once a second, and a window between two samples gives per-second rates, mean times,
//! and the pool size the observed load calls for.
//!
//! The suggestion is Little's law, L = λ·W: backends busy on average are the rate of
//! checkouts times the mean time a backend is held, plus the clients queued on average (the
//! same rate times the mean queue wait), plus the demand that was shed (its rate times the mean
//! hold time, since those clients would have held a backend too). With a fixed number of
//! clients in a closed loop this comes to that number of clients. A pool must carry its bursts,
//! not its average, so the suggestion is that of the busiest 10 s span of the last minute.

use crate::clock::Instant;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::meters::MeterReading;
use crate::pool::PoolId;

/// How far back suggestions look.
pub const SUGGESTION_WINDOW: Duration = Duration::from_secs(60);
/// The span Little's law is taken over; the busiest one counts.
const PEAK_SPAN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    reading: MeterReading,
    shed: u64,
}

/// What happened to one pool between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub elapsed: Duration,
    pub delta: MeterReading,
    pub shed: u64,
}

impl Window {
    fn between(first: &Sample, last: &Sample) -> Window {
        Window {
            elapsed: last.at.duration_since(first.at),
            delta: last.reading.since(&first.reading),
            shed: last.shed.saturating_sub(first.shed),
        }
    }

    /// `n` events over the window, per second.
    pub fn per_second(&self, n: u64) -> f64 {
        match self.elapsed.as_secs_f64() {
            s if s > 0.0 => n as f64 / s,
            _ => 0.0,
        }
    }

    /// Mean of `total_us` over `count` events, in microseconds (0 without events).
    pub fn mean_us(total_us: u64, count: u64) -> u64 {
        total_us.checked_div(count).unwrap_or(0)
    }

    /// The pool size this window's load calls for (Little's law, see the module doc); 0 when
    /// nothing was served in the window.
    pub fn suggested_size(&self) -> usize {
        let d = &self.delta;
        if d.checkouts == 0 {
            return 0;
        }
        let served = self.per_second(d.checkouts);
        let shed = self.per_second(self.shed);
        let held = d.held_us as f64 / d.checkouts as f64 / 1e6;
        let wait = d.wait_us as f64 / d.checkouts as f64 / 1e6;
        let busy = served * (held + wait) + shed * held;
        // Round to the nearest hundredth first, so 4.0000001 from float noise stays 4.
        let busy = (busy * 100.0).round() / 100.0;
        (busy.ceil() as usize).max(1)
    }
}

#[derive(Debug, Default)]
struct History {
    samples: VecDeque<Sample>,
}

/// Recent samples of every pool, by pool id.
#[derive(Debug, Default)]
pub struct Rates {
    pools: Mutex<Vec<History>>,
}

impl Rates {
    /// Record a pool's cumulative readings now, keeping `keep` of history.
    pub fn record(
        &self,
        pool: PoolId,
        at: Instant,
        reading: MeterReading,
        shed: u64,
        keep: Duration,
    ) {
        let mut pools = self.pools.lock().unwrap();
        if pools.len() <= pool {
            pools.resize_with(pool + 1, History::default);
        }
        let h = &mut pools[pool];
        h.samples.push_back(Sample { at, reading, shed });
        while h
            .samples
            .front()
            .is_some_and(|s| at.duration_since(s.at) > keep)
        {
            h.samples.pop_front();
        }
    }

    /// What happened over (up to) the last `span`, from the oldest sample within it to the
    /// newest. None until a pool has two samples.
    pub fn window(&self, pool: PoolId, span: Duration) -> Option<Window> {
        let pools = self.pools.lock().unwrap();
        let samples = &pools.get(pool)?.samples;
        let last = samples.back()?;
        let first = samples
            .iter()
            .find(|s| last.at.duration_since(s.at) <= span)?;
        if first.at == last.at {
            return None;
        }
        Some(Window::between(first, last))
    }

    /// The suggested size of `pool`: the largest over spans of `PEAK_SPAN` in the last
    /// minute (over at least half the history when there is less); 0 without traffic.
    pub fn suggested_size(&self, pool: PoolId) -> usize {
        let pools = self.pools.lock().unwrap();
        let Some(last) = pools.get(pool).and_then(|h| h.samples.back()) else {
            return 0;
        };
        let recent: Vec<&Sample> = pools[pool]
            .samples
            .iter()
            .filter(|s| last.at.duration_since(s.at) <= SUGGESTION_WINDOW)
            .collect();
        let span = PEAK_SPAN.min(last.at.duration_since(recent[0].at));
        let (mut best, mut j) = (0, 0);
        for (i, a) in recent.iter().enumerate() {
            // The span from `a`, or up to the newest sample when that is shorter.
            j = j.max(i);
            while j + 1 < recent.len() && recent[j].at.duration_since(a.at) < span {
                j += 1;
            }
            let b = recent[j];
            if b.at > a.at && b.at.duration_since(a.at) >= span / 2 {
                best = best.max(Window::between(a, b).suggested_size());
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(checkouts: u64, held_ms: u64, wait_ms: u64) -> MeterReading {
        MeterReading {
            checkouts,
            held_us: held_ms * 1000,
            wait_us: wait_ms * 1000,
            ..Default::default()
        }
    }

    #[test]
    fn littles_law_counts_busy_queued_and_shed_demand() {
        // 40 checkouts/s, each held 50ms and waiting 50ms: 4 backends' worth.
        let w = Window {
            elapsed: Duration::from_secs(10),
            delta: reading(400, 400 * 50, 400 * 50),
            shed: 0,
        };
        assert_eq!(w.suggested_size(), 4);
        // Plus 20 sheds/s that would each have held 50ms: one more.
        let shed = Window { shed: 200, ..w };
        assert_eq!(shed.suggested_size(), 5);
        // A quiet pool with a little work needs one; an idle one has no suggestion.
        let quiet = Window {
            delta: reading(10, 10, 0),
            ..w
        };
        assert_eq!(quiet.suggested_size(), 1);
        assert_eq!(Window::default().suggested_size(), 0);
    }

    #[test]
    fn windows_span_recorded_samples_and_forget_old_ones() {
        let r = Rates::default();
        let t0 = Instant::now();
        let keep = Duration::from_secs(3);
        assert!(r.window(2, keep).is_none());
        for i in 0..6u64 {
            let at = t0 + Duration::from_secs(i);
            r.record(2, at, reading(i * 10, 0, 0), i, keep);
        }
        let w = r.window(2, Duration::from_secs(2)).unwrap();
        assert_eq!(w.elapsed, Duration::from_secs(2));
        assert_eq!((w.delta.checkouts, w.shed), (20, 2));
        // Only 3s of history is kept.
        let w = r.window(2, Duration::from_secs(60)).unwrap();
        assert_eq!(w.elapsed, Duration::from_secs(3));
        assert_eq!(w.per_second(w.delta.checkouts), 10.0);
    }

    #[test]
    fn the_suggestion_is_the_busiest_span_not_the_average() {
        let r = Rates::default();
        let t0 = Instant::now();
        let keep = Duration::from_secs(60);
        // 20 quiet seconds, then 10 s of 40 checkouts/s each held 50ms and queued 50ms.
        let mut total = MeterReading::default();
        for s in 0..=30u64 {
            if s > 20 {
                total.checkouts += 40;
                total.held_us += 40 * 50_000;
                total.wait_us += 40 * 50_000;
            }
            r.record(0, t0 + Duration::from_secs(s), total, 0, keep);
        }
        assert_eq!(r.suggested_size(0), 4);
        assert!(
            r.window(0, keep).unwrap().suggested_size() < 4,
            "the average is lower"
        );
        assert_eq!(r.suggested_size(1), 0);
        // With less history than the span, a quiet start does not dilute it either.
        let r = Rates::default();
        let mut total = MeterReading::default();
        for s in 0..=4u64 {
            if s > 1 {
                total.checkouts += 40;
                total.held_us += 40 * 50_000;
                total.wait_us += 40 * 50_000;
            }
            r.record(0, t0 + Duration::from_secs(s), total, 0, keep);
        }
        assert_eq!(r.suggested_size(0), 4);
    }
}
