//! `github`: the template repository on GitHub (or GitHub Enterprise Server), driven through the
//! REST API with octocrab and no clone. Commits are made with the Git data API (blobs → tree on
//! the base tree → commit → ref), so the broker never needs a working copy, and merges name the
//! head they expect so GitHub itself refuses one that moved.

mod api;
mod errors;
mod git;
mod pulls;
mod wire;

use async_trait::async_trait;
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use service_kit::secret::SecretString;

use crate::validate::{check_branch, check_changes, check_sha};
use crate::{
    CodeHost, CodeHostError, CommitIdentity, FileChange, NewPullRequest, PrState, PullRequest, Result, TreeFile,
    TreeLimits,
};
use api::Api;
use errors::Scrubber;

/// GitHub.com's API; GitHub Enterprise Server uses `https://<host>/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// The branch pull requests target unless [`GitHub::with_default_branch`] says otherwise.
pub const DEFAULT_BRANCH: &str = "main";

/// Connecting to GitHub longer than this means it is unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// One read or write on an open connection longer than this means it is stuck.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How the broker reaches one GitHub repository.
#[derive(Debug, Clone)]
pub struct GitHubOptions {
    /// The REST API root, without a trailing slash; see [`default_api_url`].
    pub api_url: String,
    pub owner: String,
    pub repo: String,
    pub auth: GitHubAuth,
    /// The committer of every commit the broker makes; the author is the identity each call
    /// passes (the worker's change), so history shows both.
    pub identity: CommitIdentity,
}

/// The credential. Either kind needs, on this one repository, exactly: **Metadata: read**,
/// **Contents: read and write** (blobs, trees, commits, branches, merging) and **Pull
/// requests: read and write** (open, read, list, close, comment). Nothing else: no
/// Administration, no Workflows (a change under `.github/workflows/` is then refused by GitHub,
/// which is what we want).
#[derive(Debug, Clone)]
pub enum GitHubAuth {
    /// A fine-grained personal access token limited to the repository.
    Token(SecretString),
    /// A GitHub App installed on the repository: the broker signs a JWT (RS256) with the App's
    /// key, exchanges it for an installation token (valid one hour), and replaces that token
    /// five minutes before it expires.
    App { app_id: u64, private_key_pem: SecretString, installation_id: u64 },
}

/// `GITHUB_API_URL` when set and not empty (GitHub Enterprise Server, tests), else GitHub.com.
pub fn default_api_url() -> String {
    std::env::var("GITHUB_API_URL").ok().filter(|url| !url.trim().is_empty()).unwrap_or_else(|| DEFAULT_API_URL.into())
}

/// One repository on GitHub. Cheap to share behind an `Arc`; calls run concurrently.
pub struct GitHub {
    api: Api,
    owner: String,
    repo: String,
    identity: CommitIdentity,
    default_branch: String,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").field("repository", &self.repository()).finish_non_exhaustive()
    }
}

impl GitHub {
    /// Builds the client; nothing is sent until the first call. Must run inside a Tokio runtime
    /// (octocrab spawns its request buffer there).
    pub fn new(options: GitHubOptions) -> Result<GitHub> {
        let GitHubOptions { api_url, owner, repo, auth, identity } = options;
        check_name("owner", &owner)?;
        check_name("repo", &repo)?;
        let api_url = api_url.trim().trim_end_matches('/').to_owned();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(invalid("api_url", format!("{api_url:?} is not an http(s) URL")));
        }
        let builder = Octocrab::builder()
            .base_uri(api_url.as_str())
            .map_err(|_| invalid("api_url", format!("{api_url:?} is not a valid URL")))?
            // Retries are ours: reads only (see `api`).
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(Some(CONNECT_TIMEOUT))
            .set_read_timeout(Some(IO_TIMEOUT))
            .set_write_timeout(Some(IO_TIMEOUT));
        let scrubber = Scrubber::default();
        let (crab, installation) = match auth {
            GitHubAuth::Token(token) => {
                if token.expose().is_empty() {
                    return Err(invalid("token", "is empty".into()));
                }
                // octocrab would panic building a header from anything else.
                if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid("token", "contains spaces or characters an HTTP header cannot carry".into()));
                }
                scrubber.remember(token.expose());
                let crab = builder.personal_token(token.expose().to_owned()).build().map_err(build_error)?;
                (crab, false)
            }
            GitHubAuth::App { app_id, private_key_pem, installation_id } => {
                // The key's own error text could quote it; say only that it is unusable.
                let key = octocrab::EncodingKey::from_rsa_pem(private_key_pem.expose().as_bytes()).map_err(|_| {
                    invalid("private_key_pem", "is not an RSA private key in PEM form (the App's .pem file)".into())
                })?;
                scrubber.remember(private_key_pem.expose());
                let app = builder.app(AppId(app_id), key).build().map_err(build_error)?;
                let crab = app.installation(InstallationId(installation_id)).map_err(build_error)?;
                (crab, true)
            }
        };
        Ok(GitHub {
            api: Api::new(crab, installation, scrubber),
            owner,
            repo,
            identity,
            default_branch: DEFAULT_BRANCH.into(),
        })
    }

    /// Targets `branch` instead of [`DEFAULT_BRANCH`].
    pub fn with_default_branch(mut self, branch: &str) -> Result<GitHub> {
        check_branch(branch)?;
        self.default_branch = branch.to_owned();
        Ok(self)
    }

    /// `/repos/{owner}/{repo}/{tail}`; every path piece in `tail` was checked by the caller.
    fn route(&self, tail: &str) -> String {
        format!("/repos/{}/{}/{tail}", self.owner, self.repo)
    }
}

#[async_trait]
impl CodeHost for GitHub {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn repository(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    fn default_branch(&self) -> String {
        self.default_branch.clone()
    }

    async fn branch_head(&self, branch: &str) -> Result<String> {
        check_branch(branch)?;
        self.branch_ref(branch).await
    }

    async fn read_tree(&self, sha: &str, limits: TreeLimits) -> Result<Vec<TreeFile>> {
        check_sha(sha)?;
        self.read_files(sha, limits).await
    }

    async fn open_pull_request(&self, new: NewPullRequest) -> Result<PullRequest> {
        check_branch(&new.head_branch)?;
        check_branch(&new.base_branch)?;
        check_sha(&new.base_sha)?;
        check_changes(&new.changes)?;
        self.open(new).await
    }

    async fn push_to_pull_request(
        &self,
        number: u64,
        base_sha: &str,
        changes: Vec<FileChange>,
        message: &str,
        identity: &CommitIdentity,
    ) -> Result<PullRequest> {
        check_sha(base_sha)?;
        check_changes(&changes)?;
        self.push(number, base_sha, changes, message, identity).await
    }

    async fn get_pull_request(&self, number: u64) -> Result<PullRequest> {
        let pr = self.fetch_pull(number).await?;
        self.with_diff(wire::pull_request(pr)).await
    }

    async fn list_pull_requests(&self, state: Option<PrState>) -> Result<Vec<PullRequest>> {
        self.list(state).await
    }

    async fn merge_pull_request(&self, number: u64, expected_head_sha: &str, message: &str) -> Result<String> {
        check_sha(expected_head_sha)?;
        self.merge(number, expected_head_sha, message).await
    }

    async fn close_pull_request(&self, number: u64) -> Result<PullRequest> {
        self.close(number).await
    }

    async fn revert_merge(&self, branch: &str, merge_sha: &str, message: &str) -> Result<String> {
        check_branch(branch)?;
        check_sha(merge_sha)?;
        self.revert(branch, merge_sha, message).await
    }

    async fn comment(&self, number: u64, body: &str) -> Result<()> {
        if body.trim().is_empty() {
            return Err(invalid("body", "a comment needs text".into()));
        }
        self.add_comment(number, body).await
    }
}

fn invalid(field: &'static str, message: String) -> CodeHostError {
    CodeHostError::InvalidArgument { field, message }
}

fn build_error(error: octocrab::Error) -> CodeHostError {
    // Building fails only on local setup (TLS roots, URL), never with a credential in the text.
    let text = error.to_string();
    CodeHostError::Unavailable(format!("github: cannot build the client: {}", text.lines().next().unwrap_or_default()))
}

/// An owner or repository name as GitHub allows them; they go into every URL path.
fn check_name(field: &'static str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid { Ok(()) } else { Err(invalid(field, format!("{name:?} is not a GitHub owner or repository name"))) }
}

#[cfg(test)]
mod tests;
