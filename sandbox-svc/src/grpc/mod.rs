//! The thin gRPC adapter: proto in, validated domain call, proto (or masked `Status`) out.

mod convert;
pub mod message_limit;
mod stream;
mod template_repo;

use std::pin::Pin;

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::sandbox_service_server::SandboxService;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::broker::{Broker, BrokerError};

/// The `agentstudio.sandbox.v1.SandboxService` implementation.
pub struct SandboxGrpc {
    broker: Broker,
    /// Cancelled at shutdown: open output streams end with `UNAVAILABLE`.
    shutdown: CancellationToken,
}

impl SandboxGrpc {
    pub fn new(broker: Broker, shutdown: CancellationToken) -> SandboxGrpc {
        SandboxGrpc { broker, shutdown }
    }

    /// Logs the full error here, where it is handled, and returns it masked.
    fn status(&self, method: &'static str, error: BrokerError) -> Status {
        let message = self.broker.redactor().redact_str(&error.to_string()).into_owned();
        match &error {
            BrokerError::Unavailable(_) => {
                tracing::warn!(method, error = %message, "request failed")
            }
            _ => tracing::debug!(method, error = %message, "request rejected"),
        }
        convert::status(&error, message)
    }

    fn event_stream(
        &self,
        spool: std::sync::Arc<crate::spool::Spool>,
        process_id: String,
        after_seq: u64,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Response<EventStream> {
        Response::new(Box::pin(stream::follow(spool, process_id, after_seq, permit, self.shutdown.clone())))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ProcessEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SandboxService for SandboxGrpc {
    async fn create_sandbox(
        &self,
        request: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::CreateSandboxResponse>, Status> {
        let status = |e| self.status("CreateSandbox", e);
        let create = convert::create_sandbox(request.into_inner()).map_err(status)?;
        let view = self.broker.create_sandbox(create).await.map_err(status)?;
        Ok(Response::new(pb::CreateSandboxResponse { sandbox: Some(convert::sandbox(view)) }))
    }

    async fn get_sandbox(
        &self,
        request: Request<pb::GetSandboxRequest>,
    ) -> Result<Response<pb::GetSandboxResponse>, Status> {
        let view =
            self.broker.get_sandbox(&request.into_inner().sandbox_id).map_err(|e| self.status("GetSandbox", e))?;
        Ok(Response::new(pb::GetSandboxResponse { sandbox: Some(convert::sandbox(view)) }))
    }

    async fn kill_sandbox(
        &self,
        request: Request<pb::KillSandboxRequest>,
    ) -> Result<Response<pb::KillSandboxResponse>, Status> {
        self.broker.kill_sandbox(&request.into_inner().sandbox_id).await.map_err(|e| self.status("KillSandbox", e))?;
        Ok(Response::new(pb::KillSandboxResponse {}))
    }

    async fn list_sandboxes(
        &self,
        request: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let request = request.into_inner();
        let filter = convert::sorted(request.metadata);
        let views = self.broker.list_sandboxes(&filter, request.include_ended);
        Ok(Response::new(pb::ListSandboxesResponse { sandboxes: views.into_iter().map(convert::sandbox).collect() }))
    }

    async fn set_sandbox_timeout(
        &self,
        request: Request<pb::SetSandboxTimeoutRequest>,
    ) -> Result<Response<pb::SetSandboxTimeoutResponse>, Status> {
        let status = |e| self.status("SetSandboxTimeout", e);
        let request = request.into_inner();
        let timeout = convert::duration("timeout", request.timeout)
            .and_then(|t| t.ok_or_else(|| BrokerError::invalid("timeout", "must be set and positive")))
            .map_err(status)?;
        let view = self.broker.set_timeout(&request.sandbox_id, timeout).map_err(status)?;
        Ok(Response::new(pb::SetSandboxTimeoutResponse { sandbox: Some(convert::sandbox(view)) }))
    }

    type StartProcessStream = EventStream;

    async fn start_process(&self, request: Request<pb::StartProcessRequest>) -> Result<Response<EventStream>, Status> {
        let status = |e| self.status("StartProcess", e);
        let request = request.into_inner();
        let sandbox_id = request.sandbox_id.clone();
        let start = convert::start_process(request).map_err(status)?;
        // Take the stream permit first: a process must not start if its stream cannot be served.
        let permit = self.broker.stream_permit().map_err(status)?;
        let (process_id, spool) = self.broker.start_process(&sandbox_id, start).await.map_err(status)?;
        Ok(self.event_stream(spool, process_id, 0, permit))
    }

    type AttachProcessStream = EventStream;

    async fn attach_process(
        &self,
        request: Request<pb::AttachProcessRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let status = |e| self.status("AttachProcess", e);
        let request = request.into_inner();
        let spool = self.broker.process_spool(&request.sandbox_id, &request.process_id).map_err(status)?;
        let last_seq = spool.head().last_seq;
        if request.after_seq > last_seq {
            // A client cannot have seen it: resuming there would skip events or wait for nothing.
            return Err(status(BrokerError::invalid(
                "after_seq",
                format!(
                    "{} is beyond the last event of process {:?} (seq {last_seq})",
                    request.after_seq, request.process_id
                ),
            )));
        }
        let permit = self.broker.stream_permit().map_err(status)?;
        Ok(self.event_stream(spool, request.process_id, request.after_seq, permit))
    }

    async fn send_process_input(
        &self,
        request: Request<pb::SendProcessInputRequest>,
    ) -> Result<Response<pb::SendProcessInputResponse>, Status> {
        let request = request.into_inner();
        self.broker
            .send_input(&request.sandbox_id, &request.process_id, request.data)
            .await
            .map_err(|e| self.status("SendProcessInput", e))?;
        Ok(Response::new(pb::SendProcessInputResponse {}))
    }

    async fn close_process_input(
        &self,
        request: Request<pb::CloseProcessInputRequest>,
    ) -> Result<Response<pb::CloseProcessInputResponse>, Status> {
        let request = request.into_inner();
        self.broker
            .close_input(&request.sandbox_id, &request.process_id)
            .await
            .map_err(|e| self.status("CloseProcessInput", e))?;
        Ok(Response::new(pb::CloseProcessInputResponse {}))
    }

    async fn signal_process(
        &self,
        request: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::SignalProcessResponse>, Status> {
        let status = |e| self.status("SignalProcess", e);
        let request = request.into_inner();
        let signal = convert::signal(request.signal).map_err(status)?;
        self.broker.signal(&request.sandbox_id, &request.process_id, signal).await.map_err(status)?;
        Ok(Response::new(pb::SignalProcessResponse {}))
    }

    async fn list_processes(
        &self,
        request: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        let views = self
            .broker
            .list_processes(&request.into_inner().sandbox_id)
            .map_err(|e| self.status("ListProcesses", e))?;
        Ok(Response::new(pb::ListProcessesResponse {
            processes: views.into_iter().map(convert::process_info).collect(),
        }))
    }

    async fn write_file(
        &self,
        request: Request<pb::WriteFileRequest>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let status = |e| self.status("WriteFile", e);
        let request = request.into_inner();
        let path = convert::workspace_path(&request.path).map_err(status)?;
        self.broker.write_file(&request.sandbox_id, &path, request.content).await.map_err(status)?;
        Ok(Response::new(pb::WriteFileResponse {}))
    }

    async fn read_file(&self, request: Request<pb::ReadFileRequest>) -> Result<Response<pb::ReadFileResponse>, Status> {
        let status = |e| self.status("ReadFile", e);
        let request = request.into_inner();
        let path = convert::workspace_path(&request.path).map_err(status)?;
        let content = self.broker.read_file(&request.sandbox_id, &path).await.map_err(status)?;
        Ok(Response::new(pb::ReadFileResponse { content }))
    }

    async fn list_templates(
        &self,
        _request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let templates = self.broker.templates().into_iter().map(convert::template).collect();
        let repo = self.broker.repo();
        let code_host = pb::CodeHostInfo {
            kind: repo.code_host.kind().to_owned(),
            repository: repo.code_host.repository(),
            default_branch: repo.code_host.default_branch(),
            builder: repo.builder.name().to_owned(),
        };
        Ok(Response::new(pb::ListTemplatesResponse { templates, code_host: Some(code_host) }))
    }

    async fn propose_change(
        &self,
        request: Request<pb::ProposeChangeRequest>,
    ) -> Result<Response<pb::ProposeChangeResponse>, Status> {
        self.propose(request.into_inner()).await.map(Response::new)
    }

    async fn get_pull_request(
        &self,
        request: Request<pb::GetPullRequestRequest>,
    ) -> Result<Response<pb::GetPullRequestResponse>, Status> {
        let pr = self
            .broker
            .get_pull_request(request.into_inner().number)
            .await
            .map_err(|e| self.status("GetPullRequest", e))?;
        Ok(Response::new(pb::GetPullRequestResponse { pull_request: Some(convert::pull_request(pr)) }))
    }

    async fn list_pull_requests(
        &self,
        request: Request<pb::ListPullRequestsRequest>,
    ) -> Result<Response<pb::ListPullRequestsResponse>, Status> {
        let status = |e| self.status("ListPullRequests", e);
        let state = convert::pr_state(&request.into_inner().state).map_err(status)?;
        let prs = self.broker.list_pull_requests(state).await.map_err(status)?;
        Ok(Response::new(pb::ListPullRequestsResponse {
            pull_requests: prs.into_iter().map(convert::pull_request).collect(),
        }))
    }

    async fn merge_pull_request(
        &self,
        request: Request<pb::MergePullRequestRequest>,
    ) -> Result<Response<pb::MergePullRequestResponse>, Status> {
        let status = |e| self.status("MergePullRequest", e);
        let request = request.into_inner();
        let approval = convert::approval(request.approval).map_err(status)?;
        let (pr, merge_sha) = self
            .broker
            .merge_pull_request(request.number, &request.expected_head_sha, approval.as_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MergePullRequestResponse { pull_request: Some(convert::pull_request(pr)), merge_sha }))
    }

    async fn close_pull_request(
        &self,
        request: Request<pb::ClosePullRequestRequest>,
    ) -> Result<Response<pb::ClosePullRequestResponse>, Status> {
        let request = request.into_inner();
        let pr = self
            .broker
            .close_pull_request(request.number, &request.comment)
            .await
            .map_err(|e| self.status("ClosePullRequest", e))?;
        Ok(Response::new(pb::ClosePullRequestResponse { pull_request: Some(convert::pull_request(pr)) }))
    }

    async fn revert_pull_request(
        &self,
        request: Request<pb::RevertPullRequestRequest>,
    ) -> Result<Response<pb::RevertPullRequestResponse>, Status> {
        let request = request.into_inner();
        let (pr, revert_sha) = self
            .broker
            .revert_pull_request(request.number, &request.reason)
            .await
            .map_err(|e| self.status("RevertPullRequest", e))?;
        Ok(Response::new(pb::RevertPullRequestResponse { pull_request: Some(convert::pull_request(pr)), revert_sha }))
    }

    type BuildTemplateStream = template_repo::BuildStream;

    async fn build_template(
        &self,
        request: Request<pb::BuildTemplateRequest>,
    ) -> Result<Response<Self::BuildTemplateStream>, Status> {
        self.build(request.into_inner()).map(Response::new)
    }

    async fn list_template_versions(
        &self,
        request: Request<pb::ListTemplateVersionsRequest>,
    ) -> Result<Response<pb::ListTemplateVersionsResponse>, Status> {
        self.versions(request.into_inner()).map(Response::new)
    }

    async fn promote_template(
        &self,
        request: Request<pb::PromoteTemplateRequest>,
    ) -> Result<Response<pb::PromoteTemplateResponse>, Status> {
        let request = request.into_inner();
        let version = self.activate("PromoteTemplate", &request.template, &request.version_id, false)?;
        Ok(Response::new(pb::PromoteTemplateResponse { version: Some(version) }))
    }

    async fn rollback_template(
        &self,
        request: Request<pb::RollbackTemplateRequest>,
    ) -> Result<Response<pb::RollbackTemplateResponse>, Status> {
        let request = request.into_inner();
        let version = self.activate("RollbackTemplate", &request.template, &request.version_id, true)?;
        Ok(Response::new(pb::RollbackTemplateResponse { version: Some(version) }))
    }
}
