//! Raw-HTTP helpers shared by the fake's tests: they decode the wire format themselves so the
//! tests check bytes, not a client's interpretation of them.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fake_e2b::FakeE2b;
use serde_json::{Value, json};

/// Upper bound for any single wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

pub async fn create_sandbox(fake: &FakeE2b, body: Value) -> Value {
    let response = client()
        .post(format!("{}/sandboxes", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .json(&body)
        .send()
        .await
        .expect("create sandbox");
    assert_eq!(response.status(), 201, "create failed");
    response.json().await.expect("sandbox json")
}

pub async fn new_sandbox(fake: &FakeE2b) -> String {
    let sandbox = create_sandbox(fake, json!({"templateID": "base", "timeout": 300})).await;
    sandbox["sandboxID"].as_str().expect("sandboxID").to_string()
}

/// One request envelope: flags 0, big-endian length, JSON.
pub fn envelope(message: &Value) -> Vec<u8> {
    let payload = message.to_string().into_bytes();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

pub fn envd_post(fake: &FakeE2b, sandbox_id: &str, method: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/process.Process/{method}", fake.envd_url()))
        .header("e2b-sandbox-id", sandbox_id)
        .header("e2b-sandbox-port", "49983")
        .header("connect-protocol-version", "1")
}

pub async fn start(fake: &FakeE2b, sandbox_id: &str, request: Value) -> Frames {
    start_with(envd_post(fake, sandbox_id, "Start"), request).await
}

pub async fn start_with(builder: reqwest::RequestBuilder, request: Value) -> Frames {
    let response = builder
        .header("content-type", "application/connect+json")
        .body(envelope(&request))
        .send()
        .await
        .expect("start stream");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/connect+json");
    Frames { response, buffer: Vec::new() }
}

pub fn bash(command: &str) -> Value {
    json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", command]}, "stdin": false})
}

pub async fn unary(fake: &FakeE2b, sandbox_id: &str, method: &str, body: Value) -> (u16, Value) {
    let response = envd_post(fake, sandbox_id, method)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("unary call");
    let status = response.status().as_u16();
    (status, response.json().await.expect("unary json body"))
}

/// Decodes Connect envelopes from a streaming body as they arrive.
pub struct Frames {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

#[derive(Debug)]
pub enum Frame {
    Message(u8, Value),
    /// The body ended cleanly; `leftover` bytes did not form a frame.
    Eof {
        leftover: usize,
    },
    /// The connection broke mid-body.
    Broken,
}

impl Frames {
    pub async fn next(&mut self) -> Frame {
        tokio::time::timeout(PATIENCE, self.next_inner()).await.expect("a frame within the patience window")
    }

    async fn next_inner(&mut self) -> Frame {
        loop {
            if self.buffer.len() >= 5 {
                let length = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + length {
                    let flags = self.buffer[0];
                    let payload: Value =
                        serde_json::from_slice(&self.buffer[5..5 + length]).expect("frame payload is JSON");
                    self.buffer.drain(..5 + length);
                    return Frame::Message(flags, payload);
                }
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Frame::Eof { leftover: self.buffer.len() },
                Err(_) => return Frame::Broken,
            }
        }
    }

    /// The next message frame, panicking on anything else.
    pub async fn message(&mut self) -> (u8, Value) {
        match self.next().await {
            Frame::Message(flags, payload) => (flags, payload),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Everything up to and including the end-of-stream frame, skipping keepalives.
    pub async fn collect(&mut self) -> Collected {
        let mut collected = Collected::default();
        loop {
            let (flags, payload) = self.message().await;
            if flags == 0x02 {
                collected.end_of_stream = Some(payload);
                return collected;
            }
            assert_eq!(flags, 0, "data frames carry no flags");
            let event = &payload["event"];
            if let Some(pid) = event["start"]["pid"].as_u64() {
                collected.pid = Some(pid as u32);
            } else if let Some(stdout) = event["data"]["stdout"].as_str() {
                collected.stdout.extend(STANDARD.decode(stdout).unwrap());
            } else if let Some(stderr) = event["data"]["stderr"].as_str() {
                collected.stderr.extend(STANDARD.decode(stderr).unwrap());
            } else if event.get("end").is_some() {
                collected.end = Some(event["end"].clone());
            } else {
                assert!(event.get("keepalive").is_some(), "unexpected event {payload}");
            }
        }
    }
}

#[derive(Default, Debug)]
pub struct Collected {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub end: Option<Value>,
    pub end_of_stream: Option<Value>,
}

impl Collected {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Polls `check` until it holds or the patience runs out.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
