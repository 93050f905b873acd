//! An in-process fake of the Anthropic Messages API for tests: `POST /v1/messages` (streaming SSE
//! and plain JSON) and `POST /v1/messages/count_tokens`, on `127.0.0.1:0`.
//!
//! Script replies with the `push_*` methods; they are served in order, and once the queue is
//! empty every call gets the text [`DEFAULT_REPLY`]. Every request is recorded ([`FakeAnthropic::requests`]).
//! Like the real API it answers a missing `x-api-key`/`Authorization` with 401, a missing
//! `anthropic-version` or missing required field with 400, and a `tool_use` without its
//! `tool_result` in the next message with the real 400 — so client bugs surface as they would
//! in production. Those validation errors do not consume a scripted reply.
//!
//! Self-contained so other test crates can include it with `#[path = "…"] mod fake_anthropic;`.
//! Needs (dev-)dependencies: `axum` 0.8, `tokio` (net, sync, rt), `tokio-stream`, `serde_json`.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// What an unscripted call gets.
pub const DEFAULT_REPLY: &str = "(fake: no scripted reply)";
pub const FAKE_MODEL_ECHO: &str = "claude-fake";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The path without the query string (`/v1/messages`, `/v1/messages/count_tokens`).
    pub path: String,
    pub headers: HeaderMap,
    /// The parsed JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
    pub at: Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// A scripted reply.
pub enum Reply {
    /// Optional text, then optional tool calls (`(id, name, raw JSON input)`), streamed as the API does.
    Message { text: Option<String>, tool_uses: Vec<(String, String, String)> },
    /// An HTTP error with these extra headers and JSON body.
    Error { status: u16, headers: Vec<(String, String)>, body: Value },
    /// `text` starts streaming, then an `event: error` of this type ends the stream.
    StreamError { text: String, error_type: String, message: String },
    /// The first delta of `text`, then nothing until the [`Hold`] is released, then the rest.
    Held { text: String, release: oneshot::Receiver<()> },
    /// This exact SSE body, as written.
    RawSse(String),
}

/// Releases a [`Reply::Held`] stream.
pub struct Hold(oneshot::Sender<()>);

impl Hold {
    pub fn release(self) {
        let _ = self.0.send(());
    }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    required_key: Mutex<Option<String>>,
    next_id: Mutex<u64>,
}

impl Shared {
    fn next_id(&self, prefix: &str) -> String {
        let mut next = self.next_id.lock().unwrap();
        *next += 1;
        format!("{prefix}_fake{:04}", *next)
    }
}

pub struct FakeAnthropic {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeAnthropic {
    pub async fn start() -> FakeAnthropic {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Anthropic API");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve the fake Anthropic API");
        });
        FakeAnthropic { addr, shared, server }
    }

    /// For `AnthropicConfig::base_url` (no `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer 401 unless `x-api-key` (or `Authorization: Bearer`) is exactly `key`.
    pub fn require_api_key(&self, key: &str) {
        *self.shared.required_key.lock().unwrap() = Some(key.to_owned());
    }

    pub fn push(&self, reply: Reply) {
        self.shared.replies.lock().unwrap().push_back(reply);
    }

    pub fn push_text(&self, text: &str) {
        self.push(Reply::Message { text: Some(text.to_owned()), tool_uses: vec![] });
    }

    /// Returns the `tool_use` id the reply will carry.
    pub fn push_tool_use(&self, name: &str, input: Value) -> String {
        self.push_tool_use_raw_input(name, &input.to_string())
    }

    /// A tool call whose input is this exact (maybe invalid) JSON text. Returns its id.
    pub fn push_tool_use_raw_input(&self, name: &str, input_json: &str) -> String {
        let id = self.shared.next_id("toolu");
        self.push(Reply::Message { text: None, tool_uses: vec![(id.clone(), name.to_owned(), input_json.to_owned())] });
        id
    }

    /// Returns the `tool_use` id the reply will carry.
    pub fn push_text_then_tool_use(&self, text: &str, name: &str, input: Value) -> String {
        let id = self.shared.next_id("toolu");
        self.push(Reply::Message {
            text: Some(text.to_owned()),
            tool_uses: vec![(id.clone(), name.to_owned(), input.to_string())],
        });
        id
    }

    /// An error response; `body` is sent as JSON. See [`error_body`] for the API's shape.
    pub fn push_error(&self, status: u16, headers: &[(&str, &str)], body: Value) {
        let headers = headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        self.push(Reply::Error { status, headers, body });
    }

    pub fn push_stream_error(&self, text_before: &str, error_type: &str, message: &str) {
        self.push(Reply::StreamError {
            text: text_before.to_owned(),
            error_type: error_type.to_owned(),
            message: message.to_owned(),
        });
    }

    /// A text reply that stalls after its first delta until the returned [`Hold`] is released.
    pub fn push_text_held(&self, text: &str) -> Hold {
        let (release, wait) = oneshot::channel();
        self.push(Reply::Held { text: text.to_owned(), release: wait });
        Hold(release)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The `POST /v1/messages` requests so far.
    pub fn message_requests(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|request| request.path == "/v1/messages").collect()
    }
}

/// The API's error body: `{"type":"error","error":{"type","message"},"request_id"}`.
pub fn error_body(error_type: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_fake_error"})
}

fn record(shared: &Shared, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Value {
    let parsed = serde_json::from_slice(body).unwrap_or(Value::Null);
    shared.requests.lock().unwrap().push(RecordedRequest {
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: parsed.clone(),
        at: Instant::now(),
    });
    parsed
}

async fn count_tokens(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = record(&shared, &uri, &headers, &body);
    if let Some(rejection) = check_headers(&shared, &headers) {
        return rejection;
    }
    json_response(200, &[], &json!({"input_tokens": estimate_input_tokens(&parsed)}))
}

async fn messages(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = record(&shared, &uri, &headers, &body);
    if let Some(rejection) = check_headers(&shared, &headers) {
        return rejection;
    }
    if parsed.is_null() {
        return error_response(400, "invalid_request_error", "the request body is not valid JSON");
    }
    if let Err(message) = validate_body(&parsed) {
        return error_response(400, "invalid_request_error", &message);
    }
    let reply = shared.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| Reply::Message { text: Some(DEFAULT_REPLY.to_owned()), tool_uses: vec![] });
    let input_tokens = estimate_input_tokens(&parsed);
    let model = parsed["model"].as_str().unwrap_or(FAKE_MODEL_ECHO).to_owned();
    let streaming = parsed["stream"].as_bool().unwrap_or(false);
    let message_id = shared.next_id("msg");
    let reply = match reply {
        Reply::Held { text, .. } if !streaming => Reply::Message { text: Some(text), tool_uses: vec![] },
        reply => reply,
    };
    match reply {
        Reply::Error { status, headers, body } => {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
            json_response(status, &headers, &body)
        }
        Reply::Message { text, tool_uses } if !streaming => {
            let mut content = Vec::new();
            if let Some(text) = text {
                content.push(json!({"type": "text", "text": text}));
            }
            for (id, name, input) in &tool_uses {
                let input: Value = serde_json::from_str(input).unwrap_or(Value::String(input.clone()));
                content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            }
            let stop_reason = if tool_uses.is_empty() { "end_turn" } else { "tool_use" };
            let message = json!({
                "id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 7}
            });
            json_response(200, &[], &message)
        }
        Reply::StreamError { error_type, message, .. } if !streaming => error_response(529, &error_type, &message),
        reply => {
            let frames = stream_frames(reply, &message_id, &model, input_tokens);
            sse_response(frames)
        }
    }
}

fn check_headers(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let key = header("x-api-key").or_else(|| header("authorization").and_then(|value| value.strip_prefix("Bearer ")));
    let Some(key) = key else {
        return Some(error_response(401, "authentication_error", "x-api-key header is required"));
    };
    if shared.required_key.lock().unwrap().as_deref().is_some_and(|required| required != key) {
        return Some(error_response(401, "authentication_error", "invalid x-api-key"));
    }
    if header("anthropic-version").is_none() {
        return Some(error_response(400, "invalid_request_error", "anthropic-version: header is required"));
    }
    None
}

/// The checks the real API makes that a client is most likely to fail.
fn validate_body(body: &Value) -> Result<(), String> {
    for field in ["model", "max_tokens", "messages"] {
        if body.get(field).is_none() {
            return Err(format!("{field}: Field required"));
        }
    }
    let messages = body["messages"].as_array().ok_or("messages: Input should be a valid list")?;
    if messages.first().and_then(|message| message["role"].as_str()) != Some("user") {
        return Err("messages: the first message must use the \"user\" role".to_owned());
    }
    for (index, message) in messages.iter().enumerate() {
        let blocks = message["content"].as_array().cloned().unwrap_or_default();
        for block in &blocks {
            if block["type"] == "text" && block["text"].as_str().is_some_and(str::is_empty) {
                return Err(format!("messages.{index}: text content blocks must be non-empty"));
            }
        }
        let calls: Vec<&str> =
            blocks.iter().filter(|b| b["type"] == "tool_use").filter_map(|b| b["id"].as_str()).collect();
        if calls.is_empty() {
            continue;
        }
        let next = messages.get(index + 1).and_then(|next| next["content"].as_array().cloned()).unwrap_or_default();
        let leading_results: Vec<&str> = next
            .iter()
            .take_while(|block| block["type"] == "tool_result")
            .filter_map(|block| block["tool_use_id"].as_str())
            .collect();
        let missing: Vec<&str> = calls.iter().copied().filter(|id| !leading_results.contains(id)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. \
                 Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                missing.join(", ")
            ));
        }
    }
    for (index, message) in messages.iter().enumerate() {
        let previous_calls: Vec<String> = index
            .checked_sub(1)
            .and_then(|previous| messages[previous]["content"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|block| block["type"] == "tool_use")
            .filter_map(|block| block["id"].as_str().map(str::to_owned))
            .collect();
        for block in message["content"].as_array().into_iter().flatten() {
            if block["type"] == "tool_result" && !previous_calls.iter().any(|id| block["tool_use_id"] == id.as_str()) {
                return Err(format!(
                    "messages.{index}.content: unexpected `tool_use_id` found in `tool_result` blocks: {}. \
                     Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
                    block["tool_use_id"]
                ));
            }
        }
    }
    Ok(())
}

fn estimate_input_tokens(body: &Value) -> u64 {
    (body.to_string().len() as u64).div_ceil(4)
}

fn json_response(status: u16, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let response_headers = response.headers_mut();
    response_headers.insert("content-type", HeaderValue::from_static("application/json"));
    response_headers.insert("request-id", HeaderValue::from_static("req_fake"));
    for (name, value) in headers {
        response_headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    response
}

fn error_response(status: u16, error_type: &str, message: &str) -> Response {
    json_response(status, &[], &error_body(error_type, message))
}

/// A piece of a streamed body.
enum Frame {
    Event(String),
    Wait(oneshot::Receiver<()>),
}

fn event(name: &str, data: Value) -> Frame {
    Frame::Event(format!("event: {name}\ndata: {data}\n\n"))
}

/// Text as several deltas: one per word, each with the whitespace after it.
pub fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for character in text.chars() {
        if !character.is_whitespace() && current.ends_with(char::is_whitespace) {
            pieces.push(std::mem::take(&mut current));
        }
        current.push(character);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// JSON text in three fragments cut at arbitrary places (not at token boundaries).
fn split_json(json: &str) -> Vec<String> {
    let characters: Vec<char> = json.chars().collect();
    let third = characters.len().div_ceil(3).max(1);
    characters.chunks(third).map(|chunk| chunk.iter().collect()).collect()
}

fn stream_frames(reply: Reply, message_id: &str, model: &str, input_tokens: u64) -> Vec<Frame> {
    let mut frames = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        }}),
    )];
    let text_block = |frames: &mut Vec<Frame>, index: usize, pieces: Vec<String>| {
        frames.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        frames.push(event("ping", json!({"type": "ping"})));
        for piece in pieces {
            frames.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
    };
    let stop_block = |frames: &mut Vec<Frame>, index: usize| {
        frames.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
    };
    let finish = |frames: &mut Vec<Frame>, stop_reason: &str, output_tokens: usize| {
        frames.push(event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                   "usage": {"output_tokens": output_tokens}}),
        ));
        frames.push(event("message_stop", json!({"type": "message_stop"})));
    };
    match reply {
        Reply::Message { text, tool_uses } => {
            let mut index = 0;
            let mut output_tokens = 0;
            if let Some(text) = text {
                let pieces = split_words(&text);
                output_tokens += pieces.len();
                text_block(&mut frames, index, pieces);
                stop_block(&mut frames, index);
                index += 1;
            }
            for (id, name, input) in &tool_uses {
                frames.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                           "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                ));
                let mut fragments = vec![String::new()];
                fragments.extend(split_json(input));
                for fragment in fragments {
                    frames.push(event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": fragment}}),
                    ));
                }
                stop_block(&mut frames, index);
                output_tokens += input.len().div_ceil(4);
                index += 1;
            }
            finish(&mut frames, if tool_uses.is_empty() { "end_turn" } else { "tool_use" }, output_tokens.max(1));
        }
        Reply::StreamError { text, error_type, message } => {
            text_block(&mut frames, 0, split_words(&text));
            frames.push(event("error", json!({"type": "error", "error": {"type": error_type, "message": message}})));
        }
        Reply::Held { text, release } => {
            let mut pieces = split_words(&text).into_iter();
            text_block(&mut frames, 0, pieces.next().into_iter().collect());
            frames.push(Frame::Wait(release));
            let rest: Vec<String> = pieces.collect();
            for piece in rest {
                frames.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            stop_block(&mut frames, 0);
            finish(&mut frames, "end_turn", 3);
        }
        Reply::RawSse(body) => return vec![Frame::Event(body)],
        Reply::Error { .. } => unreachable!("errors are not streamed"),
    }
    frames
}

/// Streams `frames`, each cut in two so events straddle chunk boundaries as they do on a network.
fn sse_response(frames: Vec<Frame>) -> Response {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        for frame in frames {
            match frame {
                Frame::Event(text) => {
                    let mut middle = text.len() / 2;
                    while !text.is_char_boundary(middle) {
                        middle += 1;
                    }
                    for half in [&text[..middle], &text[middle..]] {
                        if sender.send(Ok(Bytes::from(half.to_owned()))).await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                Frame::Wait(release) => {
                    let _ = release.await;
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("request-id", HeaderValue::from_static("req_fake"));
    response
}
