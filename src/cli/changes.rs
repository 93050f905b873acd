//! Template changes from the command line: `studio changes`, `approve`, `reject`, `templates`.
//! `approve` always shows the diff and the vetting report first and asks, so what a person
//! approves is what they saw (the approval names that head and report digest).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use agentstudio_proto::conductor::v1 as pb;
use clap::{Args, Subcommand};

use super::client::describe;
use super::conductor_client::{ConductorClientArgs, connect};

/// How often `approve` polls the change while merge → build → smoke test → promote run.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Args)]
pub struct ChangesArgs {
    /// Show this pull request (diff and report) instead of the list.
    pr: Option<u64>,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The pull request number.
    pr: u64,
    /// Approve without the interactive confirmation (the diff and report are still printed).
    #[arg(long)]
    yes: bool,
    /// Override a REJECT verdict; needs --reason. Audited.
    #[arg(long)]
    override_reject: bool,
    /// Why the REJECT verdict is overridden.
    #[arg(long)]
    reason: Option<String>,
    /// Return once the approval is recorded instead of following the merge and build.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct RejectArgs {
    /// The pull request number.
    pr: u64,
    /// Why (posted on the pull request).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct TemplatesArgs {
    #[command(subcommand)]
    command: TemplatesCommand,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Versions of a template, newest first.
    Versions { template: String },
    /// Make an earlier version active again.
    Rollback {
        template: String,
        version_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn changes(args: ChangesArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.conductor).await?;
    if let Some(number) = args.pr {
        let change = get(&mut client, number).await?;
        print_change(&change, true);
        return Ok(ExitCode::SUCCESS);
    }
    let changes = client.list_changes(pb::ListChangesRequest {}).await.map_err(describe)?.into_inner().changes;
    if changes.is_empty() {
        println!("no template changes yet");
    }
    for change in changes {
        let pr = change.pull_request.unwrap_or_default();
        println!("#{:<4} {:<18} {}  ({})", pr.number, state_name(change.state), pr.title, change.state_detail);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.conductor).await?;
    let change = get(&mut client, args.pr).await?;
    print_change(&change, true);
    let pr = change.pull_request.clone().unwrap_or_default();
    let report = change.report.clone().unwrap_or_default();
    if args.override_reject && args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        anyhow::bail!("--override-reject needs --reason: overriding a REJECT verdict is audited with its reason");
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not a terminal: pass --yes to approve #{} at {} without the prompt", pr.number, pr.head_sha);
        }
        print!("Approve #{} at {} (report {})? Type 'yes': ", pr.number, short(&pr.head_sha), short(&report.digest));
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("not approved");
            return Ok(ExitCode::FAILURE);
        }
    }
    let request = pb::ApproveChangeRequest {
        pr_number: pr.number,
        head_sha: pr.head_sha.clone(),
        approver: args.conductor.sender(),
        override_reason: args.reason.unwrap_or_default(),
        report_digest: report.digest.clone(),
        override_reject: args.override_reject,
    };
    client.approve_change(request).await.map_err(describe)?;
    println!("approval recorded for #{} at {}", pr.number, pr.head_sha);
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last_detail = String::new();
    loop {
        let change = get(&mut client, pr.number).await?;
        if change.state_detail != last_detail {
            println!("  {}: {}", state_name(change.state), change.state_detail);
            last_detail = change.state_detail.clone();
        }
        match pb::ChangeState::try_from(change.state) {
            Ok(pb::ChangeState::Approved) => tokio::time::sleep(FOLLOW_INTERVAL).await,
            Ok(pb::ChangeState::Promoted) => return Ok(ExitCode::SUCCESS),
            _ => return Ok(ExitCode::FAILURE),
        }
    }
}

pub async fn reject(args: RejectArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.conductor).await?;
    // What is being rejected, said before it is closed.
    print_change(&get(&mut client, args.pr).await?, false);
    let request =
        pb::RejectChangeRequest { pr_number: args.pr, reason: args.reason, rejected_by: args.conductor.sender() };
    let change = client.reject_change(request).await.map_err(describe)?.into_inner().change.unwrap_or_default();
    println!("#{} {}: {}", args.pr, state_name(change.state), change.state_detail);
    Ok(ExitCode::SUCCESS)
}

pub async fn templates(args: TemplatesArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.conductor).await?;
    match args.command {
        TemplatesCommand::Versions { template } => {
            let request = pb::ListTemplateVersionsRequest { template };
            let versions = client.list_template_versions(request).await.map_err(describe)?.into_inner().versions;
            for v in versions {
                println!(
                    "{} {:<7} {} git {} pr #{} {}",
                    if v.active { "*" } else { " " },
                    v.status,
                    v.version_id,
                    short(&v.git_sha),
                    v.pr_number,
                    v.error
                );
            }
        }
        TemplatesCommand::Rollback { template, version_id, reason } => {
            let request =
                pb::RollbackTemplateRequest { template, version_id, requested_by: args.conductor.sender(), reason };
            let version =
                client.rollback_template(request).await.map_err(describe)?.into_inner().version.unwrap_or_default();
            println!("{} is active again for {}", version.version_id, version.template);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(client: &mut super::conductor_client::ConductorClient, number: u64) -> anyhow::Result<pb::Change> {
    let response = client.get_change(pb::GetChangeRequest { pr_number: number }).await.map_err(describe)?;
    response.into_inner().change.ok_or_else(|| anyhow::anyhow!("the conductor returned no change"))
}

fn print_change(change: &pb::Change, with_diff: bool) {
    let pr = change.pull_request.clone().unwrap_or_default();
    let report = change.report.clone().unwrap_or_default();
    println!("Pull request #{}: {}  [{}]", pr.number, pr.title, pr.url);
    println!("state: {} — {}", state_name(change.state), change.state_detail);
    println!("head {}  base {}", pr.head_sha, pr.base_sha);
    if with_diff {
        println!("\n{}", pr.diff);
    }
    let verdict = match pb::Verdict::try_from(report.verdict) {
        Ok(pb::Verdict::Reject) => "REJECT",
        Ok(pb::Verdict::NeedsHuman) => "NEEDS_HUMAN",
        _ => "?",
    };
    println!("vetting: {verdict}  (report {})", report.digest);
    for f in &report.findings {
        println!("  [{}] {} {}:{} {}  {}", f.severity, f.rule, f.file, f.line, f.message, f.evidence);
    }
    println!("review: {}", report.summary);
}

fn state_name(state: i32) -> &'static str {
    match pb::ChangeState::try_from(state) {
        Ok(pb::ChangeState::AwaitingApproval) => "awaiting-approval",
        Ok(pb::ChangeState::VettingRejected) => "vetting-rejected",
        Ok(pb::ChangeState::Approved) => "approved",
        Ok(pb::ChangeState::Promoted) => "promoted",
        Ok(pb::ChangeState::SmokeTestFailed) => "smoke-test-failed",
        Ok(pb::ChangeState::BuildFailed) => "build-failed",
        Ok(pb::ChangeState::Closed) => "closed",
        Ok(pb::ChangeState::MergeFailed) => "merge-failed",
        _ => "unknown",
    }
}

fn short(text: &str) -> &str {
    let text = text.trim_start_matches("sha256:");
    &text[..text.len().min(12)]
}
