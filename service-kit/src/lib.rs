//! What the broker and the conductor share and nothing else: secrets that never print, the
//! bearer-token check, telemetry setup and the shutdown signal. Kept small on purpose — the
//! conductor must not link the broker's provider code to get these.

pub mod auth;
pub mod dir_lock;
pub mod secret;
pub mod telemetry;

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes and Railway send).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
