//! Secret detection (gitleaks-style patterns for the credentials this system and its users hold, plus
//! named and high-entropy values in Dockerfile `ENV`/`ARG`) and the redactor every finding's text
//! passes through, so no finding ever repeats a secret in full.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// One detected secret: the byte range of the secret itself within the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHit {
    pub rule: &'static str,
    /// Human name of what was found, for the finding's message.
    pub what: &'static str,
    pub start: usize,
    pub end: usize,
}

struct Pattern {
    rule: &'static str,
    what: &'static str,
    /// Must contain exactly one capture group around the secret part.
    regex: &'static str,
    /// Extra check on the captured secret, for patterns whose prefix alone is too common.
    valid: fn(&str) -> bool,
}

fn always(_: &str) -> bool {
    true
}

/// OpenAI-style keys: `sk-` words are common in prose and package names; a key mixes cases and digits.
fn mixed_case_and_digits(secret: &str) -> bool {
    let body = secret.trim_start_matches("sk-");
    body.bytes().any(|b| b.is_ascii_digit())
        && body.bytes().any(|b| b.is_ascii_uppercase())
        && body.bytes().any(|b| b.is_ascii_lowercase())
}

/// Order matters: the alternation takes the first pattern that matches at a position (`sk-ant-`
/// before the generic `sk-`).
const PATTERNS: &[Pattern] = &[
    Pattern {
        rule: "secret.github-token",
        what: "GitHub token",
        regex: r"(?-u:\b)((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,251})(?-u:\b)",
        valid: always,
    },
    Pattern {
        rule: "secret.github-token",
        what: "GitHub fine-grained personal access token",
        regex: r"(?-u:\b)(github_pat_[A-Za-z0-9_]{22,255})",
        valid: always,
    },
    Pattern {
        rule: "secret.anthropic-key",
        what: "Anthropic API key",
        regex: r"(?-u:\b)(sk-ant-[A-Za-z0-9_-]{20,})",
        valid: always,
    },
    Pattern {
        rule: "secret.openai-key",
        what: "OpenAI-style API key",
        regex: r"(?-u:\b)(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,})",
        valid: mixed_case_and_digits,
    },
    Pattern {
        rule: "secret.aws-access-key",
        what: "AWS access key id",
        regex: r"(?-u:\b)((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})(?-u:\b)",
        valid: always,
    },
    Pattern {
        rule: "secret.aws-secret-key",
        what: "AWS secret access key",
        regex: r#"(?i:aws_?secret_?access_?key)["']?[ \t]*[:= \t][ \t]*["']?([A-Za-z0-9/+=]{40})"#,
        valid: always,
    },
    Pattern {
        rule: "secret.twilio-api-key",
        what: "Twilio API key sid",
        regex: r"(?-u:\b)(SK[0-9a-fA-F]{32})(?-u:\b)",
        valid: always,
    },
    Pattern { rule: "secret.e2b-key", what: "E2B API key", regex: r"(?-u:\b)(e2b_[A-Za-z0-9]{20,})", valid: always },
    Pattern {
        rule: "secret.private-key",
        what: "private key",
        regex: r"(-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----)",
        valid: always,
    },
    Pattern {
        rule: "secret.slack-token",
        what: "Slack token",
        regex: r"(?-u:\b)(xox[baprs]-[A-Za-z0-9-]{10,})",
        valid: always,
    },
    Pattern {
        rule: "secret.npm-token",
        what: "npm token",
        regex: r"(?-u:\b)(npm_[A-Za-z0-9]{36})(?-u:\b)",
        valid: always,
    },
    Pattern {
        rule: "secret.pypi-token",
        what: "PyPI upload token",
        regex: r"(?-u:\b)(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,})",
        valid: always,
    },
    Pattern {
        rule: "secret.gitlab-token",
        what: "GitLab token",
        regex: r"(?-u:\b)(glpat-[A-Za-z0-9_-]{20,})",
        valid: always,
    },
    Pattern {
        rule: "secret.google-api-key",
        what: "Google API key",
        regex: r"(?-u:\b)(AIza[0-9A-Za-z_-]{35})(?-u:\b)",
        valid: always,
    },
    Pattern {
        rule: "secret.stripe-key",
        what: "Stripe live key",
        regex: r"(?-u:\b)((?:sk|rk)_live_[0-9A-Za-z]{24,})",
        valid: always,
    },
    Pattern {
        rule: "secret.huggingface-token",
        what: "Hugging Face token",
        regex: r"(?-u:\b)(hf_[A-Za-z]{34,})(?-u:\b)",
        valid: always,
    },
    Pattern {
        rule: "secret.url-credentials",
        what: "password in a URL",
        regex: r#"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@"'$]+:([^/\s@"'$]{3,})@[A-Za-z0-9.-]+"#,
        valid: always,
    },
];

/// All patterns in one alternation, so an added line is scanned once whatever the pattern count.
static COMBINED: LazyLock<Regex> = LazyLock::new(|| {
    let alternation: Vec<String> = PATTERNS.iter().map(|p| format!("(?:{})", p.regex)).collect();
    Regex::new(&alternation.join("|")).expect("secret patterns compile")
});

/// A Twilio account sid: an identifier, a secret only together with the auth token next to it.
static TWILIO_ACCOUNT_SID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?-u:\b)AC[0-9a-f]{32}(?-u:\b)").expect("regex compiles"));
/// What a Twilio auth token looks like (32 lowercase hex).
static HEX32: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?-u:\b)[0-9a-f]{32}(?-u:\b)").expect("regex compiles"));

/// `NAME=value` / `NAME: value` where the name says it holds a secret: used by the redactor only.
static NAMED_ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)[A-Za-z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|AUTH_?KEY)[A-Za-z0-9_]*["']?[ \t]*[=:][ \t]*["']?([^\s"'$][^\s"']{3,})"#,
    )
    .expect("regex compiles")
});

/// Candidate tokens for the entropy test: base64/base64url-ish runs.
static TOKEN_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/_-]{20,}={0,2}").expect("regex compiles"));

/// Bits per character at or above which a 20+ character token reads as random (a key), not a word,
/// path or version. Hex strings top out at exactly 4.0, so digests do not reach it; base64 keys of
/// 20–40 characters typically score 4.2–5.2.
pub const ENTROPY_THRESHOLD: f64 = 4.0;
/// Shortest value the entropy test looks at: shorter strings cannot reach a meaningful score.
pub const ENTROPY_MIN_LEN: usize = 20;

/// Finds known-format secrets in one line of text.
pub fn scan(text: &str) -> Vec<SecretHit> {
    let mut hits = Vec::new();
    // Cheap exit for the vast majority of lines.
    if !COMBINED.is_match(text) {
        return hits;
    }
    let mut at = 0;
    while let Some(found) = COMBINED.find_at(text, at) {
        at = found.end().max(found.start() + 1);
        let matched = found.as_str();
        for pattern in PATTERNS {
            let Some(captures) = pattern_regex(pattern).captures(matched) else { continue };
            let secret = captures.get(1).expect("one group per pattern");
            if captures.get(0).is_some_and(|whole| whole.len() == matched.len()) && (pattern.valid)(secret.as_str()) {
                hits.push(SecretHit {
                    rule: pattern.rule,
                    what: pattern.what,
                    start: found.start() + secret.start(),
                    end: found.start() + secret.end(),
                });
            }
            break;
        }
    }
    hits
}

fn pattern_regex(pattern: &Pattern) -> &'static Regex {
    static EACH: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        PATTERNS.iter().map(|p| Regex::new(&format!("^(?:{})$", p.regex)).expect("secret patterns compile")).collect()
    });
    let index = PATTERNS.iter().position(|p| std::ptr::eq(p, pattern)).expect("pattern from PATTERNS");
    &EACH[index]
}

/// Twilio account sids in `lines` (new-file line number, text) that have something that looks like
/// an auth token within [`TWILIO_NEARBY_LINES`] lines. Returns (line, hit on the token or the sid).
pub fn twilio_pairs(lines: &[(u32, &str)]) -> Vec<(u32, SecretHit)> {
    let sids: Vec<(u32, usize, usize)> = lines
        .iter()
        .flat_map(|(line, text)| TWILIO_ACCOUNT_SID.find_iter(text).map(move |m| (*line, m.start(), m.end())))
        .collect();
    let mut pairs = Vec::new();
    for (sid_line, sid_start, sid_end) in sids {
        let token =
            lines.iter().filter(|(line, _)| line.abs_diff(sid_line) <= TWILIO_NEARBY_LINES).find_map(|(line, text)| {
                HEX32
                    .find_iter(text)
                    .find(|m| !(*line == sid_line && m.start() >= sid_start && m.end() <= sid_end))
                    .map(|m| (*line, m.start(), m.end()))
            });
        if let Some((line, start, end)) = token {
            pairs.push((
                line,
                SecretHit { rule: "secret.twilio", what: "Twilio account sid with its auth token", start, end },
            ));
        }
    }
    pairs
}

/// How far from a Twilio account sid an auth token still counts as "its" token: a config block or a
/// few `ENV` lines.
pub const TWILIO_NEARBY_LINES: u32 = 5;

/// Shannon entropy of `text` in bits per byte.
pub fn entropy(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for byte in text.bytes() {
        counts[usize::from(byte)] += 1;
    }
    let len = text.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / len).map(|p| -p * p.log2()).sum()
}

/// A value that reads as random: long enough, from a key alphabet, letters and digits, and entropy at
/// or above [`ENTROPY_THRESHOLD`]. Paths, URLs, options and versions are excluded by the alphabet.
pub fn is_high_entropy_token(value: &str) -> bool {
    value.len() >= ENTROPY_MIN_LEN
        && !value.starts_with(['-', '/'])
        && value
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-'))
        && value.bytes().any(|b| b.is_ascii_digit())
        && value.bytes().any(|b| b.is_ascii_alphabetic())
        && entropy(value) >= ENTROPY_THRESHOLD
}

/// Whether an `ENV`/`ARG` name says it holds a secret (`API_TOKEN`, `DB_PASSWORD`, `OPENAI_API_KEY`),
/// and not something about a key (`GPG_KEY`, `KEY_URL`, `SECRET_FILE`).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let parts: Vec<&str> = upper.split(['_', '-', '.']).filter(|p| !p.is_empty()).collect();
    let Some(last) = parts.last() else { return false };
    const NOT_A_SECRET: &[&str] =
        &["FILE", "PATH", "DIR", "URL", "URI", "NAME", "ID", "TYPE", "SIZE", "LENGTH", "HOST", "SERVER", "FINGERPRINT"];
    if NOT_A_SECRET.contains(last) || parts.iter().any(|p| matches!(*p, "GPG" | "PGP" | "PUBLIC" | "PUB" | "KEYRING")) {
        return false;
    }
    parts.iter().any(|p| {
        matches!(
            *p,
            "TOKEN" | "SECRET" | "PASSWORD" | "PASSWD" | "PASS" | "PWD" | "APIKEY" | "CREDENTIALS" | "CREDENTIAL"
        )
    }) || *last == "KEY"
}

/// Values that cannot be a secret whatever the name: flags, numbers, placeholders for run-time values.
pub fn is_trivial_value(value: &str) -> bool {
    value.is_empty()
        || value.contains('$')
        || value.starts_with('/')
        || value.contains("://")
        || value.bytes().all(|b| b.is_ascii_digit())
        || matches!(
            value.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "none" | "null"
        )
}

/// Marker that replaces the hidden part of a secret.
pub const REDACTED: &str = "…[redacted]";

/// How many leading characters of a secret stay visible: 4 (enough to tell `ghp_` from `sk-a`), fewer
/// for short secrets so most of a short password is never shown.
fn visible_prefix(secret: &str) -> usize {
    let chars = secret.chars().count();
    let keep = if chars >= 16 { 4 } else { chars / 4 };
    secret.char_indices().nth(keep).map_or(secret.len(), |(index, _)| index)
}

/// `secret` as its first characters plus [`REDACTED`].
pub fn mask(secret: &str) -> String {
    format!("{}{REDACTED}", &secret[..visible_prefix(secret)])
}

/// Replaces every secret in `text` with its masked form: known formats, values assigned to
/// secret-named variables, and high-entropy tokens.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut spans: Vec<(usize, usize)> = scan(text).into_iter().map(|hit| (hit.start, hit.end)).collect();
    for captures in NAMED_ASSIGNMENT.captures_iter(text) {
        let value = captures.get(1).expect("value group");
        if !is_trivial_value(value.as_str()) {
            spans.push((value.start(), value.end()));
        }
    }
    for token in TOKEN_RUN.find_iter(text) {
        if is_high_entropy_token(token.as_str()) {
            spans.push((token.start(), token.end()));
        }
    }
    for m in HEX32.find_iter(text) {
        if TWILIO_ACCOUNT_SID.is_match(text) {
            spans.push((m.start(), m.end()));
        }
    }
    redact_spans(text, spans)
}

/// Masks the given byte ranges of `text` (overlaps merged).
pub fn redact_spans(text: &str, mut spans: Vec<(usize, usize)>) -> Cow<'_, str> {
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    // Text masked earlier (a finding's evidence is redacted twice) stays as it is.
    spans.retain(|&(start, end)| !text[start..end].contains(REDACTED));
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut index = 0;
    while index < spans.len() {
        let (start, mut end) = spans[index];
        index += 1;
        while index < spans.len() && spans[index].0 < end {
            end = end.max(spans[index].1);
            index += 1;
        }
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(&mask(&text[start..end]));
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test values are assembled at run time so this file holds no scannable credential.
    fn fake(prefix: &str, body: &str, repeat: usize) -> String {
        format!("{prefix}{}", body.repeat(repeat))
    }

    #[test]
    fn finds_each_known_format() {
        let cases = [
            (fake("ghp_", "aB3dE5fG7h", 4)[..40].to_string(), "secret.github-token"),
            (fake("github_pat_", "11AB22cd33", 4), "secret.github-token"),
            (fake("sk-ant-api03-", "Zx9_Yw8-Vu7", 4), "secret.anthropic-key"),
            (fake("sk-proj-", "Ab1Cd2Ef3Gh4", 4), "secret.openai-key"),
            (fake("AKIA", "Q3ZX7WLMN2PB", 1) + "ABCD", "secret.aws-access-key"),
            (fake("SK", "0123456789abcdef", 2), "secret.twilio-api-key"),
            (fake("e2b_", "0a1b2c3d4e", 4), "secret.e2b-key"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----".to_string(), "secret.private-key"),
            (fake("xoxb-", "1234-abcd-", 3), "secret.slack-token"),
        ];
        for (secret, rule) in cases {
            let line = format!("ENV X={secret}");
            let hits = scan(&line);
            assert_eq!(hits.len(), 1, "{rule}: {hits:?}");
            assert_eq!(hits[0].rule, rule);
            assert_eq!(&line[hits[0].start..hits[0].end], secret);
        }
        let aws = format!("aws_secret_access_key = {}", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert_eq!(scan(&aws)[0].rule, "secret.aws-secret-key");
    }

    #[test]
    fn ignores_look_alikes() {
        for text in [
            "RUN npm install -g task-runner-skeleton-generator-for-projects",
            "ARG CLAUDE_CODE_VERSION=2.0.77",
            "sk-this-is-a-long-kebab-case-identifier-not-a-key",
            "ghp_short",
            "curl https://${USER}:${PASS}@example.com",
        ] {
            assert!(scan(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn entropy_separates_keys_from_words_and_digests() {
        assert!(is_high_entropy_token("Zk8qP2xW9mR4tL7vB3nH6jD1"));
        assert!(!is_high_entropy_token("noninteractive"));
        assert!(!is_high_entropy_token("56de6d5e5ec427e17b74fa48d51271c7fc0d61244bf5c90e828aab8362d55010"));
        assert!(!is_high_entropy_token("/usr/local/lib/node_modules/x1"));
        assert!(!is_high_entropy_token("--max-old-space-size=4096"));
    }

    #[test]
    fn secret_names() {
        for name in ["API_TOKEN", "db_password", "OPENAI_API_KEY", "SECRET", "GH_PAT_TOKEN"] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["GPG_KEY", "KEY_URL", "API_KEY_FILE", "NODE_MAJOR", "APT_KEY_DONT_WARN_ON_DANGEROUS_USAGE"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn redaction_keeps_four_characters_and_hides_the_rest() {
        let token = fake("ghp_", "aB3dE5fG7h", 4)[..40].to_string();
        let text = format!("curl -H 'Authorization: token {token}' https://api.github.com");
        let redacted = redact(&text);
        assert!(!redacted.contains(&token));
        assert!(redacted.contains("ghp_…[redacted]"), "{redacted}");
        assert_eq!(redact("nothing here"), "nothing here");
        assert_eq!(redact("DB_PASSWORD=hunter22"), "DB_PASSWORD=hu…[redacted]");
    }
}
