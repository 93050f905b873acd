//! Template manifests (`<name>/template.toml` in the template repository): what a sandbox of
//! each kind gets, and the versions built from them.
//!
//! The project's `templates/` directory (or, outside the repository, copies compiled in) only
//! seeds the template repository on first start; from then on templates change by pull request,
//! build and promotion (see [`registry`]).

pub mod builder;
pub mod e2b_builder;
pub mod registry;
pub mod tree_cache;

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
    /// Sandboxes start with a checkout of the template repository at the active version of this
    /// template (infrastructure sandboxes: `checkout = "worker"`).
    pub checkout: Option<String>,
    /// What the `local` provider runs as the smoke test instead of `smoke_test`: it runs host
    /// tools and builds no image, so image-level checks cannot pass or fail meaningfully there.
    pub local_smoke_test: Option<String>,
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
    #[serde(default)]
    checkout: Option<String>,
    #[serde(default)]
    local: LocalTable,
}

/// The manifest's `[local]` table: what differs when the `local` provider runs the template.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalTable {
    smoke_test: Option<String>,
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
            ("Dockerfile", include_str!("../../../templates/worker/Dockerfile")),
            ("template.toml", include_str!("../../../templates/worker/template.toml")),
        ],
    ),
    (
        "infrastructure",
        &[
            ("Dockerfile", include_str!("../../../templates/infrastructure/Dockerfile")),
            ("template.toml", include_str!("../../../templates/infrastructure/template.toml")),
        ],
    ),
];

/// The project's template directory as files (relative path, content), or the built-in copies
/// when `dir` does not exist: what seeds the template repository on first start.
pub fn seed_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, TemplateError> {
    if !dir.is_dir() {
        return Ok(BUILTIN
            .iter()
            .flat_map(|(name, files)| {
                files.iter().map(move |(path, text)| (format!("{name}/{path}"), text.as_bytes().to_vec()))
            })
            .collect());
    }
    let mut files = Vec::new();
    collect_files(dir, "", &mut files)?;
    if !files.iter().any(|(path, _)| path.ends_with("/template.toml")) {
        return Err(TemplateError::Empty(dir.to_owned()));
    }
    files.sort();
    Ok(files)
}

/// A template directory's files: (path relative to the directory, content).
pub type TemplateFiles = Vec<(String, Vec<u8>)>;

/// The templates in a repository tree: every top-level directory holding a `template.toml`,
/// with its files relative to that directory, parsed and content-versioned.
pub fn templates_in_tree<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<(Template, TemplateFiles)>, TemplateError> {
    let mut by_dir: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (path, content) in files {
        if let Some((dir, rest)) = path.split_once('/') {
            by_dir.entry(dir.to_owned()).or_default().push((rest.to_owned(), content.to_vec()));
        }
    }
    let mut templates = Vec::new();
    for (dir, files) in by_dir {
        let Some((_, manifest)) = files.iter().find(|(path, _)| path == "template.toml") else { continue };
        let text = String::from_utf8_lossy(manifest).into_owned();
        let version = content_version(files.iter().map(|(path, content)| (path.as_str(), content.as_slice())));
        let template = parse(&text, &format!("{dir}/template.toml"), Some(&dir), version)?;
        templates.push((template, files));
    }
    Ok(templates)
}

/// Parses one template directory's files (paths relative to it).
pub fn template_from_files(name: &str, files: &[(String, Vec<u8>)]) -> Result<Template, TemplateError> {
    let manifest = files
        .iter()
        .find(|(path, _)| path == "template.toml")
        .ok_or_else(|| TemplateError::Invalid { origin: format!("{name}/template.toml"), message: "missing".into() })?;
    let text = String::from_utf8_lossy(&manifest.1).into_owned();
    let version = content_version(files.iter().map(|(path, content)| (path.as_str(), content.as_slice())));
    parse(&text, &format!("{name}/template.toml"), Some(name), version)
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
        checkout: manifest.checkout.filter(|c| !c.is_empty()),
        local_smoke_test: manifest.local.smoke_test.filter(|c| !c.trim().is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates_parse_and_match_the_repository() {
        let builtin = seed_files(Path::new("/nonexistent")).unwrap();
        let from_dir = seed_files(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"))).unwrap();
        let parse_all = |files: &[(String, Vec<u8>)]| {
            templates_in_tree(files.iter().map(|(p, c)| (p.as_str(), c.as_slice()))).unwrap()
        };
        let (builtin, from_dir) = (parse_all(&builtin), parse_all(&from_dir));
        let names: Vec<_> = builtin.iter().map(|(t, _)| t.name.as_str()).collect();
        assert_eq!(names, ["infrastructure", "worker"]);
        for ((a, _), (b, _)) in builtin.iter().zip(&from_dir) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.version, b.version, "{}", a.name);
            assert!(!a.capabilities.is_empty(), "{} lists its capabilities", a.name);
            assert!(a.local_smoke_test.is_some(), "{} says what `local` smoke-tests", a.name);
        }
        let infrastructure = &builtin[0].0;
        assert!(!infrastructure.network, "infrastructure sandboxes have no network");
        assert_eq!(infrastructure.checkout.as_deref(), Some("worker"));
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
