//! Authenticating a client against users.toml with trust, md5 or SCRAM-SHA-256. A wrong
//! password and an unknown user fail the same way, after the same exchange, with PostgreSQL's
//! own message, so the answer never tells which users exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use bytes::{Buf, BytesMut};
use sha2::{Digest, Sha256};

use super::conn::LoginConn;
use crate::auth::scram::{ScramSecret, ScramServer, MECHANISM};
use crate::auth::{md5, Secret};
use crate::config::AuthType;
use crate::protocol::error::{code, PgError};
use crate::protocol::frame::header;
use crate::protocol::messages::{self, auth_code, ftag, parse_sasl_initial_response};

/// Largest password message accepted.
const MAX_AUTH_MESSAGE: usize = 8192;

/// SCRAM secrets derived from plain-text passwords, made once per password on the blocking
/// pool so that logins after the first cost no PBKDF2. Concurrent first logins wait for the
/// one derivation instead of each running their own.
#[derive(Default)]
pub struct ClientSecrets {
    cache: Mutex<HashMap<SecretKey, Arc<OnceCell<ScramSecret>>>>,
}

/// A user and a digest of the password its secret was derived from.
type SecretKey = (String, [u8; 32]);

impl ClientSecrets {
    async fn scram_for(&self, user: &str, password: &str) -> ScramSecret {
        let key = (user.to_string(), Sha256::digest(password.as_bytes()).into());
        let cell = self.cache.lock().unwrap().entry(key).or_default().clone();
        let secret = cell
            .get_or_init(|| async {
                let pw = password.to_string();
                tokio::task::spawn_blocking(move || ScramSecret::generate(&pw))
                    .await
                    .expect("PBKDF2 task panicked")
            })
            .await;
        secret.clone()
    }
}

#[derive(Debug)]
pub enum LoginError {
    /// The client went away mid-exchange.
    Gone,
    Refuse(PgError),
}

/// Run the exchange `kind` calls for. `secret` is None for a user not in users.toml. The last
/// message of the exchange (SCRAM's SASLFinal) is left in `conn.out`, to go with what follows.
pub async fn authenticate(
    stream: &mut LoginConn<'_>,
    user: &str,
    kind: AuthType,
    secret: Option<&Secret>,
    secrets: &ClientSecrets,
) -> Result<(), LoginError> {
    let ok = match (kind, secret) {
        (AuthType::Trust, Some(_)) => true,
        (AuthType::Trust, None) => {
            return Err(LoginError::Refuse(PgError::fatal(
                code::INVALID_AUTHORIZATION,
                format!("role \"{user}\" does not exist"),
            )))
        }
        // PostgreSQL answers md5 with SCRAM when it only holds a SCRAM secret; so do we.
        (AuthType::Md5, Some(Secret::Scram(s))) => scram_exchange(stream, s.clone()).await?,
        (AuthType::Md5, Some(Secret::Plain(pw))) => {
            md5_exchange(stream, Some(md5::stored(user, pw))).await?
        }
        (AuthType::Md5, Some(Secret::Md5(stored))) => {
            md5_exchange(stream, Some(stored.clone())).await?
        }
        (AuthType::Md5, None) => md5_exchange(stream, None).await?,
        (AuthType::ScramSha256, Some(Secret::Scram(s))) => {
            scram_exchange(stream, s.clone()).await?
        }
        (AuthType::ScramSha256, Some(Secret::Plain(pw))) => {
            let s = secrets.scram_for(user, pw).await;
            scram_exchange(stream, s).await?
        }
        // An md5 hash cannot verify SCRAM; like an unknown user, run the exchange and fail.
        (AuthType::ScramSha256, _) => {
            scram_exchange(stream, decoy_secret()).await?;
            false
        }
    };
    if ok {
        Ok(())
    } else {
        Err(LoginError::Refuse(auth_failed(user)))
    }
}

pub fn auth_failed(user: &str) -> PgError {
    PgError::fatal(
        code::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

async fn md5_exchange(
    stream: &mut LoginConn<'_>,
    stored: Option<String>,
) -> Result<bool, LoginError> {
    let salt: [u8; 4] = rand::random();
    messages::auth_md5(&mut stream.out, salt);
    send(stream).await?;
    let body = read_password_message(stream).await?;
    let response = body.strip_suffix(&[0]).unwrap_or(&body);
    Ok(stored.is_some_and(|s| md5::verify(&s, salt, response)))
}

async fn scram_exchange(
    stream: &mut LoginConn<'_>,
    secret: ScramSecret,
) -> Result<bool, LoginError> {
    let mut server = ScramServer::new(secret);
    messages::auth_sasl(&mut stream.out, MECHANISM);
    send(stream).await?;
    let body = read_password_message(stream).await?;
    let Some((mechanism, first)) = parse_sasl_initial_response(&body) else {
        return Err(violation("malformed SASLInitialResponse"));
    };
    if mechanism != MECHANISM {
        return Err(violation(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let Ok(server_first) = server.client_first(first) else {
        return Ok(false);
    };
    messages::auth_request(&mut stream.out, auth_code::SASL_CONTINUE, &server_first);
    send(stream).await?;
    let body = read_password_message(stream).await?;
    let Ok(server_final) = server.client_final(&body) else {
        return Ok(false);
    };
    // Not sent yet: AuthenticationOk and the login reply go with it.
    messages::auth_request(&mut stream.out, auth_code::SASL_FINAL, &server_final);
    Ok(true)
}

/// A SCRAM secret nobody knows the password to, for users that cannot pass.
fn decoy_secret() -> ScramSecret {
    ScramSecret {
        iterations: 4096,
        salt: rand::random::<[u8; 16]>().to_vec(),
        stored_key: rand::random(),
        server_key: rand::random(),
    }
}

/// Write what is owed before waiting for the client's answer.
async fn send(stream: &mut LoginConn<'_>) -> Result<(), LoginError> {
    stream.flush().await.map_err(|_| LoginError::Gone)
}

/// Read one PasswordMessage-family frame ('p') and return its body.
async fn read_password_message(stream: &mut LoginConn<'_>) -> Result<BytesMut, LoginError> {
    stream.fill(5).await.map_err(|_| LoginError::Gone)?;
    let Some((tag, total)) = header(&stream.input) else {
        unreachable!("five bytes read")
    };
    if tag == ftag::TERMINATE {
        return Err(LoginError::Gone);
    }
    if tag != ftag::PASSWORD {
        return Err(violation(&format!(
            "expected password response, got message type {}",
            tag
        )));
    }
    if total == 0 || total > MAX_AUTH_MESSAGE {
        return Err(violation("invalid password message length"));
    }
    stream.fill(total).await.map_err(|_| LoginError::Gone)?;
    let mut body = stream.input.split_to(total);
    body.advance(5);
    Ok(body)
}

fn violation(reason: &str) -> LoginError {
    LoginError::Refuse(PgError::fatal(code::PROTOCOL_VIOLATION, reason))
}
