//! A logged-in client's session: wait for its next message, bind a backend by pool mode,
//! forward, and give the backend back clean. In transaction mode a client that finds no
//! backend in time gets ERROR 53300 and keeps its session; a client that leaves mid-transaction
//! has its transaction rolled back before the backend serves anyone else.

use crate::clock::Instant;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::buffers;
use super::local::{self, Local};
use super::pump::{self, ClientSide, Ended, Timeouts, READ_SIZE};
use super::rewrite::{ClientState, Rules};
use super::transaction::TxState;
use crate::admin::tally::Tally;
use crate::boxed::boxed;
use crate::cancel::{send_cancel, CancelSlot, CancelTarget};
use crate::config::live::Held;
use crate::config::{Config, PoolMode};
use crate::params::{self, Params};
use crate::pool::{CheckoutError, Event, PoolId, Seat, Shed};
use crate::protocol::error::{code, PgError};
use crate::protocol::frame::{header, FrameWalker, Step};
use crate::protocol::messages::{self, ftag};
use crate::proxy::Shared;
use crate::server::{Backend, ServerConn, ServerError};

/// How long cleanup may take on a backend whose client left before it is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Session {
    pub shared: Arc<Shared>,
    /// The configuration as of this client's last request (see `config::live`).
    pub config: Held<Config>,
    pub client: TcpStream,
    pub input: BytesMut,
    pub walker: FrameWalker,
    pub pool: PoolId,
    pub mode: PoolMode,
    /// What the client wants its backend's parameters to be.
    pub params: Arc<Params>,
    pub extra_params: Vec<String>,
    pub cancel: Arc<CancelSlot>,
    /// Prepared statements and pinning, for transaction mode.
    pub state: ClientState,
    /// Held for the session: the client's place under its client caps.
    pub _admitted: crate::admission::Admitted,
    /// Admin: traffic meters and this client's entry in the registry.
    pub tally: Tally,
}

impl Session {
    /// The pool's names, kept once in the client's registry entry.
    fn database(&self) -> &str {
        &self.tally.client.info.database
    }

    fn user(&self) -> &str {
        &self.tally.client.info.user
    }

    /// Session mode: one backend, bound at login, for the whole session.
    pub async fn run_session_mode(mut self, mut server: Backend) {
        if let Err(e) = sync_params(&mut server, &mut self.params).await {
            let mut out = BytesMut::new();
            let mut err = e.to_client(self.database());
            err.severity = crate::protocol::error::Severity::Fatal;
            self.shared.admin.errors.count(&err);
            err.encode(&mut out);
            let _ = self.client.write_all(&out).await;
            return;
        }
        let mut tx = TxState::default();
        self.tally.client.bound(&server);
        self.cancel.bind(target(&server));
        let (end, owed) = self.forward(&mut server, &mut tx, false).await;
        self.cancel.unbind();
        self.finish(server, tx, end, owed).await;
    }

    /// Transaction mode: a backend from the first message of a transaction to its end.
    #[allow(clippy::manual_async_fn)] // see the comment inside
    pub fn run_transaction_mode(mut self) -> impl std::future::Future<Output = ()> + Send {
        // Only the wait for the next message stays inline: a transaction's state is boxed
        // while it runs, so an idle client holds little more than the `Session`. (An async
        // block rather than an async fn: an async fn's state keeps a second copy of `self`.)
        async move {
            while self.next_message().await {
                if !boxed(|| self.transaction()).await {
                    return;
                }
            }
        }
    }

    /// Serve one request: answer it locally or bind a backend for the transaction it begins.
    /// False when the session is over.
    async fn transaction(&mut self) -> bool {
        if let Some(answered) = self.answer_locally().await {
            return answered;
        }
        // One clock reading each for the start and the end of a transaction serves the
        // pool, the meters and the registry.
        let began = Instant::now();
        self.tally.client.waiting(began);
        // What is alive across two awaits or more gets a slot of its own in every state of
        // this future, the forward's included, and so does a local once it has been borrowed:
        // so the seat is a temporary, and `end` is traced by value and dropped before the
        // write. (848 bytes instead of 1,056; see benches/README.)
        let mut server = match self.bind(began).await {
            Ok(Seat::Server(server)) => server,
            seat => return boxed(|| self.seat_elsewhere(seat, began)).await,
        };
        if !server.riders.is_empty() {
            let riders = std::mem::take(&mut server.riders);
            return boxed(|| self.drive(server, riders, began)).await;
        }
        let mut tx = TxState::default();
        tracing::trace!(client = self.cancel.pid, server = server.id, "bound");
        let (end, owed) = self.forward(&mut server, &mut tx, true).await;
        let end = self.unbound(&server, &tx, end);
        if let Ended::Released = end {
            drop(end);
            let now = Instant::now();
            self.shared
                .health
                .served(now.saturating_duration_since(began));
            let held = now.saturating_duration_since(server.checked_out_at);
            self.tally.meters.checked_in(held);
            self.shared.pools.checkin(server, now);
            if !write_owed(&mut self.client, &owed).await {
                return false;
            }
            self.tally.client.unbound();
            return true;
        }
        if matches!(end, Ended::IdleInTransaction | Ended::ServerGone) {
            self.shared.health.failed();
        }
        Box::pin(self.finish(server, tx, end, owed)).await;
        false
    }

    /// The forward is over: say how, and stop routing cancel requests to the backend. Takes
    /// and gives back `end` so that the caller's future never borrows it (see above).
    #[inline]
    fn unbound(&mut self, server: &Backend, tx: &TxState, end: Ended) -> Ended {
        tracing::trace!(
            client = self.cancel.pid,
            server = server.id,
            ?end,
            ?tx,
            "unbound"
        );
        self.cancel.unbind();
        end
    }

    /// A transaction that got no backend of its own: a seat on another client's (pipelining)
    /// or a refusal. Boxed by the caller, as is `finish`: rare paths that would otherwise size
    /// every transaction's state.
    async fn seat_elsewhere(&mut self, seat: Result<Seat, PgError>, began: Instant) -> bool {
        match seat {
            Ok(Seat::Server(_)) => unreachable!("served by the caller"),
            Ok(Seat::Ride(ride)) => self.ride(ride, began).await,
            Err(refusal) => {
                self.tally.client.unbound();
                self.shared.health.failed();
                self.shed(refusal).await.is_ok()
            }
        }
    }

    async fn forward(
        &mut self,
        server: &mut Backend,
        tx: &mut TxState,
        release: bool,
    ) -> (Ended, BytesMut) {
        // The session's own Arc, not arc-swap's guard: a guard held across the forward's
        // awaits takes one of the thread's eight fast slots, and with more transactions than
        // that in flight every further load fell back to arc-swap's slow path.
        let config = self.config.refresh(&self.shared.config);
        let rules = Rules::new(&self.shared.statements, config, &self.extra_params);
        let transaction_mode = self.mode == PoolMode::Transaction;
        let timeouts = Timeouts {
            idle_transaction: config.pool.idle_transaction_timeout,
            query: config.pool.query_timeout,
            client_idle: config.pool.client_idle_timeout,
        };
        let (shared, pool) = (self.shared.clone(), self.pool);
        let on_query_timeout = move || count_query_timeout(&shared, pool);
        let client = ClientSide {
            timeouts,
            on_query_timeout: &on_query_timeout,
            stream: &mut self.client,
            input: &mut self.input,
            walker: &mut self.walker,
            params: &mut self.params,
            extra_params: &self.extra_params,
            rewrite: transaction_mode.then_some((&mut self.state, &rules)),
            tally: &mut self.tally,
        };
        let ended = pump::forward(client, server, tx, release).await;
        if matches!(ended.0, Ended::Released) {
            debug_assert!(self.state.tracker.is_empty(), "replies owed at release");
        }
        self.state.tracker.clear();
        ended
    }

    /// Wait for the client to send something; false when it left or idled past
    /// `pool.client_idle_timeout` (it is told so).
    async fn wait_readable(&mut self) -> bool {
        let idle = self
            .config
            .refresh(&self.shared.config)
            .pool
            .client_idle_timeout;
        if idle.is_zero() || !self.input.is_empty() {
            // poll_read_ready instead of readable(): same wait, but no 150-byte future in
            // every idle client's state.
            let client = &self.client;
            return std::future::poll_fn(|cx| client.poll_read_ready(cx))
                .await
                .is_ok();
        }
        // Boxed: the timer would otherwise be part of every idle client's state even when
        // the timeout is off.
        Box::pin(self.wait_readable_for(idle)).await
    }

    async fn wait_readable_for(&mut self, idle: Duration) -> bool {
        match tokio::time::timeout(idle, self.client.readable()).await {
            Ok(ready) => ready.is_ok(),
            Err(_) => {
                self.shared.pools.count(self.pool, Event::ClientIdleTimeout);
                self.say(&idle_session()).await;
                false
            }
        }
    }

    /// Answer a batch that needs no backend (see `local`). Some(true): answered; Some(false):
    /// the client left; None: a backend is needed.
    async fn answer_locally(&mut self) -> Option<bool> {
        loop {
            let config = self.config.refresh(&self.shared.config);
            let rules = Rules::new(&self.shared.statements, config, &self.extra_params);
            let mut out = BytesMut::new();
            let encoding = self.params.get("client_encoding").unwrap_or_default();
            match local::answer(&self.input, &mut self.state, &rules, encoding, &mut out) {
                Local::Answered(n) => {
                    self.input.advance(n);
                    self.tally.sent(out.len());
                    return Some(self.client.write_all(&out).await.is_ok());
                }
                Local::No => return None,
                Local::NeedMore => {
                    if !self.read_more().await {
                        return Some(false);
                    }
                }
            }
        }
    }

    /// Wait until a whole message header is buffered. False when the client left.
    async fn next_message(&mut self) -> bool {
        loop {
            if let Some((tag, total)) = header(&self.input) {
                if total == 0 || total > self.max_message_size() {
                    let err = pump::too_large(tag, total.saturating_sub(1));
                    Box::pin(self.say(&err)).await;
                    return false;
                }
                return tag != ftag::TERMINATE;
            }
            if self.input.is_empty() && self.input.capacity() > 0 {
                // An idle client holds no read buffer.
                buffers::give_back(std::mem::take(&mut self.input));
            }
            if !self.wait_readable().await {
                return false;
            }
            if self.input.capacity() == 0 {
                self.input = buffers::take();
            } else {
                self.input.reserve(READ_SIZE);
            }
            match read_now(&mut self.client, &mut self.input) {
                Some(Ok(0)) | Some(Err(_)) => return false,
                Some(Ok(n)) => self.tally.between_transactions(n),
                None => {}
            }
        }
    }

    fn max_message_size(&mut self) -> usize {
        self.config
            .refresh(&self.shared.config)
            .limits
            .max_message_size
    }

    /// Check out a backend, asked for at `started`, and make its parameters the client's; or,
    /// where the pool pipelines, a seat on another client's backend.
    async fn bind(&mut self, started: Instant) -> Result<Seat, PgError> {
        let queue_timeout = self.config.refresh(&self.shared.config).pool.queue_timeout;
        let offer = || self.ride_request();
        let seat = self
            .shared
            .pools
            .checkout_or_ride(self.pool, started, started + queue_timeout, Some(&offer))
            .await
            .map_err(|e| self.refusal(e, queue_timeout))?;
        let mut server = match seat {
            Seat::Server(server) => server,
            Seat::Ride(ride) => {
                let waited = Instant::now().saturating_duration_since(started);
                self.tally.meters.checked_out(waited);
                return Ok(Seat::Ride(ride));
            }
        };
        let waited = server.checked_out_at.saturating_duration_since(started);
        self.tally.meters.checked_out(waited);
        self.tally.client.bound(&server);
        if let Err(e) = sync_params(&mut server, &mut self.params).await {
            return Err(match e {
                ServerError::Rejected(mut err) => {
                    // (Riders go only on a backend already set to this client's parameters,
                    // so there are none here; if there were, they are told it was lost.)
                    server.riders.clear();
                    self.shared.pools.checkin(server, Instant::now());
                    err.severity = crate::protocol::error::Severity::Error;
                    err
                }
                other => other.to_client(self.database()),
            });
        }
        self.cancel.bind(target(&server));
        Ok(Seat::Server(server))
    }

    fn refusal(&self, e: CheckoutError, queue_timeout: Duration) -> PgError {
        match e {
            CheckoutError::Shed(Shed::QueueFull) => {
                let stats = self.shared.pools.stats(self.pool);
                PgError::error(
                    code::TOO_MANY_CONNECTIONS,
                    format!(
                        "pool \"{}/{}\" refused the transaction: {} clients already waiting (pool.max_waiting)",
                        self.database(), self.user(), stats.waiting
                    ),
                )
                .with_hint("Retry with backoff; the pool is overloaded.")
            }
            CheckoutError::Shed(Shed::Codel) => PgError::error(
                code::TOO_MANY_CONNECTIONS,
                format!(
                    "pool \"{}/{}\" shed the transaction: the queue has been standing (pool.queue = \"codel\")",
                    self.database(), self.user()
                ),
            )
            .with_hint("Retry with backoff; the pool is overloaded."),
            CheckoutError::Shed(Shed::QueueTimeout) => {
                let stats = self.shared.pools.stats(self.pool);
                PgError::error(
                    code::TOO_MANY_CONNECTIONS,
                    format!(
                        "no server connection free for pool \"{}/{}\" within pool.queue_timeout ({}): {} of {} in use",
                        self.database(),
                        self.user(),
                        crate::config::units::format_duration(queue_timeout),
                        stats.open - stats.idle,
                        stats.size
                    ),
                )
                .with_hint("Retry the transaction shortly; if this persists, the pool is too small for the load.")
            }
            CheckoutError::Closed => {
                PgError::fatal(code::ADMIN_SHUTDOWN, "sluice is shutting down")
            }
            CheckoutError::Connect(e) => {
                let mut err = e.to_client(self.database());
                err.severity = crate::protocol::error::Severity::Error;
                err
            }
        }
    }

    /// Refuse the transaction the client just began: the error at once, then skip its
    /// messages through the next Sync (or the one Query or FunctionCall), then ReadyForQuery.
    async fn shed(&mut self, refusal: PgError) -> Result<(), ()> {
        let mut out = BytesMut::new();
        self.shared.admin.errors.count(&refusal);
        refusal.encode(&mut out);
        self.client.write_all(&out).await.map_err(|_| ())?;
        if refusal.is_fatal() {
            return Err(());
        }
        self.skip_request().await?;
        out.clear();
        messages::ready_for_query(&mut out, b'I');
        self.client.write_all(&out).await.map_err(|_| ())
    }

    async fn skip_request(&mut self) -> Result<(), ()> {
        let mut ends_here = false;
        loop {
            match self.walker.step(&self.input, |_| false) {
                Step::Start { tag, len } => {
                    self.input.advance(len);
                    if tag == ftag::TERMINATE {
                        return Err(());
                    }
                    ends_here = matches!(tag, ftag::SYNC | ftag::QUERY | ftag::FUNCTION_CALL);
                }
                Step::Continue { len } => self.input.advance(len),
                Step::Whole { .. } | Step::Malformed { .. } => return Err(()),
                Step::NeedMore => {
                    if !self.read_more().await {
                        return Err(());
                    }
                    continue;
                }
            }
            if ends_here && self.walker.at_boundary() {
                return Ok(());
            }
        }
    }

    async fn read_more(&mut self) -> bool {
        self.input.reserve(READ_SIZE);
        match tokio::io::AsyncReadExt::read_buf(&mut self.client, &mut self.input).await {
            Ok(n) if n > 0 => {
                self.tally.between_transactions(n);
                true
            }
            _ => false,
        }
    }

    /// The session is over: tell the client why if there is a why, and leave the backend
    /// clean for the next client or close it.
    async fn finish(&mut self, server: Backend, tx: TxState, end: Ended, owed: BytesMut) {
        let _ = self.client.write_all(&owed).await;
        match end {
            Ended::ServerGone => {
                drop(server);
                let err = PgError::fatal(
                    code::CONNECTION_FAILURE,
                    "server closed the connection unexpectedly",
                );
                self.say(&err).await;
            }
            Ended::Fatal(err) => {
                self.say(&err).await;
                drop(server); // a partial message may have gone to it
            }
            Ended::ClientGone { clean: false } => drop(server),
            Ended::ClientGone { clean: true } | Ended::Released => self.give_back(server, tx).await,
            Ended::IdleInTransaction => {
                self.shared
                    .pools
                    .count(self.pool, Event::IdleTransactionTimeout);
                let secs = self.shared.config.load().pool.idle_transaction_timeout;
                tracing::warn!(
                    client = self.cancel.pid,
                    pool = %format!("{}/{}", self.database(), self.user()),
                    "client idle in transaction past pool.idle_transaction_timeout; rolled back"
                );
                let err = PgError::fatal(
                    code::IDLE_IN_TRANSACTION_TIMEOUT,
                    format!(
                        "terminating connection due to idle-in-transaction timeout (pool.idle_transaction_timeout = {})",
                        crate::config::units::format_duration(secs)
                    ),
                );
                self.say(&err).await;
                self.give_back(server, tx).await;
            }
            Ended::ClientIdle => {
                self.shared.pools.count(self.pool, Event::ClientIdleTimeout);
                self.say(&idle_session()).await;
                self.give_back(server, tx).await;
            }
        }
    }

    /// Clean the backend (roll back, reset) and return it to the pool, or close it.
    async fn give_back(&self, server: Backend, tx: TxState) {
        let held = server.checked_out_at.elapsed();
        self.tally.meters.checked_in(held);
        let reset = self.mode == PoolMode::Session || self.state.pinned.is_some();
        if let Some(server) = cleanup(server, tx, reset).await {
            self.shared.pools.checkin(server, Instant::now());
        }
    }

    pub(super) async fn say(&mut self, err: &PgError) {
        self.shared.admin.errors.count(err);
        let mut out = BytesMut::new();
        err.encode(&mut out);
        let _ = self.client.write_all(&out).await;
    }
}

/// Count a statement cancelled for running past `pool.query_timeout` against its pool and
/// sluice's health.
pub(super) fn count_query_timeout(shared: &Shared, pool: PoolId) {
    shared.pools.count(pool, Event::QueryTimeout);
    shared.health.failed();
}

/// Read what the socket has without waiting; None when it has nothing after all. Unlike
/// `try_read_buf` this goes through `poll_read`, which marks the socket not-ready after a
/// short read, so the forwarding loop doesn't spend a syscall learning that it's empty.
fn read_now(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match tokio_util::io::poll_read_buf(std::pin::Pin::new(stream), &mut cx, buf) {
        std::task::Poll::Ready(read) => Some(read),
        std::task::Poll::Pending => None,
    }
}

fn idle_session() -> PgError {
    PgError::fatal(
        "57P05",
        "terminating connection due to idle-session timeout (pool.client_idle_timeout)",
    )
}

/// A session-mode client that found no backend at login: FATAL, as PostgreSQL would refuse.
pub fn login_refusal(e: CheckoutError, database: &str, user: &str) -> PgError {
    match e {
        CheckoutError::Shed(why) => PgError::fatal(
            code::TOO_MANY_CONNECTIONS,
            format!(
                "no server connection for pool \"{database}/{user}\" at login ({})",
                match why {
                    Shed::QueueTimeout => "pool.queue_timeout",
                    Shed::QueueFull => "pool.max_waiting",
                    Shed::Codel => "pool.queue = \"codel\"",
                }
            ),
        )
        .with_hint("Retry shortly; if this persists, the pool is too small for the load."),
        CheckoutError::Closed => PgError::fatal(code::ADMIN_SHUTDOWN, "sluice is shutting down"),
        CheckoutError::Connect(e) => {
            let mut err = e.to_client(database);
            err.severity = crate::protocol::error::Severity::Fatal;
            err
        }
    }
}

pub(super) fn target(server: &ServerConn) -> CancelTarget {
    CancelTarget {
        addr: server.addr,
        key: server.key,
    }
}

/// Make the backend's session parameters the client's: one round trip when they differ, none
/// when they match, and not even a comparison when both are as they were the last time this
/// backend was made to match the same parameters (most clients of a pool share one map).
async fn sync_params(server: &mut Backend, wanted: &mut Arc<Params>) -> Result<(), ServerError> {
    if server.synced == Some((wanted.version(), server.params.version())) {
        return Ok(());
    }
    // Boxed: the round trip is the rare case and would otherwise size every bind.
    Box::pin(sync_params_slow(server, wanted)).await
}

async fn sync_params_slow(
    server: &mut Backend,
    wanted: &mut Arc<Params>,
) -> Result<(), ServerError> {
    if let Some(sql) = params::sync_sql(wanted, &server.params) {
        server.synced = None;
        server.run_quiet(&sql, CLEANUP_TIMEOUT).await?;
        // The server reports its normalised spelling of reported parameters ("utc" ->
        // "UTC"); adopt it so the next comparison matches. The rest it keeps as sluice set
        // them.
        for (name, value) in wanted.clone().iter() {
            if params::is_reported(name) {
                if let Some(v) = server.params.get(name) {
                    let v = v.to_string();
                    Params::set_shared(wanted, name, &v);
                }
            } else {
                server.params.set(name, value);
            }
        }
        server
            .params
            .retain(|k| params::is_reported(k) || wanted.get(k).is_some());
    }
    server.synced = Some((wanted.version(), server.params.version()));
    Ok(())
}

/// Bring a backend whose client has gone back to an idle state: cancel and wait out anything
/// still running, close an unfinished extended-protocol batch with a Sync, roll back an open
/// transaction, and in session mode DISCARD ALL. None when it cannot be made clean in time:
/// the caller then closes it.
async fn cleanup(mut server: Backend, tx: TxState, reset: bool) -> Option<Backend> {
    let mut owed = tx.pending();
    let mut status = tx.status();
    if owed > 0 {
        let _ = send_cancel(target(&server)).await;
    }
    if tx.unsynced() {
        server.send_sync().await.ok()?;
        owed += 1;
    }
    let drained = tokio::time::timeout(CLEANUP_TIMEOUT, async {
        while owed > 0 {
            status = server.read_until_ready().await?;
            owed -= 1;
        }
        Ok::<_, ServerError>(())
    })
    .await;
    if !matches!(drained, Ok(Ok(()))) {
        return None;
    }
    if status != b'I' {
        server.run_quiet("ROLLBACK", CLEANUP_TIMEOUT).await.ok()?;
    }
    if reset {
        server
            .run_quiet("DISCARD ALL", CLEANUP_TIMEOUT)
            .await
            .ok()?;
        server.statements.clear();
        server.params.retain(params::is_reported);
    }
    Some(server)
}

/// Write the reply still owed after a checkin: straight away when the socket has room, as
/// it nearly always has (a write future polled once costs a readiness poll and a
/// cooperative-budget check more); false when the client is gone.
async fn write_owed(client: &mut TcpStream, owed: &[u8]) -> bool {
    let mut rest = owed;
    while !rest.is_empty() {
        match pump::write_now(client.try_write(rest)) {
            Some(Ok(n)) => rest = &rest[n..],
            Some(Err(())) => return false,
            None => return client.write_all(rest).await.is_ok(),
        }
    }
    true
}
