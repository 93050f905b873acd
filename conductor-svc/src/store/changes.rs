//! Template changes and the human approvals bound to them.

use super::codec::{StoreRow, i64_to_u64, list_limit, to_millis, u64_to_i64};
use super::{ApprovalRow, ChangeRow, Store, StoreError, with_pool};

impl Store {
    /// Inserts or replaces the change for `change.pr_number` (keeping its `created_at`).
    pub async fn save_change(&self, change: &ChangeRow) -> Result<(), StoreError> {
        let pr = u64_to_i64("pr_number", change.pr_number)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO changes (pr_number, conversation_id, state, document, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (pr_number) DO UPDATE SET conversation_id = excluded.conversation_id, \
                   state = excluded.state, document = excluded.document, updated_at = excluded.updated_at",
            )
            .bind(pr)
            .bind(&change.conversation_id)
            .bind(&change.state)
            .bind(&change.document)
            .bind(to_millis(change.created_at))
            .bind(to_millis(change.updated_at))
            .execute(pool)
            .await
            .map_err(|error| self.database_error(error))?;
        });
        Ok(())
    }

    pub async fn get_change(&self, pr_number: u64) -> Result<Option<ChangeRow>, StoreError> {
        let pr = u64_to_i64("pr_number", pr_number)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT pr_number, conversation_id, state, document, created_at, updated_at FROM changes \
                 WHERE pr_number = $1",
            )
            .bind(pr)
            .fetch_optional(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .as_ref()
            .map(change_from_row)
            .transpose()
        })
    }

    /// Changes in `state`, least recently updated first (for `approved`: the order pipelines
    /// were started in), at most `limit` (0 = the default, capped like every list).
    pub async fn changes_in_state(&self, state: &str, limit: u32) -> Result<Vec<ChangeRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT pr_number, conversation_id, state, document, created_at, updated_at FROM changes \
                 WHERE state = $1 ORDER BY updated_at ASC, pr_number ASC LIMIT $2",
            )
            .bind(state)
            .bind(list_limit(limit))
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(change_from_row)
            .collect()
        })
    }

    /// Most recently updated first; `conversation_id` empty = every conversation.
    pub async fn list_changes(&self, conversation_id: &str, limit: u32) -> Result<Vec<ChangeRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT pr_number, conversation_id, state, document, created_at, updated_at FROM changes \
                 WHERE $1 = '' OR conversation_id = $1 ORDER BY updated_at DESC, pr_number DESC LIMIT $2",
            )
            .bind(conversation_id)
            .bind(list_limit(limit))
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(change_from_row)
            .collect()
        })
    }

    pub async fn insert_approval(&self, approval: &ApprovalRow) -> Result<(), StoreError> {
        let pr = u64_to_i64("pr_number", approval.pr_number)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO approvals (approval_id, pr_number, head_sha, report_digest, approver, override_reason, \
                   approved_at, expires_at, used_at, void_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, '')",
            )
            .bind(&approval.approval_id)
            .bind(pr)
            .bind(&approval.head_sha)
            .bind(&approval.report_digest)
            .bind(&approval.approver)
            .bind(&approval.override_reason)
            .bind(to_millis(approval.approved_at))
            .bind(to_millis(approval.expires_at))
            .execute(pool)
            .await
            .map_err(|error| self.insert_error("approval", &approval.approval_id, error))?;
        });
        Ok(())
    }

    /// Marks the approval used, once: false when it was already used, voided or expired by `now`.
    pub async fn use_approval(&self, approval_id: &str, now: std::time::SystemTime) -> Result<bool, StoreError> {
        let updated = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE approvals SET used_at = $2 WHERE approval_id = $1 AND used_at IS NULL \
                 AND void_reason = '' AND expires_at > $2",
            )
            .bind(approval_id)
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Voids every unused approval of `pr_number` not bound to `head_sha` (the head moved).
    pub async fn void_approvals(&self, pr_number: u64, head_sha: &str, reason: &str) -> Result<u64, StoreError> {
        let pr = u64_to_i64("pr_number", pr_number)?;
        Ok(with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE approvals SET void_reason = $3 WHERE pr_number = $1 AND head_sha <> $2 \
                 AND used_at IS NULL AND void_reason = ''",
            )
            .bind(pr)
            .bind(head_sha)
            .bind(reason)
            .execute(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .rows_affected()
        }))
    }

    pub async fn latest_approval(&self, pr_number: u64) -> Result<Option<ApprovalRow>, StoreError> {
        let pr = u64_to_i64("pr_number", pr_number)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT approval_id, pr_number, head_sha, report_digest, approver, override_reason, approved_at, \
                   expires_at, used_at, void_reason FROM approvals WHERE pr_number = $1 \
                 ORDER BY approved_at DESC, approval_id DESC LIMIT 1",
            )
            .bind(pr)
            .fetch_optional(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .as_ref()
            .map(approval_from_row)
            .transpose()
        })
    }
}

fn change_from_row(row: &impl StoreRow) -> Result<ChangeRow, StoreError> {
    Ok(ChangeRow {
        pr_number: i64_to_u64("changes.pr_number", row.int("pr_number")?)?,
        conversation_id: row.text("conversation_id")?,
        state: row.text("state")?,
        document: row.text("document")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn approval_from_row(row: &impl StoreRow) -> Result<ApprovalRow, StoreError> {
    Ok(ApprovalRow {
        approval_id: row.text("approval_id")?,
        pr_number: i64_to_u64("approvals.pr_number", row.int("pr_number")?)?,
        head_sha: row.text("head_sha")?,
        report_digest: row.text("report_digest")?,
        approver: row.text("approver")?,
        override_reason: row.text("override_reason")?,
        approved_at: row.time("approved_at")?,
        expires_at: row.time("expires_at")?,
        used_at: row.optional_time("used_at")?,
        void_reason: row.text("void_reason")?,
    })
}
