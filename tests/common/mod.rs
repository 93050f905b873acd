//! Test harness: a broker served in-process on an ephemeral loopback port, and a client for it.
//!
//! The broker runs the provider of the test binary including this module ([`PROVIDER`]):
//! `local` (bubblewrap) by default, `e2b` against an in-process [`FakeE2b`] for binaries whose
//! target name ends in `_e2b` (`tests/broker_e2b`, which runs `tests/broker`'s modules again).
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use fake_e2b::{FakeE2b, FakeOptions};
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

/// A sandbox provider the broker can be tested with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// bubblewrap on this host.
    Local,
    /// E2B, played by an in-process [`FakeE2b`] (which runs commands as host processes).
    E2b,
}

impl Provider {
    /// `SANDBOX_PROVIDER`'s value, also what `Sandbox.provider` and the builder report.
    pub const fn name(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::E2b => "e2b",
        }
    }

    /// The provider a test binary (crate) named `crate_name` runs: `e2b` for `*_e2b`.
    pub const fn of_test_binary(crate_name: &str) -> Provider {
        let (name, suffix) = (crate_name.as_bytes(), b"_e2b");
        if name.len() < suffix.len() {
            return Provider::Local;
        }
        let mut i = 0;
        while i < suffix.len() {
            if name[name.len() - suffix.len() + i] != suffix[i] {
                return Provider::Local;
            }
            i += 1;
        }
        Provider::E2b
    }
}

/// The provider under test in this binary, from its crate (target) name: binaries share the
/// test modules, so the crate is what tells them apart.
pub const PROVIDER: Provider = Provider::of_test_binary(env!("CARGO_CRATE_NAME"));

/// Where the fake E2B's sandboxes keep the workspace: its `/` is a temporary directory per
/// sandbox whose home exists from the start.
pub const E2B_WORKSPACE: &str = "/home/user";

/// Whether a test (or its rest) that only holds for `local` should go on: false, saying why,
/// for other providers.
pub fn local_only(why: &str) -> bool {
    if PROVIDER == Provider::Local {
        return true;
    }
    eprintln!("skipped with provider {}: local only: {why}", PROVIDER.name());
    false
}

pub struct TestBroker {
    pub address: std::net::SocketAddr,
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The E2B the broker talks to when [`PROVIDER`] is `E2b`; lives as long as the broker.
    pub fake_e2b: Option<FakeE2b>,
}

impl TestBroker {
    /// A broker for [`PROVIDER`] with default limits, the test token and `adjust` applied to
    /// its config. For `E2b` a fresh fake E2B is started after `adjust`, accepting the E2B key
    /// `adjust` set (if any), and the broker is pointed at it.
    pub async fn start(adjust: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let data_dir = tempfile::tempdir().expect("tempdir");
        // Traversable, so a broker running as root keeps workspaces in its data dir (tests look there).
        std::fs::set_permissions(data_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut config = BrokerConfig::for_tests(data_dir.path().join("data"));
        config.auth_token = Some(SecretString::new(TOKEN));
        config.provider = PROVIDER.name().into();
        if PROVIDER == Provider::E2b {
            config.e2b.workspace_dir = E2B_WORKSPACE.into();
        }
        adjust(&mut config);
        let fake_e2b = match PROVIDER {
            Provider::Local => None,
            Provider::E2b => Some(point_at_a_fake_e2b(&mut config).await),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, is_ready) = oneshot::channel::<()>();
        let mut task = tokio::spawn(sandbox_svc::serve_with_ready(
            config,
            listener,
            async {
                let _ = stopped.await;
            },
            move |_| {
                let _ = ready.send(());
            },
        ));
        // The first start of an `e2b` broker builds every template on the fake first.
        tokio::select! {
            Ok(()) = is_ready => {}
            result = &mut task => panic!("broker stopped while starting: {result:?}"),
            () = tokio::time::sleep(Duration::from_secs(60)) => panic!("broker not ready within 60s"),
        }
        let broker = TestBroker { address, data_dir, stop: Some(stop), task, fake_e2b };
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

    /// The fake E2B behind an `e2b` broker.
    pub fn fake_e2b(&self) -> &FakeE2b {
        self.fake_e2b.as_ref().expect("an e2b broker has a fake E2B")
    }
}

/// Starts a fake E2B accepting `config`'s E2B key (a fresh one if none is set) and points the
/// broker's control-plane and envd URLs at it, unless `config` names others already.
async fn point_at_a_fake_e2b(config: &mut BrokerConfig) -> FakeE2b {
    let mut options = FakeOptions::default();
    if let Some(key) = &config.e2b_api_key {
        options.api_key = key.expose().to_owned();
    }
    let fake = FakeE2b::start_with(options).await;
    config.e2b_api_key = Some(SecretString::new(fake.api_key()));
    config.e2b.api_url.get_or_insert_with(|| fake.api_url());
    config.e2b.envd_url.get_or_insert_with(|| fake.envd_url());
    fake
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

/// A human approval of `head` as the conductor would send it: valid for an hour.
pub fn approval(head: &str, id: &str) -> pb::Approval {
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    pb::Approval {
        approval_id: id.into(),
        approver: "alice".into(),
        head_sha: head.into(),
        report_digest: "sha256:test".into(),
        approved_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        expires_at: Some(prost_types::Timestamp::from(in_an_hour)),
        override_reason: String::new(),
    }
}

/// Runs BuildTemplate to its end: the log lines and the version it produced.
pub async fn build_template(
    client: &mut Client,
    template: &str,
    git_sha: &str,
    pr_number: u64,
) -> (Vec<String>, pb::TemplateVersion) {
    let request = pb::BuildTemplateRequest { template: template.into(), git_sha: git_sha.into(), pr_number };
    let mut stream = client.build_template(request).await.unwrap().into_inner();
    let mut log = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            pb::build_template_event::Event::Log(line) => log.push(line),
            pb::build_template_event::Event::Version(version) => return (log, *version),
        }
    }
    panic!("build ended without a version: {log:?}");
}
