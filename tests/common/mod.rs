//! Test harness: a broker served in-process on an ephemeral loopback port, and a client for it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use sandbox_svc::BrokerConfig;
use sandbox_svc::secret::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Adds the bearer token (if any) to every call. Clone, so clients can be cloned.
#[derive(Clone)]
pub struct Interceptor(pub Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Interceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.0 {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

pub type Client = SandboxServiceClient<InterceptedService<Channel, Interceptor>>;

pub const TOKEN: &str = "test-token-0123456789abcdef";

pub struct TestBroker {
    pub address: std::net::SocketAddr,
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestBroker {
    /// A broker with default limits, the test token and `adjust` applied to its config.
    pub async fn start(adjust: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let data_dir = tempfile::tempdir().expect("tempdir");
        // Traversable, so a broker running as root keeps workspaces in its data dir (tests look there).
        std::fs::set_permissions(data_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut config = BrokerConfig::for_tests(data_dir.path().join("data"));
        config.auth_token = Some(SecretString::new(TOKEN));
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandbox_svc::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let broker = TestBroker { address, data_dir, stop: Some(stop), task };
        broker.wait_serving().await;
        broker
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.expect("connect")
    }

    pub async fn client(&self) -> Client {
        self.client_with_token(Some(TOKEN)).await
    }

    pub async fn client_with_token(&self, token: Option<&str>) -> Client {
        let header = token.map(|t| format!("Bearer {t}").parse::<tonic::metadata::AsciiMetadataValue>().unwrap());
        SandboxServiceClient::with_interceptor(self.channel().await, Interceptor(header))
            .max_decoding_message_size(64 << 20)
    }

    async fn wait_serving(&self) {
        eventually("broker serving", || async {
            let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await else {
                return false;
            };
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            matches!(health.check(request).await, Ok(r) if r.get_ref().status == 1)
        })
        .await;
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task).await.expect("broker stops within 30s").unwrap()
    }

    pub fn workspaces(&self) -> std::path::PathBuf {
        self.data_dir.path().join("data/workspaces")
    }
}

/// Polls `check` until it holds, failing the test after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn create(client: &mut Client, template: &str) -> pb::Sandbox {
    create_with(client, pb::CreateSandboxRequest { template: template.into(), ..Default::default() }).await
}

pub async fn create_with(client: &mut Client, request: pb::CreateSandboxRequest) -> pb::Sandbox {
    client.create_sandbox(request).await.expect("create sandbox").into_inner().sandbox.expect("sandbox")
}

pub async fn processes(client: &mut Client, sandbox_id: &str) -> Vec<pb::ProcessInfo> {
    let request = pb::ListProcessesRequest { sandbox_id: sandbox_id.into() };
    client.list_processes(request).await.expect("list processes").into_inner().processes
}

pub fn attach_request(sandbox_id: &str, process_id: &str, after_seq: u64) -> pb::AttachProcessRequest {
    pb::AttachProcessRequest { sandbox_id: sandbox_id.into(), process_id: process_id.into(), after_seq }
}

pub fn input_request(sandbox_id: &str, process_id: &str, data: impl Into<bytes::Bytes>) -> pb::SendProcessInputRequest {
    pb::SendProcessInputRequest { sandbox_id: sandbox_id.into(), process_id: process_id.into(), data: data.into() }
}

pub fn start_request(sandbox_id: &str, script: &str) -> pb::StartProcessRequest {
    pb::StartProcessRequest {
        sandbox_id: sandbox_id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Everything a stream yields until it ends (or 30 s pass).
pub async fn collect(mut stream: tonic::Streaming<pb::ProcessEvent>) -> Vec<pb::ProcessEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = stream.message().await.expect("stream error") {
            events.push(event);
        }
    })
    .await
    .expect("stream ends within 30s");
    events
}

pub async fn run(client: &mut Client, sandbox_id: &str, script: &str) -> Vec<pb::ProcessEvent> {
    let stream = client.start_process(start_request(sandbox_id, script)).await.expect("start").into_inner();
    collect(stream).await
}

pub fn stdout_of(events: &[pb::ProcessEvent]) -> String {
    text_of(events, |event| match event {
        Event::Stdout(data) => Some(data),
        _ => None,
    })
}

pub fn stderr_of(events: &[pb::ProcessEvent]) -> String {
    text_of(events, |event| match event {
        Event::Stderr(data) => Some(data),
        _ => None,
    })
}

fn text_of(events: &[pb::ProcessEvent], pick: impl Fn(&Event) -> Option<&bytes::Bytes>) -> String {
    let bytes: Vec<u8> = events.iter().filter_map(|e| e.event.as_ref().and_then(&pick)).flatten().copied().collect();
    String::from_utf8(bytes).expect("utf-8 output")
}

pub fn exit_of(events: &[pb::ProcessEvent]) -> Option<pb::process_event::Exited> {
    events.iter().find_map(|e| match &e.event {
        Some(Event::Exited(exited)) => Some(*exited),
        _ => None,
    })
}

/// Asserts seqs run `first, first+1, …` with no gap or repeat.
pub fn assert_contiguous(events: &[pb::ProcessEvent], first: u64) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, first + i as u64, "event {i} out of sequence: {events:?}");
    }
}

/// Host pids whose command line contains `marker` (excluding this test process).
pub fn pids_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

pub fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: tonic::Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} containing {needle:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert!(status.message().contains(needle), "message {:?} lacks {needle:?}", status.message());
        }
    }
}
