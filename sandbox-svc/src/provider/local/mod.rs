//! The `local` provider: bubblewrap-isolated processes, one workspace directory per sandbox.
//!
//! It needs no account and no network, so every flow runs on a fresh machine. Each process is
//! its own bubblewrap invocation sharing the sandbox's workspace; processes of one sandbox
//! therefore do not see each other's pids or loopback network (documented in the README).

mod bwrap;
mod export;
mod fs;
mod process;
mod spawner;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::process::Command;

pub use bwrap::{DEFAULT_PATH, DEFAULT_ROOT_PATHS, WORKSPACE_MOUNT};

use self::bwrap::{BwrapInvocation, RootLayout, process_env};
use self::process::TrackedProcess;
use self::spawner::Spawner;
use crate::provider::{
    ExportLimits, ProcessSpec, ProviderError, ProviderSandbox, SandboxProvider, SandboxSpec, StartedProcess,
    WorkspaceEntry,
};
use crate::workspace_path::WorkspacePath;

/// How long `kill` waits for killed processes to be reaped before reporting failure.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How processes are isolated.
#[derive(Debug, Clone)]
pub enum Isolation {
    Bubblewrap {
        program: PathBuf,
        layout: RootLayout,
    },
    /// Plain child processes in the workspace directory. Only with the explicit unsafe flag.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalProviderError {
    #[error(
        "bubblewrap (`bwrap`) is not installed, so the local provider cannot isolate sandboxes: install the Debian package `bubblewrap` (apt-get install -y bubblewrap), or pass --unsafe-no-isolation (SANDBOX_LOCAL_UNSAFE_NO_ISOLATION=true) to run without isolation"
    )]
    BubblewrapMissing,
    #[error(
        "bubblewrap is installed but cannot create a sandbox here: {0} (it needs unprivileged user namespaces: check sysctl user.max_user_namespaces and, on Ubuntu 23.10+, kernel.apparmor_restrict_unprivileged_userns or an AppArmor profile for bwrap)"
    )]
    BubblewrapBroken(String),
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What the `local` provider needs from the broker's configuration.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where workspaces go (a private directory under the system temp dir is used instead when
    /// `run_as` could not reach it, e.g. a data dir under a 0700 home).
    pub workspaces_dir: PathBuf,
    /// Host directories bound read-only into every sandbox.
    pub root_paths: Vec<PathBuf>,
    /// Paths under those that appear empty (the data dir, secret files, configured ones).
    pub hidden: Vec<PathBuf>,
    /// Host uid/gid processes run as; `None` = the broker's own.
    pub run_as: Option<(u32, u32)>,
    pub unsafe_no_isolation: bool,
}

pub struct LocalProvider {
    spawner: Spawner,
    workspaces_dir: PathBuf,
    /// Set when `workspaces_dir` is a private temp directory this provider removes on drop.
    owns_workspaces_dir: bool,
    isolation: Isolation,
    run_as: Option<(u32, u32)>,
}

impl LocalProvider {
    /// Checks that bubblewrap works (or that running without it was asked for, loudly).
    pub fn new(options: LocalOptions) -> Result<LocalProvider, LocalProviderError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalProviderError::Io { path, source }
        };
        let (workspaces_dir, owns_workspaces_dir) = match options.run_as {
            Some(owner) if !traversable(&options.workspaces_dir, owner) => {
                let dir =
                    fallback_workspaces_dir(&options.workspaces_dir, owner).map_err(io(&options.workspaces_dir))?;
                tracing::info!(
                    configured = %options.workspaces_dir.display(),
                    using = %dir.display(),
                    "sandbox user {}:{} cannot reach the data dir; workspaces go to a private temp directory",
                    owner.0,
                    owner.1
                );
                (dir, true)
            }
            _ => (options.workspaces_dir.clone(), false),
        };
        std::fs::create_dir_all(&workspaces_dir).map_err(io(&workspaces_dir))?;
        // Others may pass through (the sandbox user must) but not list the sandboxes.
        std::fs::set_permissions(&workspaces_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io(&workspaces_dir))?;
        let isolation = match find_on_path("bwrap") {
            Some(program) => {
                let layout = RootLayout::from_host(&options.root_paths, &options.hidden).map_err(io(Path::new("/")))?;
                check_bubblewrap(&program, &layout, &workspaces_dir, options.run_as)?;
                Isolation::Bubblewrap { program, layout }
            }
            None if options.unsafe_no_isolation => {
                tracing::error!(
                    "SANDBOX ISOLATION IS OFF: bubblewrap is missing and --unsafe-no-isolation is set; sandboxed processes run as plain children of the broker with full access to this host"
                );
                Isolation::None
            }
            None => return Err(LocalProviderError::BubblewrapMissing),
        };
        Ok(LocalProvider {
            spawner: Spawner::start()?,
            workspaces_dir,
            owns_workspaces_dir,
            isolation,
            run_as: options.run_as,
        })
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        if self.owns_workspaces_dir {
            let _ = std::fs::remove_dir_all(&self.workspaces_dir);
        }
    }
}

/// A stable directory under the system temp dir for when the sandbox user cannot reach the
/// data dir: named after the data dir, so a restarted broker finds (and clears) its own, and
/// refused if someone else created it first.
fn fallback_workspaces_dir(configured: &Path, owner: (u32, u32)) -> std::io::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    configured.hash(&mut hasher);
    let dir = std::env::temp_dir().join(format!("agent-studio-workspaces-{:016x}", hasher.finish()));
    match std::fs::symlink_metadata(&dir) {
        Ok(metadata) => {
            // SAFETY: plain getter.
            let me = unsafe { libc::geteuid() };
            if !metadata.is_dir() || metadata.uid() != me {
                return Err(std::io::Error::other(format!("{} exists and is not a directory of ours", dir.display())));
            }
            // Leftovers of a previous run: their sandboxes died with it.
            for entry in std::fs::read_dir(&dir)? {
                let _ = std::fs::remove_dir_all(entry?.path());
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if !traversable(&dir, owner) {
        return Err(std::io::Error::other(format!("sandbox user cannot reach {}", dir.display())));
    }
    Ok(dir)
}

/// Whether `owner` may search every directory from `/` down to `path` (or, if `path` does
/// not exist yet, down to its nearest existing ancestor).
fn traversable(path: &Path, (uid, gid): (u32, u32)) -> bool {
    let Some(existing) = path.ancestors().find_map(|a| a.canonicalize().ok()) else { return false };
    existing.ancestors().all(|dir| {
        let Ok(metadata) = std::fs::metadata(dir) else { return false };
        let mode = metadata.mode();
        if metadata.uid() == uid {
            mode & 0o100 != 0
        } else if metadata.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    })
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Runs `true` in a sandbox once, so a broken setup fails at start, not on the first request.
fn check_bubblewrap(
    program: &Path,
    layout: &RootLayout,
    workspaces_dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<(), LocalProviderError> {
    let env = process_env(&BTreeMap::new(), &BTreeMap::new());
    let invocation = BwrapInvocation {
        layout,
        workspace: workspaces_dir,
        cwd: None,
        network: false,
        env: &env,
        argv: &["true".to_owned()],
    };
    let mut command = std::process::Command::new(program);
    command.args(invocation.args());
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    let output = command.output().map_err(|e| LocalProviderError::BubblewrapBroken(e.to_string()))?;
    if !output.status.success() {
        return Err(LocalProviderError::BubblewrapBroken(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    Ok(())
}

#[async_trait]
impl SandboxProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn ProviderSandbox>, ProviderError> {
        let workspace = self.workspaces_dir.join(&spec.sandbox_id);
        let run_as = self.run_as;
        let dir = workspace.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?
        .map_err(|e| ProviderError::Unavailable(format!("cannot create workspace: {e}")))?;
        if matches!(self.isolation, Isolation::None) {
            tracing::warn!(sandbox_id = %spec.sandbox_id, "sandbox runs WITHOUT isolation");
        }
        Ok(Arc::new(LocalSandbox {
            spawner: self.spawner.clone(),
            workspace,
            run_as,
            isolation: self.isolation.clone(),
            network: spec.template.network,
            env: spec.env,
            tracker: Arc::default(),
        }))
    }
}

struct LocalSandbox {
    spawner: Spawner,
    workspace: PathBuf,
    run_as: Option<(u32, u32)>,
    isolation: Isolation,
    network: bool,
    env: BTreeMap<String, String>,
    tracker: Arc<ProcessTracker>,
}

/// The sandbox's live processes; shared with the blocking threads that spawn them.
#[derive(Default)]
struct ProcessTracker {
    processes: std::sync::Mutex<Vec<TrackedProcess>>,
    killed: AtomicBool,
}

impl LocalSandbox {
    fn command(&self, spec: &ProcessSpec) -> Command {
        let env = process_env(&self.env, &spec.env);
        let mut command =
            isolated_command(&self.isolation, &self.workspace, self.network, spec.cwd.as_ref(), &env, &spec.argv);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        Command::from(command)
    }
}

impl LocalProvider {
    /// The exact command a process in a sandbox with this `workspace` runs as. Benchmarks
    /// spawn it directly to measure what the broker adds on top.
    pub fn command_for(&self, workspace: &Path, network: bool, argv: &[String]) -> std::process::Command {
        let env = process_env(&BTreeMap::new(), &BTreeMap::new());
        let mut command = isolated_command(&self.isolation, workspace, network, None, &env, argv);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

fn isolated_command(
    isolation: &Isolation,
    workspace: &Path,
    network: bool,
    cwd: Option<&WorkspacePath>,
    env: &BTreeMap<String, String>,
    argv: &[String],
) -> std::process::Command {
    match isolation {
        Isolation::Bubblewrap { program, layout } => {
            let invocation =
                BwrapInvocation { layout, workspace, cwd: cwd.map(WorkspacePath::as_path), network, env, argv };
            let mut command = std::process::Command::new(program);
            command.args(invocation.args()).env_clear();
            command
        }
        Isolation::None => {
            let mut command = std::process::Command::new(&argv[0]);
            let dir = match cwd {
                Some(cwd) => workspace.join(cwd.as_path()),
                None => workspace.to_owned(),
            };
            command.args(&argv[1..]).current_dir(dir).env_clear().envs(env);
            command
        }
    }
}

#[async_trait]
impl ProviderSandbox for LocalSandbox {
    async fn start_process(&self, spec: ProcessSpec) -> Result<StartedProcess, ProviderError> {
        if let Some(cwd) = &spec.cwd {
            fs::check_directory(&self.workspace, cwd)?;
        }
        let command = self.command(&spec);
        let tracker = self.tracker.clone();
        let supervisor = match &self.isolation {
            Isolation::Bubblewrap { program, .. } => program.canonicalize().ok(),
            Isolation::None => None,
        };
        self.spawner
            .run(move || {
                // Under the lock `kill` takes, so no process can start after kill collected them.
                let mut processes = tracker.processes.lock().expect("lock poisoned");
                if tracker.killed.load(Ordering::SeqCst) {
                    return Err(ProviderError::FailedPrecondition("sandbox was killed".into()));
                }
                let (started, tracked) = process::spawn(command, spec.stdin, supervisor)?;
                // Drop bookkeeping for processes that are gone, so the list stays bounded by live ones.
                processes.retain(|p| !*p.done.borrow());
                processes.push(tracked);
                Ok(started)
            })
            .await
    }

    async fn write_file(&self, path: &WorkspacePath, content: Bytes) -> Result<(), ProviderError> {
        let (workspace, path) = (self.workspace.clone(), path.clone());
        let owner = self.run_as;
        tokio::task::spawn_blocking(move || fs::write_file(&workspace, &path, &content, owner))
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?
    }

    async fn read_file(&self, path: &WorkspacePath, max_bytes: u64) -> Result<Bytes, ProviderError> {
        let (workspace, path) = (self.workspace.clone(), path.clone());
        tokio::task::spawn_blocking(move || fs::read_file(&workspace, &path, max_bytes))
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?
    }

    async fn export_workspace(&self, limits: ExportLimits) -> Result<Vec<(String, WorkspaceEntry)>, ProviderError> {
        let workspace = self.workspace.clone();
        tokio::task::spawn_blocking(move || export::export(&workspace, limits))
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?
    }

    async fn kill(&self) -> Result<(), ProviderError> {
        let waits: Vec<_> = {
            let processes = self.tracker.processes.lock().expect("lock poisoned");
            self.tracker.killed.store(true, Ordering::SeqCst);
            // Exited ones are skipped: their pgid may already belong to someone else.
            processes
                .iter()
                .filter(|p| !*p.done.borrow())
                .map(|p| {
                    process::signal_group(p.pgid, libc::SIGKILL);
                    p.done.clone()
                })
                .collect()
        };
        let mut stuck = 0;
        for mut done in waits {
            if tokio::time::timeout(KILL_WAIT, done.wait_for(|done| *done)).await.is_err() {
                stuck += 1;
            }
        }
        // The workspace goes either way: a stuck process must not also leak its files.
        let workspace = self.workspace.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(workspace))
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(|e| ProviderError::Unavailable(format!("cannot remove workspace: {e}")))?;
        if stuck > 0 {
            return Err(ProviderError::Unavailable(format!("{stuck} killed process(es) did not exit within 10s")));
        }
        Ok(())
    }
}
