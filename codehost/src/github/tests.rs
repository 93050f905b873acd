use super::errors::{Failure, Op, Permission, Scrubber};
use super::*;

#[test]
fn scrubbing_removes_known_secrets_token_shapes_and_headers() {
    let scrubber = Scrubber::default();
    scrubber.remember("my-very-secret-token-value");
    let text = "Bad credentials for my-very-secret-token-value\nAuthorization: Bearer abc.def\n\
                seen ghs_16C7e42F292c6912E7710c838347Ae178B4a and eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2lnbmF0dXJl \
                and Bearer somethinglongerthansixteen";
    let clean = scrubber.scrub(text);
    for secret in [
        "my-very-secret-token-value",
        "abc.def",
        "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
        "eyJhbGciOiJSUzI1NiJ9",
        "somethinglongerthansixteen",
    ] {
        assert!(!clean.contains(secret), "{secret} survived in {clean}");
    }
    assert!(clean.starts_with("Bad credentials for [redacted]"), "{clean}");
    // Ordinary words that merely start like a token stay.
    assert_eq!(scrubber.scrub("ghost_town is fine"), "ghost_town is fine");
}

#[test]
fn failures_map_to_errors_a_caller_can_act_on() {
    let op = Op::new("read branch main", Permission::ContentsRead, "branch");
    let failure = |status: u16, message: &str| Failure {
        status: Some(http::StatusCode::from_u16(status).unwrap()),
        message: message.into(),
        retry_after: None,
        rate_limited: false,
        too_large: false,
        hint: None,
    };
    let err = failure(403, "Resource not accessible by personal access token").into_error(&op, "o/r");
    assert!(matches!(err, CodeHostError::PermissionDenied(ref m) if m.contains("Contents: read")), "{err}");
    assert!(matches!(failure(401, "Bad credentials").into_error(&op, "o/r"), CodeHostError::PermissionDenied(_)));
    assert!(matches!(failure(404, "Not Found").into_error(&op, "o/r"), CodeHostError::NotFound(_)));
    assert!(matches!(failure(422, "Reference already exists").into_error(&op, "o/r"), CodeHostError::Conflict(_)));
    let err = failure(422, "Validation Failed").into_error(&op, "o/r");
    assert!(matches!(err, CodeHostError::InvalidArgument { field: "branch", .. }), "{err}");
    assert!(matches!(failure(502, "Bad Gateway").into_error(&op, "o/r"), CodeHostError::Unavailable(_)));
    assert!(matches!(failure(429, "slow down").into_error(&op, "o/r"), CodeHostError::Unavailable(_)));
    let mut limited = failure(403, "API rate limit exceeded");
    limited.rate_limited = true;
    assert!(matches!(limited.into_error(&op, "o/r"), CodeHostError::Unavailable(_)));
    assert!(Failure::transport("connection refused".into()).retryable());
    assert!(!failure(422, "Validation Failed").retryable());
}

#[test]
fn names_branches_and_shas_that_would_escape_a_url_path_are_refused() {
    for bad in ["", "../main", "a/../b", "a//b", "-x", "a b", "a?b", "a%2fb", "x.lock", "a/.hidden"] {
        assert!(check_branch(bad).is_err(), "{bad:?}");
    }
    check_branch("agentstudio/jq-1").unwrap();
    for bad in ["", "..", "a/b", "a b"] {
        assert!(check_name("owner", bad).is_err(), "{bad:?}");
    }
    check_name("repo", "worker-template.v2").unwrap();
    assert!(check_sha("HEAD").is_err());
    check_sha("0123abc").unwrap();
}
