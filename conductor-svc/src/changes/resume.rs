//! Pipelines a previous conductor run left mid-way. A change stays `approved` only while its
//! pipeline runs; found so at start, it was interrupted, and nobody could approve or reject it
//! again. What the code host says settles it:
//! - merged at the head a person approved (and the approval was used): the pipeline resumes
//!   from what its record says is done — templates promoted before the stop are not built
//!   again, and an undo that had started is finished rather than building anew;
//! - merged any other way: recorded as merged outside the approval flow, nothing built;
//! - still open: nothing merged, every approval of it is void, a person approves again;
//! - closed: closed.
//!
//! The pipeline lock is taken before the conductor serves, so no new pipeline runs (and
//! promotes newer content) before the interrupted ones are settled.

use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;
use tokio::sync::OwnedMutexGuard;

use super::{ChangeRecord, ChangeState, Changes, decode};
use crate::broker_client::describe;

/// Attempts to read an interrupted change's pull request from the broker, with the wait before
/// each retry doubling from [`FIRST_RETRY`]: about half a minute in all.
const READ_ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(2);

/// Holds every pipeline back until dropped, with the changes found interrupted before serving
/// (see [`Changes::resume_interrupted`]).
pub struct PipelinesHeld {
    _lock: OwnedMutexGuard<()>,
    interrupted: Vec<ChangeRecord>,
}

impl Changes {
    /// Takes the pipeline lock and reads the changes a previous run left `approved`; call before
    /// serving (an approval given after that is a new pipeline, not an interrupted one) and hand
    /// the result to [`Changes::resume_interrupted`].
    pub async fn hold_pipelines(&self) -> PipelinesHeld {
        let lock = self.inner.pipeline.clone().lock_owned().await;
        let rows = match self.inner.store.changes_in_state(ChangeState::Approved.as_str(), 0).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "cannot list changes to resume");
                Vec::new()
            }
        };
        let interrupted = rows
            .iter()
            .filter_map(|row| decode(row).map_err(|error| tracing::error!(%error, "cannot read a change")).ok())
            .collect();
        PipelinesHeld { _lock: lock, interrupted }
    }

    /// Settles every change found interrupted, then lets pipelines run. Call once the broker is
    /// reachable. Returns how many were settled.
    pub async fn resume_interrupted(&self, held: PipelinesHeld) -> usize {
        // The lock is released when `_lock` goes out of scope, after the loop.
        let PipelinesHeld { _lock, interrupted } = held;
        let mut settled = 0;
        for record in interrupted {
            let number = record.pr.number;
            match self.resume(record).await {
                Ok(record) => {
                    settled += 1;
                    tracing::info!(pr = number, state = record.state.as_str(), "interrupted change settled");
                }
                Err(error) => {
                    tracing::error!(pr = number, %error, "cannot settle an interrupted change; it stays approved")
                }
            }
        }
        settled
    }

    async fn resume(&self, mut record: ChangeRecord) -> Result<ChangeRecord, String> {
        let number = record.pr.number;
        let pr = self.read_pull_request(number).await?;
        record.pr = super::PrSnapshot::from(&pr);
        let resumed = |detail: String| format!("resumed after the conductor stopped mid-pipeline: {detail}");
        let outcome = match pr.state.as_str() {
            "merged" if self.approved_and_used(&record, &pr).await? => {
                self.audit("stu", "change_pipeline_resumed", number, &format!("merged as {}", pr.merge_sha), "").await;
                if record.undoing.is_some() {
                    let (state, detail) = self.undo(&record).await;
                    Err((state, resumed(detail)))
                } else {
                    match self.after_merge(&mut record, &pr.merge_sha).await {
                        Ok(detail) => Ok(resumed(detail)),
                        Err((state, detail)) => Err((state, resumed(detail))),
                    }
                }
            }
            "merged" => Err((
                ChangeState::Closed,
                format!(
                    "merged at {} outside Stu's approval flow (no approval of that head was used); nothing built",
                    pr.head_sha
                ),
            )),
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

    /// The merged head is the one vetted and a person's approval of it was used by a pipeline.
    async fn approved_and_used(&self, record: &ChangeRecord, pr: &pb::PullRequest) -> Result<bool, String> {
        if pr.head_sha != record.report.head_sha {
            return Ok(false);
        }
        let approval = self.inner.store.latest_approval(pr.number).await.map_err(|e| e.to_string())?;
        Ok(approval.is_some_and(|a| a.head_sha == pr.head_sha && a.used_at.is_some()))
    }

    async fn read_pull_request(&self, number: u64) -> Result<pb::PullRequest, String> {
        let mut wait = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            match self.inner.broker.get_pull_request(number).await {
                Ok(pr) => return Ok(pr),
                Err(status) if attempt < READ_ATTEMPTS => {
                    tracing::warn!(pr = number, status = %describe(&status), "cannot read an interrupted change's pull request; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(status) => return Err(describe(&status)),
            }
        }
    }
}
