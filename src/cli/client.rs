//! Connecting to the broker with the bearer token on every call.

use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use anyhow::Context;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use sandbox_svc::secret::SecretString;

use super::BrokerClientArgs;

pub type AuthInterceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;
pub type BrokerClient = SandboxServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// Largest message the CLI accepts (ReadFile of a big file).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub async fn connect(args: &BrokerClientArgs) -> anyhow::Result<BrokerClient> {
    let channel = channel(&args.url, "broker").await?;
    let interceptor = bearer(args.resolve_token()?.as_ref())?;
    Ok(SandboxServiceClient::with_interceptor(channel, interceptor).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// A connected channel to one of the services (`what` names it in errors).
pub async fn channel(url: &str, what: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| format!("invalid {what} URL {url:?}"))?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        // Bulk output: 1 MiB frames and large windows instead of sixteen 16 KiB frames per event.
        .max_frame_size(1 << 20)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .with_context(|| format!("cannot reach the {what} at {url} (is `studio up` running?)"))
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
pub fn bearer(token: Option<&SecretString>) -> anyhow::Result<AuthInterceptor> {
    let header = match token {
        Some(token) => Some(
            format!("Bearer {}", token.expose())
                .parse::<tonic::metadata::AsciiMetadataValue>()
                .context("token is not valid metadata")?,
        ),
        None => None,
    };
    Ok(Box::new(move |mut request: Request<()>| {
        if let Some(header) = &header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }))
}

/// `Status` as a one-line error: code and message.
pub fn describe(status: Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
