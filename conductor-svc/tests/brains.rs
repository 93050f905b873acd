//! The Anthropic and OpenAI-compatible brains against in-process fakes that speak the real wire
//! format: streaming, the tool-use round trip, retries and the errors a user would see.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor_svc::brain::anthropic::{AnthropicBrain, AnthropicConfig};
use conductor_svc::brain::openai::{OpenAiBrain, OpenAiConfig};
use conductor_svc::brain::retry::RetryPolicy;
use conductor_svc::brain::{Block, Brain, BrainError, BrainReply, BrainRequest, ChatMessage, Role, tools};
use serde_json::{Value, json};
use service_kit::secret::SecretString;
use support::fake_anthropic::{self, FakeAnthropic};
use support::fake_openai::{self, CallStyle, FakeOpenAi};
use tokio::sync::mpsc;

const ANTHROPIC_KEY: &str = "sk-ant-api03-TESTKEY-do-not-print-0123456789";
const OPENAI_KEY: &str = "sk-local-TESTKEY-do-not-print-9876543210";

/// Retries quick enough for tests; `retry-after` is still honoured as sent.
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        max_total_wait: Duration::from_secs(5),
    }
}

fn anthropic(fake: &FakeAnthropic) -> AnthropicBrain {
    let mut config = AnthropicConfig::new(SecretString::new(ANTHROPIC_KEY), "claude-sonnet-5-5");
    config.base_url = fake.base_url();
    config.max_tokens = 1024;
    config.request_timeout = Duration::from_secs(10);
    config.retry = fast_retries();
    AnthropicBrain::new(config).unwrap()
}

fn openai(fake: &FakeOpenAi, key: Option<&str>) -> OpenAiBrain {
    let mut config = OpenAiConfig::new(fake.base_url(), "qwen3:8b", key.map(SecretString::new));
    config.request_timeout = Duration::from_secs(10);
    config.retry = fast_retries();
    OpenAiBrain::new(config).unwrap()
}

fn ask(text: &str) -> BrainRequest {
    BrainRequest { system: "You are Stu.".into(), messages: vec![ChatMessage::user_text(text)], tools: tools::all() }
}

/// Calls the brain and collects the text deltas it streamed.
async fn respond(brain: &dyn Brain, request: &BrainRequest) -> (Result<BrainReply, BrainError>, Vec<String>) {
    let (sender, mut receiver) = mpsc::channel(4);
    let collector = tokio::spawn(async move {
        let mut deltas = Vec::new();
        while let Some(delta) = receiver.recv().await {
            deltas.push(delta);
        }
        deltas
    });
    let result = brain.respond(request, &sender).await;
    drop(sender);
    (result, collector.await.unwrap())
}

fn assert_no_key(error: &BrainError, key: &str) {
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains(key), "the API key leaked: {shown}");
    }
}

fn tool_names(tools: &Value, path: &str) -> Vec<String> {
    tools.as_array().unwrap().iter().map(|tool| tool.pointer(path).unwrap().as_str().unwrap().to_owned()).collect()
}

// ---------------------------------------------------------------- Anthropic

#[tokio::test]
async fn anthropic_text_streams_as_several_deltas_in_order() {
    let fake = FakeAnthropic::start().await;
    let text = "Hello! I am Stu, and I can start workers for you.";
    fake.push_text(text);

    let (reply, deltas) = respond(&anthropic(&fake), &ask("hi")).await;
    let reply = reply.unwrap();

    assert!(deltas.len() >= 5, "expected several deltas, got {deltas:?}");
    assert_eq!(deltas.concat(), text);
    assert_eq!(reply.text(), text);
    assert_eq!(reply.content, vec![Block::text(text)]);
    assert_eq!(reply.stop_reason, "end_turn");
    assert!(reply.usage.input_tokens > 0 && reply.usage.output_tokens > 1, "{:?}", reply.usage);
}

#[tokio::test]
async fn anthropic_text_reaches_the_sink_before_the_reply_ends() {
    let fake = FakeAnthropic::start().await;
    let hold = fake.push_text_held("First words, then the rest.");
    let brain = Arc::new(anthropic(&fake));
    let (sender, mut receiver) = mpsc::channel(16);
    let call = tokio::spawn({
        let brain = brain.clone();
        async move { brain.respond(&ask("hi"), &sender).await }
    });

    let first =
        tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await.expect("a delta while the reply is held");
    assert_eq!(first.as_deref(), Some("First "));
    assert!(!call.is_finished());
    hold.release();
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply.text(), "First words, then the rest.");
}

#[tokio::test]
async fn anthropic_tool_use_round_trip() {
    let fake = FakeAnthropic::start().await;
    let input = json!({"task": "Write \"hello.rs\" that prints a greeting, then run it."});
    let tool_use_id = fake.push_text_then_tool_use("I'll start a worker.", tools::SPAWN_WORKER, input.clone());
    fake.push_text("The worker finished: it printed a greeting.");
    let brain = anthropic(&fake);

    let mut request = ask("please write hello.rs");
    let (first, deltas) = respond(&brain, &request).await;
    let first = first.unwrap();
    assert_eq!(deltas.concat(), "I'll start a worker.");
    assert_eq!(first.stop_reason, "tool_use");
    assert_eq!(
        first.content,
        vec![
            Block::text("I'll start a worker."),
            Block::ToolUse { id: tool_use_id.clone(), name: tools::SPAWN_WORKER.into(), input: input.clone() },
        ]
    );

    request.messages.push(ChatMessage { role: Role::Assistant, content: first.content.clone() });
    request.messages.push(ChatMessage {
        role: Role::User,
        content: vec![Block::ToolResult {
            tool_use_id: tool_use_id.clone(),
            content: "exit 0".into(),
            is_error: false,
        }],
    });
    let (second, _) = respond(&brain, &request).await;
    assert_eq!(second.unwrap().text(), "The worker finished: it printed a greeting.");

    let requests = fake.message_requests();
    assert_eq!(requests.len(), 2);
    for sent in &requests {
        assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC_KEY));
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.body["model"], "claude-sonnet-5-5");
        assert_eq!(sent.body["max_tokens"], 1024);
        assert_eq!(sent.body["stream"], true);
        assert_eq!(sent.body["system"], "You are Stu.");
        let expected: Vec<String> = tools::all().iter().map(|tool| tool.name.to_owned()).collect();
        assert_eq!(tool_names(&sent.body["tools"], "/name"), expected);
        assert_eq!(sent.body["tools"][0]["input_schema"], tools::all()[0].input_schema);
        assert!(sent.body["tools"][0]["description"].as_str().unwrap().starts_with("Start a worker"));
    }
    let messages = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"][1],
        json!({"type": "tool_use", "id": tool_use_id, "name": "spawn_worker", "input": input})
    );
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": "exit 0", "is_error": false}]})
    );
}

#[tokio::test]
async fn anthropic_honours_retry_after_on_429() {
    let fake = FakeAnthropic::start().await;
    let body = fake_anthropic::error_body(
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
    );
    fake.push_error(429, &[("retry-after", "1")], body);
    fake.push_text("made it");

    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    assert_eq!(reply.unwrap().text(), "made it");
    let requests = fake.message_requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_millis(950), "retried after only {waited:?}");
}

#[tokio::test]
async fn anthropic_retries_overloaded_529_with_backoff() {
    let fake = FakeAnthropic::start().await;
    fake.push_error(529, &[], fake_anthropic::error_body("overloaded_error", "Overloaded"));
    fake.push_error(500, &[], fake_anthropic::error_body("api_error", "Internal server error"));
    fake.push_text("third time lucky");

    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    assert_eq!(reply.unwrap().text(), "third time lucky");
    let requests = fake.message_requests();
    assert_eq!(requests.len(), 3);
    // Backoff 20 ms then 40 ms, jittered down to at most half.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(10));
    assert!(requests[2].at - requests[1].at >= Duration::from_millis(20));
}

#[tokio::test]
async fn anthropic_gives_up_after_max_attempts_and_says_so() {
    let fake = FakeAnthropic::start().await;
    for _ in 0..3 {
        fake.push_error(529, &[], fake_anthropic::error_body("overloaded_error", "Overloaded"));
    }
    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Http { status: 529, .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "anthropic returned HTTP 529: overloaded_error: Overloaded (request id req_fake) (gave up after 3 attempts)"
    );
    assert_eq!(fake.message_requests().len(), 3);
}

#[tokio::test]
async fn anthropic_does_not_retry_a_bad_request() {
    let fake = FakeAnthropic::start().await;
    let message = "max_tokens: 999999 > 128000, which is the maximum allowed number of output tokens";
    fake.push_error(400, &[], fake_anthropic::error_body("invalid_request_error", message));

    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Http { status: 400, .. }), "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains("HTTP 400") && shown.contains(message), "{shown}");
    assert_eq!(fake.message_requests().len(), 1);
}

#[tokio::test]
async fn anthropic_does_not_retry_spend_limits() {
    let fake = FakeAnthropic::start().await;
    let spend_limit = json!({"type": "error", "error": {"type": "rate_limit_error",
        "message": "You have reached your workspace spend limit.",
        "details": {"error_code": "enforced_spend_limit_reached"}}, "request_id": "req_1"});
    fake.push_error(429, &[], spend_limit);
    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(error.to_string().contains("spend limit, quota or credit exhausted"), "{error}");
    assert_eq!(fake.message_requests().len(), 1);

    let fake = FakeAnthropic::start().await;
    let credit = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.";
    fake.push_error(400, &[], fake_anthropic::error_body("invalid_request_error", credit));
    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    assert!(reply.unwrap_err().to_string().contains(credit));
    assert_eq!(fake.message_requests().len(), 1);
}

#[tokio::test]
async fn anthropic_error_event_mid_stream_fails_the_call_without_retry() {
    let fake = FakeAnthropic::start().await;
    fake.push_stream_error("Let me think about", "overloaded_error", "Overloaded");
    fake.push_text("must not be fetched");

    let (reply, deltas) = respond(&anthropic(&fake), &ask("hi")).await;
    let error = reply.unwrap_err();
    match &error {
        BrainError::Stream { kind, message, .. } => {
            assert_eq!((kind.as_str(), message.as_str()), ("overloaded_error", "Overloaded"))
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert_eq!(deltas.concat(), "Let me think about");
    assert_eq!(fake.message_requests().len(), 1);
}

#[tokio::test]
async fn anthropic_stream_cut_short_is_an_error() {
    let fake = FakeAnthropic::start().await;
    let start = json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
        "model": "m", "content": [], "stop_reason": null, "usage": {"input_tokens": 3, "output_tokens": 1}}});
    fake.push(fake_anthropic::Reply::RawSse(format!("event: message_start\ndata: {start}\n\n")));

    let (reply, _) = respond(&anthropic(&fake), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Transport { .. }), "{error:?}");
    assert!(error.to_string().contains("before message_stop"), "{error}");
    assert_eq!(fake.message_requests().len(), 1);
}

#[tokio::test]
async fn anthropic_invalid_tool_input_names_the_tool() {
    let fake = FakeAnthropic::start().await;
    fake.push_tool_use_raw_input(tools::REMEMBER, "{\"key\": \"favourite colour\", \"content\": ");
    let (reply, _) = respond(&anthropic(&fake), &ask("remember blue")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Protocol { .. }), "{error:?}");
    assert!(error.to_string().contains("`remember`"), "{error}");
}

#[tokio::test]
async fn anthropic_api_key_never_appears_in_errors() {
    let fake = FakeAnthropic::start().await;
    // A server (or a gateway in front of it) that echoes the key back in every way it can.
    let echo = format!("invalid x-api-key {ANTHROPIC_KEY}");
    fake.push_error(401, &[], fake_anthropic::error_body("authentication_error", &echo));
    fake.push_error(400, &[("request-id", ANTHROPIC_KEY)], fake_anthropic::error_body("invalid_request_error", &echo));
    fake.push_stream_error("", ANTHROPIC_KEY, &echo);
    let brain = anthropic(&fake);
    for _ in 0..3 {
        let (reply, _) = respond(&brain, &ask("hi")).await;
        let error = reply.unwrap_err();
        assert!(error.to_string().contains("[redacted]"), "{error}");
        assert_no_key(&error, ANTHROPIC_KEY);
    }

    // Nobody listening: a transport error, retried, then reported without the key.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = AnthropicConfig::new(SecretString::new(ANTHROPIC_KEY), "claude-sonnet-5-5");
    config.base_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    config.retry = fast_retries();
    assert!(!format!("{config:?}").contains(ANTHROPIC_KEY));
    let (reply, _) = respond(&AnthropicBrain::new(config).unwrap(), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Transport { .. }), "{error:?}");
    assert!(error.to_string().contains("gave up after 3 attempts"), "{error}");
    assert_no_key(&error, ANTHROPIC_KEY);
}

#[tokio::test]
async fn anthropic_fake_answers_unscripted_calls_and_rejects_unpaired_tool_results() {
    let fake = FakeAnthropic::start().await;
    let brain = anthropic(&fake);
    let (reply, _) = respond(&brain, &ask("hi")).await;
    assert_eq!(reply.unwrap().text(), fake_anthropic::DEFAULT_REPLY);

    // A history the real API rejects: the fake must reject it too, and the brain must not retry.
    let mut request = ask("hi");
    request.messages.push(ChatMessage {
        role: Role::Assistant,
        content: vec![Block::ToolUse { id: "toolu_x".into(), name: "recall".into(), input: json!({}) }],
    });
    request.messages.push(ChatMessage::user_text("no result here"));
    let (reply, _) = respond(&brain, &request).await;
    let error = reply.unwrap_err().to_string();
    assert!(error.contains("HTTP 400") && error.contains("without `tool_result` blocks"), "{error}");
    assert_eq!(fake.message_requests().len(), 2);
}

// ---------------------------------------------------------------- OpenAI-compatible

#[tokio::test]
async fn openai_text_streams_as_several_deltas_without_auth_when_keyless() {
    let fake = FakeOpenAi::start().await;
    let text = "Sure, here is a short answer from a local model.";
    fake.push_text(text);

    let (reply, deltas) = respond(&openai(&fake, None), &ask("hi")).await;
    let reply = reply.unwrap();
    assert!(deltas.len() >= 5, "expected several deltas, got {deltas:?}");
    assert_eq!(deltas.concat(), text);
    assert_eq!(reply.content, vec![Block::text(text)]);
    assert_eq!(reply.stop_reason, "stop");
    assert!(reply.usage.input_tokens > 0 && reply.usage.output_tokens > 0, "{:?}", reply.usage);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].header("authorization"), None);
    assert_eq!(requests[0].body["model"], "qwen3:8b");
    assert_eq!(requests[0].body["stream"], true);
    assert_eq!(requests[0].body["messages"][0], json!({"role": "system", "content": "You are Stu."}));
    assert_eq!(requests[0].body["messages"][1], json!({"role": "user", "content": "hi"}));
}

#[tokio::test]
async fn openai_tool_call_round_trip_with_bearer_key() {
    let fake = FakeOpenAi::start().await;
    fake.require_api_key(OPENAI_KEY);
    let arguments = json!({"task": "List the files in the repository root."});
    let call_id = fake.push_tool_call(tools::SPAWN_WORKER, arguments.clone());
    fake.push_text("Here are the files.");
    let brain = openai(&fake, Some(OPENAI_KEY));

    let mut request = ask("what files are there?");
    let (first, _) = respond(&brain, &request).await;
    let first = first.unwrap();
    assert_eq!(first.stop_reason, "tool_calls");
    assert_eq!(
        first.content,
        vec![Block::ToolUse { id: call_id.clone(), name: tools::SPAWN_WORKER.into(), input: arguments.clone() }]
    );

    request.messages.push(ChatMessage { role: Role::Assistant, content: first.content.clone() });
    request.messages.push(ChatMessage {
        role: Role::User,
        content: vec![Block::ToolResult {
            tool_use_id: call_id.clone(),
            content: "README.md\nsrc/".into(),
            is_error: false,
        }],
    });
    let (second, _) = respond(&brain, &request).await;
    assert_eq!(second.unwrap().text(), "Here are the files.");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for sent in &requests {
        assert_eq!(sent.header("authorization"), Some(format!("Bearer {OPENAI_KEY}").as_str()));
        let expected: Vec<String> = tools::all().iter().map(|tool| tool.name.to_owned()).collect();
        assert_eq!(tool_names(&sent.body["tools"], "/function/name"), expected);
        assert_eq!(sent.body["tools"][0]["type"], "function");
        assert_eq!(sent.body["tools"][0]["function"]["parameters"], tools::all()[0].input_schema);
    }
    let messages = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    let sent_call = &messages[2]["tool_calls"][0];
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(
        (sent_call["id"].as_str(), sent_call["function"]["name"].as_str()),
        (Some(call_id.as_str()), Some("spawn_worker"))
    );
    let sent_arguments: Value = serde_json::from_str(sent_call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(sent_arguments, arguments);
    assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": call_id, "content": "README.md\nsrc/"}));
}

#[tokio::test]
async fn openai_accepts_whole_parallel_calls_the_ollama_way() {
    let fake = FakeOpenAi::start().await;
    let ids = fake.push_tool_calls(
        Some("Checking two things."),
        &[(tools::RECALL, r#"{"query":"deploy"}"#), (tools::LIST_CAPABILITIES, "")],
        CallStyle::Whole,
    );
    let (reply, _) = respond(&openai(&fake, None), &ask("hi")).await;
    assert_eq!(
        reply.unwrap().content,
        vec![
            Block::text("Checking two things."),
            Block::ToolUse { id: ids[0].clone(), name: tools::RECALL.into(), input: json!({"query": "deploy"}) },
            Block::ToolUse { id: ids[1].clone(), name: tools::LIST_CAPABILITIES.into(), input: json!({}) },
        ]
    );
}

#[tokio::test]
async fn openai_honours_retry_after_on_429() {
    let fake = FakeOpenAi::start().await;
    let body = fake_openai::error_body(
        "rate_limit_exceeded",
        "Rate limit reached, try again in 1s",
        json!("rate_limit_exceeded"),
    );
    fake.push_error(429, &[("retry-after", "1")], body);
    fake.push_text("made it");

    let (reply, _) = respond(&openai(&fake, None), &ask("hi")).await;
    assert_eq!(reply.unwrap().text(), "made it");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_millis(950), "retried after only {waited:?}");
}

#[tokio::test]
async fn openai_retries_server_errors() {
    let fake = FakeOpenAi::start().await;
    fake.push_error(503, &[], json!({"error": {"message": "model is loading", "type": "unavailable", "code": 503}}));
    fake.push_text("ready now");
    let started = Instant::now();
    let (reply, _) = respond(&openai(&fake, None), &ask("hi")).await;
    assert_eq!(reply.unwrap().text(), "ready now");
    assert_eq!(fake.requests().len(), 2);
    assert!(started.elapsed() >= Duration::from_millis(10));
}

#[tokio::test]
async fn openai_does_not_retry_a_bad_request_or_an_exhausted_quota() {
    let fake = FakeOpenAi::start().await;
    // Older vLLM's flat error shape.
    let message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.";
    fake.push_error(
        400,
        &[],
        json!({"object": "error", "message": message, "type": "BadRequestError", "param": null, "code": 400}),
    );
    let (reply, _) = respond(&openai(&fake, None), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Http { status: 400, .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("openai returned HTTP 400: BadRequestError: {message}"));
    assert_eq!(fake.requests().len(), 1);

    let fake = FakeOpenAi::start().await;
    let quota = "You exceeded your current quota, please check your plan and billing details.";
    fake.push_error(429, &[], fake_openai::error_body("insufficient_quota", quota, json!("insufficient_quota")));
    let (reply, _) = respond(&openai(&fake, None), &ask("hi")).await;
    assert!(reply.unwrap_err().to_string().contains(quota));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn openai_invalid_arguments_name_the_tool() {
    let fake = FakeOpenAi::start().await;
    fake.push_tool_calls(None, &[(tools::REMEMBER, "{'key': 'single quotes are not JSON'}")], CallStyle::Fragments);
    let (reply, _) = respond(&openai(&fake, None), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(error, BrainError::Protocol { .. }), "{error:?}");
    assert!(error.to_string().contains("`remember`"), "{error}");
}

#[tokio::test]
async fn openai_error_chunk_mid_stream_fails_the_call() {
    let fake = FakeOpenAi::start().await;
    fake.push_stream_error("Partial answer", "CUDA out of memory");
    let (reply, deltas) = respond(&openai(&fake, None), &ask("hi")).await;
    let error = reply.unwrap_err();
    assert!(matches!(&error, BrainError::Stream { message, .. } if message == "CUDA out of memory"), "{error:?}");
    assert_eq!(deltas.concat(), "Partial answer");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn openai_api_key_never_appears_in_errors() {
    let fake = FakeOpenAi::start().await;
    let echo = format!("Incorrect API key provided: {OPENAI_KEY}.");
    fake.push_error(401, &[], fake_openai::error_body("invalid_request_error", &echo, json!("invalid_api_key")));
    fake.push_stream_error("", &echo);
    let brain = openai(&fake, Some(OPENAI_KEY));
    for _ in 0..2 {
        let (reply, _) = respond(&brain, &ask("hi")).await;
        let error = reply.unwrap_err();
        assert!(error.to_string().contains("[redacted]"), "{error}");
        assert_no_key(&error, OPENAI_KEY);
    }
    assert_eq!(fake.requests().len(), 2);
}
