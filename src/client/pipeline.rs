//! The client side of pipelining waiting queries (`pool.pipeline_depth`; the pool's side is in
//! `pool/ride.rs`): which requests may ride, the driver that sends its own request and its
//! riders' in one write and deals out the replies, and the rider that waits for its share.
//!
//! A rider's query runs after the ones ahead of it in the write, so it waits for them as it
//! would have waited in the queue; cancelling works once it is the query running. The
//! replies go out in the order PostgreSQL sends them: each ReadyForQuery ends one client's
//! share.

use crate::clock::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::classify;
use super::pump;
use super::session::{count_query_timeout, target, Session};
use crate::params::{self, Params};
use crate::pool::{Ride, RideRequest, Rider};
use crate::protocol::error::{code, PgError};
use crate::protocol::extended::{parse_bind, parse_parse, parse_target};
use crate::protocol::frame::{body, cstr_bytes, header, FrameWalker, Step};
use crate::protocol::messages::{ftag, parse_parameter_status, tag};
use crate::server::Backend;

/// Largest request that rides: its bytes are copied under the pool lock.
const MAX_RIDE_REQUEST: usize = 8 * 1024;

/// CopyBothResponse: the server waits for COPY data (as after CopyInResponse).
const COPY_BOTH_RESPONSE: u8 = b'W';

/// Where the replies coming in now belong.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    /// The driver's own client.
    Own,
    /// The rider at this index.
    Rider(usize),
}

impl Session {
    /// What this client offers if it has to wait: a ride, when everything it has sent is one
    /// request whose statement may share a backend (`classify::rideable`).
    pub(super) fn ride_request(&self) -> Option<RideRequest> {
        if self.state.pinned.is_some() || self.state.discarding {
            return None;
        }
        if self.input.len() > MAX_RIDE_REQUEST {
            return None;
        }
        let sql = one_request(&self.input)?;
        if !classify::rideable(sql, &self.extra_params) {
            return None;
        }
        Some(RideRequest {
            query: Bytes::copy_from_slice(&self.input),
            params: self.params.version(),
            cancel: self.cancel.clone(),
            client: self.tally.client.clone(),
        })
    }

    /// Send this client's request and the riders' in one write, then deal out the replies in
    /// order: ours to our client, each rider's down its channel. The backend goes back to
    /// the pool once every share is delivered. False when this client's session is over.
    pub(super) async fn drive(
        &mut self,
        mut server: Backend,
        mut riders: Vec<Rider>,
        began: Instant,
    ) -> bool {
        let query_timeout = self.shared.config.load().pool.query_timeout;
        // The request, checked by ride_request, is all the input.
        let len = self.input.len();
        let size = len + riders.iter().map(|r| r.request.query.len()).sum::<usize>();
        let mut batch = BytesMut::with_capacity(size);
        batch.extend_from_slice(&self.input[..len]);
        self.input.advance(len);
        for rider in &riders {
            batch.extend_from_slice(&rider.request.query);
            rider.request.client.bound(&server);
        }
        self.tally.requests(1);
        let cancel_target = target(&server);
        let mut share = Share::Own;
        // Our client still takes replies; our own share is delivered.
        let (mut own_open, mut own_done) = (true, false);
        let mut status = b'I';
        let mut walker = FrameWalker::new(0);
        let mut params = Vec::new();
        let delivered = 'deliver: {
            if server.stream.write_all(&batch).await.is_err() {
                break 'deliver false;
            }
            let mut running_since = Instant::now();
            let mut cancelled = false;
            loop {
                pump::reserve(&mut server.rbuf);
                let read = server.stream.read_buf(&mut server.rbuf);
                let read = if query_timeout.is_zero() || cancelled {
                    read.await
                } else {
                    let at = running_since + query_timeout;
                    match tokio::time::timeout_at(at.into(), read).await {
                        Ok(read) => read,
                        Err(_) => {
                            cancelled = true;
                            count_query_timeout(&self.shared, self.pool);
                            pump::cancel_timed_out(cancel_target);
                            continue;
                        }
                    }
                };
                if !matches!(read, Ok(n) if n > 0) {
                    break 'deliver false;
                }
                let mut n = 0;
                loop {
                    let inspect = |t| {
                        matches!(
                            t,
                            tag::READY_FOR_QUERY
                                | tag::PARAMETER_STATUS
                                | tag::COPY_IN_RESPONSE
                                | COPY_BOTH_RESPONSE
                        )
                    };
                    match walker.step(&server.rbuf[n..], inspect) {
                        Step::NeedMore => break,
                        Step::Start { len, .. } | Step::Continue { len } => n += len,
                        Step::Malformed { .. } => break 'deliver false,
                        Step::Whole { tag, len } => {
                            let frame = &server.rbuf[n..n + len];
                            n += len;
                            if tag == tag::PARAMETER_STATUS {
                                if let Some((name, value)) = parse_parameter_status(&frame[5..]) {
                                    server.params.set(name, value);
                                    params.push((name.to_string(), value.to_string()));
                                }
                                continue;
                            }
                            status = frame.get(5).copied().unwrap_or(b'E');
                            if tag != tag::READY_FOR_QUERY || status != b'I' {
                                // A request that rides must end outside any transaction and
                                // never wait for COPY data: `rideable` is meant to let
                                // through nothing else. Had one slipped through, what follows
                                // on this backend (the next riders' requests, already sent)
                                // would run in its transaction or be swallowed by the COPY:
                                // close the backend, which rolls all of it back, and tell
                                // this client and those behind it that the connection was
                                // lost; none of them gets its ReadyForQuery (this one may
                                // have had rows already).
                                tracing::warn!(
                                    server = server.id,
                                    "a pipelined request left its backend busy; closing it"
                                );
                                break 'deliver false;
                            }
                            // Unbound before the last piece is handed over: once it is, the
                            // client may bind its next backend.
                            match share {
                                Share::Own => self.cancel.unbind(),
                                Share::Rider(i) => riders[i].request.cancel.unbind(),
                            }
                            let piece = server.rbuf.split_to(n);
                            n = 0;
                            let params = std::mem::take(&mut params);
                            self.hand(
                                share,
                                &mut riders,
                                piece,
                                Some(status),
                                params,
                                &mut own_open,
                            )
                            .await;
                            own_done |= share == Share::Own;
                            let next = match share {
                                Share::Own => 0,
                                Share::Rider(i) => i + 1,
                            };
                            let Some(rider) = riders.get(next) else {
                                break 'deliver true;
                            };
                            rider.request.cancel.bind(cancel_target);
                            share = Share::Rider(next);
                            running_since = Instant::now();
                            cancelled = false;
                        }
                    }
                }
                if n > 0 {
                    let piece = server.rbuf.split_to(n);
                    let params = std::mem::take(&mut params);
                    self.hand(share, &mut riders, piece, None, params, &mut own_open)
                        .await;
                }
            }
        };
        // Riders still owed replies see their channels close: the backend is lost to them.
        drop(riders);
        self.cancel.unbind();
        let now = Instant::now();
        self.tally
            .meters
            .checked_in(now.saturating_duration_since(server.checked_out_at));
        self.tally.client.unbound();
        self.tally.flush(false, None);
        if delivered && status == b'I' && server.rbuf.is_empty() {
            self.shared
                .health
                .served(now.saturating_duration_since(began));
            server.statements.new_batch(); // after the extended requests' Syncs
            self.shared.pools.checkin(server, now);
            return own_open;
        }
        drop(server);
        self.shared.health.failed();
        if own_done {
            return own_open;
        }
        let err = PgError::fatal(
            code::CONNECTION_FAILURE,
            "server closed the connection unexpectedly",
        );
        self.say(&err).await;
        false
    }

    /// Pass a piece of replies to its share's client; `ready` on its last piece.
    async fn hand(
        &mut self,
        share: Share,
        riders: &mut [Rider],
        piece: BytesMut,
        ready: Option<u8>,
        params: Vec<(String, String)>,
        own_open: &mut bool,
    ) {
        let Share::Rider(i) = share else {
            self.follow(&params);
            if *own_open {
                *own_open = self.client.write_all(&piece).await.is_ok();
                self.tally.sent(piece.len());
            }
            if let Some(status) = ready {
                self.tally.ready(status, 0);
            }
            return;
        };
        riders[i].send(piece, ready, params).await;
    }

    /// Wait for this client's share of the replies to a query that rode on another client's
    /// backend, and pass it on. False when the session is over.
    pub(super) async fn ride(&mut self, mut ride: Ride, began: Instant) -> bool {
        // The request, checked by ride_request, is all the input; the driver sent it.
        self.input.clear();
        self.tally.requests(1);
        let seated = Instant::now();
        while let Some(reply) = ride.next().await {
            self.follow(&reply.params);
            if self.client.write_all(&reply.bytes).await.is_err() {
                self.cancel.unbind();
                self.tally.flush(false, None);
                return false;
            }
            self.tally.sent(reply.bytes.len());
            if let Some(status) = reply.ready {
                self.cancel.unbind();
                let now = Instant::now();
                self.tally.ready(status, 0);
                self.tally
                    .meters
                    .checked_in(now.saturating_duration_since(seated));
                self.tally.client.unbound();
                self.tally.flush(false, None);
                self.shared
                    .health
                    .served(now.saturating_duration_since(began));
                return true;
            }
        }
        self.cancel.unbind();
        self.tally.client.unbound();
        self.tally.flush(false, None);
        self.shared.health.failed();
        let err = PgError::fatal(
            code::CONNECTION_FAILURE,
            "server closed the connection unexpectedly",
        );
        self.say(&err).await;
        false
    }

    /// Follow ParameterStatus messages in a share of replies, as a bound client does.
    fn follow(&mut self, reported: &[(String, String)]) {
        for (name, value) in reported {
            if params::is_tracked(name, &self.extra_params) {
                Params::set_shared(&mut self.params, name, value);
            }
        }
    }
}

/// The statement of `input` if it is exactly one request that ends the way a ride must: a
/// Query, or an extended-protocol Parse, Bind, optional Describe, Execute and Sync on the
/// unnamed statement and portal (what libpq and tokio-postgres's `query_typed` send for a
/// query with parameters). Named
/// statements and portals, several requests and anything partial do not ride.
fn one_request(input: &[u8]) -> Option<&[u8]> {
    let mut frames = Frames { rest: input };
    let (t, first) = frames.next()?;
    let sql = match t {
        ftag::QUERY => cstr_bytes(first)?.0,
        ftag::PARSE => {
            let parse = parse_parse(first)?;
            let unnamed = |b: &[u8]| cstr_bytes(b).is_some_and(|(name, _)| name.is_empty());
            let ok = parse.name.is_empty()
                && frames.take(ftag::BIND, |b| {
                    parse_bind(b)
                        .is_some_and(|(portal, stmt, _)| portal.is_empty() && stmt.is_empty())
                })
                && (frames.peek() != Some(ftag::DESCRIBE)
                    || frames.take(ftag::DESCRIBE, |b| {
                        parse_target(b).is_some_and(|(_, name)| name.is_empty())
                    }))
                && frames.take(ftag::EXECUTE, unnamed)
                && frames.take(ftag::SYNC, |_| true);
            if !ok {
                return None;
            }
            parse.query
        }
        _ => return None,
    };
    frames.rest.is_empty().then_some(sql)
}

/// Whole frames from the front of a buffer.
struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// The next frame's tag and body.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (t, len) = header(self.rest)?;
        if len < 5 || len > self.rest.len() {
            return None;
        }
        let (frame, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some((t, body(frame)))
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Take the next frame if it has tag `t` and a body `ok` accepts.
    fn take(&mut self, t: u8, ok: impl Fn(&[u8]) -> bool) -> bool {
        let before = self.rest;
        match self.next() {
            Some((tag, b)) if tag == t && ok(b) => true,
            _ => {
                self.rest = before;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::extended::{build_bind, build_parse, build_target};
    use crate::protocol::messages;

    fn frame(t: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![t];
        f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// Parse, Bind, Describe (portal), Execute and Sync, as libpq sends a query with
    /// parameters; `named` names the statement and portal.
    fn extended(sql: &str, named: &str, describe: Option<u8>) -> Vec<u8> {
        let mut out = BytesMut::new();
        build_parse(&mut out, named, sql, &[0, 0]);
        build_bind(&mut out, named, named, &[0, 0, 0, 0, 0, 0]);
        if let Some(kind) = describe {
            build_target(&mut out, ftag::DESCRIBE, kind, named);
        }
        let mut v = out.to_vec();
        v.extend(frame(
            ftag::EXECUTE,
            &[named.as_bytes(), &[0, 0, 0, 0, 0]].concat(),
        ));
        v.extend(frame(ftag::SYNC, &[]));
        v
    }

    #[test]
    fn one_request_is_a_whole_query_or_an_unnamed_extended_batch_and_nothing_more() {
        let mut q = BytesMut::new();
        messages::query(&mut q, "select 1");
        assert_eq!(one_request(&q), Some(&b"select 1"[..]));
        assert_eq!(
            one_request(&extended("select 2", "", Some(b'P'))),
            Some(&b"select 2"[..])
        );
        assert_eq!(
            one_request(&extended("select 3", "", None)),
            Some(&b"select 3"[..])
        );
        let statement_described = extended("select 4", "", Some(b'S'));
        assert_eq!(one_request(&statement_described), Some(&b"select 4"[..]));

        let two_queries = [&q[..], &q[..]].concat();
        let partial = &q[..q.len() - 1];
        let named = extended("select 4", "s1", Some(b'P'));
        let another_described = {
            let mut out = BytesMut::new();
            build_parse(&mut out, "", "select 5", &[0, 0]);
            build_bind(&mut out, "", "", &[0, 0, 0, 0, 0, 0]);
            build_target(&mut out, ftag::DESCRIBE, b'S', "s1");
            let mut v = out.to_vec();
            v.extend(frame(ftag::EXECUTE, &[0, 0, 0, 0, 0]));
            v.extend(frame(ftag::SYNC, &[]));
            v
        };
        let unsynced = {
            let e = extended("select 6", "", Some(b'P'));
            e[..e.len() - 5].to_vec()
        };
        let then_query = [&extended("select 7", "", None)[..], &q[..]].concat();
        let bind_only = {
            let mut out = BytesMut::new();
            build_bind(&mut out, "", "", &[0, 0, 0, 0, 0, 0]);
            out.to_vec()
        };
        for (what, input) in [
            ("two queries", &two_queries[..]),
            ("a partial query", partial),
            ("named statement and portal", &named[..]),
            ("a named statement described", &another_described[..]),
            ("no Sync", &unsynced[..]),
            ("a batch then a query", &then_query[..]),
            ("a Bind without its Parse", &bind_only[..]),
            ("nothing", &[][..]),
        ] {
            assert_eq!(one_request(input), None, "{what}");
        }
    }
}
