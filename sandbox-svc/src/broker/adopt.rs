//! Taking over sandboxes a previous broker run left alive (E2B's outlive the broker): each is
//! tracked again under its old id, its running processes continue the spools the previous run
//! wrote (same events under the same seqs, so a client resumes "after N" across the restart),
//! then a `truncated` gap (the provider reports what it could not see while nobody was
//! attached), and its lifetime is watched again. Nothing the process wrote while the broker was
//! down is invented, and nothing is silently skipped.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::process::{self, ProcessEntry};
use super::sandbox::{Lifetime, SandboxEntry, TemplateRef};
use super::{Broker, watch_lifetime};
use crate::provider::AdoptedSandbox;
use crate::spool::{EventBody, Reopened, Spool};

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
        // The ids come back from the sandbox (envd's process tags), so anything inside it could
        // have set them: only the broker's own form `p<n>`, the first time it is seen, names a
        // spool to continue. Those are reserved first; every other process gets a fresh number
        // past them, and a fresh spool.
        let mut reserved = std::collections::HashSet::new();
        let own: Vec<Option<u64>> = sandbox
            .processes
            .iter()
            .map(|p| p.process_id.as_deref().and_then(own_process_number).filter(|&n| reserved.insert(n)))
            .collect();
        {
            let mut state = entry.lock();
            let past_reserved = reserved.iter().max().map_or(0, |n| n + 1);
            state.next_process_number = state.next_process_number.max(past_reserved);
        }
        let mut started = 0;
        for (adopted, own) in sandbox.processes.into_iter().zip(own) {
            let number = own.unwrap_or_else(|| {
                let mut state = entry.lock();
                let number = state.next_process_number;
                state.next_process_number += 1;
                number
            });
            let process_id = format!("p{number}");
            let dir = inner.spool_dir.join(&sandbox.sandbox_id).join(&process_id);
            let pid = adopted.started.pid;
            let spooled = match own {
                Some(_) => continue_spool(&dir, limits.spool_bytes, pid),
                None => fresh_spool(&dir, limits.spool_bytes, pid),
            };
            let Reopened { spool, exit } = match spooled {
                Ok(spooled) => spooled,
                Err(error) => {
                    tracing::error!(sandbox_id = %sandbox.sandbox_id, %process_id, %error, "cannot spool an adopted process");
                    continue;
                }
            };
            let process = Arc::new(ProcessEntry {
                id: process_id,
                argv: adopted.argv,
                tag: "adopted".into(),
                cwd: adopted.cwd,
                started_at: SystemTime::now(),
                pid,
                spool,
                control: adopted.started.control,
                exit_code: Mutex::new(exit.map(|(exit_code, _)| exit_code)),
            });
            entry.lock().processes.push(process.clone());
            if exit.is_some() {
                // It ended before the previous run stopped (envd still lists a process for a
                // while after its end): its spool is complete, nothing to follow.
                continue;
            }
            tokio::spawn(process::pump(
                process,
                adopted.started.events,
                inner.redactor.clone(),
                inner.handover.clone(),
            ));
            started += 1;
        }
        watch_lifetime(inner, entry);
        Ok(started)
    }
}

impl Broker {
    /// Deletes every spool of the previous run that no adopted process continues (processes
    /// that ended, sandboxes that are gone or died with it). Call once at start, after
    /// [`Broker::adopt`] and before serving, so new processes find their directories free.
    pub fn clear_stale_spools(&self) {
        let inner = &self.inner;
        let Ok(sandboxes) = std::fs::read_dir(&inner.spool_dir) else { return };
        let tracked = inner.registry.lock().expect("lock poisoned").sandboxes.clone();
        for sandbox_dir in sandboxes.flatten() {
            let name = sandbox_dir.file_name().to_string_lossy().into_owned();
            let Some(entry) = tracked.get(&name) else {
                remove_dir(&sandbox_dir.path());
                continue;
            };
            let live: Vec<String> = entry.lock().processes.iter().map(|p| p.id.clone()).collect();
            for process_dir in std::fs::read_dir(sandbox_dir.path()).into_iter().flatten().flatten() {
                if !live.iter().any(|id| process_dir.file_name() == id.as_str()) {
                    remove_dir(&process_dir.path());
                }
            }
        }
    }
}

/// `n` of a process id of the broker's own form `p<n>` (digits only, no sign or leading zero).
fn own_process_number(id: &str) -> Option<u64> {
    let digits = id.strip_prefix('p')?;
    let canonical = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    if canonical { digits.parse().ok() } else { None }
}

/// The spool the previous run wrote for this process, continued after its last seq (with the
/// exit it recorded, if the process had ended); a fresh one, starting with the process's
/// start, when there is none to continue.
fn continue_spool(dir: &Path, limit_bytes: u64, pid: u32) -> std::io::Result<Reopened> {
    match Spool::reopen(dir.to_owned(), limit_bytes) {
        Ok(Some(reopened)) => return Ok(reopened),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot continue the previous spool; starting afresh")
        }
    }
    fresh_spool(dir, limit_bytes, pid)
}

/// A new spool in `dir` (whatever was there is deleted), starting with the process's start.
fn fresh_spool(dir: &Path, limit_bytes: u64, pid: u32) -> std::io::Result<Reopened> {
    remove_dir(dir);
    let spool = Spool::create(dir.to_owned(), limit_bytes)?;
    spool.append(&EventBody::Started { pid })?;
    Ok(Reopened { spool, exit: None })
}

fn remove_dir(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove a stale spool"),
    }
}

#[cfg(test)]
mod tests {
    use super::own_process_number;

    #[test]
    fn only_the_brokers_own_process_ids_name_a_spool() {
        assert_eq!(own_process_number("p1"), Some(1));
        assert_eq!(own_process_number("p42"), Some(42));
        for hostile in
            ["", "p", "p0", "p01", "/", "../..", "p1/../..", "p-1", "p+1", "p1 ", "x1", "p99999999999999999999"]
        {
            assert_eq!(own_process_number(hostile), None, "{hostile:?}");
        }
    }
}
