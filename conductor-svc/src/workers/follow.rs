//! One worker's follower: reads the broker's output stream, fans it out, records progress,
//! enforces the wall-time budget and writes the worker's end.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use tonic::Code;

use super::runtime::OutputDigest;
use super::{Live, LiveEvent, StopCause, Workers, cancel_reason};
use crate::broker_client::{describe, jittered};
use crate::store::{WorkerKind, WorkerRow, WorkerState};

/// How often the last seen seq is written to the store while output flows.
const PERSIST_INTERVAL: Duration = Duration::from_millis(500);
/// Events replayed before the recorded seq on re-adoption, to rebuild the output tail for the summary.
const TAIL_REPLAY_EVENTS: u64 = 64;
/// Reconnect backoff while the broker is unreachable (platform facts §2.5: 1 s × 1.6, capped).
const RECONNECT_INITIAL: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

enum End {
    Exited {
        exit_code: i32,
        signal: i32,
    },
    Stopped(StopCause),
    TimedOut,
    Lost(String),
    /// The conductor is shutting down: leave the worker running for the next one to re-adopt.
    Shutdown,
}

/// Follows `row` until it ends. `stream` is the StartProcess stream of a fresh worker; `None`
/// attaches (re-adoption). Events with seq ≤ `suppress_through` were already delivered before a
/// restart: they feed the summary but are not sent to watchers again.
pub(super) async fn follow(
    workers: Workers,
    live: Arc<Live>,
    row: WorkerRow,
    mut stream: Option<tonic::Streaming<pb::ProcessEvent>>,
    suppress_through: u64,
) {
    let inner = &workers.inner;
    let mut digest = OutputDigest::new(&row.runtime);
    let started_at = row.started_at.unwrap_or(row.created_at);
    let wall_time = inner.budgets.worker_wall_time;
    let elapsed = SystemTime::now().duration_since(started_at).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + wall_time.saturating_sub(elapsed);
    let mut resume_after = if stream.is_some() { 0 } else { suppress_through.saturating_sub(TAIL_REPLAY_EVENTS) };
    let mut seen_seq = suppress_through;
    let mut persisted_seq = row.last_seq;
    let mut persist = tokio::time::interval(PERSIST_INTERVAL);
    let mut backoff = RECONNECT_INITIAL;
    let mut pending_delay: Option<Duration> = None;

    let end = loop {
        let Some(current) = stream.as_mut() else {
            if let Some(delay) = pending_delay.take() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = live.stop.cancelled() => break End::Stopped(stop_cause(&live)),
                    () = tokio::time::sleep_until(deadline) => break End::TimedOut,
                    () = inner.shutdown.cancelled() => break End::Shutdown,
                }
            }
            // (Re)attach after the last event we saw.
            let request = pb::AttachProcessRequest {
                sandbox_id: row.sandbox_id.clone(),
                process_id: row.process_id.clone(),
                after_seq: resume_after,
            };
            let mut client = inner.broker.raw();
            let attempt = tokio::select! {
                result = client.attach_process(request) => result,
                () = live.stop.cancelled() => break End::Stopped(stop_cause(&live)),
                () = tokio::time::sleep_until(deadline) => break End::TimedOut,
                () = inner.shutdown.cancelled() => break End::Shutdown,
            };
            match attempt {
                Ok(response) => {
                    stream = Some(response.into_inner());
                }
                Err(status) if status.code() == Code::NotFound => {
                    break End::Lost(format!("its sandbox is gone from the broker ({})", status.message()));
                }
                Err(status) => {
                    let delay = jittered(backoff);
                    let notice =
                        format!("broker unreachable ({}); retrying in {:.1}s", describe(&status), delay.as_secs_f64());
                    tracing::warn!(worker = %row.id, "{notice}");
                    let _ = live.events.send(LiveEvent::Notice(notice));
                    pending_delay = Some(delay);
                    backoff = backoff.mul_f64(1.6).min(RECONNECT_MAX);
                }
            }
            continue;
        };
        tokio::select! {
            message = current.message() => match message {
                Ok(Some(event)) => {
                    backoff = RECONNECT_INITIAL;
                    let seq = event.seq;
                    match event.event {
                        Some(Event::Stdout(data)) => {
                            digest.push(&data, true);
                            if seq > suppress_through {
                                let _ = live.events.send(LiveEvent::Output { seq, stderr: false, data });
                            }
                        }
                        Some(Event::Stderr(data)) => {
                            digest.push(&data, false);
                            if seq > suppress_through {
                                let _ = live.events.send(LiveEvent::Output { seq, stderr: true, data });
                            }
                        }
                        Some(Event::Exited(exited)) => {
                            seen_seq = seen_seq.max(seq);
                            break End::Exited { exit_code: exited.exit_code, signal: exited.signal };
                        }
                        Some(Event::Truncated(truncated)) => {
                            let notice = format!(
                                "the broker's spool dropped output before seq {} (SANDBOX_SPOOL_BYTES)",
                                truncated.first_available_seq
                            );
                            let _ = live.events.send(LiveEvent::Notice(notice));
                        }
                        Some(Event::Started(_)) | None => {}
                    }
                    seen_seq = seen_seq.max(seq);
                    resume_after = resume_after.max(seq);
                }
                Ok(None) => stream = None,
                Err(status) => {
                    let delay = jittered(backoff);
                    let notice = format!(
                        "lost the broker's output stream ({}); reattaching after seq {resume_after} in {:.1}s",
                        describe(&status),
                        delay.as_secs_f64()
                    );
                    tracing::warn!(worker = %row.id, "{notice}");
                    let _ = live.events.send(LiveEvent::Notice(notice));
                    stream = None;
                    pending_delay = Some(delay);
                    backoff = backoff.mul_f64(1.6).min(RECONNECT_MAX);
                }
            },
            () = live.stop.cancelled() => break End::Stopped(stop_cause(&live)),
            () = tokio::time::sleep_until(deadline) => break End::TimedOut,
            () = inner.shutdown.cancelled() => break End::Shutdown,
            _ = persist.tick() => {
                if seen_seq > persisted_seq {
                    if let Err(error) = inner.store.record_worker_seq(&row.id, seen_seq).await {
                        tracing::warn!(worker = %row.id, %error, "could not record progress");
                    } else {
                        persisted_seq = seen_seq;
                    }
                }
            }
        }
    };
    finish(&workers, &live, row, digest, seen_seq, end).await;
}

fn stop_cause(live: &Live) -> StopCause {
    live.stop_cause
        .lock()
        .expect("lock poisoned")
        .clone()
        .unwrap_or(StopCause { by: String::new(), reason: String::new() })
}

async fn finish(workers: &Workers, live: &Live, mut row: WorkerRow, mut digest: OutputDigest, seen_seq: u64, end: End) {
    let inner = &workers.inner;
    row.last_seq = row.last_seq.max(seen_seq);
    match end {
        End::Shutdown => {
            let _ = inner.store.record_worker_seq(&row.id, row.last_seq).await;
            return;
        }
        End::Exited { exit_code, signal } => {
            row.exit_code = Some(exit_code);
            row.summary = digest.summary(exit_code);
            let claude_error = digest.result.as_ref().is_some_and(|r| r.is_error);
            row.state = if exit_code == 0 && !claude_error { WorkerState::Succeeded } else { WorkerState::Failed };
            row.end_reason =
                if signal != 0 { format!("killed by signal {signal}") } else { format!("exited {exit_code}") };
            if let Some(result) = &digest.result {
                row.cost_usd = result.total_cost_usd;
                row.num_turns = result.num_turns;
            }
        }
        End::Stopped(cause) => {
            row.state = WorkerState::Cancelled;
            row.end_reason = cancel_reason(&cause.by, &cause.reason);
            row.summary = format!("{}. Output so far:\n{}", row.end_reason, digest.tail());
        }
        End::TimedOut => {
            row.state = WorkerState::TimedOut;
            row.end_reason = format!(
                "wall time {} exceeded (CONDUCTOR_WORKER_WALL_TIME)",
                humantime::format_duration(inner.budgets.worker_wall_time)
            );
            row.summary = format!("{}. Output so far:\n{}", row.end_reason, digest.tail());
        }
        End::Lost(reason) => {
            row.state = WorkerState::Lost;
            row.end_reason = reason;
            row.summary = format!("{}. Output seen:\n{}", row.end_reason, digest.tail());
        }
    }
    // Worker sandboxes are single-use: release it whatever the end (idempotent on the broker) —
    // except a successful infrastructure worker's, whose edits are proposed from it first (the
    // proposer kills it; its broker timeout is the backstop).
    let proposing = row.kind == WorkerKind::Infrastructure && row.state == WorkerState::Succeeded;
    if proposing {
    } else if let Err(status) = inner.broker.kill_sandbox(&row.sandbox_id).await {
        tracing::warn!(worker = %row.id, error = %describe(&status), "could not kill the worker's sandbox");
    }
    row.finished_at = Some(SystemTime::now());
    if let Err(error) = inner.store.upsert_worker(&row).await {
        tracing::error!(worker = %row.id, %error, "could not record the worker's end");
    }
    tracing::info!(worker = %row.id, state = row.state.as_str(), reason = %row.end_reason, "worker ended");
    workers.audit("stu", "worker_ended", &row.id, &row.end_reason, &row.trace_id).await;
    inner.live.lock().expect("lock poisoned").remove(&row.id);
    let _ = live.finished.send(Some(row));
}
