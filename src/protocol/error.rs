//! Error responses: the errors sluice raises itself (with the SQLSTATEs in DESIGN.md) and the
//! ones it reads from backends during login, encoded and decoded as ErrorResponse frames.

use bytes::{BufMut, BytesMut};
use std::fmt;

/// SQLSTATEs sluice raises. Names follow PostgreSQL's errcodes.txt.
pub mod code {
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }

    fn parse(s: &str) -> Severity {
        match s {
            "FATAL" | "PANIC" => Severity::Fatal,
            "NOTICE" | "INFO" | "DEBUG" | "LOG" => Severity::Notice,
            "WARNING" => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

/// One error (or notice) as PostgreSQL reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> PgError {
        PgError {
            severity,
            code: code.to_string(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &str, message: impl Into<String>) -> PgError {
        PgError::new(Severity::Fatal, code, message)
    }

    pub fn error(code: &str, message: impl Into<String>) -> PgError {
        PgError::new(Severity::Error, code, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    /// Append this error as an ErrorResponse ('E') frame, or a NoticeResponse ('N') for
    /// notices and warnings.
    pub fn encode(&self, out: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Error | Severity::Fatal => b'E',
            Severity::Notice | Severity::Warning => b'N',
        };
        let start = out.len();
        out.put_u8(tag);
        out.put_u32(0);
        let sev = self.severity.as_str();
        field(out, b'S', sev);
        field(out, b'V', sev);
        field(out, b'C', &self.code);
        field(out, b'M', &self.message);
        if let Some(d) = &self.detail {
            field(out, b'D', d);
        }
        if let Some(h) = &self.hint {
            field(out, b'H', h);
        }
        out.put_u8(0);
        let len = (out.len() - start - 1) as u32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    /// Decode the body of an ErrorResponse or NoticeResponse (after the 5-byte header).
    pub fn decode(body: &[u8]) -> PgError {
        let mut err = PgError::new(Severity::Error, "XX000", "");
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'V' => err.severity = Severity::parse(&value),
                b'S' if err.message.is_empty() => err.severity = Severity::parse(&value),
                b'C' => err.code = value,
                b'M' => err.message = value,
                b'D' => err.detail = Some(value),
                b'H' => err.hint = Some(value),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        err
    }
}

fn field(out: &mut BytesMut, kind: u8, value: &str) {
    out.put_u8(kind);
    out.put_slice(value.as_bytes());
    out.put_u8(0);
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for PgError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        let err = PgError::fatal(code::TOO_MANY_CONNECTIONS, "no more clients")
            .with_hint("retry in 1s")
            .with_detail("cap 10");
        let mut buf = BytesMut::new();
        err.encode(&mut buf);
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        assert_eq!(PgError::decode(&buf[5..]), err);
    }

    #[test]
    fn notices_use_the_notice_tag() {
        let mut buf = BytesMut::new();
        PgError::new(Severity::Notice, "00000", "hello").encode(&mut buf);
        assert_eq!(buf[0], b'N');
    }
}
