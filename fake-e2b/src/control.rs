//! The fake control plane (`api.e2b.app`): `X-API-Key` auth, the optional rate limiter, sandbox
//! lifecycle endpoints with E2B's JSON shapes and error texts, and the template routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::sandboxes;
use crate::state::{InsertError, NewSandboxSpec, Sandbox, Shared, concurrency_message, lock, parse_form, rfc3339};
use crate::{builds, templates};

/// E2B's error body: `{"code": <status>, "message": "..."}`.
pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"code": status.as_u16(), "message": message.into()}))).into_response()
}

/// Parses a JSON body (an empty body reads as `{}`), answering 400 as E2B's API does.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body)
        .map_err(|error| api_error(StatusCode::BAD_REQUEST, format!("Error when parsing request: {error}")))
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let authed = Router::new()
        .route("/sandboxes", post(create_sandbox).get(sandboxes::list_running))
        .route("/v2/sandboxes", get(sandboxes::list_v2))
        .route("/sandboxes/{id}", get(sandboxes::get_sandbox).delete(sandboxes::kill))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/v3/templates", post(builds::request_build))
        .route("/templates/{template_id}/files/{hash}", get(builds::file_upload_link))
        .route("/v2/templates/{template_id}/builds/{build_id}", post(builds::start_build))
        .route("/templates/{template_id}/builds/{build_id}/status", get(builds::build_status))
        .route("/templates/{template_id}", get(templates::get_template).delete(templates::delete_template))
        .route("/templates/{template_id}/tags", get(templates::list_tags))
        .route("/templates/aliases/{alias}", get(templates::get_alias))
        .route("/templates/tags", post(templates::assign_tags).delete(templates::delete_tags))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_api_key));
    Router::new()
        .route("/health", get(|| async { (StatusCode::OK, "Health check successful") }))
        // The presigned upload URL is authorised by its (fake) signature, not the API key.
        .route("/_upload/{template_id}/{hash}", put(builds::upload_layer))
        .merge(authed)
        .layer(middleware::from_fn_with_state(shared.clone(), rate_limit))
        .with_state(shared)
}

const API_KEY_HELP: &str = "Invalid API key, please visit https://e2b.dev/docs/api-key for more information.";

async fn require_api_key(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let key = request.headers().get("x-api-key").and_then(|value| value.to_str().ok());
    let problem = match key {
        None => Some("authorization header is missing".to_string()),
        Some(key) if key == shared.api_key => None,
        Some(key) if !is_api_key_shaped(key) => Some(format!("{API_KEY_HELP}\nInvalid API key format")),
        Some(_) => Some(format!("{API_KEY_HELP}\nCannot get the team for the given API key")),
    };
    match problem {
        Some(message) => api_error(StatusCode::UNAUTHORIZED, message),
        None => next.run(request).await,
    }
}

fn is_api_key_shaped(key: &str) -> bool {
    key.strip_prefix("e2b_").is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

/// A fixed-window limiter answering 429 with E2B's rate-limit headers; off unless configured.
async fn rate_limit(State(shared): State<Arc<Shared>>, request: Request<Body>, next: Next) -> Response {
    let Some(limit) = shared.rate_limit else {
        return next.run(request).await;
    };
    let refused = {
        let mut window = lock(&shared.rate_window);
        if window.0.elapsed() >= limit.window {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        (window.1 > limit.requests).then(|| limit.window.saturating_sub(window.0.elapsed()))
    };
    match refused {
        Some(reset) => {
            let seconds = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
            let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
            let headers = response.headers_mut();
            for (name, value) in [
                ("retry-after", seconds.to_string()),
                ("ratelimit-limit", limit.requests.to_string()),
                ("ratelimit-remaining", "0".to_string()),
                ("ratelimit-reset", seconds.to_string()),
            ] {
                headers.insert(name, HeaderValue::from_str(&value).expect("digits are a valid header value"));
            }
            response
        }
        None => next.run(request).await,
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    auto_pause: Option<bool>,
    auto_resume: Option<AutoResume>,
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AutoResume {
    enabled: bool,
}

/// Server default when `timeout` is omitted (SDKs always send 300).
const DEFAULT_TIMEOUT_SECONDS: i64 = 15;

/// Checks a requested lifetime in seconds against E2B's rules.
pub(crate) fn validate_timeout(shared: &Shared, seconds: i64) -> Result<Duration, Response> {
    if seconds <= 0 {
        return Err(api_error(StatusCode::BAD_REQUEST, "Timeout must be greater than 0"));
    }
    let timeout = Duration::from_secs(seconds.unsigned_abs());
    if timeout > shared.max_instance_length {
        let hours = shared.max_instance_length.as_secs().div_ceil(3600);
        return Err(api_error(StatusCode::BAD_REQUEST, format!("Timeout cannot be greater than {hours} hours")));
    }
    Ok(timeout)
}

async fn create_sandbox(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = create(&shared, &body);
    shared.add_handler_time(started.elapsed());
    response
}

fn create(shared: &Shared, body: &[u8]) -> Response {
    let request: NewSandbox = match parse_body(body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let Some(reference) = request.template_id else {
        let message = "request body has an error: doesn't match schema: property \"templateID\" is missing";
        return api_error(StatusCode::BAD_REQUEST, message);
    };
    let timeout = match validate_timeout(shared, request.timeout.unwrap_or(DEFAULT_TIMEOUT_SECONDS)) {
        Ok(timeout) => timeout,
        Err(response) => return response,
    };
    let (template_id, alias, cpu_count, memory_mb) = match lock(&shared.registry).resolve_for_spawn(&reference) {
        Ok(resolved) => resolved,
        Err(response) => return response,
    };
    let spec = NewSandboxSpec {
        template_id,
        alias,
        timeout,
        secure: request.secure.unwrap_or(false),
        auto_pause: request.auto_pause.unwrap_or(false),
        auto_resume: request.auto_resume.is_some_and(|auto_resume| auto_resume.enabled),
        metadata: request.metadata,
        env_vars: request.env_vars.unwrap_or_default(),
        allow_internet_access: request.allow_internet_access,
        cpu_count,
        memory_mb,
    };
    let id = match shared.insert_sandbox(spec) {
        Ok(id) => id,
        Err(InsertError::OverLimit(limit)) => {
            return api_error(StatusCode::TOO_MANY_REQUESTS, concurrency_message(limit));
        }
        Err(InsertError::Io(error)) => {
            return api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to place sandbox: {error}"));
        }
    };
    let body = lock(&shared.sandboxes).get(&id).map(|sandbox| sandbox_json(shared, sandbox));
    match body {
        Some(body) => (StatusCode::CREATED, Json(body)).into_response(),
        // Killed (e.g. expired) between insert and answer: the caller sees it gone.
        None => sandboxes::not_found(&id),
    }
}

/// `Sandbox`, the create/connect/resume answer; absent optional fields are left out.
pub(crate) fn sandbox_json(shared: &Shared, sandbox: &Sandbox) -> Value {
    let mut body = Map::new();
    body.insert("templateID".into(), json!(sandbox.template_id));
    body.insert("sandboxID".into(), json!(sandbox.id));
    if let Some(alias) = &sandbox.alias {
        body.insert("alias".into(), json!(alias));
    }
    body.insert("clientID".into(), json!(sandbox.client_id));
    body.insert("envdVersion".into(), json!(shared.envd_version));
    if let Some(token) = &sandbox.envd_access_token {
        body.insert("envdAccessToken".into(), json!(token));
    }
    Value::Object(body)
}

/// `ListedSandbox`; `detail` adds the fields `GET /sandboxes/{id}` returns (`SandboxDetail`).
pub(crate) fn listed_json(shared: &Shared, sandbox: &Sandbox, detail: bool) -> Value {
    let mut body = Map::new();
    body.insert("templateID".into(), json!(sandbox.template_id));
    if let Some(alias) = &sandbox.alias {
        body.insert("alias".into(), json!(alias));
    }
    body.insert("sandboxID".into(), json!(sandbox.id));
    body.insert("clientID".into(), json!(sandbox.client_id));
    body.insert("startedAt".into(), json!(rfc3339(sandbox.started_at)));
    body.insert("endAt".into(), json!(rfc3339(sandbox.end_at)));
    body.insert("cpuCount".into(), json!(sandbox.cpu_count));
    body.insert("memoryMB".into(), json!(sandbox.memory_mb));
    body.insert("diskSizeMB".into(), json!(sandbox.disk_size_mb));
    if let Some(metadata) = &sandbox.metadata {
        body.insert("metadata".into(), json!(metadata));
    }
    body.insert("state".into(), json!(sandbox.state.as_str()));
    body.insert("envdVersion".into(), json!(shared.envd_version));
    if detail {
        if let Some(token) = &sandbox.envd_access_token {
            body.insert("envdAccessToken".into(), json!(token));
        }
        if let Some(allow) = sandbox.allow_internet_access {
            body.insert("allowInternetAccess".into(), json!(allow));
        }
        let on_timeout = if sandbox.auto_pause { "pause" } else { "kill" };
        body.insert("lifecycle".into(), json!({"autoResume": sandbox.auto_resume, "onTimeout": on_timeout}));
    }
    Value::Object(body)
}

/// The `metadata` list filter: an encoded `k=v&k2=v2` string whose pairs must all match.
pub(crate) fn metadata_filter(query: &[(String, String)]) -> Vec<(String, String)> {
    query.iter().filter(|(key, _)| key == "metadata").flat_map(|(_, value)| parse_form(value)).collect()
}

pub(crate) fn matches_metadata(sandbox: &Sandbox, filter: &[(String, String)]) -> bool {
    filter.iter().all(|(key, value)| {
        sandbox.metadata.as_ref().and_then(|metadata| metadata.get(key)).is_some_and(|found| found == value)
    })
}

pub(crate) fn query_pairs(raw: &RawQuery) -> Vec<(String, String)> {
    raw.0.as_deref().map(parse_form).unwrap_or_default()
}
