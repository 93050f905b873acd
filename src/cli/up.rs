//! `studio up`: the whole system in one process, on its embedded defaults.

use sandbox_svc::BrokerConfig;
use sandbox_svc::telemetry::{self, LogFormat};
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
    let address = listener.local_addr()?;
    // Whoever started us may read only the first line (scripts, tests) and close the pipe:
    // a failed print must not take the broker down.
    let banner = format!(
        "sandbox broker: grpc://{address} (provider {}; Ctrl-C to stop)\n\
         try: studio sandbox create   then   studio exec <sandbox> -- echo hello\n",
        args.broker.provider
    );
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
    sandbox_svc::serve(args.broker, listener, sandbox_svc::shutdown_signal()).await
}
