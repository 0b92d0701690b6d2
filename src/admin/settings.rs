//! SHOW CONFIG: every effective setting as `key | value | default | changeable`, PgBouncer's
//! columns, with sluice's dotted keys. Values come from the same printout as `sluice check`,
//! so users show the kind of password they have, never the password. A database's or user's
//! default is what a bare `[databases.NAME]` or user entry would get.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Table as Toml, Value};

use crate::config::Config;
use crate::protocol::rows::{oid, Table};

use super::show::text;

/// Keys that take effect only at restart; everything else reloads in place.
const RESTART_ONLY: [&str; 4] = ["listen.addr", "listen.http", "listen.workers", "log.format"];

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn flatten(table: &Toml, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => flatten(t, &key, out),
            other => {
                out.insert(key, render(other));
            }
        }
    }
}

/// A config's effective settings as dotted keys and printable values.
pub fn flat(config: &Config) -> BTreeMap<String, String> {
    let table: Toml = config.effective().parse().unwrap_or_default();
    let mut out = BTreeMap::new();
    flatten(&table, "", &mut out);
    out
}

/// The settings of a config with nothing set but one database `x` and one user `x`.
fn defaults(source: &Path) -> BTreeMap<String, String> {
    let users = "[users.x]\npassword = \"x\"\n";
    Config::parse("[databases.x]\n", source, Some(users))
        .map(|c| flat(&c))
        .unwrap_or_default()
}

/// The default of `key`: for a database's or user's key, that of the placeholder entry.
fn default_of<'a>(key: &str, defaults: &'a BTreeMap<String, String>) -> Option<&'a String> {
    if let Some(found) = defaults.get(key) {
        return Some(found);
    }
    let (section, rest) = key.split_once('.')?;
    let (_, field) = rest.rsplit_once('.')?;
    if section == "databases" || section == "users" {
        return defaults.get(&format!("{section}.x.{field}"));
    }
    None
}

pub fn config(config: &Config) -> Table {
    let mut t = Table::new(&[
        ("key", oid::TEXT),
        ("value", oid::TEXT),
        ("default", oid::TEXT),
        ("changeable", oid::TEXT),
    ]);
    let defaults = defaults(&config.source);
    for (key, value) in flat(config) {
        let default = default_of(&key, &defaults).cloned().unwrap_or_default();
        let changeable = if RESTART_ONLY.contains(&key.as_str()) {
            "no"
        } else {
            "yes"
        };
        t.push(vec![
            text(&key),
            text(value),
            text(default),
            text(changeable),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_row_with_its_default_and_no_secret() {
        let main = "[listen]\naddr = \"127.0.0.1:7000\"\n[auth]\nadmin_users = [\"a\", \"b\"]\n[databases.app]\npool_size = 3\n";
        let users = "[users.alice]\npassword = \"hunter2\"\n";
        let c = Config::parse(main, Path::new("conf/sluice.toml"), Some(users)).unwrap();
        let t = config(&c);
        let row = |key: &str| {
            t.rows
                .iter()
                .find(|r| r[0].as_deref() == Some(key))
                .unwrap_or_else(|| panic!("{key}"))
                .iter()
                .map(|v| v.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("listen.addr"),
            ["listen.addr", "127.0.0.1:7000", "127.0.0.1:6432", "no"]
        );
        assert_eq!(row("auth.admin_users")[1], "a,b");
        assert_eq!(row("pool.size"), ["pool.size", "20", "20", "yes"]);
        assert_eq!(row("databases.app.pool_size")[1..3], ["3", "20"]);
        assert_eq!(row("databases.app.host")[1..3], ["127.0.0.1", "127.0.0.1"]);
        let printed = format!("{:?}", t.rows);
        assert!(!printed.contains("hunter2"));
    }
}
