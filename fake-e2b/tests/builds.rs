//! The v2 template build flow: request, upload links, start with steps, status polling with
//! `logsOffset`, tags, and spawning sandboxes from the result.

mod common;

use common::{PATIENCE, client};
use fake_e2b::FakeE2b;
use serde_json::{Value, json};

struct Api<'a> {
    fake: &'a FakeE2b,
    http: reqwest::Client,
}

impl Api<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.fake.api_url()))
            .header("x-api-key", self.fake.api_key());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    /// Polls the status as the SDK does, advancing `logsOffset` by the entries received,
    /// until the build is done and a page comes back empty.
    async fn poll(&self, template_id: &str, build_id: &str) -> (String, Vec<Value>, Value) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut offset = 0;
        let mut entries = Vec::new();
        loop {
            assert!(tokio::time::Instant::now() < deadline, "build did not finish");
            let path = format!("/templates/{template_id}/builds/{build_id}/status?logsOffset={offset}");
            let (status, info) = self.call(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200);
            let page = info["logEntries"].as_array().unwrap().clone();
            assert_eq!(info["logs"].as_array().unwrap().len(), page.len());
            offset += page.len();
            let done = matches!(info["status"].as_str().unwrap(), "ready" | "error");
            let empty = page.is_empty();
            entries.extend(page);
            if done && empty {
                return (info["status"].as_str().unwrap().to_string(), entries, info);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_build_succeeds_with_logs_and_its_tag_can_be_spawned() {
    let fake = FakeE2b::start().await;
    let api = Api { fake: &fake, http: client() };
    let (status, requested) = api
        .call(
            reqwest::Method::POST,
            "/v3/templates",
            Some(json!({"name": "worker:v1", "cpuCount": 2, "memoryMB": 1024})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(requested["tags"], json!(["v1"]));
    assert_eq!(requested["aliases"], json!(["worker"]));
    let template_id = requested["templateID"].as_str().unwrap().to_string();
    let build_id = requested["buildID"].as_str().unwrap().to_string();

    let (status, waiting) =
        api.call(reqwest::Method::GET, &format!("/templates/{template_id}/builds/{build_id}/status"), None).await;
    assert_eq!((status, waiting["status"].clone()), (200, json!("waiting")));

    // COPY layer: ask for a link, PUT with an explicit length, then it is cached.
    let (status, link) = api.call(reqwest::Method::GET, &format!("/templates/{template_id}/files/abc123"), None).await;
    assert_eq!((status, link["present"].clone()), (201, json!(false)));
    let uploaded = api.http.put(link["url"].as_str().unwrap()).body(vec![1u8; 64]).send().await.unwrap();
    assert_eq!(uploaded.status(), 200);
    let (_, link) = api.call(reqwest::Method::GET, &format!("/templates/{template_id}/files/abc123"), None).await;
    assert_eq!(link, json!({"present": true}));

    let steps = json!({
        "fromImage": "e2bdev/base",
        "steps": [
            {"type": "COPY", "args": ["src", "/app", "", ""], "filesHash": "abc123"},
            {"type": "RUN", "args": ["pip install -r /app/requirements.txt", "root"]},
        ],
        "startCmd": "python /app/main.py",
    });
    let (status, _) =
        api.call(reqwest::Method::POST, &format!("/v2/templates/{template_id}/builds/{build_id}"), Some(steps)).await;
    assert_eq!(status, 202);
    let (status, entries, info) = api.poll(&template_id, &build_id).await;
    assert_eq!(status, "ready");
    assert!(info.get("reason").is_none());
    let messages: Vec<&str> = entries.iter().map(|entry| entry["message"].as_str().unwrap()).collect();
    assert!(messages.iter().any(|message| message.contains("RUN pip install")), "{messages:?}");
    assert!(entries.iter().all(|entry| entry["level"].is_string() && entry["timestamp"].is_string()));
    assert_eq!(entries.iter().filter(|entry| entry["step"] == "2").count(), 1);

    // Offsets page through the same log.
    let path = format!("/templates/{template_id}/builds/{build_id}/status?logsOffset=1&limit=2");
    let (_, page) = api.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(page["logEntries"].as_array().unwrap(), &entries[1..3]);

    let created = common::create_sandbox(&fake, json!({"templateID": "worker:v1", "timeout": 60})).await;
    assert_eq!(created["templateID"], template_id.as_str());
    let (status, _) = api.call(reqwest::Method::POST, "/sandboxes", Some(json!({"templateID": "worker:nope"}))).await;
    assert_eq!(status, 404);

    // Promote: point `prod` at v1's build.
    let (status, tagged) = api
        .call(reqwest::Method::POST, "/templates/tags", Some(json!({"target": "worker:v1", "tags": ["prod"]})))
        .await;
    assert_eq!((status, tagged), (201, json!({"tags": ["prod"], "buildID": build_id})));
    let (_, tags) = api.call(reqwest::Method::GET, &format!("/templates/{template_id}/tags"), None).await;
    assert_eq!(tags.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_fail_build_marker_ends_the_build_in_error_with_a_reason() {
    let fake = FakeE2b::start().await;
    let api = Api { fake: &fake, http: client() };
    let (_, requested) = api.call(reqwest::Method::POST, "/v3/templates", Some(json!({"name": "broken"}))).await;
    let template_id = requested["templateID"].as_str().unwrap().to_string();
    let build_id = requested["buildID"].as_str().unwrap().to_string();
    let steps = json!({"steps": [
        {"type": "RUN", "args": ["echo ok"]},
        {"type": "RUN", "args": ["echo FAIL_BUILD"]},
        {"type": "RUN", "args": ["echo never"]},
    ]});
    let (status, _) =
        api.call(reqwest::Method::POST, &format!("/v2/templates/{template_id}/builds/{build_id}"), Some(steps)).await;
    assert_eq!(status, 202);
    let (status, entries, info) = api.poll(&template_id, &build_id).await;
    assert_eq!(status, "error");
    let reason = &info["reason"];
    assert_eq!(reason["step"], "2");
    assert!(reason["message"].as_str().unwrap().contains("failed"));
    assert!(!reason["logEntries"].as_array().unwrap().is_empty());
    assert_eq!(entries.last().unwrap()["level"], "error");
    assert!(!entries.iter().any(|entry| entry["message"].as_str().unwrap().contains("never")));

    // No ready build: spawning from it fails, and the default tag was never assigned.
    let (status, body) = api.call(reqwest::Method::POST, "/sandboxes", Some(json!({"templateID": "broken"}))).await;
    assert_eq!((status, body["message"].clone()), (404, json!("template 'broken' has no ready build")));
}
