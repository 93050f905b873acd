//! The v2 ("Build System 2.0") template build flow: request a build, hand out upload links
//! for COPY layers, start it with steps, poll its status and logs. Nothing is built: a build
//! logs one line per step and becomes `ready` unless something in it contains `FAIL_BUILD`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::control::{api_error, parse_body};
use crate::state::{Shared, TEAM_SLUG, lock};
use crate::templates::{BuildStatus, LogEntry, level_rank, split_tag, valid_name};

/// A build fails when this appears anywhere in its start request (steps, commands, base image).
pub const FAIL_MARKER: &str = "FAIL_BUILD";

/// Most log entries one status call returns, as E2B caps `limit`.
const MAX_LOG_PAGE: usize = 100;
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BuildRequest {
    name: Option<String>,
    alias: Option<String>,
    tags: Vec<String>,
    cpu_count: Option<u32>,
    #[serde(rename = "memoryMB")]
    memory_mb: Option<u32>,
}

/// `POST /v3/templates`: registers a template (or reuses it by name) and a new build.
pub(crate) async fn request_build(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: BuildRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let Some(full_name) = request.name.or(request.alias) else {
        return api_error(StatusCode::BAD_REQUEST, "Name is required");
    };
    let full_name = full_name.strip_prefix(&format!("{TEAM_SLUG}/")).unwrap_or(&full_name).to_string();
    let (name, name_tag) = split_tag(&full_name);
    let mut tags: Vec<String> = name_tag.map(str::to_string).into_iter().chain(request.tags).collect();
    tags.dedup();
    if let Some(bad) = std::iter::once(name).chain(tags.iter().map(String::as_str)).find(|part| !valid_name(part)) {
        return api_error(StatusCode::BAD_REQUEST, format!("Invalid template name or tag: '{bad}'"));
    }
    let mut registry = lock(&shared.registry);
    let template_id = registry.template_for_name(name, &shared.envd_version);
    let build_id = registry.new_build(
        &template_id,
        request.cpu_count.unwrap_or(2),
        request.memory_mb.unwrap_or(512),
        tags.clone(),
    );
    let body = json!({
        "templateID": template_id,
        "buildID": build_id,
        "public": false,
        "names": [format!("{TEAM_SLUG}/{name}")],
        "tags": tags,
        "aliases": [name],
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// `GET /templates/{templateID}/files/{hash}`: whether a COPY layer is cached, else where to PUT it.
pub(crate) async fn file_upload_link(
    State(shared): State<Arc<Shared>>,
    Path((template_id, hash)): Path<(String, String)>,
) -> Response {
    let registry = lock(&shared.registry);
    if !registry.templates.contains_key(&template_id) {
        return api_error(StatusCode::NOT_FOUND, format!("Template '{template_id}' not found"));
    }
    let body = if registry.uploads.contains(&(template_id.clone(), hash.clone())) {
        json!({"present": true})
    } else {
        json!({"present": false, "url": format!("{}/_upload/{template_id}/{hash}", shared.api_url)})
    };
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// The "presigned" upload URL: like S3, it insists on an explicit Content-Length.
pub(crate) async fn upload_layer(
    State(shared): State<Arc<Shared>>,
    Path((template_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return (StatusCode::LENGTH_REQUIRED, "MissingContentLength: You must provide the Content-Length HTTP header.")
            .into_response();
    }
    lock(&shared.registry).uploads.insert((template_id, hash));
    StatusCode::OK.into_response()
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Step {
    #[serde(rename = "type")]
    kind: String,
    args: Vec<String>,
    files_hash: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StartBuild {
    from_image: Option<String>,
    from_template: Option<String>,
    steps: Vec<Step>,
    start_cmd: Option<String>,
    ready_cmd: Option<String>,
}

/// One planned log line; `failed` marks the line the build dies on.
struct Planned {
    level: &'static str,
    message: String,
    step: Option<String>,
    failed: bool,
}

fn planned(level: &'static str, message: String, step: &str, failed: bool) -> Planned {
    Planned { level, message, step: Some(step.to_string()), failed }
}

fn plan(start: &StartBuild, template_id: &str, build_id: &str, uploaded: &dyn Fn(&str) -> bool) -> Vec<Planned> {
    let mut lines = vec![Planned {
        level: "info",
        message: format!("Building template {template_id}/{build_id}"),
        step: None,
        failed: false,
    }];
    let base = start.from_template.clone().or(start.from_image.clone()).unwrap_or_else(|| "e2bdev/base".to_string());
    lines.push(planned("info", format!("FROM {base}"), "base", false));
    if base.contains(FAIL_MARKER) {
        lines.push(planned("error", format!("failed to pull base image '{base}'"), "base", true));
        return lines;
    }
    let total = start.steps.len();
    for (index, step) in start.steps.iter().enumerate() {
        let name = (index + 1).to_string();
        let text = format!("{} {}", step.kind, step.args.join(" "));
        lines.push(planned("info", format!("[builder {}/{total}] {}", index + 1, text.trim_end()), &name, false));
        let failure = match step.kind.as_str() {
            "COPY" | "ADD" => match &step.files_hash {
                Some(hash) if !uploaded(hash) => Some(format!("files for layer '{hash}' were not uploaded")),
                _ => None,
            },
            "RUN" | "ENV" | "ARG" | "WORKDIR" | "USER" => None,
            other => Some(format!("unsupported step type '{other}'")),
        };
        let failure = failure.or_else(|| {
            text.contains(FAIL_MARKER).then(|| format!("command '{}' failed: exit status 1", step.args.join(" ")))
        });
        if let Some(message) = failure {
            lines.push(planned("error", message, &name, true));
            return lines;
        }
    }
    for (label, command) in [("start command", &start.start_cmd), ("ready command", &start.ready_cmd)] {
        if let Some(command) = command {
            lines.push(planned("info", format!("Running {label}: {command}"), "finalize", false));
            if command.contains(FAIL_MARKER) {
                lines.push(planned("error", format!("{label} failed: exit status 1"), "finalize", true));
                return lines;
            }
        }
    }
    lines.push(planned("info", "Template build finished".to_string(), "finalize", false));
    lines
}

/// `POST /v2/templates/{templateID}/builds/{buildID}`: starts the simulated build.
pub(crate) async fn start_build(
    State(shared): State<Arc<Shared>>,
    Path((template_id, build_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let start: StartBuild = match parse_body(&body) {
        Ok(start) => start,
        Err(response) => return response,
    };
    let lines = {
        let mut registry = lock(&shared.registry);
        let uploads = registry.uploads.clone();
        let uploaded = |hash: &str| uploads.contains(&(template_id.clone(), hash.to_string()));
        let Some(build) = registry.builds.get_mut(&build_id).filter(|build| build.template_id == template_id) else {
            return api_error(StatusCode::NOT_FOUND, format!("Build '{build_id}' not found"));
        };
        if build.status != BuildStatus::Waiting {
            return api_error(StatusCode::CONFLICT, format!("Build '{build_id}' has already been started"));
        }
        build.status = BuildStatus::Building;
        build.updated_at = SystemTime::now();
        plan(&start, &template_id, &build_id, &uploaded)
    };
    tokio::spawn(run_build(shared.clone(), build_id, lines));
    StatusCode::ACCEPTED.into_response()
}

async fn run_build(shared: Arc<Shared>, build_id: String, lines: Vec<Planned>) {
    let mut failure = None;
    for line in lines {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(shared.build_step_delay) => {}
        }
        let entry =
            LogEntry { timestamp: SystemTime::now(), level: line.level, message: line.message, step: line.step };
        let mut registry = lock(&shared.registry);
        let Some(build) = registry.builds.get_mut(&build_id) else { return };
        build.logs.push(entry.clone());
        build.updated_at = entry.timestamp;
        if line.failed {
            failure = Some(entry);
        }
    }
    let mut registry = lock(&shared.registry);
    let Some(build) = registry.builds.get_mut(&build_id) else { return };
    build.finished_at = Some(SystemTime::now());
    match failure {
        Some(entry) => {
            build.status = BuildStatus::Error;
            let context = build.logs[build.logs.len().saturating_sub(5)..].to_vec();
            build.reason = Some((entry.message.clone(), entry.step.clone(), context));
        }
        None => {
            build.status = BuildStatus::Ready;
            let template_id = build.template_id.clone();
            let tags = if build.requested_tags.is_empty() {
                vec!["default".to_string()]
            } else {
                build.requested_tags.clone()
            };
            for tag in tags {
                registry.assign_tag(&template_id, &tag, &build_id);
            }
        }
    }
}

/// `GET /templates/{templateID}/builds/{buildID}/status?logsOffset&limit&level`.
pub(crate) async fn build_status(
    State(shared): State<Arc<Shared>>,
    Path((template_id, build_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let number = |key: &str| query.get(key).map(|value| value.parse::<usize>());
    let offset = match number("logsOffset") {
        None => 0,
        Some(Ok(offset)) => offset,
        Some(Err(_)) => return api_error(StatusCode::BAD_REQUEST, "logsOffset must be a non-negative integer"),
    };
    let limit = match number("limit") {
        None => MAX_LOG_PAGE,
        Some(Ok(limit)) if limit <= MAX_LOG_PAGE => limit,
        Some(_) => return api_error(StatusCode::BAD_REQUEST, "limit must be an integer between 0 and 100"),
    };
    let min_level = query.get("level").map_or(0, |level| level_rank(level));
    let registry = lock(&shared.registry);
    let Some(build) = registry.builds.get(&build_id).filter(|build| build.template_id == template_id) else {
        return api_error(StatusCode::NOT_FOUND, format!("Build '{build_id}' not found"));
    };
    let entries: Vec<&LogEntry> =
        build.logs.iter().filter(|entry| level_rank(entry.level) >= min_level).skip(offset).take(limit).collect();
    let mut body = json!({
        "templateID": template_id,
        "buildID": build_id,
        "status": build.status.as_str(),
        "logs": entries.iter().map(|entry| entry.message.clone()).collect::<Vec<_>>(),
        "logEntries": entries.iter().map(|entry| entry.to_json()).collect::<Vec<_>>(),
    });
    if let Some((message, step, context)) = &build.reason {
        let mut reason =
            json!({"message": message, "logEntries": context.iter().map(LogEntry::to_json).collect::<Vec<_>>()});
        if let Some(step) = step {
            reason["step"] = json!(step);
        }
        body["reason"] = reason;
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}
