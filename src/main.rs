//! Wiring only: parse the command line (the command sets up logging), turn SIGTERM/SIGINT
//! into a cancellation (a second signal exits at once), run the command.

use std::process::ExitCode;

use clap::Parser;
use octopods_worker::cli;
use tokio_util::sync::CancellationToken;

/// jemalloc: glibc's malloc/free were a quarter of the worker's CPU at full
/// speed (docs/performance.md); jemalloc's thread caches cut that without a
/// change per allocation, and keep peak RSS lower than mimalloc's defaults.
/// `--features system-allocator` builds with the system's malloc instead, for
/// tools that only see glibc's (heaptrack counts and attributes allocations
/// per call stack; docs/performance.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one arena (its default is four per
/// core, each keeping pages of its own) and freed pages handed back within a
/// second — 4 MiB less peak RSS at full speed, the same CPU per job
/// (docs/performance.md). `_RJEM_MALLOC_CONF` in the environment still
/// overrides each option.
#[cfg(not(feature = "system-allocator"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a NUL-terminated static string,
    // which is what jemalloc reads (a C `const char *`).
    Some(unsafe { &*c"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() });

fn main() -> ExitCode {
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = cli::Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(shutdown.clone()));
    match cli::run(cli, shutdown).await {
        Ok(code) => code,
        // `… | head`: the reader left, as with any Unix tool that is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: shutting down (again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now; unfinished jobs will be redelivered");
    std::process::exit(130);
}
