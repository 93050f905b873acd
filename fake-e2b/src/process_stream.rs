//! The server-streaming calls `process.Process/Start` and `process.Process/Connect`: HTTP 200,
//! one envelope per event (start, data, keepalive, end), then the end-of-stream envelope.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connect::{self, Code, ConnectError};
use crate::envd::{self, EnvdSandbox, Selector};
use crate::processes::{EndEvent, Output, Process, SpawnSpec, Subscription};
use crate::state::{Shared, home_of, lock};

/// envd's keepalive period when the client sends no `Keepalive-Ping-Interval`.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// Frames queued for the HTTP body; the producer waits when the client reads slowly.
const FRAME_BUFFER: usize = 16;

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<Value>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConnectRequest {
    process: Selector,
}

/// A finished stream that holds only the end-of-stream frame with `error`.
fn error_stream(error: &ConnectError) -> Response {
    stream_response(Body::from(error.end_stream_frame()))
}

fn stream_response(body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(connect::STREAM_CONTENT_TYPE));
    response
}

/// HTTP-level checks of a streaming call; `Err` is the whole (non-200) response.
fn prologue(shared: &Shared, headers: &HeaderMap) -> Result<EnvdSandbox, Response> {
    let sandbox = envd::authorize(shared, headers)?;
    if let Some(response) = connect::reject_content_type(headers, connect::STREAM_CONTENT_TYPE) {
        return Err(response);
    }
    Ok(sandbox)
}

fn header_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ConnectError> {
    match headers.get(name).and_then(|value| value.to_str().ok()) {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|error| ConnectError::new(Code::InvalidArgument, format!("invalid {name} header: {error}"))),
    }
}

fn keepalive_interval(headers: &HeaderMap) -> Duration {
    match header_number(headers, "keepalive-ping-interval") {
        Ok(Some(seconds)) if seconds > 0 => Duration::from_secs(seconds),
        _ => DEFAULT_KEEPALIVE,
    }
}

/// `Connect-Timeout-Ms`; zero or absent means no deadline.
fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, ConnectError> {
    Ok(header_number(headers, "connect-timeout-ms")?.filter(|ms| *ms > 0).map(Duration::from_millis))
}

pub(crate) async fn start(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match prologue(&shared, &headers) {
        Ok(sandbox) => sandbox,
        Err(response) => return response,
    };
    match spawn(&sandbox, &headers, &body) {
        Ok((process, subscription, deadline)) => {
            let plan = StreamPlan {
                process,
                subscription,
                keepalive: keepalive_interval(&headers),
                deadline: deadline.map(|timeout| Instant::now() + timeout),
                cut_after: lock(&shared.cut_after).take(),
                gone: sandbox.processes.streams_token(),
            };
            run_stream(plan)
        }
        Err(error) => error_stream(&error),
    }
}

fn spawn(
    sandbox: &EnvdSandbox,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Arc<Process>, Subscription, Option<Duration>), ConnectError> {
    let user = envd::username(headers)?;
    let deadline = timeout(headers)?;
    let request: StartRequest = connect::decode_request_envelope(body, "process.StartRequest")?;
    if request.pty.is_some() {
        return Err(ConnectError::new(Code::Unimplemented, "PTY processes are not supported by fake-e2b"));
    }
    let home = home_of(&user);
    let cwd = match request.process.cwd.as_deref() {
        Some(cwd) if cwd.starts_with('/') => cwd.to_string(),
        Some(cwd) if !cwd.is_empty() => format!("{home}/{cwd}"),
        _ => home.clone(),
    };
    let host_cwd = sandbox.fs.host_path(&cwd);
    if !host_cwd.is_dir() {
        return Err(ConnectError::new(Code::InvalidArgument, format!("cwd '{cwd}' does not exist")));
    }
    let host_home = sandbox.fs.host_path(&home);
    let mut env = vec![
        ("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string())),
        ("HOME".to_string(), host_home.to_string_lossy().into_owned()),
        ("USER".to_string(), user.clone()),
        ("LOGNAME".to_string(), user),
        ("E2B_SANDBOX".to_string(), "true".to_string()),
        ("E2B_SANDBOX_ID".to_string(), sandbox.id.clone()),
    ];
    env.extend(sandbox.env_vars.iter().map(|(key, value)| (key.clone(), value.clone())));
    env.extend(request.process.envs.iter().map(|(key, value)| (key.clone(), value.clone())));

    let mut config = Map::new();
    config.insert("cmd".into(), json!(request.process.cmd));
    if !request.process.args.is_empty() {
        config.insert("args".into(), json!(request.process.args));
    }
    if !request.process.envs.is_empty() {
        config.insert("envs".into(), json!(request.process.envs));
    }
    if let Some(cwd) = &request.process.cwd {
        config.insert("cwd".into(), json!(cwd));
    }
    let command = std::iter::once(request.process.cmd.clone()).chain(request.process.args.clone()).collect::<Vec<_>>();
    let spec = SpawnSpec {
        cmd: request.process.cmd,
        args: request.process.args,
        env,
        cwd: host_cwd,
        // envd keeps stdin open when the field is absent (the legacy default).
        stdin: request.stdin.unwrap_or(true),
        tag: request.tag,
        config: Value::Object(config),
        deadline,
    };
    let (process, subscription) = sandbox.processes.spawn(spec).map_err(|error| {
        ConnectError::new(Code::InvalidArgument, format!("error starting process '{}': {error}", command.join(" ")))
    })?;
    Ok((process, subscription, deadline))
}

pub(crate) async fn connect(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match prologue(&shared, &headers) {
        Ok(sandbox) => sandbox,
        Err(response) => return response,
    };
    let attach = || -> Result<(Arc<Process>, Option<Duration>), ConnectError> {
        let deadline = timeout(&headers)?;
        let request: ConnectRequest = connect::decode_request_envelope(&body, "process.ConnectRequest")?;
        Ok((request.process.find(&sandbox.processes)?, deadline))
    };
    match attach() {
        Ok((process, deadline)) => {
            let plan = StreamPlan {
                subscription: process.subscribe(),
                process,
                keepalive: keepalive_interval(&headers),
                deadline: deadline.map(|timeout| Instant::now() + timeout),
                cut_after: lock(&shared.cut_after).take(),
                gone: sandbox.processes.streams_token(),
            };
            run_stream(plan)
        }
        Err(error) => error_stream(&error),
    }
}

struct StreamPlan {
    process: Arc<Process>,
    subscription: Subscription,
    keepalive: Duration,
    /// Request deadline (`Connect-Timeout-Ms`): the stream then ends with `deadline_exceeded`.
    deadline: Option<Instant>,
    /// Close the connection without an end-of-stream frame after this many data frames.
    cut_after: Option<usize>,
    /// The sandbox died or paused: the connection drops mid-stream, as when a VM vanishes.
    gone: CancellationToken,
}

fn event_frame(event: Value) -> Bytes {
    connect::envelope(0, &json!({"event": event}))
}

fn data_frame(output: &Output) -> Bytes {
    match output {
        Output::Stdout(bytes) => event_frame(json!({"data": {"stdout": STANDARD.encode(bytes)}})),
        Output::Stderr(bytes) => event_frame(json!({"data": {"stderr": STANDARD.encode(bytes)}})),
    }
}

fn run_stream(plan: StreamPlan) -> Response {
    let (frames, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(FRAME_BUFFER);
    let cut = plan.cut_after.is_some();
    tokio::spawn(pump(plan, frames));
    let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
    let mut response = stream_response(Body::from_stream(stream));
    if cut {
        // A cut stream ends its body early and the connection goes with it, so the client sees
        // every frame sent so far and then a close with no end-of-stream frame.
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// An error in the body makes hyper abort the connection: no end-of-stream frame, no clean end.
async fn drop_connection(frames: &mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let _ = frames.send(Err(std::io::Error::other("the sandbox is gone"))).await;
}

/// Produces the frames of one stream. Returning early (client gone, sandbox paused) leaves the
/// process running: envd detaches processes from the request that started them.
async fn pump(mut plan: StreamPlan, frames: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let deadline_error = ConnectError::new(Code::DeadlineExceeded, "context deadline exceeded");
    let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = plan.deadline.unwrap_or(never);
    let start = event_frame(json!({"start": {"pid": plan.process.pid}}));
    if frames.send(Ok(start)).await.is_err() {
        return;
    }
    let mut data_frames = 0usize;
    let mut next_keepalive = Instant::now() + plan.keepalive;
    loop {
        if plan.cut_after.is_some_and(|limit| data_frames >= limit) {
            return;
        }
        let frame = tokio::select! {
            _ = plan.gone.cancelled() => return drop_connection(&frames).await,
            _ = tokio::time::sleep_until(deadline) => {
                let _ = frames.send(Ok(deadline_error.end_stream_frame())).await;
                return;
            }
            _ = tokio::time::sleep_until(next_keepalive) => {
                next_keepalive = Instant::now() + plan.keepalive;
                event_frame(json!({"keepalive": {}}))
            }
            output = plan.subscription.output.recv() => match output {
                Some(output) => {
                    data_frames += 1;
                    next_keepalive = Instant::now() + plan.keepalive;
                    data_frame(&output)
                }
                None => break,
            },
        };
        if frames.send(Ok(frame)).await.is_err() {
            return;
        }
    }
    let wait_for_end = async {
        let end = plan.subscription.end.wait_for(Option::is_some).await;
        end.ok().and_then(|end| end.clone())
    };
    enum Finish {
        Gone,
        Deadline,
        Ended(Option<EndEvent>),
    }
    let finish = tokio::select! {
        _ = plan.gone.cancelled() => Finish::Gone,
        _ = tokio::time::sleep_until(deadline) => Finish::Deadline,
        end = wait_for_end => Finish::Ended(end),
    };
    let end = match finish {
        Finish::Gone => return drop_connection(&frames).await,
        Finish::Deadline => None,
        Finish::Ended(None) => return,
        Finish::Ended(end) => end,
    };
    match end {
        Some(end) if !plan.process.deadline_hit() => {
            if frames.send(Ok(event_frame(json!({"end": end.to_json()})))).await.is_ok() {
                let _ = frames.send(Ok(connect::end_stream_ok())).await;
            }
        }
        _ => {
            let _ = frames.send(Ok(deadline_error.end_stream_frame())).await;
        }
    }
}
