//! The unary part of envd's `filesystem.Filesystem` service (Stat, MakeDir, Move, ListDir,
//! Remove) over the sandbox's directory, with envd's `EntryInfo` JSON and error codes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::connect::{self, Code, ConnectError};
use crate::envd::{self, EnvdSandbox};
use crate::state::{SandboxFs, Shared, home_of, rfc3339};

#[derive(Deserialize, Default)]
#[serde(default)]
struct PathRequest {
    path: String,
    depth: u32,
    source: String,
    destination: String,
}

/// Common prologue: sandbox, token, content type, user, message.
fn prologue(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    type_name: &str,
) -> Result<(EnvdSandbox, String, PathRequest), Response> {
    let sandbox = envd::authorize(shared, headers)?;
    if let Some(response) = connect::reject_content_type(headers, connect::UNARY_CONTENT_TYPE) {
        return Err(response);
    }
    let user = envd::username(headers).map_err(IntoResponse::into_response)?;
    let request = connect::decode_message(body, type_name).map_err(IntoResponse::into_response)?;
    Ok((sandbox, user, request))
}

/// The absolute sandbox path, `~` and relative paths resolved against the user's home.
fn expand(path: &str, user: &str) -> String {
    let home = home_of(user);
    match path {
        "" | "~" => home,
        _ if path.starts_with("~/") => format!("{home}/{}", &path[2..]),
        _ if path.starts_with('/') => path.to_string(),
        _ => format!("{home}/{path}"),
    }
}

/// Go's `os.FileMode.String()`: type letter, then `rwx` triplets.
fn permissions(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    let kind = if metadata.is_dir() {
        'd'
    } else if file_type.is_symlink() {
        'L'
    } else if file_type.is_fifo() {
        'p'
    } else if file_type.is_socket() {
        'S'
    } else if file_type.is_char_device() {
        'c'
    } else if file_type.is_block_device() {
        'D'
    } else {
        '-'
    };
    let mode = metadata.permissions().mode();
    let mut text = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

fn file_type(metadata: &std::fs::Metadata) -> &'static str {
    if metadata.file_type().is_symlink() {
        "FILE_TYPE_SYMLINK"
    } else if metadata.is_dir() {
        "FILE_TYPE_DIRECTORY"
    } else {
        "FILE_TYPE_FILE"
    }
}

/// `EntryInfo` as protojson prints it: int64 `size` as a string, zero values left out.
fn entry_info(fs: &SandboxFs, sandbox_path: &str, user: &str) -> Result<Value, ConnectError> {
    let host = fs.host_path(sandbox_path);
    let metadata = std::fs::symlink_metadata(&host).map_err(|error| not_found_or_internal(sandbox_path, error))?;
    let mut entry = Map::new();
    let name = Path::new(sandbox_path).file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    entry.insert("name".into(), json!(name));
    entry.insert("type".into(), json!(file_type(&metadata)));
    entry.insert("path".into(), json!(sandbox_path));
    if metadata.size() != 0 {
        entry.insert("size".into(), json!(metadata.size().to_string()));
    }
    entry.insert("mode".into(), json!(metadata.permissions().mode() & 0o777));
    entry.insert("permissions".into(), json!(permissions(&metadata)));
    entry.insert("owner".into(), json!(user));
    entry.insert("group".into(), json!(user));
    if let Ok(modified) = metadata.modified() {
        entry.insert("modifiedTime".into(), json!(rfc3339(modified)));
    }
    if metadata.file_type().is_symlink()
        && let Ok(target) = std::fs::read_link(&host)
    {
        entry.insert("symlinkTarget".into(), json!(target.to_string_lossy()));
    }
    Ok(Value::Object(entry))
}

fn not_found_or_internal(path: &str, error: std::io::Error) -> ConnectError {
    if error.kind() == std::io::ErrorKind::NotFound {
        ConnectError::new(Code::NotFound, format!("file not found: stat {path}: no such file or directory"))
    } else {
        ConnectError::new(Code::Internal, format!("error getting file info: {error}"))
    }
}

fn respond(result: Result<Value, ConnectError>) -> Response {
    match result {
        Ok(message) => connect::unary_ok(message),
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn stat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, user, request) = match prologue(&shared, &headers, &body, "filesystem.StatRequest") {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let path = expand(&request.path, &user);
    respond(entry_info(&sandbox.fs, &path, &user).map(|entry| json!({"entry": entry})))
}

pub(crate) async fn make_dir(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, user, request) = match prologue(&shared, &headers, &body, "filesystem.MakeDirRequest") {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let path = expand(&request.path, &user);
    let host = sandbox.fs.host_path(&path);
    let result = match std::fs::metadata(&host) {
        Ok(metadata) if metadata.is_dir() => {
            Err(ConnectError::new(Code::AlreadyExists, format!("directory already exists: {path}")))
        }
        Ok(_) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("path already exists but it is not a directory: {path}"),
        )),
        Err(_) => std::fs::create_dir_all(&host)
            .map(|()| {
                let name = Path::new(&path).file_name().map(|name| name.to_string_lossy().into_owned());
                json!({"entry": {"name": name.unwrap_or_default(), "type": "FILE_TYPE_DIRECTORY", "path": path}})
            })
            .map_err(|error| ConnectError::new(Code::Internal, format!("error creating directory: {error}"))),
    };
    respond(result)
}

pub(crate) async fn list_dir(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, user, request) = match prologue(&shared, &headers, &body, "filesystem.ListDirRequest") {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let path = expand(&request.path, &user);
    let host = sandbox.fs.host_path(&path);
    let result = match std::fs::metadata(&host) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ConnectError::new(Code::NotFound, format!("path not found: lstat {path}: no such file or directory")))
        }
        Err(error) => Err(ConnectError::new(Code::Internal, format!("error getting file info: {error}"))),
        Ok(metadata) if !metadata.is_dir() => {
            Err(ConnectError::new(Code::InvalidArgument, format!("path is not a directory: {path}")))
        }
        Ok(_) => {
            let mut entries = Vec::new();
            walk(&sandbox.fs, &path, &user, request.depth.max(1), &mut entries).map(|()| {
                // protojson leaves an empty repeated field out.
                if entries.is_empty() { json!({}) } else { json!({"entries": entries}) }
            })
        }
    };
    respond(result)
}

/// Entries below `dir` down to `depth` levels, in name order (Go's `WalkDir` is lexical too).
fn walk(fs: &SandboxFs, dir: &str, user: &str, depth: u32, entries: &mut Vec<Value>) -> Result<(), ConnectError> {
    let reading = std::fs::read_dir(fs.host_path(dir))
        .map_err(|error| ConnectError::new(Code::Internal, format!("error reading directory {dir}: {error}")))?;
    let mut names: Vec<String> =
        reading.filter_map(|entry| entry.ok()).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let child = format!("{}/{name}", dir.trim_end_matches('/'));
        let entry = entry_info(fs, &child, user)?;
        let is_dir = entry["type"] == "FILE_TYPE_DIRECTORY";
        entries.push(entry);
        if is_dir && depth > 1 {
            walk(fs, &child, user, depth - 1, entries)?;
        }
    }
    Ok(())
}

pub(crate) async fn remove(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, user, request) = match prologue(&shared, &headers, &body, "filesystem.RemoveRequest") {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let host = sandbox.fs.host_path(&expand(&request.path, &user));
    // Like Go's `os.RemoveAll`: a missing path is not an error.
    let result = match std::fs::symlink_metadata(&host) {
        Err(_) => Ok(()),
        Ok(metadata) if metadata.is_dir() && host != sandbox.fs.root() => std::fs::remove_dir_all(&host),
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => std::fs::remove_file(&host),
    };
    respond(
        result
            .map(|()| json!({}))
            .map_err(|error| ConnectError::new(Code::Internal, format!("error removing file or directory: {error}"))),
    )
}

pub(crate) async fn move_entry(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (sandbox, user, request) = match prologue(&shared, &headers, &body, "filesystem.MoveRequest") {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let source = expand(&request.source, &user);
    let destination = expand(&request.destination, &user);
    let from = sandbox.fs.host_path(&source);
    let to = sandbox.fs.host_path(&destination);
    let result = if std::fs::symlink_metadata(&from).is_err() {
        Err(ConnectError::new(
            Code::NotFound,
            format!("source file not found: stat {source}: no such file or directory"),
        ))
    } else {
        to.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::rename(&from, &to))
            .map_err(|error| ConnectError::new(Code::Internal, format!("error renaming: {error}")))
            .and_then(|()| entry_info(&sandbox.fs, &destination, &user))
            .map(|entry| json!({"entry": entry}))
    };
    respond(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_expand_against_the_users_home() {
        assert_eq!(expand("a/b", "user"), "/home/user/a/b");
        assert_eq!(expand("~/x", "root"), "/root/x");
        assert_eq!(expand("/etc/x", "user"), "/etc/x");
        assert_eq!(expand("", "user"), "/home/user");
    }
}
