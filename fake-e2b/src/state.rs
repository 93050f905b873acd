//! State shared by the control-plane and envd servers: sandboxes, recorded requests, injected
//! failures and the knobs tests turn at run time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::processes::Processes;
use crate::templates::Registry;
use crate::{FakeOptions, RateLimit, Recorded};

/// How many requests `FakeE2b::requests()` remembers; the oldest are dropped first so a long
/// benchmark cannot grow the log without bound.
pub(crate) const MAX_RECORDED_REQUESTS: usize = 10_000;

/// The largest request body either server accepts (uploads included); bigger bodies get 413.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Team slug used in template names (`<slug>/<name>`), as E2B namespaces them.
pub(crate) const TEAM_SLUG: &str = "fake-team";

/// A response injected with `fail_next`, served once to the first matching request.
pub(crate) struct InjectedFailure {
    pub method: String,
    pub path_prefix: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SandboxState {
    Running,
    Paused,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
        }
    }
}

/// The sandbox's filesystem: a temporary directory standing in for the VM's `/`.
pub(crate) struct SandboxFs {
    root: tempfile::TempDir,
}

impl SandboxFs {
    fn new(id: &str) -> std::io::Result<SandboxFs> {
        let root = tempfile::Builder::new().prefix(&format!("fake-e2b-{id}-")).tempdir()?;
        std::fs::create_dir_all(root.path().join("home/user"))?;
        std::fs::create_dir_all(root.path().join("root"))?;
        std::fs::create_dir_all(root.path().join("tmp"))?;
        Ok(SandboxFs { root })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Maps a sandbox path (absolute, as the client names it) to the host path under the root.
    /// `..` cannot climb above the root: it is resolved lexically, as if the root were `/`.
    pub fn host_path(&self, sandbox_path: &str) -> PathBuf {
        let mut host = self.root.path().to_path_buf();
        let mut depth = 0usize;
        for component in Path::new(sandbox_path).components() {
            match component {
                Component::Normal(part) => {
                    host.push(part);
                    depth += 1;
                }
                Component::ParentDir if depth > 0 => {
                    host.pop();
                    depth -= 1;
                }
                _ => {}
            }
        }
        host
    }
}

/// Home directory of a sandbox user, as envd resolves relative paths against it.
pub(crate) fn home_of(user: &str) -> String {
    if user == "root" { "/root".to_string() } else { format!("/home/{user}") }
}

pub(crate) struct Sandbox {
    pub id: String,
    pub template_id: String,
    pub alias: Option<String>,
    pub client_id: String,
    pub envd_access_token: Option<String>,
    pub started_at: SystemTime,
    pub end_at: SystemTime,
    /// Start of the continuous-runtime window that `max_instance_length` caps; resuming resets it.
    pub window_start: SystemTime,
    pub state: SandboxState,
    pub auto_pause: bool,
    pub auto_resume: bool,
    pub metadata: Option<BTreeMap<String, String>>,
    pub env_vars: BTreeMap<String, String>,
    pub allow_internet_access: Option<bool>,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    pub fs: Arc<SandboxFs>,
    pub processes: Arc<Processes>,
}

pub(crate) struct NewSandboxSpec {
    pub template_id: String,
    pub alias: Option<String>,
    pub timeout: Duration,
    pub secure: bool,
    pub auto_pause: bool,
    pub auto_resume: bool,
    pub metadata: Option<BTreeMap<String, String>>,
    pub env_vars: BTreeMap<String, String>,
    pub allow_internet_access: Option<bool>,
    pub cpu_count: u32,
    pub memory_mb: u32,
}

pub(crate) struct Shared {
    pub api_key: String,
    pub envd_version: String,
    pub exit_code_retention: Duration,
    pub max_instance_length: Duration,
    pub build_step_delay: Duration,
    pub rate_limit: Option<RateLimit>,
    pub api_url: String,
    pub concurrency_limit: AtomicUsize,
    /// Running and paused sandboxes; running ones are bounded by the concurrency limit.
    pub sandboxes: Mutex<HashMap<String, Sandbox>>,
    /// Templates and builds; grows only with the builds a test requests (nothing is evicted).
    pub registry: Mutex<Registry>,
    /// Bounded by `MAX_RECORDED_REQUESTS`.
    pub recorded: Mutex<VecDeque<Recorded>>,
    /// One entry per `fail_next` call, removed when served.
    pub failures: Mutex<Vec<InjectedFailure>>,
    pub cut_after: Mutex<Option<usize>>,
    pub handler_nanos: AtomicU64,
    /// Fixed rate-limit window: (window start, requests counted in it).
    pub rate_window: Mutex<(Instant, u32)>,
    /// Woken whenever a sandbox's end time changes, so the evictor recomputes its sleep.
    pub evictor_wakeup: Notify,
    pub shutdown: CancellationToken,
}

pub(crate) enum InsertError {
    OverLimit(usize),
    Io(std::io::Error),
}

pub(crate) fn running_in(sandboxes: &HashMap<String, Sandbox>) -> usize {
    sandboxes.values().filter(|sandbox| sandbox.state == SandboxState::Running).count()
}

/// The 429 text E2B answers when the team's concurrent-sandbox limit is reached.
pub(crate) fn concurrency_message(limit: usize) -> String {
    format!(
        "you have reached the maximum number of concurrent E2B sandboxes ({limit}). If you need more, please visit 'https://e2b.dev/docs/billing'"
    )
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not wedge the fake.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn new(options: &FakeOptions, api_url: String) -> Shared {
        Shared {
            api_key: options.api_key.clone(),
            envd_version: options.envd_version.clone(),
            exit_code_retention: options.exit_code_retention,
            max_instance_length: options.max_instance_length,
            build_step_delay: options.build_step_delay,
            rate_limit: options.rate_limit,
            api_url,
            concurrency_limit: AtomicUsize::new(options.concurrency_limit),
            sandboxes: Mutex::new(HashMap::new()),
            registry: Mutex::new(Registry::with_templates(&options.templates, &options.envd_version)),
            recorded: Mutex::new(VecDeque::new()),
            failures: Mutex::new(Vec::new()),
            cut_after: Mutex::new(None),
            handler_nanos: AtomicU64::new(0),
            rate_window: Mutex::new((Instant::now(), 0)),
            evictor_wakeup: Notify::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Creates a running sandbox unless that would exceed the concurrency limit; the check and
    /// the insert happen under one lock so concurrent creates cannot overshoot it.
    pub fn insert_sandbox(&self, spec: NewSandboxSpec) -> Result<String, InsertError> {
        let id = format!("i{}", random_id(20));
        let fs = Arc::new(SandboxFs::new(&id).map_err(InsertError::Io)?);
        let now = SystemTime::now();
        let sandbox = Sandbox {
            id: id.clone(),
            template_id: spec.template_id,
            alias: spec.alias,
            client_id: "6532622b".to_string(),
            envd_access_token: spec.secure.then(|| random_hex(64)),
            started_at: now,
            end_at: now + spec.timeout,
            window_start: now,
            state: SandboxState::Running,
            auto_pause: spec.auto_pause,
            auto_resume: spec.auto_resume,
            metadata: spec.metadata,
            env_vars: spec.env_vars,
            allow_internet_access: spec.allow_internet_access,
            cpu_count: spec.cpu_count,
            memory_mb: spec.memory_mb,
            disk_size_mb: 10_240,
            fs,
            processes: Processes::new(self.exit_code_retention, self.shutdown.child_token()),
        };
        {
            let mut sandboxes = lock(&self.sandboxes);
            let limit = self.concurrency_limit.load(Ordering::Relaxed);
            if running_in(&sandboxes) >= limit {
                return Err(InsertError::OverLimit(limit));
            }
            sandboxes.insert(id.clone(), sandbox);
        }
        self.evictor_wakeup.notify_one();
        Ok(id)
    }

    /// Kills a sandbox: every process group it started gets SIGKILL, its directory goes away.
    pub fn kill_sandbox(&self, id: &str) -> bool {
        let removed = lock(&self.sandboxes).remove(id);
        match removed {
            Some(sandbox) => {
                sandbox.processes.kill_all();
                true
            }
            None => false,
        }
    }

    pub fn pause_locked(sandbox: &mut Sandbox) {
        sandbox.state = SandboxState::Paused;
        sandbox.processes.pause();
    }

    pub fn resume_locked(&self, sandbox: &mut Sandbox, timeout: Duration) {
        let now = SystemTime::now();
        sandbox.state = SandboxState::Running;
        sandbox.window_start = now;
        sandbox.end_at = now + timeout.min(self.max_instance_length);
        sandbox.processes.resume();
        self.evictor_wakeup.notify_one();
    }

    /// Kills every sandbox; used when the fake is dropped.
    pub fn kill_everything(&self) {
        let ids: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        for id in ids {
            self.kill_sandbox(&id);
        }
    }

    pub fn take_failure(&self, method: &str, path: &str) -> Option<InjectedFailure> {
        let mut failures = lock(&self.failures);
        let index = failures.iter().position(|failure| {
            failure.method.eq_ignore_ascii_case(method) && path.starts_with(&failure.path_prefix)
        })?;
        Some(failures.remove(index))
    }

    pub fn add_handler_time(&self, elapsed: Duration) {
        self.handler_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Expires sandboxes at their end time (kill, or pause when `autoPause`), like E2B's evictor.
pub(crate) async fn run_evictor(shared: Arc<Shared>) {
    loop {
        let now = SystemTime::now();
        let mut next: Option<SystemTime> = None;
        let mut due = Vec::new();
        {
            let sandboxes = lock(&shared.sandboxes);
            for sandbox in sandboxes.values().filter(|sandbox| sandbox.state == SandboxState::Running) {
                if sandbox.end_at <= now {
                    due.push(sandbox.id.clone());
                } else {
                    next = Some(next.map_or(sandbox.end_at, |next| next.min(sandbox.end_at)));
                }
            }
        }
        for id in due {
            let pause = {
                let mut sandboxes = lock(&shared.sandboxes);
                match sandboxes.get_mut(&id) {
                    Some(sandbox) if sandbox.auto_pause => {
                        Shared::pause_locked(sandbox);
                        true
                    }
                    _ => false,
                }
            };
            if !pause {
                shared.kill_sandbox(&id);
            }
        }
        let sleep_for = next
            .map_or(Duration::from_secs(3600), |next| next.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.evictor_wakeup.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }
}

/// `n` characters from `[a-z0-9]`, the alphabet of E2B's ids.
pub(crate) fn random_id(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes(n).into_iter().map(|byte| ALPHABET[usize::from(byte) % ALPHABET.len()] as char).collect()
}

pub(crate) fn random_hex(n: usize) -> String {
    random_bytes(n.div_ceil(2)).iter().map(|byte| format!("{byte:02x}")).collect::<String>()[..n].to_string()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n + 16);
    while bytes.len() < n {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes.truncate(n);
    bytes
}

/// RFC 3339 in UTC with a `Z`, as Go's `time.Time` marshals.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
pub(crate) fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => match (hex_value(bytes[index + 1]), hex_value(bytes[index + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    index += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).and_then(|digit| u8::try_from(digit).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_and_percent() {
        assert_eq!(parse_form("a=b%3Dc&d+e=f%26g"), vec![("a".into(), "b=c".into()), ("d e".into(), "f&g".into())]);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn host_paths_cannot_escape_the_root() {
        let fs = SandboxFs::new("test").unwrap();
        assert_eq!(fs.host_path("/home/user/a.txt"), fs.root().join("home/user/a.txt"));
        assert_eq!(fs.host_path("/../../etc/passwd"), fs.root().join("etc/passwd"));
        assert_eq!(fs.host_path("/home/user/../../x"), fs.root().join("x"));
    }

    #[test]
    fn ids_use_the_e2b_alphabet() {
        let id = random_id(20);
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit()));
        assert_eq!(random_hex(40).len(), 40);
    }
}
