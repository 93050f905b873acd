//! Sandbox lifecycle handlers other than create: get, list (v1 and v2), kill, timeout,
//! refresh, pause, connect and resume.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use crate::control::{
    api_error, listed_json, matches_metadata, metadata_filter, parse_body, query_pairs, sandbox_json, validate_timeout,
};
use crate::state::{Sandbox, SandboxState, Shared, concurrency_message, lock, running_in};

pub(crate) fn not_found(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, format!("Sandbox \"{id}\" doesn't exist or you don't have access to it"))
}

pub(crate) async fn get_sandbox(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&shared.sandboxes).get(&id) {
        Some(sandbox) => Json(listed_json(&shared, sandbox, true)).into_response(),
        None => not_found(&id),
    }
}

pub(crate) async fn kill(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if shared.kill_sandbox(&id) { StatusCode::NO_CONTENT.into_response() } else { not_found(&id) }
}

/// Sorted newest first (E2B's default), ties broken by id so pages are stable.
fn sorted<'a>(sandboxes: impl Iterator<Item = &'a Sandbox>, ascending: bool) -> Vec<&'a Sandbox> {
    let mut sorted: Vec<&Sandbox> = sandboxes.collect();
    sorted.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.id.cmp(&b.id)));
    if ascending {
        sorted.reverse();
    }
    sorted
}

/// Deprecated `GET /sandboxes`: running sandboxes only, optional metadata filter, no paging.
pub(crate) async fn list_running(State(shared): State<Arc<Shared>>, raw: RawQuery) -> Response {
    let filter = metadata_filter(&query_pairs(&raw));
    let sandboxes = lock(&shared.sandboxes);
    let listed: Vec<Value> = sorted(sandboxes.values(), false)
        .into_iter()
        .filter(|sandbox| sandbox.state == SandboxState::Running && matches_metadata(sandbox, &filter))
        .map(|sandbox| listed_json(&shared, sandbox, false))
        .collect();
    Json(listed).into_response()
}

fn cursor_of(sandbox: &Sandbox) -> String {
    let nanos = sandbox.started_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    URL_SAFE_NO_PAD.encode(format!("{nanos}:{}", sandbox.id))
}

/// `GET /v2/sandboxes?metadata&state&order&limit&nextToken`, paged via `X-Next-Token`.
pub(crate) async fn list_v2(State(shared): State<Arc<Shared>>, raw: RawQuery) -> Response {
    let query = query_pairs(&raw);
    let filter = metadata_filter(&query);
    let value = |key: &str| query.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str());
    let states: Vec<&str> = query
        .iter()
        .filter(|(key, _)| key == "state")
        .flat_map(|(_, value)| value.split(','))
        .filter(|state| !state.is_empty())
        .collect();
    if let Some(bad) = states.iter().find(|state| !matches!(**state, "running" | "paused")) {
        let message = format!(
            "parameter \"state\" in query has an error: value is not one of the allowed values [\"running\",\"paused\"]: {bad}"
        );
        return api_error(StatusCode::BAD_REQUEST, message);
    }
    let limit = match value("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
        Some(_) => {
            let message = "parameter \"limit\" in query has an error: number must be between 1 and 100";
            return api_error(StatusCode::BAD_REQUEST, message);
        }
    };
    let ascending = value("order") == Some("asc");
    let sandboxes = lock(&shared.sandboxes);
    let candidates: Vec<&Sandbox> = sorted(sandboxes.values(), ascending)
        .into_iter()
        .filter(|sandbox| states.is_empty() || states.contains(&sandbox.state.as_str()))
        .filter(|sandbox| matches_metadata(sandbox, &filter))
        .collect();
    let start = match value("nextToken") {
        None => 0,
        Some(token) => match candidates.iter().position(|sandbox| cursor_of(sandbox) == token) {
            Some(position) => position,
            None => return api_error(StatusCode::BAD_REQUEST, "Invalid next token"),
        },
    };
    let page: Vec<Value> =
        candidates.iter().skip(start).take(limit).map(|sandbox| listed_json(&shared, sandbox, false)).collect();
    let running = sandboxes.values().filter(|sandbox| sandbox.state == SandboxState::Running).count();
    let mut response = Json(page).into_response();
    let headers = response.headers_mut();
    headers.insert("x-total-running", HeaderValue::from(running));
    if let Some(next) = candidates.get(start + limit) {
        headers
            .insert("x-next-token", HeaderValue::from_str(&cursor_of(next)).expect("base64 is a valid header value"));
    }
    response
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TimeoutBody {
    timeout: Option<i64>,
    duration: Option<i64>,
    #[serde(rename = "autoPause")]
    auto_pause: Option<bool>,
}

/// The end time for `now + wanted`, capped at the continuous-runtime limit; `Err` past it.
fn capped_end(shared: &Shared, sandbox: &Sandbox, wanted: Duration) -> Result<SystemTime, Response> {
    let now = SystemTime::now();
    let limit = sandbox.window_start + shared.max_instance_length;
    if now >= limit {
        return Err(api_error(StatusCode::BAD_REQUEST, "Max instance length exceeded"));
    }
    Ok((now + wanted).min(limit))
}

fn with_running<F>(shared: &Shared, id: &str, body: &[u8], change: F) -> Response
where
    F: FnOnce(&Shared, &mut Sandbox, TimeoutBody) -> Result<Response, Response>,
{
    let request: TimeoutBody = match parse_body(body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let mut sandboxes = lock(&shared.sandboxes);
    let Some(sandbox) = sandboxes.get_mut(id) else {
        return not_found(id);
    };
    if sandbox.state != SandboxState::Running {
        return api_error(StatusCode::CONFLICT, format!("Sandbox \"{id}\" is paused"));
    }
    let response = change(shared, sandbox, request).unwrap_or_else(|response| response);
    shared.evictor_wakeup.notify_one();
    response
}

/// `POST /sandboxes/{id}/timeout`: the sandbox now ends `timeout` seconds from now (may shorten).
pub(crate) async fn set_timeout(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    with_running(&shared, &id, &body, |shared, sandbox, request| {
        let Some(seconds) = request.timeout else {
            let message = "request body has an error: doesn't match schema: property \"timeout\" is missing";
            return Err(api_error(StatusCode::BAD_REQUEST, message));
        };
        if seconds <= 0 {
            return Err(api_error(StatusCode::BAD_REQUEST, "Timeout must be greater than 0"));
        }
        sandbox.end_at = capped_end(shared, sandbox, Duration::from_secs(seconds.unsigned_abs()))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

/// `POST /sandboxes/{id}/refreshes`: legacy keep-alive that only ever extends.
pub(crate) async fn refresh(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    with_running(&shared, &id, &body, |shared, sandbox, request| {
        let seconds = request.duration.unwrap_or(0).clamp(0, 3600).unsigned_abs();
        let end = capped_end(shared, sandbox, Duration::from_secs(seconds))?;
        sandbox.end_at = sandbox.end_at.max(end);
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

pub(crate) async fn pause(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut sandboxes = lock(&shared.sandboxes);
    let Some(sandbox) = sandboxes.get_mut(&id) else {
        return not_found(&id);
    };
    if sandbox.state == SandboxState::Paused {
        return api_error(StatusCode::CONFLICT, format!("Sandbox '{id}' cannot be paused while in 'paused' state"));
    }
    Shared::pause_locked(sandbox);
    StatusCode::NO_CONTENT.into_response()
}

fn over_limit(shared: &Shared, sandboxes: &std::collections::HashMap<String, Sandbox>) -> Option<Response> {
    let limit = shared.concurrency_limit.load(std::sync::atomic::Ordering::Relaxed);
    (running_in(sandboxes) >= limit).then(|| api_error(StatusCode::TOO_MANY_REQUESTS, concurrency_message(limit)))
}

/// `POST /sandboxes/{id}/connect`: 200 when running (TTL only extended), 201 when it resumed it.
pub(crate) async fn connect(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: TimeoutBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let Some(seconds) = request.timeout else {
        let message = "request body has an error: doesn't match schema: property \"timeout\" is missing";
        return api_error(StatusCode::BAD_REQUEST, message);
    };
    let timeout = match validate_timeout(&shared, seconds) {
        Ok(timeout) => timeout,
        Err(response) => return response,
    };
    let mut sandboxes = lock(&shared.sandboxes);
    let limited = over_limit(&shared, &sandboxes);
    let Some(sandbox) = sandboxes.get_mut(&id) else {
        return not_found(&id);
    };
    let status = match sandbox.state {
        SandboxState::Running => {
            match capped_end(&shared, sandbox, timeout) {
                Ok(end) => sandbox.end_at = sandbox.end_at.max(end),
                Err(response) => return response,
            }
            StatusCode::OK
        }
        SandboxState::Paused => {
            if let Some(response) = limited {
                return response;
            }
            shared.resume_locked(sandbox, timeout);
            StatusCode::CREATED
        }
    };
    shared.evictor_wakeup.notify_one();
    (status, Json(sandbox_json(&shared, sandbox))).into_response()
}

/// Deprecated `POST /sandboxes/{id}/resume`: 201 for a paused sandbox, 409 when it runs.
pub(crate) async fn resume(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: TimeoutBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let timeout = match validate_timeout(&shared, request.timeout.unwrap_or(15)) {
        Ok(timeout) => timeout,
        Err(response) => return response,
    };
    let mut sandboxes = lock(&shared.sandboxes);
    let limited = over_limit(&shared, &sandboxes);
    let Some(sandbox) = sandboxes.get_mut(&id) else {
        return not_found(&id);
    };
    if sandbox.state == SandboxState::Running {
        return api_error(StatusCode::CONFLICT, format!("Sandbox {id} is already running"));
    }
    if let Some(response) = limited {
        return response;
    }
    if let Some(auto_pause) = request.auto_pause {
        sandbox.auto_pause = auto_pause;
    }
    shared.resume_locked(sandbox, timeout);
    (StatusCode::CREATED, Json(sandbox_json(&shared, sandbox))).into_response()
}
