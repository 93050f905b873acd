//! Templates, their builds and tags as E2B's API stores them, plus the template routes (get,
//! delete, alias lookup, tag listing/assignment). The build flow itself lives in `builds`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::control::{api_error, parse_body};
use crate::state::{Shared, TEAM_SLUG, lock, random_id, rfc3339};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BuildStatus {
    Waiting,
    Building,
    Ready,
    Error,
}

impl BuildStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Waiting => "waiting",
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Error => "error",
        }
    }
}

#[derive(Clone)]
pub(crate) struct LogEntry {
    pub(crate) timestamp: SystemTime,
    pub(crate) level: &'static str,
    pub(crate) message: String,
    pub(crate) step: Option<String>,
}

impl LogEntry {
    pub(crate) fn to_json(&self) -> Value {
        let mut entry = json!({"timestamp": rfc3339(self.timestamp), "level": self.level, "message": self.message});
        if let Some(step) = &self.step {
            entry["step"] = json!(step);
        }
        entry
    }
}

pub(crate) fn level_rank(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "info" => 1,
        "warn" => 2,
        _ => 3,
    }
}

pub(crate) struct Build {
    pub(crate) id: String,
    pub(crate) template_id: String,
    pub(crate) status: BuildStatus,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) cpu_count: u32,
    pub(crate) memory_mb: u32,
    pub(crate) requested_tags: Vec<String>,
    /// At most 4 + 2 × steps entries; the step count is bounded by the request body limit.
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) reason: Option<(String, Option<String>, Vec<LogEntry>)>,
}

pub(crate) struct Template {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
    pub(crate) envd_version: String,
    pub(crate) spawn_count: u64,
    pub(crate) last_spawned_at: Option<SystemTime>,
    pub(crate) builds: Vec<String>,
    /// tag → (build id, assigned at)
    pub(crate) tags: BTreeMap<String, (String, SystemTime)>,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) templates: BTreeMap<String, Template>,
    pub(crate) builds: HashMap<String, Build>,
    /// (template id, files hash) of COPY layers already uploaded.
    pub(crate) uploads: HashSet<(String, String)>,
}

impl Registry {
    /// A registry holding `names`, each with one ready build tagged `default`.
    pub fn with_templates(names: &[String], envd_version: &str) -> Registry {
        let mut registry = Registry::default();
        for name in names {
            let template_id = registry.template_for_name(name, envd_version);
            let build_id = registry.new_build(&template_id, 2, 512, Vec::new());
            let build = registry.builds.get_mut(&build_id).expect("just inserted");
            build.status = BuildStatus::Ready;
            build.finished_at = Some(SystemTime::now());
            registry.assign_tag(&template_id, "default", &build_id);
        }
        registry
    }

    pub(crate) fn find(&self, identifier: &str) -> Option<&Template> {
        let bare = identifier.strip_prefix(&format!("{TEAM_SLUG}/")).unwrap_or(identifier);
        self.templates.get(identifier).or_else(|| self.templates.values().find(|template| template.name == bare))
    }

    pub(crate) fn template_for_name(&mut self, name: &str, envd_version: &str) -> String {
        if let Some(template) = self.find(name) {
            return template.id.clone();
        }
        let id = random_id(20);
        let now = SystemTime::now();
        self.templates.insert(
            id.clone(),
            Template {
                id: id.clone(),
                name: name.to_string(),
                created_at: now,
                updated_at: now,
                envd_version: envd_version.to_string(),
                spawn_count: 0,
                last_spawned_at: None,
                builds: Vec::new(),
                tags: BTreeMap::new(),
            },
        );
        id
    }

    pub(crate) fn new_build(&mut self, template_id: &str, cpu_count: u32, memory_mb: u32, tags: Vec<String>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let now = SystemTime::now();
        self.builds.insert(
            id.clone(),
            Build {
                id: id.clone(),
                template_id: template_id.to_string(),
                status: BuildStatus::Waiting,
                created_at: now,
                updated_at: now,
                finished_at: None,
                cpu_count,
                memory_mb,
                requested_tags: tags,
                logs: Vec::new(),
                reason: None,
            },
        );
        if let Some(template) = self.templates.get_mut(template_id) {
            template.builds.push(id.clone());
        }
        id
    }

    pub(crate) fn assign_tag(&mut self, template_id: &str, tag: &str, build_id: &str) {
        if let Some(template) = self.templates.get_mut(template_id) {
            template.tags.insert(tag.to_string(), (build_id.to_string(), SystemTime::now()));
            template.updated_at = SystemTime::now();
        }
    }

    /// Resolves a create-time reference (`id`, `name`, `slug/name`, each with an optional
    /// `:tag`) to (template id, alias, cpu, memory), counting the spawn.
    pub fn resolve_for_spawn(&mut self, reference: &str) -> Result<(String, Option<String>, u32, u32), Response> {
        let (identifier, tag) = split_tag(reference);
        if identifier.is_empty() {
            return Err(api_error(StatusCode::BAD_REQUEST, "Invalid template reference: empty template name"));
        }
        let Some(template) = self.find(identifier) else {
            return Err(api_error(StatusCode::NOT_FOUND, format!("template '{identifier}' not found")));
        };
        let ready = template
            .tags
            .get(tag.unwrap_or("default"))
            .and_then(|(build_id, _)| self.builds.get(build_id))
            .filter(|build| build.status == BuildStatus::Ready);
        let Some(build) = ready else {
            let message = match tag {
                Some(tag) => format!("template '{identifier}' with tag '{tag}' not found"),
                None => format!("template '{identifier}' has no ready build"),
            };
            return Err(api_error(StatusCode::NOT_FOUND, message));
        };
        let resolved = (template.id.clone(), Some(template.name.clone()), build.cpu_count, build.memory_mb);
        if let Some(template) = self.templates.get_mut(&resolved.0) {
            template.spawn_count += 1;
            template.last_spawned_at = Some(SystemTime::now());
        }
        Ok(resolved)
    }
}

pub(crate) fn split_tag(reference: &str) -> (&str, Option<&str>) {
    match reference.rsplit_once(':') {
        Some((identifier, tag)) => (identifier, Some(tag)),
        None => (reference, None),
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_.".contains(&byte))
}

/// `GET /templates/{templateID}`: the template with its builds.
pub(crate) async fn get_template(State(shared): State<Arc<Shared>>, Path(template_id): Path<String>) -> Response {
    let registry = lock(&shared.registry);
    let Some(template) = registry.templates.get(&template_id) else {
        return api_error(StatusCode::NOT_FOUND, format!("Template '{template_id}' not found"));
    };
    let builds: Vec<Value> = template
        .builds
        .iter()
        .filter_map(|id| registry.builds.get(id))
        .map(|build| {
            let mut entry = json!({
                "buildID": build.id,
                "status": build.status.as_str(),
                "createdAt": rfc3339(build.created_at),
                "updatedAt": rfc3339(build.updated_at),
                "cpuCount": build.cpu_count,
                "memoryMB": build.memory_mb,
                "envdVersion": template.envd_version,
            });
            if let Some(finished_at) = build.finished_at {
                entry["finishedAt"] = json!(rfc3339(finished_at));
            }
            entry
        })
        .collect();
    let body = json!({
        "templateID": template.id,
        "public": false,
        "aliases": [template.name],
        "names": [format!("{TEAM_SLUG}/{}", template.name)],
        "createdAt": rfc3339(template.created_at),
        "updatedAt": rfc3339(template.updated_at),
        "lastSpawnedAt": template.last_spawned_at.map(rfc3339),
        "spawnCount": template.spawn_count,
        "builds": builds,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub(crate) async fn delete_template(State(shared): State<Arc<Shared>>, Path(template_id): Path<String>) -> Response {
    let mut registry = lock(&shared.registry);
    match registry.templates.remove(&template_id) {
        Some(template) => {
            for build in template.builds {
                registry.builds.remove(&build);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        None => api_error(StatusCode::NOT_FOUND, format!("Template '{template_id}' not found")),
    }
}

/// `GET /templates/aliases/{alias}`.
pub(crate) async fn get_alias(State(shared): State<Arc<Shared>>, Path(alias): Path<String>) -> Response {
    match lock(&shared.registry).find(&alias) {
        Some(template) => axum::Json(json!({"templateID": template.id, "public": false})).into_response(),
        None => api_error(StatusCode::NOT_FOUND, format!("Template alias '{alias}' not found")),
    }
}

/// `GET /templates/{templateID}/tags`.
pub(crate) async fn list_tags(State(shared): State<Arc<Shared>>, Path(template_id): Path<String>) -> Response {
    let registry = lock(&shared.registry);
    let Some(template) = registry.find(&template_id) else {
        return api_error(StatusCode::NOT_FOUND, format!("Template '{template_id}' not found"));
    };
    let tags: Vec<Value> = template
        .tags
        .iter()
        .map(|(tag, (build_id, at))| json!({"tag": tag, "buildID": build_id, "createdAt": rfc3339(*at)}))
        .collect();
    axum::Json(tags).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AssignTags {
    target: String,
    name: String,
    tags: Vec<String>,
}

/// `POST /templates/tags` `{"target":"name:tag","tags":[..]}`: points more tags at the target's build.
pub(crate) async fn assign_tags(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: AssignTags = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Some(bad) = request.tags.iter().find(|tag| !valid_name(tag)) {
        return api_error(StatusCode::BAD_REQUEST, format!("Invalid tag: '{bad}'"));
    }
    let (identifier, tag) = split_tag(&request.target);
    let tag = tag.unwrap_or("default");
    let mut registry = lock(&shared.registry);
    let Some(template) = registry.find(identifier) else {
        return api_error(StatusCode::NOT_FOUND, format!("template '{identifier}' not found"));
    };
    let Some((build_id, _)) = template.tags.get(tag).cloned() else {
        return api_error(StatusCode::NOT_FOUND, format!("template '{identifier}' with tag '{tag}' not found"));
    };
    let template_id = template.id.clone();
    for new_tag in &request.tags {
        registry.assign_tag(&template_id, new_tag, &build_id);
    }
    (StatusCode::CREATED, axum::Json(json!({"tags": request.tags, "buildID": build_id}))).into_response()
}

/// `DELETE /templates/tags` `{"name":..,"tags":[..]}`.
pub(crate) async fn delete_tags(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: AssignTags = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let mut registry = lock(&shared.registry);
    let Some(template_id) = registry.find(split_tag(&request.name).0).map(|template| template.id.clone()) else {
        return api_error(StatusCode::NOT_FOUND, format!("template '{}' not found", request.name));
    };
    if let Some(template) = registry.templates.get_mut(&template_id) {
        for tag in &request.tags {
            template.tags.remove(tag);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
