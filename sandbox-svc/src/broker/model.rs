//! Validated requests and the views the broker hands back: the domain side of the wire contract.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::broker::BrokerError;
use crate::workspace_path::WorkspacePath;

/// Most environment or metadata entries one request may carry.
pub const MAX_MAP_ENTRIES: usize = 256;
/// Longest key or value in an environment or metadata map, in bytes.
pub const MAX_MAP_VALUE_BYTES: usize = 32 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSandbox {
    pub template: String,
    pub env: BTreeMap<String, String>,
    /// `None` = the template's default.
    pub timeout: Option<Duration>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// A built version to use instead of the active one.
    pub template_version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StartProcess {
    pub argv: Vec<String>,
    pub cwd: Option<WorkspacePath>,
    pub env: BTreeMap<String, String>,
    pub tag: String,
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Running,
    Killed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    KilledByRequest,
    TimedOut,
    BrokerShutdown,
}

#[derive(Debug, Clone)]
pub struct Ended {
    pub at: SystemTime,
    pub reason: EndReason,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct SandboxView {
    pub sandbox_id: String,
    pub template: String,
    pub state: SandboxState,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    pub metadata: BTreeMap<String, String>,
    pub ended: Option<Ended>,
    pub provider: &'static str,
    pub template_version: String,
    pub checkout_sha: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProcessView {
    pub process_id: String,
    pub argv: Vec<String>,
    pub tag: String,
    pub cwd: String,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub pid: u32,
    pub started_at: SystemTime,
    pub last_seq: u64,
}

/// Environment variable names: non-empty, no `=`, no NUL.
pub fn validate_env_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("variable names must not be empty".into());
    }
    if key.contains('=') || key.contains('\0') {
        return Err(format!("variable name {key:?} must not contain '=' or NUL"));
    }
    Ok(())
}

/// Checks an env map from a request; `field` is the request field name.
pub fn validate_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), BrokerError> {
    validate_map(field, env)?;
    for (key, value) in env {
        validate_env_key(key).map_err(|message| BrokerError::invalid(field, message))?;
        if value.contains('\0') {
            return Err(BrokerError::invalid(field, format!("value of {key:?} contains a NUL byte")));
        }
    }
    Ok(())
}

/// Bounds the size of a string map from a request.
pub fn validate_map(field: &str, map: &BTreeMap<String, String>) -> Result<(), BrokerError> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(BrokerError::invalid(field, format!("{} entries, at most {MAX_MAP_ENTRIES} allowed", map.len())));
    }
    if let Some((key, _)) = map.iter().find(|(k, v)| k.len() > MAX_MAP_VALUE_BYTES || v.len() > MAX_MAP_VALUE_BYTES) {
        return Err(BrokerError::invalid(
            field,
            format!("entry {:?} is longer than {MAX_MAP_VALUE_BYTES} bytes", truncate(key, 64)),
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A template as clients see it: the manifest plus the runtime the broker will actually give it.
#[derive(Debug, Clone)]
pub struct TemplateView {
    pub template: crate::template::Template,
    pub runtime: crate::template::Runtime,
    /// Why `runtime` differs from the manifest's; empty when it does not.
    pub runtime_note: String,
    pub version: crate::template::registry::VersionRecord,
    /// The smoke test this broker's provider runs for it.
    pub smoke_test: String,
}
