//! A client's opening: answer SSL and GSS encryption requests with 'N' (no TLS yet), then read
//! either a CancelRequest or a StartupMessage.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

pub async fn read_opening(stream: &mut TcpStream) -> Result<Opening, OpeningError> {
    loop {
        let packet = read_packet(stream).await?;
        match startup::parse(&packet) {
            Ok(StartupPacket::Ssl) | Ok(StartupPacket::GssEnc) => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|_| OpeningError::Gone)?;
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

async fn read_packet(stream: &mut TcpStream) -> Result<Vec<u8>, OpeningError> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|_| OpeningError::Gone)?;
    let total = match startup::packet_len(&len) {
        Some(Ok(total)) => total,
        Some(Err(reason)) => return Err(violation(reason)),
        None => unreachable!("four bytes read"),
    };
    let mut packet = vec![0u8; total];
    packet[..4].copy_from_slice(&len);
    stream
        .read_exact(&mut packet[4..])
        .await
        .map_err(|_| OpeningError::Gone)?;
    Ok(packet)
}

fn violation(reason: String) -> OpeningError {
    OpeningError::Refuse(PgError::fatal(code::PROTOCOL_VIOLATION, reason))
}
