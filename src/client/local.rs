//! Batches sluice answers without a backend. A client between transactions that only names
//! statements (Parse of a named statement, Close of one, Flush, Sync) needs no server: the
//! statement is prepared on a backend when it is first bound. Without this, a driver that
//! prepares synchronously (pgbench -M prepared, one thread for many connections) waits for a
//! backend that its own other connections hold, and the pool deadlocks until queue_timeout.
//!
//! The price: a Parse that PostgreSQL would reject is reported at its first Bind instead.

use bytes::BytesMut;

use super::classify::session_state;
use super::rewrite::{ClientState, Rules};
use crate::protocol::error::PgError;
use crate::protocol::extended::{parse_parse, parse_target, CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::frame::{body, header, printable};
use crate::protocol::messages::{self, ftag};

/// How far sluice looks ahead for a batch it can answer.
const MAX_LOOKAHEAD: usize = 1 << 20;

/// The outcome of looking at the buffered input.
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// Answered: this many input bytes were consumed; the replies are to be written.
    Answered(usize),
    /// The batch is not complete yet; it may still be answerable.
    NeedMore,
    /// A backend is needed.
    No,
}

/// Answer the batch at the start of `input` if sluice can, appending replies to `out`.
/// `encoding` is the client's `client_encoding` (see `Registry::statement`).
pub fn answer(
    input: &[u8],
    state: &mut ClientState,
    rules: &Rules<'_>,
    encoding: &str,
    out: &mut BytesMut,
) -> Local {
    let Some(end) = batch_end(input, rules) else {
        return if input.len() > MAX_LOOKAHEAD {
            Local::No
        } else {
            Local::NeedMore
        };
    };
    let Some(end) = end else {
        return Local::No;
    };
    let mut at = 0;
    let mut failed = false;
    while at < end {
        let (tag, len) = header(&input[at..]).expect("walked above");
        let frame = &input[at..at + len];
        at += len;
        if failed && tag != ftag::SYNC {
            continue;
        }
        match tag {
            ftag::PARSE => failed = !parse(frame, state, rules, encoding, out),
            ftag::CLOSE => {
                if let Some((_, name)) = parse_target(body(frame)) {
                    state.statements.remove(name);
                }
                out.extend_from_slice(&CLOSE_COMPLETE);
            }
            ftag::SYNC => {
                failed = false;
                messages::ready_for_query(out, b'I');
            }
            _ => {} // Flush: the replies go out now anyway
        }
    }
    Local::Answered(end)
}

/// Where the answerable batch ends (after its Sync or Flush): Some(None) when a message needs
/// a backend, None when the input ends first.
fn batch_end(input: &[u8], rules: &Rules<'_>) -> Option<Option<usize>> {
    let mut at = 0;
    loop {
        let (tag, len) = header(&input[at..])?;
        if len == 0 || input.len() < at + len {
            return None;
        }
        let frame = &input[at..at + len];
        let answerable = match tag {
            // An unnamed statement's body starts with its empty name: told by one byte,
            // before the query text is checked for UTF-8 and scanned.
            ftag::PARSE => {
                body(frame).first().is_some_and(|&b| b != 0)
                    && parse_parse(body(frame))
                        .is_some_and(|p| session_state(p.query, rules.extra).is_none())
            }
            ftag::CLOSE => parse_target(body(frame))
                .is_some_and(|(kind, name)| kind == b'S' && !name.is_empty()),
            ftag::SYNC | ftag::FLUSH => return Some(Some(at + len)),
            _ => false,
        };
        if !answerable {
            return Some(None);
        }
        at += len;
    }
}

/// Register a named statement for the client; false (with the error written) on failure.
fn parse(
    frame: &[u8],
    state: &mut ClientState,
    rules: &Rules<'_>,
    encoding: &str,
    out: &mut BytesMut,
) -> bool {
    let p = parse_parse(body(frame)).expect("checked in batch_end");
    if state.statements.contains_key(p.name) {
        let err = PgError::error(
            "42P05",
            format!(
                "prepared statement \"{}\" already exists",
                printable(p.name)
            ),
        );
        err.encode(out);
        return false;
    }
    match rules.registry.statement(p.query, p.param_types, encoding) {
        Ok(stmt) => {
            state.statements.insert(p.name.into(), stmt);
            out.extend_from_slice(&PARSE_COMPLETE);
            true
        }
        Err(full) => {
            super::rewrite::registry_full(full.limit).encode(out);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionStatePolicy;
    use crate::prepared::Registry;
    use crate::protocol::extended::{build_parse, build_target, SYNC};

    fn rules(registry: &Registry) -> Rules<'_> {
        Rules {
            registry,
            policy: SessionStatePolicy::Pin,
            max_prepared: 10,
            extra: &[],
        }
    }

    fn tags(out: &[u8]) -> String {
        let mut at = 0;
        let mut s = String::new();
        while let Some((t, len)) = header(&out[at..]) {
            s.push(t as char);
            at += len;
        }
        s
    }

    #[test]
    fn parse_and_sync_are_answered_without_a_backend() {
        let registry = Registry::new(1 << 20);
        let mut state = ClientState::default();
        let mut input = BytesMut::new();
        build_parse(&mut input, "P_0", "BEGIN;", &[0, 0]);
        input.extend_from_slice(&SYNC);
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&input, &mut state, &rules(&registry), "UTF8", &mut out),
            Local::Answered(input.len())
        );
        assert_eq!(tags(&out), "1Z");
        assert!(state.statements.contains_key(&b"P_0"[..]));
        // The same name again: PostgreSQL's error, then ReadyForQuery.
        out.clear();
        assert_eq!(
            answer(&input, &mut state, &rules(&registry), "UTF8", &mut out),
            Local::Answered(input.len())
        );
        assert_eq!(tags(&out), "EZ");
    }

    #[test]
    fn anything_else_needs_a_backend() {
        let registry = Registry::new(1 << 20);
        let mut state = ClientState::default();
        let mut input = BytesMut::new();
        build_parse(&mut input, "", "select 1", &[0, 0]);
        input.extend_from_slice(&SYNC);
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&input, &mut state, &rules(&registry), "UTF8", &mut out),
            Local::No
        );
        let mut input = BytesMut::new();
        build_parse(&mut input, "s", "LISTEN x", &[0, 0]);
        input.extend_from_slice(&SYNC);
        assert_eq!(
            answer(&input, &mut state, &rules(&registry), "UTF8", &mut out),
            Local::No
        );
        assert!(out.is_empty());
    }

    #[test]
    fn an_unfinished_batch_waits_for_more() {
        let registry = Registry::new(1 << 20);
        let mut state = ClientState::default();
        let mut input = BytesMut::new();
        build_target(&mut input, b'C', b'S', "s1");
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&input, &mut state, &rules(&registry), "UTF8", &mut out),
            Local::NeedMore
        );
        assert_eq!(
            answer(&input[..3], &mut state, &rules(&registry), "UTF8", &mut out),
            Local::NeedMore
        );
    }
}
