//! A user's password as configured in users.toml: plain text, an md5 hash or a SCRAM-SHA-256
//! secret, in the same textual forms PostgreSQL keeps in `pg_authid.rolpassword`.

use std::fmt;

use super::scram::{ScramSecret, MECHANISM};

/// A user's password as stored in users.toml.
#[derive(Clone)]
pub enum Secret {
    Plain(String),
    /// "md5" followed by 32 lowercase hex digits: md5(password || username), as pg_authid stores it.
    Md5(String),
    Scram(ScramSecret),
}

impl Secret {
    /// Detect the form: "md5" + 32 hex digits is an md5 hash (hex normalised to lowercase),
    /// "SCRAM-SHA-256$..." is a SCRAM secret (an error if malformed), anything else is a
    /// plain-text password. The empty string is rejected.
    pub fn parse(s: &str) -> Result<Secret, String> {
        if s.is_empty() {
            return Err("empty password".to_string());
        }
        if is_md5_hash(s) {
            return Ok(Secret::Md5(s.to_ascii_lowercase()));
        }
        if s.strip_prefix(MECHANISM)
            .is_some_and(|rest| rest.starts_with('$'))
        {
            return ScramSecret::parse(s).map(Secret::Scram);
        }
        Ok(Secret::Plain(s.to_string()))
    }
}

/// Whether `s` is "md5" followed by exactly 32 hex digits (either case).
fn is_md5_hash(s: &str) -> bool {
    s.strip_prefix("md5")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Secret::Plain(_) => "Plain",
            Secret::Md5(_) => "Md5",
            Secret::Scram(_) => "Scram",
        };
        write!(f, "{kind}(<redacted>)")
    }
}

/// Equality of two byte strings in time that depends only on their lengths (which are not
/// secret here: hashes, proofs and signatures have fixed lengths).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_md5_and_lowercases_it() {
        let s = Secret::parse("md53175BCE1D3201D16594CEBF9D7EB3F9D").unwrap();
        match s {
            Secret::Md5(h) => assert_eq!(h, "md53175bce1d3201d16594cebf9d7eb3f9d"),
            other => panic!("expected Md5, got {other:?}"),
        }
    }

    #[test]
    fn near_md5_strings_are_plain() {
        // Too short, too long, non-hex, and an upper-case prefix.
        for s in [
            "md53175bce1d3201d16594cebf9d7eb3f9",
            "md53175bce1d3201d16594cebf9d7eb3f9d0",
            "md53175bce1d3201d16594cebf9d7eb3f9g",
            "MD53175bce1d3201d16594cebf9d7eb3f9d",
        ] {
            assert!(
                matches!(Secret::parse(s), Ok(Secret::Plain(p)) if p == s),
                "{s}"
            );
        }
    }

    #[test]
    fn detects_scram() {
        let text = "SCRAM-SHA-256$4096:XKFyTuYqYeYnD+WgQDRd8Q==$\
                    g6S2Q9qJjFMUCDVdXDREdoqzBA+g+Xz2B776cq+HzwA=:\
                    H/7UBomywayvCWd4KMSiYnYyx81bEX3BTcTRzbGIY0I=";
        match Secret::parse(text).unwrap() {
            Secret::Scram(s) => {
                assert_eq!(s.iterations, 4096);
                assert_eq!(s.to_string(), text);
            }
            other => panic!("expected Scram, got {other:?}"),
        }
    }

    #[test]
    fn malformed_scram_is_an_error_not_plain() {
        assert!(Secret::parse("SCRAM-SHA-256$4096:abc").is_err());
    }

    #[test]
    fn plain_and_empty() {
        assert!(matches!(Secret::parse("hunter2"), Ok(Secret::Plain(p)) if p == "hunter2"));
        // Only the exact "SCRAM-SHA-256$" prefix marks a SCRAM secret.
        assert!(matches!(
            Secret::parse("SCRAM-SHA-256"),
            Ok(Secret::Plain(_))
        ));
        assert_eq!(Secret::parse("").unwrap_err(), "empty password");
    }

    #[test]
    fn debug_redacts() {
        let plain = Secret::parse("hunter2").unwrap();
        let md5 = Secret::parse("md53175bce1d3201d16594cebf9d7eb3f9d").unwrap();
        assert_eq!(format!("{plain:?}"), "Plain(<redacted>)");
        assert_eq!(format!("{md5:?}"), "Md5(<redacted>)");
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
