//! The `studio` commands.

mod client;
mod output;
mod sandbox;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandbox_svc::secret::SecretString;

#[derive(Parser)]
#[command(name = "studio", version, about = "Agent Studio: run coding agents in sandboxes, safely")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the broker is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerClientArgs {
    /// The broker's gRPC URL.
    #[arg(long = "broker", env = "STUDIO_BROKER_URL", default_value = "http://127.0.0.1:50052", global = true)]
    pub url: String,
    /// Bearer token for the broker.
    #[arg(long = "token", env = "SANDBOX_AUTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<SecretString>,
    /// File holding the token; default: the one `studio up` generates in its data dir.
    #[arg(long = "token-file", env = "SANDBOX_AUTH_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
}

impl BrokerClientArgs {
    /// The token to send: given, read from the given file, or the one `studio up` generated.
    pub fn resolve_token(&self) -> anyhow::Result<Option<SecretString>> {
        if let Some(token) = self.token.as_ref().filter(|t| !t.expose().is_empty()) {
            return Ok(Some(token.clone()));
        }
        let default = std::path::Path::new(".studio/sandbox").join(sandbox_svc::GENERATED_TOKEN_FILE);
        let (path, required) = match &self.token_file {
            Some(path) => (path.clone(), true),
            None => (default, false),
        };
        match std::fs::read_to_string(&path) {
            Ok(token) => Ok(Some(SecretString::new(token.trim_end()))),
            Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(anyhow::anyhow!("cannot read the token file {}: {error}", path.display())),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start the system on its embedded defaults (the sandbox broker on 127.0.0.1:50052).
    Up(Box<up::UpArgs>),
    /// Create, list, inspect and kill sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec(sandbox::ExecArgs),
    /// Stream a process's output, replaying after a seq, then following live.
    Attach(sandbox::AttachArgs),
    /// List the processes of a sandbox.
    Ps(sandbox::PsArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Sandbox(command) => sandbox::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Exec(args) => sandbox::exec(args).await,
        Command::Attach(args) => sandbox::attach(args).await,
        Command::Ps(args) => sandbox::ps(args).await.map(|()| ExitCode::SUCCESS),
    }
}
