//! Broker configuration: every flag has a `SANDBOX_*` environment fallback.
//!
//! The struct is plain data so tests build it directly (`BrokerConfig::for_tests`) instead of
//! touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::secret::SecretString;

/// Where the broker listens, what it runs and what it may use.
#[derive(Debug, Clone, Args)]
pub struct BrokerConfig {
    /// gRPC listen address. A non-loopback address requires `--auth-token`.
    #[arg(long = "listen", env = "SANDBOX_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: SocketAddr,

    /// Bearer token every RPC except health must carry. Required off loopback.
    #[arg(long, env = "SANDBOX_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<SecretString>,

    /// Workspaces and output spools live here.
    #[arg(long, env = "SANDBOX_DATA_DIR", default_value = ".studio/sandbox")]
    pub data_dir: PathBuf,

    /// Directory holding `<name>/template.toml`; the built-in copies are used when it is absent.
    #[arg(long, env = "SANDBOX_TEMPLATES_DIR", default_value = "templates")]
    pub templates_dir: PathBuf,

    /// Where the template repository lives: `local-git` (a bare repository in the data dir, seeded
    /// from the templates directory) or `github` (GITHUB_REPOSITORY, with GITHUB_TOKEN or a GitHub App).
    #[arg(long, env = "SANDBOX_CODE_HOST", default_value = "local-git")]
    pub code_host: String,

    /// Sandbox provider: `local` (bubblewrap) or `e2b` (E2B microVMs; needs E2B_API_KEY; also
    /// switches template builds to E2B).
    #[arg(long, env = "SANDBOX_PROVIDER", default_value = "local")]
    pub provider: String,

    /// Run `local` sandboxes WITHOUT isolation when bubblewrap is missing. Never in production.
    #[arg(long, env = "SANDBOX_LOCAL_UNSAFE_NO_ISOLATION", default_value_t = false)]
    pub unsafe_no_isolation: bool,

    /// Host directories bound read-only into `local` sandboxes (an allow-list: never add /run or /home).
    #[arg(long, env = "SANDBOX_LOCAL_ROOT_PATHS", value_delimiter = ',', default_value = crate::provider::local::DEFAULT_ROOT_PATHS)]
    pub root_paths: Vec<PathBuf>,

    /// Paths under those that appear empty inside `local` sandboxes (the data dir and secret files always do).
    #[arg(long, env = "SANDBOX_LOCAL_HIDE_PATHS", value_delimiter = ',')]
    pub hide_paths: Vec<PathBuf>,

    /// Host `uid:gid` that `local` sandboxes run as. Default: 65534:65534 (nobody) when the broker runs as root, else the broker's own.
    #[arg(long, env = "SANDBOX_LOCAL_RUN_AS")]
    pub run_as: Option<String>,

    /// Extra secrets to mask in every output byte and error, comma separated (E2B and GitHub keys are added automatically).
    #[arg(long, env = "SANDBOX_REDACT_SECRETS", value_delimiter = ',', hide_env_values = true)]
    pub redact_secrets: Vec<SecretString>,

    /// File holding the auth token (a mounted secret); takes precedence over SANDBOX_AUTH_TOKEN.
    #[arg(long, env = "SANDBOX_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// E2B API key (used by the `e2b` provider; masked everywhere).
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true)]
    pub e2b_api_key: Option<SecretString>,

    /// File holding the E2B API key; takes precedence over E2B_API_KEY.
    #[arg(long, env = "E2B_API_KEY_FILE")]
    pub e2b_api_key_file: Option<PathBuf>,

    /// GitHub token (used by the `github` code host; masked everywhere).
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<SecretString>,

    /// File holding the GitHub token; takes precedence over GITHUB_TOKEN.
    #[arg(long, env = "GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,

    /// The template repository on GitHub, `owner/name` (SANDBOX_CODE_HOST=github).
    #[arg(long, env = "GITHUB_REPOSITORY")]
    pub github_repository: Option<String>,

    /// GitHub REST API root (GitHub Enterprise Server, tests).
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api_url: String,

    /// Branch of the template repository that pull requests target and templates build from.
    #[arg(long, env = "SANDBOX_GITHUB_BRANCH", default_value = "main")]
    pub github_branch: String,

    /// GitHub App id: with GITHUB_APP_INSTALLATION_ID and GITHUB_APP_PRIVATE_KEY, used instead of GITHUB_TOKEN.
    #[arg(long, env = "GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,

    /// The App's installation on the template repository's owner.
    #[arg(long, env = "GITHUB_APP_INSTALLATION_ID")]
    pub github_app_installation_id: Option<u64>,

    /// The App's private key (PEM; masked everywhere).
    #[arg(long, env = "GITHUB_APP_PRIVATE_KEY", hide_env_values = true)]
    pub github_app_private_key: Option<SecretString>,

    /// File holding the App's private key; takes precedence over GITHUB_APP_PRIVATE_KEY.
    #[arg(long, env = "GITHUB_APP_PRIVATE_KEY_FILE")]
    pub github_app_private_key_file: Option<PathBuf>,

    /// Anthropic API key the broker injects (as ANTHROPIC_API_KEY) into sandboxes whose template
    /// runtime is `claude`; masked everywhere. Without it those templates run tasks as shell scripts.
    #[arg(long, env = "SANDBOX_WORKER_ANTHROPIC_API_KEY", hide_env_values = true)]
    pub worker_anthropic_api_key: Option<SecretString>,

    /// File holding the worker Anthropic key; takes precedence over SANDBOX_WORKER_ANTHROPIC_API_KEY.
    #[arg(long, env = "SANDBOX_WORKER_ANTHROPIC_API_KEY_FILE")]
    pub worker_anthropic_api_key_file: Option<PathBuf>,

    /// ANTHROPIC_BASE_URL for `claude` sandboxes (an LLM gateway); unset = Anthropic's own.
    #[arg(long, env = "SANDBOX_WORKER_ANTHROPIC_BASE_URL")]
    pub worker_anthropic_base_url: Option<String>,

    /// On an orderly shutdown, leave sandboxes that outlive the broker (E2B's) running for the
    /// next broker run with the same data dir / SANDBOX_E2B_BROKER_ID to adopt (rolling deploys).
    /// Off: every sandbox is killed. `local` sandboxes die with the broker either way.
    #[arg(long, env = "SANDBOX_KEEP_SANDBOXES_ON_SHUTDOWN", default_value_t = false)]
    pub keep_sandboxes_on_shutdown: bool,

    /// How long a start waits for another process to release the data dir (one broker per
    /// data dir; a rolling deploy's previous broker may still be draining), then fails.
    #[arg(long, env = "SANDBOX_DATA_DIR_LOCK_WAIT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub data_dir_lock_wait: Duration,

    /// How long SIGTERM waits for in-flight RPCs after killing sandboxes.
    #[arg(long, env = "SANDBOX_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub e2b: E2bSettings,
}

/// The `e2b` provider and template builder (SANDBOX_PROVIDER=e2b). E2B_API_KEY is above.
#[derive(Debug, Clone, Args)]
pub struct E2bSettings {
    /// E2B domain: the control plane is `https://api.<domain>`, envd `https://49983-<sandbox>.<domain>`.
    #[arg(long = "e2b-domain", env = "E2B_DOMAIN", default_value = "e2b.app")]
    pub domain: String,

    /// Control-plane base URL (self-hosted E2B, tests). Default: `https://api.<E2B_DOMAIN>`.
    #[arg(long = "e2b-api-url", env = "E2B_API_URL")]
    pub api_url: Option<String>,

    /// One fixed envd URL for every sandbox, which is then named by the `E2b-Sandbox-Id` and
    /// `E2b-Sandbox-Port` headers (a self-hosted edge, tests). Default: each sandbox's own host.
    #[arg(long = "e2b-envd-url", env = "SANDBOX_E2B_ENVD_URL")]
    pub envd_url: Option<String>,

    /// Longest one E2B API or envd request may take (not a process's run time).
    #[arg(long = "e2b-request-timeout", env = "SANDBOX_E2B_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub request_timeout: Duration,

    /// envd kills every process this long after it started; 0 = no such deadline (the
    /// sandbox's own timeout still ends it). Separate from the request timeout.
    #[arg(long = "e2b-process-deadline", env = "SANDBOX_E2B_PROCESS_DEADLINE", value_parser = humantime::parse_duration, default_value = "0s")]
    pub process_deadline: Duration,

    /// A sandbox with no process output and no broker call for this long gets its template's
    /// idle action from E2B (also when the broker is down).
    #[arg(long = "e2b-idle-timeout", env = "SANDBOX_E2B_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10m")]
    pub idle_timeout: Duration,

    /// Idle action per template: `kill`, `pause`, or e.g. `worker=pause,infrastructure=kill`
    /// (a bare action, or `*=action`, is the default). A paused sandbox resumes on next use.
    #[arg(long = "e2b-idle-policy", env = "SANDBOX_E2B_IDLE_POLICY", default_value = "kill")]
    pub idle_policy: crate::provider::e2b::IdlePolicy,

    /// E2B template names are this prefix plus the template's name; versions are tags.
    #[arg(long = "e2b-template-prefix", env = "SANDBOX_E2B_TEMPLATE_PREFIX", default_value = "agentstudio-")]
    pub template_prefix: String,

    /// Absolute directory inside E2B sandboxes that holds the workspace (the templates make it).
    #[arg(long = "e2b-workspace-dir", env = "SANDBOX_E2B_WORKSPACE_DIR", default_value = "/workspace")]
    pub workspace_dir: String,

    /// Marks this broker's E2B sandboxes, so a restarted broker re-adopts its own and only
    /// those. Default: generated once and kept in the data dir (`e2b-broker-id`).
    #[arg(long = "e2b-broker-id", env = "SANDBOX_E2B_BROKER_ID")]
    pub broker_id: Option<String>,

    /// vCPUs of E2B template builds (and the sandboxes made from them).
    #[arg(long = "e2b-build-cpu-count", env = "SANDBOX_E2B_BUILD_CPU_COUNT", default_value_t = 2)]
    pub build_cpu_count: u32,

    /// Memory of E2B template builds (and their sandboxes), in MiB.
    #[arg(long = "e2b-build-memory-mb", env = "SANDBOX_E2B_BUILD_MEMORY_MB", default_value_t = 1024)]
    pub build_memory_mb: u32,

    /// Longest one E2B template build may take, uploads included.
    #[arg(long = "e2b-build-timeout", env = "SANDBOX_E2B_BUILD_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1h")]
    pub build_timeout: Duration,
}

/// Every bound the broker enforces. Hitting one gives `RESOURCE_EXHAUSTED` naming it.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Running sandboxes per broker.
    #[arg(long, env = "SANDBOX_MAX_SANDBOXES", default_value_t = 256)]
    pub max_sandboxes: usize,

    /// Processes (running or exited) per sandbox.
    #[arg(long, env = "SANDBOX_MAX_PROCESSES_PER_SANDBOX", default_value_t = 64)]
    pub max_processes_per_sandbox: usize,

    /// Shortest sandbox timeout a request may ask for.
    #[arg(long, env = "SANDBOX_MIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1s")]
    pub min_timeout: Duration,

    /// Longest sandbox timeout a request may ask for.
    #[arg(long, env = "SANDBOX_MAX_TIMEOUT", value_parser = humantime::parse_duration, default_value = "24h")]
    pub max_timeout: Duration,

    /// Largest file WriteFile accepts or ReadFile returns, in bytes.
    #[arg(long, env = "SANDBOX_MAX_FILE_BYTES", default_value_t = 16 << 20)]
    pub max_file_bytes: u64,

    /// Largest gRPC message the broker decodes, in bytes (must exceed max_file_bytes).
    #[arg(long, env = "SANDBOX_MAX_MESSAGE_BYTES", default_value_t = (16 << 20) + (64 << 10))]
    pub max_message_bytes: usize,

    /// Concurrent StartProcess/AttachProcess streams per broker.
    #[arg(long, env = "SANDBOX_MAX_STREAMS", default_value_t = 2048)]
    pub max_streams: usize,

    /// Output spooled per process on disk; past it the oldest events are dropped.
    #[arg(long, env = "SANDBOX_SPOOL_BYTES", default_value_t = 64 << 20)]
    pub spool_bytes: u64,

    /// Ended sandboxes remembered (with their spools) for GetSandbox and late attaches.
    #[arg(long, env = "SANDBOX_MAX_ENDED_SANDBOXES", default_value_t = 256)]
    pub max_ended_sandboxes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("refusing to listen on non-loopback address {0} without an auth token: set SANDBOX_AUTH_TOKEN")]
    TokenRequired(SocketAddr),
    #[error("SANDBOX_MAX_MESSAGE_BYTES ({message}) must exceed SANDBOX_MAX_FILE_BYTES ({file})")]
    MessageSmallerThanFile { message: usize, file: u64 },
    #[error("SANDBOX_MIN_TIMEOUT ({min:?}) must be at least 1s and not above SANDBOX_MAX_TIMEOUT ({max:?})")]
    TimeoutRange { min: Duration, max: Duration },
    #[error("{name} must be at least {min}")]
    TooSmall { name: &'static str, min: u64 },
    #[error("SANDBOX_AUTH_TOKEN must be at least 16 characters")]
    WeakToken,
    #[error("SANDBOX_LOCAL_RUN_AS: {0}")]
    RunAs(String),
    #[error("SANDBOX_PROVIDER=e2b needs E2B_API_KEY (or E2B_API_KEY_FILE)")]
    E2bKeyMissing,
    #[error("{0}")]
    E2b(String),
    #[error(transparent)]
    SecretFile(#[from] service_kit::secret::SecretFileError),
}

impl BrokerConfig {
    /// Reads the `*_FILE` secrets into their values (trailing newline trimmed). Call before
    /// [`BrokerConfig::validate`]; reading twice is harmless.
    pub fn load_secret_files(&mut self) -> Result<(), ConfigError> {
        for (variable, file, value) in [
            ("SANDBOX_AUTH_TOKEN_FILE", &self.auth_token_file, &mut self.auth_token),
            ("E2B_API_KEY_FILE", &self.e2b_api_key_file, &mut self.e2b_api_key),
            ("GITHUB_TOKEN_FILE", &self.github_token_file, &mut self.github_token),
            ("GITHUB_APP_PRIVATE_KEY_FILE", &self.github_app_private_key_file, &mut self.github_app_private_key),
            (
                "SANDBOX_WORKER_ANTHROPIC_API_KEY_FILE",
                &self.worker_anthropic_api_key_file,
                &mut self.worker_anthropic_api_key,
            ),
        ] {
            service_kit::secret::resolve_secret(variable, file.as_deref(), value)?;
        }
        Ok(())
    }

    /// Checks the combinations clap cannot: called by `run` before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen_addr.ip().is_loopback() && self.auth_token.is_none() {
            return Err(ConfigError::TokenRequired(self.listen_addr));
        }
        if self.auth_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(ConfigError::WeakToken);
        }
        let l = &self.limits;
        if l.max_message_bytes as u64 <= l.max_file_bytes {
            return Err(ConfigError::MessageSmallerThanFile { message: l.max_message_bytes, file: l.max_file_bytes });
        }
        if l.min_timeout < Duration::from_secs(1) || l.min_timeout > l.max_timeout {
            return Err(ConfigError::TimeoutRange { min: l.min_timeout, max: l.max_timeout });
        }
        if l.spool_bytes < 64 << 10 {
            return Err(ConfigError::TooSmall { name: "SANDBOX_SPOOL_BYTES", min: 64 << 10 });
        }
        if self.provider == "e2b" {
            self.e2b.validate(self.e2b_api_key.is_some())?;
        }
        for (name, value) in [
            ("SANDBOX_MAX_SANDBOXES", l.max_sandboxes),
            ("SANDBOX_MAX_PROCESSES_PER_SANDBOX", l.max_processes_per_sandbox),
            ("SANDBOX_MAX_STREAMS", l.max_streams),
        ] {
            if value == 0 {
                return Err(ConfigError::TooSmall { name, min: 1 });
            }
        }
        Ok(())
    }

    /// What the `e2b` provider is given; `broker_id` is used when SANDBOX_E2B_BROKER_ID is unset.
    pub fn e2b_options(&self, broker_id: String) -> Result<crate::provider::e2b::E2bOptions, ConfigError> {
        let e2b = &self.e2b;
        let api_key = self.e2b_api_key.clone().ok_or(ConfigError::E2bKeyMissing)?;
        Ok(crate::provider::e2b::E2bOptions {
            api_url: crate::provider::e2b::E2bOptions::api_url_for(e2b.api_url.as_deref(), &e2b.domain),
            domain: e2b.domain.clone(),
            envd_url: e2b.envd_url.clone().filter(|u| !u.is_empty()),
            api_key,
            request_timeout: e2b.request_timeout,
            process_deadline: Some(e2b.process_deadline).filter(|d| !d.is_zero()),
            idle_timeout: e2b.idle_timeout,
            idle_policy: e2b.idle_policy.clone(),
            max_lifetime: self.limits.max_timeout,
            template_prefix: e2b.template_prefix.clone(),
            workspace_dir: e2b.workspace_dir.clone(),
            broker_id: e2b.broker_id.clone().filter(|id| !id.is_empty()).unwrap_or(broker_id),
        })
    }

    /// The host uid/gid `local` sandboxes run as; `None` = the broker's own.
    pub fn local_run_as(&self) -> Result<Option<(u32, u32)>, ConfigError> {
        // SAFETY: plain getters.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let Some(raw) = self.run_as.as_deref().filter(|r| !r.is_empty()) else {
            // Root must not run sandboxes as root: uid 0 outside passes owner checks on
            // root-only files (/etc/shadow) even without capabilities.
            return Ok((euid == 0).then_some((65534, 65534)));
        };
        let parse =
            |part: &str| part.parse::<u32>().map_err(|_| ConfigError::RunAs(format!("expected uid:gid, got {raw:?}")));
        let (uid, gid) =
            raw.split_once(':').ok_or_else(|| ConfigError::RunAs(format!("expected uid:gid, got {raw:?}")))?;
        let (uid, gid) = (parse(uid)?, parse(gid)?);
        if uid == 0 {
            return Err(ConfigError::RunAs("sandboxes must not run as root (uid 0)".into()));
        }
        if euid != 0 && (uid, gid) != (euid, egid) {
            return Err(ConfigError::RunAs(format!(
                "only a broker running as root can run sandboxes as another user ({uid}:{gid})"
            )));
        }
        Ok(if (uid, gid) == (euid, egid) { None } else { Some((uid, gid)) })
    }

    /// Every secret the broker holds, for the redactor.
    pub fn secrets(&self) -> Vec<SecretString> {
        let mut secrets: Vec<SecretString> = self.redact_secrets.clone();
        secrets.extend(self.e2b_api_key.clone());
        secrets.extend(self.github_token.clone());
        secrets.extend(self.github_app_private_key.clone());
        secrets.extend(self.worker_anthropic_api_key.clone());
        if let Some(token) = &self.auth_token {
            secrets.push(token.clone());
        }
        secrets
    }

    /// What the broker adds to the environment of `claude`-runtime sandboxes; `None` when it holds
    /// no worker LLM key, so those templates fall back to the `shell` runtime.
    pub fn claude_runtime_env(&self) -> Option<std::collections::BTreeMap<String, String>> {
        let key = self.worker_anthropic_api_key.as_ref()?;
        let mut env = std::collections::BTreeMap::from([
            ("ANTHROPIC_API_KEY".to_owned(), key.expose().to_owned()),
            // No telemetry, error reports or update checks from inside a sandbox.
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(), "1".to_owned()),
        ]);
        if let Some(url) = self.worker_anthropic_base_url.as_ref().filter(|u| !u.is_empty()) {
            env.insert("ANTHROPIC_BASE_URL".to_owned(), url.clone());
        }
        Some(env)
    }

    /// Defaults with the data dir at `data_dir`, loopback on an ephemeral port: for tests.
    pub fn for_tests(data_dir: PathBuf) -> BrokerConfig {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: BrokerConfig,
        }
        // Parsing an empty argv yields the documented defaults (environment fallbacks included,
        // which tests do not set).
        let mut config = Wrapper::parse_from(["sandbox-svc"]).config;
        config.listen_addr = "127.0.0.1:0".parse().expect("literal address");
        config.data_dir = data_dir;
        config.templates_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"));
        config.run_as = None;
        config
    }
}

impl E2bSettings {
    fn validate(&self, has_key: bool) -> Result<(), ConfigError> {
        if !has_key {
            return Err(ConfigError::E2bKeyMissing);
        }
        for (name, value) in
            [("SANDBOX_E2B_REQUEST_TIMEOUT", self.request_timeout), ("SANDBOX_E2B_IDLE_TIMEOUT", self.idle_timeout)]
        {
            if value < Duration::from_secs(1) {
                return Err(ConfigError::E2b(format!("{name} must be at least 1s")));
            }
        }
        if !self.workspace_dir.starts_with('/') {
            return Err(ConfigError::E2b(format!(
                "SANDBOX_E2B_WORKSPACE_DIR {:?} must be absolute",
                self.workspace_dir
            )));
        }
        if self.domain.is_empty() && self.api_url.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::E2b("E2B_DOMAIN or E2B_API_URL must be set".into()));
        }
        if self.broker_id.as_deref().is_some_and(|id| id.contains(['&', '=', '\n'])) {
            return Err(ConfigError::E2b("SANDBOX_E2B_BROKER_ID must not contain `&`, `=` or newlines".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_needs_a_key_and_has_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::for_tests(dir.path().join("data"));
        config.provider = "e2b".into();
        assert!(matches!(config.validate(), Err(ConfigError::E2bKeyMissing)));
        config.e2b_api_key = Some(SecretString::new("e2b_test_key_0123456789"));
        config.validate().unwrap();
        let options = config.e2b_options("generated".into()).unwrap();
        assert_eq!(options.api_url, "https://api.e2b.app");
        assert_eq!(options.domain, "e2b.app");
        assert_eq!(options.envd_url, None);
        assert_eq!(options.request_timeout, Duration::from_secs(30));
        assert_eq!(options.process_deadline, None);
        assert_eq!(options.idle_timeout, Duration::from_secs(600));
        assert_eq!(options.idle_policy.action_for("worker"), crate::provider::e2b::IdleAction::Kill);
        assert_eq!(options.workspace_dir, "/workspace");
        assert_eq!(options.broker_id, "generated");
        config.e2b.workspace_dir = "workspace".into();
        assert!(config.validate().unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn secret_files_fill_their_values_and_errors_never_show_content() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "file-token-0123456789\n").unwrap();
        let mut config = BrokerConfig::for_tests(dir.path().join("data"));
        config.auth_token_file = Some(token_file);
        config.load_secret_files().unwrap();
        assert_eq!(config.auth_token.as_ref().unwrap().expose(), "file-token-0123456789");
        assert!(config.secrets().iter().any(|s| s.expose() == "file-token-0123456789"));

        config.github_token_file = Some(dir.path().join("missing"));
        let error = config.load_secret_files().unwrap_err().to_string();
        assert!(error.starts_with("GITHUB_TOKEN_FILE: cannot read secret file"), "{error}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        config.github_token_file = Some(empty);
        assert!(config.load_secret_files().unwrap_err().to_string().contains("empty"));
    }
}
