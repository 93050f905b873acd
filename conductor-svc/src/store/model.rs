//! The rows Stu keeps. Plain data: the store maps them to SQL, the gRPC adapter to protobuf.

use std::time::SystemTime;

use crate::brain::{Block, Role};

#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    pub id: String,
    pub title: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// Maintained by the store: messages appended so far.
    pub message_count: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub id: String,
    pub conversation_id: String,
    pub role: Role,
    /// Who sent it ("cli:alice") for user messages; the brain's name for assistant messages.
    pub sender: String,
    /// What people see: the text of the message.
    pub text: String,
    /// What the brain sees: the full blocks (tool calls and results included), stored as JSON.
    pub blocks: Vec<Block>,
    /// Workers this message spawned.
    pub worker_ids: Vec<String>,
    pub created_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    Worker,
    Infrastructure,
}

impl WorkerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Worker => "worker",
            WorkerKind::Infrastructure => "infrastructure",
        }
    }

    pub fn parse(text: &str) -> Option<WorkerKind> {
        match text {
            "worker" => Some(WorkerKind::Worker),
            "infrastructure" => Some(WorkerKind::Infrastructure),
            _ => None,
        }
    }

    /// The broker template a worker of this kind is created from.
    pub fn template(self) -> &'static str {
        self.as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    Starting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl WorkerState {
    pub const ACTIVE: [WorkerState; 2] = [WorkerState::Starting, WorkerState::Running];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Succeeded => "succeeded",
            WorkerState::Failed => "failed",
            WorkerState::Cancelled => "cancelled",
            WorkerState::TimedOut => "timed_out",
            WorkerState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<WorkerState> {
        [
            WorkerState::Starting,
            WorkerState::Running,
            WorkerState::Succeeded,
            WorkerState::Failed,
            WorkerState::Cancelled,
            WorkerState::TimedOut,
            WorkerState::Lost,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    pub fn is_active(self) -> bool {
        WorkerState::ACTIVE.contains(&self)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub id: String,
    pub conversation_id: String,
    pub kind: WorkerKind,
    pub task: String,
    pub state: WorkerState,
    pub template: String,
    pub template_version: String,
    /// "claude" or "shell".
    pub runtime: String,
    pub sandbox_id: String,
    pub process_id: String,
    pub exit_code: Option<i32>,
    pub summary: String,
    /// Why it ended ("exited 0", "cancelled by cli:alice: …", "wall time 30m exceeded").
    pub end_reason: String,
    pub requested_by: String,
    pub cost_usd: f64,
    pub num_turns: u32,
    /// Highest output seq the conductor has recorded; a restarted conductor resumes after it.
    pub last_seq: u64,
    pub trace_id: String,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
}

/// Which workers `list_workers` returns. Empty `states` = any state.
#[derive(Debug, Clone, Default)]
pub struct WorkerFilter {
    pub conversation_id: Option<String>,
    pub states: Vec<WorkerState>,
    pub kind: Option<WorkerKind>,
    /// Newest first, at most this many.
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRow {
    pub key: String,
    pub content: String,
    /// "user:<sender>", "stu", "system".
    pub source: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityRow {
    pub name: String,
    pub description: String,
    pub template: String,
    /// The template version it first appeared in.
    pub since_version: String,
    pub since: SystemTime,
    /// The pull request that brought it; 0 when it was there from the start.
    pub pr_number: u64,
    /// What showed it works (the passing smoke test of that version).
    pub evidence: String,
}

/// One template change: `document` is the change's JSON (see `crate::changes::ChangeRecord`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub pr_number: u64,
    pub conversation_id: String,
    pub state: String,
    pub document: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A human's approval of one pull request at one head commit.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    pub approval_id: String,
    pub pr_number: u64,
    pub head_sha: String,
    pub report_digest: String,
    pub approver: String,
    pub override_reason: String,
    pub approved_at: SystemTime,
    pub expires_at: SystemTime,
    pub used_at: Option<SystemTime>,
    pub void_reason: String,
}

/// One line of the audit log: who or what asked for what, when, under which trace.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: SystemTime,
    /// "cli:alice", "stu", "system".
    pub actor: String,
    /// "send_message", "spawn_worker", "cancel_worker", "remember", …
    pub action: String,
    /// What it acted on: a conversation, worker or memory key.
    pub subject: String,
    pub detail: String,
    pub trace_id: String,
}
