//! The per-client task: the opening (SSL refusal, cancel routing, startup), the door (client
//! cap), authentication, the choice of pool, and the login reply; then the session proper.

mod buffers;
mod classify;
mod conn;
mod expect;
mod local;
mod login;
mod pipeline;
mod pump;
#[doc(hidden)] // public for benches/forward.rs only
pub mod rewrite;
mod session;
mod startup;
mod transaction;

pub use login::ClientSecrets;

use crate::clock::Instant;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::admin::clients::{Killable, NewClient, Registration};
use crate::admin::tally::Tally;
use crate::admission::Admitted;
use crate::boxed::boxed;
use crate::cancel::{send_cancel, CancelSlot};
use crate::config::{Config, PoolMode};
use crate::params::{self, Params};
use crate::pool::PoolId;
use crate::protocol::error::{code, PgError};
use crate::protocol::frame::FrameWalker;
use crate::protocol::messages;
use crate::proxy::Shared;
use crate::server::Backend;
use conn::LoginConn;
use login::LoginError;
use session::Session;
use startup::{Opening, OpeningError};

/// Serve one accepted connection to the end; `guard` is dropped when it ends.
// An async block, not an async fn: an async fn's state keeps a copy of its arguments, and
// this future is most of every client's task.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    guard: impl Send + 'static,
) -> impl Future<Output = ()> + Send {
    async move {
        let registered = shared.cancels.register();
        let cancel = registered.slot.clone();
        // Boxed: the login's state is freed once it is done instead of sizing the whole task.
        let Some(opened) = boxed(|| login(&mut stream, &shared, peer.ip(), &cancel)).await else {
            return;
        };
        // The registration (if any) outlives the session, which the box owns.
        let (_registration, run) = start(&shared, stream, peer, opened, cancel);
        run.await;
        drop(guard);
    }
}

type SessionRun = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What follows a login: a pooled session, or the admin console. A plain function, so none
/// of the login's results stays in the client task's state.
fn start(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    opened: Opened,
    cancel: Arc<CancelSlot>,
) -> (Option<Registration<'_>>, SessionRun) {
    match opened {
        Opened::Pooled(startup, server) => {
            let (registration, run) = start_session(shared, stream, peer, startup, server, cancel);
            (Some(registration), run)
        }
        Opened::Console(login, input) => {
            // Boxed: the console's state would otherwise size every client's task.
            let console =
                crate::admin::console::serve(stream, shared.clone(), login, input, cancel);
            (None, Box::pin(console))
        }
    }
}

/// List the session in the client registry (to count its traffic and let KILL end it) and
/// make its future. Boxed, so the client's task holds only the login's bookkeeping and a
/// pointer, and the session only as much state as its own pool mode needs.
fn start_session(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    startup: Startup,
    server: Option<Backend>,
    cancel: Arc<CancelSlot>,
) -> (Registration<'_>, SessionRun) {
    let meters = (shared.admin.meters).pool(startup.pool, &startup.database, &startup.user);
    let registration = shared.admin.clients.register(NewClient {
        id: cancel.pid,
        user: shared.params.name(&startup.user),
        database: shared.params.name(&startup.database),
        pool: Some(startup.pool),
        peer,
        // A listener bound to one address gives every connection that address; only a
        // wildcard listener needs to ask the kernel (getsockname) per connection.
        local: shared.local.or_else(|| stream.local_addr().ok()),
        application_name: shared
            .params
            .name(startup.params.get("application_name").unwrap_or("")),
    });
    let fd = stream.as_raw_fd();
    let config = shared.config.hold();
    let session = Session {
        tally: Tally::new(meters, registration.entry.clone()),
        shared: shared.clone(),
        client: stream,
        input: startup.input,
        walker: FrameWalker::new(config.get().limits.max_message_size),
        config,
        pool: startup.pool,
        mode: startup.mode,
        params: startup.params,
        extra_params: startup.extra_params,
        cancel,
        state: Default::default(),
        _admitted: startup.admitted,
    };
    // KILL ends the session through `Killable`, which owns it along with the box.
    let entry = registration.entry.clone();
    let run: SessionRun = match server {
        Some(server) => Box::pin(Killable::new(entry, fd, session.run_session_mode(server))),
        None => Box::pin(Killable::new(entry, fd, session.run_transaction_mode())),
    };
    (registration, run)
}

/// Open and authenticate within `limits.login_timeout`, answering refusals. None: the client
/// was refused, left, or only sent a cancel request.
async fn login(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    peer: IpAddr,
    cancel: &CancelSlot,
) -> Option<Opened> {
    let login_timeout = shared.config.load().limits.login_timeout;
    let mut conn = LoginConn::new(stream);
    let opening = open(&mut conn, shared, peer, cancel);
    let refusal = match tokio::time::timeout(login_timeout, opening).await {
        Ok(Ok(opened)) => return opened,
        Ok(Err(None)) => return None,
        Ok(Err(Some(refusal))) => refusal,
        Err(_) => PgError::fatal(
            code::CONNECTION_FAILURE,
            "login did not complete within limits.login_timeout",
        ),
    };
    shared.admin.errors.count(&refusal);
    // After what was still owed (AuthenticationOk, if the refusal came after it).
    refusal.encode(&mut conn.out);
    let _ = conn.flush().await;
    None
}

/// What a successful login settled.
struct Startup {
    pool: PoolId,
    database: String,
    user: String,
    mode: PoolMode,
    params: Arc<Params>,
    extra_params: Vec<String>,
    /// What the pool's backends report at login.
    reported: Arc<Params>,
    /// This client's place under its database's and user's client caps.
    admitted: Admitted,
    /// What the client sent after its login without waiting for the reply.
    input: BytesMut,
}

/// What login settled: a pooled session (with its backend in session mode), or the admin
/// console.
#[allow(clippy::large_enum_variant)] // one per login, moved once
enum Opened {
    Pooled(Startup, Option<Backend>),
    Console(crate::admin::console::ConsoleLogin, BytesMut),
}

/// Ok(None): nothing more to do (a cancel request). Err(None): the client left.
async fn open(
    stream: &mut LoginConn<'_>,
    shared: &Arc<Shared>,
    peer: IpAddr,
    cancel: &CancelSlot,
) -> Result<Option<Opened>, Option<PgError>> {
    let (minor, startup) = match startup::read_opening(stream).await {
        Ok(Opening::Cancel { pid, secret }) => {
            if let Some(target) = shared.cancels.target(pid, secret) {
                let _ = send_cancel(target).await;
            }
            return Ok(None);
        }
        Ok(Opening::Startup { minor, params }) => (minor, params),
        Err(OpeningError::Gone) => return Err(None),
        Err(OpeningError::Refuse(e)) => return Err(Some(e)),
    };
    let config = shared.config.load_full();
    let user = find(&startup, "user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            PgError::fatal(
                code::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let database = find(&startup, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    if minor > 0 {
        negotiate(&mut stream.out, &startup);
    }
    let admitted = shared
        .admit(&config, peer, &database, &user)
        .inspect_err(|_| shared.health.failed())?;
    let secret = config.users.get(&user).map(|u| &u.password);
    login::authenticate(stream, &user, config.auth.kind, secret, &shared.secrets)
        .await
        .map_err(|e| match e {
            LoginError::Gone => None,
            LoginError::Refuse(e) => {
                if e.code == code::INVALID_PASSWORD {
                    shared.door.auth_failed(peer);
                }
                Some(e)
            }
        })?;
    // Held until the login reply is ready, so that it all goes in one write; a refusal from
    // here on follows it (see `login`).
    messages::auth_ok(&mut stream.out);
    if crate::admin::console::is_console(&config, &database) {
        let login = crate::admin::console::admit(&config, &user, &database, &startup, admitted)?;
        stream.flush().await.map_err(|_| None)?;
        return Ok(Some(Opened::Console(login, stream.take_input())));
    }
    let (mut startup, server) =
        choose_pool(shared, &config, &database, &user, &startup, admitted).await?;
    login_reply(&mut stream.out, &startup, cancel.pid, cancel.secret);
    stream.flush().await.map_err(|_| None)?;
    startup.input = stream.take_input();
    Ok(Some(Opened::Pooled(startup, server)))
}

fn find<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Answer a 3.x (x > 0) startup with the version sluice speaks and the options it ignored
/// (written with the first authentication request).
fn negotiate(out: &mut BytesMut, startup: &[(String, String)]) {
    let unrecognized: Vec<&str> = startup
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    messages::negotiate_protocol_version(out, &unrecognized);
}

/// Pick the pool, learn its server parameters, and in session mode bind the backend now.
async fn choose_pool(
    shared: &Shared,
    config: &Config,
    database: &str,
    user: &str,
    startup: &[(String, String)],
    admitted: Admitted,
) -> Result<(Startup, Option<Backend>), Option<PgError>> {
    if !config.databases.contains_key(database) {
        return Err(Some(PgError::fatal(
            code::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        )));
    }
    let extra_params = config.pool.track_extra_params.clone();
    let requested = requested_params(startup, &extra_params)?;
    let pool = shared.pools.pool_for(database, user, || {
        crate::proxy::pool_settings(config, database, user)
    });
    let mode = config.pool_mode(database);
    let deadline = Instant::now() + config.pool.queue_timeout;
    let refusal = |e| {
        shared.health.failed();
        Some(session::login_refusal(e, database, user))
    };
    let server = match mode {
        PoolMode::Session => {
            let started = Instant::now();
            let server = shared.pools.checkout(pool, started, deadline).await;
            let server = server.map_err(refusal)?;
            let meters = shared.admin.meters.pool(pool, database, user);
            meters.checked_out(started.elapsed());
            Some(server)
        }
        PoolMode::Transaction => None,
    };
    let reported = shared
        .pools
        .learn_server_params(pool, deadline)
        .await
        .map_err(refusal)?;
    let pairs = session_pairs(&reported, &requested, &extra_params);
    let params = shared.params.intern_pairs(&pairs);
    let startup = Startup {
        pool,
        database: database.to_string(),
        user: user.to_string(),
        mode,
        params,
        extra_params,
        reported,
        admitted,
        input: BytesMut::new(),
    };
    Ok((startup, server))
}

/// A new session's parameters: the tracked ones its pool's backends report, overridden by
/// those the client asked for. As borrowed pairs: a pool's clients mostly log in alike, and
/// the map they share is then found without copying a string.
fn session_pairs<'a>(
    reported: &'a Params,
    requested: &'a Params,
    extra: &[String],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(16);
    let tracked = reported
        .iter()
        .filter(|(name, _)| params::is_tracked(name, extra));
    for (name, value) in tracked.chain(requested.iter()) {
        match pairs.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(pair) => pair.1 = value,
            None => pairs.push((name, value)),
        }
    }
    pairs
}

/// The tracked parameters a client asked for at startup, including `-c name=value` pairs in
/// `options`. Anything sluice would not carry to the next backend is refused, not dropped.
fn requested_params(startup: &[(String, String)], extra: &[String]) -> Result<Params, PgError> {
    let mut wanted = Params::new();
    let mut add = |name: &str, value: &str| {
        if params::is_tracked(name, extra) {
            wanted.set(name, value);
            Ok(())
        } else {
            Err(PgError::fatal(
                code::PROTOCOL_VIOLATION,
                format!("unsupported startup parameter: {name}"),
            )
            .with_hint(
                "List it in pool.track_extra_params to have sluice carry it to every backend.",
            ))
        }
    };
    for (name, value) in startup {
        match name.as_str() {
            "user" | "database" => {}
            "replication" => {
                return Err(PgError::fatal(
                    code::FEATURE_NOT_SUPPORTED,
                    "sluice does not pool replication connections",
                ))
            }
            "options" => {
                for (k, v) in parse_options(value)? {
                    add(&k, &v)?;
                }
            }
            n if n.starts_with("_pq_.") => {}
            n => add(n, value)?,
        }
    }
    Ok(wanted)
}

/// Split libpq's `options` ("-c a=b --c=d") into name/value pairs; backslash escapes a space.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut pairs = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let setting = if w == "-c" {
            iter.next().unwrap_or_default()
        } else if let Some(rest) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            rest.to_string()
        } else {
            return Err(PgError::fatal(
                code::PROTOCOL_VIOLATION,
                format!("unsupported option in startup parameter \"options\": {w}"),
            ));
        };
        let Some((k, v)) = setting.split_once('=') else {
            return Err(PgError::fatal(
                code::PROTOCOL_VIOLATION,
                format!("option \"{setting}\" in startup parameter \"options\" has no value"),
            ));
        };
        pairs.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(pairs)
}

/// What follows AuthenticationOk: the server's parameters as this client will see them,
/// sluice's own cancel key for the client, and ReadyForQuery.
fn login_reply(out: &mut BytesMut, startup: &Startup, pid: u32, secret: u32) {
    for (name, value) in startup.reported.iter() {
        let value = startup.params.get(name).unwrap_or(value);
        messages::parameter_status(out, name, value);
    }
    messages::backend_key_data(out, pid, secret);
    messages::ready_for_query(out, b'I');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_parameters() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB").unwrap(),
            vec![
                ("search_path".to_string(), "a,b".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("work_mem".to_string(), "4MB".to_string()),
            ]
        );
        assert_eq!(
            parse_options("-c application_name=my\\ app").unwrap(),
            vec![("application_name".to_string(), "my app".to_string())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn a_session_takes_the_servers_tracked_parameters_with_the_clients_on_top() {
        let mut reported = Params::new();
        reported.set("TimeZone", "UTC");
        reported.set("server_version", "15.18");
        reported.set("application_name", "");
        let mut requested = Params::new();
        requested.set("timezone", "Europe/Paris");
        requested.set("DateStyle", "ISO, DMY");
        assert_eq!(
            session_pairs(&reported, &requested, &[]),
            vec![
                ("TimeZone", "Europe/Paris"),
                ("application_name", ""),
                ("DateStyle", "ISO, DMY"),
            ]
        );
    }

    #[test]
    fn untracked_startup_parameters_are_refused_by_name() {
        let startup = vec![
            ("user".to_string(), "u".to_string()),
            ("TimeZone".to_string(), "UTC".to_string()),
        ];
        assert_eq!(
            requested_params(&startup, &[]).unwrap().get("timezone"),
            Some("UTC")
        );
        let bad = vec![("search_path".to_string(), "x".to_string())];
        let err = requested_params(&bad, &[]).unwrap_err();
        assert_eq!(err.code, code::PROTOCOL_VIOLATION);
        assert!(err.message.contains("search_path"));
        assert!(requested_params(&bad, &["search_path".to_string()]).is_ok());
    }
}

#[cfg(test)]
mod size_tests {
    /// Every idle client holds a Session; the pump and the login are boxed while they run,
    /// so this struct is most of an idle client's task.
    #[test]
    fn a_session_is_small() {
        let size = std::mem::size_of::<super::session::Session>();
        assert!(size < 1024, "Session is {size} bytes");
    }
}
