//! The broker domain: sandboxes, their processes and files, limits, lifetimes and end causes.
//!
//! Transport-agnostic: the gRPC adapter (`crate::grpc`) converts requests into the types of
//! [`model`] and calls [`Broker`]; tests can call it directly.

mod adopt;
mod changes;
mod error;
pub mod model;
mod process;
mod sandbox;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use self::error::BrokerError;
pub use self::model::TemplateView;
pub use self::model::validate_env_key;
use self::model::{CreateSandbox, EndReason, Ended, ProcessView, SandboxView, StartProcess};
use self::process::ProcessEntry;
use self::sandbox::{Lifetime, SandboxEntry, TemplateRef};
use crate::config::Limits;
use crate::provider::{ProcessSignal as Signal, ProcessSpec, SandboxProvider, SandboxSpec};
use crate::redact::Redactor;
use crate::spool::{EventBody, Spool};
use crate::template::Runtime;
use crate::template_repo::{TemplateRepo, registry_error};
use crate::workspace_path::WorkspacePath;

/// How long ending a sandbox waits for its processes' output to be fully spooled.
const PUMP_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    /// Active template versions, checkouts, builds and the code host.
    repo: Arc<TemplateRepo>,
    /// Added to every `claude`-runtime sandbox's environment (the worker LLM key); `None` = the
    /// broker holds no such key and those templates run as `shell`.
    claude_env: Option<BTreeMap<String, String>>,
    provider: Arc<dyn SandboxProvider>,
    redactor: Redactor,
    spool_dir: PathBuf,
    registry: Mutex<Registry>,
    /// Keyed by idempotency key; entries live as long as their sandbox is remembered.
    idempotency: Mutex<HashMap<String, IdempotentCreate>>,
    /// One permit per open StartProcess/AttachProcess stream.
    streams: Arc<Semaphore>,
    /// Cancelled when running sandboxes are left to the next broker run: pumps stop appending.
    handover: CancellationToken,
}

#[derive(Default)]
struct Registry {
    sandboxes: HashMap<String, Arc<SandboxEntry>>,
    /// Ended sandboxes, oldest first; bounded by `Limits::max_ended_sandboxes`.
    ended: VecDeque<String>,
    /// Running sandboxes plus creations in progress; bounded by `Limits::max_sandboxes`.
    live: usize,
    shutting_down: bool,
}

struct IdempotentCreate {
    request: CreateSandbox,
    sandbox_id: Arc<OnceCell<String>>,
}

impl Broker {
    pub fn new(
        limits: Limits,
        repo: Arc<TemplateRepo>,
        claude_env: Option<BTreeMap<String, String>>,
        provider: Arc<dyn SandboxProvider>,
        redactor: Redactor,
        spool_dir: PathBuf,
    ) -> Broker {
        let streams = Arc::new(Semaphore::new(limits.max_streams));
        Broker {
            inner: Arc::new(Inner {
                limits,
                repo,
                claude_env,
                provider,
                redactor,
                spool_dir,
                registry: Mutex::new(Registry::default()),
                idempotency: Mutex::new(HashMap::new()),
                streams,
                handover: CancellationToken::new(),
            }),
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    pub fn repo(&self) -> &Arc<TemplateRepo> {
        &self.inner.repo
    }

    /// Every template's active version with the runtime its sandboxes actually get.
    pub fn templates(&self) -> Vec<TemplateView> {
        let inner = &self.inner;
        let registry = &inner.repo.registry;
        registry
            .names()
            .into_iter()
            .filter_map(|name| registry.active(&name).ok())
            .map(|(template, version)| {
                let (runtime, runtime_note) = self.effective_runtime(&template);
                let smoke_test = self.effective_smoke_test(&template);
                TemplateView { template, runtime, runtime_note, version, smoke_test }
            })
            .collect()
    }

    /// The runtime sandboxes of `template` get, and why it differs from the manifest's.
    fn effective_runtime(&self, template: &crate::template::Template) -> (Runtime, String) {
        match (template.runtime, self.inner.claude_env.is_some()) {
            (Runtime::Claude, false) => (
                Runtime::Shell,
                "the manifest asks for `claude`, but the broker holds no worker LLM key \
                 (SANDBOX_WORKER_ANTHROPIC_API_KEY): tasks run as bash scripts"
                    .to_owned(),
            ),
            (runtime, _) => (runtime, String::new()),
        }
    }

    /// The smoke test this broker's provider can run for `template`.
    pub fn effective_smoke_test(&self, template: &crate::template::Template) -> String {
        match (&template.local_smoke_test, self.inner.provider.name()) {
            (Some(local), "local") => local.clone(),
            _ => template.smoke_test.clone(),
        }
    }

    /// A built version of a template, with what its sandboxes would run.
    pub fn template_version(&self, template: &str, version_id: &str) -> Result<TemplateView, BrokerError> {
        let (manifest, version) = self.inner.repo.registry.version(template, version_id).map_err(registry_error)?;
        let (runtime, runtime_note) = self.effective_runtime(&manifest);
        let smoke_test = self.effective_smoke_test(&manifest);
        Ok(TemplateView { template: manifest, runtime, runtime_note, version, smoke_test })
    }

    pub async fn create_sandbox(&self, request: CreateSandbox) -> Result<SandboxView, BrokerError> {
        if let Some(timeout) = request.timeout {
            self.check_timeout(timeout)?;
        }
        // Creation runs in its own task: a caller that gives up (deadline, disconnect) must not
        // leave a half-made sandbox or a leaked slot behind.
        let broker = self.clone();
        let Some(key) = request.idempotency_key.clone() else {
            let id = spawn_and_join(async move { broker.create_new(request).await }).await?;
            return self.get_sandbox(&id);
        };
        let cell = {
            let mut idempotency = self.inner.idempotency.lock().expect("lock poisoned");
            let entry = idempotency.entry(key.clone()).or_insert_with(|| IdempotentCreate {
                request: request.clone(),
                sandbox_id: Arc::new(OnceCell::new()),
            });
            if entry.request != request {
                return Err(BrokerError::invalid(
                    "idempotency_key",
                    format!("{key:?} was already used with different parameters"),
                ));
            }
            entry.sandbox_id.clone()
        };
        // Concurrent calls with one key wait on the same creation; a failed one can be retried.
        let id = spawn_and_join(async move {
            let result = cell.get_or_try_init(|| broker.create_new(request)).await.cloned();
            if result.is_err() {
                // Forget the key once no caller holds its cell any more (the map's is the last),
                // so a later call may retry; a caller still waiting will retry itself.
                let ours = Arc::as_ptr(&cell);
                drop(cell);
                let mut idempotency = broker.inner.idempotency.lock().expect("lock poisoned");
                if idempotency.get(&key).is_some_and(|e| {
                    Arc::as_ptr(&e.sandbox_id) == ours
                        && Arc::strong_count(&e.sandbox_id) == 1
                        && e.sandbox_id.get().is_none()
                }) {
                    idempotency.remove(&key);
                }
            }
            result
        })
        .await?;
        self.get_sandbox(&id)
    }

    async fn create_new(&self, request: CreateSandbox) -> Result<String, BrokerError> {
        let inner = &self.inner;
        if request.template.is_empty() {
            return Err(BrokerError::invalid("template", "must not be empty"));
        }
        let registry = &inner.repo.registry;
        let (template, version) = match &request.template_version {
            Some(version_id) => registry.version(&request.template, version_id),
            None => registry.active(&request.template),
        }
        .map_err(registry_error)?;
        // Read before a slot is taken: a code host that is down fails the create cleanly.
        let checkout = inner.repo.checkout(&template).await?;
        let timeout = match request.timeout {
            Some(timeout) => timeout,
            None => template.default_timeout.clamp(inner.limits.min_timeout, inner.limits.max_timeout),
        };
        self.reserve_slot()?;
        let sandbox_id = format!("sbx-{}", uuid::Uuid::new_v4().simple());
        let mut env = template.env.clone();
        env.extend(request.env.clone());
        // After the request's env: a caller cannot swap the broker's key for its own endpoint.
        if template.runtime == Runtime::Claude
            && let Some(claude_env) = &inner.claude_env
        {
            env.extend(claude_env.clone());
        }
        let spec = SandboxSpec { sandbox_id: sandbox_id.clone(), template, env, metadata: request.metadata.clone() };
        let handle = match inner.provider.create(spec).await {
            Ok(handle) => handle,
            Err(error) => {
                inner.registry.lock().expect("lock poisoned").live -= 1;
                return Err(error.into());
            }
        };
        let checkout_sha = match checkout {
            None => None,
            Some((sha, files)) => match changes::write_checkout(handle.as_ref(), files).await {
                Ok(()) => Some(sha),
                Err(error) => {
                    let _ = handle.kill().await;
                    inner.registry.lock().expect("lock poisoned").live -= 1;
                    return Err(error);
                }
            },
        };
        let entry = Arc::new(SandboxEntry::new(
            sandbox_id.clone(),
            TemplateRef { name: request.template, version: version.version_id, checkout_sha },
            request.metadata,
            inner.provider.name(),
            request.idempotency_key,
            handle,
            Lifetime { created_at: SystemTime::now(), timeout },
        ));
        inner.registry.lock().expect("lock poisoned").sandboxes.insert(sandbox_id.clone(), entry.clone());
        tracing::info!(%sandbox_id, template = %entry.template, ?timeout, "sandbox created");
        watch_lifetime(inner, entry);
        Ok(sandbox_id)
    }

    fn reserve_slot(&self) -> Result<(), BrokerError> {
        let mut registry = self.inner.registry.lock().expect("lock poisoned");
        if registry.shutting_down {
            return Err(BrokerError::Unavailable("broker is shutting down".into()));
        }
        let max = self.inner.limits.max_sandboxes;
        if registry.live >= max {
            return Err(BrokerError::ResourceExhausted(format!(
                "sandbox limit reached: {max} sandboxes running (SANDBOX_MAX_SANDBOXES)"
            )));
        }
        registry.live += 1;
        Ok(())
    }

    fn entry(&self, sandbox_id: &str) -> Result<Arc<SandboxEntry>, BrokerError> {
        if sandbox_id.is_empty() {
            return Err(BrokerError::invalid("sandbox_id", "must not be empty"));
        }
        self.inner
            .registry
            .lock()
            .expect("lock poisoned")
            .sandboxes
            .get(sandbox_id)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound(format!("sandbox {sandbox_id:?} not found")))
    }

    fn running_entry(&self, sandbox_id: &str) -> Result<Arc<SandboxEntry>, BrokerError> {
        let entry = self.entry(sandbox_id)?;
        if !entry.is_running() {
            return Err(BrokerError::FailedPrecondition(format!("sandbox {sandbox_id:?} has ended")));
        }
        Ok(entry)
    }

    pub fn get_sandbox(&self, sandbox_id: &str) -> Result<SandboxView, BrokerError> {
        Ok(self.entry(sandbox_id)?.view())
    }

    pub fn list_sandboxes(
        &self,
        metadata: &std::collections::BTreeMap<String, String>,
        include_ended: bool,
    ) -> Vec<SandboxView> {
        let entries: Vec<Arc<SandboxEntry>> =
            self.inner.registry.lock().expect("lock poisoned").sandboxes.values().cloned().collect();
        let mut views: Vec<SandboxView> = entries
            .iter()
            .filter(|entry| entry.matches(metadata))
            .map(|entry| entry.view())
            .filter(|view| include_ended || view.ended.is_none())
            .collect();
        views.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.sandbox_id.cmp(&b.sandbox_id)));
        views
    }

    pub fn set_timeout(&self, sandbox_id: &str, timeout: Duration) -> Result<SandboxView, BrokerError> {
        self.check_timeout(timeout)?;
        let entry = self.running_entry(sandbox_id)?;
        entry.set_timeout(timeout);
        tell_provider_deadline(&entry);
        Ok(entry.view())
    }

    /// Checks a requested timeout against the configured range.
    fn check_timeout(&self, timeout: Duration) -> Result<(), BrokerError> {
        let limits = &self.inner.limits;
        if timeout < limits.min_timeout || timeout > limits.max_timeout {
            return Err(BrokerError::invalid(
                "timeout",
                format!(
                    "{} is outside the allowed range {} to {} (SANDBOX_MIN_TIMEOUT, SANDBOX_MAX_TIMEOUT)",
                    humantime::format_duration(timeout),
                    humantime::format_duration(limits.min_timeout),
                    humantime::format_duration(limits.max_timeout)
                ),
            ));
        }
        Ok(())
    }

    /// Kills the sandbox (whole process trees) and records `KilledByRequest`. Ended: no-op.
    pub async fn kill_sandbox(&self, sandbox_id: &str) -> Result<(), BrokerError> {
        let entry = self.entry(sandbox_id)?;
        let inner = self.inner.clone();
        spawn_and_join(async move {
            end_sandbox(&inner, &entry, EndReason::KilledByRequest, "killed by request".into()).await;
            Ok(())
        })
        .await
    }

    /// Refuses new sandboxes from now on, leaving running ones as they are (their provider keeps
    /// them for the next broker run to adopt), and stops spooling their output: the spools stay
    /// unfinished on disk for the next run to continue.
    pub fn stop_accepting(&self) {
        self.inner.registry.lock().expect("lock poisoned").shutting_down = true;
        self.inner.handover.cancel();
    }

    /// Flips to refusing new sandboxes and ends every running one.
    pub async fn shutdown(&self) {
        let entries: Vec<Arc<SandboxEntry>> = {
            let mut registry = self.inner.registry.lock().expect("lock poisoned");
            registry.shutting_down = true;
            registry.sandboxes.values().cloned().collect()
        };
        // Spawned: if the caller's grace period runs out, the ends still complete.
        let ends = entries.into_iter().map(|entry| {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                end_sandbox(&inner, &entry, EndReason::BrokerShutdown, "broker shut down".into()).await
            })
        });
        futures_util::future::join_all(ends).await;
    }

    pub async fn start_process(
        &self,
        sandbox_id: &str,
        request: StartProcess,
    ) -> Result<(String, Arc<Spool>), BrokerError> {
        // In its own task: a caller that gives up must not leave a started process untracked.
        let broker = self.clone();
        let sandbox_id = sandbox_id.to_owned();
        spawn_and_join(async move { broker.start_process_detached(&sandbox_id, request).await }).await
    }

    async fn start_process_detached(
        &self,
        sandbox_id: &str,
        request: StartProcess,
    ) -> Result<(String, Arc<Spool>), BrokerError> {
        let entry = self.running_entry(sandbox_id)?;
        let (process_id, spool) = {
            let mut state = entry.lock();
            let max = self.inner.limits.max_processes_per_sandbox;
            // Starts in progress count too, or concurrent starts could all pass the check.
            if state.processes.len() + state.starting >= max {
                return Err(BrokerError::ResourceExhausted(format!(
                    "process limit reached: sandbox {sandbox_id:?} already has {max} processes (SANDBOX_MAX_PROCESSES_PER_SANDBOX)"
                )));
            }
            let process_id = format!("p{}", state.next_process_number);
            state.next_process_number += 1;
            let dir = self.inner.spool_dir.join(sandbox_id).join(&process_id);
            let spool = Spool::create(dir, self.inner.limits.spool_bytes)
                .map_err(|e| BrokerError::Unavailable(format!("cannot create output spool: {e}")))?;
            state.starting += 1;
            (process_id, spool)
        };
        let started = self.spawn_in(&entry, &process_id, &spool, &request).await;
        let (process, events, ended_meanwhile) = {
            let mut state = entry.lock();
            state.starting -= 1;
            let started = started?;
            let process = Arc::new(ProcessEntry {
                id: process_id.clone(),
                argv: request.argv,
                tag: request.tag,
                cwd: request.cwd.map(|c| c.to_string()).unwrap_or_default(),
                started_at: SystemTime::now(),
                pid: started.pid,
                spool: spool.clone(),
                control: started.control,
                exit_code: Mutex::new(None),
            });
            state.processes.push(process.clone());
            // The sandbox may have started ending meanwhile: the process is tracked (so its
            // spool goes with the sandbox), killed, and the caller told.
            (process, started.events, entry.ending.is_cancelled())
        };
        if ended_meanwhile {
            let _ = process.control.signal(Signal::Kill).await;
        }
        let pid = process.pid;
        tokio::spawn(process::pump(process, events, self.inner.redactor.clone(), self.inner.handover.clone()));
        if ended_meanwhile {
            return Err(BrokerError::FailedPrecondition(format!(
                "sandbox {sandbox_id:?} ended while the process started"
            )));
        }
        tracing::info!(%sandbox_id, %process_id, pid, "process started");
        Ok((process_id, spool))
    }

    /// Starts the process and records its `Started` event, undoing both on failure.
    async fn spawn_in(
        &self,
        entry: &SandboxEntry,
        process_id: &str,
        spool: &Spool,
        request: &StartProcess,
    ) -> Result<crate::provider::StartedProcess, BrokerError> {
        let spec = ProcessSpec {
            argv: request.argv.clone(),
            cwd: request.cwd.clone(),
            env: request.env.clone(),
            stdin: request.stdin,
        };
        // Named, so a provider whose processes outlive the broker can give the id back on adoption.
        let started = match entry.handle.start_named_process(process_id, spec).await {
            Ok(started) => started,
            Err(error) => {
                spool.remove();
                return Err(error.into());
            }
        };
        if let Err(error) = spool.append(&EventBody::Started { pid: started.pid }) {
            // Unrecorded output would break the seq guarantee: do not run it at all.
            let _ = started.control.signal(Signal::Kill).await;
            spool.remove();
            return Err(BrokerError::Unavailable(format!("cannot spool process output: {error}")));
        }
        Ok(started)
    }

    fn process(&self, sandbox_id: &str, process_id: &str) -> Result<Arc<ProcessEntry>, BrokerError> {
        let entry = self.entry(sandbox_id)?;
        if process_id.is_empty() {
            return Err(BrokerError::invalid("process_id", "must not be empty"));
        }
        let state = entry.lock();
        state
            .processes
            .iter()
            .find(|p| p.id == process_id)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound(format!("process {process_id:?} not found in sandbox {sandbox_id:?}")))
    }

    /// The spool to attach to. Works for exited processes and ended sandboxes still remembered.
    pub fn process_spool(&self, sandbox_id: &str, process_id: &str) -> Result<Arc<Spool>, BrokerError> {
        Ok(self.process(sandbox_id, process_id)?.spool.clone())
    }

    fn running_process(&self, sandbox_id: &str, process_id: &str) -> Result<Arc<ProcessEntry>, BrokerError> {
        let process = self.process(sandbox_id, process_id)?;
        if !process.is_running() {
            return Err(BrokerError::FailedPrecondition(format!("process {process_id:?} has exited")));
        }
        Ok(process)
    }

    pub async fn send_input(&self, sandbox_id: &str, process_id: &str, data: Bytes) -> Result<(), BrokerError> {
        let process = self.running_process(sandbox_id, process_id)?;
        Ok(process.control.write_stdin(data).await?)
    }

    pub async fn close_input(&self, sandbox_id: &str, process_id: &str) -> Result<(), BrokerError> {
        let process = self.running_process(sandbox_id, process_id)?;
        Ok(process.control.close_stdin().await?)
    }

    pub async fn signal(&self, sandbox_id: &str, process_id: &str, signal: Signal) -> Result<(), BrokerError> {
        let process = self.running_process(sandbox_id, process_id)?;
        Ok(process.control.signal(signal).await?)
    }

    pub fn list_processes(&self, sandbox_id: &str) -> Result<Vec<ProcessView>, BrokerError> {
        let entry = self.entry(sandbox_id)?;
        let processes = entry.lock().processes.clone();
        Ok(processes.iter().map(|p| p.view()).collect())
    }

    pub async fn write_file(&self, sandbox_id: &str, path: &WorkspacePath, content: Bytes) -> Result<(), BrokerError> {
        let max = self.inner.limits.max_file_bytes;
        if content.len() as u64 > max {
            return Err(BrokerError::ResourceExhausted(format!(
                "file size limit: content is {} bytes, more than {max} (SANDBOX_MAX_FILE_BYTES)",
                content.len()
            )));
        }
        let entry = self.running_entry(sandbox_id)?;
        Ok(entry.handle.write_file(path, content).await?)
    }

    pub async fn read_file(&self, sandbox_id: &str, path: &WorkspacePath) -> Result<Bytes, BrokerError> {
        let entry = self.running_entry(sandbox_id)?;
        let content = entry.handle.read_file(path, self.inner.limits.max_file_bytes).await?;
        // Files are process output too: a secret a process wrote must not leave the broker.
        Ok(match self.inner.redactor.redact_bytes(&content) {
            std::borrow::Cow::Borrowed(_) => content,
            std::borrow::Cow::Owned(masked) => Bytes::from(masked),
        })
    }

    /// A permit for one output stream; dropped when the stream ends.
    pub fn stream_permit(&self) -> Result<OwnedSemaphorePermit, BrokerError> {
        self.inner.streams.clone().try_acquire_owned().map_err(|_| {
            BrokerError::ResourceExhausted(format!(
                "stream limit reached: {} output streams open (SANDBOX_MAX_STREAMS)",
                self.inner.limits.max_streams
            ))
        })
    }
}

/// Runs `work` as its own task and waits for it: if the caller is dropped the work still
/// finishes, so no state is left half-changed.
async fn spawn_and_join<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, BrokerError>> + Send + 'static,
) -> Result<T, BrokerError> {
    // The request's span (and so its trace id) goes along into the task.
    tokio::spawn(tracing::Instrument::instrument(work, tracing::Span::current()))
        .await
        .unwrap_or_else(|error| Err(BrokerError::Unavailable(format!("internal task failed: {error}"))))
}

/// Ends `entry` once: kills its processes, waits for their output to be spooled, records why.
async fn end_sandbox(inner: &Arc<Inner>, entry: &Arc<SandboxEntry>, reason: EndReason, message: String) {
    entry
        .end_once
        .get_or_init(|| async {
            entry.ending.cancel();
            let mut message = message;
            if let Err(error) = entry.handle.kill().await {
                tracing::error!(sandbox_id = %entry.id, %error, "killing sandbox failed");
                message = format!("{message} (kill reported: {error})");
            }
            let processes = entry.lock().processes.clone();
            for process in processes {
                let mut head = process.spool.subscribe();
                let _ = tokio::time::timeout(PUMP_DRAIN_WAIT, head.wait_for(|h| h.finished)).await;
            }
            entry.lock().ended = Some(Ended { at: SystemTime::now(), reason, message: message.clone() });
            remember_ended(inner, entry);
            tracing::info!(sandbox_id = %entry.id, ?reason, %message, "sandbox ended");
        })
        .await;
}

/// Moves an ended sandbox to the bounded history, forgetting the oldest beyond the bound.
fn remember_ended(inner: &Arc<Inner>, entry: &Arc<SandboxEntry>) {
    let forgotten: Vec<Arc<SandboxEntry>> = {
        let mut registry = inner.registry.lock().expect("lock poisoned");
        registry.live -= 1;
        registry.ended.push_back(entry.id.clone());
        let mut forgotten = Vec::new();
        while registry.ended.len() > inner.limits.max_ended_sandboxes {
            let id = registry.ended.pop_front().expect("len checked");
            forgotten.extend(registry.sandboxes.remove(&id));
        }
        forgotten
    };
    for old in forgotten {
        if let Some(key) = &old.idempotency_key {
            inner.idempotency.lock().expect("lock poisoned").remove(key);
        }
        for process in old.lock().processes.iter() {
            process.spool.remove();
        }
        let _ = std::fs::remove_dir(inner.spool_dir.join(&old.id));
    }
}

/// Ends the sandbox at its deadline, or when the provider reports it gone on its own (an E2B
/// idle policy, a kill from elsewhere); tells the provider the deadline.
fn watch_lifetime(inner: &Arc<Inner>, entry: Arc<SandboxEntry>) {
    tell_provider_deadline(&entry);
    let lost = {
        let (inner, entry) = (Arc::downgrade(inner), entry.clone());
        async move {
            tokio::select! {
                reason = entry.handle.lost() => {
                    let Some(inner) = inner.upgrade() else { return };
                    let message = format!("ended outside the broker: {reason}");
                    end_sandbox(&inner, &entry, EndReason::TimedOut, message).await;
                }
                () = entry.ending.cancelled() => {}
            }
        }
    };
    tokio::spawn(lost);
    tokio::spawn(expire_when_due(Arc::downgrade(inner), entry));
}

/// A provider with a lifetime of its own keeps the sandbox at least until the broker's deadline.
fn tell_provider_deadline(entry: &Arc<SandboxEntry>) {
    let entry = entry.clone();
    tokio::spawn(async move {
        let expires_at = entry.lock().expires_at;
        if let Err(error) = entry.handle.set_deadline(expires_at).await {
            tracing::warn!(sandbox_id = %entry.id, %error, "the provider did not take the sandbox's deadline");
        }
    });
}

/// Ends the sandbox at its deadline; re-arms when the deadline moves.
async fn expire_when_due(inner: Weak<Inner>, entry: Arc<SandboxEntry>) {
    loop {
        let deadline = entry.lock().deadline;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                let (now_deadline, expires_at) = { let s = entry.lock(); (s.deadline, s.expires_at) };
                if tokio::time::Instant::now() < now_deadline {
                    continue;
                }
                let Some(inner) = inner.upgrade() else { return };
                let lifetime = expires_at.duration_since(entry.created_at).unwrap_or_default();
                let message = format!(
                    "timed out: reached its deadline {} after creation",
                    humantime::format_duration(Duration::from_secs(lifetime.as_secs()))
                );
                // Not cancelled with this task's caller: the end runs to completion.
                let _ = tokio::spawn(async move { end_sandbox(&inner, &entry, EndReason::TimedOut, message).await }).await;
                return;
            }
            () = entry.deadline_changed.notified() => {}
            () = entry.ending.cancelled() => return,
        }
    }
}
