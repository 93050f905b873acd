//! A process as the broker tracks it, and the pump that moves its output into the spool.
//!
//! The pump runs for the whole life of the process whether or not anyone is attached: it is
//! the only reader of the provider's output, masks secrets (per stream, across chunk
//! boundaries) and appends to the spool. Clients only ever read the spool.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::ProcessView;
use crate::provider::{ProcessControl, ProviderEvent};
use crate::redact::Redactor;
use crate::spool::{EventBody, Spool};

pub(super) struct ProcessEntry {
    pub id: String,
    pub argv: Vec<String>,
    pub tag: String,
    pub cwd: String,
    pub started_at: SystemTime,
    pub pid: u32,
    pub spool: Arc<Spool>,
    pub control: Arc<dyn ProcessControl>,
    pub exit_code: Mutex<Option<i32>>,
}

impl ProcessEntry {
    pub fn is_running(&self) -> bool {
        !self.spool.head().finished
    }

    pub fn view(&self) -> ProcessView {
        let head = self.spool.head();
        ProcessView {
            process_id: self.id.clone(),
            argv: self.argv.clone(),
            tag: self.tag.clone(),
            cwd: self.cwd.clone(),
            running: !head.finished,
            exit_code: *self.exit_code.lock().expect("lock poisoned"),
            pid: if head.finished { 0 } else { self.pid },
            started_at: self.started_at,
            last_seq: head.last_seq,
        }
    }
}

/// Moves every provider event into the spool until the process exits, then finishes the spool.
/// On `handover` (an orderly stop that leaves the process to the next broker run) it stops
/// appending and leaves the spool unfinished, for the next run to continue after its last seq.
pub(super) async fn pump(
    entry: Arc<ProcessEntry>,
    mut events: mpsc::Receiver<ProviderEvent>,
    redactor: Redactor,
    handover: CancellationToken,
) {
    let mut stdout = redactor.stream();
    let mut stderr = redactor.stream();
    let append = |body: EventBody| {
        if let Err(error) = entry.spool.append(&body) {
            // Disk full or gone: the output is lost, and loudly so.
            tracing::error!(process_id = %entry.id, %error, "cannot spool process output");
        }
    };
    let flush = |stdout: &mut crate::redact::StreamRedactor, stderr: &mut crate::redact::StreamRedactor| {
        let (out, err) = (stdout.finish(), stderr.finish());
        if !out.is_empty() {
            append(EventBody::Stdout(out));
        }
        if !err.is_empty() {
            append(EventBody::Stderr(err));
        }
    };
    let mut exit = None;
    loop {
        let event = tokio::select! {
            biased;
            // Bytes the maskers still hold back are not flushed: they may begin a secret whose
            // rest the next run sees in a fresh masker. They fall into the gap it reports.
            () = handover.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(event) = event else { break };
        match event {
            ProviderEvent::Stdout(data) => append_masked(&append, stdout.push(&data), EventBody::Stdout),
            ProviderEvent::Stderr(data) => append_masked(&append, stderr.push(&data), EventBody::Stderr),
            ProviderEvent::Gap(reason) => {
                // What came before the gap goes out before it.
                flush(&mut stdout, &mut stderr);
                append(EventBody::Truncated { first_available_seq: 0 });
                let note = format!("\n[agent-studio] output lost here: {reason}\n");
                append_masked(&append, redactor.redact_bytes(note.as_bytes()).into_owned().into(), EventBody::Stderr);
                tracing::warn!(process_id = %entry.id, %reason, "process output gap recorded");
            }
            ProviderEvent::Exited { exit_code, signal } => {
                exit = Some((exit_code, signal));
                break;
            }
        }
    }
    flush(&mut stdout, &mut stderr);
    let (exit_code, signal) = exit.unwrap_or_else(|| {
        tracing::warn!(process_id = %entry.id, "provider lost the process before it reported an exit");
        (-1, 0)
    });
    *entry.exit_code.lock().expect("lock poisoned") = Some(exit_code);
    append(EventBody::Exited { exit_code, signal });
    entry.spool.finish();
}

fn append_masked(append: &impl Fn(EventBody), masked: Bytes, wrap: fn(Bytes) -> EventBody) {
    // The masker may hold back a possible secret prefix, leaving nothing to emit yet.
    if !masked.is_empty() {
        append(wrap(masked));
    }
}
