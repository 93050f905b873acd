//! The fake envd: routes a request to its sandbox (by `E2b-Sandbox-Id`/`E2b-Sandbox-Port` or by
//! a `49983-<id>.<domain>` host), enforces the access token, and serves `process.Process`
//! (`filesystem.Filesystem` and `/files` live in their own modules).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::connect::{self, Code, ConnectError};
use crate::processes::{Process, Processes};
use crate::state::{SandboxFs, SandboxState, Shared, lock};
use crate::{files, filesystem, process_stream};

pub(crate) const ENVD_PORT: &str = "49983";

/// What a request to envd needs of its sandbox, copied out so no lock is held while serving.
pub(crate) struct EnvdSandbox {
    pub id: String,
    pub access_token: Option<String>,
    pub fs: Arc<SandboxFs>,
    pub processes: Arc<Processes>,
    pub env_vars: BTreeMap<String, String>,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(files::read_file).post(files::write_files))
        .route("/process.Process/Start", post(process_stream::start))
        .route("/process.Process/Connect", post(process_stream::connect))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/Update", post(unimplemented))
        .route("/process.Process/StreamInput", post(unimplemented))
        .route("/filesystem.Filesystem/Stat", post(filesystem::stat))
        .route("/filesystem.Filesystem/MakeDir", post(filesystem::make_dir))
        .route("/filesystem.Filesystem/Move", post(filesystem::move_entry))
        .route("/filesystem.Filesystem/ListDir", post(filesystem::list_dir))
        .route("/filesystem.Filesystem/Remove", post(filesystem::remove))
        .route("/filesystem.Filesystem/WatchDir", post(unimplemented))
        .route("/filesystem.Filesystem/CreateWatcher", post(unimplemented))
        .route("/filesystem.Filesystem/GetWatcherEvents", post(unimplemented))
        .route("/filesystem.Filesystem/RemoveWatcher", post(unimplemented))
        .with_state(shared)
}

fn edge_error(sandbox_id: &str, message: &str) -> Response {
    let body = json!({"sandboxId": sandbox_id, "message": message, "code": 502});
    (StatusCode::BAD_GATEWAY, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The sandbox a request is for, as E2B's edge proxy finds it; paused sandboxes resume when
/// they were created with `autoResume`, otherwise they look gone (502), like a dead one.
pub(crate) fn resolve(shared: &Shared, headers: &HeaderMap) -> Result<EnvdSandbox, Response> {
    let (id, port) = match header_str(headers, "e2b-sandbox-id") {
        Some(id) => (id.to_string(), header_str(headers, "e2b-sandbox-port").unwrap_or(ENVD_PORT).to_string()),
        None => {
            let host = header_str(headers, "host").unwrap_or("");
            let label = host.split('.').next().unwrap_or("");
            match label.split_once('-') {
                Some((port, rest)) => (rest.split('-').next().unwrap_or("").to_string(), port.to_string()),
                None => (String::new(), String::new()),
            }
        }
    };
    let mut sandboxes = lock(&shared.sandboxes);
    let Some(sandbox) = sandboxes.get_mut(&id) else {
        return Err(edge_error(&id, "The sandbox was not found"));
    };
    if sandbox.state == SandboxState::Paused {
        if !sandbox.auto_resume {
            return Err(edge_error(&id, "The sandbox was not found"));
        }
        let timeout = sandbox.end_at.duration_since(sandbox.window_start).unwrap_or_default();
        shared.resume_locked(sandbox, timeout);
    }
    if port != ENVD_PORT {
        return Err(edge_error(&id, "The sandbox is running but port is not open"));
    }
    Ok(EnvdSandbox {
        id,
        access_token: sandbox.envd_access_token.clone(),
        fs: sandbox.fs.clone(),
        processes: sandbox.processes.clone(),
        env_vars: sandbox.env_vars.clone(),
    })
}

pub(crate) const UNAUTHORIZED_MESSAGE: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

/// envd's 401 for a secured sandbox: an integer `code`, not a Connect error.
pub(crate) fn envd_http_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"code": status.as_u16(), "message": message});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Resolves the sandbox and checks `X-Access-Token` when it is secured.
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<EnvdSandbox, Response> {
    let sandbox = resolve(shared, headers)?;
    if let Some(token) = &sandbox.access_token
        && header_str(headers, "x-access-token") != Some(token.as_str())
    {
        return Err(envd_http_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED_MESSAGE));
    }
    Ok(sandbox)
}

/// The Linux user from `Authorization: Basic base64("<user>:")`; the template default otherwise.
pub(crate) fn username(headers: &HeaderMap) -> Result<String, ConnectError> {
    let Some(value) = header_str(headers, "authorization") else {
        return Ok("user".to_string());
    };
    let decoded = value
        .strip_prefix("Basic ")
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ConnectError::new(Code::Unauthenticated, "invalid authorization header"))?;
    let user = decoded.split(':').next().unwrap_or("").to_string();
    match user.as_str() {
        "user" | "root" => Ok(user),
        _ => Err(ConnectError::new(Code::Unauthenticated, format!("invalid username: '{user}'"))),
    }
}

async fn health(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match resolve(&shared, &headers) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

fn de_opt_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    // protojson accepts integers as numbers or strings.
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("invalid uint32")),
        Some(Value::String(text)) => text.parse().map(Some).map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!("invalid uint32: {other}"))),
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub(crate) struct Selector {
    #[serde(deserialize_with = "de_opt_u32")]
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

impl Selector {
    /// The process a selector names, with envd's error texts.
    pub fn find(&self, processes: &Processes) -> Result<Arc<Process>, ConnectError> {
        match (self.pid, &self.tag) {
            (Some(pid), _) => processes
                .by_pid(pid)
                .ok_or_else(|| ConnectError::new(Code::NotFound, format!("process with pid {pid} not found"))),
            (None, Some(tag)) => processes
                .by_tag(tag)
                .ok_or_else(|| ConnectError::new(Code::NotFound, format!("process with tag {tag} not found"))),
            (None, None) => Err(ConnectError::new(Code::Unimplemented, "invalid input type <nil>")),
        }
    }
}

/// Shared prologue of unary calls: content type, sandbox, token, then the decoded message.
fn unary_prologue<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    type_name: &str,
) -> Result<(EnvdSandbox, T), Response> {
    // The edge and envd's auth middleware answer before connect-go looks at the content type.
    let sandbox = authorize(shared, headers)?;
    if let Some(response) = connect::reject_content_type(headers, connect::UNARY_CONTENT_TYPE) {
        return Err(response);
    }
    let message = connect::decode_message(body, type_name).map_err(IntoResponse::into_response)?;
    Ok((sandbox, message))
}

async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, _): (_, Value) = match unary_prologue(&shared, &headers, &body, "process.ListRequest") {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let processes: Vec<Value> = sandbox
        .processes
        .all()
        .iter()
        .map(|process| {
            let mut info = json!({"config": process.config, "pid": process.pid});
            if let Some(tag) = &process.tag {
                info["tag"] = json!(tag);
            }
            info
        })
        .collect();
    // protojson leaves an empty repeated field out entirely.
    if processes.is_empty() { connect::unary_ok(json!({})) } else { connect::unary_ok(json!({"processes": processes})) }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SendInputRequest {
    process: Selector,
    input: Option<Input>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

async fn send_input(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, request): (_, SendInputRequest) =
        match unary_prologue(&shared, &headers, &body, "process.SendInputRequest") {
            Ok(parts) => parts,
            Err(response) => return response,
        };
    let process = match request.process.find(&sandbox.processes) {
        Ok(process) => process,
        Err(error) => return error.into_response(),
    };
    let result = match request.input {
        Some(Input { stdin: Some(data), .. }) => match STANDARD.decode(data) {
            Ok(bytes) => process
                .write_stdin(&bytes)
                .await
                .map_err(|error| ConnectError::new(Code::Internal, format!("error writing to stdin: {error}"))),
            Err(error) => Err(ConnectError::new(
                Code::InvalidArgument,
                format!("unmarshal into process.SendInputRequest: {error}"),
            )),
        },
        Some(Input { pty: Some(_), .. }) => Err(ConnectError::new(
            Code::Internal,
            "error writing to tty: tty not assigned to process — input should be written to the stdin, not the tty",
        )),
        _ => Err(ConnectError::new(Code::Unimplemented, "invalid input type <nil>")),
    };
    match result {
        Ok(()) => connect::unary_ok(json!({})),
        Err(error) => error.into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SendSignalRequest {
    process: Selector,
    signal: Value,
}

async fn send_signal(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, request): (_, SendSignalRequest) =
        match unary_prologue(&shared, &headers, &body, "process.SendSignalRequest") {
            Ok(parts) => parts,
            Err(response) => return response,
        };
    let process = match request.process.find(&sandbox.processes) {
        Ok(process) => process,
        Err(error) => return error.into_response(),
    };
    let signal = match &request.signal {
        Value::String(name) if name == "SIGNAL_SIGKILL" => libc::SIGKILL,
        Value::String(name) if name == "SIGNAL_SIGTERM" => libc::SIGTERM,
        Value::Number(number) if number.as_i64() == Some(9) => libc::SIGKILL,
        Value::Number(number) if number.as_i64() == Some(15) => libc::SIGTERM,
        _ => {
            let name = request.signal.as_str().unwrap_or("SIGNAL_UNSPECIFIED");
            return ConnectError::new(Code::Unimplemented, format!("invalid signal: {name}")).into_response();
        }
    };
    if process.has_ended() {
        let message = "error sending signal: os: process already finished";
        return ConnectError::new(Code::Internal, message).into_response();
    }
    match process.signal_group(signal) {
        Ok(()) => connect::unary_ok(json!({})),
        Err(error) => ConnectError::new(Code::Internal, format!("error sending signal: {error}")).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CloseStdinRequest {
    process: Selector,
}

async fn close_stdin(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, request): (_, CloseStdinRequest) =
        match unary_prologue(&shared, &headers, &body, "process.CloseStdinRequest") {
            Ok(parts) => parts,
            Err(response) => return response,
        };
    match request.process.find(&sandbox.processes) {
        Ok(process) => {
            process.close_stdin().await;
            connect::unary_ok(json!({}))
        }
        Err(error) => error.into_response(),
    }
}

async fn unimplemented(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(response) = authorize(&shared, &headers) {
        return response;
    }
    ConnectError::new(
        Code::Unimplemented,
        "not implemented by fake-e2b (PTY, client streams and watchers are not faked)",
    )
    .into_response()
}
