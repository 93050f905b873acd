//! `studio broker` and `studio conductor`: one service each, in the foreground. `studio up`
//! runs each of them as its own process; deployments may run them directly.

use std::io::Write;

use conductor_svc::ConductorConfig;
use sandbox_svc::BrokerConfig;
use sandbox_svc::telemetry::{self, LogFormat};
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Log format on stderr.
    #[arg(long, env = "STUDIO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    broker: BrokerConfig,
}

#[derive(Debug, clap::Args)]
pub struct ConductorArgs {
    /// Log format on stderr.
    #[arg(long, env = "STUDIO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    conductor: ConductorConfig,
}

/// The first line printed carries the address; scripts, `studio up` and tests read it and may
/// close the pipe, so a failed print must not take the service down.
fn print_lines(lines: &str) {
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(lines.as_bytes()).and_then(|()| stdout.flush());
}

pub async fn broker(mut args: BrokerArgs) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("sandbox-broker", args.log_format)?;
    args.broker.load_secret_files()?;
    args.broker.validate()?;
    let listener = TcpListener::bind(args.broker.listen_addr).await?;
    sandbox_svc::serve_with_ready(args.broker, listener, sandbox_svc::shutdown_signal(), |ready| {
        let mut banner =
            format!("sandbox broker: grpc://{} (provider {}; Ctrl-C to stop)\n", ready.address, ready.provider);
        if let Some(path) = &ready.generated_token_file {
            banner
                .push_str(&format!("auth token: generated in {} (studio commands run here find it)\n", path.display()));
        }
        print_lines(&banner);
    })
    .await
}

pub async fn conductor(args: ConductorArgs) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("conductor", args.log_format)?;
    let listener = TcpListener::bind(args.conductor.listen_addr).await?;
    conductor_svc::serve_with_ready(args.conductor, listener, conductor_svc::shutdown_signal(), |ready| {
        let mut banner = format!(
            "conductor (Stu): grpc://{} (brain {}, state {}; Ctrl-C to stop)\n",
            ready.address, ready.brain, ready.database
        );
        if let Some(path) = &ready.generated_token_file {
            banner
                .push_str(&format!("auth token: generated in {} (studio commands run here find it)\n", path.display()));
        }
        print_lines(&banner);
    })
    .await
}
