-- Template changes (pull requests against the template repository) and human approvals.
-- A change is one JSON document (pull request snapshot, vetting report, pipeline outcome) keyed
-- by its pull request number; approvals are rows of their own so "use once" is one conditional UPDATE.
CREATE TABLE changes (
    pr_number       BIGINT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    state           TEXT NOT NULL,
    document        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX changes_by_updated_at ON changes (updated_at DESC);

CREATE TABLE approvals (
    approval_id     TEXT COLLATE "C" PRIMARY KEY,
    pr_number       BIGINT NOT NULL,
    head_sha        TEXT NOT NULL,
    report_digest   TEXT NOT NULL,
    approver        TEXT NOT NULL,
    override_reason TEXT NOT NULL,
    approved_at     BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    void_reason     TEXT NOT NULL
);
CREATE INDEX approvals_by_pr ON approvals (pr_number, approved_at DESC);

ALTER TABLE capabilities ADD COLUMN pr_number BIGINT NOT NULL DEFAULT 0;
ALTER TABLE capabilities ADD COLUMN evidence TEXT NOT NULL DEFAULT '';
