//! Template changes: pull requests infrastructure workers open through the broker, their vetting,
//! the human approval each merge needs, and what follows it (merge → build → smoke test →
//! promote, or keep the old version and say why).
//!
//! Approval is a human act only: it arrives through `ApproveChange` (or a person's own chat
//! message, recognised without the model). The brain has no tool that reaches [`Changes::approve`].

mod pipeline;
pub mod report;
mod resume;
mod smoke;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentstudio_proto::sandbox::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::brain::Brain;
use crate::broker_client::{self, BrokerClient};
use crate::store::{ApprovalRow, AuditEntry, ChangeRow, Store, StoreError};
pub use report::Report;
pub use resume::PipelinesHeld;

/// How long a recorded approval may wait before the merge uses it, unless configured
/// (CONDUCTOR_APPROVAL_TTL).
pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(3600);
/// Longest reason or override reason accepted.
const MAX_REASON_BYTES: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("broker: {}", broker_client::describe(.0))]
    Broker(Status),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<ChangeError> for Status {
    fn from(error: ChangeError) -> Status {
        let message = error.to_string();
        match error {
            ChangeError::InvalidArgument(_) => Status::invalid_argument(message),
            ChangeError::NotFound(_) => Status::not_found(message),
            ChangeError::FailedPrecondition(_) => Status::failed_precondition(message),
            ChangeError::PermissionDenied(_) => Status::permission_denied(message),
            ChangeError::Broker(status) => Status::new(status.code(), message),
            ChangeError::Store(_) => Status::internal(message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    AwaitingApproval,
    VettingRejected,
    Approved,
    Promoted,
    SmokeTestFailed,
    BuildFailed,
    Closed,
    MergeFailed,
}

impl ChangeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::AwaitingApproval => "awaiting_approval",
            ChangeState::VettingRejected => "vetting_rejected",
            ChangeState::Approved => "approved",
            ChangeState::Promoted => "promoted",
            ChangeState::SmokeTestFailed => "smoke_test_failed",
            ChangeState::BuildFailed => "build_failed",
            ChangeState::Closed => "closed",
            ChangeState::MergeFailed => "merge_failed",
        }
    }

    /// The pipeline is done with it (or never started): nothing more happens on its own.
    pub fn is_settled(self) -> bool {
        self != ChangeState::Approved
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    pub path: String,
    pub status: String,
    pub additions: u32,
    pub deletions: u32,
}

/// What Stu keeps of a pull request (the diff is fetched fresh from the broker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrSnapshot {
    pub number: u64,
    pub url: String,
    pub title: String,
    pub body: String,
    pub state: String,
    pub head_sha: String,
    pub base_sha: String,
    pub merge_sha: String,
    pub files: Vec<ChangedFile>,
}

impl From<&pb::PullRequest> for PrSnapshot {
    fn from(pr: &pb::PullRequest) -> PrSnapshot {
        PrSnapshot {
            number: pr.number,
            url: pr.url.clone(),
            title: pr.title.clone(),
            body: pr.body.clone(),
            state: pr.state.clone(),
            head_sha: pr.head_sha.clone(),
            base_sha: pr.base_sha.clone(),
            merge_sha: pr.merge_sha.clone(),
            files: pr
                .files
                .iter()
                .map(|f| ChangedFile {
                    path: f.path.clone(),
                    status: f.status.clone(),
                    additions: f.additions,
                    deletions: f.deletions,
                })
                .collect(),
        }
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub conversation_id: String,
    pub worker_id: String,
    pub requested_by: String,
    pub request: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub pr: PrSnapshot,
    pub report: Report,
    pub state: ChangeState,
    pub state_detail: String,
    /// Templates whose directories the change touches; built and smoke-tested in this order.
    pub templates: Vec<String>,
    /// Versions built from the merge, one per template.
    pub version_ids: Vec<String>,
    pub origin: Origin,
    /// Templates this change promoted so far, saved as each promotion happens: what an undo
    /// rolls back, also when the pipeline resumes after a conductor restart.
    #[serde(default)]
    pub promoted: Vec<Promotion>,
    /// Saved before an undo starts: the failure being undone. A resumed pipeline finishes the
    /// undo rather than building again.
    #[serde(default)]
    pub undoing: Option<Failure>,
}

/// One template a change promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub template: String,
    pub version_id: String,
    /// The version it replaced; `None` when the template had none (the change added it).
    pub replaced: Option<String>,
}

/// Why a pipeline failed after the merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub state: ChangeState,
    pub detail: String,
}

/// A change as shown to people: the record, the live diff, the latest approval.
#[derive(Debug, Clone)]
pub struct ChangeView {
    pub record: ChangeRecord,
    pub diff: String,
    pub diff_truncated: bool,
    pub approval: Option<ApprovalRow>,
}

/// A human's approval as the RPC (or a chat message) gives it.
#[derive(Debug, Clone, Default)]
pub struct ApproveInput {
    pub pr_number: u64,
    pub head_sha: String,
    pub approver: String,
    pub report_digest: String,
    pub override_reject: bool,
    pub override_reason: String,
    pub trace_id: String,
}

#[derive(Clone)]
pub struct Changes {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    broker: BrokerClient,
    brain: Arc<dyn Brain>,
    approval_ttl: Duration,
    /// One merge-build-promote at a time: template versions move in approval order.
    pipeline: Arc<tokio::sync::Mutex<()>>,
}

impl Changes {
    pub fn new(store: Store, broker: BrokerClient, brain: Arc<dyn Brain>, approval_ttl: Duration) -> Changes {
        let pipeline = Arc::new(tokio::sync::Mutex::new(()));
        Changes { inner: Arc::new(Inner { store, broker, brain, approval_ttl, pipeline }) }
    }

    /// Turns an infrastructure worker's edits into a vetted pull request.
    pub async fn propose(&self, sandbox_id: &str, title: &str, origin: Origin) -> Result<ChangeView, ChangeError> {
        let body = format!(
            "Requested by {} in conversation {}:\n\n> {}\n\nMade by infrastructure worker {}. Vetted by Stu; merges only \
             with a human approval of the head commit.",
            origin.requested_by,
            origin.conversation_id,
            origin.request.replace('\n', "\n> "),
            origin.worker_id
        );
        let request = pb::ProposeChangeRequest {
            sandbox_id: sandbox_id.to_owned(),
            title: title.to_owned(),
            body,
            pull_request_number: 0,
        };
        let pr = self.inner.broker.propose_change(request).await.map_err(ChangeError::Broker)?;
        self.vet_and_save(&pr, origin, None).await
    }

    /// The change for `pr_number`, fetched fresh: a head Stu has not vetted is vetted now (and
    /// approvals of the old head are voided); a PR Stu never saw is adopted.
    pub async fn get(&self, pr_number: u64) -> Result<ChangeView, ChangeError> {
        if pr_number == 0 {
            return Err(ChangeError::InvalidArgument("pr_number: must be a pull request number".into()));
        }
        let pr = self.inner.broker.get_pull_request(pr_number).await.map_err(ChangeError::Broker)?;
        let existing = self.load(pr_number).await?;
        match existing {
            Some(record) if record.report.head_sha == pr.head_sha => {
                let mut record = record;
                if pr.state == "closed" && record.state != ChangeState::Closed && record.state.is_settled() {
                    record.state = ChangeState::Closed;
                    record.state_detail = "closed on the code host".into();
                    self.save(&record).await?;
                }
                record.pr = PrSnapshot::from(&pr);
                self.view(record, &pr).await
            }
            Some(record) => self.vet_and_save(&pr, record.origin.clone(), Some(record)).await,
            None => self.vet_and_save(&pr, Origin::default(), None).await,
        }
    }

    pub async fn list(&self, conversation_id: &str) -> Result<Vec<ChangeRecord>, ChangeError> {
        let rows = self.inner.store.list_changes(conversation_id, 0).await?;
        rows.iter().map(decode).collect()
    }

    /// The newest change of a conversation still waiting for a person.
    pub async fn awaiting_in(&self, conversation_id: &str) -> Result<Option<ChangeRecord>, ChangeError> {
        Ok(self.list(conversation_id).await?.into_iter().find(|c| {
            matches!(c.state, ChangeState::AwaitingApproval | ChangeState::VettingRejected | ChangeState::MergeFailed)
        }))
    }

    async fn vet_and_save(
        &self,
        pr: &pb::PullRequest,
        origin: Origin,
        previous: Option<ChangeRecord>,
    ) -> Result<ChangeView, ChangeError> {
        let report = report::vet(self.inner.brain.as_ref(), pr, &origin.request).await;
        let (state, state_detail) = match (pr.state.as_str(), report.rejects()) {
            ("closed", _) => (ChangeState::Closed, "closed on the code host".to_owned()),
            ("merged", _) => (ChangeState::Closed, "merged outside Stu's approval flow".to_owned()),
            (_, true) => (
                ChangeState::VettingRejected,
                format!(
                    "vetting rejected it: {}",
                    report.blocking().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ")
                ),
            ),
            (_, false) => (ChangeState::AwaitingApproval, "vetted; waiting for a human approval".to_owned()),
        };
        if let Some(previous) = &previous {
            let reason = format!("head moved from {} to {}", previous.report.head_sha, pr.head_sha);
            let voided = self.inner.store.void_approvals(pr.number, &pr.head_sha, &reason).await?;
            if voided > 0 {
                tracing::info!(pr = pr.number, voided, "approvals voided: head moved");
            }
        }
        let record = ChangeRecord {
            pr: PrSnapshot::from(pr),
            state,
            state_detail,
            templates: touched_templates(pr, &self.template_names().await),
            version_ids: Vec::new(),
            origin,
            report,
            promoted: Vec::new(),
            undoing: None,
        };
        self.save(&record).await?;
        self.audit(
            "stu",
            "vet_change",
            pr.number,
            &format!("{} at {}: {}", record.report.verdict, pr.head_sha, record.report.digest),
            "",
        )
        .await;
        self.view(record, pr).await
    }

    /// Records a human approval of `input.head_sha` and starts merge → build → smoke → promote.
    /// The returned handle resolves when that pipeline settles.
    pub async fn approve(
        &self,
        input: ApproveInput,
    ) -> Result<(ChangeView, tokio::task::JoinHandle<ChangeRecord>), ChangeError> {
        let approver = input.approver.trim();
        if approver.is_empty() {
            return Err(ChangeError::InvalidArgument("approver: must name the person approving".into()));
        }
        if input.head_sha.trim().is_empty() {
            return Err(ChangeError::InvalidArgument(
                "head_sha: must be the head commit you reviewed (see GetChange / `studio approve` output)".into(),
            ));
        }
        if input.override_reason.len() > MAX_REASON_BYTES {
            return Err(ChangeError::InvalidArgument(format!("override_reason: at most {MAX_REASON_BYTES} bytes")));
        }
        let view = self.get(input.pr_number).await?;
        let record = &view.record;
        if record.pr.state != "open" {
            return Err(ChangeError::FailedPrecondition(format!(
                "pull request #{} is {}",
                record.pr.number, record.pr.state
            )));
        }
        if record.state == ChangeState::Approved {
            return Err(ChangeError::FailedPrecondition(format!(
                "pull request #{} is already being merged",
                record.pr.number
            )));
        }
        if input.head_sha != record.pr.head_sha {
            return Err(ChangeError::FailedPrecondition(format!(
                "pull request #{} head is now {}, not {}: the change moved after you reviewed it; review it again",
                record.pr.number, record.pr.head_sha, input.head_sha
            )));
        }
        if !input.report_digest.is_empty() && input.report_digest != record.report.digest {
            return Err(ChangeError::FailedPrecondition(format!(
                "the vetting report is now {}, not the {} you saw; review it again",
                record.report.digest, input.report_digest
            )));
        }
        if record.report.rejects() {
            if !input.override_reject || input.override_reason.trim().is_empty() {
                return Err(ChangeError::PermissionDenied(format!(
                    "vetting rejected pull request #{}: {}. Approving it needs override_reject and an override_reason, \
                     both audited",
                    record.pr.number,
                    record.report.blocking().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ")
                )));
            }
        } else if input.override_reject {
            return Err(ChangeError::InvalidArgument("override_reject: vetting did not reject this change".into()));
        }
        let now = SystemTime::now();
        let approval = ApprovalRow {
            approval_id: format!("apr-{}", uuid::Uuid::new_v4().simple()),
            pr_number: record.pr.number,
            head_sha: record.pr.head_sha.clone(),
            report_digest: record.report.digest.clone(),
            approver: approver.to_owned(),
            override_reason: input.override_reason.trim().to_owned(),
            approved_at: now,
            expires_at: now + self.inner.approval_ttl,
            used_at: None,
            void_reason: String::new(),
        };
        self.inner.store.insert_approval(&approval).await?;
        let detail = if approval.override_reason.is_empty() {
            format!("approved head {} (report {})", approval.head_sha, approval.report_digest)
        } else {
            format!(
                "OVERRODE a REJECT verdict at head {} (report {}): {}",
                approval.head_sha, approval.report_digest, approval.override_reason
            )
        };
        self.audit(&format!("human:{approver}"), "approve_change", record.pr.number, &detail, &input.trace_id).await;
        let ChangeView { mut record, diff, diff_truncated, .. } = view;
        record.state = ChangeState::Approved;
        record.state_detail = format!("approved by {approver}; merging");
        self.save(&record).await?;
        let approved = ChangeView { record: record.clone(), diff, diff_truncated, approval: Some(approval.clone()) };
        let changes = self.clone();
        let handle = tokio::spawn(async move { changes.run_pipeline(record, approval).await });
        Ok((approved, handle))
    }

    /// A human rejects the change: the pull request is closed with the reason.
    pub async fn reject(&self, pr_number: u64, reason: &str, rejected_by: &str) -> Result<ChangeView, ChangeError> {
        let (reason, rejected_by) = (reason.trim(), rejected_by.trim());
        if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
            return Err(ChangeError::InvalidArgument(format!(
                "reason: must be given, at most {MAX_REASON_BYTES} bytes"
            )));
        }
        if rejected_by.is_empty() {
            return Err(ChangeError::InvalidArgument("rejected_by: must name the person rejecting".into()));
        }
        let view = self.get(pr_number).await?;
        if view.record.state == ChangeState::Approved {
            return Err(ChangeError::FailedPrecondition(format!("pull request #{pr_number} is already being merged")));
        }
        let comment = format!("Rejected by {rejected_by}: {reason}");
        let pr = self.inner.broker.close_pull_request(pr_number, &comment).await.map_err(ChangeError::Broker)?;
        let mut record = view.record;
        record.pr = PrSnapshot::from(&pr);
        record.state = ChangeState::Closed;
        record.state_detail = comment.clone();
        self.save(&record).await?;
        self.audit(&format!("human:{rejected_by}"), "reject_change", pr_number, reason, "").await;
        self.view(record, &pr).await
    }

    pub async fn versions(&self, template: &str) -> Result<Vec<pb::TemplateVersion>, ChangeError> {
        if template.trim().is_empty() {
            return Err(ChangeError::InvalidArgument("template: must not be empty".into()));
        }
        self.inner.broker.list_template_versions(template).await.map_err(ChangeError::Broker)
    }

    pub async fn rollback(
        &self,
        template: &str,
        version_id: &str,
        requested_by: &str,
        reason: &str,
    ) -> Result<pb::TemplateVersion, ChangeError> {
        if template.trim().is_empty() {
            return Err(ChangeError::InvalidArgument("template: must not be empty".into()));
        }
        if version_id.trim().is_empty() {
            return Err(ChangeError::InvalidArgument("version_id: must not be empty".into()));
        }
        let actor = if requested_by.trim().is_empty() { "unknown".to_owned() } else { requested_by.trim().to_owned() };
        let version = self.inner.broker.rollback_template(template, version_id).await.map_err(ChangeError::Broker)?;
        self.audit(
            &format!("human:{actor}"),
            "rollback_template",
            0,
            &format!("{template} → {version_id}: {reason}"),
            "",
        )
        .await;
        let memory = crate::store::MemoryRow {
            key: format!("template:{template}:active"),
            content: format!("{template} rolled back to {version_id} by {actor}: {reason}"),
            source: "stu".into(),
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
        };
        let _ = self.inner.store.remember(&memory).await;
        Ok(version)
    }

    /// The broker's template names; while it cannot say, the two the project ships.
    async fn template_names(&self) -> Vec<String> {
        match self.inner.broker.list_templates().await {
            Ok(templates) => templates.into_iter().map(|t| t.name).collect(),
            Err(_) => vec!["worker".to_owned(), "infrastructure".to_owned()],
        }
    }

    async fn load(&self, pr_number: u64) -> Result<Option<ChangeRecord>, ChangeError> {
        self.inner.store.get_change(pr_number).await?.as_ref().map(decode).transpose()
    }

    async fn save(&self, record: &ChangeRecord) -> Result<(), ChangeError> {
        let now = SystemTime::now();
        let row = ChangeRow {
            pr_number: record.pr.number,
            conversation_id: record.origin.conversation_id.clone(),
            state: record.state.as_str().to_owned(),
            document: serde_json::to_string(record).expect("change serializes"),
            created_at: now,
            updated_at: now,
        };
        Ok(self.inner.store.save_change(&row).await?)
    }

    async fn view(&self, record: ChangeRecord, pr: &pb::PullRequest) -> Result<ChangeView, ChangeError> {
        let approval = self.inner.store.latest_approval(record.pr.number).await?;
        Ok(ChangeView { record, diff: pr.diff.clone(), diff_truncated: pr.diff_truncated, approval })
    }

    async fn audit(&self, actor: &str, action: &str, pr_number: u64, detail: &str, trace_id: &str) {
        let entry = AuditEntry {
            at: SystemTime::now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: if pr_number == 0 { "template".to_owned() } else { format!("pr:{pr_number}") },
            detail: detail.to_owned(),
            trace_id: trace_id.to_owned(),
        };
        if let Err(error) = self.inner.store.audit(&entry).await {
            tracing::warn!(%error, action, "cannot write audit entry");
        }
    }
}

fn decode(row: &ChangeRow) -> Result<ChangeRecord, ChangeError> {
    serde_json::from_str(&row.document).map_err(|e| {
        ChangeError::Store(StoreError::Corrupt { what: "change", message: format!("pr {}: {e}", row.pr_number) })
    })
}

/// Top-level directories a pull request touches that are templates the broker knows.
fn touched_templates(pr: &pb::PullRequest, known: &[String]) -> Vec<String> {
    let mut templates: Vec<String> = Vec::new();
    for file in &pr.files {
        if let Some((dir, _)) = file.path.split_once('/')
            && known.iter().any(|k| k == dir)
            && !templates.iter().any(|t| t == dir)
        {
            templates.push(dir.to_owned());
        }
    }
    // The worker template first: it is what the change is usually for.
    templates.sort_by_key(|t| t != "worker");
    templates
}
