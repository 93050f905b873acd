//! The fake control plane, checked over raw HTTP: JSON shapes, error bodies, headers, limits.

mod common;

use std::time::Duration;

use common::{client, create_sandbox, eventually, new_sandbox};
use fake_e2b::{FakeE2b, FakeOptions, RateLimit};
use serde_json::{Value, json};

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn create_get_list_and_kill_speak_e2b_json() {
    let fake = FakeE2b::start().await;
    let created = create_sandbox(
        &fake,
        json!({"templateID": "base", "timeout": 300, "metadata": {"owner": "tests"}, "envVars": {"A": "1"}}),
    )
    .await;
    // Not secure: no envdAccessToken; null-able domain/trafficAccessToken are left out.
    assert_eq!(keys(&created), ["alias", "clientID", "envdVersion", "sandboxID", "templateID"]);
    assert_eq!(created["alias"], "base");
    assert_eq!(created["envdVersion"], "0.6.13");
    let id = created["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 21);
    assert!(id.starts_with('i') && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(fake.sandbox_ids(), vec![id.clone()]);

    let http = client();
    let detail: Value = http
        .get(format!("{}/sandboxes/{id}", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys(&detail),
        [
            "alias",
            "clientID",
            "cpuCount",
            "diskSizeMB",
            "endAt",
            "envdVersion",
            "lifecycle",
            "memoryMB",
            "metadata",
            "sandboxID",
            "startedAt",
            "state",
            "templateID"
        ]
    );
    assert_eq!(detail["state"], "running");
    assert_eq!(detail["metadata"], json!({"owner": "tests"}));
    assert_eq!(detail["lifecycle"], json!({"autoResume": false, "onTimeout": "kill"}));
    assert_eq!(detail["templateID"], created["templateID"]);
    assert!(detail["startedAt"].as_str().unwrap().ends_with('Z'));

    let listed =
        http.get(format!("{}/v2/sandboxes", fake.api_url())).header("x-api-key", fake.api_key()).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["x-total-running"], "1");
    assert!(listed.headers().get("x-next-token").is_none());
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["sandboxID"], id.as_str());
    assert!(listed[0].get("lifecycle").is_none(), "ListedSandbox has no detail fields");

    let killed = http
        .delete(format!("{}/sandboxes/{id}", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(killed.status(), 204);
    assert!(killed.bytes().await.unwrap().is_empty());
    assert!(fake.sandbox_ids().is_empty());

    let again = http
        .delete(format!("{}/sandboxes/{id}", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body,
        json!({"code": 404, "message": format!("Sandbox \"{id}\" doesn't exist or you don't have access to it")})
    );
}

#[tokio::test]
async fn secure_sandboxes_get_an_envd_access_token() {
    let fake = FakeE2b::start().await;
    let created = create_sandbox(&fake, json!({"templateID": "base", "timeout": 60, "secure": true})).await;
    let token = created["envdAccessToken"].as_str().expect("a token for a secure sandbox");
    assert!(!token.is_empty());
}

#[tokio::test]
async fn bad_keys_unknown_templates_and_bad_timeouts_get_e2b_errors() {
    let fake = FakeE2b::start().await;
    let http = client();
    let url = format!("{}/sandboxes", fake.api_url());

    let missing = http.post(&url).json(&json!({"templateID": "base"})).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], 401);

    let wrong_key = format!("e2b_{}", "0".repeat(40));
    let wrong =
        http.post(&url).header("x-api-key", wrong_key).json(&json!({"templateID": "base"})).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(keys(&body), ["code", "message"]);
    assert!(body["message"].as_str().unwrap().starts_with("Invalid API key, please visit"));

    let unknown =
        http.post(&url).header("x-api-key", fake.api_key()).json(&json!({"templateID": "nope"})).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap(), json!({"code": 404, "message": "template 'nope' not found"}));

    let too_long = http
        .post(&url)
        .header("x-api-key", fake.api_key())
        .json(&json!({"templateID": "base", "timeout": 7200}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
    assert_eq!(too_long.json::<Value>().await.unwrap()["message"], "Timeout cannot be greater than 1 hours");
    assert!(fake.sandbox_ids().is_empty(), "failed creates leave nothing behind");
}

#[tokio::test]
async fn the_concurrency_limit_answers_429_with_the_documented_message() {
    let fake = FakeE2b::start_with(FakeOptions { concurrency_limit: 1, ..FakeOptions::default() }).await;
    new_sandbox(&fake).await;
    let refused = client()
        .post(format!("{}/sandboxes", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .json(&json!({"templateID": "base", "timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], 429);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("you have reached the maximum number of concurrent E2B sandboxes (1)")
    );
    fake.set_concurrency_limit(2);
    new_sandbox(&fake).await;
    assert_eq!(fake.sandbox_ids().len(), 2);
}

#[tokio::test]
async fn injected_failures_are_served_once_and_recorded() {
    let fake = FakeE2b::start().await;
    fake.fail_next(
        "POST",
        "/sandboxes",
        429,
        vec![("Retry-After".into(), "2".into())],
        r#"{"code":429,"message":"Rate limit exceeded"}"#.into(),
    );
    let http = client();
    let send = || {
        http.post(format!("{}/sandboxes", fake.api_url()))
            .header("x-api-key", fake.api_key())
            .json(&json!({"templateID": "base", "timeout": 60}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 429);
    assert_eq!(first.headers()["retry-after"], "2");
    assert_eq!(first.headers()["content-type"], "application/json");
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"code": 429, "message": "Rate limit exceeded"}));
    assert!(fake.sandbox_ids().is_empty(), "the injected answer replaced the handler");
    assert_eq!(send().await.unwrap().status(), 201);

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/sandboxes");
    assert_eq!(requests[0].headers["x-api-key"], fake.api_key().as_str());
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["templateID"], "base");
    assert!(fake.handler_time() > Duration::ZERO);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn the_rate_limiter_sends_retry_after_and_ratelimit_headers() {
    let limit = RateLimit { requests: 2, window: Duration::from_secs(30) };
    let fake = FakeE2b::start_with(FakeOptions { rate_limit: Some(limit), ..FakeOptions::default() }).await;
    let http = client();
    let list = || http.get(format!("{}/v2/sandboxes", fake.api_url())).header("x-api-key", fake.api_key()).send();
    assert_eq!(list().await.unwrap().status(), 200);
    assert_eq!(list().await.unwrap().status(), 200);
    let limited = list().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after));
    assert_eq!(limited.headers()["ratelimit-limit"], "2");
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    assert!(limited.headers().contains_key("ratelimit-reset"));
    assert_eq!(limited.json::<Value>().await.unwrap(), json!({"code": 429, "message": "Rate limit exceeded"}));
}

#[tokio::test]
async fn list_filters_by_encoded_metadata_and_pages_with_next_token() {
    let fake = FakeE2b::start().await;
    for (owner, n) in [("a&b", 3), ("other", 1)] {
        for _ in 0..n {
            create_sandbox(&fake, json!({"templateID": "base", "timeout": 60, "metadata": {"owner": owner}})).await;
        }
    }
    let http = client();
    // Each key and value encoded, then the whole `k=v` string encoded again.
    let metadata = "owner%3Da%2526b";
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{}/v2/sandboxes?metadata={metadata}&limit=2&state=running", fake.api_url());
        if let Some(token) = &token {
            url.push_str(&format!("&nextToken={token}"));
        }
        let page = http.get(url).header("x-api-key", fake.api_key()).send().await.unwrap();
        assert_eq!(page.status(), 200);
        token = page.headers().get("x-next-token").map(|value| value.to_str().unwrap().to_string());
        let items: Vec<Value> = page.json().await.unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.into_iter().map(|item| {
            assert_eq!(item["metadata"]["owner"], "a&b");
            item["sandboxID"].as_str().unwrap().to_string()
        }));
        if token.is_none() {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);

    let bad = http
        .get(format!("{}/v2/sandboxes?limit=0", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let legacy: Vec<Value> = http
        .get(format!("{}/sandboxes?metadata=owner%3Dother", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(legacy.len(), 1);
}

#[tokio::test]
async fn sandboxes_expire_at_their_timeout_and_take_their_processes_along() {
    let fake = FakeE2b::start().await;
    let sandbox = create_sandbox(&fake, json!({"templateID": "base", "timeout": 1})).await;
    let id = sandbox["sandboxID"].as_str().unwrap().to_string();
    let mut frames = common::start(&fake, &id, common::bash("sleep 300 & echo $!; wait")).await;
    let (_, start) = frames.message().await;
    let leader = start["event"]["start"]["pid"].as_u64().unwrap() as u32;
    let (_, data) = frames.message().await;
    let child: u32 = {
        let text = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            data["event"]["data"]["stdout"].as_str().unwrap(),
        )
        .unwrap();
        String::from_utf8(text).unwrap().trim().parse().unwrap()
    };
    assert!(common::alive(child));
    let http = client();
    eventually("the sandbox to expire", async || {
        let response = http
            .get(format!("{}/sandboxes/{id}", fake.api_url()))
            .header("x-api-key", fake.api_key())
            .send()
            .await
            .unwrap();
        response.status() == 404
    })
    .await;
    // The VM is gone: the stream breaks without an end event, and every process with it.
    assert!(matches!(frames.next().await, common::Frame::Broken));
    eventually("the process group to die", async || !common::alive(leader) && !common::alive(child)).await;
}

#[tokio::test]
async fn timeout_pause_connect_and_resume_follow_e2b_semantics() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let http = client();
    let post = |path: String, body: Value| {
        http.post(format!("{}{path}", fake.api_url())).header("x-api-key", fake.api_key()).json(&body).send()
    };
    assert_eq!(post(format!("/sandboxes/{id}/timeout"), json!({"timeout": 120})).await.unwrap().status(), 204);
    assert_eq!(post(format!("/sandboxes/{id}/timeout"), json!({"timeout": 0})).await.unwrap().status(), 400);

    let running = post(format!("/sandboxes/{id}/connect"), json!({"timeout": 60})).await.unwrap();
    assert_eq!(running.status(), 200);
    assert_eq!(running.json::<Value>().await.unwrap()["sandboxID"], id.as_str());

    assert_eq!(post(format!("/sandboxes/{id}/pause"), json!({})).await.unwrap().status(), 204);
    assert!(fake.sandbox_ids().is_empty(), "paused sandboxes are not running");
    let again = post(format!("/sandboxes/{id}/pause"), json!({})).await.unwrap();
    assert_eq!(again.status(), 409);
    // A paused sandbox's envd is unreachable (no autoResume): the edge answers 502.
    let edge = http
        .get(format!("{}/health", fake.envd_url()))
        .header("e2b-sandbox-id", &id)
        .header("e2b-sandbox-port", "49983")
        .send()
        .await
        .unwrap();
    assert_eq!(edge.status(), 502);
    assert_eq!(
        edge.json::<Value>().await.unwrap(),
        json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502})
    );

    let resumed = post(format!("/sandboxes/{id}/connect"), json!({"timeout": 60})).await.unwrap();
    assert_eq!(resumed.status(), 201);
    assert_eq!(fake.sandbox_ids(), vec![id.clone()]);
    let conflict = post(format!("/sandboxes/{id}/resume"), json!({"timeout": 60})).await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["message"], format!("Sandbox {id} is already running"));

    let missing = post("/sandboxes/nope/connect".to_string(), json!({"timeout": 60})).await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn auto_pause_sandboxes_pause_instead_of_dying_at_their_timeout() {
    let fake = FakeE2b::start().await;
    let sandbox = create_sandbox(&fake, json!({"templateID": "base", "timeout": 1, "autoPause": true})).await;
    let id = sandbox["sandboxID"].as_str().unwrap().to_string();
    let http = client();
    eventually("the sandbox to pause", async || {
        let detail: Value = http
            .get(format!("{}/sandboxes/{id}", fake.api_url()))
            .header("x-api-key", fake.api_key())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        detail["state"] == "paused"
    })
    .await;
    assert!(fake.sandbox_ids().is_empty());
    let paused: Vec<Value> = http
        .get(format!("{}/v2/sandboxes?state=paused", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0]["state"], "paused");
}
