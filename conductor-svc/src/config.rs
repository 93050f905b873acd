//! Conductor configuration: every flag has a `CONDUCTOR_*` (or standard) environment fallback.
//! It holds the conductor's own LLM key and the broker's bearer token — never a sandbox-provider
//! or code-host credential: those live only in the broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use service_kit::secret::SecretString;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrainKind {
    /// `anthropic` when ANTHROPIC_API_KEY is set, else `openai` when CONDUCTOR_OPENAI_BASE_URL is, else `rules`.
    Auto,
    /// Offline and deterministic: explicit commands only.
    Rules,
    /// Anthropic Messages API with tool use.
    Anthropic,
    /// OpenAI-compatible chat completions (vLLM, Ollama, llama.cpp).
    Openai,
}

#[derive(Debug, Clone, Args)]
pub struct ConductorConfig {
    /// gRPC listen address. A non-loopback address requires an auth token.
    #[arg(long = "listen", env = "CONDUCTOR_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Bearer token every RPC except health must carry. Without one on loopback, one is generated
    /// into `<data dir>/auth-token` (sandboxes can reach loopback too).
    #[arg(long, env = "CONDUCTOR_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<SecretString>,

    /// File holding the auth token; takes precedence over CONDUCTOR_AUTH_TOKEN.
    #[arg(long, env = "CONDUCTOR_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// State lives here (the SQLite database by default, the generated token).
    #[arg(long, env = "CONDUCTOR_DATA_DIR", default_value = ".studio/conductor")]
    pub data_dir: PathBuf,

    /// `sqlite://…` or `postgres://…`; default: `sqlite://<data dir>/conductor.db`.
    #[arg(long, env = "CONDUCTOR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The sandbox broker's gRPC URL.
    #[arg(long, env = "CONDUCTOR_BROKER_URL", default_value = "http://127.0.0.1:50052")]
    pub broker_url: String,

    /// Bearer token for the broker.
    #[arg(long, env = "CONDUCTOR_BROKER_TOKEN", hide_env_values = true)]
    pub broker_token: Option<SecretString>,

    /// File holding the broker token; takes precedence over CONDUCTOR_BROKER_TOKEN.
    #[arg(long, env = "CONDUCTOR_BROKER_TOKEN_FILE")]
    pub broker_token_file: Option<PathBuf>,

    /// Which brain decides Stu's replies.
    #[arg(long, env = "CONDUCTOR_BRAIN", value_enum, default_value = "auto")]
    pub brain: BrainKind,

    /// Anthropic API key for Stu's own reasoning (workers get theirs from the broker).
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<SecretString>,

    /// Anthropic API base URL (a gateway, or a fake in tests).
    #[arg(long, env = "CONDUCTOR_ANTHROPIC_BASE_URL", default_value = "https://api.anthropic.com")]
    pub anthropic_base_url: String,

    #[arg(long, env = "CONDUCTOR_ANTHROPIC_MODEL", default_value = "claude-sonnet-5-5")]
    pub anthropic_model: String,

    /// OpenAI-compatible base URL ending in /v1 (e.g. http://127.0.0.1:11434/v1 for Ollama).
    #[arg(long, env = "CONDUCTOR_OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,

    /// Key for the OpenAI-compatible endpoint; local servers need none.
    #[arg(long, env = "CONDUCTOR_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<SecretString>,

    #[arg(long, env = "CONDUCTOR_OPENAI_MODEL", default_value = "llama3.1")]
    pub openai_model: String,

    /// Most tokens of a reply.
    #[arg(long, env = "CONDUCTOR_MAX_OUTPUT_TOKENS", default_value_t = 4096)]
    pub max_output_tokens: u32,

    /// History sent to the model is trimmed (oldest first) to about this many tokens.
    #[arg(long, env = "CONDUCTOR_HISTORY_TOKEN_BUDGET", default_value_t = 60_000)]
    pub history_token_budget: usize,

    /// How long a human approval of a template change stays usable before its merge runs.
    #[arg(long, env = "CONDUCTOR_APPROVAL_TTL", value_parser = humantime::parse_duration, default_value = "1h")]
    pub approval_ttl: Duration,

    /// Timeout of one LLM request.
    #[arg(long, env = "CONDUCTOR_LLM_TIMEOUT", value_parser = humantime::parse_duration, default_value = "120s")]
    pub llm_timeout: Duration,

    /// How long a start waits for another process to release the data dir (one conductor per
    /// data dir: both would re-adopt the same workers), then fails.
    #[arg(long, env = "CONDUCTOR_DATA_DIR_LOCK_WAIT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub data_dir_lock_wait: Duration,

    /// How long SIGTERM waits for in-flight RPCs.
    #[arg(long, env = "CONDUCTOR_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub budgets: Budgets,
}

/// Every bound the conductor enforces on work. Hitting one gives `RESOURCE_EXHAUSTED` naming it.
#[derive(Debug, Clone, Args)]
pub struct Budgets {
    /// Wall time per worker; past it the worker's sandbox is killed and the worker ends TIMED_OUT.
    #[arg(long, env = "CONDUCTOR_WORKER_WALL_TIME", value_parser = humantime::parse_duration, default_value = "30m")]
    pub worker_wall_time: Duration,

    /// Running workers per conversation.
    #[arg(long, env = "CONDUCTOR_MAX_WORKERS_PER_CONVERSATION", default_value_t = 4)]
    pub max_workers_per_conversation: u64,

    /// Running workers in total.
    #[arg(long, env = "CONDUCTOR_MAX_WORKERS", default_value_t = 32)]
    pub max_workers: u64,

    /// Brain calls per message (each tool round is one); stops a model that loops.
    #[arg(long, env = "CONDUCTOR_MAX_TOOL_ROUNDS", default_value_t = 8)]
    pub max_tool_rounds: u32,

    /// `--max-turns` passed to Claude Code workers.
    #[arg(long, env = "CONDUCTOR_WORKER_MAX_TURNS", default_value_t = 50)]
    pub worker_max_turns: u32,

    /// Longest message text accepted, in bytes.
    #[arg(long, env = "CONDUCTOR_MAX_MESSAGE_BYTES", default_value_t = 32 << 10)]
    pub max_message_bytes: usize,

    /// Concurrent SendMessage turns across all conversations.
    #[arg(long, env = "CONDUCTOR_MAX_TURNS", default_value_t = 64)]
    pub max_turns: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("refusing to listen on non-loopback address {0} without an auth token: set CONDUCTOR_AUTH_TOKEN")]
    TokenRequired(SocketAddr),
    #[error("CONDUCTOR_AUTH_TOKEN must be at least 16 characters")]
    WeakToken,
    #[error("CONDUCTOR_BRAIN=anthropic needs ANTHROPIC_API_KEY")]
    AnthropicKeyMissing,
    #[error("CONDUCTOR_BRAIN=openai needs CONDUCTOR_OPENAI_BASE_URL")]
    OpenAiUrlMissing,
    #[error("{name} must be at least {min}")]
    TooSmall { name: &'static str, min: u64 },
    #[error(transparent)]
    SecretFile(#[from] service_kit::secret::SecretFileError),
}

impl ConductorConfig {
    /// Reads the `*_FILE` secrets into their values; empty variables count as unset.
    pub fn load_secret_files(&mut self) -> Result<(), ConfigError> {
        use service_kit::secret::resolve_secret;
        resolve_secret("ANTHROPIC_API_KEY", None, &mut self.anthropic_api_key)?;
        resolve_secret("CONDUCTOR_OPENAI_API_KEY", None, &mut self.openai_api_key)?;
        for (variable, file, value) in [
            ("CONDUCTOR_AUTH_TOKEN_FILE", &self.auth_token_file, &mut self.auth_token),
            ("CONDUCTOR_BROKER_TOKEN_FILE", &self.broker_token_file, &mut self.broker_token),
        ] {
            resolve_secret(variable, file.as_deref(), value)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen_addr.ip().is_loopback() && self.auth_token.is_none() {
            return Err(ConfigError::TokenRequired(self.listen_addr));
        }
        if self.auth_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(ConfigError::WeakToken);
        }
        match self.brain {
            BrainKind::Anthropic if self.anthropic_api_key.is_none() => return Err(ConfigError::AnthropicKeyMissing),
            BrainKind::Openai if self.openai_base_url.is_none() => return Err(ConfigError::OpenAiUrlMissing),
            _ => {}
        }
        let b = &self.budgets;
        for (name, value) in [
            ("CONDUCTOR_MAX_WORKERS_PER_CONVERSATION", b.max_workers_per_conversation),
            ("CONDUCTOR_MAX_WORKERS", b.max_workers),
            ("CONDUCTOR_MAX_TOOL_ROUNDS", u64::from(b.max_tool_rounds)),
            ("CONDUCTOR_MAX_TURNS", b.max_turns as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::TooSmall { name, min: 1 });
            }
        }
        if b.worker_wall_time < Duration::from_secs(1) {
            return Err(ConfigError::TooSmall { name: "CONDUCTOR_WORKER_WALL_TIME (seconds)", min: 1 });
        }
        if self.approval_ttl < Duration::from_secs(1) {
            return Err(ConfigError::TooSmall { name: "CONDUCTOR_APPROVAL_TTL (seconds)", min: 1 });
        }
        Ok(())
    }

    /// The brain `auto` resolves to.
    pub fn resolved_brain(&self) -> BrainKind {
        match self.brain {
            BrainKind::Auto if self.anthropic_api_key.is_some() => BrainKind::Anthropic,
            BrainKind::Auto if self.openai_base_url.is_some() => BrainKind::Openai,
            BrainKind::Auto => BrainKind::Rules,
            other => other,
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("conductor.db").display()))
    }

    /// Defaults with the data dir at `data_dir`, loopback on an ephemeral port, `rules` brain: for tests.
    pub fn for_tests(data_dir: PathBuf, broker_url: String) -> ConductorConfig {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ConductorConfig,
        }
        let mut config = Wrapper::parse_from(["conductor-svc"]).config;
        config.listen_addr = "127.0.0.1:0".parse().expect("literal address");
        config.data_dir = data_dir;
        config.broker_url = broker_url;
        config.brain = BrainKind::Rules;
        config.anthropic_api_key = None;
        config.openai_base_url = None;
        config
    }
}
