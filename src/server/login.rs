//! Logging in to a backend as a pool's user: send the StartupMessage, answer whichever of
//! trust, cleartext, md5 or SCRAM-SHA-256 the server asks for, then collect its parameters
//! and cancel key up to the first ReadyForQuery.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{wire, BackendKey, ConnectTarget, SaltedPasswords, ServerError};
use crate::auth::{md5, scram, Secret};
use crate::params::Params;
use crate::protocol::error::PgError;
use crate::protocol::messages::{self, auth_code, parse_auth_request, tag};
use crate::protocol::startup::startup_message;

pub(super) async fn login(
    stream: &mut TcpStream,
    target: &ConnectTarget,
    salted: &SaltedPasswords,
) -> Result<(BackendKey, Params), ServerError> {
    let startup = startup_message(&[("user", &target.user), ("database", &target.dbname)]);
    stream.write_all(&startup).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut scram_client: Option<scram::ScramClient> = None;
    let mut params = Params::new();
    let mut key = BackendKey { pid: 0, secret: 0 };
    loop {
        let frame = wire::read_frame(stream, &mut buf).await?;
        let body = &frame[5..];
        match frame[0] {
            tag::AUTHENTICATION => {
                let reply = answer_auth(body, target, salted, &mut scram_client).await?;
                if let Some(reply) = reply {
                    stream.write_all(&reply).await?;
                }
            }
            tag::PARAMETER_STATUS => wire::note_parameter(body, &mut params),
            tag::BACKEND_KEY_DATA if body.len() >= 8 => {
                key = BackendKey {
                    pid: u32::from_be_bytes(body[..4].try_into().unwrap()),
                    secret: u32::from_be_bytes(body[4..8].try_into().unwrap()),
                };
            }
            tag::READY_FOR_QUERY => return Ok((key, params)),
            tag::ERROR_RESPONSE => return Err(ServerError::Rejected(PgError::decode(body))),
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL => {}
            other => {
                return Err(ServerError::Login(format!(
                    "unexpected message '{}' during login",
                    other as char
                )))
            }
        }
    }
}

/// The reply to one Authentication request, if it needs one.
async fn answer_auth(
    body: &[u8],
    target: &ConnectTarget,
    salted: &SaltedPasswords,
    scram_client: &mut Option<scram::ScramClient>,
) -> Result<Option<BytesMut>, ServerError> {
    let (code, data) = parse_auth_request(body)
        .ok_or_else(|| ServerError::Login("malformed authentication request".into()))?;
    let mut out = BytesMut::new();
    match code {
        auth_code::OK => return Ok(None),
        auth_code::CLEARTEXT => {
            let password = plain_password(target, "password")?;
            messages::password_message(&mut out, password.as_bytes());
        }
        auth_code::MD5 => {
            let salt: [u8; 4] = data
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| ServerError::Login("malformed md5 request".into()))?;
            let stored = match &target.secret {
                Some(Secret::Md5(stored)) => stored.clone(),
                Some(Secret::Plain(pw)) => md5::stored(&target.user, pw),
                _ => return Err(no_password(target, "md5")),
            };
            messages::password_message(&mut out, md5::client_response(&stored, salt).as_bytes());
        }
        auth_code::SASL => {
            if !sasl_mechanisms(data).any(|m| m == scram::MECHANISM) {
                return Err(ServerError::Login(
                    "server offers no SASL mechanism sluice speaks".into(),
                ));
            }
            plain_password(target, "scram-sha-256")?;
            let client = scram::ScramClient::new();
            messages::sasl_initial_response(&mut out, scram::MECHANISM, &client.client_first());
            *scram_client = Some(client);
        }
        auth_code::SASL_CONTINUE => {
            let client = scram_client
                .as_mut()
                .ok_or_else(|| ServerError::Login("SASL out of order".into()))?;
            let (salt, iterations) = client.server_first(data).map_err(scram_failed)?;
            let password = plain_password(target, "scram-sha-256")?;
            let salted_password = salted.get(password, &salt, iterations).await.ok_or_else(|| {
                ServerError::Login(format!("server asks for {iterations} SCRAM iterations; sluice allows at most 1000000"))
            })?;
            messages::sasl_response(&mut out, &client.client_final(&salted_password));
        }
        auth_code::SASL_FINAL => {
            let client = scram_client
                .as_ref()
                .ok_or_else(|| ServerError::Login("SASL out of order".into()))?;
            client.server_final(data).map_err(scram_failed)?;
            return Ok(None);
        }
        other => {
            return Err(ServerError::Login(format!(
                "server asks for authentication method {other}, which sluice does not support"
            )))
        }
    }
    Ok(Some(out))
}

fn sasl_mechanisms(data: &[u8]) -> impl Iterator<Item = &str> {
    data.split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .filter_map(|m| std::str::from_utf8(m).ok())
}

fn plain_password<'a>(target: &'a ConnectTarget, method: &str) -> Result<&'a str, ServerError> {
    match &target.secret {
        Some(Secret::Plain(pw)) => Ok(pw),
        _ => Err(no_password(target, method)),
    }
}

fn no_password(target: &ConnectTarget, method: &str) -> ServerError {
    ServerError::Login(format!(
        "the server asks for {method} authentication for user \"{}\" and users.toml holds no \
         password sluice can use for it (a plain password works for every method; an md5 hash \
         only for md5)",
        target.user
    ))
}

fn scram_failed(e: scram::ScramError) -> ServerError {
    ServerError::Login(format!("SCRAM authentication with the server failed: {e}"))
}
