//! An in-process fake of an OpenAI-compatible server (vLLM, Ollama, llama.cpp) for tests:
//! `POST /v1/chat/completions`, streaming (`data:` chunks, `[DONE]`) and plain JSON, on `127.0.0.1:0`.
//!
//! Script replies with the `push_*` methods; they are served in order, and once the queue is
//! empty every call gets the text [`DEFAULT_REPLY`]. Every request is recorded ([`FakeOpenAi::requests`]).
//! With [`FakeOpenAi::require_api_key`] it answers a wrong or missing bearer token with 401 (by
//! default, like Ollama, it checks nothing). It rejects a `tool` message that answers no
//! preceding `tool_calls` id with 400, without consuming a scripted reply.
//!
//! Self-contained so other test crates can include it with `#[path = "…"] mod fake_openai;`.
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
use tokio::sync::mpsc;

/// What an unscripted call gets.
pub const DEFAULT_REPLY: &str = "(fake: no scripted reply)";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
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

/// A tool call the fake will make.
#[derive(Debug, Clone)]
pub struct FakeCall {
    pub id: String,
    pub name: String,
    /// The `arguments` string exactly as sent (so it may be invalid JSON).
    pub arguments: String,
}

/// How tool calls are streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStyle {
    /// OpenAI/vLLM: a first fragment with id and name, then argument pieces.
    Fragments,
    /// Ollama: each call whole in one chunk, with `content: ""`.
    Whole,
}

/// A scripted reply.
pub enum Reply {
    Message {
        text: Option<String>,
        calls: Vec<FakeCall>,
        style: CallStyle,
    },
    /// An HTTP error with these extra headers and JSON body.
    Error {
        status: u16,
        headers: Vec<(String, String)>,
        body: Value,
    },
    /// `text` starts streaming, then a vLLM-style `data: {"error": …}` chunk ends the stream.
    StreamError {
        text: String,
        message: String,
    },
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

pub struct FakeOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeOpenAi {
    pub async fn start() -> FakeOpenAi {
        let shared = Arc::new(Shared::default());
        let router = Router::new().route("/v1/chat/completions", post(completions)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake OpenAI server");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve the fake OpenAI server");
        });
        FakeOpenAi { addr, shared, server }
    }

    /// For `OpenAiConfig::base_url`: ends in `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answer 401 unless `Authorization: Bearer <key>` is sent.
    pub fn require_api_key(&self, key: &str) {
        *self.shared.required_key.lock().unwrap() = Some(key.to_owned());
    }

    pub fn push(&self, reply: Reply) {
        self.shared.replies.lock().unwrap().push_back(reply);
    }

    pub fn push_text(&self, text: &str) {
        self.push(Reply::Message { text: Some(text.to_owned()), calls: vec![], style: CallStyle::Fragments });
    }

    /// A fragmented tool call; returns its id.
    pub fn push_tool_call(&self, name: &str, arguments: Value) -> String {
        self.push_tool_calls(None, &[(name, &arguments.to_string())], CallStyle::Fragments).remove(0)
    }

    /// Optional text, then tool calls `(name, raw arguments)` in `style`; returns their ids.
    pub fn push_tool_calls(&self, text: Option<&str>, calls: &[(&str, &str)], style: CallStyle) -> Vec<String> {
        let calls: Vec<FakeCall> = calls
            .iter()
            .map(|(name, arguments)| FakeCall {
                id: self.shared.next_id("call"),
                name: name.to_string(),
                arguments: arguments.to_string(),
            })
            .collect();
        let ids = calls.iter().map(|call| call.id.clone()).collect();
        self.push(Reply::Message { text: text.map(str::to_owned), calls, style });
        ids
    }

    /// An error response; `body` is sent as JSON. See [`error_body`] for the usual shape.
    pub fn push_error(&self, status: u16, headers: &[(&str, &str)], body: Value) {
        let headers = headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        self.push(Reply::Error { status, headers, body });
    }

    pub fn push_stream_error(&self, text_before: &str, message: &str) {
        self.push(Reply::StreamError { text: text_before.to_owned(), message: message.to_owned() });
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

/// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(error_type: &str, message: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
}

async fn completions(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.requests.lock().unwrap().push(RecordedRequest {
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: parsed.clone(),
        at: Instant::now(),
    });
    if let Some(required) = shared.required_key.lock().unwrap().clone() {
        let bearer = headers.get("authorization").and_then(|value| value.to_str().ok());
        if bearer.and_then(|value| value.strip_prefix("Bearer ")) != Some(required.as_str()) {
            let body = error_body("invalid_request_error", "Incorrect API key provided.", json!("invalid_api_key"));
            return json_response(401, &[], &body);
        }
    }
    if let Err(message) = validate_body(&parsed) {
        return json_response(400, &[], &error_body("BadRequestError", &message, json!(400)));
    }
    let reply = shared.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| Reply::Message {
        text: Some(DEFAULT_REPLY.to_owned()),
        calls: vec![],
        style: CallStyle::Fragments,
    });
    let model = parsed["model"].as_str().unwrap_or("fake-model").to_owned();
    let streaming = parsed["stream"].as_bool().unwrap_or(false);
    let include_usage = parsed.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let prompt_tokens = (body.len() as u64).div_ceil(4);
    let id = shared.next_id("chatcmpl");
    match reply {
        Reply::Error { status, headers, body } => {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
            json_response(status, &headers, &body)
        }
        Reply::StreamError { message, .. } if !streaming => {
            json_response(500, &[], &error_body("InternalServerError", &message, json!(500)))
        }
        Reply::Message { text, calls, .. } if !streaming => {
            let tool_calls: Vec<Value> = calls
                .iter()
                .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
                .collect();
            let mut message = json!({"role": "assistant", "content": text});
            if !tool_calls.is_empty() {
                message["tool_calls"] = json!(tool_calls);
            }
            let finish_reason = if calls.is_empty() { "stop" } else { "tool_calls" };
            json_response(
                200,
                &[],
                &json!({
                    "id": id, "object": "chat.completion", "created": 1_764_000_000, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": null}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}
                }),
            )
        }
        reply => sse_response(stream_chunks(reply, &id, &model, include_usage, prompt_tokens)),
    }
}

fn validate_body(body: &Value) -> Result<(), String> {
    for field in ["model", "messages"] {
        if body.get(field).is_none() {
            return Err(format!("{field}: Field required"));
        }
    }
    let messages = body["messages"].as_array().ok_or("messages: Input should be a valid list")?;
    let mut open_calls: Vec<String> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        match message["role"].as_str() {
            Some("tool") => {
                let id = message["tool_call_id"].as_str().unwrap_or_default();
                let Some(position) = open_calls.iter().position(|open| open == id) else {
                    return Err(format!("messages.{index}: tool_call_id {id:?} answers no preceding tool call"));
                };
                open_calls.remove(position);
            }
            Some("assistant") => {
                open_calls = message["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|call| call["id"].as_str().map(str::to_owned))
                    .collect();
            }
            _ => open_calls.clear(),
        }
    }
    Ok(())
}

fn json_response(status: u16, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let response_headers = response.headers_mut();
    response_headers.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in headers {
        response_headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    response
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

fn stream_chunks(reply: Reply, id: &str, model: &str, include_usage: bool, prompt_tokens: u64) -> Vec<String> {
    let chunk = |delta: Value, finish_reason: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_000_000, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}]})
        .to_string()
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let (text, calls, style, error) = match reply {
        Reply::Message { text, calls, style } => (text.unwrap_or_default(), calls, style, None),
        Reply::StreamError { text, message } => (text, vec![], CallStyle::Fragments, Some(message)),
        Reply::Error { .. } => unreachable!("errors are not streamed"),
    };
    let pieces = split_words(&text);
    let completion_tokens = pieces.len() + calls.len() * 5;
    for piece in pieces {
        chunks.push(chunk(json!({"content": piece}), Value::Null));
    }
    if let Some(message) = error {
        chunks.push(json!({"error": {"object": "error", "message": message, "type": "InternalServerError", "param": null, "code": 500}}).to_string());
        return chunks;
    }
    for (index, call) in calls.iter().enumerate() {
        match style {
            CallStyle::Whole => chunks.push(chunk(
                json!({"content": "", "tool_calls": [{"index": index, "id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": call.arguments}}]}),
                Value::Null,
            )),
            CallStyle::Fragments => {
                chunks.push(chunk(
                    json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": ""}}]}),
                    Value::Null,
                ));
                let characters: Vec<char> = call.arguments.chars().collect();
                for piece in characters.chunks(characters.len().div_ceil(3).max(1)) {
                    let piece: String = piece.iter().collect();
                    chunks.push(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
            }
        }
    }
    let finish_reason = if calls.is_empty() { "stop" } else { "tool_calls" };
    chunks.push(chunk(json!({}), json!(finish_reason)));
    if include_usage {
        chunks.push(
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_000_000, "model": model, "choices": [],
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens as u64}})
            .to_string(),
        );
    }
    chunks.push("[DONE]".to_owned());
    chunks
}

/// Streams each chunk as `data: …\n\n`, cut in two so chunks straddle network reads.
fn sse_response(chunks: Vec<String>) -> Response {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        for chunk in chunks {
            let text = format!("data: {chunk}\n\n");
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
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}
