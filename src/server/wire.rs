//! Reading whole frames from a backend outside the forward path (login and maintenance
//! queries), and absorbing the asynchronous messages an idle backend may send.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::params::Params;
use crate::protocol::frame::header;
use crate::protocol::messages::{parse_parameter_status, tag};

/// Largest frame accepted from a backend outside the forward path.
const MAX_FRAME: usize = 1 << 20;

/// Read one whole frame (header included), buffering in `buf`.
pub(super) async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> std::io::Result<BytesMut> {
    loop {
        if let Some((_, total)) = header(buf) {
            if total == 0 || total > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "malformed message from server",
                ));
            }
            if buf.len() >= total {
                return Ok(buf.split_to(total));
            }
            buf.reserve(total - buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Record a ParameterStatus body into `params`.
pub(super) fn note_parameter(body: &[u8], params: &mut Params) {
    if let Some((name, value)) = parse_parameter_status(body) {
        params.set(name, value);
    }
}

/// Take in bytes an idle backend sent on its own. True when they were only harmless
/// asynchronous messages (ParameterStatus, notices, notifications) and whole frames.
pub(super) fn absorb_async(mut bytes: &[u8], params: &mut Params) -> bool {
    while !bytes.is_empty() {
        let Some((t, total)) = header(bytes) else {
            return false;
        };
        if total == 0 || bytes.len() < total {
            return false;
        }
        match t {
            tag::PARAMETER_STATUS => note_parameter(&bytes[5..total], params),
            tag::NOTICE_RESPONSE | tag::NOTIFICATION => {}
            _ => return false,
        }
        bytes = &bytes[total..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::{PgError, Severity};
    use crate::protocol::messages::parameter_status;

    #[test]
    fn async_parameter_changes_are_absorbed() {
        let mut b = BytesMut::new();
        parameter_status(&mut b, "TimeZone", "UTC");
        PgError::new(Severity::Notice, "00000", "hi").encode(&mut b);
        let mut params = Params::new();
        assert!(absorb_async(&b, &mut params));
        assert_eq!(params.get("timezone"), Some("UTC"));
    }

    #[test]
    fn errors_and_partial_frames_mean_unusable() {
        let mut b = BytesMut::new();
        PgError::fatal("57P01", "terminating connection").encode(&mut b);
        assert!(!absorb_async(&b, &mut Params::new()));
        assert!(!absorb_async(&b[..3], &mut Params::new()));
    }
}
