//! The `studio` commands.

mod changes;
mod client;
mod conductor_client;
mod output;
mod sandbox;
mod serve;
mod stu;
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
    /// The token to send: given, read from the given file, or — for a broker on this machine
    /// only — the one `studio up` generated in its data dir (`SANDBOX_DATA_DIR`).
    pub fn resolve_token(&self) -> anyhow::Result<Option<SecretString>> {
        read_token(
            self.token.as_ref(),
            self.token_file.as_deref(),
            is_loopback(&self.url).then(|| self.data_dir.join(sandbox_svc::GENERATED_TOKEN_FILE)),
        )
    }
}

pub fn is_loopback(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    let host = host.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A given token; else the given file (must exist); else the generated file, if present.
pub fn read_token(
    token: Option<&SecretString>,
    token_file: Option<&std::path::Path>,
    generated: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<SecretString>> {
    if let Some(token) = token.filter(|t| !t.expose().is_empty()) {
        return Ok(Some(token.clone()));
    }
    let (path, required) = match (token_file, generated) {
        (Some(path), _) => (path.to_owned(), true),
        (None, Some(path)) => (path, false),
        (None, None) => return Ok(None),
    };
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(Some(SecretString::new(token.trim_end()))),
        Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(anyhow::anyhow!("cannot read the token file {}: {error}", path.display())),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole system on its embedded defaults: conductor on 127.0.0.1:50051, broker on 127.0.0.1:50052.
    Up(up::UpArgs),
    /// Run the sandbox broker alone, in the foreground.
    Broker(Box<serve::BrokerArgs>),
    /// Run the conductor (Stu) alone, in the foreground.
    Conductor(Box<serve::ConductorArgs>),
    /// Talk to Stu interactively; workers' output streams as they run.
    Chat(stu::ChatArgs),
    /// Send one message to Stu and print the reply; exits non-zero if the turn or a worker failed.
    Send(stu::SendArgs),
    /// List workers.
    Workers(stu::WorkersArgs),
    /// Print a worker's output (replayed after a seq; --follow keeps following).
    Logs(stu::LogsArgs),
    /// Cancel a running worker.
    Cancel(stu::CancelArgs),
    /// Show, add or forget what Stu remembers.
    Memory(stu::MemoryArgs),
    /// List template changes (pull requests), or show one with its diff and vetting report.
    Changes(changes::ChangesArgs),
    /// Approve a template change after seeing its diff and report: merge, build, smoke test, promote.
    Approve(changes::ApproveArgs),
    /// Reject a template change: its pull request is closed with the reason.
    Reject(changes::RejectArgs),
    /// Template versions and rollback.
    Templates(changes::TemplatesArgs),
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
        Command::Up(args) => up::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Broker(args) => serve::broker(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Conductor(args) => serve::conductor(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Chat(args) => stu::chat(args).await,
        Command::Send(args) => stu::send(args).await,
        Command::Workers(args) => stu::workers(args).await.map(|()| ExitCode::SUCCESS),
        Command::Logs(args) => stu::logs(args).await,
        Command::Cancel(args) => stu::cancel(args).await.map(|()| ExitCode::SUCCESS),
        Command::Memory(args) => stu::memory(args).await.map(|()| ExitCode::SUCCESS),
        Command::Changes(args) => changes::changes(args).await,
        Command::Approve(args) => changes::approve(args).await,
        Command::Reject(args) => changes::reject(args).await,
        Command::Templates(args) => changes::templates(args).await,
        Command::Sandbox(command) => sandbox::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Exec(args) => sandbox::exec(args).await,
        Command::Attach(args) => sandbox::attach(args).await,
        Command::Ps(args) => sandbox::ps(args).await.map(|()| ExitCode::SUCCESS),
    }
}
