//! GitHub's JSON where octocrab has no model that fits: the Git data API (its commit model
//! needs `verification` and a dozen URLs we never read), and the request bodies we send.
//! Pull requests, refs, changed files and merge results use octocrab's own models.

use serde::{Deserialize, Serialize};

use crate::{PrState, PullRequest};

/// `GET|POST /git/commits` — only what we read.
#[derive(Debug, Deserialize)]
pub(crate) struct GitCommit {
    pub sha: String,
    pub tree: Sha,
    #[serde(default)]
    pub parents: Vec<Sha>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Sha {
    pub sha: String,
}

/// `GET /git/trees/{sha}?recursive=1`.
#[derive(Debug, Deserialize)]
pub(crate) struct GitTree {
    pub tree: Vec<GitTreeEntry>,
    /// GitHub stops listing past 100,000 entries or 7 MB and sets this.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GitTreeEntry {
    pub path: String,
    pub mode: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sha: String,
    /// Set for blobs.
    pub size: Option<u64>,
}

/// `GET /git/blobs/{sha}`: `content` is base64 with a newline every 60 characters.
#[derive(Debug, Deserialize)]
pub(crate) struct GitBlob {
    pub content: String,
    pub encoding: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewBlob {
    pub content: String,
    pub encoding: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewTree<'a> {
    /// Unlisted paths are kept from this tree; without it they would all disappear.
    pub base_tree: &'a str,
    pub tree: Vec<NewTreeEntry<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewTreeEntry<'a> {
    pub path: &'a str,
    pub mode: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `None` serializes as `null`, which deletes the path from the base tree.
    pub sha: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewCommit<'a> {
    pub message: &'a str,
    pub tree: &'a str,
    pub parents: [&'a str; 1],
    pub author: Person<'a>,
    pub committer: Person<'a>,
}

/// No `date`: GitHub stamps the commit with its own clock.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Person<'a> {
    pub name: &'a str,
    pub email: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewRef {
    #[serde(rename = "ref")]
    pub reference: String,
    pub sha: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct MoveRef<'a> {
    pub sha: &'a str,
    /// Always false: the branch may only move forward from the head we built on.
    pub force: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewPull<'a> {
    pub title: &'a str,
    pub head: &'a str,
    pub base: &'a str,
    pub body: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct MergePull<'a> {
    /// GitHub refuses with 409 unless the head is still this commit.
    pub sha: &'a str,
    pub merge_method: &'static str,
    pub commit_title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClosePull {
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct NewComment<'a> {
    pub body: &'a str,
}

/// octocrab's pull request as ours, without diff and files. GitHub keeps `state: closed` for
/// merged pull requests and sets `merged_at`; `merge_commit_sha` is also set on open ones (the
/// test merge), so it counts only once merged.
pub(crate) fn pull_request(pr: octocrab::models::pulls::PullRequest) -> PullRequest {
    let merged = pr.merged_at.is_some() || pr.merged == Some(true);
    let state = match pr.state {
        Some(octocrab::models::IssueState::Open) => PrState::Open,
        _ if merged => PrState::Merged,
        _ => PrState::Closed,
    };
    PullRequest {
        number: pr.number,
        url: pr.html_url.map(|u| u.to_string()).unwrap_or(pr.url),
        title: pr.title.unwrap_or_default(),
        body: pr.body.unwrap_or_default(),
        state,
        base_branch: pr.base.ref_field,
        head_branch: pr.head.ref_field,
        base_sha: pr.base.sha,
        head_sha: pr.head.sha,
        merge_sha: if merged { pr.merge_commit_sha } else { None },
        author: pr.user.map(|u| u.login).unwrap_or_default(),
        created_at: pr.created_at.map_or(0, |t| t.timestamp()),
        diff: String::new(),
        diff_truncated: false,
        files: Vec::new(),
    }
}

/// The owner part of a head label (`owner:branch`), to refuse pushing to a fork's branch name.
pub(crate) fn head_owner(pr: &octocrab::models::pulls::PullRequest) -> Option<&str> {
    pr.head.label.as_deref().and_then(|label| label.split_once(':')).map(|(owner, _)| owner)
}
