//! The OpenAI-compatible chat-completions brain, for local and self-hosted models (vLLM, Ollama,
//! llama.cpp `llama-server`) and anything else that speaks `POST {base_url}/chat/completions`
//! with `"stream": true`.
//!
//! Tool calls arrive as fragments keyed by `index` (vLLM, OpenAI) or whole in one chunk (Ollama);
//! both are accumulated the same way. Ids are never interpreted.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use service_kit::secret::SecretString;

use super::retry::{self, AttemptError, RetryPolicy};
use super::sse::{SseError, SseEvent, SseReader};
use super::{Block, Brain, BrainError, BrainReply, BrainRequest, ChatMessage, Role, TextSink, Usage};

const BACKEND: &str = "openai";
/// Largest single server-sent event accepted. Chunks carry one delta each; Ollama sends a whole
/// tool call in one, still far below this.
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Largest reply accepted: all text plus all tool-call arguments.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// Most tool calls accepted in one reply; past it the server is misbehaving.
const MAX_TOOL_CALLS: usize = 128;

/// How to reach an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Sent as `Authorization: Bearer …` when set; local servers usually need none.
    pub api_key: Option<SecretString>,
    /// Up to and including `/v1`: `http://localhost:11434/v1` (Ollama), `http://localhost:8000/v1`
    /// (vLLM), `http://localhost:8080/v1` (llama.cpp).
    pub base_url: String,
    pub model: String,
    /// `max_tokens` in the request; the server's default when `None`.
    pub max_tokens: Option<u32>,
    /// Longest wait for the response headers, and then between two chunks of the stream. Local
    /// servers may take long to load a model before the first byte.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl OpenAiConfig {
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

    pub fn new(base_url: impl Into<String>, model: impl Into<String>, api_key: Option<SecretString>) -> OpenAiConfig {
        OpenAiConfig {
            api_key,
            base_url: base_url.into(),
            model: model.into(),
            max_tokens: None,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }
}

pub struct OpenAiBrain {
    config: OpenAiConfig,
    client: reqwest::Client,
    url: String,
}

impl OpenAiBrain {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiBrain, BrainError> {
        let client = retry::http_client(BACKEND)?;
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(OpenAiBrain { config, client, url })
    }

    /// The JSON body of one request.
    pub fn request_body(&self, request: &BrainRequest) -> Value {
        let mut messages = Vec::new();
        if !request.system.is_empty() {
            messages.push(json!({"role": "system", "content": request.system}));
        }
        for message in &request.messages {
            push_message(message, &mut messages);
        }
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(max_tokens) = self.config.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|tool| {
                    json!({"type": "function", "function": {
                        "name": tool.name, "description": tool.description, "parameters": tool.input_schema
                    }})
                })
                .collect();
        }
        body
    }

    fn secret(&self) -> Option<&str> {
        self.config.api_key.as_ref().map(SecretString::expose)
    }

    async fn attempt(&self, body: &bytes::Bytes, text: &TextSink) -> Result<BrainReply, AttemptError> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.clone());
        if let Some(key) = self.secret() {
            request = request.bearer_auth(key);
        }
        let response = retry::send(BACKEND, request, self.config.request_timeout, self.secret()).await?;
        let mut events = SseReader::new(response.bytes_stream(), MAX_EVENT_BYTES, self.config.request_timeout);
        let mut reply = ReplyState::new(text);
        loop {
            let event = match events.next_event().await {
                Ok(Some(event)) => event,
                // Some servers close without `[DONE]` after the last chunk; a finish reason is enough.
                Ok(None) if !reply.stop_reason.is_empty() => return reply.finish().map_err(AttemptError::fatal),
                Ok(None) => {
                    let error = transport("the stream ended before [DONE]".to_owned());
                    return Err(retry::retry_if_nothing_read(error, events.bytes_read()));
                }
                Err(SseError::EventTooLarge { limit }) => {
                    return Err(AttemptError::fatal(protocol(format!("an event exceeds {limit} bytes"))));
                }
                Err(error) => {
                    let error = transport(retry::scrub(&format!("reading the stream: {error}"), self.secret()));
                    return Err(retry::retry_if_nothing_read(error, events.bytes_read()));
                }
            };
            if reply.apply(&event, self.secret()).await.map_err(AttemptError::fatal)? {
                return reply.finish().map_err(AttemptError::fatal);
            }
        }
    }
}

#[async_trait]
impl Brain for OpenAiBrain {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn model(&self) -> String {
        self.config.model.clone()
    }

    async fn respond(&self, request: &BrainRequest, text: &TextSink) -> Result<BrainReply, BrainError> {
        let body = bytes::Bytes::from(self.request_body(request).to_string());
        let result = self.config.retry.run(BACKEND, |_| self.attempt(&body, text)).await;
        result.map_err(|error| retry::scrub_error(error, self.secret()))
    }
}

/// Appends one of our messages in chat-completions form. A user message's tool results become
/// `tool` messages (which must directly follow the assistant's `tool_calls`), then its text a
/// `user` message. The format has no error flag, so a failed tool's result says so in words.
fn push_message(message: &ChatMessage, out: &mut Vec<Value>) {
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for block in &message.content {
        match block {
            Block::Text { text } if !text.is_empty() => texts.push(text.as_str()),
            Block::Text { .. } => {}
            Block::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}
            })),
            Block::ToolResult { tool_use_id, content, is_error } => {
                let content = if *is_error { format!("Error: {content}") } else { content.clone() };
                out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
            }
        }
    }
    let text = texts.join("\n\n");
    match message.role {
        Role::User if !text.is_empty() => out.push(json!({"role": "user", "content": text})),
        Role::User => {}
        Role::Assistant if !tool_calls.is_empty() => {
            let content = if text.is_empty() { Value::Null } else { json!(text) };
            out.push(json!({"role": "assistant", "content": content, "tool_calls": tool_calls}));
        }
        Role::Assistant if !text.is_empty() => out.push(json!({"role": "assistant", "content": text})),
        Role::Assistant => {}
    }
}

fn transport(message: String) -> BrainError {
    BrainError::Transport { backend: BACKEND, message }
}

fn protocol(message: String) -> BrainError {
    BrainError::Protocol { backend: BACKEND, message }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// What the stream said so far.
struct ReplyState<'a> {
    sink: &'a TextSink,
    sink_open: bool,
    /// Bounded, with `calls`, by [`MAX_REPLY_BYTES`].
    text: String,
    /// Tool calls by their `index`; at most [`MAX_TOOL_CALLS`].
    calls: BTreeMap<u64, PartialCall>,
    reply_bytes: usize,
    stop_reason: String,
    usage: Usage,
}

impl<'a> ReplyState<'a> {
    fn new(sink: &'a TextSink) -> ReplyState<'a> {
        ReplyState {
            sink,
            sink_open: true,
            text: String::new(),
            calls: BTreeMap::new(),
            reply_bytes: 0,
            stop_reason: String::new(),
            usage: Usage::default(),
        }
    }

    /// Applies one chunk; `true` at `[DONE]`.
    async fn apply(&mut self, event: &SseEvent, secret: Option<&str>) -> Result<bool, BrainError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|error| protocol(format!("a stream chunk is not valid JSON: {error}")))?;
        if let Some(error) = chunk.get("error") {
            // vLLM reports failures after the 200 this way.
            let field = |name: &str| match error.get(name) {
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Number(number)) => Some(number.to_string()),
                _ => None,
            };
            let message = field("message").unwrap_or_else(|| error.to_string());
            return Err(BrainError::Stream {
                backend: BACKEND,
                kind: field("type").or_else(|| field("code")).unwrap_or_else(|| "error".to_owned()),
                message: retry::scrub(&message, secret),
            });
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            let field = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Usage { input_tokens: field("prompt_tokens"), output_tokens: field("completion_tokens") };
        }
        let Some(choice) = chunk.get("choices").and_then(Value::as_array).and_then(|choices| choices.first()) else {
            return Ok(false);
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = reason.to_owned();
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(false);
        };
        if let Some(piece) = delta.get("content").and_then(Value::as_str).filter(|piece| !piece.is_empty()) {
            self.grow(piece.len())?;
            self.text.push_str(piece);
            if self.sink_open {
                // A closed receiver means the caller stopped watching; the reply is still wanted.
                self.sink_open = self.sink.send(piece.to_owned()).await.is_ok();
            }
        }
        for fragment in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            self.apply_tool_fragment(fragment)?;
        }
        Ok(false)
    }

    fn apply_tool_fragment(&mut self, fragment: &Value) -> Result<(), BrainError> {
        let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(self.calls.len() as u64);
        if !self.calls.contains_key(&index) && self.calls.len() >= MAX_TOOL_CALLS {
            return Err(protocol(format!("more than {MAX_TOOL_CALLS} tool calls in one reply")));
        }
        let call = self.calls.entry(index).or_default();
        let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_owned();
        let id = text(fragment.get("id"));
        let name = text(fragment.pointer("/function/name"));
        let arguments = match fragment.pointer("/function/arguments") {
            Some(Value::String(piece)) => piece.clone(),
            // Not the documented format, but what Ollama's native API does: accept an object too.
            Some(object @ Value::Object(_)) => object.to_string(),
            _ => String::new(),
        };
        // Servers repeat the id and name in later fragments at most; only the first counts.
        if call.id.is_empty() {
            call.id = id;
        }
        if call.name.is_empty() {
            call.name = name;
        }
        call.arguments.push_str(&arguments);
        self.grow(arguments.len())
    }

    fn grow(&mut self, bytes: usize) -> Result<(), BrainError> {
        self.reply_bytes += bytes;
        if self.reply_bytes > MAX_REPLY_BYTES {
            return Err(protocol(format!("the reply exceeds {MAX_REPLY_BYTES} bytes")));
        }
        Ok(())
    }

    fn finish(self) -> Result<BrainReply, BrainError> {
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(Block::Text { text: self.text });
        }
        for (index, call) in self.calls {
            if call.name.is_empty() {
                return Err(protocol(format!("tool call {index} has no function name")));
            }
            let input = if call.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&call.arguments).map_err(|error| {
                    protocol(format!("the arguments of tool call `{}` are not valid JSON: {error}", call.name))
                })?
            };
            // Some llama.cpp versions send no id; the id only has to pair the call with its result.
            let id = if call.id.is_empty() { format!("call_{index}_{:08x}", rand::random::<u32>()) } else { call.id };
            content.push(Block::ToolUse { id, name: call.name, input });
        }
        Ok(BrainReply { content, stop_reason: self.stop_reason, usage: self.usage })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::ToolSpec;

    fn brain(key: Option<&str>) -> OpenAiBrain {
        let config = OpenAiConfig::new("http://localhost:11434/v1/", "qwen3", key.map(SecretString::new));
        OpenAiBrain::new(config).unwrap()
    }

    #[test]
    fn history_maps_to_chat_messages() {
        let request = BrainRequest {
            system: "be brief".into(),
            messages: vec![
                ChatMessage::user_text("hi"),
                ChatMessage {
                    role: Role::Assistant,
                    content: vec![
                        Block::text("checking"),
                        Block::ToolUse { id: "call_1".into(), name: "recall".into(), input: json!({"query": "x"}) },
                        Block::ToolUse { id: "call_2".into(), name: "worker_status".into(), input: json!({}) },
                    ],
                },
                ChatMessage {
                    role: Role::User,
                    content: vec![
                        Block::ToolResult { tool_use_id: "call_1".into(), content: "found".into(), is_error: false },
                        Block::ToolResult {
                            tool_use_id: "call_2".into(),
                            content: "no such worker".into(),
                            is_error: true,
                        },
                    ],
                },
                ChatMessage { role: Role::Assistant, content: vec![Block::text("done")] },
            ],
            tools: vec![ToolSpec { name: "recall", description: "search", input_schema: json!({"type": "object"}) }],
        };
        let brain = brain(None);
        assert_eq!(brain.url, "http://localhost:11434/v1/chat/completions");
        assert_eq!(
            brain.request_body(&request),
            json!({
                "model": "qwen3",
                "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "checking", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "recall", "arguments": "{\"query\":\"x\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "worker_status", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "found"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "Error: no such worker"},
                    {"role": "assistant", "content": "done"}
                ],
                "tools": [{"type": "function", "function": {"name": "recall", "description": "search", "parameters": {"type": "object"}}}]
            })
        );
    }

    #[tokio::test]
    async fn fragments_and_whole_calls_accumulate_by_index() {
        let (sender, _receiver) = tokio::sync::mpsc::channel(8);
        let mut state = ReplyState::new(&sender);
        let chunk = |delta: Value, finish: Value| SseEvent {
            event: "message".into(),
            data: json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string(),
        };
        let fragments = [
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "remember", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"key\":"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "recall", "arguments": "{}"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"k\",\"content\":\"v\"}"}}]}),
        ];
        for delta in fragments {
            assert!(!state.apply(&chunk(delta, Value::Null), None).await.unwrap());
        }
        state.apply(&chunk(json!({}), json!("tool_calls")), None).await.unwrap();
        assert!(state.apply(&SseEvent { event: "message".into(), data: "[DONE]".into() }, None).await.unwrap());
        let reply = state.finish().unwrap();
        assert_eq!(reply.stop_reason, "tool_calls");
        assert_eq!(
            reply.content,
            vec![
                Block::ToolUse {
                    id: "call_a".into(),
                    name: "remember".into(),
                    input: json!({"key": "k", "content": "v"})
                },
                Block::ToolUse { id: "call_b".into(), name: "recall".into(), input: json!({}) },
            ]
        );
    }

    #[test]
    fn no_key_no_secret() {
        assert_eq!(brain(None).secret(), None);
        assert_eq!(brain(Some("sk-local")).secret(), Some("sk-local"));
    }
}
