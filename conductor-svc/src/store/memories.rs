//! Long-term memory: facts keyed by name, and the capabilities template versions brought.

use super::codec::{StoreRow, list_limit, to_millis};
use super::{CapabilityRow, MemoryRow, Store, StoreError, with_pool};

impl Store {
    /// Stores `memory` under its key. A key already present keeps its original `created_at`; its
    /// content, source and `updated_at` are replaced. Returns the row as stored.
    pub async fn remember(&self, memory: &MemoryRow) -> Result<MemoryRow, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO memories (key, content, source, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key) DO UPDATE SET content = excluded.content, source = excluded.source, \
                   updated_at = excluded.updated_at \
                 RETURNING key, content, source, created_at, updated_at",
            )
            .bind(&memory.key)
            .bind(&memory.content)
            .bind(&memory.source)
            .bind(to_millis(memory.created_at))
            .bind(to_millis(memory.updated_at))
            .fetch_one(pool)
            .await
            .map_err(|error| self.database_error(error))
            .and_then(|row| memory_from_row(&row))
        })
    }

    /// Deletes the memory under `key`; false when there was none.
    pub async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let deleted = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM memories WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await
                .map_err(|error| self.database_error(error))?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Memories whose key or content contains `query`, ignoring case (empty = all), most recently
    /// updated first; `limit` 0 = [`super::DEFAULT_LIST_LIMIT`], at most [`super::MAX_LIST_LIMIT`].
    /// `%` and `_` in `query` match themselves. Case folding is the database's `LOWER`: ASCII only on
    /// SQLite (other letters must match in case), locale-aware on PostgreSQL.
    pub async fn list_memories(&self, query: &str, limit: u32) -> Result<Vec<MemoryRow>, StoreError> {
        let pattern = format!("%{}%", escape_like(query));
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT key, content, source, created_at, updated_at FROM memories \
                 WHERE $1 = '' OR LOWER(key) LIKE LOWER($2) ESCAPE '\\' OR LOWER(content) LIKE LOWER($2) ESCAPE '\\' \
                 ORDER BY updated_at DESC, key ASC LIMIT $3",
            )
            .bind(query)
            .bind(&pattern)
            .bind(list_limit(limit))
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(memory_from_row)
            .collect()
        })
    }

    /// Records that `capability.template` can do `capability.name`. Returns true when this
    /// (template, name) is new; an existing one is left as it was, so it keeps the version it first
    /// arrived with.
    pub async fn record_capability(&self, capability: &CapabilityRow) -> Result<bool, StoreError> {
        let inserted = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO capabilities (template, name, description, since_version, since, pr_number, evidence) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (template, name) DO NOTHING",
            )
            .bind(&capability.template)
            .bind(&capability.name)
            .bind(&capability.description)
            .bind(&capability.since_version)
            .bind(to_millis(capability.since))
            .bind(super::codec::u64_to_i64("pr_number", capability.pr_number)?)
            .bind(&capability.evidence)
            .execute(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .rows_affected()
        });
        Ok(inserted > 0)
    }

    /// Every capability, by template then name (byte order on both backends).
    pub async fn list_capabilities(&self) -> Result<Vec<CapabilityRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT template, name, description, since_version, since, pr_number, evidence FROM capabilities \
                 ORDER BY template, name",
            )
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(capability_from_row)
            .collect()
        })
    }
}

/// `text` with LIKE's wildcards and the escape character itself escaped by `\`.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

fn memory_from_row(row: &impl StoreRow) -> Result<MemoryRow, StoreError> {
    Ok(MemoryRow {
        key: row.text("key")?,
        content: row.text("content")?,
        source: row.text("source")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn capability_from_row(row: &impl StoreRow) -> Result<CapabilityRow, StoreError> {
    Ok(CapabilityRow {
        name: row.text("name")?,
        description: row.text("description")?,
        template: row.text("template")?,
        since_version: row.text("since_version")?,
        since: row.time("since")?,
        pr_number: super::codec::i64_to_u64("capabilities.pr_number", row.int("pr_number")?)?,
        evidence: row.text("evidence")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::escape_like(r"50%_off\now"), r"50\%\_off\\now");
    }
}
