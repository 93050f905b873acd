//! Template builders: turn a template directory at a commit into something sandboxes can start
//! from. `local` lints and stores the files (the `local` provider runs host tools, so there is
//! no image to build); the E2B builder sits behind the same trait.

use async_trait::async_trait;
use tokio::sync::mpsc;

/// What to build: one template's directory at one commit.
pub struct BuildInput<'a> {
    pub template: &'a str,
    pub version_id: &'a str,
    pub git_sha: &'a str,
    /// The template directory's files, paths relative to it.
    pub files: &'a [(String, Vec<u8>)],
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

#[async_trait]
pub trait TemplateBuilder: Send + Sync + 'static {
    /// `"local"`, `"e2b"`.
    fn name(&self) -> &'static str;

    /// Builds `input`, sending log lines to `log` as it goes; returns the builder's reference to
    /// the result (an E2B tag, a store directory).
    async fn build(&self, input: BuildInput<'_>, log: &mpsc::Sender<String>) -> Result<String, BuildError>;

    /// A version became active (promoted or rolled back to): move whatever marks the active one
    /// where the builder lives (E2B's promoted tag). Sandboxes are created from explicit version
    /// references, so this only serves others who use the builder's artifacts directly.
    async fn promote(&self, template: &str, version_id: &str) -> Result<(), BuildError> {
        let _ = (template, version_id);
        Ok(())
    }
}

/// Lints the Dockerfile and keeps the files (the registry stores them content-addressed).
pub struct LocalBuilder;

#[async_trait]
impl TemplateBuilder for LocalBuilder {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn build(&self, input: BuildInput<'_>, log: &mpsc::Sender<String>) -> Result<String, BuildError> {
        let say = |line: String| async move {
            let _ = log.send(line).await;
        };
        say(format!(
            "local builder: {} at {} — no image is built (the local provider runs the host's tools); \
             linting the Dockerfile and storing the template's files",
            input.template, input.git_sha
        ))
        .await;
        let dockerfile = input
            .files
            .iter()
            .find(|(path, _)| path == "Dockerfile")
            .ok_or_else(|| BuildError(format!("{}/Dockerfile is missing", input.template)))?;
        let text = std::str::from_utf8(&dockerfile.1)
            .map_err(|_| BuildError(format!("{}/Dockerfile is not UTF-8 text", input.template)))?;
        let issues = vetting::lint_dockerfile(text);
        for issue in &issues {
            say(format!("{}/Dockerfile:{}: {}", input.template, issue.line, issue.message)).await;
        }
        if !issues.is_empty() {
            return Err(BuildError(format!(
                "{}/Dockerfile has {} lint error(s); first: line {}: {}",
                input.template,
                issues.len(),
                issues[0].line,
                issues[0].message
            )));
        }
        say(format!("Dockerfile lint passed ({} lines)", text.lines().count())).await;
        let artifact = input.version_id.trim_start_matches("sha256:").chars().take(16).collect::<String>();
        say(format!("stored version {} ({} files)", input.version_id, input.files.len())).await;
        Ok(format!("local:{artifact}"))
    }
}
