//! Proto ⇄ domain conversions. Incoming messages are validated here, naming the bad field.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use agentstudio_proto::sandbox::v1 as pb;
use tonic::Status;

use crate::broker::BrokerError;
use crate::broker::model::{self, EndReason, ProcessView, SandboxState, SandboxView, TemplateView};
use crate::provider::ProcessSignal as Signal;
use crate::spool::{EventBody, SpooledEvent};
use crate::template::Runtime;
use crate::template::registry::{VersionRecord, VersionStatus};
use crate::template_repo::Approval;
use crate::workspace_path::WorkspacePath;

/// Longest argv accepted, in entries.
const MAX_ARGV: usize = 4096;
/// Longest tag or idempotency key, in bytes.
const MAX_LABEL_BYTES: usize = 256;

pub fn sorted(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// A proto Duration as a std one: negative, out-of-range nanos or overflow are rejected.
pub fn duration(field: &str, value: Option<prost_types::Duration>) -> Result<Option<Duration>, BrokerError> {
    let Some(value) = value else { return Ok(None) };
    if value.seconds < 0 || value.nanos < 0 {
        return Err(BrokerError::invalid(
            field,
            format!("must not be negative (got {}s {}ns)", value.seconds, value.nanos),
        ));
    }
    if value.nanos >= 1_000_000_000 {
        return Err(BrokerError::invalid(field, format!("nanos must be below 1e9 (got {})", value.nanos)));
    }
    let duration = Duration::new(value.seconds as u64, value.nanos as u32);
    Ok(if duration.is_zero() { None } else { Some(duration) })
}

pub fn label(field: &str, value: String) -> Result<String, BrokerError> {
    if value.len() > MAX_LABEL_BYTES {
        return Err(BrokerError::invalid(
            field,
            format!("is {} bytes, at most {MAX_LABEL_BYTES} allowed", value.len()),
        ));
    }
    Ok(value)
}

pub fn create_sandbox(request: pb::CreateSandboxRequest) -> Result<model::CreateSandbox, BrokerError> {
    if request.template.is_empty() {
        return Err(BrokerError::invalid("template", "must not be empty"));
    }
    let env = sorted(request.env);
    model::validate_env("env", &env)?;
    let metadata = sorted(request.metadata);
    model::validate_map("metadata", &metadata)?;
    let timeout = duration("timeout", request.timeout)?;
    let key = label("idempotency_key", request.idempotency_key)?;
    Ok(model::CreateSandbox {
        template: request.template,
        env,
        timeout,
        metadata,
        idempotency_key: if key.is_empty() { None } else { Some(key) },
        template_version: Some(label("template_version", request.template_version)?).filter(|v| !v.is_empty()),
    })
}

pub fn start_process(request: pb::StartProcessRequest) -> Result<model::StartProcess, BrokerError> {
    if request.argv.is_empty() {
        return Err(BrokerError::invalid("argv", "must not be empty: give the program and its arguments"));
    }
    if request.argv[0].is_empty() {
        return Err(BrokerError::invalid("argv", "argv[0] (the program) must not be empty"));
    }
    if request.argv.len() > MAX_ARGV {
        return Err(BrokerError::invalid(
            "argv",
            format!("{} entries, at most {MAX_ARGV} allowed", request.argv.len()),
        ));
    }
    if let Some(index) = request.argv.iter().position(|arg| arg.contains('\0')) {
        return Err(BrokerError::invalid("argv", format!("argv[{index}] contains a NUL byte")));
    }
    let cwd = match request.cwd.as_str() {
        "" | "." => None,
        raw => Some(WorkspacePath::parse(raw).map_err(|e| BrokerError::invalid("cwd", e.to_string()))?),
    };
    let env = sorted(request.env);
    model::validate_env("env", &env)?;
    Ok(model::StartProcess { argv: request.argv, cwd, env, tag: label("tag", request.tag)?, stdin: request.stdin })
}

pub fn workspace_path(raw: &str) -> Result<WorkspacePath, BrokerError> {
    WorkspacePath::parse(raw).map_err(|e| BrokerError::invalid("path", e.to_string()))
}

pub fn signal(raw: i32) -> Result<Signal, BrokerError> {
    match pb::Signal::try_from(raw) {
        Ok(pb::Signal::Sigterm) => Ok(Signal::Term),
        Ok(pb::Signal::Sigkill) => Ok(Signal::Kill),
        Ok(pb::Signal::Sigint) => Ok(Signal::Int),
        Ok(pb::Signal::Sighup) => Ok(Signal::Hup),
        Ok(pb::Signal::Unspecified) => Err(BrokerError::invalid(
            "signal",
            "must be set (SIGNAL_SIGTERM, SIGNAL_SIGKILL, SIGNAL_SIGINT or SIGNAL_SIGHUP)",
        )),
        Err(_) => Err(BrokerError::invalid("signal", format!("unknown value {raw}"))),
    }
}

pub fn sandbox(view: SandboxView) -> pb::Sandbox {
    let (ended_at, end_reason, end_message) = match view.ended {
        Some(ended) => {
            let reason = match ended.reason {
                EndReason::KilledByRequest => pb::SandboxEndReason::KilledByRequest,
                EndReason::TimedOut => pb::SandboxEndReason::TimedOut,
                EndReason::BrokerShutdown => pb::SandboxEndReason::BrokerShutdown,
            };
            (Some(timestamp(ended.at)), reason, ended.message)
        }
        None => (None, pb::SandboxEndReason::Unspecified, String::new()),
    };
    pb::Sandbox {
        sandbox_id: view.sandbox_id,
        template: view.template,
        state: match view.state {
            SandboxState::Running => pb::SandboxState::Running,
            SandboxState::Killed => pb::SandboxState::Killed,
        } as i32,
        created_at: Some(timestamp(view.created_at)),
        expires_at: Some(timestamp(view.expires_at)),
        metadata: view.metadata.into_iter().collect(),
        ended_at,
        end_reason: end_reason as i32,
        end_message,
        provider: view.provider.to_owned(),
        template_version: view.template_version,
        checkout_sha: view.checkout_sha.unwrap_or_default(),
    }
}

pub fn process_info(view: ProcessView) -> pb::ProcessInfo {
    pb::ProcessInfo {
        process_id: view.process_id,
        argv: view.argv,
        tag: view.tag,
        running: view.running,
        exit_code: view.exit_code,
        pid: view.pid,
        started_at: Some(timestamp(view.started_at)),
        last_seq: view.last_seq,
        cwd: view.cwd,
    }
}

pub fn process_event(process_id: &str, event: SpooledEvent) -> pb::ProcessEvent {
    use pb::process_event::{Event, Exited, Started, Truncated};
    let event_body = match event.body {
        EventBody::Started { pid } => Event::Started(Started { pid }),
        EventBody::Stdout(data) => Event::Stdout(data),
        EventBody::Stderr(data) => Event::Stderr(data),
        EventBody::Exited { exit_code, signal } => Event::Exited(Exited { exit_code, signal }),
        EventBody::Truncated { first_available_seq } => Event::Truncated(Truncated { first_available_seq }),
    };
    pb::ProcessEvent { process_id: process_id.to_owned(), seq: event.seq, event: Some(event_body) }
}

/// The explicit code mapping at the edge. Messages are masked by the caller.
pub fn status(error: &BrokerError, message: String) -> Status {
    match error {
        BrokerError::InvalidArgument { .. } => Status::invalid_argument(message),
        BrokerError::NotFound(_) => Status::not_found(message),
        BrokerError::ResourceExhausted(_) => Status::resource_exhausted(message),
        BrokerError::FailedPrecondition(_) => Status::failed_precondition(message),
        BrokerError::PermissionDenied(_) => Status::permission_denied(message),
        BrokerError::Unavailable(_) => Status::unavailable(message),
    }
}

pub fn template(view: TemplateView) -> pb::Template {
    let runtime = match view.runtime {
        Runtime::Claude => "claude",
        Runtime::Shell => "shell",
    };
    let template = view.template;
    let active_version = template_version(view.version, true, view.smoke_test.clone(), template.capabilities.clone());
    pb::Template {
        template_checkout: template.checkout.is_some(),
        active_version: Some(active_version),
        name: template.name,
        description: template.description,
        runtime: runtime.to_owned(),
        runtime_note: view.runtime_note,
        version: template.version,
        network: template.network,
        default_timeout: prost_types::Duration::try_from(template.default_timeout).ok(),
        smoke_test: view.smoke_test,
        capabilities: template.capabilities,
    }
}

pub fn template_version(
    record: VersionRecord,
    active: bool,
    smoke_test: String,
    capabilities: Vec<String>,
) -> pb::TemplateVersion {
    let millis = |ms: i64| timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    pb::TemplateVersion {
        version_id: record.version_id,
        template: record.template,
        git_sha: record.git_sha,
        pr_number: record.pr_number,
        built_at: Some(millis(record.built_at)),
        status: match record.status {
            VersionStatus::Building => pb::TemplateVersionStatus::Building,
            VersionStatus::Built => pb::TemplateVersionStatus::Built,
            VersionStatus::Failed => pb::TemplateVersionStatus::Failed,
        } as i32,
        active,
        promoted_at: record.promoted_at.map(millis),
        builder: record.builder,
        artifact: record.artifact,
        smoke_test,
        capabilities,
        error: record.error,
    }
}

pub fn pull_request(pr: codehost::PullRequest) -> pb::PullRequest {
    pb::PullRequest {
        number: pr.number,
        url: pr.url,
        title: pr.title,
        state: pr.state.as_str().to_owned(),
        head_sha: pr.head_sha,
        base_sha: pr.base_sha,
        diff: pr.diff,
        files: pr
            .files
            .into_iter()
            .map(|f| pb::ChangedFile { path: f.path, status: f.status, additions: f.additions, deletions: f.deletions })
            .collect(),
        body: pr.body,
        head_branch: pr.head_branch,
        base_branch: pr.base_branch,
        merge_sha: pr.merge_sha.unwrap_or_default(),
        author: pr.author,
        created_at: Some(timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(pr.created_at.max(0) as u64))),
        diff_truncated: pr.diff_truncated,
    }
}

pub fn pr_state(raw: &str) -> Result<Option<codehost::PrState>, BrokerError> {
    match raw {
        "" | "all" => Ok(None),
        "open" => Ok(Some(codehost::PrState::Open)),
        "closed" => Ok(Some(codehost::PrState::Closed)),
        "merged" => Ok(Some(codehost::PrState::Merged)),
        other => Err(BrokerError::invalid("state", format!("{other:?} is not one of open, closed, merged, all"))),
    }
}

pub fn approval(approval: Option<pb::Approval>) -> Result<Option<Approval>, BrokerError> {
    let Some(approval) = approval else { return Ok(None) };
    let expires_at = match approval.expires_at {
        Some(t) if t.seconds >= 0 => {
            Some(SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32))
        }
        _ => None,
    };
    Ok(Some(Approval {
        approval_id: approval.approval_id,
        approver: approval.approver,
        head_sha: approval.head_sha,
        report_digest: approval.report_digest,
        expires_at,
        override_reason: approval.override_reason,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_durations_name_the_field() {
        let negative = prost_types::Duration { seconds: -5, nanos: 0 };
        let err = duration("timeout", Some(negative)).unwrap_err().to_string();
        assert!(err.starts_with("timeout: must not be negative"), "{err}");
        let bad_nanos = prost_types::Duration { seconds: 1, nanos: 2_000_000_000 };
        assert!(duration("timeout", Some(bad_nanos)).unwrap_err().to_string().contains("nanos"));
        assert_eq!(duration("timeout", Some(prost_types::Duration { seconds: 0, nanos: 0 })).unwrap(), None);
    }

    #[test]
    fn unknown_and_unset_signals_are_rejected() {
        assert!(signal(99).unwrap_err().to_string().contains("unknown value 99"));
        assert!(signal(0).unwrap_err().to_string().starts_with("signal: must be set"));
        assert_eq!(signal(pb::Signal::Sigkill as i32).unwrap(), Signal::Kill);
    }
}
