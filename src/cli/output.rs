//! Printing a process's event stream, resuming after the last seq when the stream drops.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use tonic::{Code, Streaming};

use super::client::{BrokerClient, describe};

/// Reattach attempts after a dropped stream before giving up.
const MAX_RESUMES: u32 = 5;

/// Prints events until `exited`; returns the exit code to exit with (128 + signal if signalled).
pub async fn follow(
    client: &mut BrokerClient,
    sandbox_id: &str,
    process_id: Option<String>,
    mut stream: Streaming<pb::ProcessEvent>,
    mut last_seq: u64,
) -> anyhow::Result<ExitCode> {
    let mut process_id = process_id;
    let mut resumes = 0;
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                resumes = 0;
                process_id.get_or_insert_with(|| event.process_id.clone());
                last_seq = event.seq;
                if let Some(code) = print_event(event)? {
                    return Ok(code);
                }
            }
            Ok(None) => {
                anyhow::bail!("the stream ended before the process exited (last seq {last_seq})")
            }
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal) => {
                let Some(process_id) = process_id.clone() else {
                    return Err(describe(status));
                };
                resumes += 1;
                if resumes > MAX_RESUMES {
                    return Err(describe(status).context(format!("giving up after {MAX_RESUMES} reattach attempts")));
                }
                eprintln!("[studio] stream dropped ({}); reattaching after seq {last_seq}", status.message());
                tokio::time::sleep(Duration::from_millis(200 * u64::from(resumes))).await;
                let request =
                    pb::AttachProcessRequest { sandbox_id: sandbox_id.to_owned(), process_id, after_seq: last_seq };
                match client.attach_process(request).await {
                    Ok(response) => stream = response.into_inner(),
                    Err(status) if status.code() == Code::Unavailable => continue,
                    Err(status) => return Err(describe(status)),
                }
            }
            Err(status) => return Err(describe(status)),
        }
    }
}

fn print_event(event: pb::ProcessEvent) -> anyhow::Result<Option<ExitCode>> {
    match event.event {
        Some(Event::Stdout(data)) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
        Some(Event::Stderr(data)) => {
            let mut err = std::io::stderr().lock();
            err.write_all(&data)?;
            err.flush()?;
        }
        Some(Event::Truncated(t)) => {
            eprintln!("[studio] output before seq {} is no longer spooled", t.first_available_seq);
        }
        Some(Event::Exited(exited)) => {
            let code = if exited.signal != 0 { 128 + exited.signal } else { exited.exit_code };
            return Ok(Some(ExitCode::from(code.clamp(0, 255) as u8)));
        }
        Some(Event::Started(_)) | None => {}
    }
    Ok(None)
}
