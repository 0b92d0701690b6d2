//! Session parameters that follow a client from backend to backend: the values a client asked
//! for at startup or set later, and the values a backend currently has. Names compare without
//! case, as PostgreSQL's GUC names do.

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Params {
        Params(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Set a value; returns true when it changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        match self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) if v == value => false,
            Some((_, v)) => {
                *v = value.to_string();
                true
            }
            None => {
                self.0.push((name.to_string(), value.to_string()));
                true
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
        backend.remove("search_path");
        assert_eq!(sync_sql(&wanted, &backend), None);
    }

    #[test]
    fn tracked_includes_configured_extras() {
        assert!(is_tracked("timezone", &[]));
        assert!(!is_tracked("search_path", &[]));
        assert!(is_tracked("search_path", &["search_path".to_string()]));
    }
}
