//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, without channel binding: the
//! stored secret format, and the server and client state machines for both legs of the proxy.
//!
//! Passwords: PostgreSQL runs SASLprep over the password first, which is the identity for ASCII.
//! We use the password bytes as-is, so non-ASCII passwords that SASLprep would change (e.g.
//! non-NFKC forms, mapped-to-nothing characters) are not normalised and will not match a secret
//! PostgreSQL derived from the normalised form.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::secret::constant_time_eq;

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Iterations used by [`ScramSecret::generate`] (PostgreSQL's default `scram_iterations`).
const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length used by [`ScramSecret::generate`] (PostgreSQL's SCRAM_DEFAULT_SALT_LEN).
const SALT_LEN: usize = 16;
/// Random bytes in a nonce before base64 (PostgreSQL's SCRAM_RAW_NONCE_LEN).
const RAW_NONCE_LEN: usize = 18;

/// A SCRAM-SHA-256 verifier: what the server needs to check a client, without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parse PostgreSQL's format:
    /// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    pub fn parse(s: &str) -> Result<ScramSecret, String> {
        let rest = s
            .strip_prefix(MECHANISM)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or("SCRAM secret must start with \"SCRAM-SHA-256$\"")?;
        let (params, keys) = rest.split_once('$').ok_or("SCRAM secret is missing '$'")?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or("SCRAM secret is missing ':' between iterations and salt")?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or("SCRAM secret is missing ':' between StoredKey and ServerKey")?;
        let iterations = match iterations.parse::<u32>() {
            Ok(i) if i > 0 => i,
            _ => return Err("SCRAM secret has an invalid iteration count".to_string()),
        };
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or("SCRAM secret has an invalid salt")?;
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: decode_key(stored_key).ok_or("SCRAM secret has an invalid StoredKey")?,
            server_key: decode_key(server_key).ok_or("SCRAM secret has an invalid ServerKey")?,
        })
    }

    /// Derive from a plain password (runs PBKDF2: blocking, the caller puts it on spawn_blocking).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let keys = Keys::derive(&salted_password(password, salt, iterations));
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: keys.stored,
            server_key: keys.server,
        }
    }

    /// Same as [`from_password`](Self::from_password) with a fresh random 16-byte salt and 4096
    /// iterations. Blocking.
    pub fn generate(password: &str) -> ScramSecret {
        let salt: [u8; SALT_LEN] = rand::random();
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }
}

/// PostgreSQL's textual format; round-trips with [`ScramSecret::parse`]. This is a verifier,
/// not the password, but it still allows offline guessing: only write it where rolpassword
/// would be acceptable.
impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &format_args!("<redacted>"))
            .field("stored_key", &format_args!("<redacted>"))
            .field("server_key", &format_args!("<redacted>"))
            .finish()
    }
}

/// Hi(password, salt, i) = PBKDF2-HMAC-SHA256. Blocking.
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations)
}

/// Why a SCRAM exchange failed.
#[derive(Debug)]
pub enum ScramError {
    /// The peer sent something that is not valid SCRAM, or a message out of order.
    Malformed(String),
    /// The client's proof is wrong: wrong password.
    BadProof,
    /// The server's signature is wrong: it does not know the password's verifier.
    BadServerSignature,
    /// The nonce in a later message does not continue the one agreed on.
    NonceMismatch,
    /// The client asked for channel binding, which sluice cannot offer without TLS.
    ChannelBindingUnsupported,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(why) => write!(f, "malformed SCRAM message: {why}"),
            ScramError::BadProof => f.write_str("SCRAM client proof is wrong"),
            ScramError::BadServerSignature => f.write_str("SCRAM server signature is wrong"),
            ScramError::NonceMismatch => f.write_str("SCRAM nonce mismatch"),
            ScramError::ChannelBindingUnsupported => {
                f.write_str("SCRAM channel binding is not supported")
            }
        }
    }
}

impl std::error::Error for ScramError {}

fn malformed(why: &str) -> ScramError {
    ScramError::Malformed(why.to_string())
}

/// sluice as the server, authenticating a client.
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// "n,," or "y,,": what the client must echo (base64) in c=.
        gs2_header: &'static str,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Finished,
}

impl ScramServer {
    /// A server for one exchange, with a fresh random server nonce.
    pub fn new(secret: ScramSecret) -> ScramServer {
        Self::with_nonce(secret, &random_nonce())
    }

    /// A server with a fixed server nonce (for tests). `nonce` must be printable ASCII without ','.
    pub(crate) fn with_nonce(secret: ScramSecret, nonce: &str) -> ScramServer {
        ScramServer {
            secret,
            server_nonce: nonce.to_string(),
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Takes the client-first-message (the SASLInitialResponse payload bytes), returns
    /// server-first-message. The n= username is ignored, as PostgreSQL does.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(malformed("unexpected client-first-message"));
        }
        self.state = ServerState::Finished;
        let msg = utf8(msg)?;
        let (gs2_header, client_first_bare) = split_gs2_header(msg)?;
        let client_nonce = parse_client_first_bare(client_first_bare)?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.secret.salt),
            self.secret.iterations
        );
        self.state = ServerState::AwaitingClientFinal {
            gs2_header,
            client_first_bare: client_first_bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Takes client-final-message, verifies the channel-binding echo, the nonce and the proof;
    /// returns server-final-message ("v=..."). Wrong proof → [`ScramError::BadProof`].
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFinal {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(malformed("unexpected client-final-message"));
        };
        let msg = utf8(msg)?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = expect_attr(attrs.next(), 'c')?;
        if B64.decode(cbind).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(malformed("channel binding does not match the gs2 header"));
        }
        if expect_attr(attrs.next(), 'r')? != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = decode_key(proof).ok_or_else(|| malformed("invalid proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        self.verify_proof(&proof, auth_message.as_bytes())?;
        let signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(signature)).into_bytes())
    }

    /// ClientKey = proof XOR HMAC(StoredKey, AuthMessage); accept iff H(ClientKey) = StoredKey.
    fn verify_proof(&self, proof: &[u8; 32], auth_message: &[u8]) -> Result<(), ScramError> {
        let client_signature = hmac(&self.secret.stored_key, auth_message);
        let client_key = xor(proof, &client_signature);
        if constant_time_eq(&sha256(&client_key), &self.secret.stored_key) {
            Ok(())
        } else {
            Err(ScramError::BadProof)
        }
    }
}

/// Split "gs2-cbind-flag,[authzid],client-first-bare" into the gs2 header and the bare message.
fn split_gs2_header(msg: &str) -> Result<(&'static str, &str), ScramError> {
    let (flag, rest) = msg
        .split_once(',')
        .ok_or_else(|| malformed("missing gs2 header"))?;
    let header = match flag {
        "n" => "n,,",
        "y" => "y,,",
        _ if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(malformed("invalid gs2 channel-binding flag")),
    };
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        return Err(malformed("authorization identity is not supported"));
    }
    Ok((header, bare))
}

/// Parse client-first-bare "n=<user>,r=<nonce>[,extensions]" and return the client nonce.
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    let mut attrs = bare.split(',');
    let first = attrs.next();
    if first.is_some_and(|a| a.starts_with("m=")) {
        return Err(malformed("mandatory extensions are not supported"));
    }
    expect_attr(first, 'n')?;
    let nonce = expect_attr(attrs.next(), 'r')?;
    if !is_printable_nonce(nonce) {
        return Err(malformed("invalid client nonce"));
    }
    Ok(nonce)
}

/// sluice as the client, logging in to a backend PostgreSQL.
pub struct ScramClient {
    nonce: String,
    client_first_bare: String,
    state: ClientState,
}

enum ClientState {
    Initial,
    GotServerFirst { server_first: String, nonce: String },
    SentFinal { server_signature: [u8; 32] },
}

impl ScramClient {
    /// A client for one exchange, with a fresh random nonce.
    pub fn new() -> ScramClient {
        Self::with_nonce(&random_nonce())
    }

    /// A client with a fixed nonce (for tests). `nonce` must be printable ASCII without ','.
    pub(crate) fn with_nonce(nonce: &str) -> ScramClient {
        Self::with_user_and_nonce("", nonce)
    }

    /// A client that sends `n=<user>` (PostgreSQL ignores it; libpq and sluice send it empty).
    /// `user` must not contain ',' or '=' (we do not escape them).
    fn with_user_and_nonce(user: &str, nonce: &str) -> ScramClient {
        ScramClient {
            nonce: nonce.to_string(),
            client_first_bare: format!("n={user},r={nonce}"),
            state: ClientState::Initial,
        }
    }

    /// The client-first-message: "n,,n=,r=<nonce>".
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Parse server-first-message (checking its nonce extends ours); return (salt, iterations)
    /// so the caller can compute [`salted_password`] off the async runtime.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<(Vec<u8>, u32), ScramError> {
        if !matches!(self.state, ClientState::Initial) {
            return Err(malformed("unexpected server-first-message"));
        }
        let server_first = utf8(msg)?;
        let mut attrs = server_first.split(',');
        let first = attrs.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(malformed("mandatory extensions are not supported"));
        }
        let nonce = expect_attr(first, 'r')?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        if !is_printable_nonce(nonce) {
            return Err(malformed("invalid server nonce"));
        }
        let salt = B64
            .decode(expect_attr(attrs.next(), 's')?)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed("invalid salt"))?;
        let iterations = match expect_attr(attrs.next(), 'i')?.parse::<u32>() {
            Ok(i) if i > 0 => i,
            _ => return Err(malformed("invalid iteration count")),
        };
        self.state = ClientState::GotServerFirst {
            server_first: server_first.to_string(),
            nonce: nonce.to_string(),
        };
        Ok((salt, iterations))
    }

    /// Build client-final-message from the salted password (see [`salted_password`]).
    ///
    /// # Panics
    /// If [`server_first`](Self::server_first) has not succeeded first, or if called twice.
    pub fn client_final(&mut self, salted_password: &[u8; 32]) -> Vec<u8> {
        let ClientState::GotServerFirst {
            server_first,
            nonce,
        } = &self.state
        else {
            panic!("ScramClient::client_final called before a successful server_first");
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let keys = Keys::derive(salted_password);
        let client_signature = hmac(&keys.stored, auth_message.as_bytes());
        let proof = xor(&keys.client, &client_signature);
        self.state = ClientState::SentFinal {
            server_signature: hmac(&keys.server, auth_message.as_bytes()),
        };
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Verify the server signature in server-final-message ("v=..."). A server error ("e=...")
    /// is reported as [`ScramError::Malformed`] carrying the server's error text.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentFinal { server_signature } = &self.state else {
            return Err(malformed("unexpected server-final-message"));
        };
        let msg = utf8(msg)?;
        if let Some(error) = msg.strip_prefix("e=") {
            return Err(ScramError::Malformed(format!("server error: {error}")));
        }
        let verifier = expect_attr(msg.split(',').next(), 'v')?;
        let verifier = decode_key(verifier).ok_or_else(|| malformed("invalid server signature"))?;
        if constant_time_eq(&verifier, server_signature) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

impl Default for ScramClient {
    fn default() -> Self {
        Self::new()
    }
}

/// The keys derived from a salted password.
struct Keys {
    client: [u8; 32],
    stored: [u8; 32],
    server: [u8; 32],
}

impl Keys {
    fn derive(salted_password: &[u8; 32]) -> Keys {
        let client = hmac(salted_password, b"Client Key");
        Keys {
            client,
            stored: sha256(&client),
            server: hmac(salted_password, b"Server Key"),
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Base64 of 18 random bytes, as PostgreSQL makes its nonces.
fn random_nonce() -> String {
    let raw: [u8; RAW_NONCE_LEN] = rand::random();
    B64.encode(raw)
}

/// RFC 5802 nonces are printable ASCII other than ','.
fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Decode a base64 value that must be exactly 32 bytes (a key, proof or signature).
fn decode_key(b64: &str) -> Option<[u8; 32]> {
    B64.decode(b64).ok()?.try_into().ok()
}

fn utf8(msg: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(msg).map_err(|_| malformed("not valid UTF-8"))
}

/// The value of attribute `part` if it is "<name>=<value>".
fn expect_attr(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or_else(|| ScramError::Malformed(format!("expected attribute '{name}='")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// Made by PostgreSQL 15.18: CREATE ROLE u1 PASSWORD 'secret' with scram-sha-256.
    const PG_SECRET: &str = "SCRAM-SHA-256$4096:XKFyTuYqYeYnD+WgQDRd8Q==$\
                             g6S2Q9qJjFMUCDVdXDREdoqzBA+g+Xz2B776cq+HzwA=:\
                             H/7UBomywayvCWd4KMSiYnYyx81bEX3BTcTRzbGIY0I=";

    fn rfc_secret() -> ScramSecret {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramSecret::from_password("pencil", &salt, 4096)
    }

    fn malformed_text(err: ScramError) -> String {
        match err {
            ScramError::Malformed(text) => text,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn rfc7677_client() {
        let mut client = ScramClient::with_user_and_nonce("user", RFC_CLIENT_NONCE);
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let (salt, iterations) = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(iterations, 4096);
        let salted = salted_password("pencil", &salt, iterations);
        let client_final = client.client_final(&salted);
        assert_eq!(String::from_utf8(client_final).unwrap(), RFC_CLIENT_FINAL);
        client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn rfc7677_server() {
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        let server_first = server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
        let server_final = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
    }

    #[test]
    fn rfc7677_client_rejects_wrong_server_signature() {
        let mut client = ScramClient::with_user_and_nonce("user", RFC_CLIENT_NONCE);
        let (salt, iterations) = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        client.client_final(&salted_password("pencil", &salt, iterations));
        let wrong = format!("v={}", B64.encode([0u8; 32]));
        assert!(matches!(
            client.server_final(wrong.as_bytes()),
            Err(ScramError::BadServerSignature)
        ));
        let err = client.server_final(b"e=invalid-proof").unwrap_err();
        assert_eq!(malformed_text(err), "server error: invalid-proof");
        assert!(matches!(
            client.server_final(b"x=1"),
            Err(ScramError::Malformed(_))
        ));
    }

    /// Run a whole exchange; the client knows `client_password`, the server holds `secret`.
    fn exchange(secret: &ScramSecret, client_password: &str) -> Result<(), ScramError> {
        let mut server = ScramServer::new(secret.clone());
        let mut client = ScramClient::new();
        assert!(client.client_first().starts_with(b"n,,n=,r="));
        let server_first = server.client_first(&client.client_first())?;
        let (salt, iterations) = client.server_first(&server_first)?;
        let salted = salted_password(client_password, &salt, iterations);
        let server_final = server.client_final(&client.client_final(&salted))?;
        client.server_final(&server_final)
    }

    #[test]
    fn round_trip_right_and_wrong_password() {
        let secret = ScramSecret::generate("correct horse");
        exchange(&secret, "correct horse").unwrap();
        assert!(matches!(
            exchange(&secret, "battery staple"),
            Err(ScramError::BadProof)
        ));
    }

    #[test]
    fn round_trip_against_postgres_made_secret() {
        let secret = ScramSecret::parse(PG_SECRET).unwrap();
        exchange(&secret, "secret").unwrap();
        assert!(matches!(
            exchange(&secret, "Secret"),
            Err(ScramError::BadProof)
        ));
    }

    #[test]
    fn server_rejects_tampered_nonce() {
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let tampered = RFC_CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert!(matches!(
            server.client_final(tampered.as_bytes()),
            Err(ScramError::NonceMismatch)
        ));
    }

    #[test]
    fn client_rejects_nonce_not_extending_its_own() {
        for server_first in [
            "r=XXprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            let mut client = ScramClient::with_nonce(RFC_CLIENT_NONCE);
            assert!(matches!(
                client.server_first(server_first.as_bytes()),
                Err(ScramError::NonceMismatch)
            ));
        }
    }

    #[test]
    fn server_accepts_y_header_with_matching_echo() {
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(b"y,,n=,r=abc").unwrap();
        // Proof is garbage, so getting as far as BadProof shows c=eSws was accepted.
        let msg = format!("c=eSws,r=abc{RFC_SERVER_NONCE},p={}", B64.encode([0u8; 32]));
        assert!(matches!(
            server.client_final(msg.as_bytes()),
            Err(ScramError::BadProof)
        ));
    }

    #[test]
    fn server_rejects_mismatched_channel_binding_echo() {
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let msg = RFC_CLIENT_FINAL.replace("c=biws", "c=eSws");
        let err = server.client_final(msg.as_bytes()).unwrap_err();
        assert!(malformed_text(err).contains("channel binding"));
    }

    #[test]
    fn server_rejects_channel_binding() {
        let mut server = ScramServer::new(rfc_secret());
        assert!(matches!(
            server.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBindingUnsupported)
        ));
    }

    #[test]
    fn server_rejects_garbage() {
        for msg in [
            &b""[..],
            b"garbage",
            b"x,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,r=abc",
            b"n,,n=,r=",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=\xff",
        ] {
            let mut server = ScramServer::new(rfc_secret());
            assert!(
                matches!(server.client_first(msg), Err(ScramError::Malformed(_))),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn server_rejects_garbage_client_final() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        for msg in [
            "garbage".to_string(),
            format!("c=biws,r={nonce}"),
            format!("c=biws,r={nonce},p=notbase64!"),
            format!("c=biws,r={nonce},p={}", B64.encode([0u8; 31])),
            format!("r={nonce},p={}", B64.encode([0u8; 32])),
        ] {
            let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
            server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            assert!(
                matches!(
                    server.client_final(msg.as_bytes()),
                    Err(ScramError::Malformed(_))
                ),
                "{msg}"
            );
        }
    }

    #[test]
    fn server_messages_out_of_order() {
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        assert!(server.client_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert!(server.client_first(RFC_CLIENT_FIRST.as_bytes()).is_err());
        // A failed exchange cannot be retried on the same state machine.
        let mut server = ScramServer::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert!(server.client_final(b"garbage").is_err());
        assert!(server.client_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn client_rejects_garbage_server_first() {
        for msg in [
            &b"garbage"[..],
            b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=lots",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        ] {
            let mut client = ScramClient::with_nonce(RFC_CLIENT_NONCE);
            assert!(
                matches!(client.server_first(msg), Err(ScramError::Malformed(_))),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn nonces_are_fresh_and_printable() {
        let a = ScramClient::new();
        let b = ScramClient::new();
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 24);
        assert!(is_printable_nonce(&a.nonce));
        let server = ScramServer::new(rfc_secret());
        assert_eq!(server.server_nonce.len(), 24);
        assert!(is_printable_nonce(&server.server_nonce));
    }

    #[test]
    fn pg_secret_parses_and_matches_password() {
        let secret = ScramSecret::parse(PG_SECRET).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert_eq!(secret.to_string(), PG_SECRET);
        assert!(secret == ScramSecret::from_password("secret", &secret.salt, 4096));
    }

    #[test]
    fn secret_display_round_trips() {
        let secret = rfc_secret();
        let text = secret.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        assert!(ScramSecret::parse(&text).unwrap() == secret);
        let generated = ScramSecret::generate("pw");
        assert_eq!(generated.iterations, 4096);
        assert_eq!(generated.salt.len(), 16);
        assert!(ScramSecret::parse(&generated.to_string()).unwrap() == generated);
    }

    #[test]
    fn secret_parse_rejects_malformed() {
        let key = B64.encode([7u8; 32]);
        let short_key = B64.encode([7u8; 31]);
        for bad in [
            "SCRAM-SHA-256".to_string(),
            format!("SCRAM-SHA-256$4096:c2FsdA=={key}:{key}"),
            format!("SCRAM-SHA-256$4096c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}{key}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:not*base64${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${short_key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{short_key}"),
            format!("SCRAM-SHA-1$4096:c2FsdA==${key}:{key}"),
        ] {
            assert!(ScramSecret::parse(&bad).is_err(), "{bad}");
        }
        assert!(ScramSecret::parse(&format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}")).is_ok());
    }

    #[test]
    fn debug_redacts_keys() {
        let debug = format!("{:?}", rfc_secret());
        assert_eq!(
            debug,
            "ScramSecret { iterations: 4096, salt: <redacted>, \
             stored_key: <redacted>, server_key: <redacted> }"
        );
        let secret = crate::auth::Secret::Scram(rfc_secret());
        assert_eq!(format!("{secret:?}"), "Scram(<redacted>)");
    }
}
