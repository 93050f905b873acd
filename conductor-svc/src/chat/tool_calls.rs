//! Running the tools a brain asked for. Results that carry sandbox-produced text are wrapped as
//! untrusted data; none of these tools approves, merges or reaches a credential.

use std::fmt::Write;
use std::time::SystemTime;

use tokio::sync::broadcast::error::RecvError;

use super::TurnEvent;
use super::turn::Turn;
use crate::brain::{tools, untrusted_data};
use crate::store::{MemoryRow, WorkerFilter, WorkerKind, WorkerRow};
use crate::workers::{LiveEvent, SpawnRequest};

/// Longest memory key / content a brain may store, in bytes.
const MAX_MEMORY_KEY_BYTES: usize = 200;
const MAX_MEMORY_CONTENT_BYTES: usize = 8 << 10;

pub(super) struct ToolOutcome {
    pub content: String,
    pub is_error: bool,
    pub worker_id: Option<String>,
}

impl ToolOutcome {
    pub(super) fn ok(content: String) -> ToolOutcome {
        ToolOutcome { content, is_error: false, worker_id: None }
    }

    pub(super) fn error(content: String) -> ToolOutcome {
        ToolOutcome { content, is_error: true, worker_id: None }
    }
}

fn string_field<'a>(input: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    input.get(field).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty())
}

impl Turn {
    pub(super) async fn call_tool(&self, _id: &str, name: &str, input: &serde_json::Value) -> ToolOutcome {
        match name {
            tools::SPAWN_WORKER => self.spawn_and_wait(WorkerKind::Worker, input).await,
            tools::SPAWN_INFRASTRUCTURE_WORKER => self.spawn_and_wait(WorkerKind::Infrastructure, input).await,
            tools::REMEMBER => self.remember(input).await,
            tools::RECALL => self.recall(input).await,
            tools::LIST_CAPABILITIES => self.list_capabilities().await,
            tools::WORKER_STATUS => self.worker_status(input).await,
            tools::SHOW_CHANGE => self.show_change(input).await,
            tools::INFRASTRUCTURE_STATUS => self.infrastructure_status().await,
            tools::TEMPLATE_VERSIONS => self.template_versions(input).await,
            other => ToolOutcome::error(format!(
                "unknown tool {other:?}; available: {}",
                tools::all().iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Spawns a worker, streams its output to the watcher, and returns when it has ended.
    async fn spawn_and_wait(&self, kind: WorkerKind, input: &serde_json::Value) -> ToolOutcome {
        let Some(task) = string_field(input, "task") else {
            return ToolOutcome::error("input.task: a non-empty string is required".into());
        };
        let workers = &self.chat.inner.workers;
        let request = SpawnRequest {
            kind,
            task: task.to_owned(),
            conversation_id: self.conversation_id.clone(),
            requested_by: self.sender.clone(),
            trace_id: self.trace_id.clone(),
        };
        let mut spawned = match workers.spawn(request).await {
            Ok(spawned) => spawned,
            Err(error) => {
                let message = format!("could not start the {} worker: {error}", kind.as_str());
                self.emit(TurnEvent::Notice(message.clone())).await;
                return ToolOutcome::error(message);
            }
        };
        let row = &spawned.row;
        self.emit(TurnEvent::WorkerSpawned {
            worker_id: row.id.clone(),
            kind,
            task: row.task.clone(),
            sandbox_id: row.sandbox_id.clone(),
            template_version: row.template_version.clone(),
        })
        .await;
        let worker_id = row.id.clone();
        let mut output_open = true;
        let ended = loop {
            tokio::select! {
                biased;
                event = spawned.events.recv(), if output_open => match event {
                    Ok(LiveEvent::Output { seq, stderr, data }) => {
                        self.emit(TurnEvent::WorkerOutput { worker_id: worker_id.clone(), seq, stderr, data }).await;
                    }
                    Ok(LiveEvent::Notice(text)) => self.emit(TurnEvent::Notice(format!("{worker_id}: {text}"))).await,
                    Err(RecvError::Lagged(missed)) => {
                        self.emit(TurnEvent::Notice(format!(
                            "{worker_id}: this stream fell behind and skipped {missed} output events; \
                             `studio logs {worker_id}` replays them all"
                        )))
                        .await;
                    }
                    // The follower is gone (everything it sent was received); its end is in `finished`.
                    Err(RecvError::Closed) => output_open = false,
                },
                // Cloned inside: a `watch::Ref` must not live across the awaits above.
                changed = async { spawned.finished.wait_for(Option::is_some).await.map(|row| row.clone()) } => match changed {
                    Ok(row) => break row.expect("waited for Some"),
                    Err(_) => return ToolOutcome::error(format!("worker {worker_id}: the conductor is shutting down")),
                },
            }
        };
        // Output sent before the end but still queued: drain what is left.
        while let Ok(LiveEvent::Output { seq, stderr, data }) = spawned.events.try_recv() {
            self.emit(TurnEvent::WorkerOutput { worker_id: worker_id.clone(), seq, stderr, data }).await;
        }
        self.emit(TurnEvent::finished(&ended)).await;
        let mut report = worker_report(&ended);
        if kind == WorkerKind::Infrastructure && ended.state == crate::store::WorkerState::Succeeded {
            let title = string_field(input, "title").map_or_else(|| title_from(task), str::to_owned);
            report.push_str(&self.propose_change(&ended, &title).await);
        }
        let mut outcome = ToolOutcome::ok(report);
        outcome.worker_id = Some(worker_id);
        outcome
    }

    async fn remember(&self, input: &serde_json::Value) -> ToolOutcome {
        let (Some(key), Some(content)) = (string_field(input, "key"), string_field(input, "content")) else {
            return ToolOutcome::error("input.key and input.content: non-empty strings are required".into());
        };
        if key.len() > MAX_MEMORY_KEY_BYTES || content.len() > MAX_MEMORY_CONTENT_BYTES {
            return ToolOutcome::error(format!(
                "memory too large: key ≤ {MAX_MEMORY_KEY_BYTES} bytes, content ≤ {MAX_MEMORY_CONTENT_BYTES} bytes"
            ));
        }
        let now = SystemTime::now();
        let row = MemoryRow {
            key: key.to_owned(),
            content: content.to_owned(),
            source: format!("stu (asked by {})", self.sender),
            created_at: now,
            updated_at: now,
        };
        let inner = &self.chat.inner;
        match inner.store.remember(&row).await {
            Ok(_) => {
                inner.workers.audit(&self.sender, "remember", key, content, &self.trace_id).await;
                ToolOutcome::ok(format!("remembered {key:?}"))
            }
            Err(error) => ToolOutcome::error(format!("store: {error}")),
        }
    }

    async fn recall(&self, input: &serde_json::Value) -> ToolOutcome {
        let query = string_field(input, "query").unwrap_or_default();
        match self.chat.inner.store.list_memories(query, 50).await {
            Ok(rows) if rows.is_empty() && query.is_empty() => ToolOutcome::ok("Memory is empty.".into()),
            Ok(rows) if rows.is_empty() => ToolOutcome::ok(format!("Nothing in memory matches {query:?}.")),
            Ok(rows) => {
                let mut text = String::new();
                for row in rows {
                    let _ = writeln!(text, "- {}: {}", row.key, row.content);
                }
                ToolOutcome::ok(text)
            }
            Err(error) => ToolOutcome::error(format!("store: {error}")),
        }
    }

    async fn list_capabilities(&self) -> ToolOutcome {
        let inner = &self.chat.inner;
        let mut text = String::new();
        match inner.workers.templates().await {
            Ok(templates) => {
                let _ = writeln!(text, "Active templates:");
                for t in &templates {
                    let _ = writeln!(
                        text,
                        "- {} version {} (runtime {}{}): {}",
                        t.name,
                        t.version,
                        t.runtime,
                        if t.runtime_note.is_empty() { String::new() } else { format!("; {}", t.runtime_note) },
                        t.description
                    );
                }
                let infrastructure = templates.iter().find(|t| t.name == "infrastructure");
                let _ = writeln!(
                    text,
                    "Infrastructure workers: {}",
                    match infrastructure {
                        Some(t) =>
                            format!("enabled (template `infrastructure` version {}, runtime {})", t.version, t.runtime),
                        None => "not enabled: the broker has no `infrastructure` template".into(),
                    }
                );
            }
            Err(error) => {
                let _ = writeln!(text, "The broker did not answer ({error}); templates unknown right now.");
            }
        }
        match inner.store.list_capabilities().await {
            Ok(capabilities) => {
                let _ = writeln!(text, "Capabilities (template: name, since version):");
                for c in capabilities {
                    let _ = writeln!(text, "- {}: {} (since {})", c.template, c.name, c.since_version);
                }
            }
            Err(error) => {
                let _ = writeln!(text, "store: {error}");
            }
        }
        ToolOutcome::ok(text)
    }

    async fn worker_status(&self, input: &serde_json::Value) -> ToolOutcome {
        let workers = &self.chat.inner.workers;
        if let Some(worker_id) = string_field(input, "worker_id") {
            return match workers.get(worker_id).await {
                Ok(row) => ToolOutcome::ok(worker_report(&row)),
                Err(error) => ToolOutcome::error(error.to_string()),
            };
        }
        let filter =
            WorkerFilter { conversation_id: Some(self.conversation_id.clone()), limit: 10, ..WorkerFilter::default() };
        match workers.list(&filter).await {
            Ok(rows) if rows.is_empty() => ToolOutcome::ok("No workers in this conversation yet.".into()),
            Ok(rows) => ToolOutcome::ok(rows.iter().map(worker_report).collect::<Vec<_>>().join("\n")),
            Err(error) => ToolOutcome::error(error.to_string()),
        }
    }
}

/// A pull request title from a task: its first line, shortened.
fn title_from(task: &str) -> String {
    let line = task.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("Template change");
    let mut title: String = line.chars().take(72).collect();
    if line.chars().count() > 72 {
        title.push('…');
    }
    title
}

/// A worker's state for a brain: the facts the conductor knows, then its summary as untrusted data.
pub(super) fn worker_report(row: &WorkerRow) -> String {
    let mut report = format!(
        "worker {} ({}, template version {}, runtime {}): {}",
        row.id,
        row.kind.as_str(),
        row.template_version,
        row.runtime,
        row.state.as_str()
    );
    if let Some(code) = row.exit_code {
        let _ = write!(report, ", exit code {code}");
    }
    if !row.end_reason.is_empty() {
        let _ = write!(report, " ({})", row.end_reason);
    }
    report.push('\n');
    if !row.summary.is_empty() {
        report.push_str(&untrusted_data(&format!("worker {} summary", row.id), &row.summary));
    }
    report
}
