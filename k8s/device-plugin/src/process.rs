//! What both Kubernetes binaries (the device plugin and the DRA driver) do around their work:
//! logging to stderr, and a single-threaded runtime that runs until SIGTERM or SIGINT.

use std::future::Future;
use tokio::sync::watch;

/// Logs to stderr, colour only on a terminal; `GPUMUX_LOG` sets the filter (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GPUMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs `work` on a current-thread runtime; the receiver it gets turns true on SIGTERM or
/// SIGINT. Fails only if the runtime or the signal handler cannot be set up.
pub fn run_until_signal<T, F: Future<Output = T>>(
    work: impl FnOnce(watch::Receiver<bool>) -> F,
) -> std::io::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            }
            // Fails only when the work already ended (its receiver dropped): nothing to stop.
            tx.send(true).ok();
        });
        Ok(work(rx).await)
    })
}
