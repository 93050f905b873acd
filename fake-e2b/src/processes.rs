//! Real child processes standing in for envd's: each in its own process group, output fanned
//! out live to whoever listens (and discarded when nobody does, as envd does), exit kept for a
//! retention period so `Connect`/`List` still find it.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::state::lock;

/// Bytes read from a pipe per data event; envd uses the same 32 KiB.
const CHUNK_BYTES: usize = 32 * 1024;

/// Data events buffered per listener before the process's output blocks (envd's back-pressure
/// buffer is also 64 events), so at most 64 × 32 KiB wait for one slow stream.
const LISTENER_BUFFER: usize = 64;

/// After the leader exits, a pipe that stays silent this long is considered drained, so a
/// background grandchild holding stdout open cannot delay the end event forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub(crate) enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

#[derive(Clone, Debug)]
pub(crate) struct EndEvent {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    pub error: Option<String>,
}

impl EndEvent {
    /// What Go's `ProcessState` reports; zero values are left out as protojson does.
    pub fn to_json(&self) -> Value {
        let mut end = Map::new();
        if self.exit_code != 0 {
            end.insert("exitCode".into(), json!(self.exit_code));
        }
        if self.exited {
            end.insert("exited".into(), json!(true));
        }
        end.insert("status".into(), json!(self.status));
        if let Some(error) = &self.error {
            end.insert("error".into(), json!(error));
        }
        Value::Object(end)
    }

    fn from_status(status: std::io::Result<ExitStatus>) -> EndEvent {
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => {
                    let text = format!("exit status {code}");
                    EndEvent { exit_code: code, exited: true, error: (code != 0).then(|| text.clone()), status: text }
                }
                (None, Some(signal)) => {
                    let mut text = format!("signal: {}", signal_name(signal));
                    if status.core_dumped() {
                        text.push_str(" (core dumped)");
                    }
                    EndEvent { exit_code: -1, exited: false, error: Some(text.clone()), status: text }
                }
                (None, None) => EndEvent { exit_code: -1, exited: false, status: String::new(), error: None },
            },
            Err(error) => {
                EndEvent { exit_code: -1, exited: false, status: String::new(), error: Some(error.to_string()) }
            }
        }
    }
}

/// Signal names as Go's `syscall.Signal.String()` prints them.
fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGTERM => "terminated".into(),
        other => format!("signal {other}"),
    }
}

pub(crate) struct SpawnSpec {
    pub cmd: String,
    pub args: Vec<String>,
    /// The environment in order; later entries win, as with envd's `KEY=value` list.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub stdin: bool,
    pub tag: Option<String>,
    /// `ProcessConfig` as `List` echoes it back.
    pub config: Value,
    /// `Connect-Timeout-Ms` of the Start call: the process's lifetime.
    pub deadline: Option<Duration>,
}

pub(crate) struct Process {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: Value,
    listeners: Mutex<Listeners>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    end: watch::Sender<Option<EndEvent>>,
    deadline_hit: AtomicBool,
}

struct Listeners {
    senders: Vec<mpsc::Sender<Output>>,
    closed: bool,
}

/// A live view of a process: output from now on, then its end.
pub(crate) struct Subscription {
    pub output: mpsc::Receiver<Output>,
    pub end: watch::Receiver<Option<EndEvent>>,
}

impl Process {
    pub fn subscribe(&self) -> Subscription {
        let (sender, output) = mpsc::channel(LISTENER_BUFFER);
        let mut listeners = lock(&self.listeners);
        if !listeners.closed {
            listeners.senders.push(sender);
        }
        Subscription { output, end: self.end.subscribe() }
    }

    pub fn deadline_hit(&self) -> bool {
        self.deadline_hit.load(Ordering::SeqCst)
    }

    pub fn has_ended(&self) -> bool {
        self.end.borrow().is_some()
    }

    /// Sends `signal` to the whole process group.
    pub fn signal_group(&self, signal: i32) -> std::io::Result<()> {
        let pgid = libc::pid_t::try_from(self.pid).map_err(std::io::Error::other)?;
        // SAFETY: killpg only reads its two integer arguments.
        if unsafe { libc::killpg(pgid, signal) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), String> {
        let mut stdin = self.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else {
            return Err("stdin not enabled or closed".to_string());
        };
        let written = pipe.write_all(data).await;
        let flushed = match written {
            Ok(()) => pipe.flush().await,
            Err(error) => Err(error),
        };
        flushed.map_err(|error| format!("error writing to stdin of process '{}': {error}", self.pid))
    }

    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }

    async fn broadcast(&self, item: Output) {
        let senders: Vec<_> = lock(&self.listeners).senders.clone();
        let mut gone = false;
        for sender in senders {
            // Awaiting a full listener is envd's back-pressure: the process blocks on its pipe.
            gone |= sender.send(item.clone()).await.is_err();
        }
        if gone {
            lock(&self.listeners).senders.retain(|sender| !sender.is_closed());
        }
    }

    /// No more output: listeners drain what they have, then see the end event.
    fn close_output(&self) {
        let mut listeners = lock(&self.listeners);
        listeners.closed = true;
        listeners.senders.clear();
    }
}

/// The processes of one sandbox, by pid.
pub(crate) struct Processes {
    table: Mutex<HashMap<u32, Arc<Process>>>,
    retention: Duration,
    /// Cancelled when the whole fake stops.
    shutdown: CancellationToken,
    /// Cancelled when the sandbox is paused or killed: its envd (and every open stream) vanishes
    /// with the VM. A pause installs a fresh token for the streams opened after the resume.
    streams: Mutex<CancellationToken>,
}

impl Processes {
    pub fn new(retention: Duration, shutdown: CancellationToken) -> Arc<Processes> {
        let streams = Mutex::new(shutdown.child_token());
        Arc::new(Processes { table: Mutex::new(HashMap::new()), retention, shutdown, streams })
    }

    /// Cancelled when the streams open now must break.
    pub fn streams_token(&self) -> CancellationToken {
        lock(&self.streams).clone()
    }

    /// The VM is snapshotted: processes freeze, connections drop.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
        let mut streams = lock(&self.streams);
        streams.cancel();
        *streams = self.shutdown.child_token();
    }

    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// The sandbox died: kill every process group and drop every open stream.
    pub fn kill_all(&self) {
        self.signal_all(libc::SIGKILL);
        lock(&self.streams).cancel();
    }

    pub fn by_pid(&self, pid: u32) -> Option<Arc<Process>> {
        lock(&self.table).get(&pid).cloned()
    }

    pub fn by_tag(&self, tag: &str) -> Option<Arc<Process>> {
        lock(&self.table).values().find(|process| process.tag.as_deref() == Some(tag)).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<_> = lock(&self.table).values().cloned().collect();
        all.sort_by_key(|process| process.pid);
        all
    }

    /// Signals every process group, including groups whose leader already exited but whose
    /// background children live on; groups that are gone entirely just answer ESRCH.
    pub fn signal_all(&self, signal: i32) {
        for process in self.all() {
            let _ = process.signal_group(signal);
        }
    }

    /// Starts a process and subscribes to it before it can print anything.
    pub fn spawn(self: &Arc<Self>, spec: SpawnSpec) -> std::io::Result<(Arc<Process>, Subscription)> {
        let mut command = Command::new(&spec.cmd);
        command
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .current_dir(&spec.cwd)
            .process_group(0)
            .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("child exited before it got a pid"))?;
        let (end, _) = watch::channel(None);
        let process = Arc::new(Process {
            pid,
            tag: spec.tag,
            config: spec.config,
            listeners: Mutex::new(Listeners { senders: Vec::new(), closed: false }),
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            end,
            deadline_hit: AtomicBool::new(false),
        });
        let subscription = process.subscribe();
        lock(&self.table).insert(pid, process.clone());

        let leader_exited = CancellationToken::new();
        let stdout = child
            .stdout
            .take()
            .map(|pipe| tokio::spawn(forward(pipe, process.clone(), leader_exited.clone(), Output::Stdout)));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(forward(pipe, process.clone(), leader_exited.clone(), Output::Stderr)));
        if let Some(deadline) = spec.deadline {
            let process = Arc::downgrade(&process);
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                kill_at_deadline(process);
            });
        }
        let table = Arc::downgrade(self);
        let retention = self.retention;
        let process_for_wait = process.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            leader_exited.cancel();
            for reader in [stdout, stderr].into_iter().flatten() {
                let _ = reader.await;
            }
            process_for_wait.close_output();
            process_for_wait.close_stdin().await;
            process_for_wait.end.send_replace(Some(EndEvent::from_status(status)));
            tokio::time::sleep(retention).await;
            if let Some(table) = table.upgrade() {
                let mut table = lock(&table.table);
                if table.get(&pid).is_some_and(|entry| Arc::ptr_eq(entry, &process_for_wait)) {
                    table.remove(&pid);
                }
            }
        });
        Ok((process, subscription))
    }
}

fn kill_at_deadline(process: Weak<Process>) {
    if let Some(process) = process.upgrade()
        && !process.has_ended()
    {
        process.deadline_hit.store(true, Ordering::SeqCst);
        let _ = process.signal_group(libc::SIGKILL);
    }
}

async fn forward(
    mut pipe: impl AsyncRead + Unpin,
    process: Arc<Process>,
    leader_exited: CancellationToken,
    wrap: fn(Bytes) -> Output,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let drained = async {
            leader_exited.cancelled().await;
            tokio::time::sleep(DRAIN_AFTER_EXIT).await;
        };
        let read = tokio::select! {
            read = pipe.read(&mut buffer) => read,
            _ = drained => return,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => process.broadcast(wrap(Bytes::copy_from_slice(&buffer[..n]))).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_leave_out_zero_values() {
        let ok = EndEvent { exit_code: 0, exited: true, status: "exit status 0".into(), error: None };
        assert_eq!(ok.to_json(), json!({"exited": true, "status": "exit status 0"}));
        let killed = EndEvent::from_status(Ok(ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(killed.to_json(), json!({"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}));
        let failed = EndEvent::from_status(Ok(ExitStatus::from_raw(3 << 8)));
        assert_eq!(
            failed.to_json(),
            json!({"exitCode": 3, "exited": true, "status": "exit status 3", "error": "exit status 3"})
        );
    }
}
