//! E2B's control plane (REST, `https://api.<domain>`): sandboxes and template builds.
//!
//! Every call carries `X-API-Key` and a total timeout. A 429 from the request rate limiter is
//! retried, honouring `Retry-After`, only for idempotent calls (a GET, a DELETE, setting an
//! absolute timeout); everything else fails with its meaning kept (see [`super::error`]).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Scrubber, api_error, is_concurrency_limit};
use super::http::{error_chain, read_limited, retry_after};
use crate::provider::ProviderError;
use crate::secret::SecretString;

/// Rate-limited retries of one idempotent call before giving up.
const MAX_RATE_LIMIT_RETRIES: u32 = 3;
/// Longest `Retry-After` honoured; a longer one fails the call instead of stalling the broker.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Wait before a rate-limited retry when the 429 names none (doubles per retry).
const DEFAULT_RETRY_WAIT: Duration = Duration::from_millis(500);
/// Largest control-plane response read (a page of 100 listed sandboxes is far below it).
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How much of an error body is read.
const MAX_ERROR_BYTES: usize = 16 << 10;
/// Pages of `GET /v2/sandboxes` followed at most (100 sandboxes each).
const MAX_LIST_PAGES: usize = 100;

/// `POST /sandboxes`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until E2B applies `auto_pause` (pause) or kills it, unless extended.
    pub timeout: u64,
    pub auto_pause: bool,
    /// envd then requires the access token the response carries: nothing else can drive it.
    pub secure: bool,
    /// The API's one snake_case field.
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: bool,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
}

/// A created, connected or resumed sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "templateID", default)]
    pub template_id: String,
    #[serde(default)]
    pub envd_version: String,
    #[serde(default)]
    pub envd_access_token: Option<String>,
    /// `None`: the client's own domain.
    #[serde(default)]
    pub domain: Option<String>,
}

/// One entry of `GET /v2/sandboxes`, or `GET /sandboxes/{id}` (which adds the token and domain).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "templateID", default)]
    pub template_id: String,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: String,
    /// RFC 3339: when E2B ends (or pauses) it unless extended.
    #[serde(default)]
    pub end_at: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `running` or `paused`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub envd_version: String,
    #[serde(default)]
    pub envd_access_token: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
}

/// `POST /v3/templates`: a new build of a (possibly new) template.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequest {
    /// `name:tag`.
    pub name: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TemplateBuildCreated {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
}

/// `GET /templates/{templateID}/files/{hash}`.
#[derive(Debug, Clone, Deserialize)]
pub struct FileUploadLink {
    #[serde(default)]
    pub present: bool,
    #[serde(default)]
    pub url: Option<String>,
}

/// `POST /v2/templates/{templateID}/builds/{buildID}` (`TemplateBuildStartV2`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    pub from_image: String,
    pub force: bool,
    pub steps: Vec<BuildStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildStep {
    #[serde(rename = "type")]
    pub kind: String,
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
}

/// `GET /templates/{templateID}/builds/{buildID}/status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    /// `building`, `waiting`, `ready` or `error`.
    pub status: String,
    #[serde(default)]
    pub log_entries: Vec<BuildLogEntry>,
    #[serde(default)]
    pub reason: Option<BuildReason>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BuildLogEntry {
    #[serde(default)]
    pub level: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub step: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReason {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub log_entries: Vec<BuildLogEntry>,
}

/// The control-plane client. Cheap to share behind an `Arc`.
pub struct ControlPlane {
    http: reqwest::Client,
    /// Ends with `/`, so relative joins keep any path prefix of a self-hosted API.
    base: reqwest::Url,
    api_key: SecretString,
    scrubber: Scrubber,
    request_timeout: Duration,
}

impl ControlPlane {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        api_key: SecretString,
        request_timeout: Duration,
    ) -> Result<ControlPlane, String> {
        let with_slash = if base.ends_with('/') { base.to_owned() } else { format!("{base}/") };
        let base = reqwest::Url::parse(&with_slash).map_err(|e| format!("E2B API URL {base:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("E2B API URL {base} must be http(s)"));
        }
        let scrubber = Scrubber::new([api_key.expose()]);
        Ok(ControlPlane { http, base, api_key, scrubber, request_timeout })
    }

    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base` + the given path segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("http(s) URLs have a path").pop_if_empty().extend(segments);
        url
    }

    pub async fn create_sandbox(&self, request: &NewSandbox) -> Result<SandboxInfo, ProviderError> {
        let url = self.url(&["sandboxes"]);
        self.json(Method::POST, url, Some(json_body(request)?), false, "create sandbox").await
    }

    pub async fn get_sandbox(&self, sandbox_id: &str) -> Result<ListedSandbox, ProviderError> {
        let url = self.url(&["sandboxes", sandbox_id]);
        self.json(Method::GET, url, None, true, "get sandbox").await
    }

    /// Running and paused sandboxes whose metadata holds every pair of `metadata`.
    pub async fn list_sandboxes(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<ListedSandbox>, ProviderError> {
        let mut found = Vec::new();
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut url = self.url(&["v2", "sandboxes"]);
            {
                let mut query = url.query_pairs_mut();
                if !metadata.is_empty() {
                    query.append_pair("metadata", &metadata_query(metadata));
                }
                query.append_pair("state", "running,paused");
                query.append_pair("limit", "100");
                if let Some(token) = &next_token {
                    query.append_pair("nextToken", token);
                }
            }
            let response = self.send(Method::GET, url, None, true, "list sandboxes").await?;
            next_token = response
                .headers()
                .get("x-next-token")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            let page: Vec<ListedSandbox> = self.decode(response, "list sandboxes").await?;
            found.extend(page);
            if next_token.is_none() {
                return Ok(found);
            }
        }
        tracing::warn!(pages = MAX_LIST_PAGES, "listing E2B sandboxes stopped at the page limit");
        Ok(found)
    }

    /// Kills a running or paused sandbox. `NotFound` when it is already gone.
    pub async fn kill_sandbox(&self, sandbox_id: &str) -> Result<(), ProviderError> {
        let url = self.url(&["sandboxes", sandbox_id]);
        self.send(Method::DELETE, url, None, true, "kill sandbox").await.map(drop)
    }

    /// E2B ends (or pauses) the sandbox `timeout` from now; E2B caps it at the plan's maximum.
    pub async fn set_timeout(&self, sandbox_id: &str, timeout: Duration) -> Result<(), ProviderError> {
        let url = self.url(&["sandboxes", sandbox_id, "timeout"]);
        let body = json_body(&serde_json::json!({ "timeout": timeout.as_secs().max(1) }))?;
        // Idempotent: the end is "now + timeout" whichever attempt lands.
        self.send(Method::POST, url, Some(body), true, "set sandbox timeout").await.map(drop)
    }

    pub async fn pause_sandbox(&self, sandbox_id: &str) -> Result<(), ProviderError> {
        let url = self.url(&["sandboxes", sandbox_id, "pause"]);
        self.send(Method::POST, url, Some(json_body(&serde_json::json!({}))?), false, "pause sandbox").await.map(drop)
    }

    /// Returns a running sandbox (resuming it when paused), extending its timeout to at least
    /// `timeout` from now.
    pub async fn connect_sandbox(&self, sandbox_id: &str, timeout: Duration) -> Result<SandboxInfo, ProviderError> {
        let url = self.url(&["sandboxes", sandbox_id, "connect"]);
        let body = json_body(&serde_json::json!({ "timeout": timeout.as_secs().max(1) }))?;
        // Idempotent: connecting to a running sandbox changes nothing but a longer TTL.
        self.json(Method::POST, url, Some(body), true, "connect to sandbox").await
    }

    pub async fn request_template_build(
        &self,
        request: &TemplateBuildRequest,
    ) -> Result<TemplateBuildCreated, ProviderError> {
        let url = self.url(&["v3", "templates"]);
        self.json(Method::POST, url, Some(json_body(request)?), false, "request template build").await
    }

    pub async fn file_upload_link(&self, template_id: &str, hash: &str) -> Result<FileUploadLink, ProviderError> {
        let url = self.url(&["templates", template_id, "files", hash]);
        self.json(Method::GET, url, None, true, "get file upload link").await
    }

    /// PUTs `content` to a presigned upload URL: an explicit Content-Length (presigned URLs
    /// refuse chunked bodies) and never the API key (the URL is a third party's).
    pub async fn upload(&self, url: &str, content: Bytes, timeout: Duration) -> Result<(), ProviderError> {
        // A `Bytes` body has a known length, so it goes out with Content-Length, never chunked.
        let response = self.http.put(url).timeout(timeout).body(content).send().await.map_err(|e| {
            ProviderError::Unavailable(self.scrubber.scrub(&format!("e2b upload: {}", error_chain(&e))))
        })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = read_limited(response, MAX_ERROR_BYTES).await.unwrap_or_default();
            return Err(api_error("upload template files", status, &body, &self.scrubber));
        }
        Ok(())
    }

    pub async fn start_template_build(
        &self,
        template_id: &str,
        build_id: &str,
        start: &BuildStart,
    ) -> Result<(), ProviderError> {
        let url = self.url(&["v2", "templates", template_id, "builds", build_id]);
        self.send(Method::POST, url, Some(json_body(start)?), false, "start template build").await.map(drop)
    }

    pub async fn build_status(
        &self,
        template_id: &str,
        build_id: &str,
        logs_offset: usize,
    ) -> Result<BuildStatus, ProviderError> {
        let mut url = self.url(&["templates", template_id, "builds", build_id, "status"]);
        url.query_pairs_mut().append_pair("logsOffset", &logs_offset.to_string()).append_pair("limit", "100");
        self.json(Method::GET, url, None, true, "get build status").await
    }

    /// Points `tags` of the template at the build `target` (`name:tag`) names.
    pub async fn assign_tags(&self, target: &str, tags: &[&str]) -> Result<(), ProviderError> {
        let url = self.url(&["templates", "tags"]);
        let body = json_body(&serde_json::json!({ "target": target, "tags": tags }))?;
        // Idempotent: the tags end up on that build whichever attempt lands.
        self.send(Method::POST, url, Some(body), true, "assign template tags").await.map(drop)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<Bytes>,
        idempotent: bool,
        op: &'static str,
    ) -> Result<T, ProviderError> {
        let response = self.send(method, url, body, idempotent, op).await?;
        self.decode(response, op).await
    }

    async fn decode<T: DeserializeOwned>(&self, response: reqwest::Response, op: &str) -> Result<T, ProviderError> {
        let body = read_limited(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| ProviderError::Unavailable(self.scrubber.scrub(&format!("e2b {op}: {e}"))))?;
        serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Unavailable(format!("e2b {op}: unexpected response: {e}")))
    }

    /// Sends one call, retrying a rate-limited idempotent one; returns a 2xx response.
    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<Bytes>,
        idempotent: bool,
        op: &'static str,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut retries = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("x-api-key", self.api_key.expose())
                .timeout(self.request_timeout);
            if let Some(body) = &body {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
            }
            let response = request.send().await.map_err(|e| {
                let why = if e.is_timeout() {
                    format!("no answer within {}s", self.request_timeout.as_secs())
                } else {
                    error_chain(&e)
                };
                ProviderError::Unavailable(self.scrubber.scrub(&format!("e2b {op}: {why}")))
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let wait = retry_after(response.headers());
            let body_bytes = read_limited(response, MAX_ERROR_BYTES).await.unwrap_or_default();
            let rate_limited = status.as_u16() == 429 && !is_concurrency_limit(&String::from_utf8_lossy(&body_bytes));
            if rate_limited && idempotent && retries < MAX_RATE_LIMIT_RETRIES {
                let wait = wait.unwrap_or(DEFAULT_RETRY_WAIT * 2u32.pow(retries));
                if wait <= MAX_RETRY_WAIT {
                    tracing::info!(
                        op,
                        ?wait,
                        retry = retries + 1,
                        "e2b rate limited the call; retrying after Retry-After"
                    );
                    tokio::time::sleep(wait).await;
                    retries += 1;
                    continue;
                }
            }
            return Err(api_error(op, status.as_u16(), &body_bytes, &self.scrubber));
        }
    }
}

fn json_body<T: Serialize>(value: &T) -> Result<Bytes, ProviderError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Unavailable(format!("cannot encode request: {e}")))
}

/// The `metadata` list filter: `k=v&k2=v2` with each key and value URL-encoded (the query
/// serializer then encodes the whole string once more, as the API expects).
fn metadata_query(metadata: &BTreeMap<String, String>) -> String {
    let mut scratch = reqwest::Url::parse("http://x/").expect("literal URL");
    {
        let mut pairs = scratch.query_pairs_mut();
        for (key, value) in metadata {
            pairs.append_pair(key, value);
        }
    }
    scratch.query().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sandbox_json_uses_the_api_names() {
        let request = NewSandbox {
            template_id: "agentstudio-worker:v-0123".into(),
            timeout: 300,
            auto_pause: true,
            secure: true,
            allow_internet_access: false,
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            env_vars: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "templateID": "agentstudio-worker:v-0123",
                "timeout": 300,
                "autoPause": true,
                "secure": true,
                "allow_internet_access": false,
                "metadata": {"k": "v"},
                "envVars": {"LANG": "C.UTF-8"},
            })
        );
    }

    #[test]
    fn the_metadata_filter_is_encoded_twice() {
        let metadata = BTreeMap::from([("a b".to_owned(), "x&y".to_owned()), ("k".to_owned(), "v".to_owned())]);
        assert_eq!(metadata_query(&metadata), "a+b=x%26y&k=v");
        let mut url = reqwest::Url::parse("https://api.e2b.app/v2/sandboxes").unwrap();
        url.query_pairs_mut().append_pair("metadata", &metadata_query(&metadata));
        assert_eq!(url.query(), Some("metadata=a%2Bb%3Dx%2526y%26k%3Dv"));
    }

    #[test]
    fn urls_keep_a_path_prefix_and_encode_segments() {
        let http = reqwest::Client::new();
        let plane =
            ControlPlane::new(http, "http://127.0.0.1:9/api", SecretString::new("k"), Duration::from_secs(1)).unwrap();
        assert_eq!(plane.url(&["sandboxes", "a/b"]).as_str(), "http://127.0.0.1:9/api/sandboxes/a%2Fb");
        assert!(
            ControlPlane::new(reqwest::Client::new(), "ftp://x", SecretString::new("k"), Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn listed_sandboxes_tolerate_missing_and_unknown_fields() {
        let listed: Vec<ListedSandbox> = serde_json::from_str(
            r#"[{"sandboxID":"abc","templateID":"t","clientID":"c","startedAt":"2026-01-01T00:00:00Z",
                 "endAt":"2026-01-01T00:05:00Z","cpuCount":2,"memoryMB":512,"diskSizeMB":1,
                 "metadata":{"k":"v"},"state":"paused","envdVersion":"0.6.13","newField":1}]"#,
        )
        .unwrap();
        assert_eq!(listed[0].state, "paused");
        assert_eq!(listed[0].metadata["k"], "v");
        assert!(listed[0].envd_access_token.is_none());
    }
}
