//! The watchers around a reload. A sampler keeps a short history of client health so an
//! apply has a "before" to compare with. The rollback watch samples health for
//! `reload.watch_window` after an apply and rolls back when the error share rises more than
//! `reload.rollback_error_rate`, or p99 latency grows more than `rollback_latency_factor`
//! times and above its floor, on `rollback_samples` consecutive samples (one blip does not
//! count). The file watcher reloads when the config files change, once they have been quiet
//! for `reload.debounce`, so an editor's save-in-three-writes is one reload.

use crate::clock::Instant;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::Reload;
use crate::health::Snapshot;
use crate::proxy::Shared;

/// Fewer requests than this in a sample teach nothing.
const MIN_REQUESTS: u64 = 5;
/// Samples kept.
const KEPT: usize = 3600;

/// Health snapshots over time.
#[derive(Default)]
pub(super) struct Samples {
    ring: Mutex<VecDeque<(Instant, Snapshot)>>,
}

impl Samples {
    fn push(&self, at: Instant, snapshot: Snapshot) {
        let mut ring = self.ring.lock().unwrap();
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back((at, snapshot));
    }

    /// Health over the last `window` (or as much of it as was sampled), up to `now`.
    pub(super) fn baseline(&self, now: Snapshot, window: Duration) -> Snapshot {
        let ring = self.ring.lock().unwrap();
        let since = Instant::now().checked_sub(window);
        let start = ring
            .iter()
            .find(|(at, _)| since.is_none_or(|s| *at >= s))
            .or(ring.front())
            .map(|(_, s)| *s)
            .unwrap_or_default();
        now.since(&start)
    }
}

/// Keep a health history, one snapshot per `reload.sample_interval`.
pub(super) fn spawn_sampler(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            let every = match weak.upgrade() {
                Some(shared) if !shared.shutdown.is_cancelled() => {
                    shared
                        .reloader
                        .samples
                        .push(Instant::now(), shared.health.snapshot());
                    shared.config.load().reload.sample_interval
                }
                _ => return,
            };
            tokio::time::sleep(every).await;
        }
    });
}

/// Watch health after an apply; roll back when it is worse on enough consecutive samples.
pub(super) fn spawn_rollback_watch(
    shared: &Arc<Shared>,
    version: u64,
    hash: String,
    before: Snapshot,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    let mut previous = shared.health.snapshot();
    let window = shared.config.load().reload.watch_window;
    tokio::spawn(async move {
        let deadline = Instant::now() + window;
        let mut streak = 0;
        while Instant::now() < deadline {
            let every = match weak.upgrade() {
                Some(s) => s.config.load().reload.sample_interval,
                None => return,
            };
            tokio::time::sleep(every).await;
            let Some(shared) = weak.upgrade() else { return };
            let now = shared.health.snapshot();
            let sample = now.since(&previous);
            previous = now;
            let reload = shared.config.load().reload.clone();
            let Some(why) = worse(&sample, &before, &reload) else {
                streak = 0;
                continue;
            };
            streak += 1;
            tracing::info!(
                version,
                "after reload: {why} (sample {streak} of {})",
                reload.rollback_samples
            );
            if streak >= reload.rollback_samples {
                tracing::warn!(version, "rolling back the config: {why}");
                if let Err(e) = shared.reloader.roll_back("watch", Some(hash), &why) {
                    tracing::error!("automatic rollback failed: {e}");
                }
                return;
            }
        }
    })
}

/// Why `sample` is worse than `before`, if it is.
fn worse(sample: &Snapshot, before: &Snapshot, r: &Reload) -> Option<String> {
    if sample.requests() < MIN_REQUESTS {
        return None;
    }
    let (now, then) = (sample.error_share(), before.error_share());
    if now - then > r.rollback_error_rate {
        return Some(format!(
            "error share {:.1}% vs {:.1}% before (reload.rollback_error_rate = {})",
            now * 100.0,
            then * 100.0,
            r.rollback_error_rate
        ));
    }
    let (Some(p99), Some(was)) = (sample.p99(), before.p99()) else {
        return None;
    };
    if p99 > r.rollback_latency_floor
        && p99.as_secs_f64() > was.as_secs_f64() * r.rollback_latency_factor
    {
        return Some(format!(
            "p99 latency {p99:?} vs {was:?} before (reload.rollback_latency_factor = {})",
            r.rollback_latency_factor
        ));
    }
    None
}

/// Reload when the config files change on disk (with `reload.watch = true`).
pub(super) fn spawn_file_watcher(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    // What the files look like now, as they were loaded: a change from here on counts.
    let config = shared.config.load_full();
    let mut seen = config
        .reload
        .watch
        .then(|| fingerprint(&config.source, &config.auth.file));
    tokio::spawn(async move {
        let mut changed_at: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(shared) = weak.upgrade() else { return };
            let config = shared.config.load_full();
            if shared.shutdown.is_cancelled() {
                return;
            }
            if !config.reload.watch {
                seen = None;
                continue;
            }
            let now = fingerprint(&config.source, &config.auth.file);
            if seen.as_ref().is_some_and(|s| *s != now) {
                changed_at = Some(Instant::now());
            }
            seen = Some(now);
            if changed_at.is_some_and(|t| t.elapsed() >= config.reload.debounce) {
                changed_at = None;
                if let Err(e) = shared.reloader.reload_from("watch", false) {
                    tracing::warn!("reload after a file change failed: {e}");
                }
            }
        }
    });
}

type Fingerprint = [(Option<SystemTime>, u64); 2];

fn fingerprint(main: &Path, users: &Path) -> Fingerprint {
    let stat = |p: &Path| std::fs::metadata(p).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [stat(main), stat(users)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    fn reload() -> Reload {
        Reload {
            watch: false,
            debounce: Duration::ZERO,
            max_shrink_percent: 50,
            watch_window: Duration::from_secs(30),
            rollback_error_rate: 0.05,
            rollback_latency_factor: 3.0,
            rollback_latency_floor: Duration::from_millis(50),
            sample_interval: Duration::from_secs(1),
            rollback_samples: 3,
        }
    }

    fn window(served: u64, failed: u64, latency_ms: u64) -> Snapshot {
        let h = Health::default();
        (0..served).for_each(|_| h.served(Duration::from_millis(latency_ms)));
        (0..failed).for_each(|_| h.failed());
        h.snapshot()
    }

    #[test]
    fn an_error_spike_or_a_latency_jump_is_worse() {
        let before = window(100, 0, 3);
        assert!(worse(&window(50, 20, 3), &before, &reload())
            .unwrap()
            .contains("error share"));
        assert!(worse(&window(50, 0, 300), &before, &reload())
            .unwrap()
            .contains("p99"));
        assert_eq!(worse(&window(50, 1, 4), &before, &reload()), None);
        // Slower, but under the floor: not worse.
        assert_eq!(worse(&window(50, 0, 20), &before, &reload()), None);
        // Too few requests to judge.
        assert_eq!(worse(&window(1, 3, 3), &before, &reload()), None);
    }
}
