//! An in-process fake of GitHub's REST API on 127.0.0.1:0: the Git data API, pull requests,
//! comments and App installation tokens, over an in-memory repository, answering with GitHub's
//! JSON shapes, status codes and error bodies. It records every request so tests can assert
//! what the client sent, and can be scripted to fail a given call.

mod git_data;
mod json;
mod pulls;
pub mod repo;
mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State as AxumState};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

pub use repo::Repo;

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The GitHub App the fake recognises: JWTs must be RS256, signed by the key whose public half
/// this is, with `iss` = `app_id`.
#[derive(Clone)]
pub struct FakeApp {
    pub app_id: u64,
    pub installation_id: u64,
    pub public_key_pem: String,
    /// How long minted installation tokens live (GitHub: one hour).
    pub token_ttl: Duration,
}

/// A canned answer for the next `times` requests matching `method`, `path` exactly and, when
/// set, an `Accept` header containing `accept`.
pub struct Scripted {
    pub method: Method,
    pub path: String,
    pub accept: Option<String>,
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
    pub times: usize,
}

impl Scripted {
    pub fn new(method: Method, path: &str, status: u16, body: Value) -> Scripted {
        Scripted { method, path: path.into(), accept: None, status, body, headers: Vec::new(), times: 1 }
    }

    fn matches(&self, request: &Recorded) -> bool {
        self.times > 0
            && self.method == request.method
            && self.path == request.path
            && self.accept.as_deref().is_none_or(|a| request.header("accept").is_some_and(|h| h.contains(a)))
    }
}

pub struct State {
    pub owner: String,
    pub repo_name: String,
    /// The personal access token the fake accepts, if any.
    pub token: Option<String>,
    pub app: Option<FakeApp>,
    /// Installation tokens minted: `(token, expires_at)`.
    pub minted: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    pub requests: Vec<Recorded>,
    scripted: Vec<Scripted>,
    pub repo: Repo,
    /// Answer tree listings with `truncated: true`, as GitHub does for huge trees.
    pub truncate_trees: bool,
}

pub struct FakeGitHub {
    /// `http://127.0.0.1:<port>`, the client's `api_url`.
    pub url: String,
    shared: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeGitHub {
    /// Serves `owner/repo`, accepting `token` and/or installation tokens of `app`.
    pub async fn start(owner: &str, repo: &str, token: Option<&str>, app: Option<FakeApp>) -> FakeGitHub {
        let shared = Arc::new(Mutex::new(State {
            owner: owner.into(),
            repo_name: repo.into(),
            token: token.map(str::to_owned),
            app,
            minted: Vec::new(),
            requests: Vec::new(),
            scripted: Vec::new(),
            repo: Repo::default(),
            truncate_trees: false,
        }));
        let router = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeGitHub { url, shared, _stop: stop }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// `(method, path)` of every request to the repository, in order, for sequence assertions.
    pub fn calls(&self) -> Vec<String> {
        let state = self.state();
        let prefix = format!("/repos/{}/{}/", state.owner, state.repo_name);
        state
            .requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.path.strip_prefix(&prefix).unwrap_or(&r.path)))
            .collect()
    }

    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// The next `times` requests `method path` get `status` with `body` instead of an answer.
    pub fn script(&self, method: Method, path: &str, status: u16, body: Value, times: usize) {
        self.script_with(Scripted { times, ..Scripted::new(method, path, status, body) });
    }

    pub fn script_with(&self, scripted: Scripted) {
        self.state().scripted.push(scripted);
    }

    pub fn mints(&self) -> usize {
        self.state().minted.len()
    }
}

async fn handle(AxumState(shared): AxumState<Arc<Mutex<State>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.map(|b| b.to_vec()).unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
    };
    let mut state = shared.lock().unwrap();
    state.requests.push(recorded.clone());
    let reply = if let Some(scripted) = state.scripted.iter_mut().find(|s| s.matches(&recorded)) {
        scripted.times -= 1;
        let mut reply = routes::Reply::json(scripted.status, scripted.body.clone());
        reply.headers = scripted.headers.clone();
        reply
    } else {
        routes::route(&mut state, &recorded)
    };
    drop(state);
    into_response(reply)
}

fn into_response(reply: routes::Reply) -> Response {
    let (content_type, body) = match reply.body {
        routes::Body::Json(value) => ("application/json; charset=utf-8", Body::from(value.to_string())),
        routes::Body::Text(text) => ("application/vnd.github.diff; charset=utf-8", Body::from(text)),
        routes::Body::Empty => ("application/json; charset=utf-8", Body::empty()),
    };
    let mut headers: HashMap<&str, String> = [
        ("content-type", content_type.to_owned()),
        ("x-github-request-id", "CAFE:0001:0002".to_owned()),
        ("x-ratelimit-limit", "5000".to_owned()),
        ("x-ratelimit-remaining", "4999".to_owned()),
    ]
    .into_iter()
    .collect();
    headers.extend(reply.headers);
    let mut builder = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.body(body).unwrap()
}
