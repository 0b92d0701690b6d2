//! The monotonic clock the forward path reads: `CLOCK_MONOTONIC` (the clock `std::time::Instant`
//! reads on Linux) kept as one count of nanoseconds.
//!
//! `std::time::Instant` keeps seconds and nanoseconds apart, so every `duration_since` borrows
//! across the two with checked arithmetic: about 55 instructions, eight or so per pgbench
//! transaction (callgrind, 2026-12-07). Here a difference is one subtraction. The API is the
//! subset of std's that sluice uses, so a module switches by its `use` line; tokio's timers
//! take one through `From`.

use std::ops::{Add, AddAssign, Sub};
use std::sync::OnceLock;
use std::time::Duration;

/// A reading of the monotonic clock, in nanoseconds since an unspecified start (boot).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Instant(u64);

impl Instant {
    #[inline]
    pub fn now() -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC is always supported on
        // Linux, and glibc answers it from the vDSO without a system call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        debug_assert_eq!(rc, 0);
        Instant(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later (as std's does since 1.60).
    #[inline]
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    #[inline]
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }

    #[inline]
    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }

    /// Whole microseconds from `earlier` to `self` (zero if `earlier` is later).
    #[inline]
    pub fn micros_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000
    }

    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let n = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(n).map(Instant)
    }

    pub fn checked_sub(self, d: Duration) -> Option<Instant> {
        let n = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(n).map(Instant)
    }

    /// The same moment as a `std::time::Instant` (both read CLOCK_MONOTONIC), through one
    /// pair of readings taken together at first use.
    pub fn to_std(self) -> std::time::Instant {
        static BASE: OnceLock<(std::time::Instant, Instant)> = OnceLock::new();
        let (std_base, base) = *BASE.get_or_init(|| (std::time::Instant::now(), Instant::now()));
        if self >= base {
            std_base + self.duration_since(base)
        } else {
            std_base - base.duration_since(self)
        }
    }
}

/// Saturates at about 584 years after boot instead of panicking: a deadline that far away
/// (a timeout configured as "300000d", say, which std's `Instant` would take) never comes.
impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(n))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        self.checked_sub(d)
            .expect("overflow when subtracting duration from instant")
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}

impl From<Instant> for std::time::Instant {
    fn from(at: Instant) -> std::time::Instant {
        at.to_std()
    }
}

impl From<Instant> for tokio::time::Instant {
    fn from(at: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(at.to_std())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_std() {
        let (a, sa) = (Instant::now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b, sb) = (Instant::now(), std::time::Instant::now());
        let (ours, theirs) = (b.duration_since(a), sb.duration_since(sa));
        let diff = ours.abs_diff(theirs);
        assert!(diff < Duration::from_millis(5), "{ours:?} vs {theirs:?}");
        assert!(ours >= Duration::from_millis(20));
        // Converted to std, the reading lands where std's own did, give or take the gap
        // between the two reads.
        let gap = b.to_std().max(sb) - b.to_std().min(sb);
        assert!(gap < Duration::from_millis(5), "{gap:?}");
        let back = a.to_std();
        assert!(back.max(sa) - back.min(sa) < Duration::from_millis(5));
    }

    #[test]
    fn arithmetic_matches_std_semantics() {
        let t = Instant::now();
        let later = t + Duration::from_micros(1_500);
        assert_eq!(later - t, Duration::from_micros(1_500));
        assert_eq!(later.micros_since(t), 1_500);
        assert_eq!(t.duration_since(later), Duration::ZERO);
        assert_eq!(t.micros_since(later), 0);
        assert_eq!(later - Duration::from_micros(1_500), t);
        assert!(later > t);
        assert_eq!(t.checked_add(Duration::MAX), None);
        assert_eq!(Instant(5).checked_sub(Duration::from_nanos(6)), None);
        let mut m = t;
        m += Duration::from_secs(1);
        assert_eq!(m.duration_since(t), Duration::from_secs(1));
    }

    #[test]
    fn a_deadline_beyond_the_clock_saturates_and_still_converts() {
        // The largest duration the config accepts ("18446744073709551615ms").
        let far = Instant::now() + Duration::from_millis(u64::MAX);
        assert_eq!(far, Instant(u64::MAX));
        assert!(far.duration_since(Instant::now()) > Duration::from_secs(500 * 365 * 86_400));
        let std_far: std::time::Instant = far.into();
        assert!(std_far > std::time::Instant::now());
        let _: tokio::time::Instant = far.into();
    }
}
