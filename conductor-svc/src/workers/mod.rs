//! Workers: broker sandboxes running a task, followed from spawn to exit.
//!
//! Each running worker has one follower task in this conductor. It reads the broker's output
//! stream (the broker spools everything, so the follower can always resume by seq), fans it out
//! live to watchers, records the last seq in the store, enforces the wall-time budget and writes
//! the worker's end — with its cause — when the process exits, is cancelled or times out.
//! A restarted conductor re-adopts running workers from the seq it recorded.

mod follow;
pub mod runtime;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentstudio_proto::sandbox::v1 as pb;
use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::broker_client::{self, BrokerClient};
use crate::config::Budgets;
use crate::store::{AuditEntry, CapabilityRow, Store, StoreError, WorkerFilter, WorkerKind, WorkerRow, WorkerState};

/// Live events buffered per worker for watchers that fall behind; a watcher that lags further is
/// told how many it missed (they stay in the broker's spool, reachable by `AttachWorker`).
const LIVE_EVENTS_CAPACITY: usize = 1024;
/// Longest task accepted, in bytes.
pub const MAX_TASK_BYTES: usize = 16 << 10;
/// Sandbox lifetime beyond the wall-time budget: the broker's own expiry is only a backstop.
const SANDBOX_SLACK: Duration = Duration::from_secs(60);
/// How long the first event of a new process may take.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Metadata key marking a sandbox as a worker's.
pub const WORKER_ID_METADATA: &str = "agentstudio.worker_id";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("worker {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("broker: {}", broker_client::describe(.0))]
    Broker(Status),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<WorkerError> for Status {
    fn from(error: WorkerError) -> Status {
        let message = error.to_string();
        match error {
            WorkerError::InvalidArgument(_) => Status::invalid_argument(message),
            WorkerError::NotFound(_) => Status::not_found(message),
            WorkerError::Budget(_) => Status::resource_exhausted(message),
            WorkerError::FailedPrecondition(_) => Status::failed_precondition(message),
            WorkerError::Broker(status) => Status::new(status.code(), message),
            WorkerError::Store(_) => Status::unavailable(message),
        }
    }
}

/// What a watcher of a live worker receives.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Output {
        seq: u64,
        stderr: bool,
        data: Bytes,
    },
    /// Progress about the worker that is not its output ("broker unreachable, retrying in 2s").
    Notice(String),
}

/// Who asked for a worker, and where.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub kind: WorkerKind,
    pub task: String,
    pub conversation_id: String,
    pub requested_by: String,
    pub trace_id: String,
}

/// A worker that started: its row and a subscription taken before its first output.
pub struct Spawned {
    pub row: WorkerRow,
    pub events: broadcast::Receiver<LiveEvent>,
    pub finished: watch::Receiver<Option<WorkerRow>>,
}

/// Why a live worker is being stopped from outside.
#[derive(Debug, Clone)]
struct StopCause {
    by: String,
    reason: String,
}

struct Live {
    events: broadcast::Sender<LiveEvent>,
    finished: watch::Sender<Option<WorkerRow>>,
    stop: CancellationToken,
    stop_cause: Mutex<Option<StopCause>>,
}

#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    broker: BrokerClient,
    budgets: Budgets,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Template versions whose capabilities are already recorded: skips the store writes on
    /// every later call. Bounded by the number of template versions the broker ever reports.
    recorded_versions: Mutex<std::collections::HashSet<String>>,
    /// Serialises budget check + insert, so concurrent spawns cannot both take the last slot.
    spawn_gate: tokio::sync::Mutex<()>,
    /// Conductor shutdown: followers stop without ending their workers (a restart re-adopts them).
    shutdown: CancellationToken,
}

impl Workers {
    pub fn new(store: Store, broker: BrokerClient, budgets: Budgets, shutdown: CancellationToken) -> Workers {
        Workers {
            inner: Arc::new(Inner {
                store,
                broker,
                budgets,
                live: Mutex::new(HashMap::new()),
                recorded_versions: Mutex::new(Default::default()),
                spawn_gate: tokio::sync::Mutex::new(()),
                shutdown,
            }),
        }
    }

    pub fn broker(&self) -> &BrokerClient {
        &self.inner.broker
    }

    /// The broker's templates; records capabilities that are new, with the version they arrived in.
    pub async fn templates(&self) -> Result<Vec<pb::Template>, WorkerError> {
        let templates = self.inner.broker.list_templates().await.map_err(WorkerError::Broker)?;
        for template in &templates {
            if self.inner.recorded_versions.lock().expect("lock poisoned").contains(&template.version) {
                continue;
            }
            for name in &template.capabilities {
                let capability = CapabilityRow {
                    name: name.clone(),
                    description: String::new(),
                    template: template.name.clone(),
                    since_version: template.version.clone(),
                    since: SystemTime::now(),
                    pr_number: template.active_version.as_ref().map_or(0, |v| v.pr_number),
                    evidence: String::new(),
                };
                if self.inner.store.record_capability(&capability).await? {
                    tracing::info!(template = %template.name, capability = %name, version = %template.version, "new capability");
                }
            }
            self.inner.recorded_versions.lock().expect("lock poisoned").insert(template.version.clone());
        }
        Ok(templates)
    }

    /// Creates the worker's sandbox and starts its task. Fails with `RESOURCE_EXHAUSTED` at a
    /// budget; a worker that could not start is recorded FAILED with the reason.
    pub async fn spawn(&self, request: SpawnRequest) -> Result<Spawned, WorkerError> {
        let task = request.task.trim();
        if task.is_empty() {
            return Err(WorkerError::InvalidArgument("task: must not be empty".into()));
        }
        if task.len() > MAX_TASK_BYTES {
            return Err(WorkerError::InvalidArgument(format!(
                "task: {} bytes, at most {MAX_TASK_BYTES} allowed",
                task.len()
            )));
        }
        let templates = self.templates().await?;
        let template_name = request.kind.template();
        let template = templates
            .iter()
            .find(|t| t.name == template_name)
            .ok_or_else(|| WorkerError::FailedPrecondition(format!("the broker has no {template_name:?} template")))?;
        let now = SystemTime::now();
        let mut row = WorkerRow {
            id: format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            conversation_id: request.conversation_id.clone(),
            kind: request.kind,
            task: task.to_owned(),
            state: WorkerState::Starting,
            template: template.name.clone(),
            template_version: template.version.clone(),
            runtime: template.runtime.clone(),
            sandbox_id: String::new(),
            process_id: String::new(),
            exit_code: None,
            summary: String::new(),
            end_reason: String::new(),
            requested_by: request.requested_by.clone(),
            cost_usd: 0.0,
            num_turns: 0,
            last_seq: 0,
            trace_id: request.trace_id.clone(),
            created_at: now,
            started_at: None,
            finished_at: None,
        };
        self.admit(&row).await?;
        self.audit(
            &request.requested_by,
            "spawn_worker",
            &row.id,
            &format!("{}: {task}", row.kind.as_str()),
            &row.trace_id,
        )
        .await;
        match self.start(&mut row).await {
            Ok(stream) => {
                let live = self.register(&row.id);
                let spawned =
                    Spawned { row: row.clone(), events: live.events.subscribe(), finished: live.finished.subscribe() };
                tokio::spawn(follow::follow(self.clone(), live, row, Some(stream), 0));
                Ok(spawned)
            }
            Err(error) => {
                if !row.sandbox_id.is_empty() {
                    let _ = self.inner.broker.kill_sandbox(&row.sandbox_id).await;
                }
                row.state = WorkerState::Failed;
                row.end_reason = format!("could not start: {error}");
                row.summary = row.end_reason.clone();
                row.finished_at = Some(SystemTime::now());
                self.inner.store.upsert_worker(&row).await?;
                Err(error)
            }
        }
    }

    /// Budget check and insert, under the spawn gate.
    async fn admit(&self, row: &WorkerRow) -> Result<(), WorkerError> {
        let budgets = &self.inner.budgets;
        let _gate = self.inner.spawn_gate.lock().await;
        let store = &self.inner.store;
        let in_conversation = store.count_workers(Some(&row.conversation_id), &WorkerState::ACTIVE).await?;
        if in_conversation >= budgets.max_workers_per_conversation {
            return Err(WorkerError::Budget(format!(
                "this conversation already runs {in_conversation} workers (CONDUCTOR_MAX_WORKERS_PER_CONVERSATION = {}); \
                 wait for one to finish or cancel one",
                budgets.max_workers_per_conversation
            )));
        }
        let total = store.count_workers(None, &WorkerState::ACTIVE).await?;
        if total >= budgets.max_workers {
            return Err(WorkerError::Budget(format!(
                "{total} workers are running (CONDUCTOR_MAX_WORKERS = {}); wait for one to finish",
                budgets.max_workers
            )));
        }
        store.upsert_worker(row).await?;
        Ok(())
    }

    /// Sandbox + process; on success `row` is RUNNING and stored.
    async fn start(&self, row: &mut WorkerRow) -> Result<tonic::Streaming<pb::ProcessEvent>, WorkerError> {
        let broker = &self.inner.broker;
        let timeout = self.inner.budgets.worker_wall_time + SANDBOX_SLACK;
        let sandbox = broker
            .create_sandbox(pb::CreateSandboxRequest {
                template_version: String::new(),
                template: row.template.clone(),
                env: Default::default(),
                timeout: prost_types::Duration::try_from(timeout).ok(),
                metadata: [
                    (WORKER_ID_METADATA.to_owned(), row.id.clone()),
                    ("agentstudio.conversation_id".to_owned(), row.conversation_id.clone()),
                ]
                .into(),
                idempotency_key: row.id.clone(),
            })
            .await
            .map_err(WorkerError::Broker)?;
        row.sandbox_id = sandbox.sandbox_id;
        self.inner.store.upsert_worker(row).await?;

        let request = pb::StartProcessRequest {
            sandbox_id: row.sandbox_id.clone(),
            argv: runtime::argv(&row.runtime, &row.task, self.inner.budgets.worker_max_turns),
            cwd: String::new(),
            env: runtime::env(&row.runtime).into_iter().collect(),
            tag: "worker".into(),
            stdin: false,
        };
        // Not retried: a second StartProcess would run the task twice.
        let mut stream = broker.raw().start_process(request).await.map_err(WorkerError::Broker)?.into_inner();
        let first = tokio::time::timeout(START_DEADLINE, stream.message())
            .await
            .map_err(|_| WorkerError::Broker(Status::deadline_exceeded("the worker process did not start in 30s")))?
            .map_err(WorkerError::Broker)?
            .ok_or_else(|| WorkerError::Broker(Status::unavailable("the process stream ended before it started")))?;
        row.process_id = first.process_id.clone();
        row.state = WorkerState::Running;
        row.started_at = Some(SystemTime::now());
        self.inner.store.upsert_worker(row).await?;
        Ok(stream)
    }

    fn register(&self, worker_id: &str) -> Arc<Live> {
        let (events, _) = broadcast::channel(LIVE_EVENTS_CAPACITY);
        let (finished, _) = watch::channel(None);
        let live = Arc::new(Live { events, finished, stop: CancellationToken::new(), stop_cause: Mutex::new(None) });
        self.inner.live.lock().expect("lock poisoned").insert(worker_id.to_owned(), live.clone());
        live
    }

    /// A live worker's output and end, if this conductor follows it.
    pub fn subscribe(
        &self,
        worker_id: &str,
    ) -> Option<(broadcast::Receiver<LiveEvent>, watch::Receiver<Option<WorkerRow>>)> {
        let live = self.inner.live.lock().expect("lock poisoned").get(worker_id).cloned()?;
        Some((live.events.subscribe(), live.finished.subscribe()))
    }

    pub async fn get(&self, worker_id: &str) -> Result<WorkerRow, WorkerError> {
        self.inner.store.get_worker(worker_id).await?.ok_or_else(|| WorkerError::NotFound(worker_id.to_owned()))
    }

    pub async fn list(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRow>, WorkerError> {
        Ok(self.inner.store.list_workers(filter).await?)
    }

    /// Kills the worker's sandbox; it ends CANCELLED with `by` and `reason` recorded. An ended
    /// worker is returned unchanged.
    pub async fn cancel(
        &self,
        worker_id: &str,
        by: &str,
        reason: &str,
        trace_id: &str,
    ) -> Result<WorkerRow, WorkerError> {
        let row = self.get(worker_id).await?;
        if !row.state.is_active() {
            return Ok(row);
        }
        self.audit(by, "cancel_worker", worker_id, reason, trace_id).await;
        let live = self.inner.live.lock().expect("lock poisoned").get(worker_id).cloned();
        let Some(live) = live else {
            // Followed by no one here (another replica, or a start that never finished): end it directly.
            let mut row = row;
            if !row.sandbox_id.is_empty() {
                self.inner.broker.kill_sandbox(&row.sandbox_id).await.map_err(WorkerError::Broker)?;
            }
            row.state = WorkerState::Cancelled;
            row.end_reason = cancel_reason(by, reason);
            row.finished_at = Some(SystemTime::now());
            self.inner.store.upsert_worker(&row).await?;
            return Ok(row);
        };
        let mut finished = live.finished.subscribe();
        *live.stop_cause.lock().expect("lock poisoned") =
            Some(StopCause { by: by.to_owned(), reason: reason.to_owned() });
        live.stop.cancel();
        let row = finished
            .wait_for(Option::is_some)
            .await
            .map(|row| row.clone())
            .map_err(|_| WorkerError::FailedPrecondition("the conductor is shutting down".into()))?
            .expect("waited for Some");
        Ok(row)
    }

    /// The workers a previous conductor left running. Listed before this one serves, so a worker
    /// this conductor is starting is never mistaken for a leftover.
    pub async fn leftovers(&self) -> Result<Vec<WorkerRow>, WorkerError> {
        let filter = WorkerFilter { states: WorkerState::ACTIVE.to_vec(), limit: 1000, ..WorkerFilter::default() };
        Ok(self.inner.store.list_workers(&filter).await?)
    }

    /// Resumes following `leftovers` (after a conductor restart).
    pub async fn adopt(&self, leftovers: Vec<WorkerRow>) -> Result<usize, WorkerError> {
        let mut adopted = 0;
        for mut row in leftovers {
            if self.inner.live.lock().expect("lock poisoned").contains_key(&row.id) {
                continue;
            }
            if row.state == WorkerState::Starting || row.process_id.is_empty() {
                // The previous conductor stopped mid-start: the task may or may not have begun, and
                // starting it again could run it twice. End it, with the reason.
                if !row.sandbox_id.is_empty() {
                    let _ = self.inner.broker.kill_sandbox(&row.sandbox_id).await;
                }
                row.state = WorkerState::Failed;
                row.end_reason = "the conductor restarted while the worker was starting".into();
                row.summary = row.end_reason.clone();
                row.finished_at = Some(SystemTime::now());
                self.inner.store.upsert_worker(&row).await?;
                continue;
            }
            tracing::info!(worker = %row.id, after_seq = row.last_seq, "re-adopting running worker");
            let live = self.register(&row.id);
            let suppress_through = row.last_seq;
            tokio::spawn(follow::follow(self.clone(), live, row, None, suppress_through));
            adopted += 1;
        }
        Ok(adopted)
    }

    /// The broker's output stream of a worker after `after_seq` (replay, then live), and — when
    /// not following — the last seq that existed at the call, after which the caller stops.
    pub async fn attach(
        &self,
        worker_id: &str,
        after_seq: u64,
        follow: bool,
    ) -> Result<(WorkerRow, tonic::Streaming<pb::ProcessEvent>, Option<u64>), WorkerError> {
        let row = self.get(worker_id).await?;
        if row.process_id.is_empty() {
            return Err(if row.state.is_active() {
                WorkerError::FailedPrecondition(format!("worker {worker_id} has not started yet; retry shortly"))
            } else {
                WorkerError::NotFound(format!("worker {worker_id} never started: {}", row.end_reason))
            });
        }
        let not_found = |status: Status| {
            if status.code() == tonic::Code::NotFound {
                WorkerError::NotFound(format!(
                    "the broker no longer holds the output of worker {worker_id} (its sandbox ended and was forgotten); \
                     its summary is in GetWorker"
                ))
            } else {
                WorkerError::Broker(status)
            }
        };
        let stop_after = if follow {
            None
        } else {
            let processes = self.inner.broker.list_processes(&row.sandbox_id).await.map_err(not_found)?;
            let process = processes.iter().find(|p| p.process_id == row.process_id);
            Some(process.map_or(0, |p| p.last_seq))
        };
        let request = pb::AttachProcessRequest {
            sandbox_id: row.sandbox_id.clone(),
            process_id: row.process_id.clone(),
            after_seq,
        };
        match self.inner.broker.raw().attach_process(request).await {
            Ok(stream) => Ok((row, stream.into_inner(), stop_after)),
            Err(status) if status.code() == tonic::Code::NotFound => Err(WorkerError::NotFound(format!(
                "the broker no longer holds the output of worker {worker_id} (its sandbox ended and was forgotten); \
                 its summary is in GetWorker"
            ))),
            Err(status) => Err(WorkerError::Broker(status)),
        }
    }

    pub(crate) async fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str, trace_id: &str) {
        let entry = AuditEntry {
            at: SystemTime::now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            trace_id: trace_id.to_owned(),
        };
        if let Err(error) = self.inner.store.audit(&entry).await {
            tracing::error!(%error, action, subject, "audit log write failed");
        }
    }
}

fn cancel_reason(by: &str, reason: &str) -> String {
    match (by.is_empty(), reason.is_empty()) {
        (true, true) => "cancelled".into(),
        (true, false) => format!("cancelled: {reason}"),
        (false, true) => format!("cancelled by {by}"),
        (false, false) => format!("cancelled by {by}: {reason}"),
    }
}
