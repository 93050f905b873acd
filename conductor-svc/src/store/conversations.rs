//! Conversations and their messages.

use crate::brain::Role;

use super::codec::{StoreRow, from_json, list_limit, to_json, to_millis};
use super::{ConversationRow, MessageRow, Store, StoreError, with_pool};

impl Store {
    /// Stores a new conversation. Its `message_count` starts at 0 whatever the row says: the store
    /// maintains it. An existing id gives [`StoreError::AlreadyExists`].
    pub async fn create_conversation(&self, conversation: &ConversationRow) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO conversations (id, title, created_at, updated_at, message_count) \
                 VALUES ($1, $2, $3, $4, 0)",
            )
            .bind(&conversation.id)
            .bind(&conversation.title)
            .bind(to_millis(conversation.created_at))
            .bind(to_millis(conversation.updated_at))
            .execute(pool)
            .await
            .map_err(|error| self.insert_error("conversation", &conversation.id, error))?;
        });
        Ok(())
    }

    pub async fn get_conversation(&self, id: &str) -> Result<Option<ConversationRow>, StoreError> {
        let row = with_pool!(self, |pool| {
            sqlx::query("SELECT id, title, created_at, updated_at, message_count FROM conversations WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.database_error(error))?
                .map(|row| conversation_from_row(&row))
        });
        row.transpose()
    }

    /// Most recently updated first; `limit` 0 = [`super::DEFAULT_LIST_LIMIT`], at most [`super::MAX_LIST_LIMIT`].
    pub async fn list_conversations(&self, limit: u32) -> Result<Vec<ConversationRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT id, title, created_at, updated_at, message_count FROM conversations \
                 ORDER BY updated_at DESC, created_at DESC, id DESC LIMIT $1",
            )
            .bind(list_limit(limit))
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(conversation_from_row)
            .collect()
        })
    }

    /// Appends a message and, in the same transaction, counts it on its conversation and moves the
    /// conversation's `updated_at` up to the message's `created_at` (never back). Messages keep the
    /// order in which appends commit. Unknown conversation → [`StoreError::NotFound`]; an existing
    /// message id → [`StoreError::AlreadyExists`] (and nothing changes).
    pub async fn append_message(&self, message: &MessageRow) -> Result<(), StoreError> {
        let blocks = to_json("message blocks", &message.blocks)?;
        let worker_ids = to_json("message worker ids", &message.worker_ids)?;
        let created_at = to_millis(message.created_at);
        with_pool!(self, |pool| {
            let mut transaction =
                pool.begin_with(self.backend.begin_write()).await.map_err(|error| self.database_error(error))?;
            // The row lock taken here orders concurrent appends to one conversation; the new count is
            // the message's ordinal in it.
            let ordinal: Option<i64> = sqlx::query_scalar(
                "UPDATE conversations SET message_count = message_count + 1, \
                 updated_at = CASE WHEN updated_at > $2 THEN updated_at ELSE $2 END \
                 WHERE id = $1 RETURNING message_count",
            )
            .bind(&message.conversation_id)
            .bind(created_at)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(|error| self.database_error(error))?;
            let Some(ordinal) = ordinal else {
                return Err(StoreError::NotFound { what: "conversation", id: message.conversation_id.clone() });
            };
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, ordinal, role, sender, text, blocks, worker_ids, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&message.id)
            .bind(&message.conversation_id)
            .bind(ordinal)
            .bind(role_name(message.role))
            .bind(&message.sender)
            .bind(&message.text)
            .bind(&blocks)
            .bind(&worker_ids)
            .bind(created_at)
            .execute(&mut *transaction)
            .await
            .map_err(|error| self.insert_error("message", &message.id, error))?;
            transaction.commit().await.map_err(|error| self.database_error(error))?;
        });
        Ok(())
    }

    /// The last `limit` messages of a conversation, oldest first (`limit` 0 =
    /// [`super::DEFAULT_LIST_LIMIT`], at most [`super::MAX_LIST_LIMIT`]). Unknown conversation → empty.
    pub async fn messages(&self, conversation_id: &str, limit: u32) -> Result<Vec<MessageRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT id, conversation_id, role, sender, text, blocks, worker_ids, created_at FROM ( \
                   SELECT id, conversation_id, ordinal, role, sender, text, blocks, worker_ids, created_at \
                   FROM messages WHERE conversation_id = $1 ORDER BY ordinal DESC LIMIT $2 \
                 ) AS latest ORDER BY ordinal ASC",
            )
            .bind(conversation_id)
            .bind(list_limit(limit))
            .fetch_all(pool)
            .await
            .map_err(|error| self.database_error(error))?
            .iter()
            .map(message_from_row)
            .collect()
        })
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn parse_role(name: &str) -> Result<Role, StoreError> {
    match name {
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(StoreError::Corrupt { what: "message role", message: format!("unknown role {other:?}") }),
    }
}

fn conversation_from_row(row: &impl StoreRow) -> Result<ConversationRow, StoreError> {
    Ok(ConversationRow {
        id: row.text("id")?,
        title: row.text("title")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        message_count: row.counter("message_count")?,
    })
}

fn message_from_row(row: &impl StoreRow) -> Result<MessageRow, StoreError> {
    Ok(MessageRow {
        id: row.text("id")?,
        conversation_id: row.text("conversation_id")?,
        role: parse_role(&row.text("role")?)?,
        sender: row.text("sender")?,
        text: row.text("text")?,
        blocks: from_json("message blocks", &row.text("blocks")?)?,
        worker_ids: from_json("message worker ids", &row.text("worker_ids")?)?,
        created_at: row.time("created_at")?,
    })
}
