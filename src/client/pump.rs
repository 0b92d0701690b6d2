//! Forwarding while a backend is bound: both directions move at once (so neither side can
//! block the other into a deadlock), frames are walked by header and passed on as they came,
//! and only ReadyForQuery and ParameterStatus are looked into. Each direction holds at most
//! `MAX_PENDING` bytes not yet written; past that, sluice stops reading from the sender, which
//! is the backpressure a slow reader gets.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::transaction::TxState;
use crate::params::{self, Params};
use crate::protocol::error::{code, PgError};
use crate::protocol::frame::{FrameWalker, Step};
use crate::protocol::messages::{ftag, parse_parameter_status, tag};
use crate::server::ServerConn;

/// Read size per syscall.
pub const READ_SIZE: usize = 16 * 1024;
/// Bytes read but not yet written, per direction, before reading pauses.
const MAX_PENDING: usize = 256 * 1024;

/// Why forwarding stopped.
#[derive(Debug)]
pub enum Ended {
    /// The transaction is over and the backend idle: it may go back to the pool.
    Released,
    /// The client left (Terminate or a closed socket). `clean` when no partial message went
    /// to the backend, so it can still be rolled back and reused.
    ClientGone { clean: bool },
    /// The backend closed or broke the protocol.
    ServerGone,
    /// The client broke the protocol; tell it and close.
    Fatal(PgError),
}

/// The client's side of forwarding: its socket, unwalked input and session parameters.
pub struct ClientSide<'a> {
    pub stream: &'a mut TcpStream,
    pub input: &'a mut BytesMut,
    pub walker: &'a mut FrameWalker,
    pub params: &'a mut Params,
    pub extra_params: &'a [String],
}

/// Forward between client and backend until `Ended`. Returns the bytes still owed to the
/// client, which the caller writes after giving the backend back.
pub async fn forward(
    client: ClientSide<'_>,
    server: &mut ServerConn,
    tx: &mut TxState,
    release_when_idle: bool,
) -> (Ended, BytesMut) {
    let mut to_server = BytesMut::new();
    let mut to_client = BytesMut::new();
    let ClientSide {
        stream,
        input,
        walker,
        params,
        extra_params,
    } = client;
    let (mut crd, mut cwr) = stream.split();
    let ServerConn {
        stream: sstream,
        rbuf,
        params: server_params,
        ..
    } = server;
    let (mut srd, mut swr) = sstream.split();
    let mut server_walker = FrameWalker::new(0);

    let end = 'forward: {
    if let Err(end) = walk_client(input, &mut to_server, walker, tx) {
        break 'forward end;
    }
    loop {
        if release_when_idle
            && tx.idle()
            && walker.at_boundary()
            && server_walker.at_boundary()
            && to_server.is_empty()
            && rbuf.is_empty()
        {
            break 'forward Ended::Released;
        }
        reserve(input);
        reserve(rbuf);
        tokio::select! {
            biased;
            r = swr.write(&to_server), if !to_server.is_empty() => match r {
                Ok(n) if n > 0 => drained(&mut to_server, n),
                _ => break 'forward Ended::ServerGone,
            },
            r = cwr.write(&to_client), if !to_client.is_empty() => match r {
                Ok(n) if n > 0 => drained(&mut to_client, n),
                _ => break 'forward gone(walker, &to_server),
            },
            r = srd.read_buf(rbuf), if to_client.len() < MAX_PENDING => match r {
                Ok(n) if n > 0 => {
                    let seen = Seen { tx: &mut *tx, server_params: &mut *server_params, client_params: &mut *params, extra: extra_params };
                    if walk_server(rbuf, &mut to_client, &mut server_walker, seen).is_err() {
                        break 'forward Ended::ServerGone;
                    }
                }
                _ => break 'forward Ended::ServerGone,
            },
            r = crd.read_buf(input), if to_server.len() < MAX_PENDING => match r {
                Ok(n) if n > 0 => {
                    if let Err(end) = walk_client(input, &mut to_server, walker, tx) {
                        break 'forward end;
                    }
                }
                _ => break 'forward gone(walker, &to_server),
            },
        }
    }
};
    // A client that left mid-way through a backend's reply leaves the backend unreadable.
    let end = match end {
        Ended::ClientGone { clean } => Ended::ClientGone {
            clean: clean && server_walker.at_boundary(),
        },
        other => other,
    };
    (end, to_client)
}

fn gone(walker: &FrameWalker, to_server: &BytesMut) -> Ended {
    Ended::ClientGone {
        clean: walker.at_boundary() && to_server.is_empty(),
    }
}

#[inline]
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// `n` bytes were written; once all are, let go of the buffer so the reader's allocation is
/// unshared and can be reused in place.
#[inline]
fn drained(buf: &mut BytesMut, n: usize) {
    buf.advance(n);
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// Walk the client's input, accounting each message, and move it to `out`.
fn walk_client(
    input: &mut BytesMut,
    out: &mut BytesMut,
    walker: &mut FrameWalker,
    tx: &mut TxState,
) -> Result<(), Ended> {
    let mut n = 0;
    let result = loop {
        match walker.step(&input[n..], |t| t == ftag::TERMINATE) {
            Step::NeedMore => break Ok(()),
            Step::Whole { tag: ftag::TERMINATE, len } => {
                out.unsplit(input.split_to(n));
                input.advance(len);
                return Err(gone(walker, out));
            }
            Step::Whole { tag, len } | Step::Start { tag, len } => {
                tx.on_client(tag);
                n += len;
            }
            Step::Continue { len } => n += len,
            Step::Malformed { tag, declared } => break Err(Ended::Fatal(too_large(tag, declared))),
        }
    };
    out.unsplit(input.split_to(n));
    result
}

pub fn too_large(tag: u8, declared: usize) -> PgError {
    PgError::fatal(
        code::PROTOCOL_VIOLATION,
        format!(
            "invalid message length {declared} for message type \"{}\": over limits.max_message_size or malformed",
            tag as char
        ),
    )
}

/// What walking the server's output updates.
struct Seen<'a> {
    tx: &'a mut TxState,
    server_params: &'a mut Params,
    client_params: &'a mut Params,
    extra: &'a [String],
}

/// Walk the backend's output, noting ReadyForQuery and ParameterStatus, and move it to `out`.
fn walk_server(
    input: &mut BytesMut,
    out: &mut BytesMut,
    walker: &mut FrameWalker,
    seen: Seen<'_>,
) -> Result<(), ()> {
    let mut n = 0;
    loop {
        match walker.step(&input[n..], |t| t == tag::READY_FOR_QUERY || t == tag::PARAMETER_STATUS) {
            Step::NeedMore => break,
            Step::Whole { tag: tag::READY_FOR_QUERY, len } => {
                seen.tx.on_ready(input.get(n + 5).copied().unwrap_or(b'E'));
                n += len;
            }
            Step::Whole { tag: tag::PARAMETER_STATUS, len } => {
                if let Some((name, value)) = parse_parameter_status(&input[n + 5..n + len]) {
                    seen.server_params.set(name, value);
                    if params::is_tracked(name, seen.extra) {
                        seen.client_params.set(name, value);
                    }
                }
                n += len;
            }
            Step::Whole { len, .. } | Step::Start { len, .. } | Step::Continue { len } => n += len,
            Step::Malformed { .. } => return Err(()),
        }
    }
    out.unsplit(input.split_to(n));
    Ok(())
}
