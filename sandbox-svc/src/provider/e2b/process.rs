//! One E2B process: the subscriber that follows its output for its whole life, and its stdin
//! and signals.
//!
//! envd discards output nobody is subscribed to, so exactly one subscriber per process reads
//! envd's stream from `Start` until the end event, feeding the broker's bounded channel. When
//! the stream is cut it reattaches with `Connect` (live output only: nothing is ever repeated)
//! and reports the interval it was detached as a gap in-band, so output that envd discarded
//! meanwhile is never lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::connect::{Code, StreamError};
use super::envd::{Event, ProcessStream};
use super::error::envd_error;
use super::sandbox::SandboxCore;
use crate::provider::{ProcessControl, ProcessSignal, ProviderError, ProviderEvent, StartedProcess};

/// Events in flight between a process's envd stream and the broker's pump. When full the
/// subscriber stops reading the stream (and envd, in turn, the process): memory stays bounded.
const EVENT_CHANNEL_CAPACITY: usize = 8;
/// How long a subscriber keeps trying to reattach while envd is unreachable but E2B says the
/// sandbox is running; after it, the process is reported lost.
const REATTACH_WINDOW: Duration = Duration::from_secs(300);
const REATTACH_FIRST_DELAY: Duration = Duration::from_millis(50);
const REATTACH_MAX_DELAY: Duration = Duration::from_secs(5);
/// How often a subscriber parked on a paused sandbox checks whether someone else resumed it.
const PAUSED_POLL: Duration = Duration::from_secs(30);
/// Largest piece of stdin per `SendInput` call (base64 in JSON makes it a third larger).
const STDIN_CHUNK_BYTES: usize = 1 << 20;
/// Longest a group-signal helper may run.
const SIGNAL_HELPER_DEADLINE: Duration = Duration::from_secs(10);

/// Marks a notice the provider writes into a process's stderr (the in-band gap report).
pub const NOTICE_PREFIX: &str = "[agent-studio e2b]";

/// A gap or loss notice as it appears in the process's stderr.
pub fn notice(text: &str) -> Bytes {
    Bytes::from(format!("\n{NOTICE_PREFIX} {text}\n"))
}

/// Starts following `stream` (whose `start` event was already read) for the broker.
/// `first_notice` goes out before any output (an adopted process's restart gap).
pub(super) fn follow_process(
    core: Arc<SandboxCore>,
    pid: u32,
    stream: ProcessStream,
    first_notice: Option<String>,
) -> (StartedProcess, watch::Receiver<bool>) {
    let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let (done_tx, done_rx) = watch::channel(false);
    let exited = Arc::new(AtomicBool::new(false));
    let control = Arc::new(E2bProcessControl {
        core: core.clone(),
        pid,
        exited: exited.clone(),
        writing: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(async move {
        if let Some(text) = first_notice {
            let _ = events_tx.send(ProviderEvent::Gap(text)).await;
        }
        let exit = subscribe(&core, pid, stream, &events_tx).await;
        exited.store(true, Ordering::SeqCst);
        if let Some((exit_code, signal)) = exit {
            let _ = events_tx.send(ProviderEvent::Exited { exit_code, signal }).await;
        }
        let _ = done_tx.send(true);
    });
    (StartedProcess { pid, events: events_rx, control }, done_rx)
}

/// How one stream ended.
enum Followed {
    Exited(i32, i32),
    /// Cut (or failed) before the end event: `why`, and whether envd's process deadline did it.
    Interrupted {
        why: String,
        deadline: bool,
    },
    /// The broker no longer reads this process's output.
    ReceiverGone,
    /// The sandbox was killed and `kill` stopped waiting for this stream to end.
    Abandoned,
}

/// Follows the process across reattaches; returns its exit, or `None` if the broker left.
async fn subscribe(
    core: &SandboxCore,
    pid: u32,
    mut stream: ProcessStream,
    events: &mpsc::Sender<ProviderEvent>,
) -> Option<(i32, i32)> {
    loop {
        let (why, deadline) = match follow(core, &mut stream, events).await {
            Followed::Exited(code, signal) => return Some((code, signal)),
            Followed::ReceiverGone => return None,
            Followed::Abandoned => return Some((-1, libc::SIGKILL)),
            Followed::Interrupted { why, deadline } => (why, deadline),
        };
        if deadline {
            // envd killed it (its Connect deadline is the process's lifetime): nothing to
            // reattach to, and nothing lost.
            let text = format!(
                "envd killed the process: its deadline (SANDBOX_E2B_PROCESS_DEADLINE, {}) passed",
                humantime::format_duration(core.process_deadline.unwrap_or_default())
            );
            events.send(ProviderEvent::Stderr(notice(&text))).await.ok()?;
            return Some((-1, libc::SIGKILL));
        }
        let cut_at = Instant::now();
        match reattach(core, pid, events).await? {
            Reattached::Stream(next) => {
                if !core.ending.is_cancelled() {
                    tracing::info!(sandbox_id = %core.e2b_id, pid, %why, "reattached to an e2b process stream");
                }
                let detached = humantime::format_duration(Duration::from_millis(cut_at.elapsed().as_millis() as u64));
                let text = format!(
                    "the output stream was cut ({why}) and reattached after {detached}; output the process wrote in between is missing"
                );
                events.send(ProviderEvent::Gap(text)).await.ok()?;
                stream = next;
            }
            Reattached::Finished(code, signal) => return Some((code, signal)),
        }
    }
}

async fn follow(core: &SandboxCore, stream: &mut ProcessStream, events: &mpsc::Sender<ProviderEvent>) -> Followed {
    loop {
        let next = tokio::select! {
            biased;
            next = stream.next() => next,
            () = core.abandon.cancelled() => return Followed::Abandoned,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Followed::Interrupted { why: "stream ended before the process".into(), deadline: false };
            }
            Err(StreamError::Failed(error)) if error.code == Code::DeadlineExceeded => {
                return Followed::Interrupted { why: error.message, deadline: true };
            }
            Err(error) => {
                return Followed::Interrupted { why: core.envd.scrubber().scrub(&error.to_string()), deadline: false };
            }
        };
        let forward = match event {
            Event::Stdout(data) => ProviderEvent::Stdout(data),
            Event::Stderr(data) => ProviderEvent::Stderr(data),
            Event::End(end) => {
                let (code, signal) = end.exit_status();
                return Followed::Exited(code, signal);
            }
            Event::Start { .. } | Event::Keepalive | Event::Other => continue,
        };
        core.life.touch();
        if events.send(forward).await.is_err() {
            return Followed::ReceiverGone;
        }
    }
}

enum Reattached {
    Stream(ProcessStream),
    Finished(i32, i32),
}

/// Reconnects to `pid` until it works, the process or sandbox is gone, or the window passes.
/// `None`: the broker left.
async fn reattach(core: &SandboxCore, pid: u32, events: &mpsc::Sender<ProviderEvent>) -> Option<Reattached> {
    let started = Instant::now();
    let mut delay = REATTACH_FIRST_DELAY;
    loop {
        if core.ending.is_cancelled() {
            // The broker killed the sandbox: that is the process's end, nothing was lost.
            return Some(Reattached::Finished(-1, libc::SIGKILL));
        }
        if let Some(reason) = core.life.lost_reason() {
            events.send(ProviderEvent::Stderr(notice(&format!("the sandbox ended: {reason}")))).await.ok()?;
            return Some(Reattached::Finished(-1, libc::SIGKILL));
        }
        let failure = match core.envd.connect(pid).await {
            Ok(mut stream) => match stream.next().await {
                Ok(Some(Event::End(end))) => {
                    let text = "the output stream was cut and the process ended before it was reattached; output it wrote in between is missing";
                    events.send(ProviderEvent::Gap(text.to_owned())).await.ok()?;
                    let (code, signal) = end.exit_status();
                    return Some(Reattached::Finished(code, signal));
                }
                Ok(Some(_)) => return Some(Reattached::Stream(stream)),
                Ok(None) => "reattached stream ended at once".to_owned(),
                Err(StreamError::Failed(error)) if error.code == Code::NotFound => {
                    return gone_while_detached(pid, events).await;
                }
                Err(error) => error.to_string(),
            },
            Err(error) if error.code == Code::NotFound => {
                return gone_while_detached(pid, events).await;
            }
            Err(error) => error.to_string(),
        };
        // envd unreachable: is the sandbox still there, and running? (Subscribed first, so a
        // resume after the answer is not missed.)
        let mut resumed = core.life.subscribe_resumed();
        match core.control.get_sandbox(&core.e2b_id).await {
            Err(ProviderError::NotFound(message)) => {
                core.life.mark_lost(format!("it no longer exists on E2B ({message})"));
                continue;
            }
            Ok(listed) if listed.state == "paused" => {
                wait_for_resume(core, &mut resumed).await;
                delay = REATTACH_FIRST_DELAY;
                continue;
            }
            _ => {}
        }
        if started.elapsed() > REATTACH_WINDOW {
            let text = format!(
                "lost contact with the process for {}s ({}); its output and exit status are unknown",
                REATTACH_WINDOW.as_secs(),
                core.envd.scrubber().scrub(&failure)
            );
            events.send(ProviderEvent::Gap(text)).await.ok()?;
            return Some(Reattached::Finished(-1, 0));
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = core.ending.cancelled() => {}
        }
        delay = (delay * 2).min(REATTACH_MAX_DELAY);
    }
}

/// envd no longer knows the process: it exited while nobody was subscribed (over 30 s ago, or
/// its end event was not kept).
async fn gone_while_detached(pid: u32, events: &mpsc::Sender<ProviderEvent>) -> Option<Reattached> {
    let text = format!("process {pid} ended while its output stream was cut; its exit status is unknown");
    events.send(ProviderEvent::Gap(text)).await.ok()?;
    Some(Reattached::Finished(-1, 0))
}

async fn wait_for_resume(core: &SandboxCore, resumed: &mut watch::Receiver<u64>) {
    let mut lost = core.life.subscribe_lost();
    tokio::select! {
        _ = resumed.changed() => {}
        _ = lost.changed() => {}
        () = core.ending.cancelled() => {}
        () = tokio::time::sleep(PAUSED_POLL) => {}
    }
}

struct E2bProcessControl {
    core: Arc<SandboxCore>,
    pid: u32,
    exited: Arc<AtomicBool>,
    /// One stdin write at a time: a write goes out in chunks, and two must not interleave.
    writing: tokio::sync::Mutex<()>,
}

impl E2bProcessControl {
    async fn ready(&self) -> Result<(), ProviderError> {
        if self.exited.load(Ordering::SeqCst) {
            return Err(ProviderError::FailedPrecondition("process has already exited".into()));
        }
        self.core.ensure_running().await?;
        self.core.life.touch();
        Ok(())
    }
}

#[async_trait]
impl ProcessControl for E2bProcessControl {
    async fn write_stdin(&self, data: Bytes) -> Result<(), ProviderError> {
        let _one_at_a_time = self.writing.try_lock().map_err(|_| {
            ProviderError::FailedPrecondition("a stdin write to this process is still in progress".into())
        })?;
        self.ready().await?;
        for chunk in data.chunks(STDIN_CHUNK_BYTES) {
            self.core
                .envd
                .send_input(self.pid, chunk)
                .await
                .map_err(|e| envd_error("send input", "data", &e, self.core.envd.scrubber()))?;
        }
        Ok(())
    }

    async fn close_stdin(&self) -> Result<(), ProviderError> {
        self.ready().await?;
        match self.core.envd.close_stdin(self.pid).await {
            Ok(()) => Ok(()),
            Err(error) if error.code == Code::Unimplemented => {
                Err(ProviderError::FailedPrecondition("this sandbox's envd is too old to close stdin".into()))
            }
            Err(error) => Err(envd_error("close stdin", "process_id", &error, self.core.envd.scrubber())),
        }
    }

    /// envd's own SendSignal reaches only the process itself (E2B#1034) and knows only TERM and
    /// KILL, so a helper inside the sandbox signals the whole tree (see [`SIGNAL_TREE_SCRIPT`]).
    async fn signal(&self, signal: ProcessSignal) -> Result<(), ProviderError> {
        self.ready().await?;
        let name = match signal {
            ProcessSignal::Term => "TERM",
            ProcessSignal::Kill => "KILL",
            ProcessSignal::Int => "INT",
            ProcessSignal::Hup => "HUP",
        };
        let args = vec![
            "-c".to_owned(),
            SIGNAL_TREE_SCRIPT.to_owned(),
            "sh".to_owned(),
            name.to_owned(),
            self.pid.to_string(),
        ];
        let helper = self.core.envd.run_helper("/bin/sh", args, SIGNAL_HELPER_DEADLINE).await;
        match (helper, signal) {
            (Ok(end), _) if end.exit_status() == (0, 0) => Ok(()),
            (outcome, ProcessSignal::Term | ProcessSignal::Kill) => {
                tracing::warn!(pid = self.pid, ?outcome, "signal helper failed; signalling the process alone");
                let envd_name = if signal == ProcessSignal::Kill { "SIGNAL_SIGKILL" } else { "SIGNAL_SIGTERM" };
                self.core
                    .envd
                    .send_signal(self.pid, envd_name)
                    .await
                    .map_err(|e| envd_error("send signal", "signal", &e, self.core.envd.scrubber()))
            }
            (Ok(end), _) => Err(ProviderError::Unavailable(format!("signal helper failed: {}", end.status))),
            (Err(error), _) => Err(envd_error("signal", "signal", &error, self.core.envd.scrubber())),
        }
    }
}

/// Signals a process and every descendant of it (found by parent pid in /proc), `$1` = signal
/// name, `$2` = pid. For KILL the tree is first frozen with STOP until it stops growing, so
/// nothing forks past the kill. POSIX sh only: any image has it.
pub const SIGNAL_TREE_SCRIPT: &str = r#"sig=$1; root=$2
tree() {
  found=$1; frontier=$1
  while [ -n "$frontier" ]; do
    next=
    for stat in /proc/[0-9]*/stat; do
      read -r line < "$stat" 2>/dev/null || continue
      rest=${line##*) }
      set -- $rest
      for parent in $frontier; do
        if [ "$2" = "$parent" ]; then p=${stat#/proc/}; next="$next ${p%/stat}"; fi
      done
    done
    found="$found$next"; frontier=$next
  done
  echo $found
}
[ -d "/proc/$root" ] || exit 0
pids=$(tree "$root")
if [ "$sig" = KILL ]; then
  prev=
  while [ "$pids" != "$prev" ]; do
    kill -s STOP $pids 2>/dev/null
    prev=$pids; pids=$(tree "$root")
  done
fi
kill -s "$sig" $pids 2>/dev/null
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn pids_running(marker: &str) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|entry| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // Zombies (state Z) are dead, just not reaped yet.
                let zombie = state.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
                !zombie && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(marker)
            })
            .count()
    }

    /// The tree helper kills grandchildren too, though they are in the leader's process group
    /// as in a real sandbox (envd starts no new group).
    #[test]
    fn the_signal_script_kills_the_whole_tree() {
        let mut leader = std::process::Command::new("sh")
            .arg("-c")
            .arg("s=sleep; $s 8881 & ($s 8882 & wait) & wait")
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pids_running("sleep 888") < 2 {
            assert!(std::time::Instant::now() < deadline, "children did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", SIGNAL_TREE_SCRIPT, "sh", "KILL", &leader.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(leader.wait().unwrap().signal(), Some(libc::SIGKILL));
        while pids_running("sleep 888") > 0 {
            assert!(std::time::Instant::now() < deadline, "the tree survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
