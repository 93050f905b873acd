//! How a failed GitHub call becomes a [`CodeHostError`], and the scrubbing every upstream text
//! passes first: the broker holds the credential, so no message it returns may carry one.

use std::sync::RwLock;
use std::time::Duration;

use http::StatusCode;

use crate::CodeHostError;

/// What a call was for, so an error can say what failed and which token permission it needs.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    /// Lowercase, e.g. `read branch main`, `create pull request from x`.
    pub action: String,
    pub permission: Permission,
    /// The caller's field a 422 validation failure is blamed on.
    pub field: &'static str,
}

impl Op {
    pub fn new(action: impl Into<String>, permission: Permission, field: &'static str) -> Op {
        Op { action: action.into(), permission, field }
    }
}

/// The fine-grained token (or App) permission a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    ContentsRead,
    ContentsWrite,
    PullRequestsRead,
    PullRequestsWrite,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::ContentsRead => "Contents: read",
            Permission::ContentsWrite => "Contents: read and write",
            Permission::PullRequestsRead => "Pull requests: read",
            Permission::PullRequestsWrite => "Pull requests: read and write",
        }
    }
}

/// One failed call, its text already scrubbed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// `None`: no HTTP answer at all (connect error, timeout, broken body).
    pub status: Option<StatusCode>,
    /// GitHub's `message` (plus its `errors[].message`s), or the transport error.
    pub message: String,
    /// GitHub's `retry-after`, or the time to the rate-limit reset when the budget is spent.
    pub retry_after: Option<Duration>,
    /// A 403/429 that is a primary or secondary rate limit rather than a refusal.
    pub rate_limited: bool,
    /// The answer was bigger than the bound the caller gave.
    pub too_large: bool,
    /// What to check when the credential is refused, if not the token's permissions.
    pub hint: Option<&'static str>,
}

impl Failure {
    pub fn transport(message: String) -> Failure {
        Failure { status: None, message, retry_after: None, rate_limited: false, too_large: false, hint: None }
    }

    pub fn is(&self, status: u16) -> bool {
        self.status.is_some_and(|s| s.as_u16() == status)
    }

    /// Worth sending an idempotent read again: GitHub was down, busy or rate limiting us.
    pub fn retryable(&self) -> bool {
        match self.status {
            None => !self.too_large,
            Some(status) => status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || self.rate_limited,
        }
    }

    /// The error a caller sees when nothing more specific applies.
    pub fn into_error(self, op: &Op, repository: &str) -> CodeHostError {
        let Failure { status, message, rate_limited, too_large, retry_after, hint } = self;
        let action = &op.action;
        let Some(status) = status else {
            if too_large {
                return CodeHostError::TooLarge(format!("github: {action}: {message}"));
            }
            return CodeHostError::Unavailable(format!("github: {action}: {message}"));
        };
        let code = status.as_u16();
        match code {
            401 => CodeHostError::PermissionDenied(format!(
                "github: {action}: credentials rejected (401 {message}); {}",
                hint.unwrap_or("the token is wrong, revoked or expired")
            )),
            403 | 429 if rate_limited || code == 429 => {
                let wait = retry_after.map(|d| format!("; retry in {}s", d.as_secs())).unwrap_or_default();
                CodeHostError::Unavailable(format!("github: {action}: rate limited ({code} {message}){wait}"))
            }
            403 => CodeHostError::PermissionDenied(format!(
                "github: {action}: forbidden (403 {message}); the token likely lacks the '{}' permission on {repository}",
                op.permission.describe()
            )),
            404 if hint.is_some() => CodeHostError::NotFound(format!(
                "github: {action}: not found ({message}); {}",
                hint.unwrap_or_default()
            )),
            404 => CodeHostError::NotFound(format!(
                "github: {action}: not found in {repository} ({message}; GitHub also answers 404 when the token cannot see the repository)"
            )),
            405 | 409 => CodeHostError::Conflict(format!("github: {action}: {message}")),
            422 if is_conflict_text(&message) => CodeHostError::Conflict(format!("github: {action}: {message}")),
            400 | 422 => {
                CodeHostError::InvalidArgument { field: op.field, message: format!("github: {action}: {message}") }
            }
            _ if status.is_server_error() => {
                CodeHostError::Unavailable(format!("github: {action}: GitHub failed ({code} {message})"))
            }
            _ => CodeHostError::Unavailable(format!("github: {action}: unexpected answer {code} ({message})")),
        }
    }
}

/// 422 texts that mean "the state moved under you" rather than "your request is malformed".
fn is_conflict_text(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["already exists", "not a fast forward", "not mergeable", "head branch was modified"]
        .iter()
        .any(|needle| message.contains(needle))
}

/// Removes credentials from upstream text: every secret this host knows (the token, each
/// installation token it minted), anything GitHub-token-shaped, JWTs, and whatever follows an
/// `Authorization`/`Bearer` word, in case GitHub or a proxy echoes a header back.
#[derive(Default)]
pub(crate) struct Scrubber {
    /// The configured token plus the most recent installation tokens (at most [`KEPT_TOKENS`]).
    secrets: RwLock<Vec<String>>,
}

/// Installation tokens live an hour; remembering a few covers every token an in-flight error
/// could still quote.
const KEPT_TOKENS: usize = 4;

const REDACTED: &str = "[redacted]";

/// Prefixes of GitHub's token formats (PAT classic/fine-grained, OAuth, user, server, refresh).
const TOKEN_PREFIXES: [&str; 6] = ["github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"];

impl Scrubber {
    pub fn remember(&self, secret: &str) {
        if secret.len() < 8 {
            return; // too short to scrub without mangling ordinary text; GitHub tokens never are
        }
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        if secrets.iter().any(|s| s == secret) {
            return;
        }
        secrets.push(secret.to_owned());
        // The first entry is the configured credential: always kept.
        while secrets.len() > KEPT_TOKENS + 1 {
            secrets.remove(1);
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets.read().unwrap_or_else(|e| e.into_inner()).iter() {
            text = text.replace(secret.as_str(), REDACTED);
        }
        let text = redact_after_words(&text);
        redact_token_shapes(&text)
    }
}

/// Everything after `authorization:` up to the end of the line, and the word after `bearer ` or
/// `token ` when it looks like a credential (long, no spaces).
fn redact_after_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let lower = line.to_ascii_lowercase();
        let line = match lower.find("authorization") {
            Some(at) => {
                out.push_str(&line[..at]);
                out.push_str("authorization: ");
                out.push_str(REDACTED);
                continue;
            }
            None => line,
        };
        let words: Vec<&str> = line.split(' ').collect();
        let mut redact_next = false;
        for (j, word) in words.iter().enumerate() {
            if j > 0 {
                out.push(' ');
            }
            if redact_next && word.len() >= 16 {
                out.push_str(REDACTED);
            } else {
                out.push_str(word);
            }
            redact_next = word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("token");
        }
    }
    out
}

/// GitHub token formats and JWTs (`eyJ…`, three dot-separated parts) wherever they appear.
fn redact_token_shapes(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let at_word_start = out.chars().last().is_none_or(|c| !is_token_char(c) && c != '.' && c != '-');
        let starts_token = at_word_start && TOKEN_PREFIXES.iter().any(|p| rest.starts_with(p));
        let starts_jwt = at_word_start && rest.starts_with("eyJ");
        if starts_token || starts_jwt {
            let allowed = |c: char| is_token_char(c) || (starts_jwt && (c == '.' || c == '-'));
            let end = rest.find(|c: char| !allowed(c)).unwrap_or(rest.len());
            if end >= 20 {
                out.push_str(REDACTED);
                rest = &rest[end..];
                continue;
            }
        }
        let mut chars = rest.chars();
        out.push(chars.next().expect("rest is not empty"));
        rest = chars.as_str();
    }
    out
}
