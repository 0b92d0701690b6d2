//! A client's opening: answer SSL and GSS encryption requests with 'N' (no TLS yet), then read
//! either a CancelRequest or a StartupMessage.

use bytes::BytesMut;

use super::conn::LoginConn;
use crate::protocol::error::{code, PgError};
use crate::protocol::startup::{self, StartupPacket};

pub enum Opening {
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    Cancel {
        pid: u32,
        secret: u32,
    },
}

#[derive(Debug)]
pub enum OpeningError {
    /// The client went away or the socket failed: nothing to tell it.
    Gone,
    /// Tell the client why, then close.
    Refuse(PgError),
}

pub async fn read_opening(conn: &mut LoginConn<'_>) -> Result<Opening, OpeningError> {
    loop {
        let packet = read_packet(conn).await?;
        match startup::parse(&packet) {
            Ok(StartupPacket::Ssl) | Ok(StartupPacket::GssEnc) => {
                conn.out.extend_from_slice(b"N");
                conn.flush().await.map_err(|_| OpeningError::Gone)?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                return Ok(Opening::Cancel { pid, secret })
            }
            Ok(StartupPacket::Startup { minor, params }) => {
                return Ok(Opening::Startup { minor, params })
            }
            Err(reason) => return Err(violation(reason)),
        }
    }
}

async fn read_packet(conn: &mut LoginConn<'_>) -> Result<BytesMut, OpeningError> {
    conn.fill(4).await.map_err(|_| OpeningError::Gone)?;
    let total = match startup::packet_len(&conn.input) {
        Some(Ok(total)) => total,
        Some(Err(reason)) => return Err(violation(reason)),
        None => unreachable!("four bytes read"),
    };
    conn.fill(total).await.map_err(|_| OpeningError::Gone)?;
    Ok(conn.input.split_to(total))
}

fn violation(reason: String) -> OpeningError {
    OpeningError::Refuse(PgError::fatal(code::PROTOCOL_VIOLATION, reason))
}
