//! Conductor benchmarks, printed as ratios/differences against a baseline measured in the same
//! run. `cargo bench --bench conductor`.
//!
//! Both services run as separate processes (`studio broker`, `studio conductor`, release build),
//! as `studio up` runs them.
//! 1. Stream path: a worker's spooled stdout read through the conductor (`AttachWorker`) vs the
//!    same bytes read straight from the broker (`AttachProcess`), alternating rounds.
//! 2. Conductor overhead: `SendMessage` → `worker_spawned` with the zero-latency `rules` brain,
//!    minus the broker's own CreateSandbox + StartProcess (first event) time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentstudio_proto::conductor::v1 as cpb;
use agentstudio_proto::conductor::v1::conductor_service_client::ConductorServiceClient;
use agentstudio_proto::sandbox::v1 as spb;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

const BROKER_TOKEN: &str = "bench-broker-token-0123456789";
const CONDUCTOR_TOKEN: &str = "bench-conductor-token-0123456789";
/// Output of the streamed worker: below the broker's 64 MiB spool, so nothing is truncated.
const STREAM_BYTES: usize = 48 << 20;
const ROUNDS: usize = 7;
const SPAWNS: usize = 40;

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start(subcommand: &str, env: &[(&str, String)]) -> (Service, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_studio"));
    command.arg(subcommand).env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.split("grpc://").nth(1).and_then(|r| r.split_whitespace().next()).expect("address").to_owned();
    (Service(child), format!("http://{address}"))
}

fn bearer(token: &'static str) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(request)
    }
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .unwrap()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_broker, broker_url) = start(
        "broker",
        &[
            ("SANDBOX_LISTEN_ADDR", "127.0.0.1:0".into()),
            ("SANDBOX_AUTH_TOKEN", BROKER_TOKEN.into()),
            ("SANDBOX_DATA_DIR", data.path().join("sandbox").display().to_string()),
        ],
    );
    let (_conductor, conductor_url) = start(
        "conductor",
        &[
            ("CONDUCTOR_LISTEN_ADDR", "127.0.0.1:0".into()),
            ("CONDUCTOR_AUTH_TOKEN", CONDUCTOR_TOKEN.into()),
            ("CONDUCTOR_BROKER_TOKEN", BROKER_TOKEN.into()),
            ("CONDUCTOR_BROKER_URL", broker_url.clone()),
            ("CONDUCTOR_BRAIN", "rules".into()),
            ("CONDUCTOR_MAX_WORKERS_PER_CONVERSATION", "64".into()),
            ("CONDUCTOR_DATA_DIR", data.path().join("conductor").display().to_string()),
        ],
    );
    let mut broker = SandboxServiceClient::with_interceptor(channel(&broker_url).await, bearer(BROKER_TOKEN))
        .max_decoding_message_size(64 << 20);
    let mut conductor =
        ConductorServiceClient::with_interceptor(channel(&conductor_url).await, bearer(CONDUCTOR_TOKEN))
            .max_decoding_message_size(64 << 20);

    // --- 1. Stream path -------------------------------------------------------------------
    let task = format!("head -c {STREAM_BYTES} /dev/zero | tr '\\0' x");
    let request = cpb::SendMessageRequest { text: format!("run `{task}`"), ..Default::default() };
    let mut turn = conductor.send_message(request).await.unwrap().into_inner();
    let mut worker_id = String::new();
    while let Some(event) = turn.message().await.unwrap() {
        match event.event {
            Some(cpb::conductor_event::Event::WorkerSpawned(spawned)) => worker_id = spawned.worker_id,
            Some(cpb::conductor_event::Event::Notice(notice)) => eprintln!("notice: {}", notice.text),
            Some(cpb::conductor_event::Event::Error(error)) => eprintln!("error: {}", error.message),
            _ => {}
        }
    }
    let worker = conductor
        .get_worker(cpb::GetWorkerRequest { worker_id: worker_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    let mut direct_rates = Vec::new();
    let mut relayed_rates = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let request = spb::AttachProcessRequest {
            sandbox_id: worker.sandbox_id.clone(),
            process_id: worker.process_id.clone(),
            after_seq: 0,
        };
        let mut stream = broker.attach_process(request).await.unwrap().into_inner();
        let mut bytes = 0usize;
        while let Some(event) = stream.message().await.unwrap() {
            if let Some(spb::process_event::Event::Stdout(data)) = event.event {
                bytes += data.len();
            }
        }
        assert_eq!(bytes, STREAM_BYTES);
        let direct = bytes as f64 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        let request = cpb::AttachWorkerRequest { worker_id: worker_id.clone(), after_seq: 0, follow: true };
        let mut stream = conductor.attach_worker(request).await.unwrap().into_inner();
        let mut bytes = 0usize;
        while let Some(event) = stream.message().await.unwrap() {
            if let Some(cpb::worker_output_event::Event::Stdout(data)) = event.event {
                bytes += data.len();
            }
        }
        assert_eq!(bytes, STREAM_BYTES);
        let relayed = bytes as f64 / started.elapsed().as_secs_f64();
        direct_rates.push(direct / 1e6);
        relayed_rates.push(relayed / 1e6);
        ratios.push(relayed / direct);
    }
    println!(
        "stream path ({} MiB spooled, {ROUNDS} rounds): via conductor {:.0} MB/s, straight from broker {:.0} MB/s; \
         median ratio {:.2} (rounds {:.2}–{:.2}; goal ≥ 0.70)",
        STREAM_BYTES >> 20,
        median(&mut relayed_rates),
        median(&mut direct_rates),
        median(&mut ratios.clone()),
        ratios.iter().cloned().fold(f64::MAX, f64::min),
        ratios.iter().cloned().fold(0.0, f64::max),
    );

    // --- 2. Conductor overhead on spawn ---------------------------------------------------
    let mut direct = Vec::new();
    let mut via_conductor = Vec::new();
    for index in 0..SPAWNS {
        // Baseline: what the conductor asks of the broker for one worker.
        let started = Instant::now();
        let sandbox = broker
            .create_sandbox(spb::CreateSandboxRequest {
                template: "worker".into(),
                idempotency_key: format!("bench-{index}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .sandbox
            .unwrap();
        let request = spb::StartProcessRequest {
            sandbox_id: sandbox.sandbox_id.clone(),
            argv: vec!["bash".into(), "-c".into(), "true".into()],
            ..Default::default()
        };
        let mut stream = broker.start_process(request).await.unwrap().into_inner();
        stream.message().await.unwrap();
        direct.push(started.elapsed().as_secs_f64() * 1e3);
        broker.kill_sandbox(spb::KillSandboxRequest { sandbox_id: sandbox.sandbox_id }).await.unwrap();

        let started = Instant::now();
        let request = cpb::SendMessageRequest { text: "run `true`".into(), ..Default::default() };
        let mut turn = conductor.send_message(request).await.unwrap().into_inner();
        let mut spawned_after = None;
        while let Some(event) = turn.message().await.unwrap() {
            if let Some(cpb::conductor_event::Event::WorkerSpawned(_)) = event.event {
                spawned_after.get_or_insert(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        via_conductor.push(spawned_after.expect("worker spawned"));
    }
    let (direct_median, conductor_median) = (median(&mut direct), median(&mut via_conductor));
    println!(
        "spawn ({SPAWNS} workers, rules brain): SendMessage→worker_spawned median {:.2} ms (p99 {:.2}); broker create+start \
         median {:.2} ms (p99 {:.2}); conductor overhead median {:.2} ms (goal ≤ 5 ms), ratio {:.2}",
        conductor_median,
        percentile(&mut via_conductor, 0.99),
        direct_median,
        percentile(&mut direct, 0.99),
        conductor_median - direct_median,
        conductor_median / direct_median,
    );
    std::thread::sleep(Duration::from_millis(100));
}
