//! Code hosts: where the template repository lives and where its pull requests are opened,
//! merged or closed.
//!
//! Only the broker links this crate: it is the single holder of code-host credentials. A host
//! never sees a sandbox; the broker hands it plain file changes it has already validated.

pub mod github;
pub mod local_git;
mod model;
mod validate;

pub use model::{ChangedFile, CommitIdentity, FileChange, NewPullRequest, PrState, PullRequest, TreeFile, TreeLimits};
pub use validate::{check_branch, check_changes, check_repo_path, check_sha};

pub use github::{GitHub, GitHubAuth, GitHubOptions};

use async_trait::async_trait;

/// Largest diff a host returns; a bigger one comes back cut at this size with
/// `PullRequest::diff_truncated` set (vetting then refuses the PR as too large).
pub const MAX_DIFF_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodeHostError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The state moved under the caller: head SHA changed, branch exists, merge conflict, PR not open.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The host refused our credentials or their permissions.
    #[error("{0}")]
    PermissionDenied(String),
    /// The host could not be reached or failed; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T, E = CodeHostError> = std::result::Result<T, E>;

/// One repository on one code host. Implementations are cheap to share.
#[async_trait]
pub trait CodeHost: Send + Sync + 'static {
    /// `"local-git"` or `"github"`.
    fn kind(&self) -> &'static str;

    /// The repository's name as the host knows it (`worker-template`, `owner/name`).
    fn repository(&self) -> String;

    /// The branch pull requests target and templates are built from.
    fn default_branch(&self) -> String;

    /// The commit `branch` points at.
    async fn branch_head(&self, branch: &str) -> Result<String>;

    /// Every file of the tree at commit `sha`, refusing trees over `limits`.
    async fn read_tree(&self, sha: &str, limits: TreeLimits) -> Result<Vec<TreeFile>>;

    /// Commits `changes` on top of `new.base_sha` on the new branch `new.head_branch` and opens a
    /// pull request from it into `new.base_branch`.
    async fn open_pull_request(&self, new: NewPullRequest) -> Result<PullRequest>;

    /// Adds a commit to an open pull request's branch whose tree is `base_sha`'s tree plus
    /// `changes` (the worker's whole change set, not a delta), moving its head.
    async fn push_to_pull_request(
        &self,
        number: u64,
        base_sha: &str,
        changes: Vec<FileChange>,
        message: &str,
        identity: &CommitIdentity,
    ) -> Result<PullRequest>;

    /// The pull request with its diff and changed files.
    async fn get_pull_request(&self, number: u64) -> Result<PullRequest>;

    /// Pull requests (without diffs), newest first; `state` filters when given.
    async fn list_pull_requests(&self, state: Option<PrState>) -> Result<Vec<PullRequest>>;

    /// Merges only if the head is still `expected_head_sha`; returns the merge commit's SHA.
    async fn merge_pull_request(&self, number: u64, expected_head_sha: &str, message: &str) -> Result<String>;

    async fn close_pull_request(&self, number: u64) -> Result<PullRequest>;

    /// Undoes a merge whose template failed to build or pass its smoke test: commits on `branch`,
    /// on top of `merge_sha`, the tree of its first parent (the branch as it was before the
    /// merge), so later pull requests do not inherit the broken change. Only while `branch` still
    /// points at `merge_sha` (Conflict otherwise: a later commit needs a person); returns the new
    /// commit.
    async fn revert_merge(&self, branch: &str, merge_sha: &str, message: &str) -> Result<String>;

    async fn comment(&self, number: u64, body: &str) -> Result<()>;
}
