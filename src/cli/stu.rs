//! Talking to Stu: `studio chat`, `send`, `workers`, `logs`, `cancel`, `memory`.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::conductor::v1::conductor_event::Event;
use clap::{Args, Subcommand};
use tokio::io::AsyncBufReadExt;

use super::client::describe;
use super::conductor_client::{ConductorClient, ConductorClientArgs, connect};

#[derive(Args)]
pub struct ChatArgs {
    /// Continue this conversation instead of starting a new one.
    #[arg(long)]
    conversation: Option<String>,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct SendArgs {
    /// What to say to Stu.
    text: String,
    /// Continue this conversation instead of starting a new one.
    #[arg(long)]
    conversation: Option<String>,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct WorkersArgs {
    /// Only this conversation's workers.
    #[arg(long)]
    conversation: Option<String>,
    /// Only running (and starting) workers.
    #[arg(long)]
    running: bool,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct LogsArgs {
    /// The worker id (w-…).
    worker: String,
    /// Keep following until the worker exits.
    #[arg(long, short)]
    follow: bool,
    /// Only output after this seq.
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct CancelArgs {
    /// The worker id (w-…).
    worker: String,
    /// Why, for the record.
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Args)]
pub struct MemoryArgs {
    #[command(subcommand)]
    command: Option<MemoryCommand>,
    #[command(flatten)]
    conductor: ConductorClientArgs,
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// List memories (optionally matching a query).
    Ls { query: Option<String> },
    /// Remember a fact under a key.
    Add { key: String, content: String },
    /// Forget a key.
    Forget { key: String },
}

/// How one turn went, for the exit code.
#[derive(Default)]
struct TurnOutcome {
    conversation_id: String,
    error: bool,
    failed_workers: usize,
}

/// Prints a turn as it streams: Stu's text, workers starting, their output (prefixed by worker),
/// their end, notices.
async fn stream_turn(client: &mut ConductorClient, request: pb::SendMessageRequest) -> anyhow::Result<TurnOutcome> {
    let mut stream = client.send_message(request).await.map_err(describe)?.into_inner();
    let mut outcome = TurnOutcome::default();
    let mut stdout = std::io::stdout();
    // Per worker: whether its output is at the start of a line (so the prefix goes first).
    let mut at_line_start: HashMap<String, bool> = HashMap::new();
    let mut text_open = false;
    while let Some(event) = stream.message().await.map_err(describe)? {
        let Some(event) = event.event else { continue };
        if text_open && !matches!(event, Event::AssistantText(_)) {
            writeln!(stdout)?;
            text_open = false;
        }
        match event {
            Event::Conversation(started) => outcome.conversation_id = started.conversation_id,
            Event::AssistantText(text) => {
                write!(stdout, "{}", text.text)?;
                text_open = !text.text.ends_with('\n');
            }
            Event::WorkerSpawned(spawned) => {
                let version = spawned.template_version.strip_prefix("sha256:").unwrap_or(&spawned.template_version);
                let version = &version[..version.len().min(12)];
                writeln!(stdout, "▶ {} started (template {version}): {}", spawned.worker_id, spawned.task)?;
            }
            Event::WorkerOutput(output) => {
                let line_start = at_line_start.entry(output.worker_id.clone()).or_insert(true);
                let (data, is_err) = match output.data {
                    Some(pb::conductor_event::worker_output::Data::Stdout(d)) => (d, false),
                    Some(pb::conductor_event::worker_output::Data::Stderr(d)) => (d, true),
                    None => continue,
                };
                let prefix = format!("  {} {} ", output.worker_id, if is_err { "!" } else { "│" });
                let mut rendered = Vec::with_capacity(data.len() + prefix.len());
                for byte in data.iter() {
                    if *line_start {
                        rendered.extend_from_slice(prefix.as_bytes());
                    }
                    rendered.push(*byte);
                    *line_start = *byte == b'\n';
                }
                stdout.write_all(&rendered)?;
            }
            Event::WorkerFinished(finished) => {
                if !at_line_start.get(&finished.worker_id).copied().unwrap_or(true) {
                    writeln!(stdout)?;
                }
                let state = pb::WorkerState::try_from(finished.state).unwrap_or(pb::WorkerState::Unspecified);
                if state != pb::WorkerState::Succeeded {
                    outcome.failed_workers += 1;
                }
                let code = finished.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
                writeln!(stdout, "■ {} {}{code}", finished.worker_id, state_name(state))?;
            }
            Event::Notice(notice) => writeln!(stdout, "… {}", notice.text)?,
            Event::Error(error) => {
                outcome.error = true;
                eprintln!("error: {}: {}", error.code, error.message);
            }
            Event::Done(_) => break,
        }
        stdout.flush()?;
    }
    if text_open {
        writeln!(stdout)?;
    }
    Ok(outcome)
}

fn state_name(state: pb::WorkerState) -> &'static str {
    match state {
        pb::WorkerState::Unspecified => "unknown",
        pb::WorkerState::Starting => "starting",
        pb::WorkerState::Running => "running",
        pb::WorkerState::Succeeded => "succeeded",
        pb::WorkerState::Failed => "failed",
        pb::WorkerState::Cancelled => "cancelled",
        pb::WorkerState::TimedOut => "timed out",
        pb::WorkerState::Lost => "lost",
    }
}

pub async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.conductor).await?;
    let request = pb::SendMessageRequest {
        conversation_id: args.conversation.unwrap_or_default(),
        text: args.text,
        sender: args.conductor.sender(),
    };
    let outcome = stream_turn(&mut client, request).await?;
    eprintln!("(conversation {})", outcome.conversation_id);
    Ok(if outcome.error || outcome.failed_workers > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.conductor).await?;
    let sender = args.conductor.sender();
    let mut conversation_id = args.conversation.unwrap_or_default();
    eprintln!("Talking to Stu at {} as {sender}. Ctrl-D to leave.", args.conductor.url);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        eprint!("you> ");
        let Some(line) = lines.next_line().await? else { break };
        if line.trim().is_empty() {
            continue;
        }
        let request =
            pb::SendMessageRequest { conversation_id: conversation_id.clone(), text: line, sender: sender.clone() };
        match stream_turn(&mut client, request).await {
            Ok(outcome) => conversation_id = outcome.conversation_id,
            Err(error) => eprintln!("error: {error:#}"),
        }
    }
    if !conversation_id.is_empty() {
        eprintln!("(conversation {conversation_id}: continue with `studio chat --conversation {conversation_id}`)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conductor).await?;
    let states =
        if args.running { vec![pb::WorkerState::Starting as i32, pb::WorkerState::Running as i32] } else { Vec::new() };
    let request =
        pb::ListWorkersRequest { conversation_id: args.conversation.unwrap_or_default(), states, kind: 0, limit: 0 };
    let workers = client.list_workers(request).await.map_err(describe)?.into_inner().workers;
    if workers.is_empty() {
        println!("no workers");
        return Ok(());
    }
    println!("{:<16} {:<15} {:<10} {:>5} {:>8}  TASK", "WORKER", "KIND", "STATE", "EXIT", "SEQ");
    for worker in workers {
        let kind = pb::WorkerKind::try_from(worker.kind).map(|k| k.as_str_name()).unwrap_or("?");
        let kind = kind.trim_start_matches("WORKER_KIND_").to_lowercase();
        let state = state_name(pb::WorkerState::try_from(worker.state).unwrap_or(pb::WorkerState::Unspecified));
        let exit = worker.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let task: String = worker.task.lines().next().unwrap_or_default().chars().take(60).collect();
        println!("{:<16} {:<15} {:<10} {:>5} {:>8}  {task}", worker.worker_id, kind, state, exit, worker.last_seq);
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    use pb::worker_output_event::Event as Output;
    let mut client = connect(&args.conductor).await?;
    let request =
        pb::AttachWorkerRequest { worker_id: args.worker.clone(), after_seq: args.after, follow: args.follow };
    let mut stream = client.attach_worker(request).await.map_err(describe)?.into_inner();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(event) = stream.message().await.map_err(describe)? {
        match event.event {
            Some(Output::Stdout(data)) => stdout.write_all(&data)?,
            Some(Output::Stderr(data)) => stderr.write_all(&data)?,
            Some(Output::Truncated(t)) => {
                eprintln!("[output before seq {} was dropped from the spool]", t.first_available_seq)
            }
            Some(Output::Exited(exited)) => {
                stdout.flush()?;
                eprintln!("[exited {} at seq {}]", exited.exit_code, event.seq);
                return Ok(ExitCode::SUCCESS);
            }
            None => {}
        }
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conductor).await?;
    let request =
        pb::CancelWorkerRequest { worker_id: args.worker, reason: args.reason, sender: args.conductor.sender() };
    let worker = client.cancel_worker(request).await.map_err(describe)?.into_inner().worker.unwrap_or_default();
    let state = state_name(pb::WorkerState::try_from(worker.state).unwrap_or(pb::WorkerState::Unspecified));
    println!("{} {state} ({})", worker.worker_id, worker.end_reason);
    Ok(())
}

pub async fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conductor).await?;
    let sender = args.conductor.sender();
    match args.command.unwrap_or(MemoryCommand::Ls { query: None }) {
        MemoryCommand::Ls { query } => {
            let request = pb::ListMemoriesRequest { query: query.unwrap_or_default(), limit: 0 };
            let memories = client.list_memories(request).await.map_err(describe)?.into_inner().memories;
            if memories.is_empty() {
                println!("memory is empty");
            }
            for memory in memories {
                println!("{}: {}  ({})", memory.key, memory.content, memory.source);
            }
        }
        MemoryCommand::Add { key, content } => {
            let request = pb::RememberRequest { key, content, sender };
            let memory = client.remember(request).await.map_err(describe)?.into_inner().memory.unwrap_or_default();
            println!("remembered {}", memory.key);
        }
        MemoryCommand::Forget { key } => {
            let request = pb::ForgetRequest { key: key.clone(), sender };
            let forgotten = client.forget(request).await.map_err(describe)?.into_inner().forgotten;
            println!("{}", if forgotten { format!("forgot {key}") } else { format!("nothing stored under {key}") });
        }
    }
    Ok(())
}
