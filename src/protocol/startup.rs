//! The untagged packets a connection opens with: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage. Each is a 4-byte length that counts itself, then a 4-byte code.

use bytes::{BufMut, BytesMut};

pub const PROTOCOL_3_0: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// Longest startup packet accepted (PostgreSQL's own limit is 10000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel {
        pid: u32,
        secret: u32,
    },
    Startup {
        /// Minor protocol version the client asked for (major is always 3).
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// The length prefix of a startup packet, once four bytes are in: `Err` when out of range.
pub fn packet_len(buf: &[u8]) -> Option<Result<usize, String>> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Some(Err(format!("invalid startup packet length {len}")));
    }
    Some(Ok(len))
}

/// Parse a whole startup packet (including its length prefix).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, String> {
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST if packet.len() == 16 => Ok(StartupPacket::Cancel {
            pid: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            secret: u32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]),
        }),
        c if c >> 16 == 3 => Ok(StartupPacket::Startup {
            minor: (c & 0xffff) as u16,
            params: parse_params(&packet[8..])?,
        }),
        c => Err(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            c >> 16,
            c & 0xffff
        )),
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut params = Vec::new();
    loop {
        let (name, tail) = super::frame::cstr(rest).ok_or("invalid startup packet layout")?;
        if name.is_empty() {
            return Ok(params);
        }
        let (value, tail) = super::frame::cstr(tail)
            .ok_or_else(|| format!("startup parameter \"{name}\" has no value"))?;
        params.push((name.to_string(), value.to_string()));
        rest = tail;
    }
}

/// Build a StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    out.put_u32(0);
    out.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Build a CancelRequest for a backend's key.
pub fn cancel_request(pid: u32, secret: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_round_trips() {
        let msg = startup_message(&[("user", "alice"), ("database", "app")]);
        assert_eq!(packet_len(&msg), Some(Ok(msg.len())));
        assert_eq!(
            parse(&msg).unwrap(),
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
    }

    #[test]
    fn cancel_and_ssl_requests_parse() {
        assert_eq!(
            parse(&cancel_request(42, 7)).unwrap(),
            StartupPacket::Cancel { pid: 42, secret: 7 }
        );
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend(SSL_REQUEST.to_be_bytes());
        assert_eq!(parse(&ssl).unwrap(), StartupPacket::Ssl);
    }

    #[test]
    fn bad_lengths_and_versions_are_refused() {
        assert!(matches!(packet_len(&[0, 0, 0, 4]), Some(Err(_))));
        assert!(matches!(packet_len(&[0, 1, 0, 0]), Some(Err(_))));
        let mut v2 = 8u32.to_be_bytes().to_vec();
        v2.extend(0x0002_0000u32.to_be_bytes());
        assert!(parse(&v2)
            .unwrap_err()
            .contains("unsupported frontend protocol 2.0"));
    }
}
