//! The `sluice` command line. Everything it runs lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice::config::LogFormat;
use sluice::{Config, Proxy};

#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc (v2), called the way its fast path wants: `mi_malloc` for the alignment every
/// mimalloc block has anyway (8 bytes: its size classes are whole words), `mi_malloc_aligned`
/// only for more. (The mimalloc crate calls the aligned entry point for every allocation,
/// whose checks cost about 20 instructions more each; a transaction makes a few.)
struct Mimalloc;

/// The alignment of every block mimalloc hands out.
const MI_MIN_ALIGN: usize = 8;

// SAFETY: each method forwards to the mimalloc function with the same contract, asking for
// the layout's alignment whenever it exceeds what every mimalloc block has; blocks from
// either entry point are freed and resized by mi_free and mi_realloc*.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MIN_ALIGN {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MIN_ALIGN {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MIN_ALIGN {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A PostgreSQL connection-limiting proxy"
)]
struct Cli {
    /// Config file to run with.
    #[arg(long, default_value = "conf/sluice.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and print the effective settings; with --against, print the
    /// diff from a running config and the guard-rail verdict (exit 1 when refused).
    Check {
        #[arg(long)]
        config: PathBuf,
        /// The config currently in force, to compare with.
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// Start a throwaway PostgreSQL with sluice in front of it.
    Quickstart {
        /// Address for sluice to listen on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_some() {
        init_logging(LogFormat::Text);
    }
    match cli.command {
        Some(Command::Check { config, against }) => match against {
            None => check(&config),
            Some(old) => check_against(&config, &old),
        },
        Some(Command::Quickstart { listen }) => runtime(1).block_on(async {
            match sluice::quickstart::run(&listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice quickstart: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        None => run(&cli.config),
    }
}

/// Logs go to stderr, as text lines or one JSON object per line (`log.format`); `RUST_LOG`
/// sets the level (default `info`).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The runtime: `listen.workers` event-loop threads. One (the default) runs everything on a
/// single thread, as PgBouncer does: no cross-thread wake-ups, which on a busy machine cost
/// more CPU per transaction than a second core gives back (docs/benchmarks.md).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().expect("tokio runtime")
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            print!("{}", config.effective());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// What `RELOAD` would do with NEW while OLD is running: the diff and the guard's verdict.
/// (Removing a database is judged as if it had clients: the check cannot know.)
fn check_against(new: &Path, old: &Path) -> ExitCode {
    let (new, old) = match (Config::load(new), Config::load(old)) {
        (Ok(n), Ok(o)) => (n, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let changes = sluice::config::diff::diff(&old, &new);
    if changes.is_empty() {
        println!("no changes");
    }
    for change in &changes {
        if change.key.starts_with("listen.") {
            println!("{change} (needs a restart: RELOAD keeps the running value)");
        } else {
            println!("{change}");
        }
    }
    let violations = sluice::reload::guard::check(&old, &new, |_| 1);
    if violations.is_empty() {
        println!("verdict: would be applied");
        return ExitCode::SUCCESS;
    }
    for v in &violations {
        println!("refused: {v}");
    }
    println!("verdict: would be refused (RELOAD FORCE would apply it)");
    ExitCode::FAILURE
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(config.log.format);
    runtime(config.listen.workers).block_on(async {
        // Signal handlers first: a SIGHUP or SIGTERM during startup must not kill sluice
        // with the signal's default action.
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        let term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let proxy = match Proxy::start(config).await {
            Ok(proxy) => proxy,
            Err(e) => {
                eprintln!("sluice: cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        spawn_sighup_reload(&proxy, hup);
        // SIGINT, SIGTERM or the admin console's SHUTDOWN.
        let shutdown = proxy.shared().admin.stop.clone();
        tokio::select! {
            _ = wait_for_stop_signal(term) => {}
            _ = shutdown.cancelled() => {}
        }
        tracing::info!("shutting down: no new clients; waiting up to 30s for sessions to end");
        proxy.shutdown(Duration::from_secs(30)).await;
        ExitCode::SUCCESS
    })
}

/// SIGHUP reloads the config files.
fn spawn_sighup_reload(proxy: &Proxy, mut hup: tokio::signal::unix::Signal) {
    let shared = proxy.shared().clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match shared.reloader.reload_from("sighup", false) {
                Ok(outcome) => tracing::info!("SIGHUP: {outcome}"),
                Err(e) => tracing::error!("SIGHUP reload refused: {e}"),
            }
        }
    });
}

async fn wait_for_stop_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
