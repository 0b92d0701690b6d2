//! The messages sluice writes itself, in both directions: to clients during login and when it
//! answers on a backend's behalf, and to backends when it logs in or resets a connection.
//! Each appends one frame to a buffer the caller owns.

use bytes::{BufMut, BytesMut};

/// Backend message tags sluice looks at.
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const NEGOTIATE_PROTOCOL: u8 = b'v';
    pub const COPY_IN_RESPONSE: u8 = b'G';
}

/// Frontend message tags sluice looks at.
pub mod ftag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const FLUSH: u8 = b'H';
    pub const SYNC: u8 = b'S';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
}

/// Authentication request codes in an 'R' message.
pub mod auth_code {
    pub const OK: u32 = 0;
    pub const CLEARTEXT: u32 = 3;
    pub const MD5: u32 = 5;
    pub const SASL: u32 = 10;
    pub const SASL_CONTINUE: u32 = 11;
    pub const SASL_FINAL: u32 = 12;
}

/// Start a frame: the tag and a length to be filled in by `finish`; returns its start.
#[inline]
pub(crate) fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_u32(0);
    start
}

/// Fill in the length of the frame begun at `start`.
#[inline]
pub(crate) fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_cstr(out: &mut BytesMut, s: &(impl AsRef<[u8]> + ?Sized)) {
    out.put_slice(s.as_ref());
    out.put_u8(0);
}

pub fn auth_ok(out: &mut BytesMut) {
    auth_request(out, auth_code::OK, &[]);
}

pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    auth_request(out, auth_code::MD5, &salt);
}

pub fn auth_sasl(out: &mut BytesMut, mechanism: &str) {
    let start = begin(out, tag::AUTHENTICATION);
    out.put_u32(auth_code::SASL);
    put_cstr(out, mechanism);
    out.put_u8(0);
    finish(out, start);
}

pub fn auth_request(out: &mut BytesMut, code: u32, data: &[u8]) {
    let start = begin(out, tag::AUTHENTICATION);
    out.put_u32(code);
    out.put_slice(data);
    finish(out, start);
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let start = begin(out, tag::PARAMETER_STATUS);
    put_cstr(out, name);
    put_cstr(out, value);
    finish(out, start);
}

pub fn backend_key_data(out: &mut BytesMut, pid: u32, secret: u32) {
    let start = begin(out, tag::BACKEND_KEY_DATA);
    out.put_u32(pid);
    out.put_u32(secret);
    finish(out, start);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let start = begin(out, tag::READY_FOR_QUERY);
    out.put_u8(status);
    finish(out, start);
}

/// Tell a client asking for 3.x (x > 0) that sluice speaks 3.0 and which `_pq_.` options it
/// did not recognise.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[&str]) {
    let start = begin(out, tag::NEGOTIATE_PROTOCOL);
    out.put_u32(0);
    out.put_u32(unrecognized.len() as u32);
    for name in unrecognized {
        put_cstr(out, name);
    }
    finish(out, start);
}

pub fn password_message(out: &mut BytesMut, password: &[u8]) {
    let start = begin(out, ftag::PASSWORD);
    out.put_slice(password);
    out.put_u8(0);
    finish(out, start);
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let start = begin(out, ftag::PASSWORD);
    put_cstr(out, mechanism);
    out.put_i32(data.len() as i32);
    out.put_slice(data);
    finish(out, start);
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    let start = begin(out, ftag::PASSWORD);
    out.put_slice(data);
    finish(out, start);
}

pub fn query(out: &mut BytesMut, sql: &str) {
    let start = begin(out, ftag::QUERY);
    put_cstr(out, sql);
    finish(out, start);
}

pub fn terminate(out: &mut BytesMut) {
    let start = begin(out, ftag::TERMINATE);
    finish(out, start);
}

/// The Terminate frame as constant bytes, for writes that must not allocate.
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Split a SASLInitialResponse body into the mechanism name and the client's data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let (mechanism, rest) = super::frame::cstr(body)?;
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some((mechanism, data))
}

/// The code and data of an Authentication ('R') message body.
pub fn parse_auth_request(body: &[u8]) -> Option<(u32, &[u8])> {
    let code = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    Some((code, &body[4..]))
}

/// Name and value of a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = super::frame::cstr(body)?;
    let (value, _) = super::frame::cstr(rest)?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{body, header};

    #[test]
    fn ready_for_query_is_six_bytes() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'I');
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
    }

    #[test]
    fn parameter_status_parses_back() {
        let mut out = BytesMut::new();
        parameter_status(&mut out, "TimeZone", "UTC");
        assert_eq!(header(&out), Some((b'S', out.len())));
        assert_eq!(
            parse_parameter_status(body(&out)),
            Some(("TimeZone", "UTC"))
        );
    }

    #[test]
    fn sasl_initial_response_parses_back() {
        let mut out = BytesMut::new();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(
            parse_sasl_initial_response(body(&out)),
            Some(("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]))
        );
    }

    #[test]
    fn terminate_constant_matches_builder() {
        let mut out = BytesMut::new();
        terminate(&mut out);
        assert_eq!(&out[..], &TERMINATE);
    }
}
