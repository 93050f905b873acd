//! The template repository and what comes out of it: checkouts for infrastructure sandboxes,
//! builds into template versions, promotion, rollback, and the single-use approvals merges need.
//!
//! Holds the code host (and so its credential); nothing here ever hands that credential out.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use codehost::{CodeHost, CodeHostError, TreeFile};
use tokio::sync::mpsc;

use crate::broker::BrokerError;
use crate::template::builder::{BuildInput, TemplateBuilder};
use crate::template::registry::{RegistryError, TemplateRegistry, VersionRecord, VersionStatus, unix_millis};
use crate::template::tree_cache::TreeCache;
use crate::template::{Template, templates_in_tree};

/// Log lines a build may queue before the builder waits for the client to read them.
pub const BUILD_LOG_BUFFER: usize = 256;

pub struct TemplateRepo {
    pub code_host: Arc<dyn CodeHost>,
    pub registry: Arc<TemplateRegistry>,
    pub builder: Arc<dyn TemplateBuilder>,
    /// One build at a time: builds are heavy, and promotion order must follow build order.
    build_lock: tokio::sync::Mutex<()>,
    approvals: UsedApprovals,
    trees: TreeCache,
}

/// What a merge must carry: a human's approval of exactly this head.
#[derive(Debug, Clone, Default)]
pub struct Approval {
    pub approval_id: String,
    pub approver: String,
    pub head_sha: String,
    pub report_digest: String,
    pub expires_at: Option<SystemTime>,
    pub override_reason: String,
}

impl TemplateRepo {
    pub fn new(
        code_host: Arc<dyn CodeHost>,
        registry: Arc<TemplateRegistry>,
        builder: Arc<dyn TemplateBuilder>,
        used_approvals_file: PathBuf,
    ) -> Result<TemplateRepo, std::io::Error> {
        Ok(TemplateRepo {
            code_host,
            registry,
            builder,
            build_lock: tokio::sync::Mutex::new(()),
            approvals: UsedApprovals::open(used_approvals_file)?,
            trees: TreeCache::default(),
        })
    }

    /// Every file of the template repository at commit `sha` (read from the code host once per
    /// commit while it stays cached).
    pub async fn tree(&self, sha: &str) -> Result<Arc<Vec<TreeFile>>, BrokerError> {
        self.trees.files(self.code_host.as_ref(), sha).await.map_err(host_error)
    }

    /// Gives every template found on the default branch that has no active version yet a first
    /// version (built and activated without a smoke test: it is what the repository was seeded with).
    pub async fn bootstrap(&self) -> Result<(), BrokerError> {
        let branch = self.code_host.default_branch();
        let head = self.code_host.branch_head(&branch).await.map_err(host_error)?;
        let tree = self.tree(&head).await?;
        let templates = templates_in_tree(tree.iter().map(|f| (f.path.as_str(), f.content.as_slice())))
            .map_err(|e| BrokerError::FailedPrecondition(e.to_string()))?;
        for (template, _) in templates {
            if self.registry.has_active(&template.name) {
                continue;
            }
            let (log, mut lines) = mpsc::channel(BUILD_LOG_BUFFER);
            let drain = tokio::spawn(async move { while lines.recv().await.is_some() {} });
            let record = self.build(&template.name, &head, 0, log).await?;
            let _ = drain.await;
            if record.status != VersionStatus::Built {
                return Err(BrokerError::FailedPrecondition(format!(
                    "the seeded {} template does not build: {}",
                    template.name, record.error
                )));
            }
            self.registry.activate(&template.name, &record.version_id).map_err(registry_error)?;
            tracing::info!(template = %template.name, version = %record.version_id, "first template version active");
        }
        Ok(())
    }

    /// The files a sandbox of `template` starts with when it asks for a checkout: the template
    /// repository at the active version of `template.checkout`, and that commit.
    pub async fn checkout(&self, template: &Template) -> Result<Option<(String, Vec<TreeFile>)>, BrokerError> {
        let Some(target) = &template.checkout else { return Ok(None) };
        let (_, record) = self.registry.active(target).map_err(registry_error)?;
        let files = self.tree(&record.git_sha).await?;
        Ok(Some((record.git_sha, files.as_ref().clone())))
    }

    /// Builds `template` at `git_sha` (empty = the default branch's head) into a version,
    /// sending log lines to `log`. A failed build is recorded too, with its error.
    pub async fn build(
        &self,
        template: &str,
        git_sha: &str,
        pr_number: u64,
        log: mpsc::Sender<String>,
    ) -> Result<VersionRecord, BrokerError> {
        let _one_at_a_time = self.build_lock.lock().await;
        let git_sha = match git_sha {
            "" => self.code_host.branch_head(&self.code_host.default_branch()).await.map_err(host_error)?,
            sha => sha.to_owned(),
        };
        let _ = log.send(format!("reading {template}/ at {git_sha} from {}", self.code_host.repository())).await;
        let tree = self.tree(&git_sha).await?;
        let prefix = format!("{template}/");
        let files: Vec<(String, Vec<u8>)> = tree
            .iter()
            .filter_map(|f| f.path.strip_prefix(&prefix).map(|rest| (rest.to_owned(), f.content.clone())))
            .collect();
        if files.is_empty() {
            return Err(BrokerError::NotFound(format!("template {template:?} does not exist at {git_sha}")));
        }
        let mut record = VersionRecord {
            version_id: String::new(),
            template: template.to_owned(),
            git_sha: git_sha.clone(),
            pr_number,
            built_at: unix_millis(SystemTime::now()),
            status: VersionStatus::Failed,
            promoted_at: None,
            builder: self.builder.name().to_owned(),
            artifact: String::new(),
            error: String::new(),
        };
        let parsed = crate::template::template_from_files(template, &files);
        let manifest = match parsed {
            Ok(manifest) => manifest,
            Err(error) => {
                record.version_id =
                    crate::template::content_version(files.iter().map(|(p, c)| (p.as_str(), c.as_slice())));
                record.error = error.to_string();
                let _ = log.send(format!("manifest invalid: {}", record.error)).await;
                return self.keep_failed(record, &files);
            }
        };
        record.version_id = manifest.version.clone();
        if let Some(existing) = self.registry.list(template).into_iter().find(|v| v.version_id == record.version_id)
            && existing.status == VersionStatus::Built
            // Another builder's artifact is no use to this one (a `local:` store is no E2B tag).
            && existing.builder == self.builder.name()
        {
            let _ = log
                .send(format!("version {} was already built from these files; reusing it", existing.version_id))
                .await;
            return Ok(existing);
        }
        let input = BuildInput { template, version_id: &record.version_id, git_sha: &git_sha, files: &files };
        match self.builder.build(input, &log).await {
            Ok(artifact) => {
                record.status = VersionStatus::Built;
                record.artifact = artifact;
                self.registry.store_files(&record.version_id, &files).map_err(registry_error)?;
                self.registry.record(record.clone()).map_err(registry_error)?;
                let _ = log.send(format!("built {template} version {}", record.version_id)).await;
                Ok(record)
            }
            Err(error) => {
                record.error = error.0;
                let _ = log.send(format!("build failed: {}", record.error)).await;
                self.keep_failed(record, &files)
            }
        }
    }

    fn keep_failed(&self, record: VersionRecord, files: &[(String, Vec<u8>)]) -> Result<VersionRecord, BrokerError> {
        // A failed version keeps its files too, so what failed can be inspected.
        let _ = self.registry.store_files(&record.version_id, files);
        self.registry.record(record.clone()).map_err(registry_error)?;
        Ok(record)
    }

    /// Makes a built version active; `rollback` only words the log and requires an earlier one.
    pub fn activate(&self, template: &str, version_id: &str, rollback: bool) -> Result<VersionRecord, BrokerError> {
        if template.is_empty() {
            return Err(BrokerError::invalid("template", "must not be empty"));
        }
        if version_id.is_empty() {
            return Err(BrokerError::invalid("version_id", "must not be empty"));
        }
        if rollback && self.registry.active_id(template).as_deref() == Some(version_id) {
            return Err(BrokerError::FailedPrecondition(format!(
                "{version_id} is already the active {template} version"
            )));
        }
        let record = self.registry.activate(template, version_id).map_err(registry_error)?;
        tracing::info!(%template, %version_id, rollback, "template version activated");
        // The builder's own marker follows in the background; a failure is logged, not undone:
        // the broker creates sandboxes from the exact version either way.
        let (builder, template, version_id) = (self.builder.clone(), template.to_owned(), version_id.to_owned());
        tokio::spawn(async move {
            if let Err(error) = builder.promote(&template, &version_id).await {
                tracing::warn!(%template, %version_id, %error, "the builder could not mark the active version");
            }
        });
        Ok(record)
    }

    /// Checks `approval` for a merge at `expected_head_sha` and consumes it (single use).
    pub fn consume_approval(&self, approval: Option<&Approval>, expected_head_sha: &str) -> Result<(), BrokerError> {
        let denied = |why: String| Err(BrokerError::PermissionDenied(why));
        let Some(approval) = approval else {
            return denied("merging needs a human approval bound to the head commit; none was given".into());
        };
        if approval.approval_id.is_empty() || approval.approver.trim().is_empty() {
            return denied("approval: approval_id and approver are required".into());
        }
        if approval.head_sha != expected_head_sha {
            return denied(format!(
                "approval {} is for head {}, not {expected_head_sha}",
                approval.approval_id, approval.head_sha
            ));
        }
        match approval.expires_at {
            Some(expires_at) if expires_at > SystemTime::now() => {}
            _ => return denied(format!("approval {} has expired (or has no expiry)", approval.approval_id)),
        }
        self.approvals.consume(&approval.approval_id)
    }
}

/// Approval ids already used for a merge, kept on disk (one line each) so a restart cannot
/// make an approval usable twice. Grows by one line per merge.
struct UsedApprovals {
    path: PathBuf,
    ids: Mutex<HashSet<String>>,
}

impl UsedApprovals {
    fn open(path: PathBuf) -> std::io::Result<UsedApprovals> {
        let ids = match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        Ok(UsedApprovals { path, ids: Mutex::new(ids) })
    }

    fn consume(&self, id: &str) -> Result<(), BrokerError> {
        if id.contains(['\n', '\r']) {
            return Err(BrokerError::invalid("approval.approval_id", "must be one line"));
        }
        let mut ids = self.ids.lock().expect("lock poisoned");
        if ids.contains(id) {
            return Err(BrokerError::PermissionDenied(format!("approval {id} was already used for a merge")));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{id}").map(|()| f))
            .map_err(|e| BrokerError::Unavailable(format!("cannot record approval use: {e}")))?;
        let _ = file.flush();
        ids.insert(id.to_owned());
        Ok(())
    }
}

pub fn host_error(error: CodeHostError) -> BrokerError {
    match error {
        CodeHostError::InvalidArgument { field, message } => BrokerError::invalid(field, message),
        CodeHostError::NotFound(message) => BrokerError::NotFound(message),
        CodeHostError::Conflict(message) => BrokerError::FailedPrecondition(message),
        CodeHostError::TooLarge(message) => BrokerError::ResourceExhausted(message),
        CodeHostError::PermissionDenied(message) => {
            BrokerError::FailedPrecondition(format!("the code host refused the broker's credential: {message}"))
        }
        CodeHostError::Unavailable(message) => BrokerError::Unavailable(format!("code host: {message}")),
    }
}

pub fn registry_error(error: RegistryError) -> BrokerError {
    match error {
        RegistryError::NotFound(message) => BrokerError::NotFound(message),
        RegistryError::NotBuilt(message) => BrokerError::FailedPrecondition(message),
        other => BrokerError::Unavailable(other.to_string()),
    }
}
