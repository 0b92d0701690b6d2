//! Transaction pooling that applications do not notice. Every client message passes through
//! here while a backend is bound in transaction mode: named statements are renamed to the
//! shared registry's names and prepared on the backend when it lacks them; Parse and Close of
//! statements are answered by sluice when the backend need not see them; statements that leave
//! session state are pinned, refused or allowed by `pool.session_state`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::classify::{classify, session_state, single_statement, Effect};
use super::expect::{Expect, Kind, Tracker};
use crate::config::SessionStatePolicy;
use crate::params::{self, Params};
use crate::prepared::{BackendStatements, Registry, Statement};
use crate::protocol::error::{code, PgError};
use crate::protocol::extended::{
    build_bind, build_target, parse_bind, parse_parse, parse_target, CLOSE_COMPLETE, PARSE_COMPLETE,
};
use crate::protocol::frame::{body, cstr_bytes, printable};
use crate::protocol::messages::{self, ftag};

/// A client's side of transaction pooling, kept for its whole session.
#[derive(Default)]
pub struct ClientState {
    /// The client's statement names (bytes in its `client_encoding`) and the shared
    /// statements they stand for.
    pub statements: HashMap<Box<[u8]>, Arc<Statement>>,
    pub tracker: Tracker,
    /// After an error sluice raised itself in an extended batch, drop messages until Sync,
    /// as PostgreSQL does after its own errors.
    pub discarding: bool,
    /// Why this client keeps its backend for the rest of its session, if it does.
    pub pinned: Option<String>,
}

/// Settings for rewriting, read from the config at bind time.
pub struct Rules<'a> {
    pub registry: &'a Registry,
    pub policy: SessionStatePolicy,
    pub max_prepared: usize,
    pub extra: &'a [String],
}

impl<'a> Rules<'a> {
    pub fn new(
        registry: &'a Registry,
        config: &crate::config::Config,
        extra: &'a [String],
    ) -> Rules<'a> {
        Rules {
            registry,
            policy: config.pool.session_state,
            max_prepared: config.pool.max_prepared_statements,
            extra,
        }
    }
}

/// Tags whose frames must be whole to be handled.
pub fn needs_whole(tag: u8) -> bool {
    matches!(
        tag,
        ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::CLOSE | ftag::QUERY
    )
}

/// What became of one client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Forward the frame as it came.
    Forward,
    /// A message of the same kind, renamed or rewritten, went out in its place.
    Rewritten,
    /// sluice answered it (or dropped it after an error); the backend does not see it.
    Answered,
}

/// Everything one frame may touch.
pub struct Ctx<'a, 'r> {
    pub client: &'a mut ClientState,
    pub backend: &'a mut BackendStatements,
    pub rules: &'a Rules<'r>,
    pub client_params: &'a mut Arc<Params>,
    pub server_params: &'a mut Params,
}

/// Move the first `n` bytes of `input` to the end of `out` (without copying when they are
/// contiguous, which they are in the common case).
#[inline]
pub fn pass(input: &mut BytesMut, out: &mut BytesMut, n: usize) {
    if n > 0 {
        out.unsplit(input.split_to(n));
    }
}

impl Ctx<'_, '_> {
    /// Handle the client frame at `input[*run..*run + len]`, behind a run of `*run` bytes
    /// forwarded unchanged and not yet moved to `out`. A forwarded frame joins the run, which
    /// the caller moves with one `pass`; a frame rewritten or answered ends it and leaves
    /// `input`. What the rewriter writes must follow the run, so behind one it waits in
    /// `written` (empty between calls); with no run waiting it goes straight to `out`.
    pub fn route(
        &mut self,
        tag: u8,
        len: usize,
        input: &mut BytesMut,
        run: &mut usize,
        out: &mut BytesMut,
        written: &mut BytesMut,
    ) -> Handled {
        let frame = &input[*run..*run + len];
        let handled = if *run == 0 {
            self.on_frame(tag, frame, out)
        } else {
            let handled = self.on_frame(tag, frame, written);
            if handled != Handled::Forward || !written.is_empty() {
                pass(input, out, std::mem::take(run));
                out.extend_from_slice(written);
                written.clear();
            }
            handled
        };
        match handled {
            Handled::Forward => *run += len,
            Handled::Rewritten | Handled::Answered => input.advance(len),
        }
        handled
    }

    /// Handle one client frame (`frame` is whole for the tags in `needs_whole`, else only its
    /// first bytes). Anything written goes to `out` in stream order.
    pub fn on_frame(&mut self, tag: u8, frame: &[u8], out: &mut BytesMut) -> Handled {
        if self.client.discarding {
            if tag != ftag::SYNC {
                return Handled::Answered;
            }
            self.client.discarding = false;
        }
        match tag {
            ftag::PARSE => self.parse(frame, out),
            ftag::BIND => self.bind(frame, out),
            ftag::DESCRIBE => self.describe(frame, out),
            ftag::CLOSE => self.close(frame),
            ftag::QUERY => self.query(frame, out),
            ftag::EXECUTE => self.reply(Kind::Execute),
            ftag::SYNC => {
                self.backend.new_batch();
                self.reply(Kind::Sync)
            }
            ftag::FUNCTION_CALL => self.reply(Kind::FunctionCall),
            ftag::COPY_DONE | ftag::COPY_FAIL => {
                self.client.tracker.copy_ended();
                Handled::Forward
            }
            _ => Handled::Forward,
        }
    }

    fn reply(&mut self, kind: Kind) -> Handled {
        self.client.tracker.push(Expect::Reply(kind));
        Handled::Forward
    }

    fn inject(&mut self, bytes: &'static [u8]) -> Handled {
        self.client
            .tracker
            .push(Expect::Inject(Bytes::from_static(bytes)));
        Handled::Answered
    }

    /// Raise an error in the client's stream as PostgreSQL would, then skip to Sync.
    fn refuse(&mut self, err: PgError) -> Handled {
        let mut buf = BytesMut::new();
        err.encode(&mut buf);
        self.client.tracker.push(Expect::Inject(buf.freeze()));
        self.client.discarding = true;
        Handled::Answered
    }

    fn parse(&mut self, frame: &[u8], out: &mut BytesMut) -> Handled {
        let Some(p) = parse_parse(body(frame)) else {
            return self.reply(Kind::Parse { stmt: None });
        };
        if let Some(refusal) =
            session_state(p.query, self.rules.extra).and_then(|what| self.session_effect(what))
        {
            return self.refuse(refusal);
        }
        if p.name.is_empty() {
            return self.reply(Kind::Parse { stmt: None });
        }
        if self.client.statements.contains_key(p.name) {
            return self.refuse(PgError::error(
                "42P05",
                format!(
                    "prepared statement \"{}\" already exists",
                    printable(p.name)
                ),
            ));
        }
        let encoding = self
            .client_params
            .get("client_encoding")
            .unwrap_or_default();
        let stmt = match self
            .rules
            .registry
            .statement(p.query, p.param_types, encoding)
        {
            Ok(stmt) => stmt,
            Err(full) => return self.refuse(registry_full(full.limit)),
        };
        self.client.statements.insert(p.name.into(), stmt.clone());
        if self.backend.touch(stmt.id) {
            return self.inject(&PARSE_COMPLETE);
        }
        self.close_evicted(stmt.id, out);
        stmt.write_parse(out);
        self.client.tracker.push(Expect::Reply(Kind::Parse {
            stmt: Some(stmt.id),
        }));
        Handled::Rewritten
    }

    fn bind(&mut self, frame: &[u8], out: &mut BytesMut) -> Handled {
        let Some((portal, name, rest)) = parse_bind(body(frame)) else {
            return self.reply(Kind::Bind { stmt: None });
        };
        if name.is_empty() {
            return self.reply(Kind::Bind { stmt: None });
        }
        let Some(stmt) = self.statement(name) else {
            return self.refuse(no_such_statement(name));
        };
        self.ensure_prepared(&stmt, out);
        build_bind(out, portal, Statement::server_name(stmt.id).as_str(), rest);
        self.client.tracker.push(Expect::Reply(Kind::Bind {
            stmt: Some(stmt.id),
        }));
        Handled::Rewritten
    }

    fn describe(&mut self, frame: &[u8], out: &mut BytesMut) -> Handled {
        match parse_target(body(frame)) {
            Some((b'S', name)) if !name.is_empty() => {
                let Some(stmt) = self.statement(name) else {
                    return self.refuse(no_such_statement(name));
                };
                self.ensure_prepared(&stmt, out);
                build_target(
                    out,
                    ftag::DESCRIBE,
                    b'S',
                    Statement::server_name(stmt.id).as_str(),
                );
                self.client.tracker.push(Expect::Reply(Kind::Describe));
                Handled::Rewritten
            }
            _ => self.reply(Kind::Describe),
        }
    }

    /// Closing a named statement only forgets the client's name: the server-side statement is
    /// shared. PostgreSQL answers CloseComplete even for a name that does not exist.
    fn close(&mut self, frame: &[u8]) -> Handled {
        match parse_target(body(frame)) {
            Some((b'S', name)) if !name.is_empty() => {
                self.client.statements.remove(name);
                self.inject(&CLOSE_COMPLETE)
            }
            _ => self.reply(Kind::Close),
        }
    }

    fn query(&mut self, frame: &[u8], out: &mut BytesMut) -> Handled {
        let sql = cstr_bytes(body(frame)).map_or(&[][..], |(s, _)| s);
        self.client.tracker.push(Expect::Reply(Kind::Query));
        // One look at a single statement serves both the session-state policy and the
        // prepared-statement bookkeeping below.
        let single = single_statement(sql);
        let effect = if single {
            classify(sql, self.rules.extra)
        } else {
            session_state(sql, self.rules.extra).map_or(Effect::None, Effect::SessionState)
        };
        if let Effect::SessionState(what) = effect {
            if let Some(refusal) = self.session_effect(what) {
                messages::query(out, &raise_sql(&refusal.message));
                return Handled::Rewritten;
            }
            return Handled::Forward;
        }
        if !single {
            return Handled::Forward;
        }
        match effect {
            Effect::Deallocate(name) => match self.client.statements.remove(name) {
                Some(stmt) => {
                    self.backend.remove(stmt.id);
                    let sql = format!("DEALLOCATE {}", Statement::server_name(stmt.id));
                    messages::query(out, &sql);
                    Handled::Rewritten
                }
                None => Handled::Forward, // PostgreSQL's own "does not exist" error
            },
            Effect::DeallocateAll => {
                self.client.statements.clear();
                self.backend.clear();
                Handled::Forward
            }
            Effect::DiscardAll => {
                self.client.statements.clear();
                self.backend.clear();
                self.client.pinned = None;
                self.forget_unreported_params();
                Handled::Forward
            }
            Effect::ResetAll => {
                self.forget_unreported_params();
                Handled::Forward
            }
            _ => Handled::Forward,
        }
    }

    /// Apply `pool.session_state` to a statement that leaves `what` behind; Some(error) when
    /// it must be refused.
    fn session_effect(&mut self, what: String) -> Option<PgError> {
        match self.rules.policy {
            SessionStatePolicy::Allow => None,
            SessionStatePolicy::Pin => {
                if self.client.pinned.is_none() {
                    tracing::debug!(statement = %what, "client pinned to its backend");
                    self.client.pinned = Some(what);
                }
                None
            }
            SessionStatePolicy::Error => Some(PgError::error(
                code::FEATURE_NOT_SUPPORTED,
                format!(
                    "{what} is not allowed in transaction pooling: it would leave session state \
                     on a shared server connection (pool.session_state = \"error\")"
                ),
            )),
        }
    }

    /// The backend reset every parameter; so did the client.
    fn forget_unreported_params(&mut self) {
        self.server_params.retain(params::is_reported);
        if self
            .client_params
            .iter()
            .any(|(k, _)| !params::is_reported(k))
        {
            Arc::make_mut(self.client_params).retain(params::is_reported);
        }
    }

    /// The client's statement by its name, moved to a fresh one if its plan went stale.
    fn statement(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let stmt = self.client.statements.get(name)?.clone();
        if !stmt.is_retired() {
            return Some(stmt);
        }
        let fresh = self
            .rules
            .registry
            .statement(
                &stmt.query,
                &stmt.param_types,
                stmt.encoding.as_deref().unwrap_or_default(),
            )
            .ok()?;
        self.client.statements.insert(name.into(), fresh.clone());
        Some(fresh)
    }

    /// Prepare `stmt` on the backend first if it lacks it; its reply is sluice's to swallow.
    fn ensure_prepared(&mut self, stmt: &Statement, out: &mut BytesMut) {
        if self.backend.touch(stmt.id) {
            return;
        }
        self.close_evicted(stmt.id, out);
        stmt.write_parse(out);
        self.client.tracker.push(Expect::Own(Kind::Parse {
            stmt: Some(stmt.id),
        }));
    }

    /// Note `id` as prepared on the backend, closing what falls out of its LRU.
    fn close_evicted(&mut self, id: u64, out: &mut BytesMut) {
        for old in self.backend.insert(id, self.rules.max_prepared) {
            build_target(out, ftag::CLOSE, b'S', Statement::server_name(old).as_str());
            self.client.tracker.push(Expect::Own(Kind::Close));
        }
    }
}

/// SQL that makes the server raise `message` as feature_not_supported, so the error arrives
/// with the transaction status PostgreSQL itself would give it. The message names what the
/// client wrote, so it is quoted for any `standard_conforming_strings` (an `E''` string) and
/// holds no `$` that could close the dollar quote around it.
fn raise_sql(message: &str) -> String {
    let quoted = message
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('$', "\\x24");
    format!("DO $sluice$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = E'{quoted}'; END $sluice$")
}

fn no_such_statement(name: &[u8]) -> PgError {
    PgError::error(
        "26000",
        format!("prepared statement \"{}\" does not exist", printable(name)),
    )
}

pub fn registry_full(limit: usize) -> PgError {
    PgError::error(
        "53200",
        format!(
            "sluice's prepared statement registry is full (limits.prepared_statement_memory = {})",
            crate::config::units::format_size(limit)
        ),
    )
    .with_hint("Close unused prepared statements, or raise limits.prepared_statement_memory.")
}

/// Is this error a stale plan after DDL, which re-preparing the statement cures?
pub fn is_stale_plan(err: &PgError) -> bool {
    err.code == "0A000"
        && err
            .message
            .contains("cached plan must not change result type")
}
