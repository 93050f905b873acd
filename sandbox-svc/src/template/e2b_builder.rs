//! The E2B template builder: a template directory at a commit becomes an E2B template build
//! (E2B's current "v2" build flow), tagged with the version it was built from.
//!
//! 1. `POST /v3/templates {name: "<prefix><template>:v-<version>"}` → template and build ids.
//! 2. The Dockerfile becomes `fromImage` + steps client-side ([`dockerfile`]); each COPY step's
//!    files are uploaded as a `.tar.gz` unless E2B already has them by hash.
//! 3. `POST /v2/templates/{id}/builds/{build}` starts it; the status is polled with a log
//!    offset, every log line goes to the build's log channel, and after `ready` or `error` the
//!    remaining lines are drained.
//!
//! The result is the tagged reference sandboxes are created from ([`template_reference`]).
//! Promotion moves E2B's `default` tag to the promoted version ([`E2bBuilder::promote`]), so
//! anyone using the bare template name gets what the broker has active.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::builder::{BuildError, BuildInput, TemplateBuilder};
use crate::provider::ProviderError;
use crate::provider::e2b::control::{BuildLogEntry, BuildStart, BuildStatus, BuildStep, TemplateBuildRequest};
use crate::provider::e2b::dockerfile::{self, BuildPlan, source_matches};
use crate::provider::e2b::tar::{TarFile, gzip_stored, tar};
use crate::provider::e2b::{ControlPlane, template_reference};

/// The E2B tag promotion moves: the one the bare template name resolves to.
pub const PROMOTED_TAG: &str = "default";
/// Pages of build logs drained after the build finished at most (100 lines each).
const MAX_DRAIN_PAGES: usize = 1_000;
/// Consecutive failed status polls tolerated (E2B briefly unreachable) before giving up.
const MAX_POLL_FAILURES: u32 = 10;
/// Error log lines quoted in a failed build's reason.
const REASON_LOG_LINES: usize = 5;

#[derive(Debug, Clone)]
pub struct E2bBuildOptions {
    pub template_prefix: String,
    pub cpu_count: u32,
    pub memory_mb: u32,
    /// The whole build, uploads included.
    pub build_timeout: Duration,
    /// Between status polls (E2B's SDK uses 200 ms).
    pub poll_interval: Duration,
}

pub struct E2bBuilder {
    control: Arc<ControlPlane>,
    options: E2bBuildOptions,
}

impl E2bBuilder {
    pub fn new(control: Arc<ControlPlane>, options: E2bBuildOptions) -> E2bBuilder {
        E2bBuilder { control, options }
    }

    /// Points the template's [`PROMOTED_TAG`] at `version_id`'s build: call after the broker
    /// activates a version (promotion and rollback alike).
    pub async fn move_promoted_tag(&self, template: &str, version_id: &str) -> Result<(), BuildError> {
        let target = template_reference(&self.options.template_prefix, template, version_id);
        self.control.assign_tags(&target, &[PROMOTED_TAG]).await.map_err(|e| BuildError(e.to_string()))?;
        tracing::info!(%template, %version_id, %target, tag = PROMOTED_TAG, "e2b template tag moved");
        Ok(())
    }

    async fn run(&self, input: &BuildInput<'_>, log: &mpsc::Sender<String>) -> Result<String, BuildError> {
        let say = |line: String| async move {
            let _ = log.send(line).await;
        };
        let dockerfile = input
            .files
            .iter()
            .find(|(path, _)| path == "Dockerfile")
            .ok_or_else(|| BuildError(format!("{}/Dockerfile is missing", input.template)))?;
        let text = std::str::from_utf8(&dockerfile.1)
            .map_err(|_| BuildError(format!("{}/Dockerfile is not UTF-8 text", input.template)))?;
        let plan = dockerfile::plan(text).map_err(|e| BuildError(format!("{}/{e}", input.template)))?;
        for line in &plan.skipped {
            say(format!("{}/Dockerfile {line}", input.template)).await;
        }
        let reference = template_reference(&self.options.template_prefix, input.template, input.version_id);
        say(format!("e2b: building {reference} from {} in {} steps", plan.from_image, plan.steps.len())).await;
        let request = TemplateBuildRequest {
            name: reference.clone(),
            cpu_count: self.options.cpu_count,
            memory_mb: self.options.memory_mb,
        };
        let created = self.control.request_template_build(&request).await.map_err(build_error)?;
        say(format!("e2b: template {} build {}", created.template_id, created.build_id)).await;
        let start = self.steps_with_files(input, &plan, &created.template_id, log).await?;
        self.control
            .start_template_build(&created.template_id, &created.build_id, &start)
            .await
            .map_err(build_error)?;
        self.wait(&created.template_id, &created.build_id, log).await?;
        say(format!("e2b: {reference} is ready")).await;
        Ok(reference)
    }

    /// The build's steps, uploading each COPY step's files E2B does not have yet.
    async fn steps_with_files(
        &self,
        input: &BuildInput<'_>,
        plan: &BuildPlan,
        template_id: &str,
        log: &mpsc::Sender<String>,
    ) -> Result<BuildStart, BuildError> {
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let Some(source) = &step.copy_source else {
                steps.push(BuildStep { kind: step.kind.to_owned(), args: step.args.clone(), files_hash: None });
                continue;
            };
            let mut files: Vec<&(String, Vec<u8>)> =
                input.files.iter().filter(|(path, _)| source_matches(source, path)).collect();
            if files.is_empty() {
                return Err(BuildError(format!(
                    "{}/Dockerfile: COPY source {source:?} matches no file",
                    input.template
                )));
            }
            files.sort_by(|a, b| a.0.cmp(&b.0));
            let entries: Vec<TarFile<'_>> = files
                .iter()
                .map(|(path, content)| TarFile { path, content, executable: content.starts_with(b"#!") })
                .collect();
            let hash = files_hash(&step.args, &entries);
            let link = self.control.file_upload_link(template_id, &hash).await.map_err(build_error)?;
            if link.present {
                let _ = log.send(format!("e2b: files for COPY {source} already uploaded")).await;
            } else {
                let url = link.url.ok_or_else(|| BuildError("e2b gave no upload URL for missing files".into()))?;
                let archive = tar(&entries).map_err(|e| BuildError(e.to_string()))?;
                let gzipped = gzip_stored(&archive);
                let bytes = gzipped.len();
                self.control.upload(&url, gzipped, self.options.build_timeout).await.map_err(build_error)?;
                let _ = log
                    .send(format!("e2b: uploaded {} file(s) for COPY {source} ({bytes} bytes)", entries.len()))
                    .await;
            }
            steps.push(BuildStep { kind: "COPY".into(), args: step.args.clone(), files_hash: Some(hash) });
        }
        Ok(BuildStart {
            from_image: plan.from_image.clone(),
            force: false,
            steps,
            start_cmd: plan.start_cmd.clone(),
            ready_cmd: None,
        })
    }

    /// Polls until the build is `ready` (Ok) or `error` (its reason), streaming the log.
    async fn wait(&self, template_id: &str, build_id: &str, log: &mpsc::Sender<String>) -> Result<(), BuildError> {
        let mut offset = 0;
        let mut failures = 0;
        let mut errors: Vec<String> = Vec::new();
        loop {
            let status = match self.control.build_status(template_id, build_id, offset).await {
                Ok(status) => status,
                Err(error @ ProviderError::Unavailable(_)) if failures < MAX_POLL_FAILURES => {
                    failures += 1;
                    tracing::warn!(%error, failures, "e2b build status poll failed; retrying");
                    tokio::time::sleep(self.options.poll_interval * failures).await;
                    continue;
                }
                Err(error) => return Err(build_error(error)),
            };
            failures = 0;
            offset += self.forward(&status.log_entries, log, &mut errors).await;
            match status.status.as_str() {
                "ready" => {
                    self.drain(template_id, build_id, offset, log, &mut errors).await;
                    return Ok(());
                }
                "error" => {
                    self.drain(template_id, build_id, offset, log, &mut errors).await;
                    return Err(BuildError(self.failure_reason(&status, &errors)));
                }
                _ => tokio::time::sleep(self.options.poll_interval).await,
            }
        }
    }

    /// After the end: the log lines not fetched yet, until an empty page.
    async fn drain(
        &self,
        template_id: &str,
        build_id: &str,
        mut offset: usize,
        log: &mpsc::Sender<String>,
        errors: &mut Vec<String>,
    ) {
        for _ in 0..MAX_DRAIN_PAGES {
            match self.control.build_status(template_id, build_id, offset).await {
                Ok(status) if !status.log_entries.is_empty() => {
                    offset += self.forward(&status.log_entries, log, errors).await
                }
                _ => return,
            }
        }
    }

    /// Sends log entries on; keeps the newest error lines for the failure reason.
    async fn forward(&self, entries: &[BuildLogEntry], log: &mpsc::Sender<String>, errors: &mut Vec<String>) -> usize {
        for entry in entries {
            let line = self.control.scrubber().scrub(&format_entry(entry));
            if entry.level == "error" {
                if errors.len() == REASON_LOG_LINES {
                    errors.remove(0);
                }
                errors.push(line.clone());
            }
            let _ = log.send(line).await;
        }
        entries.len()
    }

    fn failure_reason(&self, status: &BuildStatus, errors: &[String]) -> String {
        let reason = status.reason.as_ref();
        let message = reason.map(|r| r.message.trim()).filter(|m| !m.is_empty()).unwrap_or("the build failed");
        let mut text = match reason.and_then(|r| r.step.as_deref()) {
            Some(step) => format!("e2b build failed at step {step}: {message}"),
            None => format!("e2b build failed: {message}"),
        };
        let quoted: Vec<String> = match reason.map(|r| &r.log_entries).filter(|e| !e.is_empty()) {
            Some(entries) => entries.iter().rev().take(REASON_LOG_LINES).rev().map(format_entry).collect(),
            None => errors.to_vec(),
        };
        if !quoted.is_empty() {
            text.push_str(&format!(" (last log lines: {})", quoted.join(" | ")));
        }
        self.control.scrubber().scrub(&text)
    }
}

#[async_trait]
impl TemplateBuilder for E2bBuilder {
    fn name(&self) -> &'static str {
        "e2b"
    }

    async fn promote(&self, template: &str, version_id: &str) -> Result<(), BuildError> {
        self.move_promoted_tag(template, version_id).await
    }

    async fn build(&self, input: BuildInput<'_>, log: &mpsc::Sender<String>) -> Result<String, BuildError> {
        let timeout = self.options.build_timeout;
        tokio::time::timeout(timeout, self.run(&input, log)).await.unwrap_or_else(|_| {
            Err(BuildError(format!(
                "the e2b build did not finish within {} (SANDBOX_E2B_BUILD_TIMEOUT)",
                humantime::format_duration(timeout)
            )))
        })
    }
}

fn build_error(error: ProviderError) -> BuildError {
    BuildError(error.to_string())
}

/// `[level] step: message`, without terminal colour codes.
fn format_entry(entry: &BuildLogEntry) -> String {
    let message = strip_ansi(entry.message.trim_end());
    match entry.step.as_deref().filter(|s| !s.is_empty()) {
        Some(step) => format!("[{}] {step}: {message}", entry.level),
        None => format!("[{}] {message}", entry.level),
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The cache key of a COPY step's files (opaque to E2B): the step's arguments and every file's
/// path, mode, size and content.
fn files_hash(args: &[String], files: &[TarFile<'_>]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"COPY");
    for arg in args {
        hasher.update([0]);
        hasher.update(arg.as_bytes());
    }
    for file in files {
        hasher.update([0]);
        hasher.update(file.path.as_bytes());
        hasher.update(if file.executable { b"0755" } else { b"0644" });
        hasher.update((file.content.len() as u64).to_le_bytes());
        hasher.update(file.content);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_read_cleanly() {
        let entry = BuildLogEntry {
            level: "info".into(),
            message: "\u{1b}[32mStep 1\u{1b}[0m done\n".into(),
            step: Some("3".into()),
        };
        assert_eq!(format_entry(&entry), "[info] 3: Step 1 done");
        let entry = BuildLogEntry { level: "error".into(), message: "boom".into(), step: None };
        assert_eq!(format_entry(&entry), "[error] boom");
    }

    #[test]
    fn the_files_hash_changes_with_content_and_arguments() {
        let args = vec!["conf".to_owned(), "/etc/app/".to_owned(), String::new(), String::new()];
        let files = [TarFile { path: "conf/a", content: b"1", executable: false }];
        let changed = [TarFile { path: "conf/a", content: b"2", executable: false }];
        let first = files_hash(&args, &files);
        assert_eq!(first.len(), 64);
        assert_eq!(first, files_hash(&args, &files));
        assert_ne!(first, files_hash(&args, &changed));
        assert_ne!(first, files_hash(&[String::from("x")], &files));
    }
}
