//! The difference between two configs, one line per changed key
//! (`databases.app.pool_size: 100 -> 10`). Both sides are flattened from the effective
//! settings, so defaults and inherited values compare as what they resolve to. Passwords
//! never appear: a changed secret shows as `users.NAME.password: changed`.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use toml::{Table, Value};

use super::Config;
use crate::auth::Secret;

/// One changed key: None on a side where the key is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_string());
        if self.key.ends_with(".password") {
            return write!(f, "{}: changed", self.key);
        }
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            side(&self.old),
            side(&self.new)
        )
    }
}

/// Every key whose effective value differs between `old` and `new`, sorted by key.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            old: a.get(k).cloned(),
            new: b.get(k).cloned(),
        })
        .collect()
}

/// The effective settings as dotted keys, plus a fingerprint of each user's password.
fn flatten(config: &Config) -> BTreeMap<String, String> {
    let table: Table = config
        .effective()
        .parse()
        .expect("effective() prints valid TOML");
    let mut flat = BTreeMap::new();
    walk(&table, "", &mut flat);
    for (name, user) in &config.users {
        let key = format!("{}.password", super::load::join_key("users", name));
        flat.insert(key, fingerprint(&user.password));
    }
    flat
}

fn walk(table: &Table, prefix: &str, flat: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = super::load::join_key(prefix, k);
        match v {
            Value::Table(t) => walk(t, &key, flat),
            Value::String(s) => {
                flat.insert(key, format!("{s:?}"));
            }
            other => {
                flat.insert(key, other.to_string());
            }
        }
    }
}

/// A digest that changes with the secret and reveals nothing of it.
fn fingerprint(secret: &Secret) -> String {
    let mut h = Sha256::new();
    match secret {
        Secret::Plain(p) => h.update([b"plain:", p.as_bytes()].concat()),
        Secret::Md5(m) => h.update([b"md5:", m.as_bytes()].concat()),
        Secret::Scram(s) => h.update(format!("scram:{s}").as_bytes()),
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(main: &str, users: &str) -> Config {
        Config::parse(main, Path::new("t.toml"), Some(users)).unwrap()
    }

    #[test]
    fn one_line_per_changed_key_with_resolved_values() {
        let users = "[users.a]\npassword = \"x\"\n";
        let old = config(
            "[databases.app]\npool_size = 100\n[limits]\nmax_server_connections = 200\n",
            users,
        );
        let new = config(
            "[databases.app]\npool_size = 10\n[limits]\nmax_server_connections = 200\n",
            users,
        );
        let d = diff(&old, &new);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].to_string(), "databases.app.pool_size: 100 -> 10");
    }

    #[test]
    fn passwords_show_only_that_they_changed() {
        let old = config("[databases.app]\n", "[users.a]\npassword = \"hunter2\"\n");
        let new = config("[databases.app]\n", "[users.a]\npassword = \"hunter3\"\n");
        let lines: Vec<String> = diff(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(lines, ["users.a.password: changed"]);
        assert!(!format!("{:?}", diff(&old, &new)).contains("hunter"));
    }

    #[test]
    fn added_and_removed_databases_show_as_unset_sides() {
        let old = config("[databases.a]\n[databases.b]\n", "");
        let new = config("[databases.a]\n", "");
        let d = diff(&old, &new);
        assert!(
            d.iter()
                .any(|c| c.to_string() == "databases.b.port: 5432 -> (unset)"),
            "{d:?}"
        );
        assert!(diff(&old, &old).is_empty());
    }
}
