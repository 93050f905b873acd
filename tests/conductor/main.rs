//! Stu end to end: a real broker with `local` sandboxes and a real conductor, both in-process,
//! talking gRPC; LLMs are in-process fakes speaking the real wire formats.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../conductor-svc/tests/support/fake_anthropic.rs"]
mod fake_anthropic;
#[path = "../../conductor-svc/tests/support/postgres.rs"]
mod postgres;

mod brains;
mod orchestration;
mod persistence;
mod self_improvement;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::conductor::v1::conductor_event::Event;
use agentstudio_proto::conductor::v1::conductor_service_client::ConductorServiceClient;
use conductor_svc::ConductorConfig;
use conductor_svc::config::BrainKind;
use sandbox_svc::secret::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use common::TestBroker;

pub const CONDUCTOR_TOKEN: &str = "conductor-test-token-0123456789";

pub type Client = ConductorServiceClient<InterceptedService<Channel, common::Interceptor>>;

pub struct TestConductor {
    pub address: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestConductor {
    /// A conductor on `data_dir` (kept across restarts by the caller) talking to `broker`.
    pub async fn start(broker: &TestBroker, data_dir: &Path, adjust: impl FnOnce(&mut ConductorConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut config = ConductorConfig::for_tests(data_dir.to_owned(), broker.url());
        config.auth_token = Some(SecretString::new(CONDUCTOR_TOKEN));
        config.broker_token = Some(SecretString::new(common::TOKEN));
        config.shutdown_grace = Duration::from_secs(5);
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(conductor_svc::serve_with_ready(
            config,
            listener,
            async {
                let _ = stopped.await;
            },
            move |_| {
                let _ = ready_tx.send(());
            },
        ));
        if ready_rx.await.is_err() {
            panic!("conductor failed to start: {:?}", task.await);
        }
        TestConductor { address, stop: Some(stop), task }
    }

    pub async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.address)).unwrap().connect().await.unwrap();
        let header = format!("Bearer {CONDUCTOR_TOKEN}").parse().unwrap();
        ConductorServiceClient::with_interceptor(channel, common::Interceptor(Some(header)))
    }

    /// Stops it as SIGTERM would, and waits.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("conductor stopped in time")
            .unwrap()
            .unwrap();
    }
}

/// Broker + conductor with the `rules` brain on SQLite in a temp dir.
pub struct Stack {
    pub broker: TestBroker,
    pub conductor: TestConductor,
    pub data_dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(adjust: impl FnOnce(&mut ConductorConfig)) -> Stack {
        let broker = TestBroker::start(|_| {}).await;
        let data_dir = tempfile::tempdir().unwrap();
        let conductor = TestConductor::start(&broker, &conductor_dir(data_dir.path()), adjust).await;
        Stack { broker, conductor, data_dir }
    }
}

pub fn conductor_dir(base: &Path) -> PathBuf {
    base.join("conductor")
}

pub fn anthropic(fake: &fake_anthropic::FakeAnthropic) -> impl FnOnce(&mut ConductorConfig) {
    let url = fake.base_url();
    move |config| {
        config.brain = BrainKind::Anthropic;
        config.anthropic_api_key = Some(SecretString::new("sk-ant-test-key"));
        config.anthropic_base_url = url;
    }
}

/// Every event of one SendMessage turn, until the stream ends.
pub async fn send(client: &mut Client, conversation_id: &str, text: &str) -> Vec<Event> {
    let request = pb::SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        text: text.to_owned(),
        sender: "test:alice".into(),
    };
    let mut stream = client.send_message(request).await.expect("send_message").into_inner();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("turn event within 60s")
        .expect("stream ok")
    {
        events.push(event.event.expect("event set"));
    }
    // Shown when a test fails: what Stu said besides its reply.
    for event in &events {
        if matches!(event, Event::Notice(_) | Event::Error(_)) {
            eprintln!("turn {text:?}: {event:?}");
        }
    }
    events
}

pub fn conversation_id(events: &[Event]) -> String {
    match events.first() {
        Some(Event::Conversation(c)) => c.conversation_id.clone(),
        other => panic!("first event must be the conversation, got {other:?}"),
    }
}

pub fn reply_text(events: &[Event]) -> String {
    events.iter().filter_map(|e| if let Event::AssistantText(t) = e { Some(t.text.as_str()) } else { None }).collect()
}

pub fn worker_stdout(events: &[Event], worker_id: &str) -> String {
    use pb::conductor_event::worker_output::Data;
    let mut out = Vec::new();
    for event in events {
        if let Event::WorkerOutput(o) = event
            && o.worker_id == worker_id
            && let Some(Data::Stdout(data)) = &o.data
        {
            out.extend_from_slice(data);
        }
    }
    String::from_utf8(out).unwrap()
}

pub fn spawned(events: &[Event]) -> Vec<pb::conductor_event::WorkerSpawned> {
    events.iter().filter_map(|e| if let Event::WorkerSpawned(s) = e { Some(s.clone()) } else { None }).collect()
}

pub fn finished(events: &[Event]) -> Vec<pb::conductor_event::WorkerFinished> {
    events.iter().filter_map(|e| if let Event::WorkerFinished(f) = e { Some(f.clone()) } else { None }).collect()
}

pub async fn workers_in(client: &mut Client, conversation_id: &str) -> Vec<pb::Worker> {
    let request = pb::ListWorkersRequest { conversation_id: conversation_id.to_owned(), ..Default::default() };
    client.list_workers(request).await.unwrap().into_inner().workers
}

pub async fn get_worker(client: &mut Client, worker_id: &str) -> pb::Worker {
    let request = pb::GetWorkerRequest { worker_id: worker_id.to_owned() };
    client.get_worker(request).await.unwrap().into_inner().worker.unwrap()
}

/// All stdout of a worker through AttachWorker (replay only), with the seqs seen.
pub async fn attach_stdout(client: &mut Client, worker_id: &str, after_seq: u64) -> (String, Vec<u64>, Option<i32>) {
    use pb::worker_output_event::Event as Output;
    let request = pb::AttachWorkerRequest { worker_id: worker_id.to_owned(), after_seq, follow: false };
    let mut stream = client.attach_worker(request).await.unwrap().into_inner();
    let (mut out, mut seqs, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        seqs.push(event.seq);
        match event.event {
            Some(Output::Stdout(data)) => out.extend_from_slice(&data),
            Some(Output::Exited(e)) => exit = Some(e.exit_code),
            _ => {}
        }
    }
    (String::from_utf8(out).unwrap(), seqs, exit)
}
