//! One E2B sandbox as the broker drives it: processes, files, lifetime, kill.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::connect::StreamError;
use super::control::ControlPlane;
use super::envd::{Envd, Event, ProcessConfig, StartRequest};
use super::error::envd_error;
use super::lifetime::Lifetime;
use super::process::follow_process;
use crate::provider::{ExportLimits, ProcessSpec, ProviderError, ProviderSandbox, StartedProcess, WorkspaceEntry};
use crate::workspace_path::WorkspacePath;

/// How long `kill` waits for the subscribers of killed processes to report their end.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Tag prefix on every process the broker starts: `List` after a restart tells ours from
/// others (a template's start command) by it; the rest is the broker's process id, if given.
pub const PROCESS_TAG_PREFIX: &str = "agentstudio";

/// What a sandbox's processes and keeper share.
pub(super) struct SandboxCore {
    /// E2B's sandbox id.
    pub e2b_id: String,
    pub envd: Envd,
    pub control: Arc<ControlPlane>,
    pub life: Arc<Lifetime>,
    /// Cancelled when the broker kills the sandbox: a cut stream then means "killed", not
    /// "reattach".
    pub ending: CancellationToken,
    /// Cancelled when `kill` stops waiting: followers still running report the kill and stop.
    pub abandon: CancellationToken,
    pub process_deadline: Option<Duration>,
}

impl SandboxCore {
    pub async fn ensure_running(&self) -> Result<(), ProviderError> {
        self.life.ensure_running(&self.control, &self.e2b_id).await
    }
}

pub struct E2bSandbox {
    pub(super) core: Arc<SandboxCore>,
    /// Absolute directory the broker's workspace paths are relative to.
    workspace_dir: String,
    /// One done flag per followed process, so `kill` can wait for their ends. Finished ones are
    /// dropped on every start: bounded by the broker's processes-per-sandbox limit.
    followers: Mutex<Vec<watch::Receiver<bool>>>,
    request_timeout: Duration,
    /// Set once the workspace directory is known to exist (our templates make it; other
    /// images may not have it, and envd refuses a cwd that does not exist).
    workspace_ready: tokio::sync::OnceCell<()>,
    /// Stops the keeper when the broker lets go of the sandbox.
    _keeper: DropGuard,
}

impl E2bSandbox {
    /// Wraps `core` and starts its keeper.
    pub(super) fn new(core: Arc<SandboxCore>, workspace_dir: String, request_timeout: Duration) -> E2bSandbox {
        let stop = CancellationToken::new();
        let keeper = core.clone();
        let keeper_stop = stop.clone();
        tokio::spawn(async move {
            let ending = keeper.ending.clone();
            tokio::select! {
                () = keeper.life.keep(&keeper.control, &keeper.e2b_id, keeper_stop) => {}
                () = ending.cancelled() => {}
            }
        });
        E2bSandbox {
            core,
            workspace_dir,
            followers: Mutex::new(Vec::new()),
            request_timeout,
            workspace_ready: tokio::sync::OnceCell::new(),
            _keeper: stop.drop_guard(),
        }
    }

    /// The absolute path inside the sandbox of a workspace path.
    fn absolute(&self, path: Option<&WorkspacePath>) -> String {
        match path {
            None => self.workspace_dir.clone(),
            Some(path) => format!("{}/{}", self.workspace_dir.trim_end_matches('/'), path.as_path().display()),
        }
    }

    /// `error` in the caller's terms: envd names paths inside the sandbox (`/home/user/a.txt`),
    /// the broker's API names them relative to the workspace (`a.txt`), as `local` does.
    fn in_workspace_terms(&self, error: ProviderError) -> ProviderError {
        let root = self.workspace_dir.trim_end_matches('/');
        if root.is_empty() {
            // The workspace is `/`: envd's paths already are the caller's, with a leading `/`.
            return error;
        }
        let inside = format!("{root}/");
        error.map_message(|message| {
            let relative = message.replace(&inside, "");
            // The workspace itself (a cwd of ""), up to where its path or quote ends.
            let relative = ["\"", "'", ":", " ", ")"]
                .iter()
                .fold(relative, |text, end| text.replace(&format!("{root}{end}"), &format!(".{end}")));
            match relative.strip_suffix(root) {
                Some(head) => format!("{head}."),
                None => relative,
            }
        })
    }

    pub(super) fn track(&self, done: watch::Receiver<bool>) {
        let mut followers = self.followers.lock().expect("lock poisoned");
        followers.retain(|f| !*f.borrow());
        followers.push(done);
    }

    async fn start(&self, tag: String, spec: ProcessSpec) -> Result<StartedProcess, ProviderError> {
        self.core.ensure_running().await?;
        self.core.life.touch();
        self.workspace_ready
            .get_or_try_init(|| async {
                match self.core.envd.make_dir(&self.workspace_dir).await {
                    // An envd without the filesystem service: the start below tells.
                    Err(error) if error.code == super::connect::Code::Unimplemented => Ok(()),
                    other => other,
                }
            })
            .await
            .map_err(|e| envd_error("make the workspace directory", "cwd", &e, self.core.envd.scrubber()))?;
        let mut argv = spec.argv.into_iter();
        let cmd = argv
            .next()
            .ok_or_else(|| ProviderError::InvalidArgument { field: "argv", message: "must not be empty".into() })?;
        let request = StartRequest {
            process: ProcessConfig {
                cmd,
                args: argv.collect(),
                envs: spec.env,
                cwd: Some(self.absolute(spec.cwd.as_ref())),
            },
            stdin: spec.stdin,
            tag: Some(tag),
        };
        let scrubber = self.core.envd.scrubber();
        let program = request.process.cmd.clone();
        let mut stream = match self.core.envd.start(&request).await {
            Ok(stream) => stream,
            Err(error) if refused_program(&error) => {
                return Ok(refused_in_band(&program, &scrubber.scrub(&error.message)));
            }
            Err(error) => return Err(envd_error("start process", start_field(&error), &error, scrubber)),
        };
        let first = tokio::time::timeout(self.request_timeout, stream.next()).await.map_err(|_| {
            ProviderError::Unavailable(format!(
                "e2b envd start process: no start event within {}s",
                self.request_timeout.as_secs()
            ))
        })?;
        let pid = match first {
            Ok(Some(Event::Start { pid })) => pid,
            Ok(Some(other)) => {
                return Err(ProviderError::Unavailable(format!(
                    "e2b envd start process: expected a start event, got {other:?}"
                )));
            }
            Ok(None) => return Err(ProviderError::Unavailable("e2b envd start process: stream ended at once".into())),
            Err(StreamError::Failed(error)) if refused_program(&error) => {
                return Ok(refused_in_band(&program, &scrubber.scrub(&error.message)));
            }
            Err(StreamError::Failed(error)) => {
                return Err(envd_error("start process", start_field(&error), &error, scrubber));
            }
            Err(error) => {
                return Err(ProviderError::Unavailable(scrubber.scrub(&format!("e2b envd start process: {error}"))));
            }
        };
        let (started, done) = follow_process(self.core.clone(), pid, stream, None);
        self.track(done);
        Ok(started)
    }
}

impl E2bSandbox {
    /// A helper process of the broker's own (not tracked as one of the sandbox's processes).
    pub(super) async fn start_process_for_export(&self, spec: ProcessSpec) -> Result<StartedProcess, ProviderError> {
        self.start(format!("{PROCESS_TAG_PREFIX}:export"), spec).await
    }

    pub(super) async fn read_file_for_export(
        &self,
        path: &WorkspacePath,
        max_bytes: u64,
    ) -> Result<Bytes, ProviderError> {
        self.core.envd.read_file(&self.absolute(Some(path)), max_bytes).await
    }
}

/// envd could not start the program itself (not found, not executable): like a shell, the
/// broker reports that in-band as the process's stderr and exit 127, so callers handle one case.
fn refused_program(error: &super::connect::ConnectError) -> bool {
    start_field(error) == "argv" && error.message.contains("starting process")
}

fn refused_in_band(program: &str, why: &str) -> StartedProcess {
    use crate::provider::ProviderEvent;
    let (events, receiver) = tokio::sync::mpsc::channel(2);
    let message = format!("{program}: cannot run: {why}\n");
    // Capacity 2 holds both: nothing waits.
    let _ = events.try_send(ProviderEvent::Stderr(Bytes::from(message)));
    let _ = events.try_send(ProviderEvent::Exited { exit_code: 127, signal: 0 });
    StartedProcess { pid: 0, events: receiver, control: Arc::new(NeverStarted) }
}

/// The control of a process envd never started.
struct NeverStarted;

#[async_trait]
impl crate::provider::ProcessControl for NeverStarted {
    async fn write_stdin(&self, _data: Bytes) -> Result<(), ProviderError> {
        Err(ProviderError::FailedPrecondition("the process never started".into()))
    }

    async fn close_stdin(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn signal(&self, _signal: crate::provider::ProcessSignal) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Which request field a refused start is about: envd names the cwd when that is the problem;
/// anything else (a program that does not exist) is about argv.
fn start_field(error: &super::connect::ConnectError) -> &'static str {
    if error.message.contains("cwd") { "cwd" } else { "argv" }
}

#[async_trait]
impl ProviderSandbox for E2bSandbox {
    async fn start_process(&self, spec: ProcessSpec) -> Result<StartedProcess, ProviderError> {
        self.start(PROCESS_TAG_PREFIX.to_owned(), spec).await.map_err(|e| self.in_workspace_terms(e))
    }

    async fn start_named_process(&self, process_id: &str, spec: ProcessSpec) -> Result<StartedProcess, ProviderError> {
        self.start(format!("{PROCESS_TAG_PREFIX}:{process_id}"), spec).await.map_err(|e| self.in_workspace_terms(e))
    }

    async fn set_deadline(&self, deadline: SystemTime) -> Result<(), ProviderError> {
        let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        self.core.life.set_budget_end(tokio::time::Instant::now() + left);
        Ok(())
    }

    async fn lost(&self) -> String {
        let mut lost = self.core.life.subscribe_lost();
        let reason = lost.wait_for(Option::is_some).await.ok().and_then(|reason| reason.clone());
        match reason {
            Some(reason) => reason,
            // The sender lives as long as the core, which this sandbox holds.
            None => std::future::pending().await,
        }
    }

    /// The whole VM is the sandbox, so a symlink pointing out of the workspace reaches nothing
    /// the sandbox does not already own: paths are not resolved against symlinks here.
    async fn write_file(&self, path: &WorkspacePath, content: Bytes) -> Result<(), ProviderError> {
        self.core.ensure_running().await?;
        self.core.life.touch();
        self.core.envd.write_file(&self.absolute(Some(path)), content).await.map_err(|e| self.in_workspace_terms(e))
    }

    async fn read_file(&self, path: &WorkspacePath, max_bytes: u64) -> Result<Bytes, ProviderError> {
        self.core.ensure_running().await?;
        self.core.life.touch();
        let absolute = self.absolute(Some(path));
        // A FIFO would hold `/files` open until the request times out: refuse what is no file.
        // (An envd without Stat just reads.)
        if let Ok((kind, permissions)) = self.core.envd.stat(&absolute).await {
            let invalid =
                |why: &str| ProviderError::InvalidArgument { field: "path", message: format!("{path:?} {why}") };
            if kind == "FILE_TYPE_DIRECTORY" {
                return Err(invalid("is a directory"));
            }
            if permissions.starts_with(['p', 'S', 'D', 'c']) {
                return Err(invalid("is not a regular file (a FIFO, socket or device)"));
            }
        }
        self.core.envd.read_file(&absolute, max_bytes).await.map_err(|e| self.in_workspace_terms(e))
    }

    async fn export_workspace(&self, limits: ExportLimits) -> Result<Vec<(String, WorkspaceEntry)>, ProviderError> {
        self.core.ensure_running().await?;
        self.core.life.touch();
        self.export(limits).await
    }

    async fn kill(&self) -> Result<(), ProviderError> {
        self.core.ending.cancel();
        let killed = match self.core.control.kill_sandbox(&self.core.e2b_id).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        };
        // The VM is gone with its processes; their subscribers see the cut and report the kill.
        let followers: Vec<_> = self.followers.lock().expect("lock poisoned").clone();
        let all_done = futures_util::future::join_all(followers.into_iter().map(|mut done| async move {
            let _ = done.wait_for(|done| *done).await;
        }));
        if tokio::time::timeout(KILL_WAIT, all_done).await.is_err() {
            tracing::warn!(sandbox_id = %self.core.e2b_id, "process streams still open after the kill; abandoning them");
        }
        self.core.abandon.cancel();
        killed
    }
}
