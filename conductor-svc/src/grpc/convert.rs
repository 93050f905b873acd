//! Domain rows and events ↔ protobuf. No logic beyond the mapping and request validation.

use std::time::{Duration, SystemTime};

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::conductor::v1::conductor_event::Event;
use tonic::Status;

use crate::brain::Role;
use crate::chat::TurnEvent;
use crate::store::{CapabilityRow, ConversationRow, MemoryRow, MessageRow, WorkerKind, WorkerRow, WorkerState};

pub fn timestamp(time: SystemTime) -> Option<prost_types::Timestamp> {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Some(prost_types::Timestamp { seconds: since_epoch.as_secs() as i64, nanos: since_epoch.subsec_nanos() as i32 })
}

pub fn kind(kind: WorkerKind) -> pb::WorkerKind {
    match kind {
        WorkerKind::Worker => pb::WorkerKind::Worker,
        WorkerKind::Infrastructure => pb::WorkerKind::Infrastructure,
    }
}

pub fn kind_filter(value: i32) -> Result<Option<WorkerKind>, Status> {
    match pb::WorkerKind::try_from(value) {
        Ok(pb::WorkerKind::Unspecified) => Ok(None),
        Ok(pb::WorkerKind::Worker) => Ok(Some(WorkerKind::Worker)),
        Ok(pb::WorkerKind::Infrastructure) => Ok(Some(WorkerKind::Infrastructure)),
        Err(_) => Err(Status::invalid_argument(format!("kind: unknown value {value}"))),
    }
}

pub fn state(state: WorkerState) -> pb::WorkerState {
    match state {
        WorkerState::Starting => pb::WorkerState::Starting,
        WorkerState::Running => pb::WorkerState::Running,
        WorkerState::Succeeded => pb::WorkerState::Succeeded,
        WorkerState::Failed => pb::WorkerState::Failed,
        WorkerState::Cancelled => pb::WorkerState::Cancelled,
        WorkerState::TimedOut => pb::WorkerState::TimedOut,
        WorkerState::Lost => pb::WorkerState::Lost,
    }
}

pub fn state_filter(values: &[i32]) -> Result<Vec<WorkerState>, Status> {
    values
        .iter()
        .map(|&value| match pb::WorkerState::try_from(value) {
            Ok(pb::WorkerState::Starting) => Ok(WorkerState::Starting),
            Ok(pb::WorkerState::Running) => Ok(WorkerState::Running),
            Ok(pb::WorkerState::Succeeded) => Ok(WorkerState::Succeeded),
            Ok(pb::WorkerState::Failed) => Ok(WorkerState::Failed),
            Ok(pb::WorkerState::Cancelled) => Ok(WorkerState::Cancelled),
            Ok(pb::WorkerState::TimedOut) => Ok(WorkerState::TimedOut),
            Ok(pb::WorkerState::Lost) => Ok(WorkerState::Lost),
            Ok(pb::WorkerState::Unspecified) | Err(_) => {
                Err(Status::invalid_argument(format!("states: unknown or unspecified value {value}")))
            }
        })
        .collect()
}

pub fn worker(row: WorkerRow) -> pb::Worker {
    pb::Worker {
        worker_id: row.id,
        kind: kind(row.kind) as i32,
        task: row.task,
        state: state(row.state) as i32,
        template: row.template,
        template_version: row.template_version,
        sandbox_id: row.sandbox_id,
        process_id: row.process_id,
        exit_code: row.exit_code,
        summary: row.summary,
        created_at: timestamp(row.created_at),
        started_at: row.started_at.and_then(timestamp),
        finished_at: row.finished_at.and_then(timestamp),
        conversation_id: row.conversation_id,
        end_reason: row.end_reason,
        runtime: row.runtime,
        cost_usd: row.cost_usd,
        num_turns: row.num_turns,
        last_seq: row.last_seq,
        requested_by: row.requested_by,
    }
}

pub fn conversation(row: ConversationRow, messages: Vec<MessageRow>) -> pb::Conversation {
    pb::Conversation {
        conversation_id: row.id,
        title: row.title,
        created_at: timestamp(row.created_at),
        updated_at: timestamp(row.updated_at),
        // Tool plumbing (tool results, empty tool-call turns) is for the brain, not for people.
        messages: messages.into_iter().filter(|m| !m.text.is_empty()).map(message).collect(),
        message_count: row.message_count,
    }
}

fn message(row: MessageRow) -> pb::Message {
    pb::Message {
        message_id: row.id,
        role: match row.role {
            Role::User => pb::Role::User,
            Role::Assistant => pb::Role::Assistant,
        } as i32,
        sender: row.sender,
        text: row.text,
        created_at: timestamp(row.created_at),
        worker_ids: row.worker_ids,
    }
}

pub fn memory(row: MemoryRow) -> pb::Memory {
    pb::Memory {
        key: row.key,
        content: row.content,
        created_at: timestamp(row.created_at),
        updated_at: timestamp(row.updated_at),
        source: row.source,
    }
}

pub fn capability(row: CapabilityRow) -> pb::Capability {
    pb::Capability {
        name: row.name,
        description: row.description,
        template: row.template,
        since_version: row.since_version,
        since: timestamp(row.since),
        pr_number: row.pr_number,
        evidence: row.evidence,
    }
}

pub fn event(event: TurnEvent) -> pb::ConductorEvent {
    use pb::conductor_event as ev;
    let event = match event {
        TurnEvent::Conversation { conversation_id, created } => {
            Event::Conversation(ev::ConversationStarted { conversation_id, created })
        }
        TurnEvent::Text(text) => Event::AssistantText(ev::AssistantText { text }),
        TurnEvent::WorkerSpawned { worker_id, kind: worker_kind, task, sandbox_id, template_version } => {
            Event::WorkerSpawned(ev::WorkerSpawned {
                worker_id,
                kind: kind(worker_kind) as i32,
                task,
                sandbox_id,
                template_version,
            })
        }
        TurnEvent::WorkerOutput { worker_id, seq, stderr, data } => Event::WorkerOutput(ev::WorkerOutput {
            worker_id,
            seq,
            data: Some(if stderr {
                ev::worker_output::Data::Stderr(data)
            } else {
                ev::worker_output::Data::Stdout(data)
            }),
        }),
        TurnEvent::WorkerFinished { worker_id, exit_code, summary, state: worker_state } => {
            Event::WorkerFinished(ev::WorkerFinished {
                worker_id,
                exit_code,
                summary,
                state: state(worker_state) as i32,
            })
        }
        TurnEvent::Notice(text) => Event::Notice(ev::Notice { text }),
        TurnEvent::Error { code, message } => Event::Error(ev::Error { code: code_name(code), message }),
        TurnEvent::Done { message_id } => Event::Done(ev::Done { message_id }),
    };
    pb::ConductorEvent { event: Some(event) }
}

/// `ResourceExhausted` → `RESOURCE_EXHAUSTED`: gRPC's own spelling of code names.
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The W3C trace id of a request's `traceparent`, for the audit log; empty when absent.
pub fn trace_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_spelling() {
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
