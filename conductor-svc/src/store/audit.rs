//! The audit log: append-only, read newest first.

use super::codec::{StoreRow, list_limit, to_millis};
use super::{AuditEntry, Store, StoreError, with_pool};

impl Store {
    /// Appends one entry to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, subject, detail, trace_id) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(to_millis(entry.at))
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.subject)
            .bind(&entry.detail)
            .bind(&entry.trace_id)
            .execute(pool)
            .await
            .map_err(|error| self.database_error(error))?;
        });
        Ok(())
    }

    /// The latest entries, newest first (equal times: the later append first); `limit` 0 =
    /// [`super::DEFAULT_LIST_LIMIT`], at most [`super::MAX_LIST_LIMIT`].
    pub async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT at, actor, action, subject, detail, trace_id FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
            )
            .bind(list_limit(limit))
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(audit_from_row)
            .collect()
        })
    }
}

fn audit_from_row(row: &impl StoreRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        at: row.time("at")?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        subject: row.text("subject")?,
        detail: row.text("detail")?,
        trace_id: row.text("trace_id")?,
    })
}
