//! `conductor-svc`: Stu as a standalone service (what deployments run).

use clap::Parser;
use conductor_svc::ConductorConfig;
use conductor_svc::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "conductor-svc", version, about = "Stu, the Agent Studio conductor")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "CONDUCTOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    conductor: ConductorConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init("conductor", cli.log_format)?;
    conductor_svc::run(cli.conductor, conductor_svc::shutdown_signal()).await
}
