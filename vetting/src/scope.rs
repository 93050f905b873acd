//! What a PR may touch: template files, not CI; a reviewable size; text, not binaries. Also decides
//! which checks a file gets from its name.

use crate::diff::{FileDiff, FileStatus, ParsedDiff};
use crate::{Report, Severity, quoted};

/// Which content checks a file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `Dockerfile`, `*.Dockerfile`, `Dockerfile.*`, `Containerfile`: instruction rules.
    Dockerfile,
    /// `*.sh`, `*.bash`, or a new file starting with a shell `#!`: command rules.
    Shell,
    /// `requirements*.txt`: each line is a pip requirement.
    Requirements,
    /// Anything else that is not documentation: text rules (TLS off, sudoers).
    Config,
    /// Prose (`*.md`, …), where commands are quoted rather than run: secrets only.
    Documentation,
}

pub fn kind(file: &FileDiff<'_>) -> FileKind {
    let path = file.path();
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    if name == "dockerfile"
        || name == "containerfile"
        || name.ends_with(".dockerfile")
        || name.starts_with("dockerfile.")
    {
        return FileKind::Dockerfile;
    }
    if name.ends_with(".sh") || name.ends_with(".bash") {
        return FileKind::Shell;
    }
    if name.starts_with("requirements") && name.ends_with(".txt") {
        return FileKind::Requirements;
    }
    if [".md", ".markdown", ".rst", ".adoc", ".txt"].iter().any(|ext| name.ends_with(ext)) {
        return FileKind::Documentation;
    }
    let shebang = file.hunks.first().and_then(|hunk| hunk.lines.first()).filter(|line| line.new_line == 1);
    if shebang.is_some_and(|line| line.text.starts_with("#!") && line.text.contains("sh")) {
        return FileKind::Shell;
    }
    FileKind::Config
}

/// CI configuration: a PR that changes it could run code with the repository's CI credentials.
fn is_ci_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path.starts_with(".github/workflows/")
        || path.starts_with(".github/actions/")
        || path.starts_with(".circleci/")
        || path.starts_with(".buildkite/")
        || name == ".gitlab-ci.yml"
        || name == "Jenkinsfile"
        || name == ".travis.yml"
        || name == "azure-pipelines.yml"
        || name == "bitbucket-pipelines.yml"
        || name == ".drone.yml"
}

fn in_template_paths(path: &str, template_paths: &[String]) -> bool {
    template_paths
        .iter()
        .any(|prefix| if prefix.ends_with('/') { path.starts_with(prefix.as_str()) } else { path == prefix })
}

/// A path git would never write: absolute, or with `.`/`..`/empty components.
fn is_suspicious_path(path: &str) -> bool {
    path.starts_with('/') || path.split('/').any(|part| part.is_empty() || part == "." || part == "..")
}

pub fn check(report: &mut Report<'_>, parsed: &ParsedDiff<'_>) {
    for (line, reason) in parsed.malformed.iter().take(1) {
        report.add(
            "diff.malformed",
            Severity::Block,
            "",
            0,
            format!("the diff could not be parsed at diff line {line} ({reason}), so its content could not be vetted"),
            "",
        );
    }
    let changed = parsed.added + parsed.removed;
    if changed > report.options.max_changed_lines {
        let message = format!(
            "the PR changes {changed} lines, over the limit of {}; a change that large cannot be reviewed line by line",
            report.options.max_changed_lines
        );
        report.add("scope.too-large", Severity::Block, "", 0, message, "");
    }
    for file in &parsed.files {
        let path = file.path();
        let paths: Vec<&str> = [file.old_path.as_deref(), file.new_path.as_deref()].into_iter().flatten().collect();
        if paths.iter().any(|p| is_suspicious_path(p)) {
            let message = format!("the path \"{}\" is absolute or contains \".\"/\"..\" components", quoted(path));
            report.add("scope.bad-path", Severity::Block, path, 0, message, path);
        }
        if paths.iter().any(|p| is_ci_file(p)) {
            let message = format!(
                "\"{}\" is CI configuration; template PRs must not change CI, which runs with the repository's credentials",
                quoted(path)
            );
            report.add("scope.ci-file", Severity::Block, path, 0, message, path);
        } else if !paths.iter().all(|p| in_template_paths(p, &report.options.template_paths)) {
            let message = format!(
                "\"{}\" is outside the template paths ({}); template PRs normally change only templates",
                quoted(path),
                report.options.template_paths.join(", ")
            );
            report.add("scope.outside-template", Severity::Warn, path, 0, message, path);
        }
        if file.binary {
            let message = format!("\"{}\" is a binary file; binary content cannot be reviewed or vetted", quoted(path));
            report.add("scope.binary-file", Severity::Block, path, 0, message, path);
        }
        match file.new_mode.as_deref() {
            Some("120000") => {
                let message =
                    format!("\"{}\" is a symbolic link; a link can point a COPY outside the template", quoted(path));
                report.add("scope.symlink", Severity::Warn, path, 0, message, path);
            }
            Some("160000") => {
                let message = format!("\"{}\" is a git submodule; its content is not part of this diff", quoted(path));
                report.add("scope.submodule", Severity::Warn, path, 0, message, path);
            }
            _ => {}
        }
        if let Some(old_path) = file.old_path.as_deref() {
            let base = |p: &str| p.rsplit('/').next().unwrap_or("").to_string();
            let old_name = base(old_path);
            let removed = file.status == FileStatus::Deleted
                || file.status == FileStatus::Renamed && file.new_path.as_deref().map(base) != Some(old_name.clone());
            if removed
                && (old_name == "Dockerfile" || old_name == "template.toml")
                && in_template_paths(old_path, &report.options.template_paths)
            {
                let message = format!("removes \"{}\", which deletes (or breaks) a whole template", quoted(old_path));
                report.add("scope.template-deleted", Severity::Warn, old_path, 0, message, old_path);
            }
        }
    }
}
