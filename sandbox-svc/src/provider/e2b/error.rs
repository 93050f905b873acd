//! E2B's failures as [`ProviderError`]s with their meaning kept, and the scrubbing every
//! upstream text goes through before it leaves the provider.
//!
//! The control plane answers `{"code": <http status>, "message", "error_code"?}`; envd answers
//! Connect errors. Either may echo what it was sent, so its text is scrubbed of the API key and
//! the sandbox's envd access token (raw, base64, URL- and JSON-escaped) before it goes into an
//! error that can reach a client.

use serde::Deserialize;

use super::connect::{Code, ConnectError};
use crate::provider::ProviderError;
use crate::redact::{MIN_SECRET_LEN, REDACTED, Redactor};

/// Longest piece of upstream text kept in an error (a 502 HTML page is not a message).
const MAX_UPSTREAM_TEXT_CHARS: usize = 512;

/// Masks the secrets this provider holds in upstream text.
#[derive(Clone)]
pub struct Scrubber {
    secrets: Vec<String>,
    redactor: Redactor,
}

impl Scrubber {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).map(str::to_owned).collect();
        // Shorter secrets (only ever in tests) are replaced verbatim below instead.
        let long = secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN);
        let redactor = Redactor::new(long).unwrap_or_else(|_| Redactor::empty());
        Scrubber { secrets, redactor }
    }

    /// This scrubber plus one more secret (a sandbox's envd access token).
    pub fn with(&self, secret: Option<&str>) -> Scrubber {
        match secret.filter(|s| !s.is_empty()) {
            None => self.clone(),
            Some(secret) => Scrubber::new(self.secrets.iter().map(String::as_str).chain([secret])),
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut text = self.redactor.redact_str(text).into_owned();
        for secret in self.secrets.iter().filter(|s| s.len() < MIN_SECRET_LEN) {
            text = text.replace(secret.as_str(), REDACTED);
        }
        text
    }
}

/// The body of a control-plane error. `code` repeats the status and is not needed.
#[derive(Debug, Default, Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_code: Option<String>,
}

/// What a failed control-plane call means for the broker. `op` names the call in the message.
pub fn api_error(op: &str, status: u16, body: &[u8], scrubber: &Scrubber) -> ProviderError {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice(body).ok();
    let (message, error_code) = match parsed {
        Some(body) if !body.message.is_empty() => (body.message, body.error_code),
        _ => (String::from_utf8_lossy(body).trim().to_owned(), None),
    };
    let message = if message.is_empty() { format!("HTTP {status}") } else { message };
    let detail = match &error_code {
        Some(code) => format!("{message} ({code})"),
        None => message.clone(),
    };
    let text = format!("e2b {op}: {}", short(&scrubber.scrub(&detail)));
    match status {
        400 if message.to_ascii_lowercase().contains("timeout") => {
            ProviderError::InvalidArgument { field: "timeout", message: text }
        }
        400 | 409 | 422 => ProviderError::FailedPrecondition(text),
        401 | 403 => ProviderError::FailedPrecondition(format!("{text} (the broker's E2B_API_KEY was refused)")),
        404 | 410 => ProviderError::NotFound(text),
        429 if is_concurrency_limit(&message) => ProviderError::TooLarge(text),
        429 => ProviderError::Unavailable(format!("{text}: E2B is rate limiting this team; retry later")),
        507 => ProviderError::TooLarge(text),
        // 5xx: placement failures, capacity, timeouts upstream.
        _ => ProviderError::Unavailable(text),
    }
}

/// A 429 about concurrent sandboxes or builds (a plan limit: waiting does not help) rather
/// than the request rate limiter (waiting does).
pub fn is_concurrency_limit(message: &str) -> bool {
    message.to_ascii_lowercase().contains("concurrent")
}

/// What a failed envd call means. `field` is the request field an `invalid_argument` is about.
pub fn envd_error(op: &str, field: &'static str, error: &ConnectError, scrubber: &Scrubber) -> ProviderError {
    let text = format!("e2b envd {op}: {}", short(&scrubber.scrub(&error.message)));
    match error.code {
        Code::InvalidArgument => ProviderError::InvalidArgument { field, message: text },
        Code::NotFound => ProviderError::NotFound(text),
        Code::ResourceExhausted => ProviderError::TooLarge(text),
        Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => ProviderError::FailedPrecondition(text),
        Code::Canceled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => ProviderError::Unavailable(text),
    }
}

fn short(text: &str) -> String {
    match text.char_indices().nth(MAX_UPSTREAM_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "e2b_0123456789abcdef0123456789abcdef";

    fn scrubber() -> Scrubber {
        Scrubber::new([KEY])
    }

    #[test]
    fn control_plane_statuses_keep_their_meaning() {
        let s = scrubber();
        let not_found = api_error(
            "get sandbox",
            404,
            br#"{"code":404,"message":"Sandbox \"abc\" doesn't exist or you don't have access to it"}"#,
            &s,
        );
        assert!(matches!(&not_found, ProviderError::NotFound(m) if m.contains("doesn't exist")), "{not_found:?}");
        let concurrency = api_error(
            "create sandbox",
            429,
            br#"{"code":429,"message":"you have reached the maximum number of concurrent E2B sandboxes (20). If you need more, please visit 'https://e2b.dev/docs/billing'"}"#,
            &s,
        );
        assert!(matches!(concurrency, ProviderError::TooLarge(_)), "{concurrency:?}");
        let rate = api_error("create sandbox", 429, br#"{"code":429,"message":"Rate limit exceeded"}"#, &s);
        assert!(matches!(&rate, ProviderError::Unavailable(m) if m.contains("rate limiting")), "{rate:?}");
        let placement = api_error(
            "create sandbox",
            500,
            br#"{"code":500,"message":"Failed to place sandbox","error_code":"sandbox_placement_timeout"}"#,
            &s,
        );
        assert!(
            matches!(&placement, ProviderError::Unavailable(m) if m == "e2b create sandbox: Failed to place sandbox (sandbox_placement_timeout)"),
            "{placement:?}"
        );
        let timeout =
            api_error("create sandbox", 400, br#"{"code":400,"message":"Timeout cannot be greater than 1 hours"}"#, &s);
        assert!(matches!(timeout, ProviderError::InvalidArgument { field: "timeout", .. }), "{timeout:?}");
        let conflict = api_error("pause", 409, br#"{"code":409,"message":"Sandbox \"x\" is being killed"}"#, &s);
        assert!(matches!(conflict, ProviderError::FailedPrecondition(_)));
        let auth = api_error("list", 401, br#"{"code":401,"message":"Invalid API key"}"#, &s);
        assert!(matches!(&auth, ProviderError::FailedPrecondition(m) if m.contains("E2B_API_KEY")));
        let html = api_error("create sandbox", 502, b"<html>Bad Gateway</html>", &s);
        assert!(matches!(&html, ProviderError::Unavailable(m) if m.contains("Bad Gateway")));
        let empty = api_error("kill", 503, b"", &s);
        assert!(matches!(&empty, ProviderError::Unavailable(m) if m == "e2b kill: HTTP 503"));
    }

    #[test]
    fn upstream_text_never_carries_the_key_in_any_encoding() {
        use base64::Engine as _;
        let s = scrubber();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{KEY}"));
        let body = format!(r#"{{"code":400,"message":"bad key {KEY} in header Basic {b64} and url ?k={KEY}"}}"#);
        let error = api_error("create sandbox", 400, body.as_bytes(), &s).to_string();
        assert!(!error.contains(KEY), "{error}");
        assert!(!error.contains(&b64[8..40]), "{error}");
        assert!(error.contains("[redacted]"), "{error}");

        let token = "envd-token-0123456789";
        let with_token = s.with(Some(token));
        let connect = ConnectError::new(Code::Unauthenticated, format!("token {token} and key {KEY} refused"));
        let error = envd_error("start", "argv", &connect, &with_token).to_string();
        assert!(!error.contains(token) && !error.contains(KEY), "{error}");
        // Short secrets (tests use them) are still replaced.
        let error = Scrubber::new(["k3y"]).scrub("the k3y leaked");
        assert_eq!(error, "the [redacted] leaked");
    }

    #[test]
    fn envd_codes_keep_their_meaning() {
        let s = scrubber();
        let error = |code| envd_error("start", "cwd", &ConnectError::new(code, "m"), &s);
        assert!(matches!(error(Code::InvalidArgument), ProviderError::InvalidArgument { field: "cwd", .. }));
        assert!(matches!(error(Code::NotFound), ProviderError::NotFound(_)));
        assert!(matches!(error(Code::ResourceExhausted), ProviderError::TooLarge(_)));
        assert!(matches!(error(Code::Unauthenticated), ProviderError::FailedPrecondition(_)));
        assert!(matches!(error(Code::Unavailable), ProviderError::Unavailable(_)));
        assert!(matches!(error(Code::DeadlineExceeded), ProviderError::Unavailable(_)));
    }

    #[test]
    fn long_upstream_text_is_shortened() {
        let body = "x".repeat(10_000);
        let error = api_error("get", 502, body.as_bytes(), &scrubber()).to_string();
        assert!(error.len() < 600, "{}", error.len());
    }
}
