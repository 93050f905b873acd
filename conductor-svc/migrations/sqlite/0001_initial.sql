-- Stu's state on SQLite. Keep in step with ../postgres/0001_initial.sql (same tables, columns and
-- meaning). Timestamps are unix milliseconds; JSON columns hold serde_json text.

CREATE TABLE conversations (
    id            TEXT PRIMARY KEY NOT NULL,
    title         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    message_count BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX conversations_by_updated_at ON conversations (updated_at DESC);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- 1, 2, 3 … within the conversation, in commit order (the conversation's message_count after the append).
    ordinal         BIGINT NOT NULL,
    role            TEXT NOT NULL,
    sender          TEXT NOT NULL,
    text            TEXT NOT NULL,
    blocks          TEXT NOT NULL,  -- JSON array of brain blocks
    worker_ids      TEXT NOT NULL,  -- JSON array of worker ids
    created_at      BIGINT NOT NULL,
    UNIQUE (conversation_id, ordinal)
);

CREATE TABLE workers (
    id               TEXT PRIMARY KEY NOT NULL,
    conversation_id  TEXT NOT NULL,
    kind             TEXT NOT NULL,
    task             TEXT NOT NULL,
    state            TEXT NOT NULL,
    template         TEXT NOT NULL,
    template_version TEXT NOT NULL,
    runtime          TEXT NOT NULL,
    sandbox_id       TEXT NOT NULL,
    process_id       TEXT NOT NULL,
    exit_code        BIGINT,
    summary          TEXT NOT NULL,
    end_reason       TEXT NOT NULL,
    requested_by     TEXT NOT NULL,
    cost_usd         REAL NOT NULL,
    num_turns        BIGINT NOT NULL,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    trace_id         TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX workers_by_created_at ON workers (created_at DESC);
CREATE INDEX workers_by_conversation ON workers (conversation_id, created_at DESC);
CREATE INDEX workers_by_state ON workers (state);

CREATE TABLE memories (
    key        TEXT PRIMARY KEY NOT NULL,
    content    TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX memories_by_updated_at ON memories (updated_at DESC);

CREATE TABLE capabilities (
    template      TEXT NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    since_version TEXT NOT NULL,
    since         BIGINT NOT NULL,
    PRIMARY KEY (template, name)
);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL,
    trace_id TEXT NOT NULL
);
CREATE INDEX audit_log_by_at ON audit_log (at DESC, id DESC);
