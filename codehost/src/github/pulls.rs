//! Pull requests: open, push, read with diff and files, list, merge at an expected head, close,
//! comment.

use std::time::Duration;

use http::Method;
use octocrab::models::pulls::{Merge, PullRequest as GitHubPull};
use octocrab::models::repos::DiffEntry;

use super::api::ACCEPT_DIFF;
use super::errors::{Op, Permission};
use super::wire::{self, ClosePull, MergePull, MoveRef, NewComment, NewPull, NewRef};
use super::{GitHub, check_branch};
use crate::{
    ChangedFile, CodeHost, CodeHostError, CommitIdentity, FileChange, MAX_DIFF_BYTES, NewPullRequest, PrState,
    PullRequest, Result,
};

/// Items per page for lists; GitHub's maximum.
const PER_PAGE: usize = 100;
/// Pages of pull requests a list reads at most (the 1,000 newest): the template repository
/// sees a handful a week, and an unbounded walk would be an unbounded cost.
const MAX_LIST_PAGES: usize = 10;
/// Pages of changed files: GitHub lists at most 3,000 files per pull request.
const MAX_FILE_PAGES: usize = 30;
/// After a push, GitHub moves the pull request's head asynchronously; it is polled this many
/// times, [`PUSH_SETTLE_DELAY`] apart, before the pull request is returned as GitHub has it.
const PUSH_SETTLE_ATTEMPTS: u32 = 10;
const PUSH_SETTLE_DELAY: Duration = Duration::from_millis(300);

impl GitHub {
    pub(super) async fn fetch_pull(&self, number: u64) -> Result<GitHubPull> {
        let op = Op::new(format!("read pull request #{number}"), Permission::PullRequestsRead, "number");
        self.api.get(&self.route(&format!("pulls/{number}"))).await.map_err(|f| self.fail(f, &op))
    }

    pub(super) async fn open(&self, new: NewPullRequest) -> Result<PullRequest> {
        let branch = &new.head_branch;
        let commit =
            self.write_commit(&new.base_sha, &new.base_sha, &new.changes, &new.commit_message, &new.identity).await?;
        let op = Op::new(format!("create branch {branch}"), Permission::ContentsWrite, "branch");
        let body = NewRef { reference: format!("refs/heads/{branch}"), sha: commit.clone() };
        let created: Result<octocrab::models::repos::Ref, _> =
            self.api.write(Method::POST, &self.route("git/refs"), &body).await;
        if let Err(failure) = created {
            if failure.is(422) && failure.message.to_ascii_lowercase().contains("already exists") {
                return Err(CodeHostError::Conflict(format!(
                    "github: branch {branch} already exists in {}",
                    self.repository()
                )));
            }
            return Err(self.fail(failure, &op));
        }
        let op = Op::new(format!("open a pull request from {branch}"), Permission::PullRequestsWrite, "title");
        let body = NewPull { title: &new.title, head: branch, base: &new.base_branch, body: &new.body };
        let pull: GitHubPull = match self.api.write(Method::POST, &self.route("pulls"), &body).await {
            Ok(pull) => pull,
            Err(failure) => {
                // GitHub answered "no": the branch we just made is litter. Without an answer the
                // pull request may exist, and deleting its branch would close it, so it stays.
                if failure.status.is_some_and(|s| s.is_client_error()) {
                    self.delete_branch(branch).await;
                }
                return Err(self.fail(failure, &op));
            }
        };
        tracing::info!(repository = %self.repository(), number = pull.number, head = %commit, "opened pull request");
        self.with_diff(wire::pull_request(pull)).await
    }

    async fn delete_branch(&self, branch: &str) {
        let route = self.route(&format!("git/refs/heads/{branch}"));
        if let Err(failure) = self.api.delete(&route).await {
            tracing::warn!(branch, status = ?failure.status, error = %failure.message, "could not delete a branch left by a failed pull request");
        }
    }

    pub(super) async fn push(
        &self,
        number: u64,
        base_sha: &str,
        changes: Vec<FileChange>,
        message: &str,
        identity: &CommitIdentity,
    ) -> Result<PullRequest> {
        let pull = self.fetch_pull(number).await?;
        let current = wire::pull_request(pull.clone());
        if current.state != PrState::Open {
            return Err(CodeHostError::Conflict(format!("pull request #{number} is {}", current.state.as_str())));
        }
        if wire::head_owner(&pull).is_some_and(|owner| !owner.eq_ignore_ascii_case(&self.owner)) {
            return Err(CodeHostError::Conflict(format!(
                "pull request #{number} comes from a fork; the broker pushes only to its own branches"
            )));
        }
        let branch = &current.head_branch;
        check_branch(branch)?;
        let commit = self.write_commit(base_sha, &current.head_sha, &changes, message, identity).await?;
        let op = Op::new(format!("move branch {branch}"), Permission::ContentsWrite, "branch");
        let body = MoveRef { sha: &commit, force: false };
        let moved: Result<octocrab::models::repos::Ref, _> =
            self.api.write(Method::PATCH, &self.route(&format!("git/refs/heads/{branch}")), &body).await;
        if let Err(failure) = moved {
            if failure.is(422) {
                return Err(CodeHostError::Conflict(format!(
                    "github: branch {branch} of pull request #{number} moved from {} while pushing ({})",
                    current.head_sha, failure.message
                )));
            }
            return Err(self.fail(failure, &op));
        }
        let mut pull = self.fetch_pull(number).await?;
        for _ in 1..PUSH_SETTLE_ATTEMPTS {
            if pull.head.sha == commit {
                break;
            }
            tokio::time::sleep(PUSH_SETTLE_DELAY).await;
            pull = self.fetch_pull(number).await?;
        }
        if pull.head.sha != commit {
            tracing::warn!(number, %commit, head = %pull.head.sha, "github has not moved the pull request's head yet");
        }
        self.with_diff(wire::pull_request(pull)).await
    }

    /// Adds the diff (cut at [`MAX_DIFF_BYTES`]) and the changed files.
    pub(super) async fn with_diff(&self, mut pr: PullRequest) -> Result<PullRequest> {
        let number = pr.number;
        let op = Op::new(format!("read the diff of pull request #{number}"), Permission::PullRequestsRead, "number");
        match self.api.read(&self.route(&format!("pulls/{number}")), ACCEPT_DIFF, MAX_DIFF_BYTES, true).await {
            Ok(answer) => {
                // A cut can split a character; drop its first bytes rather than grow past the bound.
                let mut end = answer.body.len();
                if let Err(e) = std::str::from_utf8(&answer.body)
                    && answer.cut
                    && e.error_len().is_none()
                {
                    end = e.valid_up_to();
                }
                pr.diff = String::from_utf8_lossy(&answer.body[..end]).into_owned();
                pr.diff_truncated = answer.cut;
            }
            // GitHub refuses diffs over 300 files or 20,000 lines with 406: too large to vet.
            Err(failure) if failure.is(406) => {
                tracing::info!(number, error = %failure.message, "github will not produce the diff");
                pr.diff = String::new();
                pr.diff_truncated = true;
            }
            Err(failure) => return Err(self.fail(failure, &op)),
        }
        pr.files = self.changed_files(number).await?;
        Ok(pr)
    }

    async fn changed_files(&self, number: u64) -> Result<Vec<ChangedFile>> {
        let op = Op::new(format!("list the files of pull request #{number}"), Permission::PullRequestsRead, "number");
        let mut files = Vec::new();
        for page in 1..=MAX_FILE_PAGES {
            let route = self.route(&format!("pulls/{number}/files?per_page={PER_PAGE}&page={page}"));
            let batch: Vec<DiffEntry> = self.api.get(&route).await.map_err(|f| self.fail(f, &op))?;
            let full = batch.len() == PER_PAGE;
            files.extend(batch.into_iter().map(|entry| {
                ChangedFile {
                    // A rename keeps GitHub's word and names the new path.
                    status: serde_json::to_value(&entry.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "modified".into()),
                    path: entry.filename,
                    additions: u32::try_from(entry.additions).unwrap_or(u32::MAX),
                    deletions: u32::try_from(entry.deletions).unwrap_or(u32::MAX),
                }
            }));
            if !full {
                break;
            }
        }
        Ok(files)
    }

    pub(super) async fn list(&self, state: Option<PrState>) -> Result<Vec<PullRequest>> {
        // GitHub has no "merged" state: merged pull requests are closed ones with `merged_at`.
        let wanted = match state {
            Some(PrState::Open) => "open",
            Some(PrState::Closed | PrState::Merged) => "closed",
            None => "all",
        };
        let op = Op::new("list pull requests", Permission::PullRequestsRead, "state");
        let mut out = Vec::new();
        for page in 1..=MAX_LIST_PAGES {
            let route = self
                .route(&format!("pulls?state={wanted}&sort=created&direction=desc&per_page={PER_PAGE}&page={page}"));
            let batch: Vec<GitHubPull> = self.api.get(&route).await.map_err(|f| self.fail(f, &op))?;
            let full = batch.len() == PER_PAGE;
            out.extend(batch.into_iter().map(wire::pull_request));
            if !full {
                break;
            }
            if page == MAX_LIST_PAGES {
                tracing::warn!(limit = MAX_LIST_PAGES * PER_PAGE, "listing only the newest pull requests");
            }
        }
        out.retain(|pr| state.is_none_or(|s| pr.state == s));
        Ok(out)
    }

    pub(super) async fn merge(&self, number: u64, expected_head_sha: &str, message: &str) -> Result<String> {
        let (title, rest) = message.trim().split_once('\n').unwrap_or((message.trim(), ""));
        let title =
            if title.trim().is_empty() { format!("Merge pull request #{number}") } else { title.trim().to_owned() };
        let rest = rest.trim();
        let body = MergePull {
            sha: expected_head_sha,
            merge_method: "merge",
            commit_title: &title,
            commit_message: (!rest.is_empty()).then_some(rest),
        };
        let op = Op::new(format!("merge pull request #{number}"), Permission::ContentsWrite, "number");
        let route = self.route(&format!("pulls/{number}/merge"));
        let merged: Merge = match self.api.write(Method::PUT, &route, &body).await {
            Ok(merged) => merged,
            Err(failure) if failure.is(409) => {
                let actual = match self.fetch_pull(number).await {
                    Ok(pull) => pull.head.sha,
                    Err(_) => "unknown".into(),
                };
                return Err(CodeHostError::Conflict(format!(
                    "head of pull request #{number} is {actual}, not the expected {expected_head_sha}; nothing was merged (GitHub: {})",
                    failure.message
                )));
            }
            Err(failure) if failure.is(405) => {
                return Err(CodeHostError::Conflict(format!(
                    "pull request #{number} cannot be merged: {}",
                    failure.message
                )));
            }
            Err(failure) => return Err(self.fail(failure, &op)),
        };
        match (merged.merged, merged.sha) {
            (true, Some(sha)) => {
                tracing::info!(repository = %self.repository(), number, merge = %sha, "merged pull request");
                Ok(sha)
            }
            (_, _) => Err(CodeHostError::Conflict(format!(
                "pull request #{number} was not merged: {}",
                merged.message.unwrap_or_default()
            ))),
        }
    }

    pub(super) async fn close(&self, number: u64) -> Result<PullRequest> {
        let current = wire::pull_request(self.fetch_pull(number).await?);
        if current.state == PrState::Merged {
            return Err(CodeHostError::Conflict(format!("pull request #{number} is already merged")));
        }
        let op = Op::new(format!("close pull request #{number}"), Permission::PullRequestsWrite, "number");
        let closed: GitHubPull = self
            .api
            .write(Method::PATCH, &self.route(&format!("pulls/{number}")), &ClosePull { state: "closed" })
            .await
            .map_err(|f| self.fail(f, &op))?;
        Ok(wire::pull_request(closed))
    }

    pub(super) async fn add_comment(&self, number: u64, body: &str) -> Result<()> {
        let op = Op::new(format!("comment on pull request #{number}"), Permission::PullRequestsWrite, "body");
        // Pull requests are issues for comments; the answer (~30 fields) is not needed.
        self.api
            .write_ignoring_answer(
                Method::POST,
                &self.route(&format!("issues/{number}/comments")),
                &NewComment { body },
            )
            .await
            .map_err(|f| self.fail(f, &op))
    }
}
