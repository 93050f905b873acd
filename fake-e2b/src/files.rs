//! envd's `GET /files` (download) and `POST /files` (multipart or octet-stream upload), with
//! the access-token-or-signature check secured sandboxes use on these two routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::envd::{self, EnvdSandbox, envd_http_error};
use crate::state::{Shared, home_of};

/// Checks `X-Access-Token`, else the `signature` query parameter (`v1_` + unpadded base64 of
/// sha256 over `path:operation:user:token[:expiration]`), exactly as envd validates it.
fn check_signing(
    sandbox: &EnvdSandbox,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    operation: &str,
) -> Result<(), Response> {
    let Some(token) = &sandbox.access_token else {
        return Ok(());
    };
    let unauthorized = |message: &str| envd_http_error(StatusCode::UNAUTHORIZED, message);
    if let Some(sent) = headers.get("x-access-token").and_then(|value| value.to_str().ok()) {
        return if sent == token {
            Ok(())
        } else {
            Err(unauthorized("access token present in header but does not match"))
        };
    }
    let Some(signature) = query.get("signature") else {
        return Err(unauthorized("missing signature query parameter"));
    };
    let path = query.get("path").map_or("", String::as_str);
    let user = query.get("username").map_or("", String::as_str);
    let mut signed = format!("{path}:{operation}:{user}:{token}");
    if let Some(expiration) = query.get("signature_expiration") {
        let expiration: u64 = expiration.parse().map_err(|_| unauthorized("invalid signature expiration"))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if expiration < now {
            return Err(unauthorized("signature is already expired"));
        }
        signed.push_str(&format!(":{expiration}"));
    }
    let expected = format!("v1_{}", STANDARD_NO_PAD.encode(Sha256::digest(signed.as_bytes())));
    if *signature == expected { Ok(()) } else { Err(unauthorized("invalid signature")) }
}

fn user_of(query: &HashMap<String, String>) -> Result<String, Response> {
    match query.get("username").map(String::as_str) {
        None | Some("") | Some("user") => Ok("user".to_string()),
        Some("root") => Ok("root".to_string()),
        Some(other) => Err(envd_http_error(StatusCode::UNAUTHORIZED, &format!("invalid user: '{other}'"))),
    }
}

/// The absolute sandbox path for `path`; relative paths resolve against the user's home.
fn sandbox_path(path: &str, user: &str) -> String {
    if path.starts_with('/') { path.to_string() } else { format!("{}/{path}", home_of(user)) }
}

pub(crate) async fn read_file(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let sandbox = match envd::resolve(&shared, &headers) {
        Ok(sandbox) => sandbox,
        Err(response) => return response,
    };
    if let Err(response) = check_signing(&sandbox, &headers, &query, "read") {
        return response;
    }
    let user = match user_of(&query) {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Some(path) = query.get("path").filter(|path| !path.is_empty()) else {
        return envd_http_error(StatusCode::BAD_REQUEST, "path is required");
    };
    let path = sandbox_path(path, &user);
    let host = sandbox.fs.host_path(&path);
    if host.is_dir() {
        return envd_http_error(StatusCode::BAD_REQUEST, &format!("path '{path}' is a directory"));
    }
    match tokio::fs::read(&host).await {
        Ok(content) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], content).into_response(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            envd_http_error(StatusCode::NOT_FOUND, &format!("path '{path}' does not exist"))
        }
        Err(error) => envd_http_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("error reading file: {error}")),
    }
}

pub(crate) async fn write_files(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sandbox = match envd::resolve(&shared, &headers) {
        Ok(sandbox) => sandbox,
        Err(response) => return response,
    };
    if let Err(response) = check_signing(&sandbox, &headers, &query, "write") {
        return response;
    }
    let user = match user_of(&query) {
        Ok(user) => user,
        Err(response) => return response,
    };
    if headers.get(header::CONTENT_ENCODING).is_some_and(|value| value != "identity") {
        return envd_http_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content encodings are not supported by fake-e2b");
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let query_path = query.get("path").filter(|path| !path.is_empty());
    let uploads: Vec<(String, Bytes)> = if content_type.starts_with("multipart/form-data") {
        let Some(boundary) = boundary_of(content_type) else {
            return envd_http_error(
                StatusCode::BAD_REQUEST,
                "error parsing multipart form: no multipart boundary param in Content-Type",
            );
        };
        match parse_multipart(&body, &boundary) {
            Some(parts) => parts
                .into_iter()
                .filter(|part| part.name == "file")
                .filter_map(|part| query_path.cloned().or(part.filename).map(|path| (path, part.content)))
                .collect(),
            None => return envd_http_error(StatusCode::BAD_REQUEST, "error parsing multipart form: malformed body"),
        }
    } else {
        match query_path {
            Some(path) => vec![(path.clone(), body)],
            None => return envd_http_error(StatusCode::BAD_REQUEST, "path is required for an octet-stream upload"),
        }
    };
    let mut written = Vec::new();
    for (path, content) in uploads {
        let path = sandbox_path(&path, &user);
        let host = sandbox.fs.host_path(&path);
        if host.is_dir() {
            return envd_http_error(StatusCode::BAD_REQUEST, &format!("path '{path}' is a directory"));
        }
        let result = async {
            if let Some(parent) = host.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::write(&host, &content).await
        }
        .await;
        if let Err(error) = result {
            let message = format!("error writing file '{path}': {error}");
            return envd_http_error(StatusCode::INTERNAL_SERVER_ERROR, &message);
        }
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        written.push(json!({"path": path, "name": name, "type": "file"}));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Value::Array(written).to_string()).into_response()
}

fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').map(str::trim).find_map(|param| {
        let value = param.strip_prefix("boundary=")?;
        Some(value.trim_matches('"').to_string())
    })
}

struct Part {
    name: String,
    filename: Option<String>,
    content: Bytes,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|window| window == needle).map(|at| at + from)
}

/// Parses a `multipart/form-data` body; `None` when it is malformed.
fn parse_multipart(body: &Bytes, boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0)? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        at = find(body, b"\r\n", at)? + 2;
        let headers_end = find(body, b"\r\n\r\n", at)?;
        let head = std::str::from_utf8(&body[at..headers_end]).ok()?;
        let content_start = headers_end + 4;
        let content_end = find(body, format!("\r\n{delimiter}").as_bytes(), content_start)?;
        let disposition =
            head.split("\r\n").find(|line| line.to_ascii_lowercase().starts_with("content-disposition:")).unwrap_or("");
        parts.push(Part {
            name: disposition_param(disposition, "name").unwrap_or_default(),
            filename: disposition_param(disposition, "filename"),
            content: body.slice(content_start..content_end),
        });
        at = content_end + 2 + delimiter.len();
    }
}

fn disposition_param(disposition: &str, key: &str) -> Option<String> {
    disposition.split(';').map(str::trim).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        (name.trim() == key).then(|| value.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_parse_into_named_parts() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"dir/a.txt\"\r\n\
              Content-Type: application/octet-stream\r\n\r\nhello\r\n--XyZ\r\n\
              Content-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n\r\n--XyZ--\r\n",
        );
        let parts = parse_multipart(&body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("dir/a.txt"));
        assert_eq!(&parts[0].content[..], b"hello");
        assert_eq!(&parts[1].content[..], b"");
        assert!(parse_multipart(&Bytes::from_static(b"--XyZ\r\nbroken"), "XyZ").is_none());
        assert_eq!(boundary_of("multipart/form-data; boundary=\"abc\"").as_deref(), Some("abc"));
    }
}
