//! The extended-protocol messages whose statement names sluice rewrites (Parse, Bind,
//! Describe, Close), and the short server replies it sometimes answers with itself. Parsing
//! borrows from the frame; building appends one frame to a buffer.

use bytes::{BufMut, BytesMut};

use super::frame::cstr_bytes;
use super::messages::{begin, finish, put_cstr};

/// Room kept after a frame sluice rewrites, for the short messages that usually follow it in
/// the batch (Describe, Execute, Sync): they are then appended without growing the buffer.
const ROOM_AFTER: usize = 64;

/// Make room for a frame of `body` bytes and what usually follows, at once: a frame built
/// piece by piece into an empty buffer would otherwise grow it at every piece.
fn room(out: &mut BytesMut, body: usize) {
    out.reserve(5 + body + ROOM_AFTER);
}

/// A Parse body: statement name, query text, and the raw parameter-type section. Names and
/// text are bytes in the client's encoding (see `cstr_bytes`).
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    pub param_types: &'a [u8],
}

pub fn parse_parse(body: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr_bytes(body)?;
    let (query, param_types) = cstr_bytes(rest)?;
    Some(Parse {
        name,
        query,
        param_types,
    })
}

/// Names and text are written as they are, in whatever encoding they came.
pub fn build_parse(
    out: &mut BytesMut,
    name: &(impl AsRef<[u8]> + ?Sized),
    query: &(impl AsRef<[u8]> + ?Sized),
    param_types: &[u8],
) {
    let (name, query) = (name.as_ref(), query.as_ref());
    room(out, name.len() + query.len() + 2 + param_types.len());
    let start = begin(out, b'P');
    put_cstr(out, name);
    put_cstr(out, query);
    out.put_slice(param_types);
    finish(out, start);
}

/// A Bind body: portal, statement, and everything after them.
pub fn parse_bind(body: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = cstr_bytes(body)?;
    let (statement, rest) = cstr_bytes(rest)?;
    Some((portal, statement, rest))
}

pub fn build_bind(
    out: &mut BytesMut,
    portal: &(impl AsRef<[u8]> + ?Sized),
    statement: &(impl AsRef<[u8]> + ?Sized),
    rest: &[u8],
) {
    let (portal, statement) = (portal.as_ref(), statement.as_ref());
    room(out, portal.len() + statement.len() + 2 + rest.len());
    let start = begin(out, b'B');
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
    finish(out, start);
}

/// Describe and Close bodies: 'S' (statement) or 'P' (portal), and the name.
pub fn parse_target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr_bytes(rest)?;
    Some((kind, name))
}

pub fn build_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    room(out, 1 + name.len() + 1);
    let start = begin(out, tag);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, start);
}

pub const PARSE_COMPLETE: [u8; 5] = [b'1', 0, 0, 0, 4];
pub const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];
pub const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

pub fn command_complete(out: &mut BytesMut, command: &str) {
    let start = begin(out, b'C');
    put_cstr(out, command);
    finish(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::body;

    #[test]
    fn parse_round_trips_with_a_new_name() {
        let mut out = BytesMut::new();
        build_parse(&mut out, "s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        let p = parse_parse(body(&out)).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        assert_eq!(p.param_types, &[0, 1, 0, 0, 0, 23]);
        let mut renamed = BytesMut::new();
        build_parse(&mut renamed, "sluice_7", p.query, p.param_types);
        assert_eq!(renamed.len(), out.len() + 6);
        assert_eq!(parse_parse(body(&renamed)).unwrap().name, b"sluice_7");
    }

    #[test]
    fn bind_keeps_its_parameters_when_renamed() {
        let rest = [0u8, 0, 0, 1, 0, 0, 0, 1, b'5', 0, 0];
        let mut out = BytesMut::new();
        build_bind(&mut out, b"", "s1", &rest);
        let (portal, stmt, tail) = parse_bind(body(&out)).unwrap();
        assert_eq!((portal, stmt, tail), (&b""[..], &b"s1"[..], &rest[..]));
    }

    #[test]
    fn describe_and_close_targets() {
        let mut out = BytesMut::new();
        build_target(&mut out, b'C', b'S', "s9");
        assert_eq!(out[0], b'C');
        assert_eq!(parse_target(body(&out)), Some((b'S', &b"s9"[..])));
    }
}
