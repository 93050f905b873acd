//! `studio sandbox …`, `studio exec`, `studio attach`, `studio ps`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use agentstudio_proto::sandbox::v1 as pb;
use anyhow::Context;
use clap::{Args, Subcommand};

use super::BrokerClientArgs;
use super::client::{connect, describe};
use super::output;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create(CreateArgs),
    /// List running sandboxes.
    Ls(ListArgs),
    /// Show one sandbox, with its end cause once ended.
    Get(IdArgs),
    /// Kill a sandbox and every process in it.
    Kill(IdArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Template name.
    #[arg(long, default_value = "worker")]
    template: String,
    /// Lifetime, e.g. 10m (default: the template's).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Environment for every process, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Metadata, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// Same key → same sandbox.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    broker: BrokerClientArgs,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only sandboxes with this metadata entry, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// Include ended sandboxes the broker still remembers.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    broker: BrokerClientArgs,
}

#[derive(Args)]
pub struct IdArgs {
    sandbox_id: String,
    #[command(flatten)]
    broker: BrokerClientArgs,
}

#[derive(Args)]
pub struct ExecArgs {
    sandbox_id: String,
    /// Working directory relative to the workspace.
    #[arg(long, default_value = "")]
    cwd: String,
    /// Extra environment, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Label shown by `studio ps`.
    #[arg(long, default_value = "")]
    tag: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
    #[command(flatten)]
    broker: BrokerClientArgs,
}

#[derive(Args)]
pub struct AttachArgs {
    sandbox_id: String,
    process_id: String,
    /// Replay events after this seq (0 = from the start).
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    broker: BrokerClientArgs,
}

#[derive(Args)]
pub struct PsArgs {
    sandbox_id: String,
    #[command(flatten)]
    broker: BrokerClientArgs,
}

fn key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

pub async fn run(command: SandboxCommand) -> anyhow::Result<()> {
    match command {
        SandboxCommand::Create(args) => {
            let mut client = connect(&args.broker).await?;
            let request = pb::CreateSandboxRequest {
                template: args.template,
                env: args.env.into_iter().collect(),
                timeout: args.timeout.map(prost_duration).transpose()?,
                metadata: args.metadata.into_iter().collect(),
                idempotency_key: args.idempotency_key.unwrap_or_default(),
                template_version: String::new(),
            };
            let sandbox = client.create_sandbox(request).await.map_err(describe)?.into_inner().sandbox;
            println!("{}", sandbox.context("broker returned no sandbox")?.sandbox_id);
        }
        SandboxCommand::Ls(args) => {
            let mut client = connect(&args.broker).await?;
            let request = pb::ListSandboxesRequest {
                metadata: args.metadata.into_iter().collect::<HashMap<_, _>>(),
                include_ended: args.all,
            };
            let sandboxes = client.list_sandboxes(request).await.map_err(describe)?.into_inner().sandboxes;
            println!("{:<40} {:<16} {:<8} {:<12} METADATA", "SANDBOX", "TEMPLATE", "STATE", "EXPIRES IN");
            for sandbox in sandboxes {
                println!(
                    "{:<40} {:<16} {:<8} {:<12} {}",
                    sandbox.sandbox_id,
                    sandbox.template,
                    state_name(sandbox.state),
                    expires_in(sandbox.expires_at.as_ref()),
                    format_map(&sandbox.metadata)
                );
            }
        }
        SandboxCommand::Get(args) => {
            let mut client = connect(&args.broker).await?;
            let request = pb::GetSandboxRequest { sandbox_id: args.sandbox_id };
            let sandbox = client.get_sandbox(request).await.map_err(describe)?.into_inner().sandbox;
            let sandbox = sandbox.context("broker returned no sandbox")?;
            println!("sandbox:   {}", sandbox.sandbox_id);
            println!("template:  {}", sandbox.template);
            println!("provider:  {}", sandbox.provider);
            println!("state:     {}", state_name(sandbox.state));
            if sandbox.end_message.is_empty() {
                println!("expires:   in {}", expires_in(sandbox.expires_at.as_ref()));
            }
            println!("metadata:  {}", format_map(&sandbox.metadata));
            if !sandbox.end_message.is_empty() {
                println!("ended:     {}", sandbox.end_message);
            }
        }
        SandboxCommand::Kill(args) => {
            let mut client = connect(&args.broker).await?;
            client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: args.sandbox_id }).await.map_err(describe)?;
        }
    }
    Ok(())
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.broker).await?;
    let request = pb::StartProcessRequest {
        sandbox_id: args.sandbox_id.clone(),
        argv: args.argv,
        cwd: args.cwd,
        env: args.env.into_iter().collect(),
        tag: args.tag,
        stdin: false,
    };
    let stream = client.start_process(request).await.map_err(describe)?.into_inner();
    output::follow(&mut client, &args.sandbox_id, None, stream, 0).await
}

pub async fn attach(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.broker).await?;
    let request = pb::AttachProcessRequest {
        sandbox_id: args.sandbox_id.clone(),
        process_id: args.process_id.clone(),
        after_seq: args.after,
    };
    let stream = client.attach_process(request).await.map_err(describe)?.into_inner();
    output::follow(&mut client, &args.sandbox_id, Some(args.process_id), stream, args.after).await
}

pub async fn ps(args: PsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.broker).await?;
    let request = pb::ListProcessesRequest { sandbox_id: args.sandbox_id };
    let processes = client.list_processes(request).await.map_err(describe)?.into_inner().processes;
    println!("{:<8} {:<8} {:<6} {:<8} {:<12} COMMAND", "PROCESS", "STATE", "EXIT", "LAST SEQ", "TAG");
    for p in processes {
        let exit = p.exit_code.map(|c| c.to_string()).unwrap_or_default();
        let state = if p.running { "running" } else { "exited" };
        println!("{:<8} {:<8} {:<6} {:<8} {:<12} {}", p.process_id, state, exit, p.last_seq, p.tag, p.argv.join(" "));
    }
    Ok(())
}

fn prost_duration(duration: Duration) -> anyhow::Result<prost_types::Duration> {
    prost_types::Duration::try_from(duration).context("timeout too large")
}

fn state_name(state: i32) -> &'static str {
    match pb::SandboxState::try_from(state) {
        Ok(pb::SandboxState::Running) => "running",
        Ok(pb::SandboxState::Killed) => "ended",
        _ => "unknown",
    }
}

fn expires_in(at: Option<&prost_types::Timestamp>) -> String {
    let Some(at) = at.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".into();
    };
    match at.duration_since(SystemTime::now()) {
        Ok(left) => humantime::format_duration(Duration::from_secs(left.as_secs())).to_string(),
        Err(_) => "expired".into(),
    }
}

fn format_map(map: &HashMap<String, String>) -> String {
    let mut entries: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    entries.sort();
    entries.join(",")
}
