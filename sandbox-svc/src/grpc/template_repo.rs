//! The template-repository RPCs: proposals, template builds (streamed) and version moves.

use std::pin::Pin;

use agentstudio_proto::sandbox::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{SandboxGrpc, convert};
use crate::broker::{Broker, BrokerError};
use crate::template::registry::VersionRecord;
use crate::template_repo::BUILD_LOG_BUFFER;

pub type BuildStream = Pin<Box<dyn Stream<Item = Result<pb::BuildTemplateEvent, Status>> + Send>>;

impl SandboxGrpc {
    pub(super) async fn propose(&self, request: pb::ProposeChangeRequest) -> Result<pb::ProposeChangeResponse, Status> {
        let number = Some(request.pull_request_number).filter(|n| *n != 0);
        let pr = self
            .broker
            .propose_change(&request.sandbox_id, &request.title, &request.body, number)
            .await
            .map_err(|e| self.status("ProposeChange", e))?;
        Ok(pb::ProposeChangeResponse { pull_request: Some(convert::pull_request(pr)) })
    }

    /// Runs the build in its own task (a client that goes away does not abort it half-recorded)
    /// and streams its redacted log, then the version.
    pub(super) fn build(&self, request: pb::BuildTemplateRequest) -> Result<BuildStream, Status> {
        let status = |e| self.status("BuildTemplate", e);
        if request.template.is_empty() {
            return Err(status(BrokerError::invalid("template", "must not be empty")));
        }
        if !request.git_sha.is_empty() && !request.git_sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(status(BrokerError::invalid("git_sha", format!("{:?} is not a commit SHA", request.git_sha))));
        }
        let (events, receiver) = mpsc::channel(BUILD_LOG_BUFFER);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let (log, mut lines) = mpsc::channel::<String>(BUILD_LOG_BUFFER);
            let forward = {
                let (events, broker) = (events.clone(), broker.clone());
                tokio::spawn(async move {
                    while let Some(line) = lines.recv().await {
                        let line = broker.redactor().redact_str(&line).into_owned();
                        let event = pb::build_template_event::Event::Log(line);
                        // A departed client stops the log, not the build.
                        let _ = events.send(Ok(pb::BuildTemplateEvent { event: Some(event) })).await;
                    }
                })
            };
            let repo = broker.repo().clone();
            let result = repo.build(&request.template, &request.git_sha, request.pr_number, log).await;
            let _ = forward.await;
            let last = match result {
                Ok(record) => {
                    let version = version_proto(&broker, record);
                    Ok(pb::BuildTemplateEvent {
                        event: Some(pb::build_template_event::Event::Version(Box::new(version))),
                    })
                }
                Err(error) => {
                    let message = broker.redactor().redact_str(&error.to_string()).into_owned();
                    Err(convert::status(&error, message))
                }
            };
            let _ = events.send(last).await;
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    pub(super) fn versions(
        &self,
        request: pb::ListTemplateVersionsRequest,
    ) -> Result<pb::ListTemplateVersionsResponse, Status> {
        if request.template.is_empty() {
            return Err(self.status("ListTemplateVersions", BrokerError::invalid("template", "must not be empty")));
        }
        let records = self.broker.repo().registry.list(&request.template);
        if records.is_empty() {
            return Err(self.status(
                "ListTemplateVersions",
                BrokerError::NotFound(format!("template {:?} has no versions", request.template)),
            ));
        }
        let versions = records.into_iter().map(|record| version_proto(&self.broker, record)).collect();
        Ok(pb::ListTemplateVersionsResponse { versions })
    }

    pub(super) fn activate(
        &self,
        method: &'static str,
        template: &str,
        version_id: &str,
        rollback: bool,
    ) -> Result<pb::TemplateVersion, Status> {
        let record = self.broker.repo().activate(template, version_id, rollback).map_err(|e| self.status(method, e))?;
        Ok(version_proto(&self.broker, record))
    }
}

/// A version as the wire shows it: whether it is active, and the smoke test and capabilities of
/// its manifest (empty for a version whose manifest did not parse).
fn version_proto(broker: &Broker, record: VersionRecord) -> pb::TemplateVersion {
    let active = broker.repo().registry.active_id(&record.template).as_deref() == Some(record.version_id.as_str());
    let view = broker.template_version(&record.template, &record.version_id).ok();
    let (smoke_test, capabilities) = view.map(|v| (v.smoke_test, v.template.capabilities)).unwrap_or_default();
    convert::template_version(record, active, smoke_test, capabilities)
}
