//! Pipelines a previous conductor run left mid-way. A change stays `approved` only while its
//! pipeline runs; found so at start, it was interrupted, and nobody could approve or reject it
//! again. What the code host says settles it: merged → the build, smoke test and promotion are
//! run (builds are content-addressed and promotion is idempotent, so steps already done are not
//! repeated in effect); still open → nothing merged, the approval is void and a person approves
//! again; closed → closed.

use super::{ChangeRecord, ChangeState, Changes, decode};
use crate::broker_client::describe;

impl Changes {
    /// Settles every change a previous run left `approved`. Call once the broker is reachable.
    /// Returns how many were settled.
    pub async fn resume_interrupted(&self) -> usize {
        let rows = match self.inner.store.list_changes("", 0).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "cannot list changes to resume");
                return 0;
            }
        };
        let interrupted: Vec<ChangeRecord> = rows
            .iter()
            .filter(|row| row.state == ChangeState::Approved.as_str())
            .filter_map(|row| decode(row).map_err(|error| tracing::error!(%error, "cannot read a change")).ok())
            .collect();
        let mut settled = 0;
        for record in interrupted {
            let number = record.pr.number;
            match self.resume(record).await {
                Ok(record) => {
                    settled += 1;
                    tracing::info!(pr = number, state = record.state.as_str(), "interrupted change settled");
                }
                Err(error) => tracing::error!(pr = number, %error, "cannot settle an interrupted change"),
            }
        }
        settled
    }

    async fn resume(&self, mut record: ChangeRecord) -> Result<ChangeRecord, String> {
        let _one_at_a_time = self.inner.pipeline.lock().await;
        let number = record.pr.number;
        let pr = self.inner.broker.get_pull_request(number).await.map_err(|status| describe(&status))?;
        record.pr = super::PrSnapshot::from(&pr);
        let outcome = match pr.state.as_str() {
            "merged" => {
                self.audit("stu", "change_pipeline_resumed", number, &format!("merged as {}", pr.merge_sha), "").await;
                let resumed = |detail: String| format!("resumed after the conductor stopped mid-pipeline: {detail}");
                match self.after_merge(&mut record, &pr.merge_sha).await {
                    Ok(detail) => Ok(resumed(detail)),
                    Err((state, detail)) => Err((state, resumed(detail))),
                }
            }
            "closed" => Err((ChangeState::Closed, "closed on the code host".to_owned())),
            _ => {
                let reason = "the conductor stopped before the merge";
                // Every approval of this pull request: a person approves again.
                let voided = self.inner.store.void_approvals(number, "", reason).await.map_err(|e| e.to_string())?;
                let state =
                    if record.report.rejects() { ChangeState::VettingRejected } else { ChangeState::AwaitingApproval };
                let detail =
                    format!("{reason}; nothing was merged ({voided} unused approval(s) voided) — approve again");
                Err((state, detail))
            }
        };
        Ok(self.settle(record, outcome).await)
    }
}
