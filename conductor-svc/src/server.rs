//! Wiring: config → store, broker client, brain → gRPC server, and the ordered shutdown.

use std::future::Future;

use agentstudio_proto::conductor::v1::conductor_service_server::ConductorServiceServer;
use anyhow::Context;
use service_kit::auth::BearerAuth;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::broker_client::BrokerClient;
use crate::changes::Changes;
use crate::chat::Chat;
use crate::config::ConductorConfig;
use crate::grpc::ConductorGrpc;
use crate::store::Store;
use crate::workers::Workers;

/// Where a conductor started without a token writes the one it generated (owner-only, in its data dir).
pub const GENERATED_TOKEN_FILE: &str = "auth-token";
/// Concurrent HTTP/2 streams one client connection may hold open.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest request the conductor decodes (messages are far smaller; this bounds a bad client).
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// What a started conductor tells whoever started it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub address: std::net::SocketAddr,
    pub brain: &'static str,
    pub database: &'static str,
    pub generated_token_file: Option<std::path::PathBuf>,
}

/// Binds `config.listen_addr` and serves until `shutdown` resolves.
pub async fn run(config: ConductorConfig, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    serve_with_ready(config, listener, shutdown, |_| {}).await
}

/// Serves on an already-bound listener until `shutdown` resolves, calling `on_ready` once it
/// accepts requests. On shutdown, worker followers stop without ending their workers: the next
/// conductor re-adopts them from the seq recorded in the store.
pub async fn serve_with_ready(
    mut config: ConductorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    config.load_secret_files()?;
    config.validate()?;
    let local_addr = listener.local_addr()?;
    if !local_addr.ip().is_loopback() && config.auth_token.is_none() {
        anyhow::bail!(crate::config::ConfigError::TokenRequired(local_addr));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot restrict data dir {}", config.data_dir.display()))?;
    // Held until serving ends: one conductor re-adopts a data dir's workers.
    let _data_dir_lock = service_kit::dir_lock::DirLock::acquire(&config.data_dir, config.data_dir_lock_wait).await?;
    let mut generated_token_file = None;
    if config.auth_token.is_none() {
        // Even on loopback: a sandbox with network access reaches 127.0.0.1 too, and must not
        // be able to talk to Stu as if it were a person.
        let path = config.data_dir.join(GENERATED_TOKEN_FILE);
        config.auth_token = Some(service_kit::auth::generate_token_file(&path)?);
        tracing::info!(path = %path.display(), "no CONDUCTOR_AUTH_TOKEN given: generated one; clients read it from this file");
        generated_token_file = Some(path);
    }

    let store = Store::connect(&config.database_url()).await.context("cannot open the conductor's database")?;
    let broker = BrokerClient::connect_lazy(&config.broker_url, config.broker_token.as_ref())?;
    let brain = crate::brain::build(&config)?;
    let shutdown_followers = CancellationToken::new();
    let workers = Workers::new(store.clone(), broker.clone(), config.budgets.clone(), shutdown_followers.clone());
    let changes = Changes::new(store.clone(), broker, brain.clone(), config.approval_ttl);
    let chat = Chat::new(
        store.clone(),
        workers.clone(),
        changes.clone(),
        brain.clone(),
        config.budgets.clone(),
        config.history_token_budget,
    );
    let leftovers = workers.leftovers().await.context("cannot list the workers a previous conductor left")?;
    // Held until the pipelines a previous run left mid-way are settled: none starts before.
    let pipelines_held = changes.hold_pipelines().await;
    start_background(&workers, &changes, pipelines_held, leftovers);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ConductorServiceServer<ConductorGrpc>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    let service = ConductorServiceServer::new(ConductorGrpc::new(chat, workers, changes, store.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agentstudio_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let auth = BearerAuth::new(config.auth_token.as_ref());
    let server_stop = CancellationToken::new();
    let server = Server::builder()
        .trace_fn(service_kit::telemetry::grpc_request_span)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_service(InterceptedService::new(service, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            server_stop.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);
    tracing::info!(address = %local_addr, brain = brain.name(), database = store.backend(), broker = %config.broker_url, "conductor listening");
    on_ready(&Ready { address: local_addr, brain: brain.name(), database: store.backend(), generated_token_file });

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            return result.context("server task panicked")?.context("gRPC server failed");
        }
    }
    tracing::info!("shutting down: health NOT_SERVING; running workers stay running for the next conductor");
    health.set_not_serving::<ConductorServiceServer<ConductorGrpc>>().await;
    health.set_service_status("", ServingStatus::NotServing).await;
    shutdown_followers.cancel();
    server_stop.cancel();
    let grace = config.shutdown_grace;
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => result.context("server task panicked")?.context("gRPC server failed")?,
        Err(_) => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
    }
    // Followers record their last seq as they stop; give them a moment before the pool closes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    store.close().await;
    tracing::info!("conductor stopped");
    Ok(())
}

/// Re-adopts running workers and records the broker's capabilities, retrying while the broker
/// is unreachable (it may start after the conductor).
fn start_background(
    workers: &Workers,
    changes: &Changes,
    pipelines_held: crate::changes::PipelinesHeld,
    leftovers: Vec<crate::store::WorkerRow>,
) {
    let (workers, changes) = (workers.clone(), changes.clone());
    tokio::spawn(async move {
        let mut delay = std::time::Duration::from_millis(500);
        loop {
            match workers.templates().await {
                Ok(templates) => {
                    tracing::info!(templates = templates.len(), broker = workers.broker().url(), "broker reachable");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "broker not reachable yet; retrying in {:?}", delay);
                    tokio::time::sleep(crate::broker_client::jittered(delay)).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
        match workers.adopt(leftovers).await {
            Ok(0) => {}
            Ok(adopted) => tracing::info!(adopted, "re-adopted running workers"),
            Err(error) => tracing::error!(%error, "could not re-adopt running workers"),
        }
        // Then the change pipelines the previous run left mid-way.
        let settled = changes.resume_interrupted(pipelines_held).await;
        if settled > 0 {
            tracing::info!(settled, "settled change pipelines a previous run left mid-way");
        }
    });
}
