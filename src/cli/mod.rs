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
    /// The broker's data dir, where `studio up` writes a generated token.
    #[arg(long = "data-dir", env = "SANDBOX_DATA_DIR", default_value = ".studio/sandbox", global = true)]
    pub data_dir: std::path::PathBuf,
}

impl BrokerClientArgs {
    fn is_loopback(&self) -> bool {
        let host = self.url.split("://").nth(1).unwrap_or(&self.url);
        let host = host.split('/').next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The token to send: given, read from the given file, or — for a broker on this machine
    /// only — the one `studio up` generated in its data dir (`SANDBOX_DATA_DIR`).
    pub fn resolve_token(&self) -> anyhow::Result<Option<SecretString>> {
        if let Some(token) = self.token.as_ref().filter(|t| !t.expose().is_empty()) {
            return Ok(Some(token.clone()));
        }
        let (path, required) = match &self.token_file {
            Some(path) => (path.clone(), true),
            None if self.is_loopback() => (self.data_dir.join(sandbox_svc::GENERATED_TOKEN_FILE), false),
            None => return Ok(None),
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
