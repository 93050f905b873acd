//! Broker benchmarks, each printed as a ratio against a baseline measured in the same run
//! (the machines are noisy). Run all: `cargo bench --bench broker`; one:
//! `cargo bench --bench broker -- throughput|latency|scale`. Scale takes `SCALE_SANDBOXES`
//! (default 1000) and `SCALE_SECONDS` (default 30).
//!
//! The broker runs as a separate `studio up` process (release build), as in production, so
//! its RSS is its own and the client's work is not counted in it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Masked in every output byte during the benchmarks, so redaction is on.
const CANARY: &str = "ghp_BenchCanary0123456789abcdefghijklmnop";
const TOKEN: &str = "bench-token-0123456789abcdef";

type Client = SandboxServiceClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

fn authorize(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

fn authorized_client(channel: Channel) -> Client {
    SandboxServiceClient::with_interceptor(channel, authorize as fn(Request<()>) -> Result<Request<()>, Status>)
        .max_decoding_message_size(64 << 20)
}

struct Broker {
    child: Child,
    url: String,
    data: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_broker(extra_env: &[(&str, &str)]) -> Broker {
    let data = tempfile::tempdir().unwrap();
    // Traversable, so a broker running as root keeps workspaces in its data dir.
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_studio"));
    command
        .args(["broker", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .env("SANDBOX_REDACT_SECRETS", CANARY)
        .env("SANDBOX_AUTH_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.split("grpc://").nth(1).and_then(|r| r.split_whitespace().next()).expect("address").to_owned();
    Broker { child, url: format!("http://{address}"), data }
}

/// A client tuned as the README recommends for bulk output: 1 MiB HTTP/2 frames and large
/// flow-control windows (the defaults cut a 256 KiB event into sixteen 16 KiB frames).
async fn connect(url: &str) -> Client {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .max_frame_size(1 << 20)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .unwrap();
    authorized_client(channel)
}

async fn create(client: &mut Client) -> String {
    let request = pb::CreateSandboxRequest { template: "worker".into(), ..Default::default() };
    client.create_sandbox(request).await.unwrap().into_inner().sandbox.unwrap().sandbox_id
}

fn start(sandbox_id: &str, script: &str) -> pb::StartProcessRequest {
    pb::StartProcessRequest {
        sandbox_id: sandbox_id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 1 GiB through the broker (pipe → redaction → spool → gRPC) vs the same bytes read from a
/// pipe in one process. Five rounds, each with its own baseline; the median ratio is the figure.
async fn throughput() {
    const BYTES: u64 = 1 << 30;
    const ROUNDS: usize = 5;
    let script = format!("head -c {BYTES} /dev/zero");
    // A 256 MiB spool: room for the client to lag a little without losing a byte. Each round
    // runs in a fresh sandbox and ended ones are not kept, so one round's spool (dirty pages
    // on their way to disk) does not load the next round.
    let broker = start_broker(&[("SANDBOX_SPOOL_BYTES", "268435456"), ("SANDBOX_MAX_ENDED_SANDBOXES", "0")]);
    let mut client = connect(&broker.url).await;
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let sandbox_id = create(&mut client).await;
        let baseline = {
            let begin = Instant::now();
            let mut child = Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
            let mut out = child.stdout.take().unwrap();
            let mut buf = vec![0u8; 256 << 10];
            let mut total = 0u64;
            loop {
                let n = out.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            child.wait().unwrap();
            assert_eq!(total, BYTES);
            total as f64 / begin.elapsed().as_secs_f64()
        };
        let begin = Instant::now();
        let mut stream = client.start_process(start(&sandbox_id, &script)).await.unwrap().into_inner();
        let mut total = 0u64;
        while let Some(event) = stream.message().await.unwrap() {
            match event.event {
                Some(Event::Stdout(data)) => total += data.len() as u64,
                Some(Event::Truncated(t)) => panic!("the client fell behind the spool: {t:?}"),
                _ => {}
            }
        }
        assert_eq!(total, BYTES, "every byte arrives");
        let broker_rate = total as f64 / begin.elapsed().as_secs_f64();
        client.kill_sandbox(pb::KillSandboxRequest { sandbox_id }).await.unwrap();
        let ratio = broker_rate / baseline;
        ratios.push(ratio);
        println!(
            "throughput round {round}: pipe {:.2} GB/s, broker {:.2} GB/s, ratio {ratio:.2}",
            baseline / 1e9,
            broker_rate / 1e9
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "throughput: median ratio {:.2} (min {:.2}, max {:.2}; goal >= 0.5)",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

/// Create + first byte of `echo` through the broker vs spawning the same bwrap command directly.
async fn latency() {
    const ROUNDS: usize = 60;
    let broker = start_broker(&[("SANDBOX_MAX_SANDBOXES", "1000")]);
    let mut client = connect(&broker.url).await;
    let config = sandbox_svc::BrokerConfig::for_tests(broker.data.path().join("unused"));
    let provider = sandbox_svc::provider::local::LocalProvider::new(sandbox_svc::provider::local::LocalOptions {
        workspaces_dir: broker.data.path().join("direct"),
        root_paths: config.root_paths.clone(),
        hidden: vec![],
        run_as: config.local_run_as().unwrap(),
        unsafe_no_isolation: false,
    })
    .unwrap();
    let workspace = broker.data.path().join("direct-ws");
    std::fs::create_dir_all(&workspace).unwrap();
    let argv = vec!["echo".to_owned(), "hi".to_owned()];
    let (mut direct, mut brokered, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS + 5 {
        let begin = Instant::now();
        let mut child = provider.command_for(&workspace, true, &argv).stdout(Stdio::piped()).spawn().unwrap();
        let mut byte = [0u8; 1];
        child.stdout.as_mut().unwrap().read_exact(&mut byte).unwrap();
        let direct_ms = begin.elapsed().as_secs_f64() * 1e3;
        child.wait().unwrap();

        let begin = Instant::now();
        let sandbox_id = create(&mut client).await;
        let request =
            pb::StartProcessRequest { sandbox_id: sandbox_id.clone(), argv: argv.clone(), ..Default::default() };
        let mut stream = client.start_process(request).await.unwrap().into_inner();
        while let Some(event) = stream.message().await.unwrap() {
            if matches!(event.event, Some(Event::Stdout(_))) {
                break;
            }
        }
        let broker_ms = begin.elapsed().as_secs_f64() * 1e3;
        drop(stream);
        client.kill_sandbox(pb::KillSandboxRequest { sandbox_id }).await.unwrap();
        if round >= 5 {
            direct.push(direct_ms);
            brokered.push(broker_ms);
            overhead.push(broker_ms - direct_ms);
        }
    }
    for series in [&mut direct, &mut brokered, &mut overhead] {
        series.sort_by(f64::total_cmp);
    }
    println!(
        "start latency ({ROUNDS} rounds): direct bwrap echo median {:.2} ms p99 {:.2}; broker create+start+first byte median {:.2} ms p99 {:.2}; overhead median {:.2} ms p99 {:.2} (goal: median <= 3 ms); ratio {:.2}",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99),
        percentile(&brokered, 0.5),
        percentile(&brokered, 0.99),
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.99),
        percentile(&brokered, 0.5) / percentile(&direct, 0.5)
    );
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// N sandboxes each printing a timestamped line every 100 ms, all attached.
async fn scale() {
    let sandboxes: usize = std::env::var("SCALE_SANDBOXES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let seconds: u64 = std::env::var("SCALE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let broker = start_broker(&[("SANDBOX_MAX_SANDBOXES", &(sandboxes + 10).to_string())]);
    let broker_pid = broker.child.id();
    let idle_rss = rss_kib(broker_pid, "VmRSS:");
    // bash builtins only (no fork per line): `read -t` on a FIFO nobody writes is the sleep.
    let lines = seconds * 10;
    let script = format!(
        "mkfifo /tmp/tick; exec 3<>/tmp/tick; for i in $(seq 1 {lines}); do echo \"$i $EPOCHREALTIME\"; read -t 0.1 -u 3; done; true"
    );
    let channels: Vec<Channel> = futures_channels(&broker.url, 8).await;
    let mut client = authorized_client(channels[0].clone());
    let mut ids = Vec::with_capacity(sandboxes);
    let begin = Instant::now();
    for _ in 0..sandboxes {
        ids.push(create(&mut client).await);
    }
    let created_in = begin.elapsed();
    let mut tasks = Vec::with_capacity(sandboxes);
    // One permit per started process: all N mark the end of the start burst.
    let started = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    for (i, id) in ids.iter().enumerate() {
        let mut client = authorized_client(channels[i % channels.len()].clone());
        let request = pb::StartProcessRequest {
            sandbox_id: id.clone(),
            argv: vec!["bash".into(), "-c".into(), script.clone()],
            ..Default::default()
        };
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client.start_process(request).await.unwrap().into_inner();
            started.add_permits(1);
            let (mut next_line, mut latencies, mut lost, mut pending) = (1u64, Vec::new(), 0u64, String::new());
            while let Some(event) = stream.message().await.unwrap() {
                if let Some(Event::Stderr(data)) = &event.event {
                    eprintln!("scale: a process wrote to stderr: {}", String::from_utf8_lossy(data).trim());
                }
                if let Some(Event::Exited(exited)) = &event.event
                    && (exited.exit_code != 0 || exited.signal != 0)
                {
                    eprintln!("scale: a process ended with {exited:?}");
                }
                let Some(Event::Stdout(data)) = event.event else { continue };
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let mut parts = line.split_whitespace();
                    let number: u64 = parts.next().unwrap().parse().unwrap();
                    let stamp: f64 = parts.next().unwrap().parse().unwrap();
                    lost += number - next_line;
                    next_line = number + 1;
                    latencies.push((stamp, (now - stamp) * 1e3));
                }
            }
            lost += (lines + 1) - next_line;
            (latencies, lost)
        }));
    }
    let mut peak_rss = idle_rss;
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss = rss_kib(broker_pid, "VmRSS:");
            if rss == 0 {
                return peak;
            }
            peak = peak.max(rss);
        }
    });
    let all_started = {
        let _ = started.acquire_many(sandboxes as u32).await.unwrap();
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
    };
    let (mut latencies, mut lost) = (Vec::new(), 0u64);
    for task in tasks {
        let (l, x) = task.await.unwrap();
        latencies.extend(l);
        lost += x;
    }
    let hwm = rss_kib(broker_pid, "VmHWM:");
    sampler.abort();
    peak_rss = peak_rss.max(hwm);
    let mut steady: Vec<f64> = latencies.iter().filter(|(stamp, _)| *stamp > all_started).map(|(_, l)| *l).collect();
    let mut latencies: Vec<f64> = latencies.into_iter().map(|(_, l)| l).collect();
    latencies.sort_by(f64::total_cmp);
    steady.sort_by(f64::total_cmp);
    println!(
        "scale, after the start burst ({} lines): delivery p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        steady.len(),
        percentile(&steady, 0.5),
        percentile(&steady, 0.99),
        steady.last().copied().unwrap_or_default()
    );
    println!(
        "scale: {sandboxes} sandboxes x {lines} lines (created in {:.1} s): broker RSS idle {} MiB, peak {} MiB (goal <= 256); lines delivered {} lost {lost} (goal 0); delivery p50 {:.1} ms p99 {:.1} ms max {:.1} ms (goal p99 <= 100; all lines, start burst included)",
        created_in.as_secs_f64(),
        idle_rss / 1024,
        peak_rss / 1024,
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

async fn futures_channels(url: &str, n: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap());
    }
    channels
}

fn main() {
    let selected: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |name: &str| selected.is_empty() || selected.iter().any(|s| s == name);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        if wants("throughput") {
            throughput().await;
        }
        if wants("latency") {
            latency().await;
        }
        if wants("scale") {
            scale().await;
        }
    });
}
