//! The gRPC adapter: `agentstudio.conductor.v1.ConductorService` over [`Chat`], [`Workers`] and
//! the [`Store`]. Validation and mapping only; the work happens in the domain modules.

mod changes;
pub mod convert;

use std::pin::Pin;
use std::time::SystemTime;

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::conductor::v1::conductor_service_server::ConductorService;
use agentstudio_proto::sandbox::v1::process_event::Event as ProcessEvent;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::changes::Changes;
use crate::chat::{Chat, SendMessage, store_status};
use crate::store::{MemoryRow, Store, WorkerFilter};
use crate::workers::Workers;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Longest memory key and content accepted, in bytes.
const MAX_MEMORY_KEY_BYTES: usize = 200;
const MAX_MEMORY_CONTENT_BYTES: usize = 32 << 10;

pub struct ConductorGrpc {
    chat: Chat,
    workers: Workers,
    changes: Changes,
    store: Store,
}

impl ConductorGrpc {
    pub fn new(chat: Chat, workers: Workers, changes: Changes, store: Store) -> ConductorGrpc {
        ConductorGrpc { chat, workers, changes, store }
    }
}

/// The stream up to and including `last` (all of it when `None`), without waiting for more.
fn stop_at(
    stream: tonic::Streaming<agentstudio_proto::sandbox::v1::ProcessEvent>,
    last: Option<u64>,
    after_seq: u64,
) -> Pin<Box<dyn Stream<Item = Result<agentstudio_proto::sandbox::v1::ProcessEvent, Status>> + Send>> {
    let Some(last) = last else { return Box::pin(stream) };
    let done = last <= after_seq;
    Box::pin(futures_util::stream::unfold((stream, done), move |(mut stream, done)| async move {
        if done {
            return None;
        }
        let item = stream.message().await.transpose()?;
        let done = item.as_ref().is_ok_and(|event| event.seq >= last) || item.is_err();
        Some((item, (stream, done)))
    }))
}

fn limit(requested: u32, default: u32, max: u32) -> u32 {
    if requested == 0 { default } else { requested.min(max) }
}

#[tonic::async_trait]
impl ConductorService for ConductorGrpc {
    type SendMessageStream = EventStream<pb::ConductorEvent>;
    type AttachWorkerStream = EventStream<pb::WorkerOutputEvent>;

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let trace_id = convert::trace_id(request.metadata());
        let request = request.into_inner();
        let events = self
            .chat
            .send(SendMessage {
                conversation_id: request.conversation_id,
                text: request.text,
                sender: request.sender,
                trace_id,
            })
            .await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(|event| Ok(convert::event(event)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let limit = limit(request.into_inner().limit, 50, 500);
        let rows = self.store.list_conversations(limit).await.map_err(store_status)?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: rows.into_iter().map(|row| convert::conversation(row, Vec::new())).collect(),
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let id = request.into_inner().conversation_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("conversation_id: required"));
        }
        let row = self
            .store
            .get_conversation(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("conversation {id:?} not found")))?;
        let messages = self.store.messages(&id, 1000).await.map_err(store_status)?;
        Ok(Response::new(pb::GetConversationResponse { conversation: Some(convert::conversation(row, messages)) }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let request = request.into_inner();
        let filter = WorkerFilter {
            conversation_id: Some(request.conversation_id).filter(|id| !id.is_empty()),
            states: convert::state_filter(&request.states)?,
            kind: convert::kind_filter(request.kind)?,
            limit: limit(request.limit, 100, 1000),
        };
        let rows = self.workers.list(&filter).await?;
        Ok(Response::new(pb::ListWorkersResponse { workers: rows.into_iter().map(convert::worker).collect() }))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::GetWorkerResponse>, Status> {
        let id = request.into_inner().worker_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("worker_id: required"));
        }
        let row = self.workers.get(&id).await?;
        Ok(Response::new(pb::GetWorkerResponse { worker: Some(convert::worker(row)) }))
    }

    async fn attach_worker(
        &self,
        request: Request<pb::AttachWorkerRequest>,
    ) -> Result<Response<Self::AttachWorkerStream>, Status> {
        let request = request.into_inner();
        if request.worker_id.is_empty() {
            return Err(Status::invalid_argument("worker_id: required"));
        }
        let (row, broker_stream, stop_after) =
            self.workers.attach(&request.worker_id, request.after_seq, request.follow).await?;
        let worker_id = row.id;
        // Not following: end once the last seq that existed at the call went out (or at once if
        // there was nothing after `after_seq`).
        let broker_stream =
            stop_at(broker_stream, stop_after.map(|last| last.max(request.after_seq)), request.after_seq);
        // A straight relay of the broker's stream: its seq is the worker's seq, so resuming
        // after any seq works through either service.
        let stream = broker_stream.filter_map(move |item| {
            use pb::worker_output_event::{Event, Exited, Truncated};
            let event = match item {
                Ok(event) => event,
                Err(status) => return Some(Err(Status::new(status.code(), format!("broker: {}", status.message())))),
            };
            let body = match event.event? {
                ProcessEvent::Stdout(data) => Event::Stdout(data),
                ProcessEvent::Stderr(data) => Event::Stderr(data),
                ProcessEvent::Exited(exited) => {
                    Event::Exited(Exited { exit_code: exited.exit_code, signal: exited.signal })
                }
                ProcessEvent::Truncated(truncated) => {
                    Event::Truncated(Truncated { first_available_seq: truncated.first_available_seq })
                }
                ProcessEvent::Started(_) => return None,
            };
            Some(Ok(pb::WorkerOutputEvent { worker_id: worker_id.clone(), seq: event.seq, event: Some(body) }))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_worker(
        &self,
        request: Request<pb::CancelWorkerRequest>,
    ) -> Result<Response<pb::CancelWorkerResponse>, Status> {
        let trace_id = convert::trace_id(request.metadata());
        let request = request.into_inner();
        if request.worker_id.is_empty() {
            return Err(Status::invalid_argument("worker_id: required"));
        }
        let by = if request.sender.is_empty() { "anonymous" } else { &request.sender };
        let row = self.workers.cancel(&request.worker_id, by, &request.reason, &trace_id).await?;
        Ok(Response::new(pb::CancelWorkerResponse { worker: Some(convert::worker(row)) }))
    }

    async fn list_memories(
        &self,
        request: Request<pb::ListMemoriesRequest>,
    ) -> Result<Response<pb::ListMemoriesResponse>, Status> {
        let request = request.into_inner();
        let rows =
            self.store.list_memories(&request.query, limit(request.limit, 100, 1000)).await.map_err(store_status)?;
        Ok(Response::new(pb::ListMemoriesResponse { memories: rows.into_iter().map(convert::memory).collect() }))
    }

    async fn remember(&self, request: Request<pb::RememberRequest>) -> Result<Response<pb::RememberResponse>, Status> {
        let trace_id = convert::trace_id(request.metadata());
        let request = request.into_inner();
        let key = request.key.trim();
        if key.is_empty() || key.len() > MAX_MEMORY_KEY_BYTES {
            return Err(Status::invalid_argument(format!("key: 1 to {MAX_MEMORY_KEY_BYTES} bytes required")));
        }
        if request.content.trim().is_empty() || request.content.len() > MAX_MEMORY_CONTENT_BYTES {
            return Err(Status::invalid_argument(format!("content: 1 to {MAX_MEMORY_CONTENT_BYTES} bytes required")));
        }
        let sender = if request.sender.is_empty() { "anonymous" } else { &request.sender };
        let now = SystemTime::now();
        let row = MemoryRow {
            key: key.to_owned(),
            content: request.content.clone(),
            source: format!("user:{sender}"),
            created_at: now,
            updated_at: now,
        };
        let stored = self.store.remember(&row).await.map_err(store_status)?;
        self.workers.audit(sender, "remember", key, &request.content, &trace_id).await;
        Ok(Response::new(pb::RememberResponse { memory: Some(convert::memory(stored)) }))
    }

    async fn forget(&self, request: Request<pb::ForgetRequest>) -> Result<Response<pb::ForgetResponse>, Status> {
        let trace_id = convert::trace_id(request.metadata());
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(Status::invalid_argument("key: required"));
        }
        let forgotten = self.store.forget(&request.key).await.map_err(store_status)?;
        let sender = if request.sender.is_empty() { "anonymous" } else { &request.sender };
        self.workers.audit(sender, "forget", &request.key, "", &trace_id).await;
        Ok(Response::new(pb::ForgetResponse { forgotten }))
    }

    async fn list_capabilities(
        &self,
        _request: Request<pb::ListCapabilitiesRequest>,
    ) -> Result<Response<pb::ListCapabilitiesResponse>, Status> {
        // Asking the broker first records any capability that arrived with a new version.
        let templates = self.workers.templates().await?;
        let capabilities = self.store.list_capabilities().await.map_err(store_status)?;
        Ok(Response::new(pb::ListCapabilitiesResponse {
            capabilities: capabilities.into_iter().map(convert::capability).collect(),
            templates: templates
                .into_iter()
                .map(|t| pb::ActiveTemplate {
                    name: t.name,
                    version: t.version,
                    runtime: t.runtime,
                    description: t.description,
                    runtime_note: t.runtime_note,
                })
                .collect(),
        }))
    }

    async fn list_changes(
        &self,
        _request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let records = self.changes.list("").await?;
        Ok(Response::new(pb::ListChangesResponse { changes: records.into_iter().map(changes::record).collect() }))
    }

    async fn get_change(
        &self,
        request: Request<pb::GetChangeRequest>,
    ) -> Result<Response<pb::GetChangeResponse>, Status> {
        let view = self.changes.get(request.into_inner().pr_number).await?;
        Ok(Response::new(pb::GetChangeResponse { change: Some(changes::view(view)) }))
    }

    async fn approve_change(
        &self,
        request: Request<pb::ApproveChangeRequest>,
    ) -> Result<Response<pb::ApproveChangeResponse>, Status> {
        let trace_id = convert::trace_id(request.metadata());
        let view = changes::approve(&self.changes, request.into_inner(), trace_id).await?;
        Ok(Response::new(pb::ApproveChangeResponse { change: Some(changes::view(view)) }))
    }

    async fn reject_change(
        &self,
        request: Request<pb::RejectChangeRequest>,
    ) -> Result<Response<pb::RejectChangeResponse>, Status> {
        let request = request.into_inner();
        let view = self.changes.reject(request.pr_number, &request.reason, &request.rejected_by).await?;
        Ok(Response::new(pb::RejectChangeResponse { change: Some(changes::view(view)) }))
    }

    async fn list_template_versions(
        &self,
        request: Request<pb::ListTemplateVersionsRequest>,
    ) -> Result<Response<pb::ListTemplateVersionsResponse>, Status> {
        let versions = self.changes.versions(&request.into_inner().template).await?;
        Ok(Response::new(pb::ListTemplateVersionsResponse {
            versions: versions.into_iter().map(changes::version).collect(),
        }))
    }

    async fn rollback_template(
        &self,
        request: Request<pb::RollbackTemplateRequest>,
    ) -> Result<Response<pb::RollbackTemplateResponse>, Status> {
        let request = request.into_inner();
        let version = self
            .changes
            .rollback(&request.template, &request.version_id, &request.requested_by, &request.reason)
            .await?;
        Ok(Response::new(pb::RollbackTemplateResponse { version: Some(changes::version(version)) }))
    }
}
