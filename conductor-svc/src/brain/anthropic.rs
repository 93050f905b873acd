//! The Anthropic Messages API brain: `POST {base_url}/v1/messages` with `"stream": true`, text
//! deltas forwarded as they arrive, tool calls assembled from `input_json_delta` fragments.
//!
//! Not supported: thinking blocks. The shared [`Block`] type cannot carry them back, and models
//! that always think (Opus 5.5) require them echoed in tool loops; use a model where thinking is
//! off by default (Sonnet 5.5, the default here).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use service_kit::secret::SecretString;

use super::retry::{self, AttemptError, RetryPolicy};
use super::sse::{SseError, SseEvent, SseReader};
use super::{Block, Brain, BrainError, BrainReply, BrainRequest, ChatMessage, Role, TextSink, Usage};

const BACKEND: &str = "anthropic";
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Largest single server-sent event accepted. Events are one delta each, normally well under 1 KiB.
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Largest reply accepted: all text plus all tool inputs. A `max_tokens` of 128K is about 512 KiB.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// How to reach the Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    pub api_key: SecretString,
    /// Without the `/v1` path: `https://api.anthropic.com` or a gateway's root.
    pub base_url: String,
    pub model: String,
    pub max_tokens: u32,
    /// Longest wait for the response headers, and then between two chunks of the stream (the API
    /// sends `ping` events while a reply is slow to start).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl AnthropicConfig {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";
    pub const DEFAULT_MODEL: &'static str = "claude-sonnet-5-5";
    pub const DEFAULT_MAX_TOKENS: u32 = 8192;
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

    /// The public API with default limits and retries.
    pub fn new(api_key: SecretString, model: impl Into<String>) -> AnthropicConfig {
        AnthropicConfig {
            api_key,
            base_url: Self::DEFAULT_BASE_URL.to_owned(),
            model: model.into(),
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }
}

pub struct AnthropicBrain {
    config: AnthropicConfig,
    client: reqwest::Client,
    url: String,
}

impl AnthropicBrain {
    pub fn new(config: AnthropicConfig) -> Result<AnthropicBrain, BrainError> {
        let client = retry::http_client(BACKEND)?;
        let url = format!("{}/v1/messages", config.base_url.trim_end_matches('/'));
        Ok(AnthropicBrain { config, client, url })
    }

    /// The JSON body of one request.
    pub fn request_body(&self, request: &BrainRequest) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "messages": request.messages.iter().filter_map(message_json).collect::<Vec<_>>(),
            "stream": true,
        });
        if !request.system.is_empty() {
            body["system"] = json!(request.system);
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|tool| json!({"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}))
                .collect();
        }
        body
    }

    async fn attempt(&self, body: &bytes::Bytes, text: &TextSink) -> Result<BrainReply, AttemptError> {
        let key = self.config.api_key.expose();
        let request = self
            .client
            .post(&self.url)
            .header("x-api-key", key)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.clone());
        let response = retry::send(BACKEND, request, self.config.request_timeout, Some(key)).await?;
        let mut events = SseReader::new(response.bytes_stream(), MAX_EVENT_BYTES, self.config.request_timeout);
        let mut reply = ReplyState::new(text);
        loop {
            let event = match events.next_event().await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    let error = transport("the stream ended before message_stop".to_owned());
                    return Err(retry::retry_if_nothing_read(error, events.bytes_read()));
                }
                Err(SseError::EventTooLarge { limit }) => {
                    return Err(AttemptError::fatal(protocol(format!("an event exceeds {limit} bytes"))));
                }
                Err(error) => {
                    let error = transport(retry::scrub(&format!("reading the stream: {error}"), Some(key)));
                    return Err(retry::retry_if_nothing_read(error, events.bytes_read()));
                }
            };
            // Errors from here on are never retried: a retry would repeat text the user already saw.
            let scrubbed = |error| AttemptError::fatal(retry::scrub_error(error, Some(key)));
            if reply.apply(&event).await.map_err(scrubbed)? {
                return reply.finish().map_err(scrubbed);
            }
        }
    }
}

#[async_trait]
impl Brain for AnthropicBrain {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn model(&self) -> String {
        self.config.model.clone()
    }

    async fn respond(&self, request: &BrainRequest, text: &TextSink) -> Result<BrainReply, BrainError> {
        let body = bytes::Bytes::from(self.request_body(request).to_string());
        let result = self.config.retry.run(BACKEND, |_| self.attempt(&body, text)).await;
        result.map_err(|error| retry::scrub_error(error, Some(self.config.api_key.expose())))
    }
}

/// One of our messages as Messages API content blocks; `None` when nothing in it can be sent.
/// Tool results go first in their message (the API rejects text before them), and empty text
/// blocks are left out (the API rejects those too).
fn message_json(message: &ChatMessage) -> Option<Value> {
    let (results, others): (Vec<&Block>, Vec<&Block>) =
        message.content.iter().partition(|block| matches!(block, Block::ToolResult { .. }));
    let content: Vec<Value> = results
        .into_iter()
        .chain(others)
        .filter_map(|block| match block {
            Block::Text { text } if text.is_empty() => None,
            Block::Text { text } => Some(json!({"type": "text", "text": text})),
            Block::ToolUse { id, name, input } => Some(json!({"type": "tool_use", "id": id, "name": name, "input": input})),
            Block::ToolResult { tool_use_id, content, is_error } => {
                // An error result with empty content is rejected; say so in words instead.
                let content = if content.is_empty() && *is_error { "(no output)" } else { content.as_str() };
                Some(json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error}))
            }
        })
        .collect();
    if content.is_empty() {
        return None;
    }
    let role = match message.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    Some(json!({"role": role, "content": content}))
}

fn transport(message: String) -> BrainError {
    BrainError::Transport { backend: BACKEND, message }
}

fn protocol(message: String) -> BrainError {
    BrainError::Protocol { backend: BACKEND, message }
}

/// A content block being streamed.
enum Partial {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        initial_input: Value,
        json: String,
    },
    /// Thinking, server tools and block types newer than this code: ignored.
    Other,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    content_block: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// What the stream said so far.
struct ReplyState<'a> {
    sink: &'a TextSink,
    sink_open: bool,
    /// Blocks being streamed, by index. Bounded with `finished` by [`MAX_REPLY_BYTES`].
    open: BTreeMap<u64, Partial>,
    finished: BTreeMap<u64, Block>,
    reply_bytes: usize,
    stop_reason: String,
    /// Uncached, cache-write and cache-read input tokens: each reported separately, and a
    /// `message_delta` may update any of them.
    input_tokens: [u64; 3],
    output_tokens: u64,
}

impl<'a> ReplyState<'a> {
    fn new(sink: &'a TextSink) -> ReplyState<'a> {
        ReplyState {
            sink,
            sink_open: true,
            open: BTreeMap::new(),
            finished: BTreeMap::new(),
            reply_bytes: 0,
            stop_reason: String::new(),
            input_tokens: [0; 3],
            output_tokens: 0,
        }
    }

    /// Applies one event; `true` at `message_stop`.
    async fn apply(&mut self, event: &SseEvent) -> Result<bool, BrainError> {
        if event.event == "ping" {
            return Ok(false);
        }
        let parsed: Event = serde_json::from_str(&event.data)
            .map_err(|error| protocol(format!("a `{}` event is not valid JSON: {error}", event.event)))?;
        match parsed.kind.as_str() {
            "message_start" => {
                if let Some(usage) = parsed.message.as_ref().and_then(|message| message.get("usage")) {
                    self.read_usage(usage);
                }
            }
            "content_block_start" => {
                let index = required_index(&parsed)?;
                let block = parsed.content_block.unwrap_or_default();
                let partial = match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let initial = block.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
                        self.forward_text(&initial).await?;
                        Partial::Text(initial)
                    }
                    Some("tool_use") => Partial::ToolUse {
                        id: string_field(&block, "id"),
                        name: string_field(&block, "name"),
                        initial_input: block.get("input").cloned().unwrap_or_else(|| json!({})),
                        json: String::new(),
                    },
                    _ => Partial::Other,
                };
                self.open.insert(index, partial);
            }
            "content_block_delta" => {
                let index = required_index(&parsed)?;
                let delta = parsed.delta.unwrap_or_default();
                let piece = match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => delta.get("text"),
                    Some("input_json_delta") => delta.get("partial_json"),
                    _ => None,
                };
                let piece = piece.and_then(Value::as_str).unwrap_or_default();
                self.grow(piece.len())?;
                match self.open.get_mut(&index) {
                    Some(Partial::Text(text)) => {
                        text.push_str(piece);
                        self.forward_text(piece).await?;
                    }
                    Some(Partial::ToolUse { json, .. }) => json.push_str(piece),
                    Some(Partial::Other) => {}
                    None => return Err(protocol(format!("a delta for block {index}, which was never started"))),
                }
            }
            "content_block_stop" => {
                let index = required_index(&parsed)?;
                let partial = self
                    .open
                    .remove(&index)
                    .ok_or_else(|| protocol(format!("a stop for block {index}, which was never started")))?;
                if let Some(block) = finish_block(partial)? {
                    self.finished.insert(index, block);
                }
            }
            "message_delta" => {
                if let Some(reason) =
                    parsed.delta.as_ref().and_then(|delta| delta.get("stop_reason")).and_then(Value::as_str)
                {
                    self.stop_reason = reason.to_owned();
                }
                if let Some(usage) = &parsed.usage {
                    self.read_usage(usage);
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                let error = parsed.error.unwrap_or_default();
                return Err(BrainError::Stream {
                    backend: BACKEND,
                    kind: error.get("type").and_then(Value::as_str).unwrap_or("unknown_error").to_owned(),
                    message: error.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
                });
            }
            _ => {} // newer event types are to be ignored
        }
        Ok(false)
    }

    /// `message_delta` usage is cumulative: each report replaces the last.
    fn read_usage(&mut self, usage: &Value) {
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        for (slot, name) in
            ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"].iter().enumerate()
        {
            if let Some(count) = field(name) {
                self.input_tokens[slot] = count;
            }
        }
        if let Some(output) = field("output_tokens") {
            self.output_tokens = output;
        }
    }

    fn grow(&mut self, bytes: usize) -> Result<(), BrainError> {
        self.reply_bytes += bytes;
        if self.reply_bytes > MAX_REPLY_BYTES {
            return Err(protocol(format!("the reply exceeds {MAX_REPLY_BYTES} bytes")));
        }
        Ok(())
    }

    async fn forward_text(&mut self, piece: &str) -> Result<(), BrainError> {
        if piece.is_empty() || !self.sink_open {
            return Ok(());
        }
        // A closed receiver means the caller stopped watching; the reply is still wanted.
        self.sink_open = self.sink.send(piece.to_owned()).await.is_ok();
        Ok(())
    }

    fn finish(mut self) -> Result<BrainReply, BrainError> {
        // Blocks the stream never stopped: keep what is complete enough to use.
        for (index, partial) in std::mem::take(&mut self.open) {
            if let Some(block) = finish_block(partial)? {
                self.finished.insert(index, block);
            }
        }
        Ok(BrainReply {
            content: self.finished.into_values().collect(),
            stop_reason: self.stop_reason,
            usage: Usage { input_tokens: self.input_tokens.iter().sum(), output_tokens: self.output_tokens },
        })
    }
}

fn finish_block(partial: Partial) -> Result<Option<Block>, BrainError> {
    Ok(match partial {
        Partial::Text(text) if text.is_empty() => None,
        Partial::Text(text) => Some(Block::Text { text }),
        Partial::ToolUse { id, name, initial_input, json } => {
            let input = if json.trim().is_empty() {
                if initial_input.is_object() { initial_input } else { json!({}) }
            } else {
                serde_json::from_str(&json).map_err(|error| {
                    protocol(format!("the input of tool call `{name}` ({id}) is not valid JSON: {error}"))
                })?
            };
            Some(Block::ToolUse { id, name, input })
        }
        Partial::Other => None,
    })
}

fn required_index(event: &Event) -> Result<u64, BrainError> {
    event.index.ok_or_else(|| protocol(format!("a `{}` event without an index", event.kind)))
}

fn string_field(value: &Value, name: &str) -> String {
    value.get(name).and_then(Value::as_str).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::ToolSpec;

    fn brain() -> AnthropicBrain {
        let mut config = AnthropicConfig::new(SecretString::new("sk-ant-test"), "claude-test");
        config.base_url = "http://127.0.0.1:9/".to_owned();
        AnthropicBrain::new(config).unwrap()
    }

    #[test]
    fn history_maps_to_content_blocks_with_results_first() {
        let request = BrainRequest {
            system: "be brief".into(),
            messages: vec![
                ChatMessage::user_text("hi"),
                ChatMessage {
                    role: Role::Assistant,
                    content: vec![
                        Block::text(""),
                        Block::ToolUse { id: "toolu_1".into(), name: "recall".into(), input: json!({"query": "x"}) },
                    ],
                },
                ChatMessage {
                    role: Role::User,
                    content: vec![
                        Block::text("and also"),
                        Block::ToolResult { tool_use_id: "toolu_1".into(), content: String::new(), is_error: true },
                    ],
                },
                ChatMessage { role: Role::Assistant, content: vec![Block::text("")] },
            ],
            tools: vec![ToolSpec { name: "recall", description: "search", input_schema: json!({"type": "object"}) }],
        };
        let body = brain().request_body(&request);
        assert_eq!(brain().url, "http://127.0.0.1:9/v1/messages");
        assert_eq!(
            body,
            json!({
                "model": "claude-test",
                "max_tokens": 8192,
                "stream": true,
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "recall", "input": {"query": "x"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "(no output)", "is_error": true},
                        {"type": "text", "text": "and also"}
                    ]}
                ],
                "tools": [{"name": "recall", "description": "search", "input_schema": {"type": "object"}}]
            })
        );
    }

    #[test]
    fn no_system_and_no_tools_are_left_out() {
        let request =
            BrainRequest { system: String::new(), messages: vec![ChatMessage::user_text("hi")], tools: vec![] };
        let body = brain().request_body(&request);
        assert!(body.get("system").is_none() && body.get("tools").is_none());
    }

    #[tokio::test]
    async fn usage_adds_cached_input_and_takes_the_last_output_count() {
        let (sender, _receiver) = tokio::sync::mpsc::channel(8);
        let mut state = ReplyState::new(&sender);
        let start = json!({"type": "message_start", "message": {"usage":
            {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 85, "output_tokens": 1}}});
        state.apply(&SseEvent { event: "message_start".into(), data: start.to_string() }).await.unwrap();
        let delta =
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 31}});
        state.apply(&SseEvent { event: "message_delta".into(), data: delta.to_string() }).await.unwrap();
        let reply = state.finish().unwrap();
        assert_eq!(reply.usage, Usage { input_tokens: 100, output_tokens: 31 });
        assert_eq!(reply.stop_reason, "end_turn");
    }

    #[tokio::test]
    async fn a_tool_call_without_deltas_gets_an_empty_object_and_broken_json_names_the_tool() {
        let (sender, _receiver) = tokio::sync::mpsc::channel(8);
        let event = |name: &str, data: Value| SseEvent { event: name.to_owned(), data: data.to_string() };
        let mut state = ReplyState::new(&sender);
        let start = json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "list_capabilities", "input": {}}});
        state.apply(&event("content_block_start", start)).await.unwrap();
        state.apply(&event("content_block_stop", json!({"type": "content_block_stop", "index": 0}))).await.unwrap();
        let start = json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_10", "name": "remember", "input": {}}});
        state.apply(&event("content_block_start", start)).await.unwrap();
        let delta = json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{\"key\": "}});
        state.apply(&event("content_block_delta", delta)).await.unwrap();
        let error = state
            .apply(&event("content_block_stop", json!({"type": "content_block_stop", "index": 1})))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("`remember` (toolu_10)"), "{error}");
        assert_eq!(
            state.finished.get(&0),
            Some(&Block::ToolUse { id: "toolu_9".into(), name: "list_capabilities".into(), input: json!({}) })
        );
    }
}
