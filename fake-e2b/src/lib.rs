//! `fake_e2b`: a faithful in-process fake of E2B for tests and benchmarks.
//!
//! Two plain-HTTP/1.1 servers on `127.0.0.1`: the control plane (`api_url()`, what
//! `E2B_API_URL` points at) and envd (`envd_url()`, what `SANDBOX_E2B_ENVD_URL` points at; requests
//! name their sandbox with `E2b-Sandbox-Id` and `E2b-Sandbox-Port: 49983`, or with a
//! `49983-<id>.<domain>` Host). Both speak E2B's wire format as documented in
//! `shared/reference/e2b-api.md`: JSON shapes and error texts of the REST API, Connect framing and
//! protojson of envd. Processes really run, as local child processes in their own process groups,
//! with a per-sandbox temporary directory standing in for the sandbox's `/`.
//!
//! Used by the broker's `e2b` provider tests and the benchmarks; tests drive it through the
//! accessors below (recorded requests, injected failures, cut streams, limits).

// Handlers bail out early with the finished HTTP response as their `Err`; those are cold paths
// of a test server, so boxing every one of them would only add noise.
#![allow(clippy::result_large_err)]

mod builds;
mod connect;
mod control;
mod envd;
mod files;
mod filesystem;
mod process_stream;
mod processes;
mod record;
mod sandboxes;
mod state;
mod templates;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;

use crate::state::{InjectedFailure, MAX_BODY_BYTES, SandboxState, Shared, lock};

pub use crate::builds::FAIL_MARKER;

/// The port envd listens on inside a sandbox, sent as `E2b-Sandbox-Port`.
pub const ENVD_PORT: u16 = 49983;

/// A control-plane rate limit: at most `requests` per fixed `window`, else 429 with
/// `Retry-After` and `RateLimit-*` headers. E2B's real limit (20,000 / 30 s) is never hit in tests.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The only accepted `X-API-Key`.
    pub api_key: String,
    /// Running sandboxes allowed at once (Hobby: 20); paused ones do not count.
    pub concurrency_limit: usize,
    /// How long a process's exit stays visible to `Connect`/`List` after it ends.
    pub exit_code_retention: Duration,
    /// `envdVersion` reported for every sandbox and template.
    pub envd_version: String,
    /// The plan's maximum continuous runtime (Hobby: 1 h).
    pub max_instance_length: Duration,
    /// Pause between simulated build log lines.
    pub build_step_delay: Duration,
    pub rate_limit: Option<RateLimit>,
    /// Templates that exist from the start, each with a ready build tagged `default`.
    pub templates: Vec<String>,
}

impl Default for FakeOptions {
    fn default() -> FakeOptions {
        FakeOptions {
            api_key: format!("e2b_{}", state::random_hex(40)),
            concurrency_limit: 20,
            exit_code_retention: Duration::from_secs(5),
            envd_version: "0.6.13".to_string(),
            max_instance_length: Duration::from_secs(3600),
            build_step_delay: Duration::from_millis(20),
            rate_limit: None,
            templates: vec!["base".to_string()],
        }
    }
}

/// One request as either server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// The running fake. Dropping it stops both servers and kills every child process group.
pub struct FakeE2b {
    shared: Arc<Shared>,
    api_addr: SocketAddr,
    envd_addr: SocketAddr,
}

impl FakeE2b {
    pub async fn start() -> FakeE2b {
        FakeE2b::start_with(FakeOptions::default()).await
    }

    pub async fn start_with(options: FakeOptions) -> FakeE2b {
        let api_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake control plane");
        let envd_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake envd");
        let api_addr = api_listener.local_addr().expect("control plane address");
        let envd_addr = envd_listener.local_addr().expect("envd address");
        let shared = Arc::new(Shared::new(&options, format!("http://{api_addr}")));
        serve(api_listener, control::router(shared.clone()), &shared);
        serve(envd_listener, envd::router(shared.clone()), &shared);
        tokio::spawn(state::run_evictor(shared.clone()));
        FakeE2b { shared, api_addr, envd_addr }
    }

    /// Control-plane base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// envd base URL; requests must carry `E2b-Sandbox-Id` and `E2b-Sandbox-Port: 49983`.
    pub fn envd_url(&self) -> String {
        format!("http://{}", self.envd_addr)
    }

    pub fn api_key(&self) -> String {
        self.shared.api_key.clone()
    }

    /// Every request to either server, in arrival order (the newest 10,000).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.recorded).iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.recorded).clear();
    }

    /// Ids of the running (not paused) sandboxes, oldest first.
    pub fn sandbox_ids(&self) -> Vec<String> {
        let sandboxes = lock(&self.shared.sandboxes);
        let mut running: Vec<_> = sandboxes.values().filter(|sandbox| sandbox.state == SandboxState::Running).collect();
        running.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        running.into_iter().map(|sandbox| sandbox.id.clone()).collect()
    }

    /// Host directory standing in for the sandbox's `/` (its home is `<root>/home/user`).
    pub fn sandbox_root(&self, sandbox_id: &str) -> Option<PathBuf> {
        lock(&self.shared.sandboxes).get(sandbox_id).map(|sandbox| sandbox.fs.root().to_path_buf())
    }

    /// The next request whose method matches and whose path starts with `path_prefix` (either
    /// server) gets this response instead of the real one; once. Several queue up in order.
    pub fn fail_next(
        &self,
        method: &str,
        path_prefix: &str,
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    ) {
        lock(&self.shared.failures).push(InjectedFailure {
            method: method.to_string(),
            path_prefix: path_prefix.to_string(),
            status,
            headers,
            body,
        });
    }

    /// The next `Start` or `Connect` stream ends after `events` data frames: the body stops
    /// without an end event or end-of-stream frame and the connection closes. The process runs on.
    pub fn cut_process_streams_after(&self, events: usize) {
        *lock(&self.shared.cut_after) = Some(events);
    }

    /// Total time spent inside `POST /sandboxes` handlers.
    pub fn handler_time(&self) -> Duration {
        Duration::from_nanos(self.shared.handler_nanos.load(Ordering::Relaxed))
    }

    pub fn set_concurrency_limit(&self, limit: usize) {
        self.shared.concurrency_limit.store(limit, Ordering::Relaxed);
    }
}

impl Drop for FakeE2b {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.kill_everything();
    }
}

fn serve(listener: TcpListener, router: Router, shared: &Arc<Shared>) {
    let router = router
        .layer(axum::middleware::from_fn_with_state(shared.clone(), record::record_and_inject))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fake_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::FakeE2b>();
        shareable::<super::Recorded>();
    }
}
