//! Session parameters that follow a client from backend to backend: the values a client asked
//! for at startup or set later, and the values a backend currently has. Names compare without
//! case, as PostgreSQL's GUC names do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Parameters tracked for every client, beyond `pool.track_extra_params`.
pub const TRACKED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "extra_float_digits",
];

/// A small ordered map of parameter names to values. A handful of entries, so a Vec beats a
/// hash map here.
///
/// Every change stamps the map with a version no other change anywhere has had, and a clone
/// keeps it, so two maps with the same version hold the same values: a backend that was last
/// made to match a client's parameters can skip the comparison while neither has changed.
#[derive(Debug, Clone, Default)]
pub struct Params {
    entries: Vec<(String, String)>,
    version: u64,
}

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Params {}

fn next_version() -> u64 {
    static VERSIONS: AtomicU64 = AtomicU64::new(1);
    VERSIONS.fetch_add(1, Ordering::Relaxed)
}

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    /// Equal versions mean equal values (see the type's documentation).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Set a value; returns true when it changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) if v == value => return false,
            Some((_, v)) => *v = value.to_string(),
            None => self.entries.push((name.to_string(), value.to_string())),
        }
        self.version = next_version();
        true
    }

    /// Set a value in a map that may be shared, copying it only when the value changes.
    pub fn set_shared(params: &mut Arc<Params>, name: &str, value: &str) -> bool {
        if params.get(name) == Some(value) {
            return false;
        }
        Arc::make_mut(params).set(name, value)
    }

    /// Keep only the parameters whose names `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| keep(k));
        if self.entries.len() != before {
            self.version = next_version();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Clients' parameter maps and names, shared: most clients of a pool log in with the same
/// values, so they hold one copy between them (a map is copied on a client's first change)
/// instead of one each.
#[derive(Default)]
pub struct Interner {
    recent: Mutex<Vec<Arc<Params>>>,
    names: Mutex<Vec<Arc<str>>>,
}

impl Interner {
    /// How many distinct maps are remembered; older ones are still shared by the clients
    /// holding them, just not handed to new ones.
    const KEEP: usize = 64;

    /// The map of these (name, value) pairs, in this order: a remembered one when there is
    /// one (every login of a pool's usual client, so no string is copied), else a new one.
    pub fn intern_pairs(&self, pairs: &[(&str, &str)]) -> Arc<Params> {
        let same = |p: &Arc<Params>| {
            p.entries.len() == pairs.len()
                && p.entries
                    .iter()
                    .zip(pairs)
                    .all(|((k, v), (name, value))| k == name && v == value)
        };
        remember(&self.recent, same, || {
            let mut params = Params::new();
            for (name, value) in pairs {
                params.set(name, value);
            }
            Arc::new(params)
        })
    }

    /// A user, database or application name.
    pub fn name(&self, name: &str) -> Arc<str> {
        remember(&self.names, |n| **n == *name, || Arc::from(name))
    }
}

/// The remembered value `is` matches (moved to the most recent end), or a new one from
/// `make`, remembered in place of the least recent past `Interner::KEEP`.
fn remember<T: ?Sized>(
    recent: &Mutex<Vec<Arc<T>>>,
    is: impl Fn(&Arc<T>) -> bool,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = recent.iter().rposition(is) {
        let found = recent.remove(i);
        recent.push(found.clone());
        return found;
    }
    let made = make();
    if recent.len() == Interner::KEEP {
        recent.remove(0);
    }
    recent.push(made.clone());
    made
}

/// Is `name` one sluice carries from client to backend?
pub fn is_tracked(name: &str, extra: &[String]) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
        || extra.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// The SQL that makes a backend's parameters match what a client wants: `SET` for values that
/// differ, `RESET` for parameters the backend carries that the client never asked for.
/// `wanted` holds the client's values; `reported` lists names the server reports on its own
/// (their defaults are in `wanted` already, so they are never reset).
pub fn sync_sql(wanted: &Params, backend: &Params) -> Option<String> {
    let mut sql = String::new();
    for (name, value) in wanted.iter() {
        if backend.get(name) != Some(value) {
            sql.push_str(&format!(
                "SET {} TO {};",
                quote_ident(name),
                quote_literal(value)
            ));
        }
    }
    for (name, _) in backend.iter() {
        if wanted.get(name).is_none() && !is_reported(name) {
            sql.push_str(&format!("RESET {};", quote_ident(name)));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// Parameters PostgreSQL reports through ParameterStatus (GUC_REPORT), whose backend values
/// sluice learns without asking.
pub fn is_reported(name: &str) -> bool {
    const REPORTED: &[&str] = &[
        "application_name",
        "client_encoding",
        "DateStyle",
        "default_transaction_read_only",
        "in_hot_standby",
        "integer_datetimes",
        "IntervalStyle",
        "is_superuser",
        "server_encoding",
        "server_version",
        "session_authorization",
        "standard_conforming_strings",
        "TimeZone",
    ];
    REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_without_case() {
        let mut p = Params::new();
        assert!(p.set("DateStyle", "ISO, MDY"));
        assert_eq!(p.get("datestyle"), Some("ISO, MDY"));
        assert!(!p.set("DATESTYLE", "ISO, MDY"));
        assert!(p.set("datestyle", "ISO, DMY"));
        assert_eq!(p.iter().count(), 1);
    }

    #[test]
    fn sync_sets_differences_and_resets_unwanted_extras() {
        let mut wanted = Params::new();
        wanted.set("TimeZone", "UTC");
        wanted.set("application_name", "it's");
        let mut backend = Params::new();
        backend.set("TimeZone", "UTC");
        backend.set("application_name", "");
        backend.set("search_path", "x");
        backend.set("server_version", "15");
        assert_eq!(
            sync_sql(&wanted, &backend).unwrap(),
            "SET \"application_name\" TO 'it''s';RESET \"search_path\";"
        );
        backend.set("application_name", "it's");
        backend.retain(|k| k != "search_path");
        assert_eq!(sync_sql(&wanted, &backend), None);
    }

    #[test]
    fn equal_versions_mean_equal_values() {
        let mut a = Params::new();
        a.set("TimeZone", "UTC");
        let b = a.clone();
        assert_eq!(a.version(), b.version());
        let mut c = a.clone();
        assert!(!c.set("timezone", "UTC"), "no change keeps the version");
        assert_eq!(c.version(), a.version());
        c.set("TimeZone", "Europe/Paris");
        assert_ne!(c.version(), a.version());
        c.set("TimeZone", "UTC");
        assert_eq!(c, a, "same values again");
        assert_ne!(c.version(), a.version(), "but not known to be the same");
        let before = c.version();
        c.retain(|k| k != "search_path");
        assert_eq!(c.version(), before, "removing nothing changes nothing");
        c.retain(|k| k != "TimeZone");
        assert_ne!(c.version(), before);
    }

    #[test]
    fn interned_maps_are_shared_until_one_changes() {
        let interner = Interner::default();
        let p = [("application_name", "app")];
        let mut a = interner.intern_pairs(&p);
        let b = interner.intern_pairs(&p);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Params::set_shared(&mut a, "application_name", "app"));
        assert!(Arc::ptr_eq(&a, &b), "an unchanged value copies nothing");
        assert!(Params::set_shared(&mut a, "application_name", "other"));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.get("application_name"), Some("app"));
        for i in 0..Interner::KEEP + 1 {
            interner.intern_pairs(&[("application_name", &i.to_string())]);
        }
        assert!(
            !Arc::ptr_eq(&interner.intern_pairs(&p), &b),
            "forgotten after KEEP others"
        );
    }

    #[test]
    fn tracked_includes_configured_extras() {
        assert!(is_tracked("timezone", &[]));
        assert!(!is_tracked("search_path", &[]));
        assert!(is_tracked("search_path", &["search_path".to_string()]));
    }
}
