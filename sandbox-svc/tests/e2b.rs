//! The `e2b` provider and template builder against `fake_e2b` (an in-process E2B that runs
//! commands as local processes), through the real broker and gRPC where a user would notice,
//! asserting what the client sent. `real_e2b_*` runs against E2B itself only with
//! `ENABLE_REAL_E2B=1` and `E2B_API_KEY`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use bytes::Bytes;
use fake_e2b::{FAIL_MARKER, FakeE2b, Recorded};
use sandbox_svc::BrokerConfig;
use sandbox_svc::provider::e2b::{ControlPlane, E2bOptions, E2bProvider, IdlePolicy};
use sandbox_svc::provider::{ProcessSpec, ProviderEvent, SandboxProvider, SandboxSpec};
use sandbox_svc::secret::SecretString;
use sandbox_svc::template::builder::{BuildInput, TemplateBuilder};
use sandbox_svc::template::e2b_builder::{E2bBuildOptions, E2bBuilder};
use sandbox_svc::workspace_path::WorkspacePath;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

const TOKEN: &str = "test-token-0123456789abcdef";
/// The fake's `/` is a temporary directory per sandbox; its home exists from the start.
const WORKSPACE: &str = "/home/user";

type Client = SandboxServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer;

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(request)
    }
}

/// A broker with SANDBOX_PROVIDER=e2b pointing at `fake`, served in-process on a runtime of its
/// own, so a crash can end every task it spawned at once, as the death of its process would.
struct Broker {
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    served: oneshot::Receiver<anyhow::Result<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    _data_dir: tempfile::TempDir,
}

impl Broker {
    async fn start(fake: &FakeE2b) -> Broker {
        Broker::start_in(fake, tempfile::tempdir().unwrap()).await
    }

    /// A broker whose data dir (and so its E2B broker id) is `data_dir`.
    async fn start_in(fake: &FakeE2b, data_dir: tempfile::TempDir) -> Broker {
        Broker::start_with(fake, data_dir, |_| {}).await
    }

    async fn start_with(fake: &FakeE2b, data_dir: tempfile::TempDir, adjust: impl FnOnce(&mut BrokerConfig)) -> Broker {
        let mut config = BrokerConfig::for_tests(data_dir.path().join("data"));
        config.auth_token = Some(SecretString::new(TOKEN));
        config.provider = "e2b".into();
        config.e2b_api_key = Some(SecretString::new(fake.api_key()));
        config.e2b.api_url = Some(fake.api_url());
        config.e2b.envd_url = Some(fake.envd_url());
        config.e2b.workspace_dir = WORKSPACE.into();
        adjust(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let (served_tx, mut served) = oneshot::channel();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let result = sandbox_svc::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await;
            let _ = served_tx.send(result);
        });
        // Serving once the templates are built on the fake (the first start builds them).
        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            if let Ok(result) = served.try_recv() {
                panic!("broker stopped during start: {result:?}");
            }
            if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if matches!(health.check(request).await, Ok(r) if r.get_ref().status == 1) {
                    break channel;
                }
            }
            assert!(Instant::now() < deadline, "broker did not start serving");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let client = SandboxServiceClient::with_interceptor(channel, Bearer);
        Broker { client, stop: Some(stop), served, runtime: Some(runtime), _data_dir: data_dir }
    }

    /// Stops the broker without its orderly shutdown (sandboxes are not killed, nothing more is
    /// written), as a crash or a lost node would; returns its data dir for the next run.
    fn crash(mut self) -> tempfile::TempDir {
        self.runtime.take().unwrap().shutdown_background();
        std::mem::replace(&mut self._data_dir, tempfile::tempdir().unwrap())
    }

    /// An orderly stop that hands back the data dir for the next run.
    async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.stop_in_order().await;
        std::mem::replace(&mut self._data_dir, tempfile::tempdir().unwrap())
    }

    async fn stop(mut self) {
        self.stop_in_order().await;
    }

    async fn stop_in_order(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.served).await.unwrap().unwrap().unwrap();
        // What serve left running (nothing should outlive it) ends with the process.
        self.runtime.take().unwrap().shutdown_background();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn create(client: &mut Client) -> Result<pb::Sandbox, tonic::Status> {
    let request = pb::CreateSandboxRequest { template: "worker".into(), ..Default::default() };
    Ok(client.create_sandbox(request).await?.into_inner().sandbox.expect("sandbox"))
}

fn start_request(sandbox_id: &str, script: &str) -> pb::StartProcessRequest {
    pb::StartProcessRequest {
        sandbox_id: sandbox_id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

async fn collect(mut stream: tonic::Streaming<pb::ProcessEvent>) -> Vec<pb::ProcessEvent> {
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

fn text(events: &[pb::ProcessEvent], stderr: bool) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Stdout(data)) if !stderr => Some(data.clone()),
            Some(Event::Stderr(data)) if stderr => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8(bytes).unwrap()
}

fn exit(events: &[pb::ProcessEvent]) -> (i32, i32) {
    events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Exited(exited)) => Some((exited.exit_code, exited.signal)),
            _ => None,
        })
        .expect("an exit event")
}

fn header<'a>(request: &'a Recorded, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

fn requests(fake: &FakeE2b, method: &str, path_prefix: &str) -> Vec<Recorded> {
    fake.requests().into_iter().filter(|r| r.method == method && r.path.starts_with(path_prefix)).collect()
}

/// The JSON message inside a Connect request envelope.
fn envelope_json(body: &[u8]) -> serde_json::Value {
    assert_eq!(body[0], 0, "request envelope flags");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(body.len(), 5 + len, "one envelope");
    serde_json::from_slice(&body[5..]).unwrap()
}

#[tokio::test]
async fn create_start_stream_and_exit_through_the_broker() {
    let fake = FakeE2b::start().await;
    let broker = Broker::start(&fake).await;
    let mut client = broker.client.clone();
    let sandbox = create(&mut client).await.unwrap();
    assert_eq!(sandbox.provider, "e2b");
    let e2b_id = fake.sandbox_ids().pop().expect("one sandbox on the fake");

    // What the broker asked E2B for.
    let created = requests(&fake, "POST", "/sandboxes");
    let created = created.iter().find(|r| r.path == "/sandboxes").expect("POST /sandboxes");
    assert_eq!(header(created, "x-api-key"), Some(fake.api_key().as_str()));
    let body: serde_json::Value = serde_json::from_slice(&created.body).unwrap();
    let template_id = body["templateID"].as_str().unwrap();
    assert!(template_id.starts_with("agentstudio-worker:v-"), "{template_id}");
    assert_eq!(body["secure"], true);
    assert_eq!(body["autoPause"], false);
    assert_eq!(body["timeout"], 600);
    assert_eq!(body["allow_internet_access"], true);
    assert_eq!(body["envVars"]["LANG"], "C.UTF-8");
    assert_eq!(body["metadata"]["agentstudio.broker.sandbox_id"], sandbox.sandbox_id.as_str());
    assert_eq!(body["metadata"]["agentstudio.broker.template"], "worker");
    assert!(body["metadata"]["agentstudio.broker"].as_str().unwrap().starts_with("broker-"));

    let stream = client
        .start_process(start_request(&sandbox.sandbox_id, "echo hello; echo oops >&2; pwd; exit 3"))
        .await
        .unwrap()
        .into_inner();
    let events = collect(stream).await;
    let stdout = text(&events, false);
    assert!(stdout.starts_with("hello\n"), "{stdout:?}");
    assert!(stdout.trim_end().ends_with("/home/user"), "the process runs in the workspace: {stdout:?}");
    assert_eq!(text(&events, true), "oops\n");
    assert_eq!(exit(&events), (3, 0));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1, "contiguous seqs: {events:?}");
    }

    // envd got the sandbox's token and routing headers, and never the API key.
    let start = requests(&fake, "POST", "/process.Process/Start");
    let start = start.last().expect("a Start call");
    assert_eq!(header(start, "e2b-sandbox-id"), Some(e2b_id.as_str()));
    assert_eq!(header(start, "e2b-sandbox-port"), Some("49983"));
    assert_eq!(header(start, "content-type"), Some("application/connect+json"));
    assert_eq!(header(start, "connect-protocol-version"), Some("1"));
    assert!(header(start, "x-access-token").is_some_and(|t| !t.is_empty()));
    assert!(header(start, "connect-timeout-ms").is_none(), "no process deadline by default");
    assert!(
        fake.requests().iter().filter(|r| r.path.starts_with("/process.") || r.path == "/files").all(|r| header(
            r,
            "x-api-key"
        )
        .is_none())
    );
    let message = envelope_json(&start.body);
    assert_eq!(message["process"]["cmd"], "sh");
    assert_eq!(message["process"]["args"][1], "echo hello; echo oops >&2; pwd; exit 3");
    assert_eq!(message["process"]["cwd"], WORKSPACE);
    assert_eq!(message["stdin"], false);
    assert_eq!(message["tag"], "agentstudio:p1", "the broker's process id, so a restarted broker can give it back");

    // stdin goes through SendInput (base64 JSON) and CloseStdin.
    let mut request = start_request(&sandbox.sandbox_id, "cat; echo done");
    request.stdin = true;
    let mut stream = client.start_process(request).await.unwrap().into_inner();
    let Some(Event::Started(_)) = stream.message().await.unwrap().unwrap().event else { panic!("started first") };
    let processes =
        client.list_processes(pb::ListProcessesRequest { sandbox_id: sandbox.sandbox_id.clone() }).await.unwrap();
    let process_id = processes.into_inner().processes.last().unwrap().process_id.clone();
    let input = pb::SendProcessInputRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        process_id: process_id.clone(),
        data: Bytes::from_static(b"abc"),
    };
    client.send_process_input(input).await.unwrap();
    let close = pb::CloseProcessInputRequest { sandbox_id: sandbox.sandbox_id.clone(), process_id };
    client.close_process_input(close).await.unwrap();
    let events = collect(stream).await;
    assert_eq!((text(&events, false).as_str(), exit(&events)), ("abcdone\n", (0, 0)));
    let sent = requests(&fake, "POST", "/process.Process/SendInput");
    let sent: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(sent["input"], serde_json::json!({"stdin": "YWJj"}));
    assert_eq!(
        header(&requests(&fake, "POST", "/process.Process/SendInput")[0], "content-type"),
        Some("application/json")
    );

    // Files go through envd's /files, relative to the workspace.
    let write = pb::WriteFileRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        path: "dir/a.txt".into(),
        content: Bytes::from_static(b"content"),
    };
    client.write_file(write).await.unwrap();
    let read = pb::ReadFileRequest { sandbox_id: sandbox.sandbox_id.clone(), path: "dir/a.txt".into() };
    assert_eq!(&client.read_file(read).await.unwrap().into_inner().content[..], b"content");
    let missing = pb::ReadFileRequest { sandbox_id: sandbox.sandbox_id.clone(), path: "nope".into() };
    let err = client.read_file(missing).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // In the API's terms, relative to the workspace, not envd's path inside the sandbox.
    assert!(err.message().contains("nope") && !err.message().contains(WORKSPACE), "{}", err.message());
    let mut in_missing_dir = start_request(&sandbox.sandbox_id, "true");
    in_missing_dir.cwd = "no/such/dir".into();
    let err = client.start_process(in_missing_dir).await.unwrap_err();
    assert!(err.message().contains("no/such/dir") && !err.message().contains(WORKSPACE), "{}", err.message());
    let files: Vec<Recorded> = requests(&fake, "POST", "/files").into_iter().filter(|r| r.path == "/files").collect();
    assert!(
        files[0].query.contains("path=%2Fhome%2Fuser%2Fdir%2Fa.txt"),
        "{:?}",
        files.iter().map(|r| (&r.path, &r.query)).collect::<Vec<_>>()
    );

    client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: sandbox.sandbox_id.clone() }).await.unwrap();
    assert_eq!(requests(&fake, "DELETE", &format!("/sandboxes/{e2b_id}")).len(), 1);
    assert!(fake.sandbox_ids().is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn rate_limits_are_retried_only_where_idempotent_and_concurrency_is_resource_exhausted() {
    let fake = FakeE2b::start().await;
    let broker = Broker::start(&fake).await;
    let mut client = broker.client.clone();
    let rate_limited = r#"{"code":429,"message":"Rate limit exceeded"}"#.to_owned();
    let retry_after = vec![("Retry-After".to_owned(), "1".to_owned())];

    // A create is not idempotent: one attempt, UNAVAILABLE naming the rate limit.
    fake.fail_next("POST", "/sandboxes", 429, retry_after.clone(), rate_limited.clone());
    let before = requests(&fake, "POST", "/sandboxes").len();
    let status = create(&mut client).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("Rate limit exceeded"), "{status:?}");
    assert!(!status.message().contains(&fake.api_key()));
    assert_eq!(requests(&fake, "POST", "/sandboxes").len(), before + 1);

    // A kill is: retried after Retry-After, and it succeeds.
    let sandbox = create(&mut client).await.unwrap();
    let e2b_id = fake.sandbox_ids().pop().unwrap();
    fake.fail_next("DELETE", "/sandboxes/", 429, retry_after, rate_limited);
    let started = Instant::now();
    client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: sandbox.sandbox_id.clone() }).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());
    assert_eq!(requests(&fake, "DELETE", &format!("/sandboxes/{e2b_id}")).len(), 2);
    assert!(fake.sandbox_ids().is_empty());

    // The team's concurrency limit is a limit: RESOURCE_EXHAUSTED, and the slot is given back.
    fake.set_concurrency_limit(1);
    let first = create(&mut client).await.unwrap();
    let status = create(&mut client).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("maximum number of concurrent E2B sandboxes (1)"), "{status:?}");
    client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: first.sandbox_id }).await.unwrap();
    create(&mut client).await.unwrap();

    // A placement failure is UNAVAILABLE with E2B's reason.
    fake.fail_next(
        "POST",
        "/sandboxes",
        500,
        Vec::new(),
        r#"{"code":500,"message":"Failed to place sandbox","error_code":"sandbox_placement_timeout"}"#.into(),
    );
    let status = create(&mut client).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("Failed to place sandbox (sandbox_placement_timeout)"), "{status:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_cut_stream_is_reattached_without_duplicates_and_the_gap_is_reported() {
    let fake = FakeE2b::start().await;
    let broker = Broker::start(&fake).await;
    let mut client = broker.client.clone();
    let sandbox = create(&mut client).await.unwrap();
    fake.cut_process_streams_after(3);
    let script = "i=1; while [ $i -le 40 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done";
    let stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    let events = collect(stream).await;
    assert_eq!(exit(&events), (0, 0));
    let numbers: Vec<u32> =
        text(&events, false).lines().map(|line| line.strip_prefix("line-").unwrap().parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "no duplicate, no reordering: {numbers:?}");
    assert!(numbers.starts_with(&[1, 2, 3]) && numbers.last() == Some(&40), "{numbers:?}");
    let stderr = text(&events, true);
    assert!(stderr.contains("output lost here") && stderr.contains("reattached"), "the gap is explained: {stderr:?}");
    // A `truncated` event sits where the gap is (after the frames sent before the cut), pointing
    // at the next seq: readers are told, never silently short.
    let gap_at = events.iter().position(|e| matches!(&e.event, Some(Event::Truncated(_)))).expect("a truncated gap");
    let Some(Event::Truncated(gap)) = &events[gap_at].event else { unreachable!() };
    assert_eq!(gap.first_available_seq, events[gap_at].seq + 1);
    let before = text(&events[..gap_at], false);
    assert!(before.starts_with("line-1\nline-2\nline-3\n") && !before.contains("line-40"), "{before:?}");
    let connect = requests(&fake, "POST", "/process.Process/Connect");
    let pid = events.iter().find_map(|e| match &e.event {
        Some(Event::Started(started)) => Some(started.pid),
        _ => None,
    });
    assert_eq!(envelope_json(&connect[0].body)["process"]["pid"], pid.unwrap());
    broker.stop().await;
}

#[tokio::test]
async fn killing_a_process_ends_its_whole_tree() {
    let fake = FakeE2b::start().await;
    let broker = Broker::start(&fake).await;
    let mut client = broker.client.clone();
    let sandbox = create(&mut client).await.unwrap();
    // The markers are spelled out only in the children's command lines, not the script's.
    let script = "s=sleep; n=777; $s ${n}1 & ($s ${n}2 & wait) & echo started; wait";
    let mut stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    let mut events = Vec::new();
    while !text(&events, false).contains("started") {
        events.push(stream.message().await.unwrap().expect("started before the end"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_with("sleep 777").len() < 2 {
        assert!(Instant::now() < deadline, "children did not start: {:?}", pids_with("sleep 777"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let processes =
        client.list_processes(pb::ListProcessesRequest { sandbox_id: sandbox.sandbox_id.clone() }).await.unwrap();
    let process_id = processes.into_inner().processes[0].process_id.clone();
    let signal = pb::SignalProcessRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        process_id,
        signal: pb::Signal::Sigkill as i32,
    };
    client.signal_process(signal).await.unwrap();
    // envd's SendSignal reaches the leader only: the tree is signalled from inside the sandbox.
    assert!(requests(&fake, "POST", "/process.Process/SendSignal").is_empty());
    let helper = requests(&fake, "POST", "/process.Process/Start").pop().unwrap();
    assert_eq!(envelope_json(&helper.body)["process"]["args"][3], "KILL");
    events.extend(collect(stream).await);
    assert_eq!(exit(&events), (-1, libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_with("sleep 777").is_empty() {
        assert!(Instant::now() < deadline, "children survived: {:?}", pids_with("sleep 777"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop().await;
}

/// Host pids whose command line contains `marker` (the fake runs processes on this host).
fn pids_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(marker)
        })
        .collect()
}

fn options(fake: &FakeE2b, broker_id: &str) -> E2bOptions {
    E2bOptions {
        api_url: fake.api_url(),
        domain: "e2b.app".into(),
        envd_url: Some(fake.envd_url()),
        api_key: SecretString::new(fake.api_key()),
        request_timeout: Duration::from_secs(10),
        process_deadline: None,
        idle_timeout: Duration::from_secs(600),
        idle_policy: IdlePolicy::default(),
        max_lifetime: Duration::from_secs(3600),
        template_prefix: "agentstudio-".into(),
        workspace_dir: WORKSPACE.into(),
        broker_id: broker_id.into(),
    }
}

fn builder(control: Arc<ControlPlane>) -> E2bBuilder {
    let options = E2bBuildOptions {
        template_prefix: "agentstudio-".into(),
        cpu_count: 2,
        memory_mb: 1024,
        build_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(20),
    };
    E2bBuilder::new(control, options)
}

const VERSION: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Builds template `name` at [`VERSION`] on the fake; returns the result and the log lines.
async fn build(
    control: Arc<ControlPlane>,
    name: &str,
    files: &[(String, Vec<u8>)],
) -> (Result<String, String>, Vec<String>) {
    let (log, mut lines) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(line) = lines.recv().await {
            all.push(line);
        }
        all
    });
    let input = BuildInput { template: name, version_id: VERSION, git_sha: "0123abc", files };
    let result = builder(control).build(input, &log).await.map_err(|e| e.0);
    drop(log);
    (result, collector.await.unwrap())
}

fn spec(name: &str) -> SandboxSpec {
    let manifest =
        format!("name = \"{name}\"\nruntime = \"shell\"\ndefault_timeout = \"10m\"\nsmoke_test = \"true\"\n");
    let files = vec![("template.toml".to_owned(), manifest.into_bytes())];
    let mut template = sandbox_svc::template::template_from_files(name, &files).unwrap();
    template.version = VERSION.into();
    SandboxSpec {
        sandbox_id: format!("sbx-{name}"),
        template,
        env: BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]),
        metadata: BTreeMap::from([("agentstudio.worker_id".to_owned(), "w1".to_owned())]),
    }
}

fn process(script: &str) -> ProcessSpec {
    ProcessSpec { argv: vec!["sh".into(), "-c".into(), script.into()], cwd: None, env: BTreeMap::new(), stdin: false }
}

async fn next_event(events: &mut mpsc::Receiver<ProviderEvent>) -> ProviderEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an event within 20s")
        .expect("not closed")
}

#[tokio::test]
async fn template_builds_upload_files_stream_logs_and_move_tags() {
    let fake = FakeE2b::start().await;
    let provider = E2bProvider::new(options(&fake, "b1")).unwrap();
    let files = vec![
        (
            "Dockerfile".to_owned(),
            b"FROM python:3.12\nARG V=1\nCOPY --chmod=755 setup.sh /opt/\nRUN /opt/setup.sh $V\nWORKDIR /work\n"
                .to_vec(),
        ),
        ("setup.sh".to_owned(), b"#!/bin/sh\necho setup\n".to_vec()),
        ("template.toml".to_owned(), b"name = \"demo\"".to_vec()),
    ];
    let (result, log) = build(provider.control_plane(), "demo", &files).await;
    assert_eq!(result.as_deref(), Ok("agentstudio-demo:v-0011223344556677"), "{log:#?}");
    assert!(log.iter().any(|l| l.starts_with("[info]") && l.contains("Template build finished")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("uploaded 1 file(s) for COPY setup.sh")), "{log:#?}");

    let requested = requests(&fake, "POST", "/v3/templates");
    let requested: serde_json::Value = serde_json::from_slice(&requested[0].body).unwrap();
    assert_eq!(
        requested,
        serde_json::json!({"name": "agentstudio-demo:v-0011223344556677", "cpuCount": 2, "memoryMB": 1024})
    );
    let upload = requests(&fake, "PUT", "/_upload/");
    assert_eq!(upload.len(), 1);
    assert!(header(&upload[0], "x-api-key").is_none(), "the key never goes to an upload URL");
    assert_eq!(&upload[0].body[..2], &[0x1f, 0x8b], "a gzip body");
    let started = requests(&fake, "POST", "/v2/templates/");
    let start: serde_json::Value = serde_json::from_slice(&started[0].body).unwrap();
    assert_eq!(start["fromImage"], "python:3.12");
    let steps = start["steps"].as_array().unwrap();
    let copy = steps.iter().find(|s| s["type"] == "COPY").unwrap();
    assert_eq!(copy["args"], serde_json::json!(["setup.sh", "/opt/", "", "0755"]));
    assert_eq!(copy["filesHash"].as_str().unwrap().len(), 64);
    let run = steps.iter().find(|s| s["type"] == "RUN").unwrap();
    assert_eq!(run["args"][0], "export V=1\n/opt/setup.sh $V");
    let polls = requests(&fake, "GET", "/templates/");
    assert!(
        polls.iter().any(|r| r.path.ends_with("/status")
            && r.query.contains("logsOffset=")
            && !r.query.contains("logsOffset=0"))
    );

    // The same files again: E2B has them, nothing is uploaded.
    let (result, log) = build(provider.control_plane(), "demo", &files).await;
    assert!(result.is_ok(), "{log:#?}");
    assert_eq!(requests(&fake, "PUT", "/_upload/").len(), 1);
    assert!(log.iter().any(|l| l.contains("already uploaded")));

    // Sandboxes start from the tagged build; promotion moves `default` to it.
    let sandbox = provider.create(spec("demo")).await.unwrap();
    sandbox.kill().await.unwrap();
    builder(provider.control_plane()).promote("demo", VERSION).await.unwrap();
    let tags = requests(&fake, "POST", "/templates/tags");
    let tags: serde_json::Value = serde_json::from_slice(&tags[0].body).unwrap();
    assert_eq!(tags, serde_json::json!({"target": "agentstudio-demo:v-0011223344556677", "tags": ["default"]}));

    // A failing step fails the build with E2B's reason and the log lines that led to it.
    let failing = vec![("Dockerfile".to_owned(), format!("FROM alpine\nRUN echo {FAIL_MARKER}\n").into_bytes())];
    let (result, log) = build(provider.control_plane(), "broken", &failing).await;
    let error = result.unwrap_err();
    assert!(error.contains(&format!("command 'echo {FAIL_MARKER}' failed")), "{error}");
    assert!(error.contains("at step"), "{error}");
    assert!(log.iter().any(|l| l.starts_with("[error]")), "{log:#?}");
    // A Dockerfile E2B cannot build as written fails before anything is sent.
    let multi = vec![("Dockerfile".to_owned(), b"FROM a AS x\nFROM b\n".to_vec())];
    let (result, _) = build(provider.control_plane(), "multi", &multi).await;
    assert!(result.unwrap_err().contains("multi/Dockerfile line 2: multi-stage"));
}

#[tokio::test]
async fn a_restarted_broker_readopts_its_sandboxes_and_reports_the_gap() {
    let fake = FakeE2b::start().await;
    let first = E2bProvider::new(options(&fake, "broker-a")).unwrap();
    let (built, log) =
        build(first.control_plane(), "worker", &[("Dockerfile".into(), b"FROM alpine\n".to_vec())]).await;
    assert!(built.is_ok(), "{log:#?}");
    let sandbox = first.create(spec("worker")).await.unwrap();
    let script = "i=0; while [ $i -lt 60 ]; do echo tick-$i; i=$((i+1)); sleep 0.05; done; exit 4";
    let mut started = sandbox.start_named_process("p1", process(script)).await.unwrap();
    assert!(matches!(next_event(&mut started.events).await, ProviderEvent::Stdout(_)));
    // Another broker's sandbox must not be taken over.
    let other = E2bProvider::new(options(&fake, "broker-b")).unwrap();
    let _foreign = other.create(SandboxSpec { sandbox_id: "sbx-foreign".into(), ..spec("worker") }).await.unwrap();

    // The broker goes away without killing anything.
    drop(started);
    drop(sandbox);
    drop(first);

    let second = E2bProvider::new(options(&fake, "broker-a")).unwrap();
    let mut adopted = second.adopt().await.unwrap();
    assert_eq!(adopted.len(), 1);
    let sandbox = adopted.pop().unwrap();
    assert_eq!((sandbox.sandbox_id.as_str(), sandbox.template.as_str()), ("sbx-worker", "worker"));
    assert_eq!(sandbox.template_version, VERSION);
    assert_eq!(sandbox.metadata, BTreeMap::from([("agentstudio.worker_id".to_owned(), "w1".to_owned())]));
    assert_eq!(sandbox.processes.len(), 1);
    let mut process = sandbox.processes.into_iter().next().unwrap();
    assert_eq!(process.process_id.as_deref(), Some("p1"));
    assert_eq!(process.argv, vec!["sh", "-c", script]);
    let ProviderEvent::Gap(notice) = next_event(&mut process.started.events).await else { panic!("a gap first") };
    assert!(notice.contains("the broker restarted"), "{notice:?}");
    let mut ticks = Vec::new();
    loop {
        match next_event(&mut process.started.events).await {
            ProviderEvent::Stdout(data) => ticks.extend(String::from_utf8_lossy(&data).lines().map(str::to_owned)),
            ProviderEvent::Stderr(data) => panic!("unexpected stderr {data:?}"),
            ProviderEvent::Gap(reason) => panic!("unexpected gap {reason}"),
            ProviderEvent::Exited { exit_code, signal } => {
                assert_eq!((exit_code, signal), (4, 0));
                break;
            }
        }
    }
    assert_eq!(ticks.last().map(String::as_str), Some("tick-59"), "{ticks:?}");
    // The adopted handle works like a fresh one.
    let path = WorkspacePath::parse("after-restart.txt").unwrap();
    sandbox.handle.write_file(&path, Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(&sandbox.handle.read_file(&path, 10).await.unwrap()[..], b"x");
    sandbox.handle.kill().await.unwrap();
    assert_eq!(fake.sandbox_ids().len(), 1, "only the foreign sandbox is left");
}

#[tokio::test]
async fn the_process_deadline_is_envds_and_separate_from_the_request_timeout() {
    let fake = FakeE2b::start().await;
    let mut options = options(&fake, "b1");
    options.process_deadline = Some(Duration::from_millis(500));
    let provider = E2bProvider::new(options).unwrap();
    let (built, _) =
        build(provider.control_plane(), "worker", &[("Dockerfile".into(), b"FROM alpine\n".to_vec())]).await;
    built.unwrap();
    let sandbox = provider.create(spec("worker")).await.unwrap();
    let mut started = sandbox.start_process(process("sleep 30")).await.unwrap();
    let ProviderEvent::Stderr(notice) = next_event(&mut started.events).await else { panic!("a notice") };
    assert!(String::from_utf8_lossy(&notice).contains("SANDBOX_E2B_PROCESS_DEADLINE"), "{notice:?}");
    assert_eq!(next_event(&mut started.events).await, ProviderEvent::Exited { exit_code: -1, signal: libc::SIGKILL });
    let start = requests(&fake, "POST", "/process.Process/Start");
    assert_eq!(header(start.last().unwrap(), "connect-timeout-ms"), Some("500"));
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn the_idle_policy_keeps_a_busy_sandbox_and_ends_an_idle_one() {
    let fake = FakeE2b::start().await;
    let mut options = options(&fake, "b1");
    options.idle_timeout = Duration::from_secs(2);
    let provider = E2bProvider::new(options).unwrap();
    let (built, _) =
        build(provider.control_plane(), "worker", &[("Dockerfile".into(), b"FROM alpine\n".to_vec())]).await;
    built.unwrap();
    let sandbox = provider.create(spec("worker")).await.unwrap();
    // Output for twice the idle timeout keeps it alive…
    let mut started = sandbox
        .start_process(process("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo $i; sleep 0.3; done"))
        .await
        .unwrap();
    let mut last = String::new();
    loop {
        match next_event(&mut started.events).await {
            ProviderEvent::Stdout(data) => last = String::from_utf8_lossy(&data).trim().to_owned(),
            ProviderEvent::Stderr(data) => panic!("unexpected {data:?}"),
            ProviderEvent::Gap(reason) => panic!("unexpected gap {reason}"),
            ProviderEvent::Exited { exit_code, signal } => {
                assert_eq!((exit_code, signal, last.as_str()), (0, 0, "12"));
                break;
            }
        }
    }
    let extensions: Vec<Recorded> =
        requests(&fake, "POST", "/sandboxes/").into_iter().filter(|r| r.path.ends_with("/timeout")).collect();
    assert!(extensions.len() >= 2, "output extended E2B's timeout: {}", extensions.len());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&extensions[0].body).unwrap(),
        serde_json::json!({"timeout": 2})
    );
    // …and once idle, E2B kills it and the broker is told why.
    let reason = tokio::time::timeout(Duration::from_secs(20), sandbox.lost()).await.expect("ends when idle");
    assert!(reason.contains("idle policy `kill`"), "{reason}");
    assert!(fake.sandbox_ids().is_empty());
}

#[tokio::test]
async fn the_pause_policy_pauses_an_idle_sandbox_and_the_next_use_resumes_it() {
    let fake = FakeE2b::start().await;
    let mut options = options(&fake, "b1");
    options.idle_timeout = Duration::from_secs(1);
    options.idle_policy = "worker=pause".parse().unwrap();
    let provider = E2bProvider::new(options).unwrap();
    let (built, _) =
        build(provider.control_plane(), "worker", &[("Dockerfile".into(), b"FROM alpine\n".to_vec())]).await;
    built.unwrap();
    let sandbox = provider.create(spec("worker")).await.unwrap();
    let created = requests(&fake, "POST", "/sandboxes");
    let created: serde_json::Value = serde_json::from_slice(&created.last().unwrap().body).unwrap();
    assert_eq!((created["autoPause"].as_bool(), created["timeout"].as_u64()), (Some(true), Some(1)));
    let path = WorkspacePath::parse("kept.txt").unwrap();
    sandbox.write_file(&path, Bytes::from_static(b"state")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fake.sandbox_ids().is_empty() {
        assert!(Instant::now() < deadline, "not paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paused, not killed: the next call resumes it and finds its files.
    assert_eq!(&sandbox.read_file(&path, 100).await.unwrap()[..], b"state");
    assert_eq!(fake.sandbox_ids().len(), 1);
    assert!(requests(&fake, "POST", "/sandboxes/").iter().any(|r| r.path.ends_with("/connect")));
    sandbox.kill().await.unwrap();
}

/// Against E2B itself: `ENABLE_REAL_E2B=1 E2B_API_KEY=e2b_… cargo test -p sandbox-svc --test e2b real_e2b`.
/// Uses E2B's public `base` template; costs a few seconds of sandbox time.
#[tokio::test]
async fn real_e2b_runs_a_process_and_moves_files() {
    let (Ok("1"), Ok(key)) = (std::env::var("ENABLE_REAL_E2B").as_deref(), std::env::var("E2B_API_KEY")) else {
        eprintln!("skipped: set ENABLE_REAL_E2B=1 and E2B_API_KEY to run against E2B");
        return;
    };
    let domain = std::env::var("E2B_DOMAIN").unwrap_or_else(|_| "e2b.app".into());
    let options = E2bOptions {
        api_url: E2bOptions::api_url_for(std::env::var("E2B_API_URL").ok().as_deref(), &domain),
        domain,
        envd_url: None,
        api_key: SecretString::new(key),
        request_timeout: Duration::from_secs(60),
        process_deadline: None,
        idle_timeout: Duration::from_secs(120),
        idle_policy: IdlePolicy::default(),
        max_lifetime: Duration::from_secs(300),
        template_prefix: String::new(),
        workspace_dir: WORKSPACE.into(),
        broker_id: format!("agentstudio-test-{}", std::process::id()),
    };
    let provider = E2bProvider::new(options).unwrap();
    let mut spec = spec("base");
    spec.template.version = String::new();
    let sandbox = provider.create(spec).await.unwrap();
    let result = async {
        let path = WorkspacePath::parse("agentstudio/hello.txt").unwrap();
        sandbox.write_file(&path, Bytes::from_static(b"from the broker")).await?;
        assert_eq!(&sandbox.read_file(&path, 1024).await?[..], b"from the broker");
        let mut started =
            sandbox.start_process(process("cat agentstudio/hello.txt; echo \" $GREETING\"; exit 3")).await?;
        let mut stdout = Vec::new();
        loop {
            match next_event(&mut started.events).await {
                ProviderEvent::Stdout(data) => stdout.extend_from_slice(&data),
                ProviderEvent::Stderr(_) | ProviderEvent::Gap(_) => {}
                ProviderEvent::Exited { exit_code, .. } => {
                    assert_eq!(exit_code, 3);
                    break;
                }
            }
        }
        assert_eq!(String::from_utf8_lossy(&stdout), "from the broker hi\n");
        Ok::<(), sandbox_svc::provider::ProviderError>(())
    }
    .await;
    sandbox.kill().await.unwrap();
    result.unwrap();
}

#[tokio::test]
async fn a_restarted_broker_tracks_its_sandboxes_again_with_the_gap_reported() {
    let fake = FakeE2b::start().await;
    let broker = Broker::start(&fake).await;
    let mut client = broker.client.clone();
    let sandbox = create(&mut client).await.unwrap();
    let script = "i=1; while [ $i -le 60 ]; do echo tick-$i; i=$((i+1)); sleep 0.05; done; exit 4";
    let mut stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    // Seen live before the crash: the start and a few ticks.
    let mut seen_before = Vec::new();
    while seen_before.iter().filter(|e: &&pb::ProcessEvent| matches!(e.event, Some(Event::Stdout(_)))).count() < 3 {
        seen_before.push(stream.message().await.unwrap().unwrap());
    }
    drop(stream);
    let data_dir = broker.crash();
    let broker = Broker::start_in(&fake, data_dir).await;
    let mut client = broker.client.clone();
    let again = client
        .get_sandbox(pb::GetSandboxRequest { sandbox_id: sandbox.sandbox_id.clone() })
        .await
        .expect("the sandbox is tracked again under its id")
        .into_inner()
        .sandbox
        .unwrap();
    assert_eq!(
        (again.state, again.template_version.as_str()),
        (pb::SandboxState::Running as i32, sandbox.template_version.as_str())
    );
    let attach = |after_seq| pb::AttachProcessRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        process_id: "p1".into(),
        after_seq,
    };
    let events = collect(client.attach_process(attach(0)).await.unwrap().into_inner()).await;
    // Output is durable by offset across the restart: the same events under the same seqs.
    assert_eq!(events[..seen_before.len()], seen_before[..], "what was seen before the crash, unchanged");
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1), "seqs run on: {events:?}");
    let gaps: Vec<&pb::ProcessEvent> = events.iter().filter(|e| matches!(e.event, Some(Event::Truncated(_)))).collect();
    assert_eq!(gaps.len(), 1, "what ran while no broker watched is one reported gap: {events:?}");
    assert!(gaps[0].seq > seen_before.last().unwrap().seq, "the gap comes after what was spooled before");
    let ticks: Vec<u32> =
        text(&events, false).lines().map(|l| l.strip_prefix("tick-").unwrap().parse().unwrap()).collect();
    assert!(ticks.starts_with(&[1, 2, 3]) && ticks.last() == Some(&60), "{ticks:?}");
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    assert_eq!(exit(&events), (4, 0));
    // A client that had read up to seq N before the crash resumes after N and misses nothing.
    let last_seen = seen_before.last().unwrap().seq;
    let resumed = collect(client.attach_process(attach(last_seen)).await.unwrap().into_inner()).await;
    assert_eq!(resumed[..], events[seen_before.len()..]);
    // New processes continue the numbering.
    let next =
        collect(client.start_process(start_request(&sandbox.sandbox_id, "echo after")).await.unwrap().into_inner())
            .await;
    assert_eq!(next[0].process_id, "p2");
    broker.stop().await;
}

#[tokio::test]
async fn an_infrastructure_sandbox_on_e2b_gets_a_checkout_and_proposes_a_change() {
    let fake = FakeE2b::start().await;
    let broker = Broker::start(&fake).await;
    let mut client = broker.client.clone();
    let request = pb::CreateSandboxRequest { template: "infrastructure".into(), ..Default::default() };
    let sandbox = client.create_sandbox(request).await.unwrap().into_inner().sandbox.unwrap();
    assert!(!sandbox.checkout_sha.is_empty(), "checked out");
    // The checkout arrived through envd's /files; the edit is an ordinary process.
    let edit = "sed -i 's/^USER user/RUN npm install -g playwright\\nUSER user/' worker/Dockerfile && ln -s /etc/passwd worker/passwd";
    let events =
        collect(client.start_process(start_request(&sandbox.sandbox_id, edit)).await.unwrap().into_inner()).await;
    assert_eq!(exit(&events), (0, 0), "{}", text(&events, true));
    let propose = |title: &str| pb::ProposeChangeRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        title: title.into(),
        body: String::new(),
        pull_request_number: 0,
    };
    let err = client.propose_change(propose("With a symlink")).await.unwrap_err();
    assert!(err.message().contains("worker/passwd") && err.message().contains("escapes"), "{}", err.message());
    let events = collect(
        client.start_process(start_request(&sandbox.sandbox_id, "rm worker/passwd")).await.unwrap().into_inner(),
    )
    .await;
    assert_eq!(exit(&events), (0, 0));
    let pr = client.propose_change(propose("Install Playwright")).await.unwrap().into_inner().pull_request.unwrap();
    assert!(pr.diff.contains("+RUN npm install -g playwright"), "{}", pr.diff);
    assert_eq!(pr.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["worker/Dockerfile"]);
    broker.stop().await;
}

#[tokio::test]
async fn an_orderly_restart_can_leave_sandboxes_for_the_next_run() {
    let fake = FakeE2b::start().await;
    let keep = |config: &mut BrokerConfig| config.keep_sandboxes_on_shutdown = true;
    let broker = Broker::start_with(&fake, tempfile::tempdir().unwrap(), keep).await;
    let mut client = broker.client.clone();
    let sandbox = create(&mut client).await.unwrap();
    let script = "echo before-stop; sleep 1; echo still-here; exit 5";
    let mut stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    let mut seen_before = Vec::new();
    while text(&seen_before, false).is_empty() {
        seen_before.push(stream.message().await.unwrap().unwrap());
    }
    drop(stream);
    // A process of that sandbox that has already ended.
    let done =
        collect(client.start_process(start_request(&sandbox.sandbox_id, "echo done")).await.unwrap().into_inner())
            .await;
    assert_eq!(done[0].process_id, "p2");
    let data_dir = broker.stop_keeping_data().await;
    assert_eq!(fake.sandbox_ids().len(), 1, "the sandbox outlived the orderly stop");
    // Spools of sandboxes that are gone are the old run's garbage.
    let stray = data_dir.path().join("data/spool/sbx-gone/p1");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("000000.seg"), b"old").unwrap();
    let broker = Broker::start_with(&fake, data_dir, keep).await;
    assert!(!stray.parent().unwrap().exists(), "a gone sandbox's spools are deleted at start");
    let mut client = broker.client.clone();
    let attach =
        pb::AttachProcessRequest { sandbox_id: sandbox.sandbox_id.clone(), process_id: "p1".into(), after_seq: 0 };
    let events = collect(client.attach_process(attach).await.unwrap().into_inner()).await;
    assert_eq!(events[..seen_before.len()], seen_before[..], "the same events under the same seqs");
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1), "seqs run on: {events:?}");
    assert_eq!(exit(&events), (5, 0));
    assert!(text(&events, false).contains("still-here"), "{events:?}");
    // A process that ended before the stop (envd still lists it for a while) replays as it was.
    let attach =
        pb::AttachProcessRequest { sandbox_id: sandbox.sandbox_id.clone(), process_id: "p2".into(), after_seq: 0 };
    assert_eq!(collect(client.attach_process(attach).await.unwrap().into_inner()).await, done);
    let next =
        collect(client.start_process(start_request(&sandbox.sandbox_id, "echo next")).await.unwrap().into_inner())
            .await;
    assert_eq!(next[0].process_id, "p3");
    assert_eq!(text(&next, false), "next\n");
    broker.stop().await;
}
