//! The conductor's client for the sandbox broker: bearer token on every call, keepalive so a dead
//! broker is noticed in about 30 s, deadlines on unary calls, and retries on idempotent calls only
//! (`CreateSandbox` is made idempotent by its idempotency key; `StartProcess` is never retried).

use std::future::Future;
use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use service_kit::secret::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Deadline of one unary broker call.
pub const UNARY_DEADLINE: Duration = Duration::from_secs(15);
/// Attempts of an idempotent call while the broker answers UNAVAILABLE.
const IDEMPOTENT_ATTEMPTS: u32 = 4;
/// Largest broker message the conductor decodes (ReadFile of a template file, large output events).
const MAX_MESSAGE_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct BearerInterceptor {
    header: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

pub type Client = SandboxServiceClient<InterceptedService<Channel, BearerInterceptor>>;

/// A cheap-to-clone handle; connects lazily, so the conductor starts while the broker is down.
#[derive(Clone)]
pub struct BrokerClient {
    client: Client,
    url: String,
}

impl BrokerClient {
    pub fn connect_lazy(url: &str, token: Option<&SecretString>) -> anyhow::Result<BrokerClient> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("invalid CONDUCTOR_BROKER_URL {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            // gRPC keepalive (platform facts §2.4): a dead broker is noticed in ~30 s, not hours.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            // Bulk output: 1 MiB frames and large windows, as the CLI does (the defaults cut a
            // 256 KiB event into sixteen 16 KiB frames).
            .max_frame_size(1 << 20)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20);
        let header = match token {
            Some(token) => Some(
                format!("Bearer {}", token.expose())
                    .parse()
                    .map_err(|_| anyhow::anyhow!("CONDUCTOR_BROKER_TOKEN is not valid gRPC metadata"))?,
            ),
            None => None,
        };
        let client = SandboxServiceClient::with_interceptor(endpoint.connect_lazy(), BearerInterceptor { header })
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(BrokerClient { client, url: url.to_owned() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The raw client, for streaming calls.
    pub fn raw(&self) -> Client {
        self.client.clone()
    }

    pub async fn list_templates(&self) -> Result<Vec<pb::Template>, Status> {
        self.idempotent(|mut c| async move { c.list_templates(unary(pb::ListTemplatesRequest {})).await })
            .await
            .map(|r| r.templates)
    }

    /// Retried: the idempotency key makes a repeat return the same sandbox.
    pub async fn create_sandbox(&self, request: pb::CreateSandboxRequest) -> Result<pb::Sandbox, Status> {
        debug_assert!(!request.idempotency_key.is_empty(), "create is retried only with an idempotency key");
        let response = self
            .idempotent(|mut c| {
                let request = request.clone();
                async move { c.create_sandbox(unary(request)).await }
            })
            .await?;
        response.sandbox.ok_or_else(|| Status::internal("broker returned no sandbox"))
    }

    pub async fn get_sandbox(&self, sandbox_id: &str) -> Result<pb::Sandbox, Status> {
        let request = pb::GetSandboxRequest { sandbox_id: sandbox_id.to_owned() };
        let response = self
            .idempotent(|mut c| {
                let request = request.clone();
                async move { c.get_sandbox(unary(request)).await }
            })
            .await?;
        response.sandbox.ok_or_else(|| Status::internal("broker returned no sandbox"))
    }

    /// Killing is idempotent on the broker (an ended sandbox is a no-op).
    pub async fn kill_sandbox(&self, sandbox_id: &str) -> Result<(), Status> {
        let request = pb::KillSandboxRequest { sandbox_id: sandbox_id.to_owned() };
        self.idempotent(|mut c| {
            let request = request.clone();
            async move { c.kill_sandbox(unary(request)).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn list_processes(&self, sandbox_id: &str) -> Result<Vec<pb::ProcessInfo>, Status> {
        let request = pb::ListProcessesRequest { sandbox_id: sandbox_id.to_owned() };
        self.idempotent(|mut c| {
            let request = request.clone();
            async move { c.list_processes(unary(request)).await }
        })
        .await
        .map(|r| r.processes)
    }

    /// Not retried: a repeat would push a second commit.
    pub async fn propose_change(&self, request: pb::ProposeChangeRequest) -> Result<pb::PullRequest, Status> {
        let response = self.client.clone().propose_change(unary(request)).await?.into_inner();
        response.pull_request.ok_or_else(|| Status::internal("broker returned no pull request"))
    }

    pub async fn get_pull_request(&self, number: u64) -> Result<pb::PullRequest, Status> {
        let response = self
            .idempotent(|mut c| async move { c.get_pull_request(unary(pb::GetPullRequestRequest { number })).await })
            .await?;
        response.pull_request.ok_or_else(|| Status::internal("broker returned no pull request"))
    }

    /// Not retried: the approval it carries is single use.
    pub async fn merge_pull_request(
        &self,
        request: pb::MergePullRequestRequest,
    ) -> Result<pb::MergePullRequestResponse, Status> {
        Ok(self.client.clone().merge_pull_request(unary(request)).await?.into_inner())
    }

    /// Not retried: a second revert would find the branch moved (by the first) and refuse.
    pub async fn revert_pull_request(&self, number: u64, reason: &str) -> Result<String, Status> {
        let request = pb::RevertPullRequestRequest { number, reason: reason.to_owned() };
        Ok(self.client.clone().revert_pull_request(unary(request)).await?.into_inner().revert_sha)
    }

    pub async fn close_pull_request(&self, number: u64, comment: &str) -> Result<pb::PullRequest, Status> {
        let request = pb::ClosePullRequestRequest { number, comment: comment.to_owned() };
        let response = self.client.clone().close_pull_request(unary(request)).await?.into_inner();
        response.pull_request.ok_or_else(|| Status::internal("broker returned no pull request"))
    }

    /// The build's log stream; no deadline (builds take minutes on real builders).
    pub async fn build_template(
        &self,
        request: pb::BuildTemplateRequest,
    ) -> Result<tonic::Streaming<pb::BuildTemplateEvent>, Status> {
        Ok(self.client.clone().build_template(request).await?.into_inner())
    }

    pub async fn list_template_versions(&self, template: &str) -> Result<Vec<pb::TemplateVersion>, Status> {
        let request = pb::ListTemplateVersionsRequest { template: template.to_owned() };
        self.idempotent(|mut c| {
            let request = request.clone();
            async move { c.list_template_versions(unary(request)).await }
        })
        .await
        .map(|r| r.versions)
    }

    pub async fn promote_template(&self, template: &str, version_id: &str) -> Result<pb::TemplateVersion, Status> {
        let request = pb::PromoteTemplateRequest { template: template.to_owned(), version_id: version_id.to_owned() };
        let response = self
            .idempotent(|mut c| {
                let request = request.clone();
                async move { c.promote_template(unary(request)).await }
            })
            .await?;
        response.version.ok_or_else(|| Status::internal("broker returned no version"))
    }

    pub async fn rollback_template(&self, template: &str, version_id: &str) -> Result<pb::TemplateVersion, Status> {
        let request = pb::RollbackTemplateRequest { template: template.to_owned(), version_id: version_id.to_owned() };
        let response = self.client.clone().rollback_template(unary(request)).await?.into_inner();
        response.version.ok_or_else(|| Status::internal("broker returned no version"))
    }

    pub async fn list_templates_with_host(&self) -> Result<pb::ListTemplatesResponse, Status> {
        self.idempotent(|mut c| async move { c.list_templates(unary(pb::ListTemplatesRequest {})).await }).await
    }

    async fn idempotent<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match call(self.client.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::Unavailable && attempt < IDEMPOTENT_ATTEMPTS => {
                    tracing::debug!(attempt, error = %status.message(), "broker unavailable; retrying");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

/// A unary request with the standard deadline.
pub fn unary<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(UNARY_DEADLINE);
    request
}

/// ±20 % jitter, so conductors that lost the broker together do not return in lockstep.
pub fn jittered(delay: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    delay.mul_f64(factor)
}

/// The message of a broker error for people: code and text.
pub fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
