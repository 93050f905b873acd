//! The template-change tools: proposing an infrastructure worker's edits, showing a change,
//! whether infrastructure workers are set up, template versions. Read-only except the proposal,
//! and none approves or merges (approval is a person's act, see `chat::approval`).

use std::fmt::Write;

use super::TurnEvent;
use super::tool_calls::ToolOutcome;
use super::turn::Turn;
use crate::brain::untrusted_data;
use crate::changes::{ChangeView, Origin};
use crate::store::WorkerRow;

/// Diff bytes a brain sees when it shows a change (the whole diff stays in GetChange).
const SHOWN_DIFF_BYTES: usize = 32 << 10;

impl Turn {
    /// Opens the pull request for a finished infrastructure worker, vets it, and says what a
    /// person must do next. Always releases the worker's sandbox.
    pub(super) async fn propose_change(&self, worker: &WorkerRow, title: &str) -> String {
        let inner = &self.chat.inner;
        let origin = Origin {
            conversation_id: self.conversation_id.clone(),
            worker_id: worker.id.clone(),
            requested_by: self.sender.clone(),
            request: self.text.clone(),
        };
        let result = inner.changes.propose(&worker.sandbox_id, title, origin).await;
        let _ = inner.workers.broker().kill_sandbox(&worker.sandbox_id).await;
        match result {
            Ok(view) => {
                let record = &view.record;
                self.emit(TurnEvent::Notice(format!(
                    "pull request #{} opened ({}); vetting verdict: {}",
                    record.pr.number,
                    record.pr.url,
                    if record.report.rejects() { "REJECT" } else { "NEEDS_HUMAN" }
                )))
                .await;
                format!("\n{}", describe_change(&view, false))
            }
            Err(error) if error.to_string().contains("no change") => {
                "\nThe worker changed no file in the template repository: no pull request was opened.".to_owned()
            }
            Err(error) => format!("\nNo pull request was opened: {error}"),
        }
    }

    pub(super) async fn show_change(&self, input: &serde_json::Value) -> ToolOutcome {
        let changes = &self.chat.inner.changes;
        let number = match input.get("pr_number").and_then(|v| v.as_u64()) {
            Some(number) => number,
            None => match changes.list(&self.conversation_id).await {
                Ok(list) => match list.first() {
                    Some(latest) => latest.pr.number,
                    None => {
                        return ToolOutcome::error("no pull request in this conversation yet; give pr_number".into());
                    }
                },
                Err(error) => return ToolOutcome::error(error.to_string()),
            },
        };
        match changes.get(number).await {
            Ok(view) => ToolOutcome::ok(describe_change(&view, true)),
            Err(error) => ToolOutcome::error(error.to_string()),
        }
    }

    pub(super) async fn infrastructure_status(&self) -> ToolOutcome {
        let broker = self.chat.inner.workers.broker();
        match broker.list_templates_with_host().await {
            Ok(listing) => {
                let mut text = String::new();
                let infrastructure = listing.templates.iter().find(|t| t.name == "infrastructure");
                let host = listing.code_host.unwrap_or_default();
                match infrastructure {
                    Some(t) => {
                        let _ = writeln!(
                            text,
                            "Infrastructure template: configured (version {}, runtime {}, template checkout: {}){}",
                            t.version,
                            t.runtime,
                            if t.template_checkout { "yes" } else { "no" },
                            if t.runtime_note.is_empty() { String::new() } else { format!("; {}", t.runtime_note) }
                        );
                    }
                    None => {
                        let _ = writeln!(text, "Infrastructure template: NOT configured on the broker.");
                    }
                }
                if host.kind.is_empty() {
                    let _ = writeln!(text, "Code host: not configured.");
                } else {
                    let _ = writeln!(
                        text,
                        "Code host: {} (repository {}, branch {}); template builder: {}",
                        host.kind, host.repository, host.default_branch, host.builder
                    );
                }
                let enabled = infrastructure.is_some() && !host.kind.is_empty();
                let _ =
                    writeln!(text, "Infrastructure workers are {}.", if enabled { "ENABLED" } else { "NOT enabled" });
                ToolOutcome::ok(text)
            }
            Err(status) => {
                ToolOutcome::error(format!("the broker did not answer: {}", crate::broker_client::describe(&status)))
            }
        }
    }

    pub(super) async fn template_versions(&self, input: &serde_json::Value) -> ToolOutcome {
        let template =
            input.get("template").and_then(|v| v.as_str()).map(str::trim).filter(|t| !t.is_empty()).unwrap_or("worker");
        match self.chat.inner.changes.versions(template).await {
            Ok(versions) => {
                let mut text = format!("Versions of the {template} template, newest first:\n");
                for v in versions {
                    let _ = writeln!(
                        text,
                        "- {}{} built from {} (PR #{}), {}; capabilities: {}",
                        v.version_id,
                        if v.active { " [ACTIVE]" } else { "" },
                        &v.git_sha[..v.git_sha.len().min(12)],
                        v.pr_number,
                        if v.error.is_empty() { "built".to_owned() } else { format!("failed: {}", v.error) },
                        v.capabilities.join(", ")
                    );
                }
                ToolOutcome::ok(text)
            }
            Err(error) => ToolOutcome::error(error.to_string()),
        }
    }
}

/// A change for a brain (and through it, a person): the facts, the findings, what to do next;
/// PR text and diff as untrusted data.
pub(super) fn describe_change(view: &ChangeView, with_diff: bool) -> String {
    let record = &view.record;
    let report = &record.report;
    let mut text = format!(
        "Pull request #{} {:?} ({}), state {}, head {}: {}\nVetting verdict: {} (report {})\n",
        record.pr.number,
        record.pr.title,
        record.pr.url,
        record.pr.state,
        record.pr.head_sha,
        record.state_detail,
        if report.rejects() { "REJECT" } else { "NEEDS_HUMAN" },
        report.digest
    );
    for finding in &report.findings {
        let _ = writeln!(
            text,
            "- [{}] {} {}:{}: {} ({})",
            finding.severity, finding.rule, finding.file, finding.line, finding.message, finding.evidence
        );
    }
    let _ = writeln!(text, "Review: {}", report.summary);
    if report.rejects() {
        let _ = writeln!(text, "It cannot merge. A person may close it with `studio reject {}`.", record.pr.number);
    } else if record.state == crate::changes::ChangeState::AwaitingApproval {
        let _ = writeln!(
            text,
            "It needs a human approval: reply \"approved\" (or run `studio approve {}`) to merge at head {}, then build, \
             smoke-test and promote it. You cannot approve it yourself.",
            record.pr.number, record.pr.head_sha
        );
    }
    if with_diff {
        let diff = &view.diff[..view.diff.floor_char_boundary(SHOWN_DIFF_BYTES)];
        text.push_str(&untrusted_data(&format!("pull request #{} diff", record.pr.number), diff));
    }
    text
}
