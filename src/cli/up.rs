//! `studio up`: the whole system in one process, on its embedded defaults.

use sandbox_svc::telemetry::{self, LogFormat};
use sandbox_svc::{BrokerConfig, Ready};
use std::io::Write;

use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Log format on stderr.
    #[arg(long, env = "STUDIO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    broker: BrokerConfig,
}

pub async fn run(mut args: UpArgs) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("sandbox-broker", args.log_format)?;
    args.broker.load_secret_files()?;
    args.broker.validate()?;
    let listener = TcpListener::bind(args.broker.listen_addr).await?;
    sandbox_svc::serve_with_ready(args.broker, listener, sandbox_svc::shutdown_signal(), print_banner).await
}

/// The first line carries the address; scripts and tests read it and may close the pipe, so a
/// failed print must not take the broker down.
fn print_banner(ready: &Ready) {
    let mut banner =
        format!("sandbox broker: grpc://{} (provider {}; Ctrl-C to stop)\n", ready.address, ready.provider);
    if let Some(path) = &ready.generated_token_file {
        banner.push_str(&format!("auth token: generated in {} (studio commands run here find it)\n", path.display()));
    }
    banner.push_str("try: studio sandbox create   then   studio exec <sandbox> -- echo hello\n");
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
}
