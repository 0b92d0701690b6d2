//! Guard rails for a reload: a change that cuts any capacity (a pool size, a database's
//! connection cap, the global cap, a client cap) by more than `reload.max_shrink_percent` is
//! refused, as is removing a database that still has clients. The limit is read from the new
//! file, so raising it there is how a DBA says "I mean it"; `RELOAD FORCE` skips the guard.

use crate::config::Config;

/// Why a reload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Check `new` against `old`. `clients_of(db)` counts a database's connected clients.
pub fn check(old: &Config, new: &Config, clients_of: impl Fn(&str) -> usize) -> Vec<Violation> {
    let limit = new.reload.max_shrink_percent as usize;
    let mut out = Vec::new();
    let new_caps = capacities(new, old);
    for (key, before) in capacities(old, old) {
        let Some(&(_, after)) = new_caps.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        if after < before && (before - after) * 100 > limit * before {
            let cut = (before - after) * 100 / before;
            out.push(Violation(format!(
                "{key}: {before} -> {after} cuts capacity by {cut}%, more than \
                 reload.max_shrink_percent ({limit}%); raise reload.max_shrink_percent in the \
                 new file or use RELOAD FORCE if this is intended"
            )));
        }
    }
    for name in old
        .databases
        .keys()
        .filter(|d| !new.databases.contains_key(*d))
    {
        let n = clients_of(name);
        if n > 0 {
            out.push(Violation(format!(
                "databases.{name} is removed but has {n} connected client(s); move them first \
                 or use RELOAD FORCE"
            )));
        }
    }
    out
}

/// Every capacity of `config` as (key, value). A cap not set is reported at the value it
/// falls back to (`implied` gives the other side's fallbacks), so setting a cap where there
/// was none counts as a cut from what applied before.
fn capacities(config: &Config, implied: &Config) -> Vec<(String, usize)> {
    let l = &config.limits;
    let mut caps = vec![
        (
            "limits.max_client_connections".to_string(),
            l.max_client_connections,
        ),
        (
            "limits.max_server_connections".to_string(),
            l.max_server_connections,
        ),
        ("pool.size".to_string(), config.pool.size),
    ];
    for (name, db) in &config.databases {
        let key = |k: &str| format!("databases.{name}.{k}");
        caps.push((key("pool_size"), db.pool_size.unwrap_or(config.pool.size)));
        let db_max = db
            .max_connections
            .unwrap_or(implied.limits.max_server_connections);
        caps.push((key("max_connections"), db_max));
        let clients = db
            .max_client_connections
            .unwrap_or(implied.limits.max_client_connections);
        caps.push((key("max_client_connections"), clients));
    }
    for (name, user) in &config.users {
        if let Some(n) = user.pool_size {
            caps.push((format!("users.{name}.pool_size"), n));
        }
        if let Some(n) = user.max_client_connections {
            caps.push((format!("users.{name}.max_client_connections"), n));
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(main: &str) -> Config {
        let main = format!("[limits]\nmax_server_connections = 200\n{main}");
        Config::parse(&main, Path::new("t.toml"), Some("")).unwrap()
    }

    #[test]
    fn the_100_to_10_cut_is_refused() {
        let old = config("[databases.app]\npool_size = 100\n");
        let new = config("[databases.app]\npool_size = 10\n");
        let v = check(&old, &new, |_| 0);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .0
            .starts_with("databases.app.pool_size: 100 -> 10 cuts capacity by 90%"));
    }

    #[test]
    fn a_cut_within_the_limit_or_with_the_guard_raised_passes() {
        let old = config("[databases.app]\npool_size = 100\n");
        assert!(check(&old, &config("[databases.app]\npool_size = 60\n"), |_| 0).is_empty());
        let raised = config("[reload]\nmax_shrink_percent = 95\n[databases.app]\npool_size = 10\n");
        assert!(check(&old, &raised, |_| 0).is_empty());
    }

    #[test]
    fn setting_a_cap_where_there_was_none_counts_as_a_cut() {
        let old = config("[databases.app]\n");
        let new = config("[databases.app]\nmax_connections = 10\n");
        let v = check(&old, &new, |_| 0);
        assert!(
            v[0].0
                .starts_with("databases.app.max_connections: 200 -> 10"),
            "{v:?}"
        );
    }

    #[test]
    fn removing_a_database_with_clients_is_refused() {
        let old = config("[databases.app]\n[databases.old]\n");
        let new = config("[databases.app]\n");
        assert!(check(&old, &new, |_| 0).is_empty());
        let v = check(&old, &new, |db| usize::from(db == "old") * 3);
        assert!(v[0]
            .0
            .contains("databases.old is removed but has 3 connected client(s)"));
    }
}
