//! Dispatch: who is calling (a token, an installation token, an App JWT), then which endpoint.

use axum::http::Method;
use octocrab::jsonwebtoken::{self, Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::json::error;
use super::{Recorded, State, git_data, pulls};

pub enum Body {
    Json(Value),
    Text(String),
    Empty,
}

pub struct Reply {
    pub status: u16,
    pub body: Body,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply { status, body: Body::Json(body), headers: Vec::new() }
    }

    pub fn error(status: u16, message: &str, docs: &str) -> Reply {
        Reply::json(status, error(message, docs, status))
    }

    pub fn not_found() -> Reply {
        Reply::error(404, "Not Found", "")
    }

    /// GitHub's 422 with an `errors` list.
    pub fn validation(errors: Value, docs: &str) -> Reply {
        let mut body = error("Validation Failed", docs, 422);
        body["errors"] = errors;
        Reply::json(422, body)
    }
}

pub fn route(state: &mut State, request: &Recorded) -> Reply {
    if request.header("user-agent").is_none_or(str::is_empty) {
        return Reply::error(
            403,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
            "overview/resources-in-the-rest-api#user-agent-required",
        );
    }
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    if let ["app", "installations", id, "access_tokens"] = segments.as_slice() {
        return mint(state, request, id);
    }
    let ["repos", owner, repo, rest @ ..] = segments.as_slice() else {
        return Reply::not_found();
    };
    let caller = match caller(state, request) {
        Ok(login) => login,
        Err(reply) => return reply,
    };
    if *owner != state.owner || *repo != state.repo_name {
        return Reply::not_found();
    }
    let body = if request.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&request.body) {
            Ok(value) => value,
            Err(_) => return Reply::error(400, "Problems parsing JSON", "overview/resources-in-the-rest-api"),
        }
    };
    let query = query(&request.query);
    let call = Call { method: &request.method, rest, body: &body, query: &query, caller: &caller, request };
    match rest {
        ["git", ..] => git_data::route(state, &call),
        ["pulls", ..] | ["issues", ..] => pulls::route(state, &call),
        _ => Reply::not_found(),
    }
}

/// One authenticated call to `/repos/{owner}/{repo}/{rest}`.
pub struct Call<'a> {
    pub method: &'a Method,
    pub rest: &'a [&'a str],
    pub body: &'a Value,
    pub query: &'a [(String, String)],
    pub caller: &'a str,
    pub request: &'a Recorded,
}

impl Call<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }
}

fn query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// The login behind the `Authorization` header, or GitHub's 401.
fn caller(state: &State, request: &Recorded) -> Result<String, Reply> {
    let bad = || Reply::error(401, "Bad credentials", "");
    let header = request.header("authorization").ok_or_else(bad)?;
    let credential = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("token ")).ok_or_else(bad)?;
    if state.token.as_deref() == Some(credential) {
        return Ok("octo-bot".into());
    }
    let now = chrono::Utc::now();
    if state.minted.iter().any(|(token, expires)| token == credential && *expires > now) {
        return Ok("agent-studio[bot]".into());
    }
    Err(bad())
}

#[derive(serde::Deserialize)]
struct AppClaims {
    iss: Value,
}

/// `POST /app/installations/{id}/access_tokens`: the caller must present an RS256 JWT that the
/// App's key signed, with `iss` = the App id and a valid `exp`.
fn mint(state: &mut State, request: &Recorded, id: &str) -> Reply {
    let docs = "apps/apps#create-an-installation-access-token-for-an-app";
    let Some(app) = state.app.clone() else { return Reply::not_found() };
    if request.method != Method::POST {
        return Reply::not_found();
    }
    let jwt = request.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).unwrap_or_default();
    let undecodable = || Reply::error(401, "A JSON web token could not be decoded", docs);
    let Ok(header) = jsonwebtoken::decode_header(jwt) else { return undecodable() };
    if header.alg != Algorithm::RS256 {
        return undecodable();
    }
    let key = DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()).expect("test public key");
    let mut validation = Validation::new(Algorithm::RS256);
    // `iss` is checked below: jsonwebtoken only recognises a string `iss`, GitHub takes the numeric App id.
    validation.required_spec_claims = ["exp", "iat"].iter().map(|s| s.to_string()).collect();
    let claims = match jsonwebtoken::decode::<AppClaims>(jwt, &key, &validation) {
        Ok(claims) => claims,
        Err(e) => {
            eprintln!("fake github: JWT refused: {e:?}");
            return undecodable();
        }
    };
    let iss_matches = claims.claims.iss == json!(app.app_id) || claims.claims.iss == json!(app.app_id.to_string());
    if !iss_matches {
        return Reply::error(401, "'Issuer' claim ('iss') must be an Integer", docs);
    }
    if id != app.installation_id.to_string() {
        return Reply::not_found();
    }
    let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
    let expires_at = chrono::Utc::now() + chrono::Duration::from_std(app.token_ttl).unwrap();
    state.minted.push((token.clone(), expires_at));
    Reply::json(
        201,
        json!({
            "token": token,
            "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "permissions": { "contents": "write", "metadata": "read", "pull_requests": "write" },
            "repository_selection": "selected",
        }),
    )
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn full_name(state: &State) -> String {
    format!("{}/{}", state.owner, state.repo_name)
}
