//! The Git data API: reading a commit's files and writing a commit, without a clone.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use http::Method;

use super::GitHub;
use super::errors::{Failure, Op, Permission};
use super::wire::{GitBlob, GitCommit, GitTree, MoveRef, NewBlob, NewCommit, NewTree, NewTreeEntry, Person, Sha};
use crate::{CodeHost, CodeHostError, CommitIdentity, FileChange, Result, TreeFile, TreeLimits};

/// Blob downloads in flight at once while reading a tree: enough to hide the round trips of a
/// ~2,000-file template, far below GitHub's concurrency limit (100).
const BLOB_READS_IN_FLIGHT: usize = 8;

/// Room for a blob answer's JSON beyond its base64 content.
const BLOB_JSON_OVERHEAD: usize = 4 << 10;

impl GitHub {
    pub(super) fn fail(&self, failure: Failure, op: &Op) -> CodeHostError {
        failure.into_error(op, &self.repository())
    }

    /// The commit `branch` points at.
    pub(super) async fn branch_ref(&self, branch: &str) -> Result<String> {
        let op = Op::new(format!("read branch {branch}"), Permission::ContentsRead, "branch");
        let reference: octocrab::models::repos::Ref =
            self.api.get(&self.route(&format!("git/ref/heads/{branch}"))).await.map_err(|f| self.fail(f, &op))?;
        match reference.object {
            octocrab::models::repos::Object::Commit { sha, .. } => Ok(sha),
            _ => Err(CodeHostError::Unavailable(format!("github: branch {branch} does not point at a commit"))),
        }
    }

    /// The tree of commit `sha`.
    async fn commit_tree(&self, sha: &str) -> Result<String> {
        let op = Op::new(format!("read commit {sha}"), Permission::ContentsRead, "sha");
        let commit: GitCommit =
            self.api.get(&self.route(&format!("git/commits/{sha}"))).await.map_err(|f| self.fail(f, &op))?;
        Ok(commit.tree.sha)
    }

    /// Every regular file of commit `sha`. Symlinks (`120000`) and submodules (`commit`
    /// entries) are not template content and are skipped. The limits are checked against the
    /// listing's sizes before any content is fetched, and again against what arrives.
    pub(super) async fn read_files(&self, sha: &str, limits: TreeLimits) -> Result<Vec<TreeFile>> {
        let tree_sha = self.commit_tree(sha).await?;
        let op = Op::new(format!("read the tree of {sha}"), Permission::ContentsRead, "sha");
        let tree: GitTree = self
            .api
            .get(&self.route(&format!("git/trees/{tree_sha}?recursive=1")))
            .await
            .map_err(|f| self.fail(f, &op))?;
        if tree.truncated {
            return Err(CodeHostError::TooLarge(format!("github: the tree of {sha} is too large for GitHub to list")));
        }
        let files: Vec<_> = tree
            .tree
            .into_iter()
            .filter(|entry| entry.kind == "blob" && (entry.mode == "100644" || entry.mode == "100755"))
            .collect();
        if files.len() > limits.max_files {
            return Err(CodeHostError::TooLarge(format!(
                "tree {sha} has {} files, more than {}",
                files.len(),
                limits.max_files
            )));
        }
        let listed: u64 = files.iter().map(|f| f.size.unwrap_or(0)).sum();
        if listed > limits.max_total_bytes {
            return Err(CodeHostError::TooLarge(format!(
                "tree {sha} holds more than {} bytes",
                limits.max_total_bytes
            )));
        }
        let mut downloads = futures_util::stream::iter(files)
            .map(|entry| async move {
                let content = self.read_blob(&entry.sha, entry.size.unwrap_or(0), limits.max_total_bytes).await?;
                Ok::<_, CodeHostError>(TreeFile { path: entry.path, content, executable: entry.mode == "100755" })
            })
            .buffered(BLOB_READS_IN_FLIGHT);
        let mut out = Vec::new();
        let mut total = 0u64;
        while let Some(file) = downloads.next().await {
            let file = file?;
            total += file.content.len() as u64;
            if total > limits.max_total_bytes {
                return Err(CodeHostError::TooLarge(format!(
                    "tree {sha} holds more than {} bytes",
                    limits.max_total_bytes
                )));
            }
            out.push(file);
        }
        Ok(out)
    }

    /// One blob, its answer bounded by the size the tree listed (never above `max_bytes`).
    async fn read_blob(&self, sha: &str, size: u64, max_bytes: u64) -> Result<Vec<u8>> {
        let op = Op::new(format!("read blob {sha}"), Permission::ContentsRead, "sha");
        let size = usize::try_from(size.min(max_bytes)).unwrap_or(usize::MAX);
        // base64 grows by 4/3, and GitHub breaks it into lines of 60 characters.
        let encoded = size.div_ceil(3) * 4;
        let limit = encoded + encoded / 60 + 1 + BLOB_JSON_OVERHEAD;
        let blob: GitBlob = self
            .api
            .get_bounded(&self.route(&format!("git/blobs/{sha}")), limit)
            .await
            .map_err(|f| self.fail(f, &op))?;
        match blob.encoding.as_str() {
            "base64" => {
                let compact: String = blob.content.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                STANDARD
                    .decode(compact)
                    .map_err(|e| CodeHostError::Unavailable(format!("github: blob {sha}: bad base64: {e}")))
            }
            "utf-8" => Ok(blob.content.into_bytes()),
            other => Err(CodeHostError::Unavailable(format!("github: blob {sha}: unknown encoding {other:?}"))),
        }
    }

    /// Writes a commit whose tree is `base_sha`'s tree plus `changes` and whose only parent is
    /// `parent`; no branch moves. Blobs go up one at a time: GitHub asks for content-creating
    /// requests to be sent serially (its secondary rate limits punish bursts).
    pub(super) async fn write_commit(
        &self,
        base_sha: &str,
        parent: &str,
        changes: &[FileChange],
        message: &str,
        author: &CommitIdentity,
    ) -> Result<String> {
        let base_tree = self.commit_tree(base_sha).await?;
        let tree = if changes.is_empty() {
            base_tree
        } else {
            let mut entries = Vec::with_capacity(changes.len());
            for change in changes {
                let mode = if change.executable { "100755" } else { "100644" };
                let sha = match &change.content {
                    Some(content) => Some(self.write_blob(&change.path, content).await?),
                    None => None,
                };
                entries.push(NewTreeEntry { path: &change.path, mode, kind: "blob", sha });
            }
            let op = Op::new("write a tree", Permission::ContentsWrite, "changes");
            let body = NewTree { base_tree: &base_tree, tree: entries };
            let tree: Sha =
                self.api.write(Method::POST, &self.route("git/trees"), &body).await.map_err(|f| self.fail(f, &op))?;
            tree.sha
        };
        let op = Op::new("write a commit", Permission::ContentsWrite, "message");
        let body = NewCommit {
            message,
            tree: &tree,
            parents: [parent],
            author: Person { name: &author.name, email: &author.email },
            committer: Person { name: &self.identity.name, email: &self.identity.email },
        };
        let commit: GitCommit =
            self.api.write(Method::POST, &self.route("git/commits"), &body).await.map_err(|f| self.fail(f, &op))?;
        Ok(commit.sha)
    }

    /// See [`CodeHost::revert_merge`]: a commit with the first parent's tree on top of the merge,
    /// then a fast-forward-only move of the branch (GitHub answers 422 if it moved meanwhile).
    pub(super) async fn revert(&self, branch: &str, merge_sha: &str, message: &str) -> Result<String> {
        let moved = |head: &str| {
            CodeHostError::Conflict(format!("{branch} moved to {head} after the merge {merge_sha}; revert it by hand"))
        };
        let head = self.branch_ref(branch).await?;
        if head != merge_sha {
            return Err(moved(&head));
        }
        let op = Op::new(format!("read commit {merge_sha}"), Permission::ContentsRead, "merge_sha");
        let merge: GitCommit =
            self.api.get(&self.route(&format!("git/commits/{merge_sha}"))).await.map_err(|f| self.fail(f, &op))?;
        let Some(before) = merge.parents.first() else {
            return Err(CodeHostError::InvalidArgument {
                field: "merge_sha",
                message: format!("{merge_sha} has no parent to go back to"),
            });
        };
        let tree = self.commit_tree(&before.sha).await?;
        let op = Op::new("write a commit", Permission::ContentsWrite, "message");
        let bot = Person { name: &self.identity.name, email: &self.identity.email };
        let body = NewCommit { message, tree: &tree, parents: [merge_sha], author: bot, committer: bot };
        let commit: GitCommit =
            self.api.write(Method::POST, &self.route("git/commits"), &body).await.map_err(|f| self.fail(f, &op))?;
        let op = Op::new(format!("move branch {branch}"), Permission::ContentsWrite, "branch");
        let body = MoveRef { sha: &commit.sha, force: false };
        let route = self.route(&format!("git/refs/heads/{branch}"));
        let moved_ref: Result<octocrab::models::repos::Ref, _> = self.api.write(Method::PATCH, &route, &body).await;
        match moved_ref {
            Ok(_) => {}
            Err(failure) if failure.is(422) => return Err(moved(&format!("another commit ({})", failure.message))),
            Err(failure) => return Err(self.fail(failure, &op)),
        }
        tracing::info!(repository = %self.repository(), %merge_sha, revert = %commit.sha, "reverted a merge");
        Ok(commit.sha)
    }

    async fn write_blob(&self, path: &str, content: &[u8]) -> Result<String> {
        let op = Op::new(format!("upload {path}"), Permission::ContentsWrite, "content");
        let body = NewBlob { content: STANDARD.encode(content), encoding: "base64" };
        let blob: Sha =
            self.api.write(Method::POST, &self.route("git/blobs"), &body).await.map_err(|f| self.fail(f, &op))?;
        Ok(blob.sha)
    }
}
