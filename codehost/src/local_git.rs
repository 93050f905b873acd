//! `local-git`: the embedded code host. A bare repository in the broker's data dir plus pull
//! request records beside it. Commits, diffs and merges are real git objects made with the
//! `git` command's plumbing, so what gets merged is exactly what was diffed and vetted.
//!
//! Every write holds one lock: PR numbers, branch refs and `main` move one at a time, and ref
//! updates are compare-and-swap besides, so even a second process cannot move them unseen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::validate::{check_branch, check_repo_path, check_sha};
use crate::{
    ChangedFile, CodeHost, CodeHostError, CommitIdentity, FileChange, MAX_DIFF_BYTES, NewPullRequest, PrState,
    PullRequest, Result, TreeFile, TreeLimits,
};

/// A git command that takes longer than this is stuck (the repository is local and small).
const GIT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BRANCH: &str = "main";
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

pub struct LocalGit {
    name: String,
    git_dir: PathBuf,
    pulls_dir: PathBuf,
    scratch_dir: PathBuf,
    write_lock: Mutex<()>,
}

impl LocalGit {
    /// Opens `<root>/<name>.git`, creating it with one commit of `seed` on `main` when it does
    /// not exist yet.
    pub async fn open_or_seed(root: &Path, name: &str, seed: &[TreeFile], identity: &CommitIdentity) -> Result<Self> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(CodeHostError::InvalidArgument {
                field: "repository",
                message: format!("{name:?} must be letters, digits, '-' or '_'"),
            });
        }
        let host = LocalGit {
            name: name.to_owned(),
            git_dir: root.join(format!("{name}.git")),
            pulls_dir: root.join(format!("{name}.pulls")),
            scratch_dir: root.join("scratch"),
            write_lock: Mutex::new(()),
        };
        for dir in [&host.pulls_dir, &host.scratch_dir] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| io_error(dir, e))?;
        }
        if !host.git_dir.join("HEAD").is_file() {
            host.seed(seed, identity).await?;
        }
        Ok(host)
    }

    async fn seed(&self, seed: &[TreeFile], identity: &CommitIdentity) -> Result<()> {
        if seed.is_empty() {
            return Err(CodeHostError::InvalidArgument {
                field: "seed",
                message: "no files to seed the repository with".into(),
            });
        }
        // Built aside and renamed into place: a crash mid-seed leaves no half repository behind.
        let staging = self.scratch_dir.join(format!("seed-{}.git", uuid::Uuid::new_v4().simple()));
        run_git(
            None,
            &["init", "--quiet", "--bare", "--initial-branch", DEFAULT_BRANCH, path_str(&staging)?],
            &[],
            None,
        )
        .await?;
        let staged = LocalGit { git_dir: staging.clone(), ..self.shallow_clone() };
        let changes = seed
            .iter()
            .map(|f| FileChange { path: f.path.clone(), content: Some(f.content.clone()), executable: f.executable })
            .collect();
        let message = "Seed the template repository from the project's templates/";
        let commit = staged.commit(None, &[], changes, message, identity).await?;
        staged.update_ref(DEFAULT_BRANCH, &commit, None).await?;
        tokio::fs::rename(&staging, &self.git_dir).await.map_err(|e| io_error(&self.git_dir, e))?;
        tracing::info!(repository = %self.name, %commit, "seeded local-git template repository");
        Ok(())
    }

    fn shallow_clone(&self) -> LocalGit {
        LocalGit {
            name: self.name.clone(),
            git_dir: self.git_dir.clone(),
            pulls_dir: self.pulls_dir.clone(),
            scratch_dir: self.scratch_dir.clone(),
            write_lock: Mutex::new(()),
        }
    }

    async fn git(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Result<Vec<u8>> {
        run_git(Some(&self.git_dir), args, env, stdin).await
    }

    /// Makes a commit whose tree is `base`'s tree (empty when `None`) plus `changes`, with
    /// `parents`. Writes objects only; no ref moves.
    async fn commit(
        &self,
        base: Option<&str>,
        parents: &[&str],
        changes: Vec<FileChange>,
        message: &str,
        identity: &CommitIdentity,
    ) -> Result<String> {
        let index = self.scratch_dir.join(format!("index-{}", uuid::Uuid::new_v4().simple()));
        let index_str = path_str(&index)?.to_owned();
        let result = async {
            let env = [("GIT_INDEX_FILE", index_str.as_str())];
            match base {
                Some(base) => self.git(&["read-tree", base], &env, None).await?,
                None => self.git(&["read-tree", "--empty"], &env, None).await?,
            };
            let mut index_info = String::new();
            for change in &changes {
                check_repo_path(&change.path)?;
                match &change.content {
                    Some(content) => {
                        let blob = text(self.git(&["hash-object", "-w", "--stdin"], &[], Some(content)).await?);
                        let mode = if change.executable { "100755" } else { "100644" };
                        index_info.push_str(&format!("{mode} {blob}\t{}\n", change.path));
                    }
                    None => index_info.push_str(&format!("0 {ZERO_SHA}\t{}\n", change.path)),
                }
            }
            self.git(&["update-index", "--index-info"], &env, Some(index_info.as_bytes())).await?;
            let tree = text(self.git(&["write-tree"], &env, None).await?);
            let mut args = vec!["commit-tree", tree.as_str()];
            for parent in parents {
                args.extend(["-p", parent]);
            }
            let when = format!("{} +0000", unix_now());
            Ok(text(self.git(&args, &identity_env(identity, &when), Some(message.as_bytes())).await?))
        }
        .await;
        let _ = tokio::fs::remove_file(&index).await;
        result
    }

    /// Points `branch` at `new`, only if it still points at `old` (`None`: must not exist).
    async fn update_ref(&self, branch: &str, new: &str, old: Option<&str>) -> Result<()> {
        let reference = format!("refs/heads/{branch}");
        self.git(&["update-ref", &reference, new, old.unwrap_or(ZERO_SHA)], &[], None).await.map_err(|e| match e {
            CodeHostError::Unavailable(message) => {
                CodeHostError::Conflict(format!("branch {branch} moved or already exists: {message}"))
            }
            other => other,
        })?;
        Ok(())
    }

    fn record_path(&self, number: u64) -> PathBuf {
        self.pulls_dir.join(format!("{number}.json"))
    }

    async fn load(&self, number: u64) -> Result<PullRequest> {
        let path = self.record_path(number);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CodeHostError::Unavailable(format!("corrupt pull request record {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(CodeHostError::NotFound(format!("pull request #{number} not found in {}", self.name)))
            }
            Err(e) => Err(io_error(&path, e)),
        }
    }

    async fn store(&self, pr: &PullRequest) -> Result<()> {
        let path = self.record_path(pr.number);
        let staging = self.scratch_dir.join(format!("pr-{}.json", uuid::Uuid::new_v4().simple()));
        let bytes = serde_json::to_vec_pretty(pr).expect("pull request serializes");
        tokio::fs::write(&staging, bytes).await.map_err(|e| io_error(&staging, e))?;
        tokio::fs::rename(&staging, &path).await.map_err(|e| io_error(&path, e))
    }

    async fn all_records(&self) -> Result<Vec<PullRequest>> {
        let mut entries = tokio::fs::read_dir(&self.pulls_dir).await.map_err(|e| io_error(&self.pulls_dir, e))?;
        let mut records = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| io_error(&self.pulls_dir, e))? {
            let name = entry.file_name();
            if let Some(number) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse().ok()) {
                records.push(self.load(number).await?);
            }
        }
        records.sort_by_key(|pr| std::cmp::Reverse(pr.number));
        Ok(records)
    }

    fn url(&self, number: u64) -> String {
        format!("local-git://{}/pulls/{number}", self.name)
    }

    async fn with_diff(&self, mut pr: PullRequest) -> Result<PullRequest> {
        let range = [pr.base_sha.as_str(), pr.head_sha.as_str()];
        let mut diff =
            self.git(&["diff", "--no-color", "--no-ext-diff", "--no-renames", range[0], range[1]], &[], None).await?;
        pr.diff_truncated = diff.len() > MAX_DIFF_BYTES;
        diff.truncate(MAX_DIFF_BYTES);
        pr.diff = String::from_utf8_lossy(&diff).into_owned();
        let statuses =
            self.git(&["diff", "--no-renames", "--name-status", "-z", range[0], range[1]], &[], None).await?;
        let counts = self.git(&["diff", "--no-renames", "--numstat", "-z", range[0], range[1]], &[], None).await?;
        pr.files = changed_files(&statuses, &counts);
        Ok(pr)
    }
}

#[async_trait]
impl CodeHost for LocalGit {
    fn kind(&self) -> &'static str {
        "local-git"
    }

    fn repository(&self) -> String {
        self.name.clone()
    }

    fn default_branch(&self) -> String {
        DEFAULT_BRANCH.to_owned()
    }

    async fn branch_head(&self, branch: &str) -> Result<String> {
        check_branch(branch)?;
        let reference = format!("refs/heads/{branch}^{{commit}}");
        match self.git(&["rev-parse", "--verify", "--quiet", &reference], &[], None).await {
            Ok(sha) => Ok(text(sha)),
            Err(_) => Err(CodeHostError::NotFound(format!("branch {branch:?} not found in {}", self.name))),
        }
    }

    async fn read_tree(&self, sha: &str, limits: TreeLimits) -> Result<Vec<TreeFile>> {
        check_sha(sha)?;
        let listing = self.git(&["ls-tree", "-r", "-z", "--full-tree", sha], &[], None).await?;
        let mut entries = Vec::new();
        for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let record = String::from_utf8_lossy(record);
            let (meta, path) = record.split_once('\t').unwrap_or_default();
            let mut meta = meta.split(' ');
            let (mode, kind, object) =
                (meta.next().unwrap_or(""), meta.next().unwrap_or(""), meta.next().unwrap_or(""));
            if kind != "blob" || mode == "120000" {
                continue; // submodules and symlinks are not template content
            }
            entries.push((path.to_owned(), mode == "100755", object.to_owned()));
        }
        if entries.len() > limits.max_files {
            return Err(CodeHostError::TooLarge(format!(
                "tree {sha} has {} files, more than {}",
                entries.len(),
                limits.max_files
            )));
        }
        let mut files = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for (path, executable, object) in entries {
            let content = self.git(&["cat-file", "blob", &object], &[], None).await?;
            total += content.len() as u64;
            if total > limits.max_total_bytes {
                return Err(CodeHostError::TooLarge(format!(
                    "tree {sha} holds more than {} bytes",
                    limits.max_total_bytes
                )));
            }
            files.push(TreeFile { path, content, executable });
        }
        Ok(files)
    }

    async fn open_pull_request(&self, new: NewPullRequest) -> Result<PullRequest> {
        check_branch(&new.head_branch)?;
        check_sha(&new.base_sha)?;
        let _guard = self.write_lock.lock().await;
        let commit =
            self.commit(Some(&new.base_sha), &[&new.base_sha], new.changes, &new.commit_message, &new.identity).await?;
        self.update_ref(&new.head_branch, &commit, None).await?;
        let number = self.all_records().await?.first().map_or(1, |pr| pr.number + 1);
        let pr = PullRequest {
            number,
            url: self.url(number),
            title: new.title,
            body: new.body,
            state: PrState::Open,
            base_branch: new.base_branch,
            head_branch: new.head_branch,
            base_sha: new.base_sha,
            head_sha: commit,
            merge_sha: None,
            author: new.identity.name,
            created_at: unix_now(),
            diff: String::new(),
            diff_truncated: false,
            files: Vec::new(),
        };
        self.store(&pr).await?;
        tracing::info!(repository = %self.name, number, head = %pr.head_sha, "opened pull request");
        self.with_diff(pr).await
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
        let _guard = self.write_lock.lock().await;
        let mut pr = self.load(number).await?;
        if pr.state != PrState::Open {
            return Err(CodeHostError::Conflict(format!("pull request #{number} is {}", pr.state.as_str())));
        }
        let commit = self.commit(Some(base_sha), &[&pr.head_sha], changes, message, identity).await?;
        self.update_ref(&pr.head_branch, &commit, Some(&pr.head_sha)).await?;
        pr.head_sha = commit;
        self.store(&pr).await?;
        self.with_diff(pr).await
    }

    async fn get_pull_request(&self, number: u64) -> Result<PullRequest> {
        let pr = self.load(number).await?;
        self.with_diff(pr).await
    }

    async fn list_pull_requests(&self, state: Option<PrState>) -> Result<Vec<PullRequest>> {
        let mut records = self.all_records().await?;
        records.retain(|pr| state.is_none_or(|s| pr.state == s));
        Ok(records)
    }

    async fn merge_pull_request(&self, number: u64, expected_head_sha: &str, message: &str) -> Result<String> {
        let _guard = self.write_lock.lock().await;
        let mut pr = self.load(number).await?;
        if pr.state != PrState::Open {
            return Err(CodeHostError::Conflict(format!("pull request #{number} is {}", pr.state.as_str())));
        }
        if pr.head_sha != expected_head_sha {
            return Err(CodeHostError::Conflict(format!(
                "head of pull request #{number} is {}, not the expected {expected_head_sha}",
                pr.head_sha
            )));
        }
        let base_head = self.branch_head(&pr.base_branch).await?;
        let merged_tree =
            self.git(&["merge-tree", "--write-tree", "--no-messages", &base_head, &pr.head_sha], &[], None).await;
        let tree = match merged_tree {
            Ok(out) => text(out).lines().next().unwrap_or_default().to_owned(),
            Err(_) => {
                return Err(CodeHostError::Conflict(format!(
                    "pull request #{number} conflicts with {} at {base_head}",
                    pr.base_branch
                )));
            }
        };
        let (identity, when) = (CommitIdentity::default(), format!("{} +0000", unix_now()));
        let args = ["commit-tree", tree.as_str(), "-p", base_head.as_str(), "-p", pr.head_sha.as_str()];
        let merge = text(self.git(&args, &identity_env(&identity, &when), Some(message.as_bytes())).await?);
        self.update_ref(&pr.base_branch, &merge, Some(&base_head)).await?;
        pr.state = PrState::Merged;
        pr.merge_sha = Some(merge.clone());
        self.store(&pr).await?;
        tracing::info!(repository = %self.name, number, %merge, "merged pull request");
        Ok(merge)
    }

    async fn revert_merge(&self, branch: &str, merge_sha: &str, message: &str) -> Result<String> {
        check_branch(branch)?;
        check_sha(merge_sha)?;
        let _guard = self.write_lock.lock().await;
        let head = self.branch_head(branch).await?;
        if head != merge_sha {
            return Err(CodeHostError::Conflict(format!(
                "{branch} moved to {head} after the merge {merge_sha}; revert it by hand"
            )));
        }
        let before = format!("{merge_sha}^1^{{tree}}");
        let tree = text(self.git(&["rev-parse", "--verify", &before], &[], None).await.map_err(|_| {
            CodeHostError::InvalidArgument {
                field: "merge_sha",
                message: format!("{merge_sha} has no parent to go back to"),
            }
        })?);
        let (identity, when) = (CommitIdentity::default(), format!("{} +0000", unix_now()));
        let args = ["commit-tree", tree.as_str(), "-p", merge_sha];
        let revert = text(self.git(&args, &identity_env(&identity, &when), Some(message.as_bytes())).await?);
        self.update_ref(branch, &revert, Some(merge_sha)).await?;
        tracing::info!(repository = %self.name, %merge_sha, %revert, "reverted a merge");
        Ok(revert)
    }

    async fn close_pull_request(&self, number: u64) -> Result<PullRequest> {
        let _guard = self.write_lock.lock().await;
        let mut pr = self.load(number).await?;
        if pr.state == PrState::Merged {
            return Err(CodeHostError::Conflict(format!("pull request #{number} is already merged")));
        }
        pr.state = PrState::Closed;
        self.store(&pr).await?;
        Ok(pr)
    }

    async fn comment(&self, number: u64, body: &str) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        self.load(number).await?;
        let path = self.pulls_dir.join(format!("{number}.comments.jsonl"));
        let line = serde_json::json!({ "at": unix_now(), "body": body }).to_string() + "\n";
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        file.write_all(line.as_bytes()).await.map_err(|e| io_error(&path, e))
    }
}

/// Runs `git` with no user or system config (nothing on the host may change what it does) and
/// no prompts; a non-zero exit is `Unavailable` carrying its stderr.
async fn run_git(git_dir: Option<&Path>, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut command = tokio::process::Command::new("git");
    if let Some(dir) = git_dir {
        command.arg("--git-dir").arg(dir);
    }
    command
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child =
        command.spawn().map_err(|e| CodeHostError::Unavailable(format!("cannot run git (is it installed?): {e}")))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        let input = input.to_vec();
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }
    let output = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CodeHostError::Unavailable(format!("git {} took longer than {GIT_TIMEOUT:?}", args[0])))?
        .map_err(|e| CodeHostError::Unavailable(format!("git {}: {e}", args[0])))?;
    if !output.status.success() {
        return Err(CodeHostError::Unavailable(format!(
            "git {} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// Who a commit is by and when, as git reads it from the environment.
fn identity_env<'a>(identity: &'a CommitIdentity, when: &'a str) -> [(&'static str, &'a str); 6] {
    [
        ("GIT_AUTHOR_NAME", identity.name.as_str()),
        ("GIT_AUTHOR_EMAIL", identity.email.as_str()),
        ("GIT_AUTHOR_DATE", when),
        ("GIT_COMMITTER_NAME", identity.name.as_str()),
        ("GIT_COMMITTER_EMAIL", identity.email.as_str()),
        ("GIT_COMMITTER_DATE", when),
    ]
}

/// Parses `--name-status -z` and `--numstat -z` output into changed files.
fn changed_files(statuses: &[u8], counts: &[u8]) -> Vec<ChangedFile> {
    let mut numbers = HashMap::new();
    for record in counts.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let mut parts = record.splitn(3, '\t');
        let (added, deleted, path) = (parts.next(), parts.next(), parts.next());
        if let (Some(added), Some(deleted), Some(path)) = (added, deleted, path) {
            numbers.insert(path.to_owned(), (added.parse().unwrap_or(0), deleted.parse().unwrap_or(0)));
        }
    }
    let mut files = Vec::new();
    let mut fields = statuses.split(|b| *b == 0).filter(|r| !r.is_empty());
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        let path = String::from_utf8_lossy(path).into_owned();
        let status = match status.first() {
            Some(b'A') => "added",
            Some(b'D') => "removed",
            _ => "modified",
        };
        let (additions, deletions) = numbers.get(&path).copied().unwrap_or((0, 0));
        files.push(ChangedFile { path, status: status.to_owned(), additions, deletions });
    }
    files
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| CodeHostError::InvalidArgument {
        field: "data_dir",
        message: format!("{} is not valid UTF-8", path.display()),
    })
}

fn io_error(path: &Path, error: std::io::Error) -> CodeHostError {
    CodeHostError::Unavailable(format!("{}: {error}", path.display()))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;
