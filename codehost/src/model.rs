//! What code hosts exchange with the broker: plain data, no host-specific types.

use serde::{Deserialize, Serialize};

/// One file the broker wants in the next commit. `content: None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    pub content: Option<Vec<u8>>,
    pub executable: bool,
}

/// One file of a tree at some commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    pub path: String,
    pub content: Vec<u8>,
    pub executable: bool,
}

/// Bounds on a tree read back from a host: the template repository is small, and a tree
/// beyond these is a mistake (or an attack) rather than a template.
#[derive(Debug, Clone, Copy)]
pub struct TreeLimits {
    pub max_files: usize,
    pub max_total_bytes: u64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits { max_files: 2_000, max_total_bytes: 64 << 20 }
    }
}

/// Who a commit is by (the broker's bot identity, never a person's credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitIdentity {
    pub name: String,
    pub email: String,
}

impl Default for CommitIdentity {
    fn default() -> Self {
        CommitIdentity { name: "Agent Studio".into(), email: "agent-studio@localhost".into() }
    }
}

#[derive(Debug, Clone)]
pub struct NewPullRequest {
    pub base_branch: String,
    pub base_sha: String,
    pub head_branch: String,
    pub changes: Vec<FileChange>,
    pub commit_message: String,
    pub title: String,
    pub body: String,
    pub identity: CommitIdentity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrState {
    Open,
    Closed,
    Merged,
}

impl PrState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrState::Open => "open",
            PrState::Closed => "closed",
            PrState::Merged => "merged",
        }
    }
}

/// One changed file of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    pub path: String,
    /// `added`, `modified`, `removed` (GitHub's words).
    pub status: String,
    pub additions: u32,
    pub deletions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
    pub title: String,
    pub body: String,
    pub state: PrState,
    pub base_branch: String,
    pub head_branch: String,
    pub base_sha: String,
    pub head_sha: String,
    /// Set once merged.
    #[serde(default)]
    pub merge_sha: Option<String>,
    pub author: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Filled by `get_pull_request`; empty in lists.
    #[serde(default, skip_serializing)]
    pub diff: String,
    #[serde(default, skip_serializing)]
    pub diff_truncated: bool,
    #[serde(default, skip_serializing)]
    pub files: Vec<ChangedFile>,
}
