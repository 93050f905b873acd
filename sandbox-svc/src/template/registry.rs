//! Template versions: every build's record, the files each version was built from, and which
//! version of each template is active. Persisted in the broker's data dir, so a restart keeps
//! the active versions (and a rollback target is always on disk).
//!
//! A version is content-addressed (`sha256:` over the template directory's files): building the
//! same content twice yields the same version, whatever commit it came from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Template, TemplateError, template_from_files};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    Building,
    Built,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version_id: String,
    pub template: String,
    pub git_sha: String,
    /// 0 for versions not made from a pull request (the seed).
    pub pr_number: u64,
    /// Unix milliseconds.
    pub built_at: i64,
    pub status: VersionStatus,
    /// Unix milliseconds of the last time it became active.
    pub promoted_at: Option<i64>,
    pub builder: String,
    pub artifact: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotBuilt(String),
    #[error("template store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Oldest first. One record per distinct build: grows by one per merged template change.
    versions: Vec<VersionRecord>,
    /// Template name → active version id.
    active: BTreeMap<String, String>,
}

pub struct TemplateRegistry {
    dir: PathBuf,
    state: Mutex<State>,
    /// Parsed manifests by version id: versions never change, so this only grows with versions.
    parsed: Mutex<HashMap<String, Template>>,
}

impl TemplateRegistry {
    pub fn open(dir: &Path) -> Result<TemplateRegistry, RegistryError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::Io { path, source }
        };
        std::fs::create_dir_all(dir.join("files")).map_err(io(dir))?;
        let state_path = dir.join("versions.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Io {
                path: state_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&state_path)(e)),
        };
        Ok(TemplateRegistry { dir: dir.to_owned(), state: Mutex::new(state), parsed: Mutex::new(HashMap::new()) })
    }

    /// Templates with an active version, sorted.
    pub fn names(&self) -> Vec<String> {
        self.state.lock().expect("lock poisoned").active.keys().cloned().collect()
    }

    pub fn has_active(&self, template: &str) -> bool {
        self.state.lock().expect("lock poisoned").active.contains_key(template)
    }

    /// The active version of `template` and its manifest.
    pub fn active(&self, template: &str) -> Result<(Template, VersionRecord), RegistryError> {
        let record = {
            let state = self.state.lock().expect("lock poisoned");
            let id = state.active.get(template).ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "template {template:?} not found; known templates: {}",
                    state.active.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            find(&state, template, id).cloned().expect("active version is recorded")
        };
        Ok((self.manifest(&record)?, record))
    }

    /// A built version of `template` and its manifest.
    pub fn version(&self, template: &str, version_id: &str) -> Result<(Template, VersionRecord), RegistryError> {
        let record = {
            let state = self.state.lock().expect("lock poisoned");
            find(&state, template, version_id).cloned().ok_or_else(|| {
                RegistryError::NotFound(format!("template {template:?} has no version {version_id:?}"))
            })?
        };
        if record.status != VersionStatus::Built {
            return Err(RegistryError::NotBuilt(format!(
                "version {version_id} of {template} did not build ({:?}{})",
                record.status,
                if record.error.is_empty() { String::new() } else { format!(": {}", record.error) }
            )));
        }
        Ok((self.manifest(&record)?, record))
    }

    /// Every version of `template`, newest first.
    pub fn list(&self, template: &str) -> Vec<VersionRecord> {
        let state = self.state.lock().expect("lock poisoned");
        state.versions.iter().rev().filter(|v| v.template == template).cloned().collect()
    }

    pub fn active_id(&self, template: &str) -> Option<String> {
        self.state.lock().expect("lock poisoned").active.get(template).cloned()
    }

    /// Keeps a template directory's files under its version id (once: content-addressed).
    pub fn store_files(&self, version_id: &str, files: &[(String, Vec<u8>)]) -> Result<(), RegistryError> {
        let target = self.files_dir(version_id);
        if target.is_dir() {
            return Ok(());
        }
        let staging = self.dir.join(format!("staging-{}", uuid::Uuid::new_v4().simple()));
        let io = |path: &Path, source| RegistryError::Io { path: path.to_owned(), source };
        for (path, content) in files {
            if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(RegistryError::NotFound(format!("refusing to store file path {path:?}")));
            }
            let file = staging.join(path);
            std::fs::create_dir_all(file.parent().expect("has a parent")).map_err(|e| io(&file, e))?;
            std::fs::write(&file, content).map_err(|e| io(&file, e))?;
        }
        std::fs::rename(&staging, &target).map_err(|e| io(&target, e))
    }

    /// Inserts or replaces the record of (`record.template`, `record.version_id`).
    pub fn record(&self, record: VersionRecord) -> Result<(), RegistryError> {
        let mut state = self.state.lock().expect("lock poisoned");
        state.versions.retain(|v| !(v.template == record.template && v.version_id == record.version_id));
        state.versions.push(record);
        self.persist(&state)
    }

    /// Makes a built version active. Returns its updated record.
    pub fn activate(&self, template: &str, version_id: &str) -> Result<VersionRecord, RegistryError> {
        self.version(template, version_id)?;
        let mut state = self.state.lock().expect("lock poisoned");
        let now = unix_millis(SystemTime::now());
        let record = state
            .versions
            .iter_mut()
            .find(|v| v.template == template && v.version_id == version_id)
            .expect("checked above");
        record.promoted_at = Some(now);
        let record = record.clone();
        state.active.insert(template.to_owned(), version_id.to_owned());
        self.persist(&state)?;
        Ok(record)
    }

    fn manifest(&self, record: &VersionRecord) -> Result<Template, RegistryError> {
        let key = format!("{}@{}", record.template, record.version_id);
        if let Some(template) = self.parsed.lock().expect("lock poisoned").get(&key) {
            return Ok(template.clone());
        }
        let dir = self.files_dir(&record.version_id);
        let mut files = Vec::new();
        read_dir_files(&dir, "", &mut files).map_err(|source| RegistryError::Io { path: dir.clone(), source })?;
        let template = template_from_files(&record.template, &files)?;
        self.parsed.lock().expect("lock poisoned").insert(key, template.clone());
        Ok(template)
    }

    fn files_dir(&self, version_id: &str) -> PathBuf {
        self.dir.join("files").join(version_id.trim_start_matches("sha256:"))
    }

    fn persist(&self, state: &State) -> Result<(), RegistryError> {
        let path = self.dir.join("versions.json");
        let staging = self.dir.join("versions.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        std::fs::write(&staging, bytes)
            .and_then(|()| std::fs::rename(&staging, &path))
            .map_err(|source| RegistryError::Io { path, source })
    }
}

fn find<'a>(state: &'a State, template: &str, version_id: &str) -> Option<&'a VersionRecord> {
    state.versions.iter().find(|v| v.template == template && v.version_id == version_id)
}

fn read_dir_files(dir: &Path, prefix: &str, files: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            read_dir_files(&entry.path(), &format!("{name}/"), files)?;
        } else {
            files.push((name, std::fs::read(entry.path())?));
        }
    }
    Ok(())
}

pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
