//! Forwarding while a backend is bound: both directions move at once (so neither side can
//! block the other into a deadlock), and frames are walked by header and passed on as they
//! came, in runs, without copying. In transaction mode the frames that name prepared
//! statements or may leave session state go through `rewrite`, and replies go through the
//! tracker so sluice's own answers land in the right place. Each direction holds at most
//! `MAX_PENDING` bytes not yet written; past that sluice stops reading from the sender, which
//! is the backpressure a slow reader gets.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Instant;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::rewrite::{self, pass, ClientState, Ctx, Handled, Rules};
use super::transaction::TxState;
use crate::admin::tally::Tally;
use crate::cancel::{send_cancel, CancelTarget};
use crate::params::{self, Params};
use crate::prepared::BackendStatements;
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
    /// either way, so the backend can still be rolled back and reused.
    ClientGone { clean: bool },
    /// The backend closed or broke the protocol.
    ServerGone,
    /// The client broke the protocol; tell it and close.
    Fatal(PgError),
    /// The client sat inside a transaction past `pool.idle_transaction_timeout`.
    IdleInTransaction,
    /// The client sat idle past `pool.client_idle_timeout` (session mode).
    ClientIdle,
}

/// The timeouts a bound session enforces; zero turns one off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub idle_transaction: Duration,
    pub query: Duration,
    pub client_idle: Duration,
}

/// Which timeout is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    IdleInTransaction,
    Query,
    ClientIdle,
}

/// The client's side of forwarding.
pub struct ClientSide<'a, 'r> {
    pub stream: &'a mut TcpStream,
    pub input: &'a mut BytesMut,
    pub walker: &'a mut FrameWalker,
    pub params: &'a mut Arc<Params>,
    pub extra_params: &'a [String],
    /// Transaction pooling's rewriting; None in session mode.
    pub rewrite: Option<(&'a mut ClientState, &'a Rules<'r>)>,
    pub timeouts: Timeouts,
    /// Called when a statement is cancelled for running past `pool.query_timeout`.
    pub on_query_timeout: &'a (dyn Fn() + Sync),
    /// Traffic counts for the metrics and the admin console.
    pub tally: &'a mut Tally,
}

/// The state both walks update.
struct Flow<'a, 'r> {
    tx: &'a mut TxState,
    client_walker: &'a mut FrameWalker,
    server_walker: FrameWalker,
    client_params: &'a mut Arc<Params>,
    server_params: &'a mut Params,
    statements: &'a mut BackendStatements,
    extra: &'a [String],
    rewrite: Option<(&'a mut ClientState, &'a Rules<'r>)>,
    tally: &'a mut Tally,
    /// What the rewriter writes for a client message behind a run of forwarded ones, before
    /// it joins the bytes to the backend after that run. Empty until such a rewrite.
    written: BytesMut,
}

/// Forward between client and backend until `Ended`. Returns the bytes still owed to the
/// client, which the caller writes after giving the backend back.
pub async fn forward(
    client: ClientSide<'_, '_>,
    server: &mut ServerConn,
    tx: &mut TxState,
    release_when_idle: bool,
) -> (Ended, BytesMut) {
    let mut to_server = BytesMut::new();
    let mut to_client = BytesMut::new();
    let ServerConn {
        stream: sstream,
        rbuf,
        params: server_params,
        statements,
        addr,
        key,
        ..
    } = server;
    let cancel_target = CancelTarget {
        addr: *addr,
        key: *key,
    };
    let (mut srd, mut swr) = sstream.split();
    let (mut crd, mut cwr) = client.stream.split();
    let timeouts = client.timeouts;
    let on_query_timeout = client.on_query_timeout;
    let mut clock = Clock::new();
    // One timer for the whole binding, re-armed only when the deadline moves: building a
    // Sleep per loop turn cost a clock read and a runtime-handle clone each time.
    let mut timer_sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // When the armed timer fires, in the forward path's clock (the Sleep keeps tokio's).
    let mut armed_at: Option<Instant> = None;
    let input = client.input;
    let mut flow = Flow {
        tx,
        client_walker: client.walker,
        server_walker: FrameWalker::new(0),
        client_params: client.params,
        server_params,
        statements,
        extra: client.extra_params,
        rewrite: client.rewrite,
        tally: client.tally,
        written: BytesMut::new(),
    };

    let end = 'forward: {
        if let Err(end) = flow.walk_client(input, &mut to_server, &mut to_client) {
            break 'forward end;
        }
        flow.tally.requests(flow.tx.pending());
        loop {
            if release_when_idle && flow.may_release() && to_server.is_empty() && rbuf.is_empty() {
                break 'forward Ended::Released;
            }
            // Before any wait, so the meters are current while this binding sits (the
            // release above is counted once, below the loop).
            flow.flush_tally();
            // Write what is ready now, before waiting on anything: a socket with room takes
            // it in one call here, where a turn of the select below would cost a poll of
            // every branch for the same system call. (What the client is owed once the
            // backend may go is not written here: the caller writes it after the checkin.)
            if !to_server.is_empty() {
                match write_now(swr.try_write(&to_server)) {
                    Some(Ok(n)) => drained(&mut to_server, n),
                    Some(Err(())) => break 'forward Ended::ServerGone,
                    None => {}
                }
            }
            if !to_client.is_empty() {
                match write_now(cwr.try_write(&to_client)) {
                    Some(Ok(n)) => {
                        flow.tally.sent(n);
                        drained(&mut to_client, n);
                    }
                    Some(Err(())) => break 'forward flow.client_gone(&to_server),
                    None => {}
                }
            }
            reserve(input);
            reserve(rbuf);
            let timer = clock.next(&flow, &timeouts, to_server.is_empty());
            if let Some((at, _)) = timer {
                match timer_sleep.as_mut() {
                    Some(_) if armed_at == Some(at) => {}
                    Some(sleep) => sleep.as_mut().reset(at.into()),
                    None => timer_sleep = Some(Box::pin(tokio::time::sleep_until(at.into()))),
                }
                armed_at = Some(at);
            }
            tokio::select! {
                biased;
                r = swr.write(&to_server), if !to_server.is_empty() => match r {
                    Ok(n) if n > 0 => drained(&mut to_server, n),
                    _ => break 'forward Ended::ServerGone,
                },
                r = cwr.write(&to_client), if !to_client.is_empty() => match r {
                    Ok(n) if n > 0 => {
                        flow.tally.sent(n);
                        drained(&mut to_client, n);
                    }
                    _ => break 'forward flow.client_gone(&to_server),
                },
                r = srd.read_buf(rbuf), if to_client.len() < MAX_PENDING => match r {
                    Ok(n) if n > 0 => {
                        if flow.walk_server(rbuf, &mut to_client).is_err() {
                            break 'forward Ended::ServerGone;
                        }
                    }
                    _ => break 'forward Ended::ServerGone,
                },
                r = crd.read_buf(input), if to_server.len() < MAX_PENDING => match r {
                    Ok(n) if n > 0 => {
                        flow.tally.received(n);
                        let was_pending = flow.tx.pending();
                        if let Err(end) = flow.walk_client(input, &mut to_server, &mut to_client) {
                            break 'forward end;
                        }
                        flow.tally.requests(flow.tx.pending());
                        clock.client_spoke(was_pending == 0 && flow.tx.pending() > 0);
                    }
                    _ => break 'forward flow.client_gone(&to_server),
                },
                _ = armed(&mut timer_sleep), if timer.is_some() => match timer.map(|t| t.1) {
                    Some(Timer::IdleInTransaction) => break 'forward Ended::IdleInTransaction,
                    Some(Timer::ClientIdle) => break 'forward Ended::ClientIdle,
                    _ => {
                        clock.cancelled = true;
                        on_query_timeout();
                        cancel_timed_out(cancel_target);
                    }
                },
            }
        }
    };
    // The caller writes what is still owed to the client.
    flow.tally.sent(to_client.len());
    flow.flush_tally();
    (end, to_client)
}

/// What a write without waiting (`try_write`) did: Some(Ok(n)) for n > 0 bytes written, None
/// when the socket has no room (the caller waits for it), Some(Err) when the peer is gone.
#[inline]
pub(super) fn write_now(tried: std::io::Result<usize>) -> Option<Result<usize, ()>> {
    match tried {
        Ok(n) if n > 0 => Some(Ok(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        _ => Some(Err(())),
    }
}

/// Wait for the armed timer (the branch is enabled only when there is one).
async fn armed(sleep: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// When the client last spoke and when the statement in flight began, for the timeouts.
struct Clock {
    last_client: Instant,
    request_started: Instant,
    /// The statement in flight was already cancelled for running too long.
    cancelled: bool,
}

impl Clock {
    fn new() -> Clock {
        let now = Instant::now();
        Clock {
            last_client: now,
            request_started: now,
            cancelled: false,
        }
    }

    fn client_spoke(&mut self, new_request: bool) {
        self.last_client = Instant::now();
        if new_request {
            self.request_started = self.last_client;
            self.cancelled = false;
        }
    }

    /// The timeout that applies now, if any, and when it fires.
    fn next(
        &self,
        flow: &Flow<'_, '_>,
        t: &Timeouts,
        nothing_to_send: bool,
    ) -> Option<(Instant, Timer)> {
        let tx = &flow.tx;
        let quiet = tx.pending() == 0 && !tx.unsynced() && nothing_to_send;
        if tx.pending() > 0 && !t.query.is_zero() && !self.cancelled {
            return Some((self.request_started + t.query, Timer::Query));
        }
        if quiet && tx.status() != b'I' && !t.idle_transaction.is_zero() {
            return Some((
                self.last_client + t.idle_transaction,
                Timer::IdleInTransaction,
            ));
        }
        let session_mode = flow.rewrite.is_none();
        if quiet && tx.status() == b'I' && session_mode && !t.client_idle.is_zero() {
            return Some((self.last_client + t.client_idle, Timer::ClientIdle));
        }
        None
    }
}

/// A statement ran past `pool.query_timeout`: cancel it on the server, without waiting.
pub(super) fn cancel_timed_out(target: CancelTarget) {
    tracing::info!(server = ?target.key.pid, "pool.query_timeout: cancelling the statement");
    tokio::spawn(send_cancel(target));
}

/// Make room for the next read when little is left.
#[inline]
pub(super) fn reserve(buf: &mut BytesMut) {
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

impl Flow<'_, '_> {
    /// Add the counts so far to the pool's meters (see `Tally::flush`).
    fn flush_tally(&mut self) {
        let idle_in_transaction = self.tx.pending() == 0 && self.tx.status() != b'I';
        let pinned = self.rewrite.as_ref().and_then(|(c, _)| c.pinned.as_deref());
        self.tally.flush(idle_in_transaction, pinned);
    }

    fn may_release(&self) -> bool {
        let unpinned = self
            .rewrite
            .as_ref()
            .is_none_or(|(c, _)| c.pinned.is_none());
        unpinned
            && self.tx.idle()
            && self.client_walker.at_boundary()
            && self.server_walker.at_boundary()
    }

    fn client_gone(&self, to_server: &BytesMut) -> Ended {
        Ended::ClientGone {
            clean: self.client_walker.at_boundary()
                && self.server_walker.at_boundary()
                && to_server.is_empty(),
        }
    }

    /// Walk the client's input, account each message, rewrite where transaction pooling must,
    /// and move it to `out`.
    fn walk_client(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        let rewriting = self.rewrite.is_some();
        let mut n = 0;
        let result = loop {
            let inspect = |t: u8| t == ftag::TERMINATE || (rewriting && rewrite::needs_whole(t));
            match self.client_walker.step(&input[n..], inspect) {
                Step::NeedMore => break Ok(()),
                Step::Whole {
                    tag: ftag::TERMINATE,
                    len,
                } => {
                    pass(input, out, n);
                    input.advance(len);
                    return Err(self.client_gone(out));
                }
                Step::Whole { tag, len } | Step::Start { tag, len } => {
                    let Some((state, rules)) = self.rewrite.as_mut() else {
                        self.tx.on_client(tag);
                        n += len;
                        continue;
                    };
                    let mut ctx = Ctx {
                        client: state,
                        backend: self.statements,
                        rules,
                        client_params: self.client_params,
                        server_params: self.server_params,
                    };
                    let handled = ctx.route(tag, len, input, &mut n, out, &mut self.written);
                    if handled != Handled::Answered {
                        self.tx.on_client(tag);
                    }
                }
                Step::Continue { len } => n += len,
                Step::Malformed { tag, declared } => {
                    break Err(Ended::Fatal(too_large(tag, declared)))
                }
            }
        };
        pass(input, out, n);
        self.emit_injects(to_client);
        result
    }

    fn emit_injects(&mut self, to_client: &mut BytesMut) {
        if let Some((state, _)) = self.rewrite.as_mut() {
            state
                .tracker
                .take_injects(|b| to_client.extend_from_slice(b));
        }
    }

    /// Walk the backend's output, noting ReadyForQuery and ParameterStatus, dropping replies to
    /// sluice's own messages, and move it to `out`.
    fn walk_server(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), ()> {
        let rewriting = self.rewrite.is_some();
        let inspect = |t: u8| {
            t == tag::READY_FOR_QUERY
                || t == tag::PARAMETER_STATUS
                || (rewriting && matches!(t, tag::ERROR_RESPONSE | b'1' | b'3'))
        };
        let mut n = 0;
        loop {
            if let Some((state, _)) = self.rewrite.as_mut() {
                if state.tracker.has_inject_first() {
                    pass(input, out, n);
                    n = 0;
                    state.tracker.take_injects(|b| out.extend_from_slice(b));
                }
            }
            match self.server_walker.step(&input[n..], inspect) {
                Step::NeedMore => break,
                Step::Whole { tag, len } | Step::Start { tag, len } => {
                    let frame = &input[n..n + len];
                    self.note_server_frame(tag, frame);
                    if self.route_server_frame(tag, frame) {
                        n += len;
                    } else {
                        pass(input, out, n);
                        n = 0;
                        input.advance(len);
                    }
                }
                Step::Continue { len } => n += len,
                Step::Malformed { .. } => return Err(()),
            }
        }
        pass(input, out, n);
        Ok(())
    }

    /// ReadyForQuery and ParameterStatus update what sluice knows of the session.
    fn note_server_frame(&mut self, t: u8, frame: &[u8]) {
        match t {
            tag::READY_FOR_QUERY => {
                let status = frame.get(5).copied().unwrap_or(b'E');
                self.tx.on_ready(status);
                self.tally.ready(status, self.tx.pending());
            }
            tag::PARAMETER_STATUS => {
                if let Some((name, value)) = parse_parameter_status(&frame[5..]) {
                    self.server_params.set(name, value);
                    if params::is_tracked(name, self.extra) {
                        Params::set_shared(self.client_params, name, value);
                    }
                }
            }
            _ => {}
        }
    }

    /// Does this server message go to the client? Also learns from errors which statements
    /// the backend does not have.
    fn route_server_frame(&mut self, t: u8, frame: &[u8]) -> bool {
        let Some((state, rules)) = self.rewrite.as_mut() else {
            return true;
        };
        let verdict = state.tracker.on_server(t);
        for id in &verdict.unprepared {
            self.statements.remove(*id);
        }
        if let Some(id) = verdict.failed_bind {
            let err = PgError::decode(&frame[5..]);
            if rewrite::is_stale_plan(&err) {
                // Retire it everywhere: the client's next Bind prepares a fresh statement.
                self.statements.remove(id);
                if let Some(stmt) = state.statements.values().find(|s| s.id == id) {
                    rules.registry.retire(stmt);
                }
            }
        }
        verdict.forward
    }
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
