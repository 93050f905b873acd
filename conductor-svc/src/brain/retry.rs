//! When a streaming brain call is worth repeating, and how long to wait first. Shared by the
//! `anthropic` and `openai` backends.
//!
//! Retried: 429 (after its `retry-after`, else backoff), 529 and other 5xx, and transport failures
//! that happened before any byte of the reply arrived. Never retried: other 4xx, spend-limit or
//! billing errors (they last until someone pays or the month turns), anything after the reply
//! started streaming (its text already reached the user), and errors the stream itself reported.
//!
//! Also the HTTP plumbing both backends share: [`send`] turns an error response into an
//! [`AttemptError`] with a clear message, and [`scrub`] keeps the API key out of every message.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::BrainError;

/// How often and how patiently a backend retries one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff (not of a server's `retry-after`).
    pub max_backoff: Duration,
    /// Upper bound of all waiting in one call. A `retry-after` that would cross it ends the call
    /// right away instead of sleeping.
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 0.5 s doubling up to 8 s (the Anthropic SDK's range), at most 60 s of waiting.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_total_wait: Duration::from_secs(60),
        }
    }
}

/// Whether a failed attempt may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Repeat, after the server's `retry-after` when it gave one, else after a backoff.
    Retry {
        after: Option<Duration>,
    },
    Final,
}

/// A failed attempt and whether it may be repeated.
#[derive(Debug)]
pub struct AttemptError {
    pub error: BrainError,
    pub verdict: Verdict,
}

impl AttemptError {
    pub fn retryable(error: BrainError, after: Option<Duration>) -> AttemptError {
        AttemptError { error, verdict: Verdict::Retry { after } }
    }

    pub fn fatal(error: BrainError) -> AttemptError {
        AttemptError { error, verdict: Verdict::Final }
    }
}

/// What an HTTP error response said, as far as retrying cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpFailure {
    pub status: u16,
    /// From `retry-after-ms` or `retry-after` (seconds).
    pub retry_after: Option<Duration>,
    /// `x-should-retry: false`: the server says a retry cannot help.
    pub server_says_no_retry: bool,
    /// A spend limit, empty credit balance or exhausted quota (see [`is_spend_limit`]).
    pub spend_limit: bool,
}

/// Whether an error status may be retried.
pub fn classify_http(failure: &HttpFailure) -> Verdict {
    if failure.spend_limit || failure.server_says_no_retry {
        return Verdict::Final;
    }
    match failure.status {
        // 529 is Anthropic's "overloaded"; the whole 5xx range is the server's problem.
        429 | 500..=599 => Verdict::Retry { after: failure.retry_after },
        _ => Verdict::Final,
    }
}

/// Whether an error body describes money rather than load, so waiting minutes cannot help.
/// Anthropic: `billing_error` (402); 429 with `error.details.error_code ==
/// "enforced_spend_limit_reached"`; 400 "Your credit balance is too low to access the Anthropic
/// API…" and 400 "You have reached your specified API usage limits. You will regain access on …";
/// 429 "Extra usage is required for long context requests." / "Usage credits are required …".
/// OpenAI: 429 `insufficient_quota` ("You exceeded your current quota, please check your plan and
/// billing details").
pub fn is_spend_limit(error_type: Option<&str>, error_code: Option<&str>, message: &str) -> bool {
    const TYPES_AND_CODES: [&str; 3] = ["billing_error", "enforced_spend_limit_reached", "insufficient_quota"];
    const PHRASES: [&str; 7] = [
        "credit balance",
        "spend limit",
        "spending limit",
        "api usage limits",
        "extra usage is required",
        "usage credits are required",
        "exceeded your current quota",
    ];
    if [error_type, error_code].into_iter().flatten().any(|value| TYPES_AND_CODES.contains(&value)) {
        return true;
    }
    let message = message.to_ascii_lowercase();
    PHRASES.iter().any(|phrase| message.contains(phrase))
}

/// Reads `retry-after-ms`, then `retry-after` in seconds (an HTTP date is ignored: backoff applies).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    if let Some(millis) = header("retry-after-ms").and_then(|value| value.parse::<f64>().ok()) {
        return seconds(millis / 1000.0);
    }
    header("retry-after").and_then(|value| value.parse::<f64>().ok()).and_then(seconds)
}

fn seconds(value: f64) -> Option<Duration> {
    (value.is_finite() && value >= 0.0).then(|| Duration::try_from_secs_f64(value).ok()).flatten()
}

/// `x-should-retry: false` (Anthropic sends it; `true` is not honoured beyond [`classify_http`]).
pub fn server_says_no_retry(headers: &reqwest::header::HeaderMap) -> bool {
    headers.get("x-should-retry").is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"false"))
}

impl RetryPolicy {
    /// The jittered backoff before retry number `retry` (0 for the first retry): uniformly between
    /// half and all of `initial_backoff * 2^retry`, capped at `max_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let full = self.initial_backoff.saturating_mul(2u32.saturating_pow(retry.min(31))).min(self.max_backoff);
        let half = full / 2;
        if full.is_zero() {
            return Duration::ZERO;
        }
        rand::rng().random_range(half..=full)
    }

    /// Runs `attempt` (given the attempt number, from 1) until it succeeds, fails for good, or the
    /// attempts or the waiting budget run out. The last error is returned, noting the attempt
    /// count when there was more than one.
    pub async fn run<T, F, Fut>(&self, backend: &'static str, mut attempt: F) -> Result<T, BrainError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let max_attempts = self.max_attempts.max(1);
        let mut waited = Duration::ZERO;
        let mut number = 1;
        loop {
            let failure = match attempt(number).await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let Verdict::Retry { after } = failure.verdict else {
                return Err(with_attempts(failure.error, number));
            };
            if number >= max_attempts {
                return Err(with_attempts(failure.error, number));
            }
            let wait = after.unwrap_or_else(|| self.backoff(number - 1));
            if waited + wait > self.max_total_wait {
                tracing::warn!(
                    backend,
                    attempt = number,
                    ?wait,
                    ?waited,
                    "not retrying: the wait would exceed the budget"
                );
                return Err(with_attempts(failure.error, number));
            }
            tracing::warn!(backend, attempt = number, ?wait, error = %failure.error, "retrying brain call");
            tokio::time::sleep(wait).await;
            waited += wait;
            number += 1;
        }
    }
}

/// Longest error body read; the rest is ignored. Error bodies are short JSON, but a proxy may
/// answer with a whole HTML page.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest upstream text kept in an error message.
const MAX_ERROR_MESSAGE_CHARS: usize = 1_000;

/// Sends `request` and returns the response when its status is a success and it streams events.
/// Anything else becomes an [`AttemptError`]: transport failures and timeouts are retryable, error
/// statuses are classified by [`classify_http`]. `secret` is scrubbed from every message.
pub async fn send(
    backend: &'static str,
    request: reqwest::RequestBuilder,
    timeout: Duration,
    secret: Option<&str>,
) -> Result<reqwest::Response, AttemptError> {
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => {
            let message = format!("no response within {timeout:?}");
            return Err(AttemptError::retryable(BrainError::Transport { backend, message }, None));
        }
        Ok(Err(error)) => {
            let transient = !error.is_builder();
            let error = BrainError::Transport { backend, message: scrub(&error_chain(&error), secret) };
            return Err(if transient { AttemptError::retryable(error, None) } else { AttemptError::fatal(error) });
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if response.status().is_success() {
        let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
        if content_type.is_some_and(|value| value.starts_with("application/json")) {
            let body = read_bounded(response, timeout).await;
            let message = format!("expected an event stream, got JSON: {}", clip(&scrub(&body, secret)));
            return Err(AttemptError::fatal(BrainError::Protocol { backend, message }));
        }
        return Ok(response);
    }
    let body = read_bounded(response, timeout).await;
    let parsed = ErrorBody::parse(&body);
    let failure = HttpFailure {
        status,
        retry_after: retry_after(&headers),
        server_says_no_retry: server_says_no_retry(&headers),
        spend_limit: is_spend_limit(parsed.error_type.as_deref(), parsed.code.as_deref(), &parsed.message),
    };
    let mut message = match &parsed.error_type {
        Some(error_type) => format!("{error_type}: {}", parsed.message),
        None => parsed.message.clone(),
    };
    if message.trim().is_empty() {
        message = "(no error message)".to_owned();
    }
    message = clip(&message);
    if failure.spend_limit {
        message.push_str(" [spend limit, quota or credit exhausted: not retried]");
    }
    let request_id = headers.get("request-id").or_else(|| headers.get("x-request-id")).and_then(|v| v.to_str().ok());
    if let Some(request_id) = request_id.map(str::to_owned).or(parsed.request_id) {
        message.push_str(&format!(" (request id {request_id})"));
    }
    let error =
        BrainError::Http { backend, status, message: scrub(&message, secret), retry_after: failure.retry_after };
    Err(AttemptError { error, verdict: classify_http(&failure) })
}

/// The fields of an error body both APIs share: Anthropic's
/// `{"type":"error","error":{"type","message","details":{"error_code"}},"request_id"}`, OpenAI's
/// `{"error":{"message","type","param","code"}}` and older vLLM's flat `{"object":"error","message","type","code"}`.
#[derive(Debug, Default, PartialEq)]
struct ErrorBody {
    error_type: Option<String>,
    code: Option<String>,
    message: String,
    request_id: Option<String>,
}

impl ErrorBody {
    fn parse(body: &str) -> ErrorBody {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
            return ErrorBody { message: body.trim().to_owned(), ..ErrorBody::default() };
        };
        let string = |value: Option<&serde_json::Value>| match value {
            Some(serde_json::Value::String(text)) => Some(text.clone()),
            Some(serde_json::Value::Number(number)) => Some(number.to_string()),
            _ => None,
        };
        let error = match json.get("error") {
            Some(serde_json::Value::String(message)) => {
                return ErrorBody { message: message.clone(), ..ErrorBody::default() };
            }
            Some(error @ serde_json::Value::Object(_)) => error,
            _ => &json,
        };
        ErrorBody {
            error_type: string(error.get("type")).filter(|error_type| error_type != "error"),
            code: string(error.get("code")).or_else(|| string(error.pointer("/details/error_code"))),
            message: string(error.get("message")).unwrap_or_else(|| body.trim().to_owned()),
            request_id: string(json.get("request_id")),
        }
    }
}

/// Reads at most [`MAX_ERROR_BODY_BYTES`] of a body, giving up quietly on errors or after `timeout`.
async fn read_bounded(mut response: reqwest::Response, timeout: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ERROR_BODY_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == MAX_ERROR_BODY_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The HTTP client a backend sends with.
pub fn http_client(backend: &'static str) -> Result<reqwest::Client, BrainError> {
    reqwest::Client::builder().build().map_err(|error| BrainError::Transport {
        backend,
        message: format!("cannot build an HTTP client: {}", error_chain(&error)),
    })
}

/// A break before any byte arrived is like a refused connection; after that, text may already
/// have reached the user, so repeating the call would repeat it.
pub fn retry_if_nothing_read(error: BrainError, bytes_read: u64) -> AttemptError {
    if bytes_read == 0 { AttemptError::retryable(error, None) } else { AttemptError::fatal(error) }
}

/// An error and its causes: reqwest's own `Display` leaves out why a connection failed.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

/// `text` with every occurrence of `secret` replaced, so a server that echoes the key (or a URL
/// that carries it) cannot leak it into logs or chat.
pub fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "[redacted]"),
        _ => text.to_owned(),
    }
}

/// `error` with `secret` scrubbed from all its text: the last guard before an error leaves a backend.
pub fn scrub_error(error: BrainError, secret: Option<&str>) -> BrainError {
    match error {
        BrainError::Http { backend, status, message, retry_after } => {
            BrainError::Http { backend, status, message: scrub(&message, secret), retry_after }
        }
        BrainError::Transport { backend, message } => {
            BrainError::Transport { backend, message: scrub(&message, secret) }
        }
        BrainError::Protocol { backend, message } => BrainError::Protocol { backend, message: scrub(&message, secret) },
        BrainError::Stream { backend, kind, message } => {
            BrainError::Stream { backend, kind: scrub(&kind, secret), message: scrub(&message, secret) }
        }
    }
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn with_attempts(error: BrainError, attempts: u32) -> BrainError {
    if attempts <= 1 {
        return error;
    }
    let note = format!(" (gave up after {attempts} attempts)");
    match error {
        BrainError::Http { backend, status, message, retry_after } => {
            BrainError::Http { backend, status, message: message + &note, retry_after }
        }
        BrainError::Transport { backend, message } => BrainError::Transport { backend, message: message + &note },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_total_wait: Duration::from_secs(5),
        }
    }

    fn http(status: u16) -> BrainError {
        BrainError::Http { backend: "test", status, message: "boom".into(), retry_after: None }
    }

    #[test]
    fn statuses_are_classified() {
        let verdict = |status| classify_http(&HttpFailure { status, ..HttpFailure::default() });
        for status in [429, 500, 502, 503, 504, 529] {
            assert_eq!(verdict(status), Verdict::Retry { after: None }, "{status}");
        }
        for status in [400, 401, 402, 403, 404, 408, 409, 413, 422] {
            assert_eq!(verdict(status), Verdict::Final, "{status}");
        }
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify_http(&HttpFailure { status: 429, retry_after: after, ..HttpFailure::default() }),
            Verdict::Retry { after }
        );
        assert_eq!(
            classify_http(&HttpFailure { status: 429, spend_limit: true, ..HttpFailure::default() }),
            Verdict::Final
        );
        assert_eq!(
            classify_http(&HttpFailure { status: 503, server_says_no_retry: true, ..HttpFailure::default() }),
            Verdict::Final
        );
    }

    #[test]
    fn spend_limits_are_recognised_and_rate_limits_are_not() {
        assert!(is_spend_limit(Some("rate_limit_error"), Some("enforced_spend_limit_reached"), "limit"));
        assert!(is_spend_limit(Some("billing_error"), None, "x"));
        assert!(is_spend_limit(Some("insufficient_quota"), Some("insufficient_quota"), "x"));
        assert!(is_spend_limit(
            Some("invalid_request_error"),
            None,
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."
        ));
        assert!(is_spend_limit(
            Some("invalid_request_error"),
            None,
            "You have reached your specified API usage limits. You will regain access on 2026-04-01 at 00:00 UTC."
        ));
        assert!(is_spend_limit(Some("rate_limit_error"), None, "Extra usage is required for long context requests."));
        assert!(!is_spend_limit(
            Some("rate_limit_error"),
            None,
            "Number of request tokens has exceeded your per-minute rate limit"
        ));
        assert!(!is_spend_limit(Some("overloaded_error"), None, "Overloaded"));
    }

    #[test]
    fn retry_after_headers_are_read() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.clear();
        headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "-1".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
        headers.insert("x-should-retry", "False".parse().unwrap());
        assert!(server_says_no_retry(&headers));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let policy = RetryPolicy::default();
        for _ in 0..50 {
            let first = policy.backoff(0);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500), "{first:?}");
            let third = policy.backoff(2);
            assert!(third >= Duration::from_secs(1) && third <= Duration::from_secs(2), "{third:?}");
            let late = policy.backoff(40);
            assert!(late >= Duration::from_secs(4) && late <= Duration::from_secs(8), "{late:?}");
        }
    }

    #[test]
    fn error_bodies_of_both_apis_are_understood() {
        let anthropic = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#;
        assert_eq!(
            ErrorBody::parse(anthropic),
            ErrorBody {
                error_type: Some("rate_limit_error".into()),
                code: Some("enforced_spend_limit_reached".into()),
                message: "slow down".into(),
                request_id: Some("req_1".into()),
            }
        );
        let openai =
            r#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(ErrorBody::parse(openai).code.as_deref(), Some("insufficient_quota"));
        let old_vllm = r#"{"object":"error","message":"bad model","type":"BadRequestError","param":null,"code":400}"#;
        let parsed = ErrorBody::parse(old_vllm);
        assert_eq!((parsed.message.as_str(), parsed.code.as_deref()), ("bad model", Some("400")));
        assert_eq!(ErrorBody::parse("<html>bad gateway</html>").message, "<html>bad gateway</html>");
        assert_eq!(ErrorBody::parse(r#"{"error":"model not found"}"#).message, "model not found");
    }

    #[test]
    fn secrets_are_scrubbed_and_long_messages_clipped() {
        assert_eq!(scrub("key sk-ant-123 was bad", Some("sk-ant-123")), "key [redacted] was bad");
        assert_eq!(scrub("nothing", Some("")), "nothing");
        assert_eq!(clip(&"é".repeat(5000)).chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[tokio::test]
    async fn retries_until_success() {
        let calls = AtomicU32::new(0);
        let result = fast()
            .run("test", |number| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { if number < 3 { Err(AttemptError::retryable(http(503), None)) } else { Ok(number) } }
            })
            .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn final_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast()
            .run("test", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(AttemptError::fatal(http(400))) }
            })
            .await;
        assert_eq!(result.unwrap_err().to_string(), "test returned HTTP 400: boom");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn attempts_are_capped_and_counted_in_the_error() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast()
            .run("test", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(AttemptError::retryable(http(529), None)) }
            })
            .await;
        assert_eq!(result.unwrap_err().to_string(), "test returned HTTP 529: boom (gave up after 4 attempts)");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_wait_budget_ends_the_call_at_once() {
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let result: Result<(), _> = fast()
            .run("test", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(AttemptError::retryable(http(429), Some(Duration::from_secs(3600)))) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
