//! Template-repository work the broker does on behalf of infrastructure sandboxes: the checkout
//! they start with, and turning what they changed into a pull request. The sandbox never talks
//! to the code host; the broker reads its files out and commits them as its own bot.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use codehost::{CommitIdentity, FileChange, NewPullRequest, PullRequest, TreeFile};

use super::{Broker, BrokerError};
use crate::provider::{ExportLimits, ProviderSandbox, WorkspaceEntry};
use crate::template_repo::{Approval, host_error};
use crate::workspace_path::WorkspacePath;

/// Bounds on what a proposal may carry. The template repository holds Dockerfiles, manifests and
/// scripts: anything near these limits is a mistake or an attack, not a template change.
const EXPORT_LIMITS: ExportLimits = ExportLimits {
    max_entries: 5_000,
    max_file_bytes: 1 << 20,
    max_total_bytes: 64 << 20,
    // The agent may `git init` its checkout; git's own files are never template content.
    skip_top_level: &[".git"],
};
/// Most files one pull request may change.
const MAX_CHANGED_FILES: usize = 200;
const MAX_TITLE_CHARS: usize = 200;
const MAX_BODY_BYTES: usize = 64 << 10;
/// Metadata key the conductor sets on worker sandboxes; named in the commit trailer.
const WORKER_ID_METADATA: &str = "agentstudio.worker_id";

/// Copies a checkout into a fresh sandbox's workspace.
pub(super) async fn write_checkout(sandbox: &dyn ProviderSandbox, files: Vec<TreeFile>) -> Result<(), BrokerError> {
    for file in files {
        let path = WorkspacePath::parse(&file.path)
            .map_err(|e| BrokerError::FailedPrecondition(format!("template repository path {:?}: {e}", file.path)))?;
        sandbox.write_file(&path, Bytes::from(file.content)).await?;
    }
    Ok(())
}

impl Broker {
    /// Commits what sandbox `sandbox_id` changed in its checkout and opens a pull request, or
    /// pushes to the one this sandbox opened before (or to `pull_request`, if given).
    pub async fn propose_change(
        &self,
        sandbox_id: &str,
        title: &str,
        body: &str,
        pull_request: Option<u64>,
    ) -> Result<PullRequest, BrokerError> {
        let title = title.trim();
        if title.is_empty() {
            return Err(BrokerError::invalid("title", "must not be empty"));
        }
        if title.chars().count() > MAX_TITLE_CHARS || title.contains('\n') {
            return Err(BrokerError::invalid(
                "title",
                format!("must be one line of at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(BrokerError::invalid("body", format!("is {} bytes, more than {MAX_BODY_BYTES}", body.len())));
        }
        let entry = self.running_entry(sandbox_id)?;
        let Some(base_sha) = entry.checkout_sha.clone() else {
            return Err(BrokerError::FailedPrecondition(format!(
                "sandbox {sandbox_id:?} (template {}) has no template-repository checkout to propose from",
                entry.template
            )));
        };
        // One proposal per sandbox at a time: the second must see the first's pull request.
        let mut proposed = entry.proposed.lock().await;
        let target = match (pull_request, *proposed) {
            (Some(asked), Some(opened)) if asked != opened => {
                return Err(BrokerError::invalid(
                    "pull_request_number",
                    format!("sandbox {sandbox_id:?} proposed #{opened}, not #{asked}"),
                ));
            }
            (asked, opened) => asked.or(opened),
        };
        let host = &self.inner.repo.code_host;
        let base = self.inner.repo.tree(&base_sha).await?;
        let exported = entry.handle.export_workspace(EXPORT_LIMITS).await?;
        let changes = changes_against(&base, exported)?;
        if changes.is_empty() {
            return Err(BrokerError::FailedPrecondition(format!(
                "no change: the workspace of sandbox {sandbox_id:?} matches the checkout {base_sha}"
            )));
        }
        self.refuse_broker_secrets(&changes)?;
        let worker = entry.metadata.get(WORKER_ID_METADATA).map_or(sandbox_id, String::as_str);
        let message = format!(
            "{title}\n\n{}\n\nAgent-Studio-Worker: {worker}\nAgent-Studio-Sandbox: {sandbox_id}\n",
            body.trim()
        );
        let identity = CommitIdentity::default();
        let pr = match target {
            Some(number) => {
                host.push_to_pull_request(number, &base_sha, changes, &message, &identity).await.map_err(host_error)?
            }
            None => {
                let new = NewPullRequest {
                    base_branch: host.default_branch(),
                    base_sha,
                    head_branch: branch_name(title, sandbox_id),
                    changes,
                    commit_message: message,
                    title: title.to_owned(),
                    body: body.to_owned(),
                    identity,
                };
                host.open_pull_request(new).await.map_err(host_error)?
            }
        };
        *proposed = Some(pr.number);
        tracing::info!(%sandbox_id, number = pr.number, head = %pr.head_sha, "proposed template change");
        Ok(self.redacted(pr))
    }

    /// A change carrying one of the broker's own secrets would publish it: refuse it outright.
    fn refuse_broker_secrets(&self, changes: &[FileChange]) -> Result<(), BrokerError> {
        for change in changes {
            if let Some(content) = &change.content
                && matches!(self.inner.redactor.redact_bytes(content), Cow::Owned(_))
            {
                return Err(BrokerError::FailedPrecondition(format!(
                    "{} contains a credential the broker holds; the change is refused",
                    change.path
                )));
            }
        }
        Ok(())
    }

    pub async fn get_pull_request(&self, number: u64) -> Result<PullRequest, BrokerError> {
        check_number(number)?;
        let pr = self.inner.repo.code_host.get_pull_request(number).await.map_err(host_error)?;
        Ok(self.redacted(pr))
    }

    pub async fn list_pull_requests(&self, state: Option<codehost::PrState>) -> Result<Vec<PullRequest>, BrokerError> {
        let prs = self.inner.repo.code_host.list_pull_requests(state).await.map_err(host_error)?;
        Ok(prs.into_iter().map(|pr| self.redacted(pr)).collect())
    }

    /// Merges only with a valid, unused human approval of exactly `expected_head_sha`, and only
    /// if the pull request's head is still that commit.
    pub async fn merge_pull_request(
        &self,
        number: u64,
        expected_head_sha: &str,
        approval: Option<&Approval>,
    ) -> Result<(PullRequest, String), BrokerError> {
        check_number(number)?;
        if expected_head_sha.is_empty() {
            return Err(BrokerError::invalid("expected_head_sha", "must not be empty"));
        }
        let host = &self.inner.repo.code_host;
        let pr = host.get_pull_request(number).await.map_err(host_error)?;
        if pr.state != codehost::PrState::Open {
            return Err(BrokerError::FailedPrecondition(format!("pull request #{number} is {}", pr.state.as_str())));
        }
        if pr.head_sha != expected_head_sha {
            return Err(BrokerError::FailedPrecondition(format!(
                "pull request #{number} head moved to {}; the approval of {expected_head_sha} no longer applies",
                pr.head_sha
            )));
        }
        self.inner.repo.consume_approval(approval, expected_head_sha)?;
        let approval = approval.expect("checked by consume_approval");
        let mut message = format!(
            "Merge pull request #{number} from {}\n\n{}\n\nApproved-by: {}\nApproved-head: {}\nVetting-report: {}\n",
            pr.head_branch, pr.title, approval.approver, approval.head_sha, approval.report_digest
        );
        if !approval.override_reason.is_empty() {
            message.push_str(&format!("Override-reason: {}\n", approval.override_reason.replace('\n', " ")));
        }
        let merge_sha = host.merge_pull_request(number, expected_head_sha, &message).await.map_err(host_error)?;
        let merged = host.get_pull_request(number).await.map_err(host_error)?;
        Ok((self.redacted(merged), merge_sha))
    }

    /// Commits the tree from before a merged pull request's merge on top of it (see
    /// [`codehost::CodeHost::revert_merge`]) and says why on the pull request. Returns the
    /// pull request and the revert commit.
    pub async fn revert_pull_request(&self, number: u64, reason: &str) -> Result<(PullRequest, String), BrokerError> {
        check_number(number)?;
        if reason.trim().is_empty() {
            return Err(BrokerError::invalid("reason", "say why the merge is reverted"));
        }
        let host = &self.inner.repo.code_host;
        let pr = host.get_pull_request(number).await.map_err(host_error)?;
        let merge_sha = match (&pr.state, &pr.merge_sha) {
            (codehost::PrState::Merged, Some(merge_sha)) => merge_sha.clone(),
            _ => {
                return Err(BrokerError::FailedPrecondition(format!(
                    "pull request #{number} is {}, not merged: nothing to revert",
                    pr.state.as_str()
                )));
            }
        };
        let reason = self.inner.redactor.redact_str(reason.trim()).into_owned();
        let message = format!(
            "Revert \"{}\" (#{number})\n\n{reason}\n\nReverts: {merge_sha}\nAgent-Studio-Revert-Of: #{number}\n",
            pr.title.replace('\n', " ")
        );
        let revert_sha = host.revert_merge(&host.default_branch(), &merge_sha, &message).await.map_err(host_error)?;
        let note = format!("Reverted on {} in {revert_sha}: {reason}", host.default_branch());
        if let Err(error) = host.comment(number, &note).await {
            // The revert stands; the comment only tells people browsing the pull request.
            tracing::warn!(number, %error, "reverted, but could not comment on the pull request");
        }
        tracing::info!(number, %merge_sha, %revert_sha, "reverted a merged pull request");
        Ok((self.redacted(pr), revert_sha))
    }

    pub async fn close_pull_request(&self, number: u64, comment: &str) -> Result<PullRequest, BrokerError> {
        check_number(number)?;
        let host = &self.inner.repo.code_host;
        if !comment.trim().is_empty() {
            host.comment(number, comment).await.map_err(host_error)?;
        }
        let closed = host.close_pull_request(number).await.map_err(host_error)?;
        Ok(self.redacted(closed))
    }

    fn redacted(&self, mut pr: PullRequest) -> PullRequest {
        let redactor = &self.inner.redactor;
        for text in [&mut pr.title, &mut pr.body, &mut pr.diff] {
            if let Cow::Owned(clean) = redactor.redact_str(text) {
                *text = clean;
            }
        }
        pr
    }
}

fn check_number(number: u64) -> Result<(), BrokerError> {
    if number == 0 {
        return Err(BrokerError::invalid("number", "must be a pull request number (1 or more)"));
    }
    Ok(())
}

/// `agentstudio/<slug of the title>-<sandbox id suffix>`: readable, and unique per sandbox.
fn branch_name(title: &str, sandbox_id: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let suffix: String = sandbox_id.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
    if slug.is_empty() { format!("agentstudio/change-{suffix}") } else { format!("agentstudio/{slug}-{suffix}") }
}

/// The file changes that turn `base` into the exported workspace. Refuses what must never be
/// committed, naming the path: symlinks (escaping ones said so), special files, files over the
/// size limit and binary content.
pub(crate) fn changes_against(
    base: &[TreeFile],
    exported: Vec<(String, WorkspaceEntry)>,
) -> Result<Vec<FileChange>, BrokerError> {
    let refuse = |path: &str, why: String| Err(BrokerError::FailedPrecondition(format!("{path}: {why}")));
    let base: BTreeMap<&str, &TreeFile> = base.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut changes = Vec::new();
    for (path, entry) in exported {
        if let Err(error) = codehost::check_repo_path(&path) {
            return refuse(&path, format!("cannot be committed ({error})"));
        }
        match entry {
            WorkspaceEntry::Symlink { target } => {
                let why = if escapes(&path, &target) {
                    format!("is a symlink to {target:?}, which escapes the repository")
                } else {
                    format!("is a symlink (to {target:?}); the template repository holds regular files only")
                };
                return refuse(&path, why);
            }
            WorkspaceEntry::Special => return refuse(&path, "is a FIFO, socket or device, not a file".into()),
            WorkspaceEntry::TooLarge { size } => {
                return refuse(
                    &path,
                    format!("is {size} bytes, more than the {} byte limit", EXPORT_LIMITS.max_file_bytes),
                );
            }
            WorkspaceEntry::File { content, executable } => {
                seen.insert(path.clone());
                let existing = base.get(path.as_str());
                if existing.is_some_and(|f| f.content == content) {
                    continue; // unchanged (a lost executable bit in the checkout is not a change)
                }
                if content.contains(&0) || std::str::from_utf8(&content).is_err() {
                    return refuse(&path, "is binary; template changes must be text".into());
                }
                let executable = existing.map_or(executable, |f| f.executable || executable);
                changes.push(FileChange { path, content: Some(content), executable });
            }
        }
    }
    for path in base.keys().filter(|p| !seen.contains(**p)) {
        changes.push(FileChange { path: (*path).to_owned(), content: None, executable: false });
    }
    if changes.len() > MAX_CHANGED_FILES {
        return Err(BrokerError::ResourceExhausted(format!(
            "the change touches {} files, more than {MAX_CHANGED_FILES}",
            changes.len()
        )));
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// Whether symlink `path` → `target` points outside the repository root.
fn escapes(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth = path.matches('/').count() as i64;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<TreeFile> {
        vec![
            TreeFile { path: "worker/Dockerfile".into(), content: b"FROM x:1\n".to_vec(), executable: false },
            TreeFile { path: "worker/run.sh".into(), content: b"echo\n".to_vec(), executable: true },
        ]
    }

    fn file(content: &[u8]) -> WorkspaceEntry {
        WorkspaceEntry::File { content: content.to_vec(), executable: false }
    }

    #[test]
    fn edits_additions_and_deletions_become_changes() {
        let exported = vec![
            ("worker/Dockerfile".to_owned(), file(b"FROM x:1\nRUN true\n")),
            ("worker/new.txt".to_owned(), file(b"hi\n")),
        ];
        let changes = changes_against(&base(), exported).unwrap();
        let summary: Vec<_> = changes.iter().map(|c| (c.path.as_str(), c.content.is_some())).collect();
        assert_eq!(summary, [("worker/Dockerfile", true), ("worker/new.txt", true), ("worker/run.sh", false)]);
        // Same content with the executable bit lost in the checkout: no change.
        let unchanged =
            vec![("worker/Dockerfile".to_owned(), file(b"FROM x:1\n")), ("worker/run.sh".to_owned(), file(b"echo\n"))];
        assert!(changes_against(&base(), unchanged).unwrap().is_empty());
    }

    #[test]
    fn what_must_not_be_committed_is_refused_by_path() {
        let cases: Vec<(WorkspaceEntry, &str)> = vec![
            (WorkspaceEntry::Symlink { target: "../../etc/passwd".into() }, "escapes the repository"),
            (WorkspaceEntry::Symlink { target: "/etc/shadow".into() }, "escapes the repository"),
            (WorkspaceEntry::Symlink { target: "Dockerfile".into() }, "regular files only"),
            (WorkspaceEntry::Special, "FIFO"),
            (WorkspaceEntry::TooLarge { size: 5 << 20 }, "byte limit"),
            (file(b"\x7fELF\0\0"), "binary"),
        ];
        for (entry, expected) in cases {
            let err = changes_against(&base(), vec![("worker/x".into(), entry)]).unwrap_err().to_string();
            assert!(err.starts_with("worker/x: ") && err.contains(expected), "{err}");
        }
        let err = changes_against(&base(), vec![("a/../b".into(), file(b"x"))]).unwrap_err().to_string();
        assert!(err.contains("cannot be committed"), "{err}");
    }

    #[test]
    fn branch_names_are_readable_and_valid() {
        assert_eq!(
            branch_name("Install Playwright in the worker!", "sbx-0123456789abcdef"),
            "agentstudio/install-playwright-in-the-worker-89abcdef"
        );
        assert_eq!(branch_name("🙂", "sbx-1"), "agentstudio/change-sbx-1");
    }
}
