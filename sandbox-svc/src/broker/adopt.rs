//! Taking over sandboxes a previous broker run left alive (E2B's outlive the broker): each is
//! tracked again under its old id, its running processes get fresh spools that start with a
//! `truncated` gap (the provider reports what it could not see while nobody was attached), and
//! its lifetime is watched again. Nothing the process wrote while the broker was down is
//! invented, and nothing is silently skipped.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::process::{self, ProcessEntry};
use super::sandbox::{Lifetime, SandboxEntry, TemplateRef};
use super::{Broker, watch_lifetime};
use crate::provider::AdoptedSandbox;
use crate::spool::{EventBody, Spool};

impl Broker {
    /// Tracks `sandboxes` (from [`crate::provider::SandboxProvider::adopt`]). Call once at start,
    /// before serving. Returns how many were adopted.
    pub fn adopt(&self, sandboxes: Vec<AdoptedSandbox>) -> usize {
        let mut adopted = 0;
        for sandbox in sandboxes {
            let sandbox_id = sandbox.sandbox_id.clone();
            match self.adopt_one(sandbox) {
                Ok(processes) => {
                    adopted += 1;
                    tracing::info!(%sandbox_id, processes, "adopted a sandbox of the previous broker run");
                }
                Err(error) => tracing::warn!(%sandbox_id, %error, "cannot adopt a sandbox of the previous broker run"),
            }
        }
        adopted
    }

    fn adopt_one(&self, sandbox: AdoptedSandbox) -> Result<usize, String> {
        let inner = &self.inner;
        let limits = &inner.limits;
        // Its lifetime from the template version it was made from (or the active one), counted
        // from when it was really created.
        let registry = &inner.repo.registry;
        let timeout = registry
            .version(&sandbox.template, &sandbox.template_version)
            .or_else(|_| registry.active(&sandbox.template))
            .map(|(template, _)| template.default_timeout)
            .unwrap_or(limits.max_timeout)
            .clamp(limits.min_timeout, limits.max_timeout);
        let template = TemplateRef { name: sandbox.template, version: sandbox.template_version, checkout_sha: None };
        let entry = Arc::new(SandboxEntry::new(
            sandbox.sandbox_id.clone(),
            template,
            sandbox.metadata,
            inner.provider.name(),
            None,
            sandbox.handle,
            Lifetime { created_at: sandbox.created_at, timeout },
        ));
        {
            let mut registry = inner.registry.lock().expect("lock poisoned");
            if registry.sandboxes.contains_key(&sandbox.sandbox_id) {
                return Err("a sandbox with this id is already tracked".into());
            }
            // It exists whatever the limit says: counted, so new creates wait for room.
            registry.live += 1;
            registry.sandboxes.insert(sandbox.sandbox_id.clone(), entry.clone());
        }
        let mut started = 0;
        for adopted in sandbox.processes {
            let process_id = {
                let mut state = entry.lock();
                let id = adopted.process_id.clone().unwrap_or_else(|| format!("p{}", state.next_process_number));
                let number = id.strip_prefix('p').and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                state.next_process_number = state.next_process_number.max(number + 1);
                id
            };
            let dir = inner.spool_dir.join(&sandbox.sandbox_id).join(&process_id);
            let spool = match Spool::create(dir, limits.spool_bytes) {
                Ok(spool) => spool,
                Err(error) => {
                    tracing::error!(sandbox_id = %sandbox.sandbox_id, %process_id, %error, "cannot spool an adopted process");
                    continue;
                }
            };
            let pid = adopted.started.pid;
            let _ = spool.append(&EventBody::Started { pid });
            let process = Arc::new(ProcessEntry {
                id: process_id,
                argv: adopted.argv,
                tag: "adopted".into(),
                cwd: adopted.cwd,
                started_at: SystemTime::now(),
                pid,
                spool,
                control: adopted.started.control,
                exit_code: Mutex::new(None),
            });
            entry.lock().processes.push(process.clone());
            tokio::spawn(process::pump(process, adopted.started.events, inner.redactor.clone()));
            started += 1;
        }
        watch_lifetime(inner, entry);
        Ok(started)
    }
}
