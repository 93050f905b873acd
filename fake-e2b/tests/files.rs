//! envd's `/files` routes: multipart and octet-stream uploads, downloads, signatures.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use common::{client, new_sandbox};
use fake_e2b::FakeE2b;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn files(fake: &FakeE2b, id: &str, method: reqwest::Method, query: &str) -> reqwest::RequestBuilder {
    client()
        .request(method, format!("{}/files?{query}", fake.envd_url()))
        .header("e2b-sandbox-id", id)
        .header("e2b-sandbox-port", "49983")
}

fn multipart(boundary: &str, filename: &str, content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn files_round_trip_through_multipart_and_octet_stream() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let content = b"line one\r\n--not-a-boundary\r\n\x00\xffbinary".to_vec();
    let written = files(&fake, &id, reqwest::Method::POST, "path=%2Fhome%2Fuser%2Fdir%2Fa.bin&username=user")
        .header("content-type", "multipart/form-data; boundary=----e2bBoundary")
        .body(multipart("----e2bBoundary", "a.bin", &content))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    assert_eq!(
        written.json::<Value>().await.unwrap(),
        json!([{"path": "/home/user/dir/a.bin", "name": "a.bin", "type": "file"}])
    );

    // Relative paths resolve against the user's home.
    let read = files(&fake, &id, reqwest::Method::GET, "path=dir%2Fa.bin").send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["content-type"], "application/octet-stream");
    assert_eq!(read.bytes().await.unwrap().as_ref(), content.as_slice());

    // The sandbox's processes see the same file.
    let collected = common::start(&fake, &id, common::bash("cat dir/a.bin | head -c 8")).await.collect().await;
    assert_eq!(collected.stdout_text(), "line one");

    let raw = files(&fake, &id, reqwest::Method::POST, "path=%2Ftmp%2Fraw.txt")
        .header("content-type", "application/octet-stream")
        .body("raw body")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    let back = files(&fake, &id, reqwest::Method::GET, "path=%2Ftmp%2Fraw.txt").send().await.unwrap();
    assert_eq!(back.text().await.unwrap(), "raw body");
    let root = fake.sandbox_root(&id).unwrap();
    assert_eq!(std::fs::read_to_string(root.join("tmp/raw.txt")).unwrap(), "raw body");
}

#[tokio::test]
async fn missing_files_and_directories_get_envd_errors() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let missing = files(&fake, &id, reqwest::Method::GET, "path=%2Fnope.txt").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"code": 404, "message": "path '/nope.txt' does not exist"})
    );
    let directory = files(&fake, &id, reqwest::Method::GET, "path=%2Fhome%2Fuser").send().await.unwrap();
    assert_eq!(directory.status(), 400);
}

#[tokio::test]
async fn secured_sandboxes_accept_a_token_or_a_signature_on_files() {
    let fake = FakeE2b::start().await;
    let sandbox = common::create_sandbox(&fake, json!({"templateID": "base", "timeout": 60, "secure": true})).await;
    let id = sandbox["sandboxID"].as_str().unwrap();
    let token = sandbox["envdAccessToken"].as_str().unwrap();

    let unsigned = files(&fake, id, reqwest::Method::GET, "path=%2Fx").send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        unsigned.json::<Value>().await.unwrap(),
        json!({"code": 401, "message": "missing signature query parameter"})
    );

    let upload = files(&fake, id, reqwest::Method::POST, "path=%2Fx")
        .header("x-access-token", token)
        .header("content-type", "application/octet-stream")
        .body("signed")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);

    let expiration = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60;
    let digest = Sha256::digest(format!("/x:read::{token}:{expiration}").as_bytes());
    let signature = format!("v1_{}", STANDARD_NO_PAD.encode(digest));
    let query = format!(
        "path=%2Fx&signature={}&signature_expiration={expiration}",
        signature.replace('+', "%2B").replace('/', "%2F")
    );
    let signed = files(&fake, id, reqwest::Method::GET, &query).send().await.unwrap();
    assert_eq!(signed.status(), 200);
    assert_eq!(signed.text().await.unwrap(), "signed");

    let forged = files(&fake, id, reqwest::Method::GET, "path=%2Fx&signature=v1_forged").send().await.unwrap();
    assert_eq!(forged.status(), 401);
}

#[tokio::test]
async fn filesystem_rpcs_make_stat_list_move_and_remove() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let call = |method: &'static str, body: Value| {
        let fake = &fake;
        let id = id.clone();
        async move {
            let response = client()
                .post(format!("{}/filesystem.Filesystem/{method}", fake.envd_url()))
                .header("e2b-sandbox-id", &id)
                .header("e2b-sandbox-port", "49983")
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, made) = call("MakeDir", json!({"path": "/workspace/sub"})).await;
    assert_eq!(
        (status, made),
        (200, json!({"entry": {"name": "sub", "type": "FILE_TYPE_DIRECTORY", "path": "/workspace/sub"}}))
    );
    let (status, again) = call("MakeDir", json!({"path": "/workspace/sub"})).await;
    assert_eq!(status, 409);
    assert_eq!(again, json!({"code": "already_exists", "message": "directory already exists: /workspace/sub"}));

    // Processes may now run there.
    let request =
        json!({"process": {"cmd": "/bin/sh", "args": ["-c", "printf 12345 > f.txt; pwd"], "cwd": "/workspace"}});
    let collected = common::start(&fake, &id, request).await.collect().await;
    assert!(collected.stdout_text().trim_end().ends_with("/workspace"));

    let (status, stat) = call("Stat", json!({"path": "/workspace/f.txt"})).await;
    assert_eq!(status, 200);
    let entry = &stat["entry"];
    assert_eq!(entry["type"], "FILE_TYPE_FILE");
    assert_eq!(entry["size"], "5", "int64 travels as a JSON string");
    assert_eq!(entry["permissions"].as_str().unwrap().len(), 10);
    assert!(entry["mode"].is_u64());

    let (status, listed) = call("ListDir", json!({"path": "/workspace", "depth": 2})).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["/workspace/f.txt", "/workspace/sub"]);
    let (status, moved) =
        call("Move", json!({"source": "/workspace/f.txt", "destination": "/workspace/sub/g.txt"})).await;
    assert_eq!((status, moved["entry"]["path"].clone()), (200, json!("/workspace/sub/g.txt")));
    let (status, _) = call("Remove", json!({"path": "/workspace/sub"})).await;
    assert_eq!(status, 200);
    let (status, missing) = call("Stat", json!({"path": "/workspace/sub/g.txt"})).await;
    assert_eq!((status, missing["code"].clone()), (404, json!("not_found")));
    let (status, empty) = call("ListDir", json!({"path": "/workspace"})).await;
    assert_eq!((status, empty), (200, json!({})));
}
