//! The `e2b` provider: sandboxes are E2B microVMs, driven over E2B's REST control plane
//! ([`control`]) and the envd daemon inside each VM ([`envd`], Connect RPC over [`connect`]).
//!
//! There is no official Rust SDK, so this speaks the wire protocols described in
//! `reference/e2b-api.md`. What the broker relies on and how it is kept:
//!
//! * **No silent output loss.** One subscriber per process follows envd's stream for the
//!   process's whole life ([`process`]); a cut stream is reattached with `Connect` (live output
//!   only, so nothing is duplicated) and the detached interval is reported in-band as a gap.
//! * **Restarts.** Every sandbox carries the broker's marker in its E2B metadata
//!   ([`BROKER_MARKER_KEY`] = the broker id) plus the broker's own ids, so a restarted broker
//!   finds and re-adopts them ([`SandboxProvider::adopt`]).
//! * **Idle policy.** E2B's own timeout is the idle timeout; use keeps pushing it out within the
//!   sandbox's budget, and E2B kills or pauses an idle one per template ([`lifetime`]).
//! * **Credentials.** The API key goes only to the control plane, each sandbox's envd token only
//!   to its envd; upstream error text is scrubbed of both ([`error`]).

pub mod connect;
pub mod control;
pub mod dockerfile;
pub mod envd;
mod error;
mod export;
mod http;
pub mod lifetime;
mod process;
mod sandbox;
pub mod tar;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use self::control::ControlPlane;
use self::control::{ListedSandbox, NewSandbox, SandboxInfo};
use self::envd::{Envd, Event, envd_base};
use self::error::envd_error;
use self::lifetime::Lifetime;
pub use self::lifetime::{IdleAction, IdlePolicy};
pub use self::process::NOTICE_PREFIX;
use self::sandbox::{E2bSandbox, PROCESS_TAG_PREFIX, SandboxCore};
use crate::provider::{AdoptedProcess, AdoptedSandbox, ProviderError, ProviderSandbox, SandboxProvider, SandboxSpec};
use crate::secret::SecretString;

/// Metadata key holding the id of the broker that created the sandbox: what a restarted
/// broker lists by.
pub const BROKER_MARKER_KEY: &str = "agentstudio.broker";
/// Metadata keys with the broker's view of the sandbox, for re-adoption.
pub const SANDBOX_ID_KEY: &str = "agentstudio.broker.sandbox_id";
pub const TEMPLATE_KEY: &str = "agentstudio.broker.template";
pub const TEMPLATE_VERSION_KEY: &str = "agentstudio.broker.template_version";

/// What the `e2b` provider needs from the broker's configuration.
#[derive(Debug, Clone)]
pub struct E2bOptions {
    /// Control-plane base URL (E2B_API_URL, else `https://api.<E2B_DOMAIN>`).
    pub api_url: String,
    /// E2B_DOMAIN: sandboxes' envd hosts are `49983-<id>.<domain>` unless E2B names another.
    pub domain: String,
    /// SANDBOX_E2B_ENVD_URL: one fixed envd URL (self-hosted edge, tests).
    pub envd_url: Option<String>,
    pub api_key: SecretString,
    /// Total time one control-plane or unary envd call may take.
    pub request_timeout: Duration,
    /// envd's lifetime for every process (`Connect-Timeout-Ms` on Start); `None` = none.
    pub process_deadline: Option<Duration>,
    pub idle_timeout: Duration,
    pub idle_policy: IdlePolicy,
    /// Longest any sandbox is kept alive (the broker's SANDBOX_MAX_TIMEOUT) unless the broker
    /// gives a deadline.
    pub max_lifetime: Duration,
    /// E2B template names are this plus the broker's template name.
    pub template_prefix: String,
    /// Absolute directory inside the VM that workspace paths are relative to.
    pub workspace_dir: String,
    /// Marks this broker's sandboxes; stable across restarts.
    pub broker_id: String,
}

impl E2bOptions {
    /// The control-plane URL for `api_url` (an override) or `domain`.
    pub fn api_url_for(api_url: Option<&str>, domain: &str) -> String {
        match api_url.filter(|u| !u.is_empty()) {
            Some(url) => url.to_owned(),
            None => format!("https://api.{domain}"),
        }
    }
}

/// The E2B template reference (`name:tag`) of a broker template version: the builder tags each
/// build with it, the provider creates sandboxes from it. Without a version id it is the bare
/// name (E2B's `default` tag, which promotion moves).
pub fn template_reference(prefix: &str, template: &str, version_id: &str) -> String {
    let name = template_name(prefix, template);
    match version_tag(version_id) {
        Some(tag) => format!("{name}:{tag}"),
        None => name,
    }
}

/// The E2B template name of a broker template (`[a-z0-9-_]`).
pub fn template_name(prefix: &str, template: &str) -> String {
    format!("{prefix}{template}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .collect()
}

/// The E2B tag of a template version `sha256:<hex>`: `v-` and 16 hex digits (tags match
/// `^[a-z0-9-_.]+$`); `None` for an empty version id.
pub fn version_tag(version_id: &str) -> Option<String> {
    let hex: String = version_id
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    (!hex.is_empty()).then(|| format!("v-{hex}"))
}

pub struct E2bProvider {
    control: Arc<ControlPlane>,
    options: Arc<E2bOptions>,
    http: reqwest::Client,
}

impl E2bProvider {
    pub fn new(options: E2bOptions) -> Result<E2bProvider, String> {
        let http = http_client()?;
        let control =
            ControlPlane::new(http.clone(), &options.api_url, options.api_key.clone(), options.request_timeout)?;
        if options.envd_url.is_none() && options.domain.is_empty() {
            return Err("E2B_DOMAIN must not be empty".into());
        }
        if !options.workspace_dir.starts_with('/') {
            return Err(format!("SANDBOX_E2B_WORKSPACE_DIR {:?} must be absolute", options.workspace_dir));
        }
        Ok(E2bProvider { control: Arc::new(control), options: Arc::new(options), http })
    }

    /// The control plane, shared with the template builder.
    pub fn control_plane(&self) -> Arc<ControlPlane> {
        self.control.clone()
    }

    /// Wraps an E2B sandbox the control plane returned.
    fn sandbox(
        &self,
        info: &SandboxInfo,
        template: &str,
        first_timeout: Duration,
        budget: Duration,
    ) -> Result<E2bSandbox, ProviderError> {
        let options = &self.options;
        let domain = info.domain.as_deref().filter(|d| !d.is_empty()).unwrap_or(&options.domain);
        let base =
            envd_base(options.envd_url.as_deref(), &info.sandbox_id, domain).map_err(ProviderError::Unavailable)?;
        let envd = Envd::new(
            self.http.clone(),
            base,
            info.sandbox_id.clone(),
            info.envd_access_token.clone().map(SecretString::new),
            options.request_timeout,
            options.process_deadline,
            self.control.scrubber(),
        );
        let action = options.idle_policy.action_for(template);
        let budget_end = tokio::time::Instant::now() + budget;
        let core = SandboxCore {
            e2b_id: info.sandbox_id.clone(),
            envd,
            control: self.control.clone(),
            life: Arc::new(Lifetime::new(action, options.idle_timeout, first_timeout, budget_end)),
            ending: tokio_util::sync::CancellationToken::new(),
            abandon: tokio_util::sync::CancellationToken::new(),
            process_deadline: options.process_deadline,
        };
        Ok(E2bSandbox::new(Arc::new(core), options.workspace_dir.clone(), options.request_timeout))
    }

    /// Best effort after a create whose answer was lost: the sandbox may exist anyway.
    fn clean_up_after_failed_create(&self, sandbox_id: String) {
        let control = self.control.clone();
        let marker = BTreeMap::from([
            (BROKER_MARKER_KEY.to_owned(), self.options.broker_id.clone()),
            (SANDBOX_ID_KEY.to_owned(), sandbox_id),
        ]);
        tokio::spawn(async move {
            if let Ok(found) = control.list_sandboxes(&marker).await {
                for orphan in found {
                    tracing::warn!(e2b_id = %orphan.sandbox_id, "killing an e2b sandbox whose creation reported failure");
                    let _ = control.kill_sandbox(&orphan.sandbox_id).await;
                }
            }
        });
    }

    async fn adopt_one(&self, listed: ListedSandbox) -> Result<Option<AdoptedSandbox>, ProviderError> {
        let Some(sandbox_id) = listed.metadata.get(SANDBOX_ID_KEY).cloned() else { return Ok(None) };
        let template = listed.metadata.get(TEMPLATE_KEY).cloned().unwrap_or_default();
        let template_version = listed.metadata.get(TEMPLATE_VERSION_KEY).cloned().unwrap_or_default();
        let created_at = humantime::parse_rfc3339_weak(&listed.started_at).unwrap_or_else(|_| SystemTime::now());
        let budget = (created_at + self.options.max_lifetime).duration_since(SystemTime::now()).unwrap_or_default();
        let timeout = self.options.idle_timeout.min(budget).max(Duration::from_secs(1));
        // Resumes a paused one and hands back its envd token and domain, which a listing lacks.
        let info = self.control.connect_sandbox(&listed.sandbox_id, timeout).await?;
        let sandbox = self.sandbox(&info, &template, timeout, budget)?;
        let core = sandbox.core.clone();
        let listed_processes =
            core.envd.list().await.map_err(|e| envd_error("list processes", "sandbox_id", &e, core.envd.scrubber()))?;
        let mut processes = Vec::new();
        for process in listed_processes {
            let Some(tag) = process.tag.as_deref().filter(|t| t.starts_with(PROCESS_TAG_PREFIX)) else { continue };
            let process_id =
                tag.strip_prefix(PROCESS_TAG_PREFIX).and_then(|rest| rest.strip_prefix(':')).map(str::to_owned);
            let mut stream = match core.envd.connect(process.pid).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%sandbox_id, pid = process.pid, %error, "cannot reattach to a process; leaving it out");
                    continue;
                }
            };
            match stream.next().await {
                Ok(Some(Event::Start { .. })) => {}
                outcome => {
                    tracing::warn!(%sandbox_id, pid = process.pid, ?outcome, "process ended while reattaching; leaving it out");
                    continue;
                }
            }
            let notice = "the broker restarted; output the process wrote while it was down is missing".to_owned();
            let (started, done) = process::follow_process(core.clone(), process.pid, stream, Some(notice));
            sandbox.track(done);
            let workspace = format!("{}/", self.options.workspace_dir.trim_end_matches('/'));
            let cwd =
                process.config.cwd.as_deref().and_then(|c| c.strip_prefix(&workspace)).unwrap_or_default().to_owned();
            let argv = std::iter::once(process.config.cmd).chain(process.config.args).collect();
            processes.push(AdoptedProcess { process_id, argv, cwd, started });
        }
        let metadata = listed.metadata.into_iter().filter(|(key, _)| !key.starts_with(BROKER_MARKER_KEY)).collect();
        tracing::info!(%sandbox_id, e2b_id = %listed.sandbox_id, processes = processes.len(), "re-adopted an e2b sandbox");
        Ok(Some(AdoptedSandbox {
            sandbox_id,
            template,
            template_version,
            metadata,
            created_at,
            handle: Arc::new(sandbox),
            processes,
        }))
    }
}

/// One HTTP/1.1 client for the control plane, envd and uploads. No total timeout here: each
/// unary call sets its own, and process streams live as long as their processes.
fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot build the E2B HTTP client: {}", http::error_chain(&e)))
}

#[async_trait]
impl SandboxProvider for E2bProvider {
    fn name(&self) -> &'static str {
        "e2b"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn ProviderSandbox>, ProviderError> {
        let options = &self.options;
        let template = &spec.template;
        let mut metadata = spec.metadata.clone();
        metadata.retain(|key, _| !key.starts_with(BROKER_MARKER_KEY));
        metadata.extend([
            (BROKER_MARKER_KEY.to_owned(), options.broker_id.clone()),
            (SANDBOX_ID_KEY.to_owned(), spec.sandbox_id.clone()),
            (TEMPLATE_KEY.to_owned(), template.name.clone()),
            (TEMPLATE_VERSION_KEY.to_owned(), template.version.clone()),
        ]);
        let action = options.idle_policy.action_for(&template.name);
        let timeout = options.idle_timeout.min(options.max_lifetime).max(Duration::from_secs(1));
        let request = NewSandbox {
            template_id: template_reference(&options.template_prefix, &template.name, &template.version),
            timeout: timeout.as_secs(),
            auto_pause: action == IdleAction::Pause,
            secure: true,
            allow_internet_access: template.network,
            metadata,
            env_vars: spec.env.clone(),
        };
        let info = match self.control.create_sandbox(&request).await {
            Ok(info) => info,
            Err(error) => {
                if matches!(error, ProviderError::Unavailable(_)) {
                    self.clean_up_after_failed_create(spec.sandbox_id.clone());
                }
                return Err(error);
            }
        };
        tracing::info!(sandbox_id = %spec.sandbox_id, e2b_id = %info.sandbox_id, template = %request.template_id, envd = %info.envd_version, "e2b sandbox created");
        let sandbox = self.sandbox(&info, &template.name, timeout, options.max_lifetime)?;
        Ok(Arc::new(sandbox))
    }

    fn sandboxes_outlive_broker(&self) -> bool {
        true
    }

    async fn adopt(&self) -> Result<Vec<AdoptedSandbox>, ProviderError> {
        let marker = BTreeMap::from([(BROKER_MARKER_KEY.to_owned(), self.options.broker_id.clone())]);
        let listed = self.control.list_sandboxes(&marker).await?;
        let mut adopted = Vec::new();
        for sandbox in listed {
            // The filter is the server's; check it here too, a self-hosted API may ignore it.
            if sandbox.metadata.get(BROKER_MARKER_KEY) != Some(&self.options.broker_id) {
                continue;
            }
            let e2b_id = sandbox.sandbox_id.clone();
            match self.adopt_one(sandbox).await {
                Ok(Some(one)) => adopted.push(one),
                Ok(None) => {
                    tracing::warn!(%e2b_id, "e2b sandbox carries this broker's marker but no sandbox id; leaving it")
                }
                Err(error) => {
                    tracing::warn!(%e2b_id, %error, "cannot re-adopt an e2b sandbox; leaving it to its idle timeout")
                }
            }
        }
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_references_are_valid_e2b_names_and_tags() {
        let version = "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(template_reference("agentstudio-", "worker", version), "agentstudio-worker:v-0123456789abcdef");
        assert_eq!(template_name("Agent.Studio/", "my tpl"), "agent-studio-my-tpl");
        assert_eq!(template_reference("", "base", ""), "base");
    }

    #[test]
    fn the_api_url_is_the_override_else_from_the_domain() {
        assert_eq!(E2bOptions::api_url_for(None, "e2b.app"), "https://api.e2b.app");
        assert_eq!(E2bOptions::api_url_for(Some(""), "e2b.dev"), "https://api.e2b.dev");
        assert_eq!(E2bOptions::api_url_for(Some("http://127.0.0.1:3000"), "e2b.app"), "http://127.0.0.1:3000");
    }
}
