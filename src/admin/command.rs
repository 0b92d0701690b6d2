//! The admin console's language: PgBouncer's SHOW commands and controls, plus sluice's own
//! (SHOW LIMITS, SHOW RELOADS, KILL_CLIENT, ROLLBACK). Keywords are case-insensitive; a
//! database name may be double-quoted. Parsing only: `console` runs them.

use crate::protocol::error::PgError;

/// What SHOW can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Stats,
    Clients,
    Servers,
    Databases,
    Users,
    Config,
    Lists,
    Version,
    Limits,
    Reloads,
    Help,
}

impl Show {
    const NAMES: [(&'static str, Show); 12] = [
        ("POOLS", Show::Pools),
        ("STATS", Show::Stats),
        ("CLIENTS", Show::Clients),
        ("SERVERS", Show::Servers),
        ("DATABASES", Show::Databases),
        ("USERS", Show::Users),
        ("CONFIG", Show::Config),
        ("LISTS", Show::Lists),
        ("VERSION", Show::Version),
        ("LIMITS", Show::Limits),
        ("RELOADS", Show::Reloads),
        ("HELP", Show::Help),
    ];

    pub fn names() -> impl Iterator<Item = &'static str> {
        Show::NAMES.iter().map(|(n, _)| *n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// PAUSE [db]: hold new transactions, wait for running ones to end.
    Pause(Option<String>),
    Resume(Option<String>),
    /// RECONNECT [db]: replace backends as they come free.
    Reconnect(Option<String>),
    /// KILL db: drop the database's clients and backends, and hold it until RESUME.
    Kill(String),
    KillClient(u32),
    Shutdown,
    Reload {
        force: bool,
    },
    Rollback,
}

impl Command {
    /// May a stats user (read-only) run it?
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }

    /// The CommandComplete tag PgBouncer answers with.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reconnect(_) => "RECONNECT",
            Command::Kill(_) => "KILL",
            Command::KillClient(_) => "KILL_CLIENT",
            Command::Shutdown => "SHUTDOWN",
            Command::Reload { .. } => "RELOAD",
            Command::Rollback => "ROLLBACK",
        }
    }
}

fn invalid(text: &str) -> PgError {
    PgError::error("42601", format!("invalid command '{text}', use SHOW HELP;"))
}

/// A database name, double-quoted or bare.
fn name(word: &str) -> String {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word)
        .to_string()
}

/// Parse one statement (no trailing semicolon).
pub fn parse(text: &str) -> Result<Command, PgError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some(first) = words.first() else {
        return Err(invalid(text));
    };
    let verb = first.to_ascii_uppercase();
    let arg = words.get(1).map(|w| name(w));
    let command = match (verb.as_str(), words.len()) {
        ("SHOW", 2) => {
            let what = words[1].to_ascii_uppercase();
            let show = Show::NAMES.iter().find(|(n, _)| *n == what);
            Command::Show(show.ok_or_else(|| invalid(text))?.1)
        }
        ("PAUSE", 1 | 2) => Command::Pause(arg),
        ("RESUME", 1 | 2) => Command::Resume(arg),
        ("RECONNECT", 1 | 2) => Command::Reconnect(arg),
        ("KILL", 2) => Command::Kill(arg.expect("two words")),
        ("KILL_CLIENT", 2) => {
            let id = words[1].parse().map_err(|_| invalid(text))?;
            Command::KillClient(id)
        }
        ("SHUTDOWN", 1) => Command::Shutdown,
        ("RELOAD", 1) => Command::Reload { force: false },
        ("RELOAD", 2) if words[1].eq_ignore_ascii_case("FORCE") => Command::Reload { force: true },
        ("ROLLBACK", 1) => Command::Rollback,
        _ => return Err(invalid(text)),
    };
    Ok(command)
}

/// Split a simple-protocol query into statements on semicolons outside double quotes.
pub fn statements(query: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in query.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(query[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(query[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(parse("show pools").unwrap(), Command::Show(Show::Pools));
        assert_eq!(parse("SHOW Limits").unwrap(), Command::Show(Show::Limits));
        assert_eq!(parse("PAUSE").unwrap(), Command::Pause(None));
        assert!(parse("pause a b").is_err());
        assert_eq!(
            parse("resume app").unwrap(),
            Command::Resume(Some("app".into()))
        );
        assert_eq!(parse("KILL \"app\"").unwrap(), Command::Kill("app".into()));
        assert_eq!(parse("kill_client 42").unwrap(), Command::KillClient(42));
        assert_eq!(
            parse("RELOAD force").unwrap(),
            Command::Reload { force: true }
        );
        for bad in [
            "SHOW",
            "SHOW FOO",
            "KILL",
            "KILL_CLIENT x",
            "select 1",
            "SHUTDOWN now",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code, "42601", "{bad}");
            assert!(err.message.contains("SHOW HELP"));
        }
        assert!(parse("SHOW POOLS").unwrap().read_only());
        assert!(!parse("PAUSE").unwrap().read_only());
    }

    #[test]
    fn queries_split_into_statements() {
        assert_eq!(
            statements("SHOW POOLS; show stats;"),
            ["SHOW POOLS", "show stats"]
        );
        assert_eq!(statements("PAUSE \"a;b\""), ["PAUSE \"a;b\""]);
        assert!(statements(" ; ").is_empty());
    }
}
