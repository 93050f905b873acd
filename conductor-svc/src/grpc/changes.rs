//! Conversions for the template-change RPCs.

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::sandbox::v1 as sandbox;

use crate::changes::{ApproveInput, ChangeError, ChangeRecord, ChangeState, ChangeView, Changes};
use crate::store::{ApprovalRow, from_millis};

fn timestamp(time: std::time::SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(time))
}

/// Records the approval and starts the pipeline without waiting for it: callers follow the
/// change with GetChange (`studio approve` does).
pub async fn approve(
    changes: &Changes,
    request: pb::ApproveChangeRequest,
    trace_id: String,
) -> Result<ChangeView, ChangeError> {
    let input = ApproveInput {
        pr_number: request.pr_number,
        head_sha: request.head_sha,
        approver: request.approver,
        report_digest: request.report_digest,
        override_reject: request.override_reject,
        override_reason: request.override_reason,
        trace_id,
    };
    let (view, _pipeline) = changes.approve(input).await?;
    Ok(view)
}

pub fn view(view: ChangeView) -> pb::Change {
    let mut change = record(view.record);
    if let Some(pr) = change.pull_request.as_mut() {
        pr.diff = view.diff;
        pr.diff_truncated = view.diff_truncated;
    }
    change.approval = view.approval.map(approval);
    change
}

pub fn record(record: ChangeRecord) -> pb::Change {
    let report = &record.report;
    pb::Change {
        pull_request: Some(pb::PullRequest {
            number: record.pr.number,
            url: record.pr.url.clone(),
            title: record.pr.title.clone(),
            state: record.pr.state.clone(),
            head_sha: record.pr.head_sha.clone(),
            base_sha: record.pr.base_sha.clone(),
            diff: String::new(),
            files: record
                .pr
                .files
                .iter()
                .map(|f| pb::ChangedFile {
                    path: f.path.clone(),
                    status: f.status.clone(),
                    additions: f.additions,
                    deletions: f.deletions,
                })
                .collect(),
            body: record.pr.body.clone(),
            merge_sha: record.pr.merge_sha.clone(),
            diff_truncated: false,
        }),
        report: Some(pb::VettingReport {
            pr_number: report.pr_number,
            head_sha: report.head_sha.clone(),
            verdict: if report.rejects() { pb::Verdict::Reject } else { pb::Verdict::NeedsHuman } as i32,
            findings: report
                .findings
                .iter()
                .map(|f| pb::Finding {
                    rule: f.rule.clone(),
                    severity: f.severity.clone(),
                    file: f.file.clone(),
                    line: f.line,
                    message: f.message.clone(),
                    evidence: f.evidence.clone(),
                })
                .collect(),
            summary: report.summary.clone(),
            digest: report.digest.clone(),
            created_at: timestamp(from_millis(report.created_at)),
        }),
        state: state(record.state) as i32,
        state_detail: record.state_detail,
        approval: None,
        template: record.templates.join(", "),
        version_id: record.version_ids.join(", "),
        conversation_id: record.origin.conversation_id,
        worker_id: record.origin.worker_id,
        requested_by: record.origin.requested_by,
        request: record.origin.request,
    }
}

fn state(state: ChangeState) -> pb::ChangeState {
    match state {
        ChangeState::AwaitingApproval => pb::ChangeState::AwaitingApproval,
        ChangeState::VettingRejected => pb::ChangeState::VettingRejected,
        ChangeState::Approved => pb::ChangeState::Approved,
        ChangeState::Promoted => pb::ChangeState::Promoted,
        ChangeState::SmokeTestFailed => pb::ChangeState::SmokeTestFailed,
        ChangeState::BuildFailed => pb::ChangeState::BuildFailed,
        ChangeState::Closed => pb::ChangeState::Closed,
        ChangeState::MergeFailed => pb::ChangeState::MergeFailed,
    }
}

fn approval(row: ApprovalRow) -> pb::ChangeApproval {
    pb::ChangeApproval {
        approval_id: row.approval_id,
        approver: row.approver,
        head_sha: row.head_sha,
        report_digest: row.report_digest,
        approved_at: timestamp(row.approved_at),
        expires_at: timestamp(row.expires_at),
        used: row.used_at.is_some(),
        void_reason: row.void_reason,
        override_reason: row.override_reason,
    }
}

pub fn version(version: sandbox::TemplateVersion) -> pb::TemplateVersion {
    let status = match sandbox::TemplateVersionStatus::try_from(version.status) {
        Ok(sandbox::TemplateVersionStatus::Building) => "building",
        Ok(sandbox::TemplateVersionStatus::Built) => "built",
        Ok(sandbox::TemplateVersionStatus::Failed) => "failed",
        _ => "unknown",
    };
    pb::TemplateVersion {
        version_id: version.version_id,
        template: version.template,
        git_sha: version.git_sha,
        pr_number: version.pr_number,
        built_at: version.built_at,
        status: status.to_owned(),
        active: version.active,
        promoted_at: version.promoted_at,
        capabilities: version.capabilities,
        smoke_test: version.smoke_test,
        error: version.error,
    }
}
