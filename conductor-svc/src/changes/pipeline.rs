//! After a human approval: merge at the approved head, build each touched template, smoke-test
//! the new version in a fresh sandbox, promote it — or leave the previous versions active, undo
//! the merge on the branch and record why. A change lands whole or not at all: a template it
//! already promoted is rolled back when a later one fails, and the revert commit keeps the broken
//! change out of every later pull request's base. Every step's outcome lands in the change
//! record and the audit log.

use std::time::SystemTime;

use agentstudio_proto::sandbox::v1 as pb;

use super::{ChangeRecord, ChangeState, Changes, Failure, Promotion, smoke};
use crate::broker_client::describe;
use crate::store::{ApprovalRow, CapabilityRow, MemoryRow};

/// Build log lines kept for the change's detail when a build fails.
const BUILD_LOG_TAIL_LINES: usize = 20;

impl Changes {
    pub(super) async fn run_pipeline(&self, mut record: ChangeRecord, approval: ApprovalRow) -> ChangeRecord {
        let _one_at_a_time = self.inner.pipeline.lock().await;
        let outcome = self.merge_build_promote(&mut record, &approval).await;
        self.settle(record, outcome).await
    }

    /// Records how a pipeline ended, in the change and the audit log.
    pub(super) async fn settle(
        &self,
        mut record: ChangeRecord,
        outcome: Result<String, (ChangeState, String)>,
    ) -> ChangeRecord {
        let number = record.pr.number;
        let (state, detail) = match outcome {
            Ok(detail) => (ChangeState::Promoted, detail),
            Err((state, detail)) => (state, detail),
        };
        record.state = state;
        record.state_detail = detail.clone();
        if let Err(error) = self.save(&record).await {
            tracing::error!(pr = number, %error, "cannot record the outcome of a change");
        }
        self.audit("stu", "change_pipeline", number, &format!("{}: {detail}", state.as_str()), "").await;
        tracing::info!(pr = number, state = state.as_str(), %detail, "change pipeline settled");
        record
    }

    async fn merge_build_promote(
        &self,
        record: &mut ChangeRecord,
        approval: &ApprovalRow,
    ) -> Result<String, (ChangeState, String)> {
        let broker = &self.inner.broker;
        let number = record.pr.number;
        // Single use, checked in the database: a second pipeline with the same approval stops here.
        match self.inner.store.use_approval(&approval.approval_id, SystemTime::now()).await {
            Ok(true) => {}
            Ok(false) => {
                return Err((ChangeState::MergeFailed, "the approval was already used, voided or expired".into()));
            }
            Err(error) => return Err((ChangeState::MergeFailed, format!("cannot use the approval: {error}"))),
        }
        let request = pb::MergePullRequestRequest {
            number,
            expected_head_sha: approval.head_sha.clone(),
            approval: Some(pb::Approval {
                approval_id: approval.approval_id.clone(),
                approver: approval.approver.clone(),
                head_sha: approval.head_sha.clone(),
                report_digest: approval.report_digest.clone(),
                approved_at: Some(prost_types::Timestamp::from(approval.approved_at)),
                expires_at: Some(prost_types::Timestamp::from(approval.expires_at)),
                override_reason: approval.override_reason.clone(),
            }),
        };
        let merged = broker
            .merge_pull_request(request)
            .await
            .map_err(|status| (ChangeState::MergeFailed, format!("merge refused: {}", describe(&status))))?;
        if let Some(pr) = &merged.pull_request {
            record.pr = super::PrSnapshot::from(pr);
        }
        self.after_merge(record, &merged.merge_sha).await
    }

    /// Builds, smoke-tests and promotes each template the change touched at `merge_sha`; on a
    /// failure, rolls back what it promoted and reverts the merge. Progress is saved in the
    /// record as it happens, so a pipeline resumed after a restart skips what is done and
    /// undoes what it must.
    pub(super) async fn after_merge(
        &self,
        record: &mut ChangeRecord,
        merge_sha: &str,
    ) -> Result<String, (ChangeState, String)> {
        let number = record.pr.number;
        let mut done = vec![format!("merged #{number} as {}", short(merge_sha))];
        if record.templates.is_empty() {
            done.push("no template directory changed: nothing to build".into());
            return Ok(done.join("; "));
        }
        match self.build_smoke_promote(record, merge_sha, &mut done).await {
            Ok(()) => Ok(done.join("; ")),
            Err((state, failure)) => {
                record.undoing = Some(Failure { state, detail: format!("{}; {failure}", done.join("; ")) });
                self.save_progress(record).await;
                Err(self.undo(record).await)
            }
        }
    }

    /// Each touched template in turn, skipping those the record says are promoted already.
    async fn build_smoke_promote(
        &self,
        record: &mut ChangeRecord,
        merge_sha: &str,
        done: &mut Vec<String>,
    ) -> Result<(), (ChangeState, String)> {
        let broker = &self.inner.broker;
        let number = record.pr.number;
        for template in record.templates.clone() {
            if let Some(promoted) = record.promoted.iter().find(|p| p.template == template) {
                done.push(format!("{template} {} promoted before the restart", promoted.version_id));
                continue;
            }
            let previous = broker
                .list_template_versions(&template)
                .await
                .ok()
                .and_then(|versions| versions.into_iter().find(|v| v.active));
            let version = self.build(&template, merge_sha, number).await?;
            record.version_ids.push(version.version_id.clone());
            if previous.as_ref().is_some_and(|p| p.version_id == version.version_id) {
                done.push(format!("{template} unchanged ({})", version.version_id));
                continue;
            }
            let smoke = smoke::run(broker, &template, &version).await;
            if !smoke.passed {
                return Err((
                    ChangeState::SmokeTestFailed,
                    format!(
                        "built {template} {} but its smoke test failed ({}): {}",
                        version.version_id,
                        smoke.outcome,
                        smoke.output_tail.trim()
                    ),
                ));
            }
            // Saved before promoting: a stop right after the promotion still knows what to roll
            // back to (rolling back a promotion that did not happen changes nothing).
            record.promoted.push(Promotion {
                template: template.clone(),
                version_id: version.version_id.clone(),
                replaced: previous.as_ref().map(|p| p.version_id.clone()),
            });
            self.save_progress(record).await;
            if let Err(status) = broker.promote_template(&template, &version.version_id).await {
                record.promoted.pop();
                self.save_progress(record).await;
                let detail = format!("promoting {} failed: {}", version.version_id, describe(&status));
                return Err((ChangeState::BuildFailed, detail));
            }
            self.remember_capabilities(&template, &version, previous.as_ref(), number, &smoke).await;
            done.push(format!("built, smoke-tested and promoted {template} {}", version.version_id));
        }
        Ok(())
    }

    /// Finishes `record.undoing`: what the change promoted rolled back, the merge reverted on
    /// the branch. Returns the failure with what the undo did, for the change's detail.
    pub(super) async fn undo(&self, record: &ChangeRecord) -> (ChangeState, String) {
        let broker = &self.inner.broker;
        let number = record.pr.number;
        let failure = record.undoing.clone().expect("undo is called with the failure recorded");
        let mut undone = Vec::new();
        for promotion in record.promoted.iter().rev() {
            let template = &promotion.template;
            let Some(replaced) = &promotion.replaced else {
                undone.push(format!(
                    "{template} stays at {}: it had no earlier version to go back to",
                    promotion.version_id
                ));
                continue;
            };
            match broker.rollback_template(template, replaced).await {
                Ok(_) => undone.push(format!("{template} rolled back to {replaced}")),
                Err(status) => undone.push(format!("{template} could not be rolled back: {}", describe(&status))),
            }
        }
        undone.push("the previous version stays active".into());
        let reason = format!("The change failed after its merge, so it is reverted: {}", failure.detail);
        match broker.revert_pull_request(number, &reason).await {
            Ok(revert_sha) => undone.push(format!("the merge is reverted on the branch as {}", short(&revert_sha))),
            Err(status) => {
                tracing::error!(pr = number, status = %describe(&status), "cannot revert a failed merge");
                undone
                    .push(format!("the merge could not be reverted ({}): revert #{number} by hand", describe(&status)));
            }
        }
        (failure.state, format!("{}; {}", failure.detail, undone.join("; ")))
    }

    /// Saves a pipeline's progress; a failure to save is logged (the pipeline goes on, and its
    /// outcome is saved again when it settles).
    async fn save_progress(&self, record: &ChangeRecord) {
        if let Err(error) = self.save(record).await {
            tracing::error!(pr = record.pr.number, %error, "cannot record a change pipeline's progress");
        }
    }

    async fn build(
        &self,
        template: &str,
        git_sha: &str,
        pr_number: u64,
    ) -> Result<pb::TemplateVersion, (ChangeState, String)> {
        let request =
            pb::BuildTemplateRequest { template: template.to_owned(), git_sha: git_sha.to_owned(), pr_number };
        let failed = |detail: String| (ChangeState::BuildFailed, detail);
        let mut stream = self
            .inner
            .broker
            .build_template(request)
            .await
            .map_err(|status| failed(format!("build of {template} refused: {}", describe(&status))))?;
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        loop {
            match stream.message().await {
                Ok(Some(pb::BuildTemplateEvent { event: Some(pb::build_template_event::Event::Log(line)) })) => {
                    tracing::debug!(%template, %line, "build");
                    if tail.len() == BUILD_LOG_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Ok(Some(pb::BuildTemplateEvent { event: Some(pb::build_template_event::Event::Version(version)) })) => {
                    if version.status == pb::TemplateVersionStatus::Built as i32 {
                        return Ok(*version);
                    }
                    return Err(failed(format!("build of {template} failed: {}", version.error)));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    let log = tail.into_iter().collect::<Vec<_>>().join(" | ");
                    return Err(failed(format!("build of {template} ended without a version; log: {log}")));
                }
                Err(status) => return Err(failed(format!("build of {template} failed: {}", describe(&status)))),
            }
        }
    }

    /// Records what the new version can do that the previous could not, with the evidence.
    async fn remember_capabilities(
        &self,
        template: &str,
        version: &pb::TemplateVersion,
        previous: Option<&pb::TemplateVersion>,
        pr_number: u64,
        smoke: &smoke::SmokeResult,
    ) {
        let evidence =
            format!("smoke test `{}` passed in {} ({})", version.smoke_test, version.version_id, smoke.outcome);
        let before: Vec<&String> = previous.map(|p| p.capabilities.iter().collect()).unwrap_or_default();
        for name in version.capabilities.iter().filter(|c| !before.contains(c)) {
            let row = CapabilityRow {
                name: name.clone(),
                description: format!("arrived with pull request #{pr_number}"),
                template: template.to_owned(),
                since_version: version.version_id.clone(),
                since: SystemTime::now(),
                pr_number,
                evidence: evidence.clone(),
            };
            let _ = self.inner.store.record_capability(&row).await;
            let memory = MemoryRow {
                key: format!("capability:{template}:{name}"),
                content: format!(
                    "{template} template version {} (PR #{pr_number}) can do {name}; evidence: {evidence}",
                    version.version_id
                ),
                source: "stu".into(),
                created_at: SystemTime::now(),
                updated_at: SystemTime::now(),
            };
            let _ = self.inner.store.remember(&memory).await;
        }
        let active = MemoryRow {
            key: format!("template:{template}:active"),
            content: format!("{template} is at version {} since PR #{pr_number} ({})", version.version_id, evidence),
            source: "stu".into(),
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
        };
        let _ = self.inner.store.remember(&active).await;
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
