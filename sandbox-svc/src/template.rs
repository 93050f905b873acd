//! Template manifests (`templates/<name>/template.toml`): what a sandbox of each kind gets.
//!
//! The broker reads the templates directory at start; when it is absent (the binary runs outside
//! the repository) it falls back to copies compiled in, so `studio up` works from anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How a worker's task is run inside a sandbox of this template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The Claude Code CLI, non-interactive, stream-json output.
    Claude,
    /// The task is a shell script run with bash.
    Shell,
}

/// One parsed and validated `template.toml`.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub description: String,
    pub runtime: Runtime,
    pub default_timeout: Duration,
    pub network: bool,
    pub smoke_test: String,
    pub env: BTreeMap<String, String>,
    /// What a sandbox of this template can do, from the manifest ("python3", "node 20", …).
    pub capabilities: Vec<String>,
    /// `sha256:<hex>` over the template directory's files (path and content, sorted by path).
    pub version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    #[serde(default)]
    description: String,
    runtime: Runtime,
    default_timeout: String,
    #[serde(default)]
    network: bool,
    smoke_test: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid template manifest {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("no templates found in {0}")]
    Empty(PathBuf),
}

/// Copies of the repository's manifests, used when no templates directory is present.
const BUILTIN: &[(&str, &[(&str, &str)])] = &[
    (
        "worker",
        &[
            ("Dockerfile", include_str!("../../templates/worker/Dockerfile")),
            ("template.toml", include_str!("../../templates/worker/template.toml")),
        ],
    ),
    (
        "infrastructure",
        &[
            ("Dockerfile", include_str!("../../templates/infrastructure/Dockerfile")),
            ("template.toml", include_str!("../../templates/infrastructure/template.toml")),
        ],
    ),
];

/// All known templates, by name.
#[derive(Debug, Clone)]
pub struct TemplateCatalog {
    templates: BTreeMap<String, Template>,
}

impl TemplateCatalog {
    /// Loads every `<dir>/*/template.toml`, or the built-in copies when `dir` does not exist.
    pub fn load(dir: &Path) -> Result<TemplateCatalog, TemplateError> {
        if !dir.is_dir() {
            return TemplateCatalog::builtin();
        }
        let entries = std::fs::read_dir(dir).map_err(|source| TemplateError::Read { path: dir.to_owned(), source })?;
        let mut templates = BTreeMap::new();
        for entry in entries.flatten() {
            let manifest_path = entry.path().join("template.toml");
            if !manifest_path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&manifest_path)
                .map_err(|source| TemplateError::Read { path: manifest_path.clone(), source })?;
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            let mut files = Vec::new();
            collect_files(&entry.path(), "", &mut files)?;
            let version = content_version(files.iter().map(|(path, content)| (path.as_str(), content.as_slice())));
            let template = parse(&text, &manifest_path.display().to_string(), Some(&dir_name), version)?;
            templates.insert(template.name.clone(), template);
        }
        if templates.is_empty() {
            return Err(TemplateError::Empty(dir.to_owned()));
        }
        Ok(TemplateCatalog { templates })
    }

    pub fn builtin() -> Result<TemplateCatalog, TemplateError> {
        let mut templates = BTreeMap::new();
        for (name, files) in BUILTIN {
            let manifest = files.iter().find(|(path, _)| *path == "template.toml").map_or("", |(_, text)| text);
            let version = content_version(files.iter().map(|(path, text)| (*path, text.as_bytes())));
            let template = parse(manifest, &format!("built-in {name}"), Some(name), version)?;
            templates.insert(template.name.clone(), template);
        }
        Ok(TemplateCatalog { templates })
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.templates.get(name)
    }

    /// Names, sorted, for "unknown template" errors.
    pub fn names(&self) -> Vec<&str> {
        self.templates.keys().map(String::as_str).collect()
    }
}

/// Every regular file under `dir`, as (relative path, content), recursing into subdirectories.
fn collect_files(dir: &Path, prefix: &str, files: &mut Vec<(String, Vec<u8>)>) -> Result<(), TemplateError> {
    let read_error = |source| TemplateError::Read { path: dir.to_owned(), source };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let file_type = entry.file_type().map_err(read_error)?;
        if file_type.is_dir() {
            collect_files(&entry.path(), &format!("{name}/"), files)?;
        } else if file_type.is_file() {
            let content =
                std::fs::read(entry.path()).map_err(|source| TemplateError::Read { path: entry.path(), source })?;
            files.push((name, content));
        }
    }
    Ok(())
}

/// `sha256:<hex>` over (path, content) pairs sorted by path, each length-prefixed so no two
/// different trees hash alike.
pub fn content_version<'a>(files: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    use sha2::{Digest, Sha256};
    let mut files: Vec<_> = files.collect();
    files.sort_by_key(|(path, _)| *path);
    let mut hasher = Sha256::new();
    for (path, content) in files {
        hasher.update((path.len() as u64).to_be_bytes());
        hasher.update(path.as_bytes());
        hasher.update((content.len() as u64).to_be_bytes());
        hasher.update(content);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn parse(text: &str, origin: &str, expected_name: Option<&str>, version: String) -> Result<Template, TemplateError> {
    let invalid = |message: String| TemplateError::Invalid { origin: origin.to_owned(), message };
    let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if let Some(expected) = expected_name
        && manifest.name != expected
    {
        return Err(invalid(format!("name {:?} must equal its directory name {expected:?}", manifest.name)));
    }
    let default_timeout = humantime::parse_duration(&manifest.default_timeout)
        .map_err(|e| invalid(format!("default_timeout {:?}: {e}", manifest.default_timeout)))?;
    if default_timeout.is_zero() {
        return Err(invalid("default_timeout must be positive".into()));
    }
    for key in manifest.env.keys() {
        crate::broker::validate_env_key(key).map_err(|e| invalid(format!("env: {e}")))?;
    }
    Ok(Template {
        name: manifest.name,
        description: manifest.description,
        runtime: manifest.runtime,
        default_timeout,
        network: manifest.network,
        smoke_test: manifest.smoke_test,
        env: manifest.env,
        capabilities: manifest.capabilities,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates_parse_and_match_the_repository() {
        let builtin = TemplateCatalog::builtin().unwrap();
        assert_eq!(builtin.names(), ["infrastructure", "worker"]);
        let from_dir = TemplateCatalog::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"))).unwrap();
        assert_eq!(from_dir.names(), builtin.names());
        for name in builtin.names() {
            assert_eq!(from_dir.get(name).unwrap().version, builtin.get(name).unwrap().version, "{name}");
            assert!(!builtin.get(name).unwrap().capabilities.is_empty(), "{name} lists its capabilities");
        }
        assert!(!builtin.get("infrastructure").unwrap().network, "infrastructure sandboxes have no network");
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_rejected_with_the_reason() {
        let base = "name = \"x\"\nruntime = \"shell\"\nsmoke_test = \"true\"\n";
        let err =
            parse(&format!("{base}default_timeout = \"soon\""), "t", None, String::new()).unwrap_err().to_string();
        assert!(err.contains("default_timeout"), "{err}");
        let err = parse(&format!("{base}default_timeout = \"1m\"\nnetwrok = true"), "t", None, String::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("netwrok"), "{err}");
        let err =
            parse(&format!("{base}default_timeout = \"1m\""), "t", Some("y"), String::new()).unwrap_err().to_string();
        assert!(err.contains("directory name"), "{err}");
    }
}
