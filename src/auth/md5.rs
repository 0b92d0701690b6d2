//! PostgreSQL's md5 password scheme: the stored hash md5(password || user) and the salted
//! challenge response md5(stored_hex || salt) sent for AuthenticationMD5Password.

use ::md5::{Digest, Md5};

use super::secret::constant_time_eq;

/// "md5" + hex(md5(password || user)) — what pg_authid stores.
pub fn stored(user: &str, password: &str) -> String {
    md5_prefixed_hex(password.as_bytes(), user.as_bytes())
}

/// What a client must send for AuthenticationMD5Password with `salt`:
/// "md5" + hex(md5(hex_part_of_stored || salt)). `stored` is the "md5..." form from [`stored`].
pub fn client_response(stored: &str, salt: [u8; 4]) -> String {
    let hex = stored.strip_prefix("md5").unwrap_or(stored);
    md5_prefixed_hex(hex.as_bytes(), &salt)
}

/// Constant-time check of a client's PasswordMessage payload (without the trailing NUL) against
/// the stored hash.
pub fn verify(stored: &str, salt: [u8; 4], response: &[u8]) -> bool {
    constant_time_eq(client_response(stored, salt).as_bytes(), response)
}

/// "md5" + lowercase hex of md5(a || b).
fn md5_prefixed_hex(a: &[u8], b: &[u8]) -> String {
    let digest = Md5::new().chain_update(a).chain_update(b).finalize();
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_matches_postgres() {
        assert_eq!(
            stored("postgres", "postgres"),
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        );
        // Made by PostgreSQL 15: CREATE ROLE u2 PASSWORD 'secret' with password_encryption=md5.
        assert_eq!(
            stored("u2", "secret"),
            "md54489eed4ef8fbc7dd325ec0f630f2af1"
        );
    }

    #[test]
    fn client_response_known_value() {
        // md5("3175bce1d3201d16594cebf9d7eb3f9d" || 01 02 03 04), computed independently.
        let stored = stored("postgres", "postgres");
        assert_eq!(
            client_response(&stored, [1, 2, 3, 4]),
            "md568be9ed08db75f318087ab337aaea044"
        );
    }

    #[test]
    fn verify_round_trip() {
        let stored = stored("alice", "s3cret");
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let response = client_response(&stored, salt);
        assert!(verify(&stored, salt, response.as_bytes()));
    }

    #[test]
    fn verify_rejects_wrong_responses() {
        let stored = stored("alice", "s3cret");
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let wrong_password = client_response(&super::stored("alice", "guess"), salt);
        let wrong_salt = client_response(&stored, [0, 0, 0, 0]);
        assert!(!verify(&stored, salt, wrong_password.as_bytes()));
        assert!(!verify(&stored, salt, wrong_salt.as_bytes()));
        assert!(!verify(&stored, salt, b""));
        // The stored hash itself is not a valid response (no pass-the-hash without the salt step).
        assert!(!verify(&stored, salt, stored.as_bytes()));
        let mut with_nul = client_response(&stored, salt).into_bytes();
        with_nul.push(0);
        assert!(!verify(&stored, salt, &with_nul));
    }
}
