//! The `studio` binary as a user runs it: `up`, the sandbox commands, `exec`, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "cli-test-token-0123456789";

fn studio() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_studio"));
    command.env("SANDBOX_AUTH_TOKEN", TOKEN).env_remove("RUST_LOG");
    command
}

struct Up {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
    log: std::path::PathBuf,
}

/// `studio up` on an ephemeral port, JSON logs to a file; returns once it printed its address.
fn up() -> Up {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("up.log");
    let mut child = studio()
        .args(["broker", "--listen", "127.0.0.1:0", "--log-format", "json", "--shutdown-grace", "5s"])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let address = read_address(&mut child);
    Up { child, url: format!("http://{address}"), _data: data, log }
}

/// The address from the first line `studio up` prints, once it is ready.
fn read_address(child: &mut Child) -> String {
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
    match first_line.split("grpc://").nth(1).and_then(|rest| rest.split_whitespace().next()) {
        Some(address) => address.to_owned(),
        None => panic!("no address in {first_line:?}"),
    }
}

fn run(up: &Up, args: &[&str]) -> std::process::Output {
    studio().env("STUDIO_BROKER_URL", &up.url).args(args).output().unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn up_exec_and_sigterm_as_a_user_would() {
    let mut up = up();
    let created = run(&up, &["sandbox", "create", "--metadata", "who=cli"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let sandbox_id = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(sandbox_id.starts_with("sbx-"), "{sandbox_id}");

    let exec = run(&up, &["exec", &sandbox_id, "--", "sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    assert_eq!(exec.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "oops\n");

    // One write, so the events are exactly: 1 started, 2 stdout, 3 exited.
    let single = run(&up, &["exec", &sandbox_id, "--", "sh", "-c", "printf hello; exit 4"]);
    assert_eq!(single.status.code(), Some(4));
    let attach = run(&up, &["attach", &sandbox_id, "p2", "--after", "1"]);
    assert_eq!((attach.status.code(), String::from_utf8_lossy(&attach.stdout).as_ref()), (Some(4), "hello"));
    let attach = run(&up, &["attach", &sandbox_id, "p2", "--after", "2"]);
    assert_eq!((attach.status.code(), String::from_utf8_lossy(&attach.stdout).as_ref()), (Some(4), ""));

    let listed = run(&up, &["sandbox", "ls", "--metadata", "who=cli"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&sandbox_id));
    let bad = run(&up, &["sandbox", "create", "--template", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("known templates: infrastructure, worker"));
    let unauthenticated = studio()
        .env("STUDIO_BROKER_URL", &up.url)
        .env("SANDBOX_AUTH_TOKEN", "wrong-token-0123456789")
        .args(["sandbox", "ls"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unauthenticated.stderr).contains("Unauthenticated"));

    // A long-running process, then SIGTERM: the broker kills it and exits cleanly.
    let marker = format!("5000.{}", std::process::id());
    let mut background = studio()
        .env("STUDIO_BROKER_URL", &up.url)
        .args(["exec", &sandbox_id, "--", "sleep", &marker])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_with(&marker) {
        assert!(Instant::now() < deadline, "sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut up.child, Duration::from_secs(15));
    assert!(status.success(), "studio up exited with {status:?}");
    assert!(!process_with(&marker), "the sandboxed process outlived the broker");
    let _ = background.kill();
    let _ = background.wait();
    let log = std::fs::read_to_string(&up.log).unwrap();
    assert!(log.contains("NOT_SERVING") || log.contains("shutting down"), "{log}");
    assert!(log.contains("sandbox broker stopped"), "{log}");
}

#[test]
fn traceparent_from_the_caller_reaches_the_logs() {
    let mut up = up();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(up.url.clone()).unwrap().connect().await.unwrap();
        let mut client = agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient::new(channel);
        let mut request = tonic::Request::new(agentstudio_proto::sandbox::v1::ListSandboxesRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
        let mut create = tonic::Request::new(agentstudio_proto::sandbox::v1::CreateSandboxRequest {
            template: "worker".into(),
            ..Default::default()
        });
        create.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        create.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
        client.list_sandboxes(request).await.unwrap();
        client.create_sandbox(create).await.unwrap();
    });
    // Close the client's connection: a runtime that is no longer polled cannot answer GOAWAY.
    drop(runtime);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.child.id() as i32, libc::SIGTERM) };
    wait_exit(&mut up.child, Duration::from_secs(15));
    let log = std::fs::read_to_string(&up.log).unwrap();
    let line = log.lines().find(|l| l.contains("sandbox created")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.starts_with('{'), "JSON logs: {line}");
    assert!(line.contains(trace_id), "trace id not in {line}");
    assert!(!log.contains(TOKEN), "the token leaked into logs");
}

#[test]
fn without_a_configured_token_up_generates_one_that_only_studio_finds() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_studio"))
        .env_remove("SANDBOX_AUTH_TOKEN")
        .current_dir(cwd.path())
        .args(["broker", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = read_address(&mut child);
    let url = format!("http://{address}");
    let token_file = cwd.path().join(".studio/sandbox/auth-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the generated token is owner-only");
    let studio_here = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_studio"))
            .env_remove("SANDBOX_AUTH_TOKEN")
            .env("STUDIO_BROKER_URL", &url)
            .current_dir(cwd.path())
            .args(args)
            .output()
            .unwrap()
    };
    let listed = studio_here(&["sandbox", "ls"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let elsewhere = studio()
        .env_remove("SANDBOX_AUTH_TOKEN")
        .env("STUDIO_BROKER_URL", &url)
        .args(["sandbox", "ls"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("Unauthenticated"), "no token, no access");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[test]
fn without_bubblewrap_up_refuses_and_names_the_package() {
    let data = tempfile::tempdir().unwrap();
    let output = studio()
        .env("PATH", data.path())
        .args(["broker", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apt-get install -y bubblewrap"), "{stderr}");
    assert!(stderr.contains("--unsafe-no-isolation"), "{stderr}");
}

fn process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
            && !std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("studio"))
    })
}

/// A one-endpoint OTLP/HTTP collector: records each request's path and body, answers 200.
fn fake_collector() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let _ = tx.send((path, body));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, rx)
}

#[test]
fn spans_are_exported_over_otlp_with_the_callers_trace_id() {
    let (collector, received) = fake_collector();
    let data = tempfile::tempdir().unwrap();
    let mut child = studio()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
        .args(["broker", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = read_address(&mut child);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
        let mut client = agentstudio_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient::new(channel);
        let mut request = tonic::Request::new(agentstudio_proto::sandbox::v1::ListSandboxesRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        request.metadata_mut().insert("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01").parse().unwrap());
        client.list_sandboxes(request).await.unwrap();
    });
    // Close the client's connection: a runtime that is no longer polled cannot answer GOAWAY.
    drop(runtime);
    // SAFETY: signalling our own child; shutdown flushes the exporter.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let (path, body) = received.recv_timeout(Duration::from_secs(10)).expect("an OTLP export");
    assert_eq!(path, "/v1/traces");
    let raw_trace_id: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap()).collect();
    assert!(body.windows(16).any(|w| w == raw_trace_id.as_slice()), "trace id not in the exported spans");
    assert!(body.windows(b"ListSandboxes".len()).any(|w| w == b"ListSandboxes"), "span name exported");
}

/// The pids of `studio <subcommand>` processes whose parent is `parent`.
fn children_running(parent: u32, subcommand: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid =
            stat.rsplit(") ").next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if ppid == Some(parent) && args.get(1) == Some(&subcommand.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

#[test]
fn up_runs_both_services_as_processes_and_the_conductor_never_sees_broker_credentials() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_studio"))
        .args(["up", "--conductor-listen", "127.0.0.1:0", "--broker-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path().join("studio"))
        .current_dir(data.path())
        .env_remove("SANDBOX_AUTH_TOKEN")
        .env_remove("RUST_LOG")
        .env("E2B_API_KEY", "e2b_canary_0123456789abcdef")
        .env("GITHUB_TOKEN", "ghp_canary0123456789abcdef0123456789abcd")
        .env("CONDUCTOR_BRAIN", "rules")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut conductor_url = None;
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if line.contains("conductor (Stu): grpc://") {
            conductor_url = line.split("grpc://").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_owned);
        }
        if line.starts_with("try:") {
            break;
        }
        line.clear();
    }
    let conductor_url = format!("http://{}", conductor_url.expect("conductor address printed"));
    let conductors = children_running(child.id(), "conductor");
    let brokers = children_running(child.id(), "broker");
    assert_eq!((conductors.len(), brokers.len()), (1, 1), "two separate processes");
    let conductor_env = environ(conductors[0]);
    for variable in &conductor_env {
        assert!(
            !variable.starts_with("E2B_") && !variable.starts_with("GITHUB_") && !variable.starts_with("SANDBOX_"),
            "the conductor's environment holds {variable}"
        );
        assert!(!variable.contains("canary"), "a broker credential reached the conductor: {variable}");
    }
    let broker_env = environ(brokers[0]);
    assert!(broker_env.iter().any(|v| v == "E2B_API_KEY=e2b_canary_0123456789abcdef"));
    assert!(!broker_env.iter().any(|v| v.starts_with("CONDUCTOR_")));

    // A user talks to Stu through it: the generated conductor token is found in the data dir.
    let output = Command::new(env!("CARGO_BIN_EXE_studio"))
        .args(["send", "run `echo hello-from-up`", "--conductor", &conductor_url])
        .arg("--conductor-data-dir")
        .arg(data.path().join("studio/conductor"))
        .env_remove("CONDUCTOR_AUTH_TOKEN")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("│ hello-from-up"), "{printed}");
    let output = Command::new(env!("CARGO_BIN_EXE_studio"))
        .args(["send", "run `exit 3`", "--conductor", &conductor_url])
        .arg("--conductor-data-dir")
        .arg(data.path().join("studio/conductor"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "a failed worker fails `studio send`");

    // The self-improvement loop from the command line: a PR, shown, approved, promoted.
    let stu = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_studio"))
            .args(args)
            .args(["--conductor", &conductor_url])
            .arg("--conductor-data-dir")
            .arg(data.path().join("studio/conductor"))
            .env_remove("CONDUCTOR_AUTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let output = stu(&["send", "Install htop in the worker template. Create a PR with the changes."]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && printed.contains("Pull request #1"), "{printed}");
    let output = stu(&["changes"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("#1    awaiting-approval"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = stu(&["approve", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--yes"), "no terminal, no silent approval: {stderr}");
    let output = stu(&["approve", "1", "--yes"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        printed.contains("+RUN apt-get update") && printed.contains("vetting: NEEDS_HUMAN"),
        "diff and report first: {printed}"
    );
    assert!(printed.contains("promoted:"), "{printed}");
    let output = stu(&["templates", "versions", "worker"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(printed.lines().count(), 2, "{printed}");
    assert!(printed.lines().next().unwrap().starts_with("* built") && printed.contains("pr #1"), "{printed}");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert!(children_running(child.id(), "conductor").is_empty() && children_running(child.id(), "broker").is_empty());
}
