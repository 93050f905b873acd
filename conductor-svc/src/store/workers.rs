//! Workers: what was started, where it runs, how it ended, and how far its output was recorded.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::codec::{StoreRow, list_limit, to_millis, u64_to_i64};
use super::{Store, StoreError, WorkerFilter, WorkerKind, WorkerRow, WorkerState, with_pool};

/// The columns [`worker_from_row`] reads, as a literal so queries can be `concat!`-ed at compile time.
macro_rules! worker_columns {
    () => {
        "id, conversation_id, kind, task, state, template, template_version, runtime, sandbox_id, process_id, \
         exit_code, summary, end_reason, requested_by, cost_usd, num_turns, last_seq, trace_id, created_at, \
         started_at, finished_at"
    };
}

impl Store {
    /// Inserts the worker, or replaces every field of the one with this id — except `last_seq`,
    /// which keeps the higher of the stored and the given value (see [`Store::record_worker_seq`]),
    /// so writing back a row read before a seq was recorded cannot move the resume point back.
    pub async fn upsert_worker(&self, worker: &WorkerRow) -> Result<(), StoreError> {
        let last_seq = u64_to_i64("last_seq", worker.last_seq)?;
        with_pool!(self, |pool| {
            sqlx::query(concat!(
                "INSERT INTO workers (",
                worker_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
                 ON CONFLICT (id) DO UPDATE SET conversation_id = excluded.conversation_id, kind = excluded.kind, \
                   task = excluded.task, state = excluded.state, template = excluded.template, \
                   template_version = excluded.template_version, runtime = excluded.runtime, \
                   sandbox_id = excluded.sandbox_id, process_id = excluded.process_id, exit_code = excluded.exit_code, \
                   summary = excluded.summary, end_reason = excluded.end_reason, requested_by = excluded.requested_by, \
                   cost_usd = excluded.cost_usd, num_turns = excluded.num_turns, \
                   last_seq = CASE WHEN workers.last_seq > excluded.last_seq \
                     THEN workers.last_seq ELSE excluded.last_seq END, \
                   trace_id = excluded.trace_id, created_at = excluded.created_at, \
                   started_at = excluded.started_at, finished_at = excluded.finished_at",
            ))
            .bind(&worker.id)
            .bind(&worker.conversation_id)
            .bind(worker.kind.as_str())
            .bind(&worker.task)
            .bind(worker.state.as_str())
            .bind(&worker.template)
            .bind(&worker.template_version)
            .bind(&worker.runtime)
            .bind(&worker.sandbox_id)
            .bind(&worker.process_id)
            .bind(worker.exit_code.map(i64::from))
            .bind(&worker.summary)
            .bind(&worker.end_reason)
            .bind(&worker.requested_by)
            .bind(worker.cost_usd)
            .bind(i64::from(worker.num_turns))
            .bind(last_seq)
            .bind(&worker.trace_id)
            .bind(to_millis(worker.created_at))
            .bind(worker.started_at.map(to_millis))
            .bind(worker.finished_at.map(to_millis))
            .execute(pool)
            .await
            .map_err(|error| self.database_error(error))?;
        });
        Ok(())
    }

    pub async fn get_worker(&self, id: &str) -> Result<Option<WorkerRow>, StoreError> {
        let row = with_pool!(self, |pool| {
            sqlx::query(concat!("SELECT ", worker_columns!(), " FROM workers WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.database_error(error))?
                .map(|row| worker_from_row(&row))
        });
        row.transpose()
    }

    /// Workers matching `filter`, newest (by `created_at`) first; `limit` 0 =
    /// [`super::DEFAULT_LIST_LIMIT`], at most [`super::MAX_LIST_LIMIT`].
    pub async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRow>, StoreError> {
        with_pool!(self, |pool| {
            let mut query = builder_for(pool, concat!("SELECT ", worker_columns!(), " FROM workers"));
            push_filter(&mut query, filter.conversation_id.as_deref(), &filter.states, filter.kind);
            query.push(" ORDER BY created_at DESC, id DESC LIMIT ");
            query.push_bind(list_limit(filter.limit));
            query
                .build()
                .fetch_all(pool)
                .await
                .map_err(|error| self.database_error(error))?
                .iter()
                .map(worker_from_row)
                .collect()
        })
    }

    /// Raises the worker's `last_seq` to `seq` if that is higher; a lower or equal `seq` changes
    /// nothing. The maximum is taken in SQL, so concurrent writers (replicas, reattached streams)
    /// cannot move it back. Unknown worker → [`StoreError::NotFound`].
    pub async fn record_worker_seq(&self, id: &str, seq: u64) -> Result<(), StoreError> {
        let seq = u64_to_i64("seq", seq)?;
        let result = with_pool!(self, |pool| {
            sqlx::query("UPDATE workers SET last_seq = CASE WHEN last_seq > $2 THEN last_seq ELSE $2 END WHERE id = $1")
                .bind(id)
                .bind(seq)
                .execute(pool)
                .await
                .map_err(|error| self.database_error(error))?
                .rows_affected()
        });
        if result == 0 {
            return Err(StoreError::NotFound { what: "worker", id: id.to_string() });
        }
        Ok(())
    }

    /// How many workers are in one of `states` (empty = any), in one conversation or in all.
    pub async fn count_workers(
        &self,
        conversation_id: Option<&str>,
        states: &[WorkerState],
    ) -> Result<u64, StoreError> {
        let count: i64 = with_pool!(self, |pool| {
            let mut query = builder_for(pool, "SELECT COUNT(*) FROM workers");
            push_filter(&mut query, conversation_id, states, None);
            query.build_query_scalar().fetch_one(pool).await.map_err(|error| self.database_error(error))?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// A query builder for the pool's database (ties the builder's type to the pool's).
fn builder_for<DB: Database>(_pool: &sqlx::Pool<DB>, sql: &str) -> QueryBuilder<DB> {
    QueryBuilder::new(sql)
}

/// Appends ` WHERE …` for the given conditions (nothing when there are none). Values are bound,
/// never spliced into the SQL.
fn push_filter<DB: Database>(
    query: &mut QueryBuilder<DB>,
    conversation_id: Option<&str>,
    states: &[WorkerState],
    kind: Option<WorkerKind>,
) where
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut keyword = " WHERE ";
    if let Some(conversation_id) = conversation_id {
        query.push(keyword).push("conversation_id = ").push_bind(conversation_id.to_string());
        keyword = " AND ";
    }
    if let Some(kind) = kind {
        query.push(keyword).push("kind = ").push_bind(kind.as_str().to_string());
        keyword = " AND ";
    }
    if !states.is_empty() {
        query.push(keyword).push("state IN (");
        let mut separated = query.separated(", ");
        for state in states {
            separated.push_bind(state.as_str().to_string());
        }
        query.push(")");
    }
}

fn worker_from_row(row: &impl StoreRow) -> Result<WorkerRow, StoreError> {
    let kind = row.text("kind")?;
    let state = row.text("state")?;
    let exit_code = row.optional_int("exit_code")?;
    let num_turns = row.int("num_turns")?;
    Ok(WorkerRow {
        id: row.text("id")?,
        conversation_id: row.text("conversation_id")?,
        kind: WorkerKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt { what: "worker kind", message: format!("unknown kind {kind:?}") })?,
        task: row.text("task")?,
        state: WorkerState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt { what: "worker state", message: format!("unknown state {state:?}") })?,
        template: row.text("template")?,
        template_version: row.text("template_version")?,
        runtime: row.text("runtime")?,
        sandbox_id: row.text("sandbox_id")?,
        process_id: row.text("process_id")?,
        exit_code: exit_code
            .map(i32::try_from)
            .transpose()
            .map_err(|_| StoreError::Corrupt { what: "exit_code", message: format!("{exit_code:?} is not an i32") })?,
        summary: row.text("summary")?,
        end_reason: row.text("end_reason")?,
        requested_by: row.text("requested_by")?,
        cost_usd: row.real("cost_usd")?,
        num_turns: u32::try_from(num_turns)
            .map_err(|_| StoreError::Corrupt { what: "num_turns", message: format!("{num_turns} is not a u32") })?,
        last_seq: row.counter("last_seq")?,
        trace_id: row.text("trace_id")?,
        created_at: row.time("created_at")?,
        started_at: row.optional_time("started_at")?,
        finished_at: row.optional_time("finished_at")?,
    })
}
