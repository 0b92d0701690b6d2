//! Hot reload: parse → validate → guard → diff → apply → watch → keep or roll back. A bad file
//! changes nothing; a change that cuts capacity too far is refused; a change that hurts is
//! undone by sluice itself within the watch window, with the numbers that showed it logged.
//!
//! Triggers (SIGHUP, the admin console's RELOAD, the file changing on disk) all come here.
//! One reload runs at a time. Applying swaps the config snapshot and reconfigures pools, the
//! door and the statement registry in place: nobody is disconnected.

pub mod guard;
mod watch;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::diff::{diff, Change};
use crate::config::Config;
use crate::proxy::{pool_settings, reserves, Shared};

/// Records kept for `SHOW RELOADS`.
const HISTORY: usize = 100;

/// One reload attempt, for `SHOW RELOADS`.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub trigger: String,
    /// The config version in force after this attempt.
    pub version: u64,
    /// Content hash of the files read (short hex).
    pub hash: String,
    pub summary: String,
    /// "applied", "unchanged", "refused: why", "rolled back: why".
    pub outcome: String,
}

/// Outcome counters, for the metrics.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    pub unchanged: AtomicU64,
    pub rollbacks: AtomicU64,
}

/// The config versions sluice knows.
struct Versions {
    version: u64,
    hash: String,
    /// The last known good config before the current one, for rolling back.
    previous: Option<(Arc<Config>, String)>,
    /// A file version rolled back automatically: the watcher does not apply it again until
    /// the file changes.
    rejected: Option<String>,
    /// The rollback watch of the latest apply.
    watch: Option<tokio::task::JoinHandle<()>>,
}

pub struct Reloader {
    shared: OnceLock<Weak<Shared>>,
    /// One reload at a time.
    turn: Mutex<()>,
    versions: Mutex<Versions>,
    history: Mutex<VecDeque<ReloadRecord>>,
    pub counts: ReloadCounts,
    samples: watch::Samples,
}

impl Reloader {
    pub fn new(config: &Config) -> Reloader {
        let hash = read_files(config)
            .map(|(m, u)| content_hash(&m, &u))
            .unwrap_or_default();
        Reloader {
            shared: OnceLock::new(),
            turn: Mutex::new(()),
            versions: Mutex::new(Versions {
                version: 1,
                hash,
                previous: None,
                rejected: None,
                watch: None,
            }),
            history: Mutex::new(VecDeque::new()),
            counts: ReloadCounts::default(),
            samples: watch::Samples::default(),
        }
    }

    /// Tie the reloader to its proxy and start the health sampler and the file watcher.
    pub fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
        watch::spawn_sampler(shared);
        watch::spawn_file_watcher(shared);
    }

    fn shared(&self) -> Result<Arc<Shared>, String> {
        self.shared
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| "sluice is shutting down".to_string())
    }

    pub fn version(&self) -> u64 {
        self.versions.lock().unwrap().version
    }

    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.lock().unwrap().iter().cloned().collect()
    }

    /// The admin console's RELOAD [FORCE].
    pub async fn reload(&self, force: bool) -> Result<String, String> {
        self.reload_from("admin", force)
    }

    /// Reload the config files now. `force` skips the guard rails.
    pub fn reload_from(&self, trigger: &str, force: bool) -> Result<String, String> {
        let shared = self.shared()?;
        let _turn = self.turn.lock().unwrap();
        let old = shared.config.load_full();
        let (main, users) = read_files(&old)
            .inspect_err(|e| self.record(trigger, "", "", &format!("refused: {e}")))?;
        let hash = content_hash(&main, &users);
        if trigger == "watch" && self.already_seen(&hash) {
            return Ok("unchanged".into());
        }
        let mut new = Config::parse(&main, &old.source, Some(&users)).map_err(|e| {
            tracing::error!(trigger, "config reload refused: {e}");
            self.record(trigger, &hash, "", &format!("refused: {e}"));
            e.to_string()
        })?;
        let restart = keep_restart_only(&old, &mut new);
        let changes = diff(&old, &new);
        if changes.is_empty() {
            self.counts.unchanged.fetch_add(1, Ordering::Relaxed);
            self.versions.lock().unwrap().hash = hash.clone();
            self.record(trigger, &hash, &restart.join("; "), "unchanged");
            return Ok(unchanged_message(&restart));
        }
        let summary = summarize(&changes);
        if !force {
            let violations = guard::check(&old, &new, |db| shared.door.clients_of(db));
            if !violations.is_empty() {
                let why = violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(trigger, "config reload refused by the guard rails: {why}");
                self.record(trigger, &hash, &summary, &format!("refused: {why}"));
                return Err(why);
            }
        }
        for change in &changes {
            tracing::info!(trigger, "config: {change}");
        }
        for note in &restart {
            tracing::warn!(trigger, "config: {note}");
        }
        let new = Arc::new(new);
        apply(&shared, &new);
        let version = self.applied(&shared, old, hash.clone(), &new);
        self.record(trigger, &hash, &summary, "applied");
        Ok(format!("applied version {version}: {summary}"))
    }

    fn already_seen(&self, hash: &str) -> bool {
        let v = self.versions.lock().unwrap();
        v.hash == hash || v.rejected.as_deref() == Some(hash)
    }

    /// Note a new version and start watching it.
    fn applied(&self, shared: &Arc<Shared>, old: Arc<Config>, hash: String, new: &Config) -> u64 {
        self.counts.applied.fetch_add(1, Ordering::Relaxed);
        let mut v = self.versions.lock().unwrap();
        let old_hash = std::mem::replace(&mut v.hash, hash.clone());
        v.previous = Some((old, old_hash));
        v.version += 1;
        if let Some(w) = v.watch.take() {
            w.abort();
        }
        let baseline = self
            .samples
            .baseline(shared.health.snapshot(), new.reload.watch_window);
        v.watch = Some(watch::spawn_rollback_watch(
            shared, v.version, hash, baseline,
        ));
        v.version
    }

    /// The admin console's ROLLBACK: back to the previous good version by hand.
    pub fn rollback(&self) -> Result<String, String> {
        self.roll_back("admin", None, "rolled back by hand")
    }

    /// Apply the previous good config. `bad` is the file version to stop the watcher from
    /// re-applying (for an automatic rollback).
    fn roll_back(&self, trigger: &str, bad: Option<String>, why: &str) -> Result<String, String> {
        let shared = self.shared()?;
        let _turn = self.turn.lock().unwrap();
        let mut v = self.versions.lock().unwrap();
        let Some((config, hash)) = v.previous.take() else {
            return Err("no previous version to roll back to".into());
        };
        let changes = diff(&shared.config.load(), &config);
        apply(&shared, &config);
        v.version += 1;
        v.hash = hash.clone();
        v.rejected = bad;
        if let Some(w) = v.watch.take() {
            w.abort();
        }
        let version = v.version;
        drop(v);
        self.counts.rollbacks.fetch_add(1, Ordering::Relaxed);
        let summary = summarize(&changes);
        self.record(trigger, &hash, &summary, &format!("rolled back: {why}"));
        Ok(format!("rolled back to version {version}: {summary}"))
    }

    fn record(&self, trigger: &str, hash: &str, summary: &str, outcome: &str) {
        if outcome.starts_with("refused") {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
        }
        let mut h = self.history.lock().unwrap();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(ReloadRecord {
            at: SystemTime::now(),
            trigger: trigger.to_string(),
            version: self.version(),
            hash: hash.to_string(),
            summary: summary.to_string(),
            outcome: outcome.to_string(),
        });
    }
}

/// Swap in `config` and reconfigure everything that holds a part of it, in place.
fn apply(shared: &Shared, config: &Arc<Config>) {
    shared.config.store(config.clone());
    let settings_for = |db: &str, user: &str| {
        config
            .databases
            .contains_key(db)
            .then(|| pool_settings(config, db, user))
    };
    shared.pools.reconfigure(
        config.limits.max_server_connections,
        reserves(config),
        settings_for,
    );
    shared.door.reconfigure(config);
    shared
        .statements
        .set_max_bytes(config.limits.prepared_statement_memory);
}

/// Settings that need a restart keep their running value; say which changed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut notes = Vec::new();
    if new.listen.addr != old.listen.addr {
        notes.push(format!(
            "listen.addr: {} -> {} needs a restart; still listening on {}",
            old.listen.addr, new.listen.addr, old.listen.addr
        ));
    }
    if new.listen.http != old.listen.http {
        notes.push("listen.http changed: needs a restart; the running value is kept".into());
    }
    if new.listen.workers != old.listen.workers {
        notes.push(format!(
            "listen.workers: {} -> {} needs a restart; still running {}",
            old.listen.workers, new.listen.workers, old.listen.workers
        ));
    }
    new.listen = old.listen.clone();
    if new.log.format != old.log.format {
        notes.push("log.format changed: needs a restart; the running format is kept".into());
        new.log.format = old.log.format;
    }
    notes
}

fn unchanged_message(restart: &[String]) -> String {
    if restart.is_empty() {
        "no changes".into()
    } else {
        format!("no changes applied; {}", restart.join("; "))
    }
}

fn summarize(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The main file and its users file, as text.
fn read_files(config: &Config) -> Result<(String, String), String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let main = read(&config.source)?;
    // The users file may have moved with the new main file; resolve it from the new text.
    let users_path = users_path(&main, &config.source).unwrap_or_else(|| config.auth.file.clone());
    Ok((main.clone(), read(&users_path)?))
}

/// auth.file as the main file's text names it, resolved against its directory.
fn users_path(main: &str, source: &Path) -> Option<PathBuf> {
    let table: toml::Table = main.parse().ok()?;
    let file = table.get("auth")?.get("file")?.as_str()?;
    Some(source.parent().unwrap_or(Path::new(".")).join(file))
}

/// A short digest of both files, naming a config version.
pub fn content_hash(main: &str, users: &str) -> String {
    let digest = Sha256::new()
        .chain_update(main)
        .chain_update([0])
        .chain_update(users)
        .finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
