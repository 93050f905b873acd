//! Wiring: config → provider → broker → gRPC server, and the ordered shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use agentstudio_proto::sandbox::v1::sandbox_service_server::SandboxServiceServer;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::grpc::SandboxGrpc;
use crate::provider::e2b::E2bProvider;
use crate::provider::local::{LocalOptions, LocalProvider};
use crate::provider::{AdoptedSandbox, SandboxProvider};
use crate::redact::Redactor;
use crate::template::builder::{LocalBuilder, TemplateBuilder};
use crate::template::e2b_builder::{E2bBuildOptions, E2bBuilder};
use crate::template::registry::TemplateRegistry;
use crate::template_repo::TemplateRepo;
use service_kit::auth::BearerAuth;

/// Binds `config.listen_addr` and serves until `shutdown` resolves.
pub async fn run(mut config: BrokerConfig, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    config.load_secret_files()?;
    config.validate()?;
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    serve(config, listener, shutdown).await
}

/// Serves on an already-bound listener (tests bind `127.0.0.1:0` first) until `shutdown`
/// resolves; then: health NOT_SERVING, every sandbox killed, streams closed, server stopped,
/// all within `config.shutdown_grace` each.
pub async fn serve(
    config: BrokerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with_ready(config, listener, shutdown, |_| {}).await
}

/// What a started broker tells whoever started it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub address: std::net::SocketAddr,
    pub provider: &'static str,
    /// Set when the broker generated its auth token (none was configured).
    pub generated_token_file: Option<std::path::PathBuf>,
}

/// [`serve`], calling `on_ready` once the broker accepts requests.
pub async fn serve_with_ready(
    config: BrokerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let mut config = config;
    config.load_secret_files()?;
    config.validate()?;
    let local_addr = listener.local_addr()?;
    if !local_addr.ip().is_loopback() && config.auth_token.is_none() {
        anyhow::bail!(crate::config::ConfigError::TokenRequired(local_addr));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.canonicalize()?;
    // Others may pass through (a sandbox user must reach its workspace) but not list it.
    std::fs::set_permissions(&data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .with_context(|| format!("cannot restrict data dir {}", data_dir.display()))?;
    // Held until serving ends: spools, template versions and approvals have one writer.
    let _data_dir_lock = service_kit::dir_lock::DirLock::acquire(&data_dir, config.data_dir_lock_wait).await?;
    let mut generated_token_file = None;
    if config.auth_token.is_none() {
        // Even on loopback: a sandbox with network access can reach 127.0.0.1 too.
        let path = data_dir.join(GENERATED_TOKEN_FILE);
        config.auth_token = Some(service_kit::auth::generate_token_file(&path)?);
        tracing::info!(path = %path.display(), "no SANDBOX_AUTH_TOKEN given: generated one; clients read it from this file");
        generated_token_file = Some(path);
    }
    let secrets = config.secrets();
    let redactor = Redactor::new(secrets.iter().map(|s| s.expose())).context("invalid secret to redact")?;
    let spool_dir = data_dir.join("spool");
    let workspaces_dir = data_dir.join("workspaces");
    // A previous broker's `local` sandboxes died with it (their processes die with their
    // parent): their workspaces are garbage. Spools are kept until adoption has said which
    // processes go on (E2B's outlive the broker).
    remove_stale(&workspaces_dir)?;
    // The builder follows the provider: E2B sandboxes start from E2B template builds.
    let (provider, builder): (Arc<dyn SandboxProvider>, Arc<dyn TemplateBuilder>) = match config.provider.as_str() {
        "local" => (
            Arc::new(LocalProvider::new(LocalOptions {
                workspaces_dir,
                root_paths: config.root_paths.clone(),
                hidden: hidden_paths(&config, &data_dir)?,
                run_as: config.local_run_as()?,
                unsafe_no_isolation: config.unsafe_no_isolation,
            })?),
            Arc::new(LocalBuilder),
        ),
        "e2b" => {
            let broker_id = e2b_broker_id(&data_dir)?;
            let provider = E2bProvider::new(config.e2b_options(broker_id)?).map_err(|e| anyhow::anyhow!(e))?;
            let builder = E2bBuilder::new(
                provider.control_plane(),
                E2bBuildOptions {
                    template_prefix: config.e2b.template_prefix.clone(),
                    cpu_count: config.e2b.build_cpu_count,
                    memory_mb: config.e2b.build_memory_mb,
                    build_timeout: config.e2b.build_timeout,
                    poll_interval: std::time::Duration::from_millis(200),
                },
            );
            (Arc::new(provider), Arc::new(builder))
        }
        other => anyhow::bail!("unknown SANDBOX_PROVIDER {other:?}; available providers: local, e2b"),
    };
    raise_open_file_limit();
    let repo = Arc::new(template_repository(&config, &data_dir, builder).await?);

    let limits = config.limits.clone();
    let broker = Broker::new(limits.clone(), repo, config.claude_runtime_env(), provider.clone(), redactor, spool_dir);
    // Sandboxes of a previous run that outlived it (E2B's do; `local` ones die with the broker).
    match provider.adopt().await {
        Ok(adopted) => hand_over_adopted(&broker, adopted),
        Err(error) => tracing::warn!(%error, "cannot look for sandboxes of a previous broker run"),
    }
    broker.clear_stale_spools();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SandboxServiceServer<SandboxGrpc>>().await;
    health.set_service_status("", ServingStatus::Serving).await;

    let stream_shutdown = CancellationToken::new();
    let sandbox_service = SandboxServiceServer::new(SandboxGrpc::new(broker.clone(), stream_shutdown.clone()))
        .max_decoding_message_size(limits.max_message_bytes);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agentstudio_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // Python's grpcio-reflection speaks only v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let auth = BearerAuth::new(config.auth_token.as_ref());

    let server_stop = CancellationToken::new();
    let max_message_bytes = limits.max_message_bytes;
    let server = Server::builder()
        .trace_fn(crate::telemetry::grpc_request_span)
        .layer(tower::util::MapResponseLayer::new(move |response| {
            crate::grpc::message_limit::report_as_resource_exhausted(response, max_message_bytes)
        }))
        // Dead peers are noticed within ~40 s instead of holding streams forever.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        // h2 has no per-connection stream cap unless set: one client cannot open unbounded
        // concurrent calls on a single connection.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_service(InterceptedService::new(sandbox_service, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth))
        .serve_with_incoming_shutdown(
            // No Nagle: small events (a prompt, one line) go out at once, not after a delayed ACK.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            server_stop.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);
    tracing::info!(address = %local_addr, provider = provider.name(), data_dir = %data_dir.display(), "sandbox broker listening");
    on_ready(&Ready { address: local_addr, provider: provider.name(), generated_token_file });

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            return result.context("server task panicked")?.context("gRPC server failed");
        }
    }
    tracing::info!("shutting down: health NOT_SERVING, ending sandboxes");
    health.set_not_serving::<SandboxServiceServer<SandboxGrpc>>().await;
    health.set_service_status("", ServingStatus::NotServing).await;
    // One deadline for the whole shutdown, so it ends within the grace period.
    let grace = config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let keep = config.keep_sandboxes_on_shutdown && provider.sandboxes_outlive_broker();
    if keep {
        tracing::info!("leaving sandboxes running for the next broker run (SANDBOX_KEEP_SANDBOXES_ON_SHUTDOWN)");
        broker.stop_accepting();
    } else if tokio::time::timeout_at(deadline, broker.shutdown()).await.is_err() {
        tracing::warn!(?grace, "sandboxes did not all end within the grace period");
    }
    stream_shutdown.cancel();
    server_stop.cancel();
    match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(result) => result.context("server task panicked")?.context("gRPC server failed")?,
        Err(_) => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
    }
    tracing::info!("sandbox broker stopped");
    Ok(())
}

/// The code host, the template versions and the builder, with a first version of every
/// template active (seeding the local repository from `templates/` on first start).
async fn template_repository(
    config: &BrokerConfig,
    data_dir: &Path,
    builder: Arc<dyn TemplateBuilder>,
) -> anyhow::Result<TemplateRepo> {
    let code_host: Arc<dyn codehost::CodeHost> = match config.code_host.as_str() {
        "local-git" => {
            let seed: Vec<codehost::TreeFile> = crate::template::seed_files(&config.templates_dir)?
                .into_iter()
                .map(|(path, content)| codehost::TreeFile { path, content, executable: false })
                .collect();
            let root = data_dir.join("forge");
            let identity = codehost::CommitIdentity::default();
            Arc::new(
                codehost::local_git::LocalGit::open_or_seed(&root, "worker-template", &seed, &identity)
                    .await
                    .context("cannot open the local-git template repository")?,
            )
        }
        "github" => Arc::new(github_host(config)?),
        other => anyhow::bail!("unknown SANDBOX_CODE_HOST {other:?}; available: local-git, github"),
    };
    let registry = Arc::new(TemplateRegistry::open(&data_dir.join("templates"))?);
    let repo = TemplateRepo::new(code_host, registry, builder, data_dir.join("templates").join("used-approvals"))?;
    repo.bootstrap().await.map_err(|e| anyhow::anyhow!("template repository: {e}"))?;
    Ok(repo)
}

/// The `github` code host from GITHUB_REPOSITORY and a GitHub App (preferred: short-lived
/// installation tokens) or a fine-grained token.
fn github_host(config: &BrokerConfig) -> anyhow::Result<codehost::GitHub> {
    use codehost::{GitHubAuth, GitHubOptions};
    let repository = config
        .github_repository
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("SANDBOX_CODE_HOST=github needs GITHUB_REPOSITORY (owner/name)"))?;
    let (owner, repo) = repository
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("GITHUB_REPOSITORY {repository:?} must be owner/name"))?;
    let auth = match (&config.github_app_id, &config.github_app_installation_id, &config.github_app_private_key) {
        (Some(app_id), Some(installation_id), Some(key)) => {
            GitHubAuth::App { app_id: *app_id, private_key_pem: key.clone(), installation_id: *installation_id }
        }
        (None, None, None) => GitHubAuth::Token(config.github_token.clone().ok_or_else(|| {
            anyhow::anyhow!("SANDBOX_CODE_HOST=github needs GITHUB_TOKEN (or GITHUB_APP_ID, GITHUB_APP_INSTALLATION_ID and GITHUB_APP_PRIVATE_KEY)")
        })?),
        _ => anyhow::bail!(
            "a GitHub App needs all of GITHUB_APP_ID, GITHUB_APP_INSTALLATION_ID and GITHUB_APP_PRIVATE_KEY(_FILE)"
        ),
    };
    let options = GitHubOptions {
        api_url: config.github_api_url.trim_end_matches('/').to_owned(),
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        auth,
        identity: codehost::CommitIdentity::default(),
    };
    let host = codehost::GitHub::new(options).map_err(|e| anyhow::anyhow!("github code host: {e}"))?;
    host.with_default_branch(&config.github_branch).map_err(|e| anyhow::anyhow!("SANDBOX_GITHUB_BRANCH: {e}"))
}

/// Gives the broker the sandboxes a provider re-adopted after a restart: tracked again under
/// their ids, running processes re-followed behind a `truncated` gap.
fn hand_over_adopted(broker: &Broker, adopted: Vec<AdoptedSandbox>) {
    if adopted.is_empty() {
        return;
    }
    let found = adopted.len();
    let taken = broker.adopt(adopted);
    tracing::info!(found, taken, "sandboxes of the previous broker run are tracked again");
}

/// This broker's E2B marker: SANDBOX_E2B_BROKER_ID, else an id generated once into the data
/// dir, so a restart with the same data dir finds its sandboxes.
fn e2b_broker_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("e2b-broker-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let id = format!("broker-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&path, format!("{id}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Concurrent HTTP/2 streams (calls) one client connection may hold open.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Where a broker started without a token writes the one it generated (in its data dir, which
/// sandboxes cannot see). `studio` reads it from there.
pub const GENERATED_TOKEN_FILE: &str = "auth-token";

/// What `local` sandboxes must not see even under an allowed root: the data dir, the
/// directory the broker runs in (a checkout with a `.env`), the directories of secret files
/// (whole, so a rotated Kubernetes secret stays hidden), and the configured paths.
fn hidden_paths(config: &BrokerConfig, data_dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    // Covering a bound root (or `/`) itself would hide what sandboxes need to run.
    let too_wide = |path: &Path| config.root_paths.iter().any(|root| root.starts_with(path));
    let mut hidden = vec![data_dir.to_owned()];
    hidden.extend(std::env::current_dir().ok().and_then(|cwd| cwd.canonicalize().ok()).filter(|cwd| !too_wide(cwd)));
    let secret_files = [
        &config.auth_token_file,
        &config.e2b_api_key_file,
        &config.github_token_file,
        &config.github_app_private_key_file,
    ];
    for file in secret_files.into_iter().flatten() {
        let absolute = std::path::absolute(file)?;
        match absolute.parent().filter(|dir| !too_wide(dir)) {
            Some(dir) => hidden.extend([dir.to_owned()].into_iter().chain(dir.canonicalize().ok())),
            None => hidden.extend([absolute.clone()].into_iter().chain(absolute.canonicalize().ok())),
        }
    }
    for path in &config.hide_paths {
        match path.canonicalize() {
            Ok(path) => hidden.push(path),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "SANDBOX_LOCAL_HIDE_PATHS entry cannot be hidden")
            }
        }
    }
    Ok(hidden)
}

fn remove_stale(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot clear stale {}", dir.display())),
    }
}

/// Each process holds pipes and spool files: lift the soft descriptor limit to the hard one.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
