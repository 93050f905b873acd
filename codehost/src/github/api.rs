//! The one path every GitHub call takes: octocrab supplies the transport (rustls, timeouts,
//! base URI, `User-Agent`, `X-GitHub-Api-Version`) and the credential (token, or an App
//! installation token it mints and caches); this layer adds what octocrab's helpers lack:
//!
//! - `Accept` set per call (JSON, or the diff media type) instead of no `Accept` at all;
//! - every answer read up to a bound the caller names, so no response can exhaust memory;
//! - idempotent reads retried on 5xx/429/rate limits/transport errors, writes never
//!   (octocrab's own retry would re-send a `POST` that may already have created something);
//! - the installation token re-minted [`TOKEN_REFRESH_MARGIN`] before it expires, not 30 s;
//! - every upstream text scrubbed of credentials before it becomes an error.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use octocrab::Octocrab;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::errors::{Failure, Scrubber};

/// JSON answers are small (a page of 100 pull requests is the largest we ask for, ~10 MiB at
/// GitHub's 64 KiB body cap); anything beyond this is not GitHub speaking.
pub(crate) const MAX_JSON_BYTES: usize = 16 << 20;

/// An installation token lives one hour; one with less than this left is replaced before use,
/// so a slow multi-call operation never runs into the expiry halfway through.
pub(crate) const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Attempts for an idempotent read (the first try included).
const READ_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled for each further one.
const READ_BACKOFF: Duration = Duration::from_millis(200);
/// A `retry-after` longer than this is not waited out: the caller gets `Unavailable` now.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

const ACCEPT_JSON: &str = "application/vnd.github+json";
pub(crate) const ACCEPT_DIFF: &str = "application/vnd.github.diff";

pub(crate) struct Api {
    crab: Octocrab,
    /// Set for App auth: the installation whose token octocrab caches.
    installation: bool,
    /// One refresh at a time, so concurrent calls near expiry mint one token, not several.
    refresh: Mutex<()>,
    pub scrubber: Scrubber,
}

/// A successful answer: at most the bound's worth of body.
pub(crate) struct Answer {
    pub body: Bytes,
    /// The body went past the bound and was cut there.
    pub cut: bool,
}

impl Api {
    pub fn new(crab: Octocrab, installation: bool, scrubber: Scrubber) -> Api {
        Api { crab, installation, refresh: Mutex::new(()), scrubber }
    }

    /// `GET route` as JSON, retried while GitHub is unavailable.
    pub async fn get<T: DeserializeOwned>(&self, route: &str) -> Result<T, Failure> {
        self.get_bounded(route, MAX_JSON_BYTES).await
    }

    /// `GET route` as JSON with a body bound of its own (blobs).
    pub async fn get_bounded<T: DeserializeOwned>(&self, route: &str, limit: usize) -> Result<T, Failure> {
        let answer = self.read(route, ACCEPT_JSON, limit, false).await?;
        self.json(&answer.body)
    }

    /// An idempotent `GET` with any `Accept`; `cut_ok` returns an over-long body cut at `limit`
    /// instead of failing.
    pub async fn read(&self, route: &str, accept: &str, limit: usize, cut_ok: bool) -> Result<Answer, Failure> {
        let mut attempt = 1;
        loop {
            let result = self.send::<()>(Method::GET, route, accept, None, limit, cut_ok).await;
            match result {
                Err(failure) if failure.retryable() && attempt < READ_ATTEMPTS => {
                    let backoff = READ_BACKOFF * 2u32.pow(attempt - 1);
                    let wait = failure.retry_after.unwrap_or(backoff).max(backoff);
                    if wait > MAX_RETRY_WAIT {
                        return Err(failure);
                    }
                    tracing::debug!(route, attempt, status = ?failure.status, "github read failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A write, sent once: a `POST` that timed out may still have created its object.
    pub async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: &B,
    ) -> Result<T, Failure> {
        let answer = self.send(method, route, ACCEPT_JSON, Some(body), MAX_JSON_BYTES, false).await?;
        self.json(&answer.body)
    }

    /// A write whose answer we do not need (e.g. a comment: ~30 fields we would only discard).
    pub async fn write_ignoring_answer<B: Serialize>(
        &self,
        method: Method,
        route: &str,
        body: &B,
    ) -> Result<(), Failure> {
        self.send(method, route, ACCEPT_JSON, Some(body), MAX_JSON_BYTES, false).await.map(|_| ())
    }

    /// A `DELETE` without a body, sent once.
    pub async fn delete(&self, route: &str) -> Result<(), Failure> {
        self.send::<()>(Method::DELETE, route, ACCEPT_JSON, None, MAX_JSON_BYTES, false).await.map(|_| ())
    }

    fn json<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, Failure> {
        serde_json::from_slice(body).map_err(|e| {
            // serde can quote a value it choked on; scrubbed like every upstream text.
            Failure::transport(self.scrubber.scrub(&format!("GitHub answered with unexpected JSON: {e}")))
        })
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        route: &str,
        accept: &str,
        body: Option<&B>,
        limit: usize,
        cut_ok: bool,
    ) -> Result<Answer, Failure> {
        self.refresh_installation_token().await?;
        let builder = Request::builder().method(method).uri(route).header(http::header::ACCEPT, accept);
        let request = self.crab.build_request(builder, body).map_err(|e| self.transport(&e))?;
        let response = self.crab.execute(request).await.map_err(|e| self.transport(&e))?;
        let (parts, body) = response.into_parts();
        let error_limit = if parts.status.is_success() { limit } else { MAX_ERROR_BYTES };
        let (bytes, cut) = read_bounded(body, error_limit).await.map_err(|e| self.transport(&e))?;
        if !parts.status.is_success() {
            return Err(self.failure(parts.status, &parts.headers, &bytes));
        }
        if cut && !cut_ok {
            let mut failure = Failure::transport(format!("the answer is larger than {limit} bytes"));
            failure.too_large = true;
            return Err(failure);
        }
        Ok(Answer { body: bytes, cut })
    }

    /// Replaces the installation token when it has less than [`TOKEN_REFRESH_MARGIN`] left.
    /// octocrab would do so itself only 30 s before expiry; asking it with a wider margin uses
    /// its own cache, so every request still carries the token octocrab holds.
    async fn refresh_installation_token(&self) -> Result<(), Failure> {
        if !self.installation {
            return Ok(());
        }
        let _one_at_a_time = self.refresh.lock().await;
        let margin = chrono::Duration::from_std(TOKEN_REFRESH_MARGIN).expect("margin fits");
        match self.crab.installation_token_with_buffer(margin).await {
            Ok(token) => {
                use octocrab::secrecy::ExposeSecret;
                self.scrubber.remember(token.expose_secret());
                Ok(())
            }
            Err(octocrab::Error::GitHub { source, .. }) => {
                let headers = source.headers.clone().unwrap_or_default();
                let mut failure = self.failure(source.status_code, &headers, source.message.as_bytes());
                failure.message = format!("minting an installation token: {}", failure.message);
                failure.hint = Some("check the App id, its private key and the installation id");
                Err(failure)
            }
            Err(e) => {
                let mut failure = self.transport(&e);
                failure.message = format!("minting an installation token: {}", failure.message);
                Err(failure)
            }
        }
    }

    fn transport(&self, error: &octocrab::Error) -> Failure {
        // octocrab's `Display` of transport errors can append a backtrace; the first line is the error.
        let text = error.to_string();
        let first = text.lines().next().unwrap_or_default();
        Failure::transport(self.scrubber.scrub(first))
    }

    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        let message = self.scrubber.scrub(&error_text(status, body));
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let spent = header("x-ratelimit-remaining") == Some(0);
        let retry_after = header("retry-after").map(Duration::from_secs).or_else(|| {
            let reset = header("x-ratelimit-reset")?;
            spent.then(|| Duration::from_secs(reset.saturating_sub(chrono::Utc::now().timestamp().max(0) as u64)))
        });
        let rate_limited = matches!(status.as_u16(), 403 | 429)
            && (spent || headers.contains_key("retry-after") || message.to_ascii_lowercase().contains("rate limit"));
        Failure { status: Some(status), message, retry_after, rate_limited, too_large: false, hint: None }
    }
}

/// Error bodies are one JSON object of a few hundred bytes; more is cut.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// GitHub's `{"message", "errors": [{"message"|"code", "field"}]}` as one line; any other body
/// (a proxy's HTML page) as its first 200 characters.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: Option<String>,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        let text = text.trim();
        return if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text.to_owned() };
    };
    let mut message = parsed.message.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    for error in parsed.errors.iter().take(5) {
        let detail = error
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .or_else(|| {
                let field = error.get("field").and_then(|f| f.as_str()).unwrap_or("?");
                error.get("code").and_then(|c| c.as_str()).map(|code| format!("{field} {code}"))
            })
            .or_else(|| error.as_str().map(str::to_owned));
        if let Some(detail) = detail {
            message.push_str("; ");
            message.push_str(&detail);
        }
    }
    message
}

/// Reads at most `limit` bytes of `body`; the flag says whether there was more.
async fn read_bounded(
    mut body: BoxBody<Bytes, octocrab::Error>,
    limit: usize,
) -> Result<(Bytes, bool), octocrab::Error> {
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        let room = limit - collected.len();
        if data.len() > room {
            collected.extend_from_slice(&data[..room]);
            return Ok((collected.into(), true));
        }
        collected.extend_from_slice(&data);
    }
    Ok((collected.into(), false))
}
