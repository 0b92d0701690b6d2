//! Throwaway PostgreSQL clusters.
//!
//! [`PgCluster::start`] creates a private temporary directory
//! (`$TMPDIR/sluice-pg-XXXXXX`), runs `initdb` into it, writes a
//! `pg_hba.conf` and a small set of speed-over-durability settings, starts the
//! `postgres` binary directly as a child process listening on 127.0.0.1 (on a
//! free port unless one is requested) and waits until it accepts queries.
//! [`PgCluster::stop`] (also run on drop) shuts it down immediately and
//! removes the directory. It is used by `sluice quickstart` and by the
//! integration tests; the API is blocking (from async code, call it through
//! `spawn_blocking`).
//!
//! When running as root the directory is handed to the `postgres` system user
//! and `initdb`/`postgres` run as that user (the server refuses to run as
//! root); otherwise they run as the current user.
//!
//! # The server never outlives its starter
//!
//! A test binary that is killed, or that exits without running destructors
//! (statics are never dropped), must not leave a postmaster behind. The child
//! therefore asks the kernel for `PR_SET_PDEATHSIG = SIGQUIT` (SIGQUIT is
//! PostgreSQL's *immediate shutdown*) in a `pre_exec` hook. Two subtleties:
//!
//! * The parent-death signal is delivered when the *thread* that forked the
//!   child exits, not the process. Rust's test harness runs every test on its
//!   own short-lived thread, so forking from the caller's thread would kill the
//!   server as soon as the first test finished. All postmasters are therefore
//!   forked by one dedicated, never-exiting `pg-supervisor` thread (it just
//!   serves spawn requests from a channel forever); the resulting
//!   [`std::process::Child`] is handed back to the caller, who can wait on it
//!   from any thread. The thread only dies with the process, which is exactly
//!   when we want the signal.
//! * The kernel clears the parent-death signal on credential changes. std runs
//!   `pre_exec` closures *after* its `setgroups`/`setgid`/`setuid` calls, so the
//!   `prctl` done there survives the switch to the `postgres` user. The hook
//!   also checks `getppid()` to close the race where the parent died between
//!   `fork` and `prctl`.
//!
//! A process killed with SIGKILL cannot remove its temporary directory, so
//! each directory records its owner's pid and `start` removes directories of
//! owners that no longer exist (when their postmaster is gone too).

use std::ffi::{CStr, CString, OsString};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the PostgreSQL server binaries live unless `$SLUICE_PG_BIN` says otherwise.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";

const HOST: &str = "127.0.0.1";
const DIR_PREFIX: &str = "sluice-pg-";
const OWNER_FILE: &str = "sluice-owner.pid";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: u32 = 5;

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory holding `initdb` and `postgres` (and usually `psql`).
    /// Default: `$SLUICE_PG_BIN`, else [`DEFAULT_BIN_DIR`].
    pub bin_dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one (retrying if it gets
    /// taken before the server binds it).
    pub port: Option<u16>,
    /// `max_connections`. Default 200.
    pub max_connections: u32,
    /// Extra `pg_hba.conf` lines, placed before the defaults
    /// (`local all all trust`, `host all all 127.0.0.1/32 trust`,
    /// `host all all ::1/128 trust`).
    pub hba: Vec<String>,
    /// Extra `postgresql.conf` settings (name, unquoted value); they override
    /// the built-in ones.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let bin_dir = std::env::var_os("SLUICE_PG_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        ClusterOptions {
            bin_dir,
            port: None,
            max_connections: 200,
            hba: Vec::new(),
            settings: Vec::new(),
        }
    }
}

/// A running throwaway PostgreSQL server. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    bin_dir: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    postmaster: Option<Child>,
    removed: bool,
}

/// The account the server processes run as (only set when we are root).
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl PgCluster {
    /// Create, configure and start a new cluster; returns once it accepts
    /// queries. On failure everything created so far is removed and the error
    /// includes the tail of the server log where relevant.
    pub fn start(opts: ClusterOptions) -> io::Result<PgCluster> {
        sweep_stale_dirs();
        let run_as = run_as()?;
        let root = make_temp_dir()?;
        let cluster = PgCluster {
            bin_dir: opts.bin_dir.clone(),
            data_dir: root.join("data"),
            socket_dir: root.join("sock"),
            log_path: root.join("postgres.log"),
            root,
            port: 0,
            run_as,
            state: Mutex::new(State {
                postmaster: None,
                removed: false,
            }),
        };
        // From here on, dropping `cluster` cleans up after a failure.
        let mut cluster = cluster;
        cluster.init(&opts)?;

        let attempts = if opts.port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match opts.port {
                Some(p) => p,
                None => free_port()?,
            };
            match cluster.launch(port, &opts) {
                Ok(()) => {
                    tracing::debug!(
                        port,
                        dir = %cluster.root.display(),
                        "throwaway PostgreSQL cluster ready"
                    );
                    return Ok(cluster);
                }
                Err(LaunchError::PortTaken(e)) if attempt < attempts => {
                    tracing::debug!(port, error = %e, "port taken, retrying with another");
                }
                Err(LaunchError::PortTaken(e)) | Err(LaunchError::Other(e)) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's Unix-domain socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log file (its stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Run `sql` (one or more statements, executed one after another; a
    /// failing statement stops the script) as the superuser `postgres`
    /// through `psql -X -q -At -v ON_ERROR_STOP=1` over TCP, connected to
    /// `database`. Returns psql's stdout without the final newline
    /// (unaligned, tuples only: `select 1` gives `"1"`); `Err` carries
    /// psql's stderr.
    pub fn psql(&self, database: &str, sql: &str) -> io::Result<String> {
        run_psql(&self.bin_dir, self.port, database, sql)
    }

    /// Immediate shutdown (SIGQUIT, SIGKILL after 10 s), then remove the
    /// temporary directory. Idempotent; also run on drop.
    pub fn stop(&mut self) {
        self.shutdown();
    }

    /// Like [`stop`](Self::stop), through a shared reference: for clusters
    /// kept in statics (which are never dropped), e.g. from an `atexit` hook.
    /// Using the cluster afterwards fails with connection errors.
    pub fn shutdown(&self) {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(child) = state.postmaster.take() {
            stop_postmaster(child);
        }
        if !state.removed {
            state.removed = true;
            if let Err(e) = fs::remove_dir_all(&self.root) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %self.root.display(), error = %e, "could not remove cluster directory");
                }
            }
        }
    }

    /// initdb, then write pg_hba.conf and hook our settings file into
    /// postgresql.conf.
    fn init(&mut self, opts: &ClusterOptions) -> io::Result<()> {
        fs::create_dir(&self.socket_dir)?;
        fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o700))?;
        fs::File::create(&self.log_path)?;
        if let Some(ra) = self.run_as {
            for p in [&self.root, &self.socket_dir, &self.log_path] {
                std::os::unix::fs::chown(p, Some(ra.uid), Some(ra.gid))?;
            }
        }

        let initdb = self.bin_dir.join("initdb");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync"])
            .arg("--locale=C");
        self.prepare(&mut cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| annotate(e, &format!("running {}", initdb.display())))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }

        let mut hba = String::from("# written by sluice pgcluster\n");
        for line in opts.hba.iter().map(String::as_str).chain([
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host all all ::1/128 trust",
        ]) {
            hba.push_str(line);
            hba.push('\n');
        }
        // initdb created these files as the server user; rewriting keeps the owner.
        fs::write(self.data_dir.join("pg_hba.conf"), hba)?;

        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))?;
        writeln!(
            conf,
            "\n# sluice pgcluster settings (rewritten at each start)"
        )?;
        writeln!(conf, "include = 'sluice.conf'")?;
        Ok(())
    }

    /// Write `sluice.conf`: built-in settings for `port`, then the extra ones.
    fn write_settings(&self, port: u16, opts: &ClusterOptions) -> io::Result<()> {
        let socket_dir = self.socket_dir.to_string_lossy().into_owned();
        let mut settings: Vec<(&str, String)> = vec![
            ("listen_addresses", HOST.to_string()),
            ("port", port.to_string()),
            ("unix_socket_directories", socket_dir),
            ("max_connections", opts.max_connections.to_string()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("shared_buffers", "128MB".into()),
            ("logging_collector", "off".into()),
            ("log_min_messages", "warning".into()),
        ];
        settings.extend(opts.settings.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut text = String::new();
        for (name, value) in settings {
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        let path = self.data_dir.join("sluice.conf");
        fs::write(&path, text)?;
        if let Some(ra) = self.run_as {
            std::os::unix::fs::chown(&path, Some(ra.uid), Some(ra.gid))?;
        }
        Ok(())
    }

    /// Start the postmaster on `port` and wait until it answers queries.
    fn launch(&mut self, port: u16, opts: &ClusterOptions) -> Result<(), LaunchError> {
        self.write_settings(port, opts)?;
        self.port = port;

        let mut log = fs::OpenOptions::new().append(true).open(&self.log_path)?;
        let log_start = log.seek(SeekFrom::End(0))?;
        writeln!(
            log,
            "--- sluice pgcluster: starting postgres on port {port} ---"
        )?;
        let log_err = log.try_clone()?;

        let postgres = self.bin_dir.join("postgres");
        let mut cmd = Command::new(&postgres);
        cmd.arg("-D").arg(&self.data_dir);
        self.prepare(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes async-signal-safe syscalls and does
        // not allocate.
        unsafe {
            cmd.pre_exec(move || {
                // Runs after std's setgid/setuid, which would otherwise clear it.
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGQUIT as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = spawn_on_supervisor(cmd)
            .map_err(|e| annotate(e, &format!("starting {}", postgres.display())))?;
        let pid = child.id();
        self.state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .postmaster = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut last_err = String::from("not listening yet");
        loop {
            let exited = {
                let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
                let child = state.postmaster.as_mut().expect("postmaster just started");
                child.try_wait()?
            };
            if let Some(status) = exited {
                self.state
                    .get_mut()
                    .unwrap_or_else(|p| p.into_inner())
                    .postmaster = None;
                let log = self.log_since(log_start);
                let err = io::Error::other(format!(
                    "postgres (pid {pid}) exited during startup ({status}); log:\n{}",
                    tail(&log, 40)
                ));
                return Err(if log.contains("could not bind") {
                    LaunchError::PortTaken(err)
                } else {
                    LaunchError::Other(err)
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.psql(SUPERUSER, "select 1") {
                    Ok(out) if out.trim() == "1" => return Ok(()),
                    Ok(out) => last_err = format!("unexpected answer to select 1: {out:?}"),
                    Err(e) => last_err = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                if let Some(child) = self
                    .state
                    .get_mut()
                    .unwrap_or_else(|p| p.into_inner())
                    .postmaster
                    .take()
                {
                    stop_postmaster(child);
                }
                return Err(LaunchError::Other(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "postgres on port {port} not ready after {READY_TIMEOUT:?} ({last_err}); log:\n{}",
                        tail(&self.log_since(log_start), 40)
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Common setup for initdb and postgres: user, cwd, environment.
    fn prepare(&self, cmd: &mut Command) {
        if let Some(ra) = self.run_as {
            // std sets the gid before the uid and drops root's supplementary
            // groups (setgroups(0)) when a uid is given.
            cmd.gid(ra.gid).uid(ra.uid);
        }
        // The caller's cwd (e.g. /root) may be unreadable for `postgres`.
        cmd.current_dir(&self.root);
        cmd.env("LC_ALL", "C");
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGOPTIONS",
            "PGUSER",
            "PGDATABASE",
        ] {
            cmd.env_remove(var);
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                let _ = f.read_to_end(&mut buf);
                text = String::from_utf8_lossy(&buf).into_owned();
            }
        }
        text
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum LaunchError {
    /// The server could not bind its port (someone else took it).
    PortTaken(io::Error),
    Other(io::Error),
}

impl From<io::Error> for LaunchError {
    fn from(e: io::Error) -> Self {
        LaunchError::Other(e)
    }
}

/// Run psql as `postgres` against 127.0.0.1:`port`.
fn run_psql(bin_dir: &Path, port: u16, database: &str, sql: &str) -> io::Result<String> {
    let local = bin_dir.join("psql");
    let program: PathBuf = if local.exists() {
        local
    } else {
        PathBuf::from("psql")
    };
    let mut cmd = Command::new(&program);
    cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", HOST])
        .arg("-p")
        .arg(port.to_string())
        .args(["-U", SUPERUSER, "-d", database, "-f", "-"])
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "sluice-pgcluster")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "PGOPTIONS",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGTARGETSESSIONATTRS",
        "PGREQUIREAUTH",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| annotate(e, &format!("running {}", program.display())))?;
    // Feed the script from another thread so a large output cannot deadlock us.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let script = sql.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&script);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "psql ({}) failed: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    while stdout.ends_with('\n') {
        stdout.pop();
    }
    Ok(stdout)
}

/// SIGQUIT (immediate shutdown), wait, SIGKILL as a last resort.
fn stop_postmaster(mut child: Child) {
    if let Ok(None) = child.try_wait() {
        // Not yet reaped, so the pid is still ours.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        tracing::warn!(pid = child.id(), "postgres ignored SIGQUIT; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawn `cmd` from the never-exiting supervisor thread (see module docs).
fn spawn_on_supervisor(mut cmd: Command) -> io::Result<Child> {
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let supervisor = SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("pg-supervisor".into())
            .spawn(move || {
                // The sender lives in a static, so this never ends: the thread
                // must outlive every child it forked.
                for job in rx {
                    job();
                }
            })
            .expect("spawning the pg-supervisor thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let job: SpawnJob = Box::new(move || {
        let _ = reply_tx.send(cmd.spawn());
    });
    supervisor
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("pg-supervisor thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("pg-supervisor thread dropped the spawn request"))?
}

/// When root, the uid/gid of the `postgres` user.
fn run_as() -> io::Result<Option<RunAs>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new(SUPERUSER).expect("no NUL");
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "running as root but there is no `postgres` system user to run the server as",
        ));
    }
    Ok(Some(RunAs {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// Base directory for cluster directories: `$SLUICE_PG_TMPDIR` or the system temp dir.
fn temp_base() -> PathBuf {
    std::env::var_os("SLUICE_PG_TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// mkdtemp `<base>/sluice-pg-XXXXXX` and record our pid in it.
fn make_temp_dir() -> io::Result<PathBuf> {
    let mut template = temp_base()
        .join(format!("{DIR_PREFIX}XXXXXX"))
        .into_os_string()
        .into_vec();
    template.push(0);
    let ptr = unsafe { libc::mkdtemp(template.as_mut_ptr() as *mut libc::c_char) };
    if ptr.is_null() {
        return Err(annotate(
            io::Error::last_os_error(),
            "creating a temporary directory",
        ));
    }
    let dir = PathBuf::from(OsString::from_vec(
        CStr::from_bytes_until_nul(&template)
            .expect("mkdtemp keeps the NUL")
            .to_bytes()
            .to_vec(),
    ));
    if let Err(e) = fs::write(dir.join(OWNER_FILE), format!("{}\n", std::process::id())) {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Remove cluster directories left behind by processes that died without
/// cleaning up (e.g. SIGKILL). Best effort.
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(temp_base()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Some(owner) = read_pid(&dir.join(OWNER_FILE)) else {
            continue; // not ours, or still being created
        };
        if pid_alive(owner) {
            continue;
        }
        if read_pid(&dir.join("data/postmaster.pid")).is_some_and(pid_alive) {
            continue;
        }
        tracing::debug!(dir = %dir.display(), owner, "removing stale cluster directory");
        let _ = fs::remove_dir_all(&dir);
    }
}

fn read_pid(path: &Path) -> Option<libc::pid_t> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|&p| p > 0)
}

fn pid_alive(pid: libc::pid_t) -> bool {
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A loopback port nobody listens on right now.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_query_stop() {
        let mut pg = PgCluster::start(ClusterOptions::default()).expect("start cluster");
        assert_eq!(pg.host(), "127.0.0.1");
        assert!(pg.port() > 0);
        assert!(pg.data_dir().join("PG_VERSION").exists());
        assert!(pg.socket_dir().exists());
        assert_eq!(pg.psql("postgres", "select 1").unwrap(), "1");
        pg.psql(
            "postgres",
            "create role r_test login password 'x'; create database d_test owner r_test;",
        )
        .unwrap();
        assert_eq!(
            pg.psql(
                "d_test",
                "select rolname from pg_roles where rolname = 'r_test'"
            )
            .unwrap(),
            "r_test"
        );
        assert!(pg.psql("postgres", "select * from no_such_table").is_err());

        let data_dir = pg.data_dir().to_path_buf();
        let port = pg.port();
        pg.stop();
        pg.stop(); // idempotent
        assert!(!data_dir.exists(), "data dir should be gone");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn options_are_applied() {
        let opts = ClusterOptions {
            max_connections: 42,
            hba: vec!["host all nobody_here 127.0.0.1/32 reject".into()],
            settings: vec![("cluster_name".into(), "it's set".into())],
            ..ClusterOptions::default()
        };
        let pg = PgCluster::start(opts).expect("start cluster");
        assert_eq!(pg.psql("postgres", "show max_connections").unwrap(), "42");
        assert_eq!(
            pg.psql("postgres", "show cluster_name").unwrap(),
            "it's set"
        );
        let hba = fs::read_to_string(pg.data_dir().join("pg_hba.conf")).unwrap();
        assert!(hba.find("nobody_here").unwrap() < hba.find("local all all trust").unwrap());
        let root = pg.root.clone();
        drop(pg);
        assert!(!root.exists());
    }
}
