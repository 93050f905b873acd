//! envd, the daemon inside every E2B sandbox: `process.Process` over Connect and the `/files`
//! REST endpoint.
//!
//! envd is reached either at `https://49983-<sandbox>.<domain>` or, when the broker is given a
//! fixed envd URL (self-hosted E2B, tests), at that URL with the sandbox named by the
//! `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers. Both headers are sent either way, as E2B's JS
//! SDK does. Secure sandboxes also need their access token on every call.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};

use super::connect::{self, Code, ConnectError, ServerStream};
use super::error::{Scrubber, api_error};
use super::http::error_chain;
use crate::provider::ProviderError;
use crate::secret::SecretString;

/// The port envd listens on inside the sandbox.
pub const ENVD_PORT: u16 = 49983;
/// How often envd is asked to send a keepalive on an idle stream (E2B's SDK asks for 50 s).
const KEEPALIVE_SECS: u64 = 30;
/// Silence after which a process stream counts as cut: three missed keepalives.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3 * KEEPALIVE_SECS + 5);

/// `process.ProcessConfig`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessConfig {
    #[serde(default)]
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `process.StartRequest`.
#[derive(Debug, Clone, Serialize)]
pub struct StartRequest {
    pub process: ProcessConfig,
    /// False: the process reads an empty stdin. (Omitted, envd would keep it open.)
    pub stdin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Selector {
    pid: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ByPid {
    process: Selector,
}

/// One entry of `process.Process/List`.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedProcess {
    #[serde(default)]
    pub config: ProcessConfig,
    #[serde(default, deserialize_with = "number_or_string")]
    pub pid: u32,
    #[serde(default)]
    pub tag: Option<String>,
}

/// A process event as envd streams it (`StartResponse` / `ConnectResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start {
        pid: u32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    End(EndEvent),
    Keepalive,
    /// A oneof case this client does not know (or `pty` output, which the broker never asks for).
    Other,
}

/// `ProcessEvent.EndEvent`: zero values are left out of envd's JSON, so all default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndEvent {
    #[serde(default, rename = "exitCode", deserialize_with = "number_or_string")]
    pub exit_code: i32,
    #[serde(default)]
    pub exited: bool,
    /// Go's `ProcessState.String()`: `exit status 1`, `signal: killed`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

impl EndEvent {
    /// `(exit_code, signal)` as the broker records them: -1 and the signal number when a signal
    /// ended the process.
    pub fn exit_status(&self) -> (i32, i32) {
        if self.exited {
            return (self.exit_code, 0);
        }
        let signal = self.status.strip_prefix("signal: ").map(signal_number).unwrap_or(0);
        (-1, signal)
    }
}

/// Go's names for signals (`syscall.Signal.String()` on Linux).
fn signal_number(name: &str) -> i32 {
    match name.trim().trim_end_matches(" (core dumped)") {
        "hangup" => libc::SIGHUP,
        "interrupt" => libc::SIGINT,
        "quit" => libc::SIGQUIT,
        "illegal instruction" => libc::SIGILL,
        "trace/breakpoint trap" => libc::SIGTRAP,
        "aborted" => libc::SIGABRT,
        "bus error" => libc::SIGBUS,
        "floating point exception" => libc::SIGFPE,
        "killed" => libc::SIGKILL,
        "user defined signal 1" => libc::SIGUSR1,
        "segmentation fault" => libc::SIGSEGV,
        "user defined signal 2" => libc::SIGUSR2,
        "broken pipe" => libc::SIGPIPE,
        "alarm clock" => libc::SIGALRM,
        "terminated" => libc::SIGTERM,
        _ => 0,
    }
}

#[derive(Debug, Default, Deserialize)]
struct EventWrapper {
    #[serde(default)]
    event: RawEvent,
}

/// The `ProcessEvent` oneof as protojson writes it: exactly one key set.
#[derive(Debug, Default, Deserialize)]
struct RawEvent {
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(default)]
    data: Option<RawData>,
    #[serde(default)]
    end: Option<EndEvent>,
    #[serde(default)]
    keepalive: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawStart {
    #[serde(default, deserialize_with = "number_or_string")]
    pid: u32,
}

#[derive(Debug, Default, Deserialize)]
struct RawData {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
}

impl RawEvent {
    fn into_event(self) -> Result<Event, String> {
        let decode =
            |text: String| STANDARD.decode(text).map(Bytes::from).map_err(|e| format!("bad base64 output: {e}"));
        Ok(match self {
            RawEvent { start: Some(start), .. } => Event::Start { pid: start.pid },
            RawEvent { data: Some(RawData { stdout: Some(out), .. }), .. } => Event::Stdout(decode(out)?),
            RawEvent { data: Some(RawData { stderr: Some(err), .. }), .. } => Event::Stderr(decode(err)?),
            RawEvent { end: Some(end), .. } => Event::End(end),
            RawEvent { keepalive: Some(_), .. } => Event::Keepalive,
            _ => Event::Other,
        })
    }
}

/// Protobuf's JSON mapping writes 64-bit integers as strings and accepts either for 32-bit ones.
fn number_or_string<'de, D: Deserializer<'de>, T>(deserializer: D) -> Result<T, D::Error>
where
    T: std::str::FromStr + TryFrom<i64>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Number(n) => T::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is out of range"))),
        Raw::Text(text) => text.parse().map_err(|_| serde::de::Error::custom(format!("{text:?} is not a number"))),
    }
}

/// A process output stream: envd's events until the end event (or a cut).
pub struct ProcessStream {
    inner: ServerStream,
}

impl ProcessStream {
    /// The next event; `Ok(None)` when the stream ended cleanly (which, before an end event,
    /// still means the subscriber must reattach to learn the outcome).
    pub async fn next(&mut self) -> Result<Option<Event>, connect::StreamError> {
        let Some(wrapper) = self.inner.next::<EventWrapper>().await? else { return Ok(None) };
        wrapper.event.into_event().map(Some).map_err(connect::StreamError::Protocol)
    }
}

/// The envd client of one sandbox.
pub struct Envd {
    http: reqwest::Client,
    /// Ends with `/`.
    base: reqwest::Url,
    sandbox_id: String,
    access_token: Option<SecretString>,
    request_timeout: Duration,
    /// envd's process lifetime on `Start` (`Connect-Timeout-Ms`); `None` = until it exits.
    process_deadline: Option<Duration>,
    scrubber: Scrubber,
}

/// Where envd of a sandbox is: a fixed URL, or the sandbox's own host under `domain`.
pub fn envd_base(fixed: Option<&str>, sandbox_id: &str, domain: &str) -> Result<reqwest::Url, String> {
    let raw = match fixed {
        Some(url) => url.to_owned(),
        None => format!("https://{ENVD_PORT}-{sandbox_id}.{domain}"),
    };
    let with_slash = if raw.ends_with('/') { raw } else { format!("{raw}/") };
    reqwest::Url::parse(&with_slash).map_err(|e| format!("envd URL {with_slash:?}: {e}"))
}

impl Envd {
    pub fn new(
        http: reqwest::Client,
        base: reqwest::Url,
        sandbox_id: String,
        access_token: Option<SecretString>,
        request_timeout: Duration,
        process_deadline: Option<Duration>,
        scrubber: &Scrubber,
    ) -> Envd {
        let scrubber = scrubber.with(access_token.as_ref().map(SecretString::expose));
        Envd { http, base, sandbox_id, access_token, request_timeout, process_deadline, scrubber }
    }

    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_to(method, self.base.join(path).expect("relative envd path"))
    }

    fn files_url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.join("files").expect("relative envd path");
        url.query_pairs_mut().append_pair("path", path);
        url
    }

    fn request_to(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, url)
            .header("e2b-sandbox-id", &self.sandbox_id)
            .header("e2b-sandbox-port", ENVD_PORT.to_string());
        if let Some(token) = &self.access_token {
            request = request.header("x-access-token", token.expose());
        }
        request
    }

    /// `process.Process/Start`: the stream, whose first event should be `start`.
    pub async fn start(&self, request: &StartRequest) -> Result<ProcessStream, ConnectError> {
        let mut call = self
            .request(reqwest::Method::POST, "process.Process/Start")
            .header("keepalive-ping-interval", KEEPALIVE_SECS.to_string());
        // On Start envd takes the Connect deadline as the process's lifetime, not the call's.
        if let Some(deadline) = self.process_deadline {
            call = call.header("connect-timeout-ms", deadline.as_millis().to_string());
        }
        let inner =
            tokio::time::timeout(self.request_timeout, connect::open_stream(call, request, STREAM_IDLE_TIMEOUT))
                .await
                .map_err(|_| self.timed_out())??;
        Ok(ProcessStream { inner })
    }

    /// Starts a short helper command and waits for its end (at most `deadline`).
    pub async fn run_helper(&self, cmd: &str, args: Vec<String>, deadline: Duration) -> Result<EndEvent, ConnectError> {
        let request = StartRequest {
            process: ProcessConfig { cmd: cmd.to_owned(), args, envs: BTreeMap::new(), cwd: None },
            stdin: false,
            tag: None,
        };
        let call = self
            .request(reqwest::Method::POST, "process.Process/Start")
            .header("connect-timeout-ms", deadline.as_millis().to_string());
        let run = async {
            let mut stream = ProcessStream { inner: connect::open_stream(call, &request, deadline).await? };
            loop {
                match stream.next().await {
                    Ok(Some(Event::End(end))) => return Ok(end),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(ConnectError::new(Code::Unavailable, "helper stream ended without an end event"));
                    }
                    Err(connect::StreamError::Failed(error)) => return Err(error),
                    Err(error) => return Err(ConnectError::new(Code::Unavailable, error.to_string())),
                }
            }
        };
        tokio::time::timeout(deadline + self.request_timeout, run).await.map_err(|_| self.timed_out())?
    }

    /// `process.Process/Connect`: reattaches to a running process (live output only; envd keeps
    /// an exited process's end event for 30 s).
    pub async fn connect(&self, pid: u32) -> Result<ProcessStream, ConnectError> {
        let call = self
            .request(reqwest::Method::POST, "process.Process/Connect")
            .header("keepalive-ping-interval", KEEPALIVE_SECS.to_string());
        let request = ByPid { process: Selector { pid } };
        let inner =
            tokio::time::timeout(self.request_timeout, connect::open_stream(call, &request, STREAM_IDLE_TIMEOUT))
                .await
                .map_err(|_| self.timed_out())??;
        Ok(ProcessStream { inner })
    }

    pub async fn send_input(&self, pid: u32, data: &[u8]) -> Result<(), ConnectError> {
        let request = serde_json::json!({ "process": { "pid": pid }, "input": { "stdin": STANDARD.encode(data) } });
        self.unary("process.Process/SendInput", &request).await
    }

    pub async fn close_stdin(&self, pid: u32) -> Result<(), ConnectError> {
        self.unary("process.Process/CloseStdin", &ByPid { process: Selector { pid } }).await
    }

    /// envd signals only the process itself (`SIGNAL_SIGTERM` or `SIGNAL_SIGKILL`).
    pub async fn send_signal(&self, pid: u32, signal: &str) -> Result<(), ConnectError> {
        let request = serde_json::json!({ "process": { "pid": pid }, "signal": signal });
        self.unary("process.Process/SendSignal", &request).await
    }

    /// `filesystem.Filesystem/Stat`: the entry's `type` (`FILE_TYPE_…`) and `permissions` (Go's
    /// `FileMode` string: a leading `p`, `S`, `D` or `c` is a FIFO, socket or device).
    pub async fn stat(&self, path: &str) -> Result<(String, String), ConnectError> {
        let call = self.request(reqwest::Method::POST, "filesystem.Filesystem/Stat");
        let response: serde_json::Value =
            connect::unary(call, &serde_json::json!({ "path": path }), self.request_timeout).await?;
        let entry = &response["entry"];
        let text = |field: &str| entry[field].as_str().unwrap_or_default().to_owned();
        Ok((text("type"), text("permissions")))
    }

    /// `filesystem.Filesystem/MakeDir`; an existing directory is fine.
    pub async fn make_dir(&self, path: &str) -> Result<(), ConnectError> {
        match self.unary("filesystem.Filesystem/MakeDir", &serde_json::json!({ "path": path })).await {
            Err(error) if error.code == Code::AlreadyExists => Ok(()),
            other => other,
        }
    }

    pub async fn list(&self) -> Result<Vec<ListedProcess>, ConnectError> {
        #[derive(Deserialize)]
        struct ListResponse {
            #[serde(default)]
            processes: Vec<ListedProcess>,
        }
        let call = self.request(reqwest::Method::POST, "process.Process/List");
        let response: ListResponse = connect::unary(call, &serde_json::json!({}), self.request_timeout).await?;
        Ok(response.processes)
    }

    async fn unary<Req: Serialize>(&self, method: &str, request: &Req) -> Result<(), ConnectError> {
        let call = self.request(reqwest::Method::POST, method);
        let _: serde_json::Value = connect::unary(call, request, self.request_timeout).await?;
        Ok(())
    }

    fn timed_out(&self) -> ConnectError {
        ConnectError::new(
            Code::DeadlineExceeded,
            format!("envd did not answer within {}s (SANDBOX_E2B_REQUEST_TIMEOUT)", self.request_timeout.as_secs()),
        )
    }

    /// `POST /files?path=…` as multipart (part `file`), which every envd version accepts.
    /// Parent directories are created; an existing file is replaced.
    pub async fn write_file(&self, path: &str, content: Bytes) -> Result<(), ProviderError> {
        let boundary = format!("agentstudio-{}", uuid::Uuid::new_v4().simple());
        let name = path.rsplit('/').next().unwrap_or(path).replace(['"', '\r', '\n'], "_");
        let mut body = BytesMut::with_capacity(content.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let call = self
            .request_to(reqwest::Method::POST, self.files_url(path))
            .header(reqwest::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .timeout(self.request_timeout)
            .body(body.freeze());
        let response = call.send().await.map_err(|e| self.transport("write file", &e))?;
        if !response.status().is_success() {
            return Err(self.files_error("write file", response).await);
        }
        Ok(())
    }

    /// `GET /files?path=…`, refusing more than `max_bytes`.
    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Bytes, ProviderError> {
        let call = self.request_to(reqwest::Method::GET, self.files_url(path)).timeout(self.request_timeout);
        let mut response = call.send().await.map_err(|e| self.transport("read file", &e))?;
        if !response.status().is_success() {
            return Err(self.files_error("read file", response).await);
        }
        let too_large = || {
            ProviderError::TooLarge(format!(
                "file size limit: {path} is larger than {max_bytes} bytes (SANDBOX_MAX_FILE_BYTES)"
            ))
        };
        if response.content_length().is_some_and(|len| len > max_bytes) {
            return Err(too_large());
        }
        let mut content = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport("read file", &e))? {
            if (content.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            content.extend_from_slice(&chunk);
        }
        Ok(content.freeze())
    }

    fn transport(&self, op: &str, error: &reqwest::Error) -> ProviderError {
        ProviderError::Unavailable(self.scrubber.scrub(&format!("e2b envd {op}: {}", error_chain(error))))
    }

    async fn files_error(&self, op: &str, response: reqwest::Response) -> ProviderError {
        let status = response.status().as_u16();
        let body = super::http::read_limited(response, connect::MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
        match api_error(&format!("envd {op}"), status, &body, &self.scrubber) {
            // 400 from /files: the path is a directory or otherwise unusable.
            ProviderError::FailedPrecondition(message) if status == 400 => {
                ProviderError::InvalidArgument { field: "path", message }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        serde_json::from_str::<EventWrapper>(json).unwrap().event.into_event().unwrap()
    }

    #[test]
    fn process_events_decode_from_protojson() {
        assert_eq!(event(r#"{"event":{"start":{"pid":42}}}"#), Event::Start { pid: 42 });
        assert_eq!(event(r#"{"event":{"data":{"stdout":"aGkK"}}}"#), Event::Stdout(Bytes::from_static(b"hi\n")));
        assert_eq!(event(r#"{"event":{"data":{"stderr":"b29wcw=="}}}"#), Event::Stderr(Bytes::from_static(b"oops")));
        assert_eq!(event(r#"{"event":{"keepalive":{}}}"#), Event::Keepalive);
        assert_eq!(event(r#"{"event":{"data":{"pty":"eA=="}}}"#), Event::Other);
        assert_eq!(event(r#"{"event":{"somethingNew":{}}}"#), Event::Other);
        // Exit code 0 and exited=false are left out; the code may also come as a string.
        let Event::End(end) = event(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#) else { panic!() };
        assert_eq!(end.exit_status(), (0, 0));
        let Event::End(end) = event(r#"{"event":{"end":{"exitCode":"3","exited":true}}}"#) else { panic!() };
        assert_eq!(end.exit_status(), (3, 0));
        let Event::End(end) = event(r#"{"event":{"end":{"exitCode":-1,"status":"signal: killed"}}}"#) else { panic!() };
        assert_eq!(end.exit_status(), (-1, libc::SIGKILL));
        let Event::End(end) = event(r#"{"event":{"end":{"exitCode":-1,"status":"signal: terminated"}}}"#) else {
            panic!()
        };
        assert_eq!(end.exit_status(), (-1, libc::SIGTERM));
        let Event::End(end) =
            event(r#"{"event":{"end":{"exitCode":-1,"status":"signal: segmentation fault (core dumped)"}}}"#)
        else {
            panic!()
        };
        assert_eq!(end.exit_status(), (-1, libc::SIGSEGV));
    }

    #[test]
    fn start_requests_use_the_proto_json_names() {
        let request = StartRequest {
            process: ProcessConfig {
                cmd: "sh".into(),
                args: vec!["-c".into(), "echo hi".into()],
                envs: BTreeMap::from([("A".into(), "1".into())]),
                cwd: Some("/workspace".into()),
            },
            stdin: false,
            tag: Some("agentstudio:p1".into()),
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({
                "process": {"cmd": "sh", "args": ["-c", "echo hi"], "envs": {"A": "1"}, "cwd": "/workspace"},
                "stdin": false,
                "tag": "agentstudio:p1",
            })
        );
    }

    #[test]
    fn envd_is_found_by_host_or_by_the_fixed_url() {
        assert_eq!(envd_base(None, "abc123", "e2b.app").unwrap().as_str(), "https://49983-abc123.e2b.app/");
        assert_eq!(
            envd_base(Some("http://127.0.0.1:7000"), "abc", "e2b.app").unwrap().as_str(),
            "http://127.0.0.1:7000/"
        );
    }

    #[test]
    fn listed_processes_accept_string_pids() {
        let listed: Vec<ListedProcess> =
            serde_json::from_str(r#"[{"config":{"cmd":"sh","args":["-c","x"]},"pid":"12","tag":"agentstudio:p2"}]"#)
                .unwrap();
        assert_eq!((listed[0].pid, listed[0].tag.as_deref()), (12, Some("agentstudio:p2")));
    }
}
