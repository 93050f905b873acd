//! `studio up`: the whole system on its embedded defaults, as two processes — the sandbox broker
//! and the conductor — each started with only its own environment. The conductor's never holds
//! the broker's provider or code-host credentials (a test reads its /proc environ to prove it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where both services keep their state (`<dir>/sandbox`, `<dir>/conductor`).
    #[arg(long, env = "STUDIO_DATA_DIR", default_value = ".studio")]
    data_dir: PathBuf,
    /// The conductor's gRPC address.
    #[arg(long, env = "CONDUCTOR_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    conductor_listen: String,
    /// The broker's gRPC address.
    #[arg(long, env = "SANDBOX_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    broker_listen: String,
    /// Log format on stderr, for both services.
    #[arg(long, env = "STUDIO_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// How long a stop waits for each service.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    stop_grace: Duration,
}

/// Variables both services may see.
const SHARED_VARS: &[&str] = &["PATH", "HOME", "USER", "LANG", "TZ", "TMPDIR", "RUST_LOG", "RUST_BACKTRACE"];
/// Prefixes both services may see.
const SHARED_PREFIXES: &[&str] = &["LC_", "OTEL_"];
/// Prefixes only the broker sees: its own settings and every credential it holds.
const BROKER_PREFIXES: &[&str] = &["SANDBOX_", "E2B_", "GITHUB_"];
/// Prefixes only the conductor sees.
const CONDUCTOR_PREFIXES: &[&str] = &["CONDUCTOR_"];
/// Single variables only the conductor sees: its own LLM key.
const CONDUCTOR_VARS: &[&str] = &["ANTHROPIC_API_KEY"];

/// The environment a child starts with: shared variables plus its own, nothing else.
pub fn child_env(parent: &BTreeMap<String, String>, prefixes: &[&str], vars: &[&str]) -> BTreeMap<String, String> {
    parent
        .iter()
        .filter(|(key, _)| {
            SHARED_VARS.contains(&key.as_str())
                || vars.contains(&key.as_str())
                || SHARED_PREFIXES.iter().chain(prefixes).any(|prefix| key.starts_with(prefix))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

struct Service {
    name: &'static str,
    child: Child,
    /// The address line it printed.
    banner: String,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let parent: BTreeMap<String, String> = std::env::vars().collect();
    let data_dir = std::path::absolute(&args.data_dir)?;
    let broker_dir = data_dir.join("sandbox");
    let conductor_dir = data_dir.join("conductor");
    std::fs::create_dir_all(&conductor_dir).with_context(|| format!("cannot create {}", conductor_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the studio binary")?;

    let mut broker_env = child_env(&parent, BROKER_PREFIXES, &[]);
    broker_env.entry("SANDBOX_DATA_DIR".into()).or_insert_with(|| broker_dir.display().to_string());
    broker_env.insert("SANDBOX_LISTEN_ADDR".into(), args.broker_listen.clone());
    // Workers' LLM key: the broker holds and injects it; one ANTHROPIC_API_KEY serves both by default.
    if let Some(key) =
        parent.get("ANTHROPIC_API_KEY").filter(|_| !parent.contains_key("SANDBOX_WORKER_ANTHROPIC_API_KEY"))
    {
        broker_env.insert("SANDBOX_WORKER_ANTHROPIC_API_KEY".into(), key.clone());
    }
    // Sandboxes must not see the conductor's state (its database and token) either.
    let hide = match broker_env.get("SANDBOX_LOCAL_HIDE_PATHS") {
        Some(existing) if !existing.is_empty() => format!("{existing},{}", conductor_dir.display()),
        _ => conductor_dir.display().to_string(),
    };
    broker_env.insert("SANDBOX_LOCAL_HIDE_PATHS".into(), hide);
    broker_env.insert("STUDIO_LOG_FORMAT".into(), args.log_format.clone());

    let broker_data_dir = PathBuf::from(&broker_env["SANDBOX_DATA_DIR"]);
    let mut broker = start(&exe, "broker", broker_env).await?;
    let broker_address = address_of(&broker.banner)?;

    let mut conductor_env = child_env(&parent, CONDUCTOR_PREFIXES, CONDUCTOR_VARS);
    conductor_env.entry("CONDUCTOR_DATA_DIR".into()).or_insert_with(|| conductor_dir.display().to_string());
    conductor_env.insert("CONDUCTOR_LISTEN_ADDR".into(), args.conductor_listen.clone());
    conductor_env.insert("CONDUCTOR_BROKER_URL".into(), format!("http://{broker_address}"));
    conductor_env.insert("STUDIO_LOG_FORMAT".into(), args.log_format.clone());
    // The broker's bearer token reaches the conductor — as a file path when the broker generated it.
    match parent.get("SANDBOX_AUTH_TOKEN").filter(|t| !t.is_empty()) {
        Some(token) => {
            conductor_env.insert("CONDUCTOR_BROKER_TOKEN".into(), token.clone());
        }
        None => {
            let file = match parent.get("SANDBOX_AUTH_TOKEN_FILE") {
                Some(file) => PathBuf::from(file),
                None => broker_data_dir.join(sandbox_svc::GENERATED_TOKEN_FILE),
            };
            conductor_env.insert("CONDUCTOR_BROKER_TOKEN_FILE".into(), file.display().to_string());
        }
    }
    let mut conductor = match start(&exe, "conductor", conductor_env).await {
        Ok(conductor) => conductor,
        Err(error) => {
            stop(&mut broker, args.stop_grace).await;
            return Err(error);
        }
    };
    println!("Agent Studio is up.");
    println!("  {}", conductor.banner);
    println!("  {}", broker.banner);
    println!("try: studio chat    or    studio send \"run `echo hello`\"");

    let reason = tokio::select! {
        () = service_kit::shutdown_signal() => None,
        status = conductor.child.wait() => Some(format!("the conductor exited ({})", describe(status))),
        status = broker.child.wait() => Some(format!("the sandbox broker exited ({})", describe(status))),
    };
    // The conductor first: its followers stop and record their place while the broker still runs.
    stop(&mut conductor, args.stop_grace).await;
    stop(&mut broker, args.stop_grace).await;
    match reason {
        None => Ok(()),
        Some(reason) => anyhow::bail!("{reason}; stopped the other service too"),
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => error.to_string(),
    }
}

fn address_of(banner: &str) -> anyhow::Result<String> {
    banner
        .split("grpc://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no address in {banner:?}"))
}

/// Starts `studio <subcommand>` with exactly `env`, and waits for its address line.
async fn start(exe: &Path, subcommand: &'static str, env: BTreeMap<String, String>) -> anyhow::Result<Service> {
    let mut command = Command::new(exe);
    command.arg(subcommand).env_clear().envs(&env).stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the child dies with `studio up` even on SIGKILL.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| format!("cannot start the {subcommand}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let banner = tokio::select! {
        line = lines.next_line() => line?.filter(|l| l.contains("grpc://")),
        status = child.wait() => anyhow::bail!("the {subcommand} failed to start ({}); its log is above", describe(status)),
    };
    let Some(banner) = banner else {
        let status = child.wait().await;
        anyhow::bail!("the {subcommand} failed to start ({}); its log is above", describe(status));
    };
    // Later lines (generated-token notes) are passed through.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("  {line}");
        }
    });
    let name = if subcommand == "broker" { "sandbox broker" } else { "conductor" };
    Ok(Service { name, child, banner })
}

async fn stop(service: &mut Service, grace: Duration) {
    if let Some(pid) = service.child.id() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(grace, service.child.wait()).await.is_err() {
        tracing::warn!(service = service.name, "did not stop within {:?}; killing it", grace);
        let _ = service.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conductor_never_gets_broker_credentials() {
        let parent: BTreeMap<String, String> = [
            ("PATH", "/usr/bin"),
            ("E2B_API_KEY", "e2b_secret"),
            ("GITHUB_TOKEN", "ghp_secret"),
            ("GITHUB_APP_PRIVATE_KEY", "pem"),
            ("SANDBOX_AUTH_TOKEN_FILE", "/x"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("CONDUCTOR_BRAIN", "rules"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let conductor = child_env(&parent, CONDUCTOR_PREFIXES, CONDUCTOR_VARS);
        assert_eq!(conductor.keys().collect::<Vec<_>>(), ["ANTHROPIC_API_KEY", "CONDUCTOR_BRAIN", "PATH"]);
        let broker = child_env(&parent, BROKER_PREFIXES, &[]);
        assert_eq!(
            broker.keys().collect::<Vec<_>>(),
            ["E2B_API_KEY", "GITHUB_APP_PRIVATE_KEY", "GITHUB_TOKEN", "PATH", "SANDBOX_AUTH_TOKEN_FILE"]
        );
    }
}
