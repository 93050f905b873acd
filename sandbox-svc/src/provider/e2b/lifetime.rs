//! The idle policy: E2B ends (kill) or pauses a sandbox when its timeout passes, and the broker
//! keeps pushing that timeout out while the sandbox is in use.
//!
//! Every sandbox is created with a timeout of `idle` (SANDBOX_E2B_IDLE_TIMEOUT). Output from any
//! of its processes, and every call the broker makes into it, counts as use; a keeper task then
//! moves E2B's end to `idle` from now (at most every `idle / 4`, so the sandbox always has at
//! least `idle` left after its last use) — but never past the sandbox's budget (the broker's
//! deadline for it, else SANDBOX_MAX_TIMEOUT from creation). A sandbox nobody uses for `idle`
//! is then killed or paused by E2B itself, per template (SANDBOX_E2B_IDLE_POLICY), even if the
//! broker is gone. A paused sandbox is resumed by the next call the broker makes into it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::control::ControlPlane;
use crate::provider::ProviderError;

/// What E2B does with a sandbox that stayed idle for the idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    Kill,
    Pause,
}

impl FromStr for IdleAction {
    type Err = String;

    fn from_str(s: &str) -> Result<IdleAction, String> {
        match s.trim() {
            "kill" => Ok(IdleAction::Kill),
            "pause" => Ok(IdleAction::Pause),
            other => Err(format!("unknown idle action {other:?} (expected `kill` or `pause`)")),
        }
    }
}

/// The idle action per template: `kill`, `pause`, or a list like
/// `worker=pause,infrastructure=kill` where a bare action (or `*=`) sets the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdlePolicy {
    default: IdleAction,
    per_template: BTreeMap<String, IdleAction>,
}

impl IdlePolicy {
    pub fn action_for(&self, template: &str) -> IdleAction {
        self.per_template.get(template).copied().unwrap_or(self.default)
    }
}

impl Default for IdlePolicy {
    fn default() -> IdlePolicy {
        IdlePolicy { default: IdleAction::Kill, per_template: BTreeMap::new() }
    }
}

impl FromStr for IdlePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<IdlePolicy, String> {
        let mut policy = IdlePolicy::default();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                None | Some(("*", _)) => policy.default = entry.rsplit('=').next().unwrap_or(entry).parse()?,
                Some((template, action)) => {
                    policy.per_template.insert(template.trim().to_owned(), action.parse()?);
                }
            }
        }
        Ok(policy)
    }
}

/// Margin before E2B's end within which a call resumes the sandbox first (E2B's evictor may
/// act a little late, never early).
const RESUME_GUARD: Duration = Duration::from_secs(2);
/// How long after the end an idle kill is checked for.
const KILL_CHECK_DELAY: Duration = Duration::from_secs(3);
/// Retry interval when E2B could not be asked (down, rate limited).
const RETRY_INTERVAL: Duration = Duration::from_secs(30);

struct Window {
    /// When E2B applies the idle action unless the timeout is moved again.
    end: Instant,
    /// When the timeout was last moved: refreshes are spaced `idle / 4` apart.
    set_at: Instant,
    /// Past this, use no longer extends the sandbox.
    budget_end: Instant,
    paused: bool,
}

/// One sandbox's lifetime as the provider tracks it.
pub struct Lifetime {
    pub action: IdleAction,
    pub idle: Duration,
    window: Mutex<Window>,
    /// Use since the keeper last looked: `notify_one` keeps one permit, so none is missed.
    activity: Notify,
    /// Bumped on every resume: subscribers parked on a paused sandbox wait for it.
    resumed: watch::Sender<u64>,
    /// Set once the sandbox ended on E2B's side, with why.
    lost: watch::Sender<Option<String>>,
    /// One resume at a time.
    resume_lock: tokio::sync::Mutex<()>,
}

impl Lifetime {
    /// `first_timeout` is what the sandbox was created (or connected) with.
    pub fn new(action: IdleAction, idle: Duration, first_timeout: Duration, budget_end: Instant) -> Lifetime {
        let now = Instant::now();
        Lifetime {
            action,
            idle,
            window: Mutex::new(Window { end: now + first_timeout, set_at: now, budget_end, paused: false }),
            activity: Notify::new(),
            resumed: watch::Sender::new(0),
            lost: watch::Sender::new(None),
            resume_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The timeout to ask E2B for now: `idle`, capped by what is left of the budget (but at
    /// least 1 s, E2B's minimum); `None` once the budget is spent.
    pub fn next_timeout(&self) -> Option<Duration> {
        let left = self.window.lock().expect("lock poisoned").budget_end.checked_duration_since(Instant::now())?;
        (left >= Duration::from_secs(1)).then(|| self.idle.min(left))
    }

    /// Records use of the sandbox.
    pub fn touch(&self) {
        self.activity.notify_one();
    }

    pub fn set_budget_end(&self, budget_end: Instant) {
        self.window.lock().expect("lock poisoned").budget_end = budget_end;
        self.touch();
    }

    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    pub fn mark_lost(&self, reason: String) {
        self.lost.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            tracing::info!(%reason, "e2b sandbox ended on E2B's side");
            *lost = Some(reason);
            true
        });
    }

    pub fn subscribe_lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.subscribe()
    }

    pub fn subscribe_resumed(&self) -> watch::Receiver<u64> {
        self.resumed.subscribe()
    }

    /// Resumes the sandbox if the idle policy may have paused it. Call before using it.
    pub async fn ensure_running(&self, control: &ControlPlane, sandbox_id: &str) -> Result<(), ProviderError> {
        if let Some(reason) = self.lost_reason() {
            return Err(ProviderError::FailedPrecondition(format!("the sandbox has ended: {reason}")));
        }
        if self.action != IdleAction::Pause || !self.may_be_paused() {
            return Ok(());
        }
        let _one_at_a_time = self.resume_lock.lock().await;
        if !self.may_be_paused() {
            return Ok(());
        }
        let timeout = self.next_timeout().unwrap_or(self.idle);
        match control.connect_sandbox(sandbox_id, timeout).await {
            Ok(_) => {
                let now = Instant::now();
                let mut window = self.window.lock().expect("lock poisoned");
                (window.end, window.set_at, window.paused) = (now + timeout, now, false);
                drop(window);
                self.resumed.send_modify(|generation| *generation += 1);
                tracing::info!(sandbox_id, "resumed the e2b sandbox the idle policy had paused");
                Ok(())
            }
            Err(ProviderError::NotFound(message)) => {
                self.mark_lost(format!("it no longer exists on E2B ({message})"));
                Err(ProviderError::FailedPrecondition(format!("the sandbox has ended: {message}")))
            }
            Err(error) => Err(error),
        }
    }

    fn may_be_paused(&self) -> bool {
        let window = self.window.lock().expect("lock poisoned");
        window.paused || Instant::now() + RESUME_GUARD >= window.end
    }

    /// Keeps E2B's timeout ahead of use until `stop` is cancelled or the sandbox is lost.
    pub async fn keep(&self, control: &ControlPlane, sandbox_id: &str, stop: CancellationToken) {
        let mut pending = false;
        let mut resumed = self.resumed.subscribe();
        loop {
            // Marked seen before the window is read: a resume after this wakes `changed` below
            // (`ensure_running` clears `paused` before it signals).
            resumed.borrow_and_update();
            let (end, refresh_at, paused) = {
                let window = self.window.lock().expect("lock poisoned");
                (window.end, window.set_at + self.idle / 4, window.paused)
            };
            if paused {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = resumed.changed() => continue,
                }
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = self.activity.notified(), if !pending => pending = true,
                () = tokio::time::sleep_until(refresh_at), if pending => {
                    pending = false;
                    if !self.extend(control, sandbox_id).await {
                        return;
                    }
                }
                () = tokio::time::sleep_until(end), if !pending => {
                    if !self.on_idle(control, sandbox_id, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Moves E2B's end to `idle` from now. False once the sandbox is gone.
    async fn extend(&self, control: &ControlPlane, sandbox_id: &str) -> bool {
        let Some(timeout) = self.next_timeout() else { return true };
        match control.set_timeout(sandbox_id, timeout).await {
            Ok(()) => {
                let now = Instant::now();
                let mut window = self.window.lock().expect("lock poisoned");
                (window.end, window.set_at) = (now + timeout, now);
                true
            }
            Err(ProviderError::NotFound(message)) => {
                self.mark_lost(format!("it no longer exists on E2B ({message})"));
                false
            }
            Err(error) => {
                tracing::warn!(sandbox_id, %error, "cannot extend the e2b sandbox's timeout; retrying on the next use");
                // The next use retries, but not before RETRY_INTERVAL (or idle / 4, if sooner).
                let now = Instant::now();
                let spacing = self.idle / 4;
                let mut window = self.window.lock().expect("lock poisoned");
                window.set_at = now.checked_sub(spacing).unwrap_or(now) + RETRY_INTERVAL.min(spacing);
                true
            }
        }
    }

    /// E2B's end passed without use: it kills or pauses the sandbox now. False once it is gone.
    async fn on_idle(&self, control: &ControlPlane, sandbox_id: &str, stop: &CancellationToken) -> bool {
        let budget_spent = self.next_timeout().is_none();
        if self.action == IdleAction::Pause && !budget_spent {
            tracing::info!(sandbox_id, idle = ?self.idle, "e2b sandbox idle: E2B pauses it (idle policy `pause`)");
            self.window.lock().expect("lock poisoned").paused = true;
            return true;
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(KILL_CHECK_DELAY) => {}
        }
        match control.get_sandbox(sandbox_id).await {
            Err(ProviderError::NotFound(_)) => {
                let idle = humantime::format_duration(self.idle);
                self.mark_lost(if budget_spent {
                    "it reached the end of its lifetime budget on E2B".to_owned()
                } else {
                    format!("no output or use for {idle}: E2B killed it (idle policy `kill`, SANDBOX_E2B_IDLE_TIMEOUT)")
                });
                false
            }
            Ok(listed) => {
                // Still there: extended elsewhere, or E2B's evictor is late. Look again later.
                let later = humantime::parse_rfc3339_weak(&listed.end_at)
                    .ok()
                    .and_then(|end| end.duration_since(std::time::SystemTime::now()).ok())
                    .unwrap_or_default()
                    .max(KILL_CHECK_DELAY);
                let mut window = self.window.lock().expect("lock poisoned");
                window.end = Instant::now() + later;
                if listed.state == "paused" {
                    window.paused = true;
                }
                true
            }
            Err(error) => {
                tracing::warn!(sandbox_id, %error, "cannot check the idle e2b sandbox");
                self.window.lock().expect("lock poisoned").end = Instant::now() + RETRY_INTERVAL;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_policies_parse_per_template_with_a_default() {
        let policy: IdlePolicy = "worker=pause, infrastructure=kill".parse().unwrap();
        assert_eq!(policy.action_for("worker"), IdleAction::Pause);
        assert_eq!(policy.action_for("infrastructure"), IdleAction::Kill);
        assert_eq!(policy.action_for("other"), IdleAction::Kill);
        let policy: IdlePolicy = "pause,infrastructure=kill".parse().unwrap();
        assert_eq!(
            (policy.action_for("x"), policy.action_for("infrastructure")),
            (IdleAction::Pause, IdleAction::Kill)
        );
        let policy: IdlePolicy = "*=pause".parse().unwrap();
        assert_eq!(policy.action_for("x"), IdleAction::Pause);
        assert_eq!("".parse::<IdlePolicy>().unwrap(), IdlePolicy::default());
        assert!("worker=sleep".parse::<IdlePolicy>().unwrap_err().contains("sleep"));
    }

    #[tokio::test]
    async fn the_next_timeout_is_idle_capped_by_the_budget() {
        let life = Lifetime::new(
            IdleAction::Kill,
            Duration::from_secs(600),
            Duration::from_secs(600),
            Instant::now() + Duration::from_secs(3600),
        );
        assert_eq!(life.next_timeout(), Some(Duration::from_secs(600)));
        life.set_budget_end(Instant::now() + Duration::from_secs(120));
        let next = life.next_timeout().unwrap();
        assert!(next <= Duration::from_secs(120) && next > Duration::from_secs(118), "{next:?}");
        life.set_budget_end(Instant::now());
        assert_eq!(life.next_timeout(), None);
    }

    #[test]
    fn lost_is_recorded_once() {
        let life = Lifetime::new(IdleAction::Kill, Duration::from_secs(1), Duration::from_secs(1), Instant::now());
        life.mark_lost("first".into());
        life.mark_lost("second".into());
        assert_eq!(life.lost_reason().as_deref(), Some("first"));
    }
}
