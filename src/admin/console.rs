//! The admin console: a client that logs in to the virtual database `sluice` (or `pgbouncer`,
//! so existing tooling connects unchanged) as one of `auth.admin_users` or `auth.stats_users`
//! talks to sluice itself over the simple query protocol. Stats users may only SHOW; anyone
//! else is refused after authentication with FATAL 28000, as PgBouncer does.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::Admitted;
use crate::cancel::CancelSlot;
use crate::config::Config;
use crate::protocol::error::{code, PgError, Severity};
use crate::protocol::frame::{cstr, header};
use crate::protocol::messages::{self, ftag};
use crate::protocol::rows::{self, Table};
use crate::proxy::Shared;

use super::clients::{ClientEntry, Killable, NewClient};
use super::command::{self, Command, Show};
use super::{limits, listing, operations, reloads, settings, show};

/// The database names that reach the console (unless a real database has the name).
pub const DATABASES: [&str; 2] = ["sluice", "pgbouncer"];

/// Largest message the console reads.
const MAX_MESSAGE: usize = 1 << 20;

/// Does a login to `database` go to the console?
pub fn is_console(config: &Config, database: &str) -> bool {
    DATABASES.contains(&database) && !config.databases.contains_key(database)
}

/// What a console session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// SHOW only.
    Stats,
}

/// An authenticated console login.
pub struct ConsoleLogin {
    pub user: String,
    pub database: String,
    pub role: Role,
    pub application_name: String,
}

/// Decide, after authentication, whether `user` may use the console. Console sessions do not
/// count under the door's client caps (`admitted` is let go), so they never hold up draining.
pub fn admit(
    config: &Config,
    user: &str,
    database: &str,
    startup: &[(String, String)],
    admitted: Admitted,
) -> Result<ConsoleLogin, PgError> {
    let listed = |names: &[String]| names.iter().any(|n| n == user);
    let role = if listed(&config.auth.admin_users) {
        Role::Admin
    } else if listed(&config.auth.stats_users) {
        Role::Stats
    } else {
        tracing::warn!(
            user,
            "refused: not an admin or stats user, tried the admin console"
        );
        return Err(PgError::fatal(
            code::INVALID_AUTHORIZATION,
            "not allowed to connect to the admin console",
        )
        .with_hint("List the user in auth.admin_users or auth.stats_users."));
    };
    let application_name = startup
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    drop(admitted);
    Ok(ConsoleLogin {
        user: user.to_string(),
        database: database.to_string(),
        role,
        application_name,
    })
}

/// Serve a console session to its end. AuthenticationOk has gone already.
pub async fn serve(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    login: ConsoleLogin,
    input: BytesMut,
    cancel: Arc<CancelSlot>,
) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let registration = shared.admin.clients.register(NewClient {
        id: cancel.pid,
        user: login.user.as_str().into(),
        database: login.database.as_str().into(),
        pool: None,
        peer,
        local: stream.local_addr().ok(),
        application_name: login.application_name.as_str().into(),
    });
    let mut out = BytesMut::new();
    login_reply(&mut out, &login, cancel.pid, cancel.secret);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let entry = registration.entry.clone();
    let session = Console {
        shared: &shared,
        stream,
        input,
        login: &login,
        entry: &entry,
    };
    Killable::new(entry.clone(), fd, session.run()).await;
}

fn login_reply(out: &mut BytesMut, login: &ConsoleLogin, pid: u32, secret: u32) {
    let superuser = if login.role == Role::Admin {
        "on"
    } else {
        "off"
    };
    let version = format!("{}/sluice", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("application_name", login.application_name.as_str()),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("is_superuser", superuser),
        ("server_encoding", "UTF8"),
        ("server_version", version.as_str()),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        messages::parameter_status(out, name, value);
    }
    messages::backend_key_data(out, pid, secret);
    messages::ready_for_query(out, b'I');
}

/// What a command answers.
enum Reply {
    Rows(Table),
    /// Only the command tag, after an optional NOTICE.
    Done(Option<String>),
}

struct Console<'a> {
    shared: &'a Arc<Shared>,
    stream: TcpStream,
    input: BytesMut,
    login: &'a ConsoleLogin,
    entry: &'a ClientEntry,
}

impl Console<'_> {
    async fn run(mut self) {
        // After an extended-protocol message, skip to its Sync.
        let mut skipping = false;
        while let Some((tag, body)) = self.next_message().await {
            let mut out = BytesMut::new();
            match tag {
                ftag::QUERY => {
                    let text = cstr(&body).map(|(s, _)| s).unwrap_or_default();
                    self.entry.requested(crate::clock::Instant::now());
                    self.query(text, &mut out).await;
                    messages::ready_for_query(&mut out, b'I');
                }
                ftag::SYNC => {
                    skipping = false;
                    messages::ready_for_query(&mut out, b'I');
                }
                ftag::TERMINATE => return,
                ftag::PARSE
                | ftag::BIND
                | ftag::DESCRIBE
                | ftag::EXECUTE
                | ftag::CLOSE
                | ftag::FLUSH => {
                    if !std::mem::replace(&mut skipping, true) {
                        self.error(&extended_refused(), &mut out);
                    }
                }
                _ => {
                    let err = PgError::fatal(
                        code::PROTOCOL_VIOLATION,
                        format!(
                            "unexpected message type \"{}\" on the admin console",
                            tag as char
                        ),
                    );
                    self.error(&err, &mut out);
                    let _ = self.stream.write_all(&out).await;
                    return;
                }
            }
            if !out.is_empty() && self.stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// The next whole message, or None when the client left or sent garbage.
    async fn next_message(&mut self) -> Option<(u8, BytesMut)> {
        loop {
            if let Some((tag, total)) = header(&self.input) {
                if total == 0 || total > MAX_MESSAGE {
                    return None;
                }
                if self.input.len() >= total {
                    let mut frame = self.input.split_to(total);
                    frame.advance(5);
                    return Some((tag, frame));
                }
            }
            self.input.reserve(8192);
            match self.stream.read_buf(&mut self.input).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
    }

    fn error(&self, err: &PgError, out: &mut BytesMut) {
        self.shared.admin.errors.count(err);
        err.encode(out);
    }

    /// Run each statement of a simple query; stop at the first error.
    async fn query(&mut self, text: &str, out: &mut BytesMut) {
        let statements = command::statements(text);
        if statements.is_empty() {
            rows::empty_query_response(out);
            return;
        }
        for statement in statements {
            let result = match command::parse(statement) {
                Ok(cmd) => self.execute(&cmd).await.map(|reply| (cmd, reply)),
                Err(e) => Err(e),
            };
            match result {
                Ok((cmd, Reply::Rows(table))) => table.encode(out, cmd.tag()),
                Ok((cmd, Reply::Done(notice))) => {
                    if let Some(n) = notice {
                        PgError::new(Severity::Notice, "00000", n).encode(out);
                    }
                    rows::command_complete(out, cmd.tag());
                }
                Err(e) => return self.error(&e, out),
            }
        }
    }

    async fn execute(&self, cmd: &Command) -> Result<Reply, PgError> {
        if self.login.role == Role::Stats && !cmd.read_only() {
            return Err(PgError::error("42501", "admin access needed")
                .with_hint("Only auth.admin_users may run commands; auth.stats_users may SHOW."));
        }
        let shared: &Shared = self.shared;
        let by = self.login.user.as_str();
        let done = |r: Result<(), PgError>| r.map(|()| Reply::Done(None));
        match cmd {
            Command::Show(what) => Ok(self.show(*what)),
            Command::Pause(db) => done(operations::pause(shared, db.as_deref(), by).await),
            Command::Resume(db) => done(operations::resume(shared, db.as_deref(), by)),
            Command::Reconnect(db) => done(operations::reconnect(shared, db.as_deref(), by)),
            Command::Kill(db) => done(operations::kill(shared, db, by)),
            Command::KillClient(id) => done(operations::kill_client(shared, *id, by)),
            Command::Shutdown => {
                operations::shutdown(shared, by);
                Ok(Reply::Done(None))
            }
            Command::Reload { force } => reloads::reload(shared, *force, by)
                .await
                .map(|s| Reply::Done(Some(s))),
            Command::Rollback => reloads::rollback(shared, by).map(|s| Reply::Done(Some(s))),
        }
    }

    fn show(&self, what: Show) -> Reply {
        let shared: &Shared = self.shared;
        Reply::Rows(match what {
            Show::Pools => show::pools(shared),
            Show::Stats => show::stats(shared),
            Show::Clients => listing::clients(shared),
            Show::Servers => listing::servers(shared),
            Show::Databases => show::databases(shared),
            Show::Users => show::users(shared),
            Show::Config => settings::config(&shared.config.load()),
            Show::Lists => show::lists(shared),
            Show::Version => show::show_version(),
            Show::Limits => limits::limits(shared),
            Show::Reloads => reloads::history(shared),
            Show::Help => return Reply::Done(Some(help())),
        })
    }
}

fn help() -> String {
    let shows: Vec<&str> = Show::names().collect();
    format!(
        "Console usage: SHOW {}; PAUSE [db]; RESUME [db]; RECONNECT [db]; KILL db; KILL_CLIENT id; SHUTDOWN; RELOAD [FORCE]; ROLLBACK",
        shows.join("|")
    )
}

fn extended_refused() -> PgError {
    PgError::error(
        code::FEATURE_NOT_SUPPORTED,
        "the admin console speaks the simple query protocol only",
    )
}
