//! The smoke test of a new template version: its manifest's command in a fresh sandbox of that
//! exact version (not the active one), judged by the exit code.

use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;

use crate::broker_client::{BrokerClient, describe};

/// Longest a smoke test may run.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(300);
/// Output kept to explain a failure.
const OUTPUT_TAIL_BYTES: usize = 2_048;

pub struct SmokeResult {
    pub passed: bool,
    /// "exit 0", "exit 127", "timed out after 300s", "could not start: …".
    pub outcome: String,
    pub output_tail: String,
}

pub async fn run(broker: &BrokerClient, template: &str, version: &pb::TemplateVersion) -> SmokeResult {
    let failed = |outcome: String| SmokeResult { passed: false, outcome, output_tail: String::new() };
    if version.smoke_test.trim().is_empty() {
        return failed("the manifest has no smoke_test".into());
    }
    let create = pb::CreateSandboxRequest {
        template: template.to_owned(),
        template_version: version.version_id.clone(),
        timeout: prost_types::Duration::try_from(SMOKE_TIMEOUT + Duration::from_secs(60)).ok(),
        metadata: [("agentstudio.smoke_test".to_owned(), version.version_id.clone())].into(),
        idempotency_key: format!("smoke-{}", uuid::Uuid::new_v4().simple()),
        env: Default::default(),
    };
    let sandbox = match broker.create_sandbox(create).await {
        Ok(sandbox) => sandbox,
        Err(status) => return failed(format!("could not create a sandbox of the new version: {}", describe(&status))),
    };
    let result = tokio::time::timeout(SMOKE_TIMEOUT, run_in(broker, &sandbox.sandbox_id, &version.smoke_test)).await;
    let _ = broker.kill_sandbox(&sandbox.sandbox_id).await;
    result.unwrap_or_else(|_| failed(format!("timed out after {}s", SMOKE_TIMEOUT.as_secs())))
}

async fn run_in(broker: &BrokerClient, sandbox_id: &str, command: &str) -> SmokeResult {
    let request = pb::StartProcessRequest {
        sandbox_id: sandbox_id.to_owned(),
        argv: vec!["bash".into(), "-c".into(), command.to_owned()],
        cwd: String::new(),
        env: Default::default(),
        tag: "smoke-test".into(),
        stdin: false,
    };
    let mut stream = match broker.raw().start_process(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return SmokeResult {
                passed: false,
                outcome: format!("could not start: {}", describe(&status)),
                output_tail: String::new(),
            };
        }
    };
    let mut output: Vec<u8> = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(pb::process_event::Event::Stdout(data)) | Some(pb::process_event::Event::Stderr(data)) => {
                    output.extend_from_slice(&data);
                    if output.len() > OUTPUT_TAIL_BYTES * 2 {
                        output.drain(..output.len() - OUTPUT_TAIL_BYTES);
                    }
                }
                Some(pb::process_event::Event::Exited(exited)) => {
                    let start = output.len().saturating_sub(OUTPUT_TAIL_BYTES);
                    let tail = String::from_utf8_lossy(&output[start..]).into_owned();
                    let outcome = if exited.signal != 0 {
                        format!("killed by signal {}", exited.signal)
                    } else {
                        format!("exit {}", exited.exit_code)
                    };
                    return SmokeResult {
                        passed: exited.exit_code == 0 && exited.signal == 0,
                        outcome,
                        output_tail: tail,
                    };
                }
                _ => {}
            },
            Ok(None) => {
                return SmokeResult {
                    passed: false,
                    outcome: "the output stream ended before the exit".into(),
                    output_tail: String::new(),
                };
            }
            Err(status) => {
                return SmokeResult {
                    passed: false,
                    outcome: format!("stream failed: {}", describe(&status)),
                    output_tail: String::new(),
                };
            }
        }
    }
}
