//! One sandbox as the broker tracks it: identity, lifetime, processes, end cause.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{Ended, SandboxState, SandboxView};
use super::process::ProcessEntry;
use crate::provider::ProviderSandbox;

/// Which template (and version) a sandbox was made from, and the checkout it got.
pub(super) struct TemplateRef {
    pub name: String,
    pub version: String,
    pub checkout_sha: Option<String>,
}

/// When a sandbox was created and how long it may live from then.
pub(super) struct Lifetime {
    pub created_at: SystemTime,
    pub timeout: Duration,
}

pub(super) struct SandboxEntry {
    pub id: String,
    pub template: String,
    pub created_at: SystemTime,
    pub metadata: BTreeMap<String, String>,
    pub provider: &'static str,
    pub idempotency_key: Option<String>,
    pub handle: Arc<dyn ProviderSandbox>,
    pub state: Mutex<SandboxMutable>,
    /// Woken when the deadline moves, so the expiry task re-arms.
    pub deadline_changed: Notify,
    /// Cancelled once the sandbox starts ending: its expiry task stops.
    pub ending: CancellationToken,
    /// The one ending of this sandbox; later kill requests wait for it.
    pub end_once: OnceCell<()>,
    pub template_version: String,
    /// The template-repository commit checked out into the workspace, if any.
    pub checkout_sha: Option<String>,
    /// The pull request this sandbox's changes were proposed as; later proposals push to it.
    pub proposed: tokio::sync::Mutex<Option<u64>>,
}

pub(super) struct SandboxMutable {
    pub expires_at: SystemTime,
    pub deadline: Instant,
    pub ended: Option<Ended>,
    /// In start order; bounded by `Limits::max_processes_per_sandbox`.
    pub processes: Vec<Arc<ProcessEntry>>,
    /// StartProcess calls between the limit check and their entry landing in `processes`.
    pub starting: usize,
    pub next_process_number: u64,
}

impl SandboxEntry {
    pub fn new(
        id: String,
        template: TemplateRef,
        metadata: BTreeMap<String, String>,
        provider: &'static str,
        idempotency_key: Option<String>,
        handle: Arc<dyn ProviderSandbox>,
        Lifetime { created_at, timeout }: Lifetime,
    ) -> SandboxEntry {
        let TemplateRef { name: template, version: template_version, checkout_sha } = template;
        let now = created_at;
        // For an adopted sandbox created earlier, what is left of its lifetime.
        let remaining = (now + timeout).duration_since(SystemTime::now()).unwrap_or_default();
        SandboxEntry {
            id,
            template,
            created_at: now,
            metadata,
            provider,
            idempotency_key,
            handle,
            state: Mutex::new(SandboxMutable {
                expires_at: now + timeout,
                deadline: Instant::now() + remaining,
                ended: None,
                processes: Vec::new(),
                starting: 0,
                next_process_number: 1,
            }),
            deadline_changed: Notify::new(),
            ending: CancellationToken::new(),
            end_once: OnceCell::new(),
            template_version,
            checkout_sha,
            proposed: tokio::sync::Mutex::new(None),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, SandboxMutable> {
        self.state.lock().expect("sandbox lock poisoned")
    }

    pub fn is_running(&self) -> bool {
        self.lock().ended.is_none() && !self.ending.is_cancelled()
    }

    pub fn set_timeout(&self, timeout: Duration) {
        let mut state = self.lock();
        state.expires_at = SystemTime::now() + timeout;
        state.deadline = Instant::now() + timeout;
        drop(state);
        // notify_one stores a permit, so a change between two waits is not lost.
        self.deadline_changed.notify_one();
    }

    pub fn view(&self) -> SandboxView {
        let state = self.lock();
        SandboxView {
            sandbox_id: self.id.clone(),
            template: self.template.clone(),
            state: if state.ended.is_some() { SandboxState::Killed } else { SandboxState::Running },
            created_at: self.created_at,
            expires_at: state.expires_at,
            metadata: self.metadata.clone(),
            ended: state.ended.clone(),
            provider: self.provider,
            template_version: self.template_version.clone(),
            checkout_sha: self.checkout_sha.clone(),
        }
    }

    pub fn matches(&self, filter: &BTreeMap<String, String>) -> bool {
        filter.iter().all(|(key, value)| self.metadata.get(key) == Some(value))
    }
}
