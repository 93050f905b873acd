//! Connecting to the conductor with its bearer token.

use agentstudio_proto::conductor::v1::conductor_service_client::ConductorServiceClient;
use sandbox_svc::secret::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::client::{AuthInterceptor, bearer, channel};
use super::{is_loopback, read_token};

pub type ConductorClient = ConductorServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// Where Stu is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConductorClientArgs {
    /// The conductor's gRPC URL.
    #[arg(long = "conductor", env = "STUDIO_CONDUCTOR_URL", default_value = "http://127.0.0.1:50051", global = true)]
    pub url: String,
    /// Bearer token for the conductor.
    #[arg(long = "conductor-token", env = "CONDUCTOR_AUTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<SecretString>,
    /// File holding the conductor token; default: the one `studio up` generates.
    #[arg(long = "conductor-token-file", env = "CONDUCTOR_AUTH_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// The conductor's data dir, where `studio up` writes a generated token.
    #[arg(long = "conductor-data-dir", env = "CONDUCTOR_DATA_DIR", default_value = ".studio/conductor", global = true)]
    pub data_dir: std::path::PathBuf,
    /// Who is talking, for the audit log (default: cli:$USER).
    #[arg(long, env = "STUDIO_SENDER", global = true)]
    pub sender: Option<String>,
}

impl ConductorClientArgs {
    pub fn sender(&self) -> String {
        self.sender
            .clone()
            .unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "user".into())))
    }
}

pub async fn connect(args: &ConductorClientArgs) -> anyhow::Result<ConductorClient> {
    let channel = channel(&args.url, "conductor").await?;
    let token = read_token(
        args.token.as_ref(),
        args.token_file.as_deref(),
        is_loopback(&args.url).then(|| args.data_dir.join(conductor_svc::GENERATED_TOKEN_FILE)),
    )?;
    let interceptor = bearer(token.as_ref())?;
    Ok(ConductorServiceClient::with_interceptor(channel, interceptor).max_decoding_message_size(32 << 20))
}
