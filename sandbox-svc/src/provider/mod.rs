//! Sandbox providers: where sandboxes actually run.
//!
//! The broker owns ids, limits, timeouts, spools and redaction; a provider only creates an
//! isolated environment, runs processes in it and hands back their raw output. That split lets
//! `local` (bubblewrap), E2B and later Docker or Kubernetes fit without touching the broker.

pub mod e2b;
pub mod local;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::template::Template;
use crate::workspace_path::WorkspacePath;

/// Everything a provider needs to create one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub sandbox_id: String,
    pub template: Template,
    /// Template env overlaid with the request's env: every process gets it.
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

/// One process to start in a sandbox. `argv` is non-empty and validated by the broker.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// Working directory inside the workspace; `None` = the workspace root.
    pub cwd: Option<WorkspacePath>,
    /// On top of the sandbox env.
    pub env: BTreeMap<String, String>,
    /// Keep stdin open for [`ProcessControl::write_stdin`]; otherwise it reads as empty.
    pub stdin: bool,
}

/// Raw output of a process, in the order it was read. `Exited` is always last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Output was lost here (a cut stream, a broker restart), and why: the broker records a
    /// `truncated` gap so readers are told, never silently short.
    Gap(String),
    /// `exit_code` is -1 when a signal ended the process; `signal` is 0 when none did.
    Exited {
        exit_code: i32,
        signal: i32,
    },
}

/// Signals a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessSignal {
    Term,
    Kill,
    Int,
    Hup,
}

impl ProcessSignal {
    pub fn as_raw(self) -> i32 {
        match self {
            ProcessSignal::Term => libc::SIGTERM,
            ProcessSignal::Kill => libc::SIGKILL,
            ProcessSignal::Int => libc::SIGINT,
            ProcessSignal::Hup => libc::SIGHUP,
        }
    }
}

/// A process a provider started.
pub struct StartedProcess {
    /// The provider's pid for it (host pid for `local`).
    pub pid: u32,
    /// Bounded by the provider: when the broker falls behind the process waits, it never
    /// buffers without limit. Ends after `Exited` (or without it if the provider lost the process).
    pub events: mpsc::Receiver<ProviderEvent>,
    pub control: Arc<dyn ProcessControl>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request named something invalid for this sandbox (e.g. a cwd that does not exist).
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The provider could not do it now (spawn failed, upstream down).
    #[error("{0}")]
    Unavailable(String),
}

impl ProviderError {
    /// The same error with its message passed through `rewrite`.
    pub fn map_message(self, rewrite: impl Fn(&str) -> String) -> ProviderError {
        match self {
            ProviderError::InvalidArgument { field, message } => {
                ProviderError::InvalidArgument { field, message: rewrite(&message) }
            }
            ProviderError::NotFound(message) => ProviderError::NotFound(rewrite(&message)),
            ProviderError::TooLarge(message) => ProviderError::TooLarge(rewrite(&message)),
            ProviderError::FailedPrecondition(message) => ProviderError::FailedPrecondition(rewrite(&message)),
            ProviderError::Unavailable(message) => ProviderError::Unavailable(rewrite(&message)),
        }
    }
}

/// Creates sandboxes. Implementations must be cheap to share.
#[async_trait]
pub trait SandboxProvider: Send + Sync + 'static {
    /// Short name shown in `Sandbox.provider` ("local", "e2b").
    fn name(&self) -> &'static str;

    /// Creates an isolated environment for `spec`. The broker has already checked limits.
    /// Dropping the future must not leak a half-created sandbox.
    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn ProviderSandbox>, ProviderError>;

    /// Sandboxes this broker created that outlived a previous run of it (providers whose
    /// sandboxes live outside the broker's process, like E2B), re-attached: every running
    /// process comes back with its output channel, which starts with a notice of the gap while
    /// the broker was down. Called once at start, before any `create`. Default: none.
    async fn adopt(&self) -> Result<Vec<AdoptedSandbox>, ProviderError> {
        Ok(Vec::new())
    }

    /// Whether sandboxes live on when the broker stops (E2B's do; `local` ones die with it). A
    /// broker restarting for a deploy may then leave them running for its successor to
    /// [`SandboxProvider::adopt`] instead of killing them.
    fn sandboxes_outlive_broker(&self) -> bool {
        false
    }
}

/// A sandbox found by [`SandboxProvider::adopt`].
pub struct AdoptedSandbox {
    /// The broker's id for it (`SandboxSpec::sandbox_id` when it was created).
    pub sandbox_id: String,
    /// Template name and version it was created from.
    pub template: String,
    pub template_version: String,
    /// The caller's metadata, without the provider's own markers.
    pub metadata: BTreeMap<String, String>,
    pub created_at: SystemTime,
    pub handle: Arc<dyn ProviderSandbox>,
    pub processes: Vec<AdoptedProcess>,
}

/// A process of an adopted sandbox that was still running.
pub struct AdoptedProcess {
    /// The id passed to [`ProviderSandbox::start_named_process`], if it was started that way.
    pub process_id: Option<String>,
    pub argv: Vec<String>,
    /// Working directory inside the workspace ("" = its root).
    pub cwd: String,
    pub started: StartedProcess,
}

/// One live sandbox.
#[async_trait]
pub trait ProviderSandbox: Send + Sync {
    /// Starts a process. Its output must be read whether or not anyone listens.
    async fn start_process(&self, spec: ProcessSpec) -> Result<StartedProcess, ProviderError>;

    /// [`ProviderSandbox::start_process`] for a process the broker calls `process_id`: a provider
    /// whose processes can outlive the broker records the id, so [`SandboxProvider::adopt`] can
    /// give it back after a restart. Default: the id is not kept.
    async fn start_named_process(&self, process_id: &str, spec: ProcessSpec) -> Result<StartedProcess, ProviderError> {
        let _ = process_id;
        self.start_process(spec).await
    }

    /// The broker will end the sandbox at `deadline` (on creation and whenever its timeout
    /// changes). A provider with a lifetime of its own keeps the sandbox alive at least that long
    /// while it is in use. Default: nothing to do.
    async fn set_deadline(&self, deadline: SystemTime) -> Result<(), ProviderError> {
        let _ = deadline;
        Ok(())
    }

    /// Resolves, with the reason, once the sandbox ended without the broker asking (the
    /// provider's idle policy killed it, someone killed it elsewhere). Never resolves by default.
    async fn lost(&self) -> String {
        std::future::pending().await
    }

    /// Writes `content` at `path`, creating parent directories. Must refuse a path that
    /// resolves (through symlinks) outside the workspace.
    async fn write_file(&self, path: &WorkspacePath, content: Bytes) -> Result<(), ProviderError>;

    /// Reads the file at `path`; refuses files larger than `max_bytes` and paths resolving outside.
    async fn read_file(&self, path: &WorkspacePath, max_bytes: u64) -> Result<Bytes, ProviderError>;

    /// Every entry under the workspace, without following symlinks, within `limits` — what the
    /// broker diffs against a checkout to propose a change. Files over `limits.max_file_bytes`
    /// come back as [`WorkspaceEntry::TooLarge`] without their content.
    async fn export_workspace(&self, limits: ExportLimits) -> Result<Vec<(String, WorkspaceEntry)>, ProviderError> {
        let _ = limits;
        Err(ProviderError::FailedPrecondition("this provider cannot export a workspace".into()))
    }

    /// Ends every process in the sandbox, whole process trees included, and releases the
    /// sandbox's resources. Returns once no process of the sandbox is left. Idempotent.
    async fn kill(&self) -> Result<(), ProviderError>;
}

/// Bounds on [`ProviderSandbox::export_workspace`].
#[derive(Debug, Clone, Copy)]
pub struct ExportLimits {
    pub max_entries: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    /// Top-level directory names not to descend into (`.git`).
    pub skip_top_level: &'static [&'static str],
}

/// One entry of an exported workspace, keyed by its workspace-relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceEntry {
    File {
        content: Vec<u8>,
        executable: bool,
    },
    TooLarge {
        size: u64,
    },
    Symlink {
        target: String,
    },
    /// A FIFO, socket or device: never template content.
    Special,
}

/// Input and signals for one running process.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    async fn write_stdin(&self, data: Bytes) -> Result<(), ProviderError>;
    async fn close_stdin(&self) -> Result<(), ProviderError>;
    /// Delivers `signal` to the process and everything it started.
    async fn signal(&self, signal: ProcessSignal) -> Result<(), ProviderError>;
}
