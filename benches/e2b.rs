//! Benchmarks of the broker's `e2b` provider against the in-process fake E2B (`fake_e2b`) on
//! loopback, each printed against a baseline measured in the same run (the machines are noisy).
//! Run all: `cargo bench --bench e2b`; one: `cargo bench --bench e2b -- create|stream`.
//!
//! The broker runs as a separate `studio broker` process (release build) with
//! `SANDBOX_PROVIDER=e2b`, pointed at the fake with `E2B_API_URL` / `SANDBOX_E2B_ENVD_URL`; the
//! fake and the clients share this process.
//! 1. CreateSandbox overhead: creates paced at 20/s, each timed at the gRPC client, minus the
//!    fake's own handling of that create (`FakeE2b::handler_time` deltas around the call).
//! 2. Stream throughput: a process in a fake sandbox writes 64 MiB, read through the broker
//!    (`StartProcess`) vs straight from the fake's envd (`process.Process/Start`), alternating.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BytesMut};
use fake_e2b::{ENVD_PORT, FakeE2b, FakeOptions};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

const TOKEN: &str = "bench-token-0123456789abcdef";
/// The fake's sandboxes have their home from the start; the broker's workspace is there.
const WORKSPACE: &str = "/home/user";
const CREATES_PER_SECOND: u32 = 20;
const CREATE_SECONDS: u32 = 15;
/// Creates before the measured ones: connection set-up and first-use allocations.
const CREATE_WARMUP: u32 = 10;
/// Below the broker's spool (raised to 256 MiB here), so a lagging client loses nothing.
const STREAM_BYTES: u64 = 64 << 20;
const STREAM_ROUNDS: usize = 5;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_TIMEOUT: Duration = Duration::from_secs(180);
/// The broker builds its templates on the fake before it serves.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Connect envelope flag of the end-of-stream message.
const FLAG_END_STREAM: u8 = 0x02;

type Client = SandboxServiceClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

fn authorize(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

/// A `studio broker` process using the fake as its E2B.
struct Broker {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Broker {
    async fn start(fake: &FakeE2b) -> Broker {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_studio"))
            .args(["broker", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .env("SANDBOX_TEMPLATES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
            .env("SANDBOX_PROVIDER", "e2b")
            .env("E2B_API_KEY", fake.api_key())
            .env("E2B_API_URL", fake.api_url())
            .env("SANDBOX_E2B_ENVD_URL", fake.envd_url())
            .env("SANDBOX_E2B_WORKSPACE_DIR", WORKSPACE)
            .env("SANDBOX_AUTH_TOKEN", TOKEN)
            // Room for the client to lag behind a 64 MiB stream; ended sandboxes are not kept.
            .env("SANDBOX_SPOOL_BYTES", (256u64 << 20).to_string())
            .env("SANDBOX_MAX_ENDED_SANDBOXES", "0")
            .env("SANDBOX_SHUTDOWN_GRACE", "5s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn `studio broker`");
        let stdout = child.stdout.take().unwrap();
        // Read off the runtime: the fake must keep serving the template builds meanwhile.
        let banner = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(START_TIMEOUT, banner).await {
            Ok(line) => line.unwrap().expect("read the broker's banner"),
            Err(_) => {
                let _ = child.kill();
                panic!("the broker did not print its address within {START_TIMEOUT:?}");
            }
        };
        let Some(address) = line.split("grpc://").nth(1).and_then(|rest| rest.split_whitespace().next()) else {
            let _ = child.kill();
            panic!("the broker exited or printed no address (its stderr is above): {line:?}");
        };
        let url = format!("http://{address}");
        Broker { child, url, _data: data }
    }

    /// SIGTERM, then wait off the runtime (the broker may still talk to the fake while it stops).
    async fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the broker did not stop within 20 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client tuned as the README recommends for bulk output: 1 MiB HTTP/2 frames and large
/// flow-control windows.
async fn connect(url: &str) -> Client {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .max_frame_size(1 << 20)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .expect("connect to the broker");
    SandboxServiceClient::with_interceptor(channel, authorize as fn(Request<()>) -> Result<Request<()>, Status>)
        .max_decoding_message_size(64 << 20)
}

async fn create(client: &mut Client) -> String {
    let request = pb::CreateSandboxRequest { template: "worker".into(), ..Default::default() };
    let response = tokio::time::timeout(CALL_TIMEOUT, client.create_sandbox(request))
        .await
        .expect("CreateSandbox answers within 10 s")
        .expect("CreateSandbox");
    response.into_inner().sandbox.expect("a sandbox in the answer").sandbox_id
}

async fn kill(client: &mut Client, sandbox_id: String) {
    tokio::time::timeout(CALL_TIMEOUT, client.kill_sandbox(pb::KillSandboxRequest { sandbox_id }))
        .await
        .expect("KillSandbox answers within 10 s")
        .expect("KillSandbox");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// CreateSandbox timed at the client, minus the fake's handling of it. For reference, in the
/// same tick: a `GetSandbox` of the new sandbox (a gRPC round trip that does almost nothing in
/// the broker) and the same create body POSTed straight to the fake (loopback HTTP and the fake's
/// server without the broker): together, the transport part of the overhead.
async fn create_overhead(fake: &FakeE2b, client: &mut Client, http: &reqwest::Client) {
    let creates = CREATES_PER_SECOND * CREATE_SECONDS;
    println!(
        "create: {creates} CreateSandbox calls paced at {CREATES_PER_SECOND}/s (after {CREATE_WARMUP} warm-up), each timed at the gRPC client; overhead = client-observed - the fake's own handling of that create (FakeE2b::handler_time delta); each sandbox killed after, untimed"
    );
    fake.set_concurrency_limit(10_000);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / CREATES_PER_SECOND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut observed, mut handling, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    let (mut direct, mut get) = (Vec::new(), Vec::new());
    let mut direct_body = None;
    let mut measured_from = Instant::now();
    for i in 0..CREATE_WARMUP + creates {
        ticker.tick().await;
        if i == CREATE_WARMUP {
            measured_from = Instant::now();
        }
        let fake_before = fake.handler_time();
        let begin = Instant::now();
        let sandbox_id = create(client).await;
        let elapsed = begin.elapsed();
        let fake_time = fake.handler_time() - fake_before;
        let begin = Instant::now();
        let request = pb::GetSandboxRequest { sandbox_id: sandbox_id.clone() };
        tokio::time::timeout(CALL_TIMEOUT, client.get_sandbox(request))
            .await
            .expect("GetSandbox answers within 10 s")
            .expect("GetSandbox");
        let get_elapsed = begin.elapsed();
        kill(client, sandbox_id).await;
        // The body the broker sent, replayed verbatim to the fake for the direct figure.
        let body = direct_body.get_or_insert_with(|| {
            let sent = fake.requests().into_iter().find(|r| r.method == "POST" && r.path == "/sandboxes");
            sent.expect("the broker's POST /sandboxes was recorded").body
        });
        let begin = Instant::now();
        let e2b_id = create_direct(fake, http, body.clone()).await;
        let direct_elapsed = begin.elapsed();
        kill_direct(fake, http, &e2b_id).await;
        if i >= CREATE_WARMUP {
            observed.push(ms(elapsed));
            handling.push(ms(fake_time));
            overhead.push(ms(elapsed.saturating_sub(fake_time)));
            direct.push(ms(direct_elapsed));
            get.push(ms(get_elapsed));
        }
    }
    let rate = f64::from(creates) / measured_from.elapsed().as_secs_f64();
    for series in [&mut observed, &mut handling, &mut overhead, &mut direct, &mut get] {
        series.sort_by(f64::total_cmp);
    }
    println!(
        "create baseline: the fake's handling median {:.3} ms p99 {:.3}; the same create POSTed straight to the fake (loopback HTTP, no broker) median {:.3} ms p99 {:.3}; GetSandbox gRPC round trip median {:.3} ms p99 {:.3}",
        percentile(&handling, 0.5),
        percentile(&handling, 0.99),
        percentile(&direct, 0.5),
        percentile(&direct, 0.99),
        percentile(&get, 0.5),
        percentile(&get, 0.99)
    );
    println!(
        "create ({creates} at {rate:.1}/s): client-observed median {:.3} ms p99 {:.3} max {:.3}; broker overhead (observed - fake handling) median {:.3} ms p99 {:.3} max {:.3} (goal: median <= 2 ms, p99 <= 10 ms at 20 creates/s); ratio observed/direct median {:.2}",
        percentile(&observed, 0.5),
        percentile(&observed, 0.99),
        observed.last().unwrap(),
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.99),
        overhead.last().unwrap(),
        percentile(&observed, 0.5) / percentile(&direct, 0.5)
    );
}

async fn create_direct(fake: &FakeE2b, http: &reqwest::Client, body: bytes::Bytes) -> String {
    let request = http
        .post(format!("{}/sandboxes", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .header("content-type", "application/json")
        .body(body);
    let response = tokio::time::timeout(CALL_TIMEOUT, request.send())
        .await
        .expect("the fake answers a create within 10 s")
        .expect("POST /sandboxes");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED, "direct create");
    let created: serde_json::Value = response.json().await.unwrap();
    created["sandboxID"].as_str().expect("sandboxID").to_owned()
}

async fn kill_direct(fake: &FakeE2b, http: &reqwest::Client, e2b_id: &str) {
    let request = http.delete(format!("{}/sandboxes/{e2b_id}", fake.api_url())).header("x-api-key", fake.api_key());
    let response = tokio::time::timeout(CALL_TIMEOUT, request.send())
        .await
        .expect("the fake answers a kill within 10 s")
        .expect("DELETE /sandboxes/{id}");
    assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT, "direct kill");
}

/// The sandbox's envd access token, as `GET /sandboxes/{id}` reports it.
async fn envd_token(fake: &FakeE2b, http: &reqwest::Client, e2b_id: &str) -> Option<String> {
    let request = http.get(format!("{}/sandboxes/{e2b_id}", fake.api_url())).header("x-api-key", fake.api_key());
    let response = tokio::time::timeout(CALL_TIMEOUT, request.send()).await.unwrap().unwrap();
    assert!(response.status().is_success(), "GET /sandboxes/{e2b_id}: {}", response.status());
    let detail: serde_json::Value = response.json().await.unwrap();
    detail["envdAccessToken"].as_str().map(str::to_owned)
}

/// Bytes per second of `script`'s stdout read through the broker.
async fn read_through_broker(client: &mut Client, sandbox_id: &str, script: &str) -> f64 {
    let request = pb::StartProcessRequest {
        sandbox_id: sandbox_id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let begin = Instant::now();
    let read = async {
        let mut stream = client.start_process(request).await.expect("StartProcess").into_inner();
        let (mut total, mut exit) = (0u64, None);
        while let Some(event) = stream.message().await.expect("broker stream") {
            match event.event {
                Some(Event::Stdout(data)) => total += data.len() as u64,
                Some(Event::Stderr(data)) => eprintln!("stream: stderr: {}", String::from_utf8_lossy(&data).trim()),
                Some(Event::Truncated(t)) => panic!("the client fell behind the broker's spool: {t:?}"),
                Some(Event::Exited(exited)) => exit = Some((exited.exit_code, exited.signal)),
                _ => {}
            }
        }
        (total, exit)
    };
    let (total, exit) = tokio::time::timeout(STREAM_TIMEOUT, read).await.expect("the broker stream ends in time");
    let rate = total as f64 / begin.elapsed().as_secs_f64();
    assert_eq!(exit, Some((0, 0)), "the process exits cleanly");
    assert_eq!(total, STREAM_BYTES, "every byte arrives through the broker");
    rate
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Message {
    event: Option<ProcessEvent>,
    error: Option<serde_json::Value>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ProcessEvent {
    data: Option<Data>,
    end: Option<serde_json::Value>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Data {
    stdout: Option<String>,
    stderr: Option<String>,
}

/// Bytes per second of `script`'s stdout read straight from the fake's envd: one
/// `process.Process/Start` Connect stream over HTTP/1.1, envelopes split and base64 decoded here.
async fn read_direct(fake: &FakeE2b, http: &reqwest::Client, e2b_id: &str, token: Option<&str>, script: &str) -> f64 {
    let message = serde_json::json!({
        "process": {"cmd": "sh", "args": ["-c", script], "cwd": WORKSPACE},
        "stdin": false,
    });
    let payload = serde_json::to_vec(&message).unwrap();
    let mut body = Vec::with_capacity(5 + payload.len());
    body.push(0);
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);
    let mut request = http
        .post(format!("{}/process.Process/Start", fake.envd_url()))
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("e2b-sandbox-id", e2b_id)
        .header("e2b-sandbox-port", ENVD_PORT.to_string())
        .body(body);
    if let Some(token) = token {
        request = request.header("x-access-token", token);
    }
    let begin = Instant::now();
    let read = async {
        let mut response = request.send().await.expect("POST process.Process/Start");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "envd Start");
        let (mut buffer, mut decoded) = (BytesMut::new(), Vec::new());
        let (mut total, mut end, mut finished) = (0u64, None, false);
        while let Some(chunk) = response.chunk().await.expect("envd stream") {
            buffer.extend_from_slice(&chunk);
            while buffer.len() >= 5 {
                let flags = buffer[0];
                let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
                if buffer.len() < 5 + len {
                    break;
                }
                buffer.advance(5);
                let payload = buffer.split_to(len);
                let message: Message = serde_json::from_slice(&payload).expect("an envd message");
                if flags & FLAG_END_STREAM != 0 {
                    assert!(message.error.is_none(), "envd stream failed: {:?}", message.error);
                    finished = true;
                    continue;
                }
                let Some(event) = message.event else { continue };
                if let Some(data) = event.data {
                    if let Some(stdout) = data.stdout {
                        decoded.clear();
                        STANDARD.decode_vec(stdout, &mut decoded).expect("base64 stdout");
                        total += decoded.len() as u64;
                    }
                    if let Some(stderr) = data.stderr {
                        eprintln!("stream: stderr (direct): {stderr}");
                    }
                }
                if event.end.is_some() {
                    end = event.end;
                }
            }
        }
        assert!(finished, "the envd stream ended without its end-of-stream envelope");
        (total, end)
    };
    let (total, end) = tokio::time::timeout(STREAM_TIMEOUT, read).await.expect("the envd stream ends in time");
    let rate = total as f64 / begin.elapsed().as_secs_f64();
    let end = end.expect("an end event");
    assert_eq!(end["status"], "exit status 0", "the process exits cleanly: {end}");
    assert_eq!(total, STREAM_BYTES, "every byte arrives from envd");
    rate
}

/// One sandbox per round (made through the broker); the same script's 64 MiB read through the
/// broker and straight from envd, the order alternating between rounds.
async fn stream_throughput(fake: &FakeE2b, client: &mut Client, http: &reqwest::Client) {
    let script = format!("head -c {STREAM_BYTES} /dev/zero | tr '\\0' x");
    println!(
        "stream: `{script}` in a fake sandbox, stdout read through the broker (StartProcess, 1 MiB HTTP/2 frames) vs straight from the fake's envd (process.Process/Start over reqwest, envelopes and base64 decoded, the baseline); {STREAM_ROUNDS} rounds alternating which goes first"
    );
    let mut ratios = Vec::new();
    for round in 1..=STREAM_ROUNDS {
        let before = fake.sandbox_ids();
        let sandbox_id = create(client).await;
        let e2b_id =
            fake.sandbox_ids().into_iter().find(|id| !before.contains(id)).expect("the new sandbox on the fake");
        let token = envd_token(fake, http, &e2b_id).await;
        let (broker_rate, direct_rate) = if round % 2 == 1 {
            let broker_rate = read_through_broker(client, &sandbox_id, &script).await;
            (broker_rate, read_direct(fake, http, &e2b_id, token.as_deref(), &script).await)
        } else {
            let direct_rate = read_direct(fake, http, &e2b_id, token.as_deref(), &script).await;
            (read_through_broker(client, &sandbox_id, &script).await, direct_rate)
        };
        kill(client, sandbox_id).await;
        let ratio = broker_rate / direct_rate;
        ratios.push(ratio);
        println!(
            "stream round {round} ({} first): direct {:.3} GB/s, broker {:.3} GB/s, ratio {ratio:.2}",
            if round % 2 == 1 { "broker" } else { "direct" },
            direct_rate / 1e9,
            broker_rate / 1e9
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "stream: median ratio broker/direct {:.2} (min {:.2}, max {:.2}; goal >= 0.5)",
        ratios[STREAM_ROUNDS / 2],
        ratios[0],
        ratios[STREAM_ROUNDS - 1]
    );
}

fn main() {
    let selected: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |name: &str| selected.is_empty() || selected.iter().any(|s| s == name);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Template builds are not measured: their simulated log lines need not be slow.
        let options = FakeOptions { build_step_delay: Duration::from_millis(1), ..FakeOptions::default() };
        let fake = FakeE2b::start_with(options).await;
        let broker = Broker::start(&fake).await;
        let mut client = connect(&broker.url).await;
        let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
        if wants("create") {
            create_overhead(&fake, &mut client, &http).await;
        }
        if wants("stream") {
            stream_throughput(&fake, &mut client, &http).await;
        }
        broker.stop().await;
    });
}
