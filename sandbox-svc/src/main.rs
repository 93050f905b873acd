//! `sandbox-svc`: the broker as a standalone binary. Parses config, starts telemetry, runs.

use clap::Parser;
use sandbox_svc::BrokerConfig;
use sandbox_svc::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "sandbox-svc", version, about = "Agent Studio sandbox broker")]
struct Cli {
    #[command(flatten)]
    broker: BrokerConfig,
    /// Log format on stderr.
    #[arg(long, env = "SANDBOX_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init("sandbox-broker", cli.log_format)?;
    sandbox_svc::run(cli.broker, sandbox_svc::shutdown_signal()).await
}
