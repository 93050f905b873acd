//! One `local` process: spawning, reading its pipes, stdin and signals.
//!
//! Each process is the leader of its own process group, so a signal or a kill reaches
//! everything it started; under bubblewrap its pid namespace also dies with it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::provider::{ProcessControl, ProcessSignal, ProviderError, ProviderEvent, StartedProcess};

/// Largest chunk read from a pipe at once. The buffer is allocated only once the pipe is
/// readable, and sized to what is waiting, so idle processes hold no read buffer at all.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// Kernel buffer asked for each output pipe (the default is 64 KiB): fewer, larger reads
/// when a process writes fast. The kernel may grant less; that only costs speed.
const PIPE_BYTES: i32 = 1 << 20;
/// How long output may still arrive after the process itself exited.
const PIPE_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
/// Chunks in flight between a process's pipes and the broker's pump. When full, the reader
/// stops reading and the process blocks on its pipe: memory stays bounded.
const EVENT_CHANNEL_CAPACITY: usize = 8;

/// A process the sandbox tracks so that `kill` can end it and wait for it.
pub struct TrackedProcess {
    pub pgid: i32,
    /// Turns true once the process was reaped and its pipes drained.
    pub done: watch::Receiver<bool>,
}

/// Spawns `command` (already fully configured except stdio) as a new process group.
/// `supervisor` is the bubblewrap binary when the process runs under it: signals other than
/// SIGKILL then go to the sandboxed program's processes only, not to bubblewrap, which would
/// die of them and take the program down before it could react.
pub fn spawn(
    mut command: Command,
    stdin: bool,
    supervisor: Option<PathBuf>,
) -> Result<(StartedProcess, TrackedProcess), ProviderError> {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // A new session, and with it a process group signalled as a whole, with no controlling
    // terminal: nothing inside can push keystrokes into the terminal `studio up` runs in (TIOCSTI).
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = command.spawn().map_err(|e| ProviderError::Unavailable(format!("cannot start process: {e}")))?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let to_pipe = |fd: std::io::Result<std::os::fd::OwnedFd>| {
        fd.and_then(pipe::Receiver::from_owned_fd)
            .map_err(|e| ProviderError::Unavailable(format!("cannot read process output: {e}")))
    };
    let stdout = to_pipe(child.stdout.take().expect("piped").into_owned_fd())?;
    let stderr = to_pipe(child.stderr.take().expect("piped").into_owned_fd())?;
    for pipe in [&stdout, &stderr] {
        // SAFETY: fcntl on a descriptor we own; failure leaves the default size.
        unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    let stdin_pipe = child.stdin.take();

    let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let (done_tx, done_rx) = watch::channel(false);
    let control = Arc::new(LocalProcessControl {
        pgid: pid as i32,
        alive: Arc::new(AtomicBool::new(true)),
        stdin: Mutex::new(stdin_pipe),
        stdin_closing: CancellationToken::new(),
        supervisor,
    });
    tokio::spawn(read_until_exit(child, stdout, stderr, events_tx, control.alive.clone(), done_tx));
    let started = StartedProcess { pid, events: events_rx, control };
    Ok((started, TrackedProcess { pgid: pid as i32, done: done_rx }))
}

/// Sends `signal` to every process in the group `pgid`. A gone group is not an error.
pub fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: plain syscall; a negative pid addresses the process group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Pids in process group `pgid` whose executable is not `supervisor`, read from /proc.
fn group_members_except(pgid: i32, supervisor: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // Fields after the parenthesised command name: state, ppid, pgrp.
            let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2));
            pgrp.and_then(|p| p.parse::<i32>().ok()) == Some(pgid)
        })
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).map_or(true, |exe| exe != supervisor))
        .collect()
}

enum Chunk {
    Data(Bytes),
    Eof,
    NotReady,
}

fn read_chunk(pipe: &pipe::Receiver) -> Chunk {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; on failure `waiting` stays 0 and we read a full chunk.
    unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut waiting) };
    let size = if waiting > 0 { (waiting as usize).min(READ_CHUNK_BYTES) } else { READ_CHUNK_BYTES };
    let mut buf = BytesMut::with_capacity(size);
    match pipe.try_read_buf(&mut buf) {
        Ok(0) => Chunk::Eof,
        Ok(_) => Chunk::Data(buf.freeze()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Chunk::NotReady,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Chunk::NotReady,
        Err(_) => Chunk::Eof,
    }
}

async fn read_until_exit(
    mut child: Child,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    events: mpsc::Sender<ProviderEvent>,
    alive: Arc<AtomicBool>,
    done: watch::Sender<bool>,
) {
    let pgid = child.id().expect("not yet reaped") as i32;
    let (mut stdout_open, mut stderr_open) = (true, true);
    let mut status = None;
    // Events are sent even when the broker's pump is gone: the send error just means nobody
    // wants them, and the loop still runs to the end so the child is reaped.
    // Once the process exited, whatever still holds its pipes (a descendant that escaped the
    // group, a descriptor passed to another sandbox) gets this long before we stop reading.
    let mut drain_deadline = None;
    while stdout_open || stderr_open {
        tokio::select! {
            ready = stdout.readable(), if stdout_open => {
                match ready.map(|()| read_chunk(&stdout)).unwrap_or(Chunk::Eof) {
                    Chunk::Data(data) => { let _ = events.send(ProviderEvent::Stdout(data)).await; }
                    Chunk::Eof => stdout_open = false,
                    Chunk::NotReady => {}
                }
            }
            ready = stderr.readable(), if stderr_open => {
                match ready.map(|()| read_chunk(&stderr)).unwrap_or(Chunk::Eof) {
                    Chunk::Data(data) => { let _ = events.send(ProviderEvent::Stderr(data)).await; }
                    Chunk::Eof => stderr_open = false,
                    Chunk::NotReady => {}
                }
            }
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                // Whatever the main process left behind (only possible without a pid
                // namespace) must not keep the pipes, or this process, alive.
                alive.store(false, Ordering::SeqCst);
                signal_group(pgid, libc::SIGKILL);
                drain_deadline = Some(tokio::time::Instant::now() + PIPE_DRAIN_AFTER_EXIT);
            }
            () = sleep_until_some(drain_deadline) => {
                tracing::warn!(pgid, "output pipes still open after the process exited; closing them");
                break;
            }
        }
    }
    let status = match status {
        Some(status) => status,
        None => child.wait().await,
    };
    alive.store(false, Ordering::SeqCst);
    let (exit_code, signal) = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => (code, 0),
                (None, Some(signal)) => (-1, signal),
                (None, None) => (-1, 0),
            }
        }
        Err(error) => {
            tracing::warn!(%error, "waiting for a local process failed");
            (-1, 0)
        }
    };
    let _ = events.send(ProviderEvent::Exited { exit_code, signal }).await;
    let _ = done.send(true);
}

/// How long one SendProcessInput may wait for the process to read its stdin.
const STDIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct LocalProcessControl {
    pgid: i32,
    alive: Arc<AtomicBool>,
    /// One writer at a time; others are refused rather than queued (each would pin its data).
    stdin: Mutex<Option<ChildStdin>>,
    /// Cancelled by `close_stdin`, so closing never waits behind a stuck write.
    stdin_closing: CancellationToken,
    supervisor: Option<PathBuf>,
}

#[async_trait]
impl ProcessControl for LocalProcessControl {
    async fn write_stdin(&self, data: Bytes) -> Result<(), ProviderError> {
        let Ok(mut stdin) = self.stdin.try_lock() else {
            return Err(ProviderError::FailedPrecondition(
                "another write to this process's stdin is still in progress".into(),
            ));
        };
        let Some(pipe) = stdin.as_mut() else {
            return Err(ProviderError::FailedPrecondition(
                "stdin is closed (start the process with stdin = true to write to it)".into(),
            ));
        };
        tokio::select! {
            written = tokio::time::timeout(STDIN_WRITE_TIMEOUT, pipe.write_all(&data)) => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ProviderError::FailedPrecondition(format!("process no longer reads stdin: {e}"))),
                Err(_) => Err(ProviderError::FailedPrecondition(format!(
                    "process did not read its stdin within {}s; part of the data may have been written",
                    STDIN_WRITE_TIMEOUT.as_secs()
                ))),
            },
            () = self.stdin_closing.cancelled() => Err(ProviderError::FailedPrecondition("stdin was closed during the write".into())),
        }
    }

    async fn close_stdin(&self) -> Result<(), ProviderError> {
        self.stdin_closing.cancel();
        self.stdin.lock().await.take();
        Ok(())
    }

    async fn signal(&self, signal: ProcessSignal) -> Result<(), ProviderError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(ProviderError::FailedPrecondition("process has already exited".into()));
        }
        let raw = signal.as_raw();
        let Some(supervisor) = self.supervisor.as_deref().filter(|_| raw != libc::SIGKILL) else {
            signal_group(self.pgid, raw);
            return Ok(());
        };
        let targets = group_members_except(self.pgid, supervisor);
        if targets.is_empty() {
            // Not exec'd yet: the whole group it is.
            signal_group(self.pgid, raw);
        }
        for pid in targets {
            // SAFETY: plain syscall; a pid that has just exited is harmless (ESRCH).
            unsafe { libc::kill(pid, raw) };
        }
        Ok(())
    }
}
