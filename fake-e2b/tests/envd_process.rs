//! The fake envd's `process.Process` service, decoded byte by byte from the wire.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Frame, alive, bash, envd_post, eventually, new_sandbox, start, start_with, unary};
use fake_e2b::{FakeE2b, FakeOptions};
use serde_json::{Value, json};

#[tokio::test]
async fn start_streams_connect_envelopes_exactly() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let response = envd_post(&fake, &id, "Start")
        .header("content-type", "application/connect+json")
        .body(common::envelope(&bash("echo hello")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();

    // Walk the envelopes by hand: [flags][u32 BE length][JSON].
    let mut frames = Vec::new();
    let mut at = 0;
    while at < body.len() {
        assert!(body.len() - at >= 5, "a truncated envelope header");
        let flags = body[at];
        let length = u32::from_be_bytes([body[at + 1], body[at + 2], body[at + 3], body[at + 4]]) as usize;
        let payload: Value = serde_json::from_slice(&body[at + 5..at + 5 + length]).unwrap();
        frames.push((flags, payload));
        at += 5 + length;
    }
    assert_eq!(at, body.len(), "no bytes after the last envelope");
    let (first_flags, first) = &frames[0];
    assert_eq!(*first_flags, 0);
    assert!(first["event"]["start"]["pid"].as_u64().unwrap() > 0);
    let (_, data) = &frames[1];
    assert_eq!(data, &json!({"event": {"data": {"stdout": STANDARD.encode("hello\n")}}}));
    let (_, end) = &frames[frames.len() - 2];
    // Exit code 0 is a zero value: protojson leaves `exitCode` out.
    assert_eq!(end, &json!({"event": {"end": {"exited": true, "status": "exit status 0"}}}));
    assert_eq!(frames.last().unwrap(), &(0x02, json!({})));
}

#[tokio::test]
async fn exit_codes_stderr_env_and_cwd_come_through() {
    let fake = FakeE2b::start().await;
    let sandbox =
        common::create_sandbox(&fake, json!({"templateID": "base", "timeout": 60, "envVars": {"FROM_SANDBOX": "s"}}))
            .await;
    let id = sandbox["sandboxID"].as_str().unwrap();
    let request = json!({
        "process": {
            "cmd": "/bin/bash",
            "args": ["-c", "echo \"$FROM_SANDBOX $FROM_REQUEST\"; basename \"$PWD\"; echo oops >&2; exit 3"],
            "envs": {"FROM_REQUEST": "r"},
        },
        "stdin": false,
    });
    let collected = start(&fake, id, request).await.collect().await;
    assert_eq!(collected.stdout_text(), "s r\nuser\n");
    assert_eq!(String::from_utf8_lossy(&collected.stderr), "oops\n");
    assert_eq!(
        collected.end.unwrap(),
        json!({"exitCode": 3, "exited": true, "status": "exit status 3", "error": "exit status 3"})
    );
    assert_eq!(collected.end_of_stream.unwrap(), json!({}));

    let bad_cwd = json!({"process": {"cmd": "/bin/true", "cwd": "/does/not/exist"}});
    let collected = start(&fake, id, bad_cwd).await.collect().await;
    assert!(collected.pid.is_none(), "errors before the start event travel in-band only");
    assert_eq!(
        collected.end_of_stream.unwrap(),
        json!({"error": {"code": "invalid_argument", "message": "cwd '/does/not/exist' does not exist"}})
    );
}

#[tokio::test]
async fn stdin_is_written_with_send_input_and_closed_with_close_stdin() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let mut frames = start(&fake, &id, json!({"process": {"cmd": "/bin/cat"}, "stdin": true})).await;
    let (_, start_frame) = frames.message().await;
    let pid = start_frame["event"]["start"]["pid"].as_u64().unwrap();

    let (status, body) =
        unary(&fake, &id, "SendInput", json!({"process": {"pid": pid}, "input": {"stdin": STANDARD.encode("ping\n")}}))
            .await;
    assert_eq!((status, body), (200, json!({})));
    let (_, echoed) = frames.message().await;
    assert_eq!(echoed["event"]["data"]["stdout"], STANDARD.encode("ping\n"));

    let (status, _) = unary(&fake, &id, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(status, 200);
    let rest = frames.collect().await;
    assert_eq!(rest.end.unwrap()["status"], "exit status 0");

    // Stdin disabled: writing fails the way envd says.
    let mut frames = start(&fake, &id, json!({"process": {"cmd": "/bin/sleep", "args": ["5"]}, "stdin": false})).await;
    let pid = frames.message().await.1["event"]["start"]["pid"].as_u64().unwrap();
    let (status, body) =
        unary(&fake, &id, "SendInput", json!({"process": {"pid": pid}, "input": {"stdin": "eA=="}})).await;
    assert_eq!(status, 500);
    assert_eq!(body, json!({"code": "internal", "message": "error writing to stdin: stdin not enabled or closed"}));
}

#[tokio::test]
async fn send_signal_kills_the_whole_process_group() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let mut frames = start(&fake, &id, bash("sleep 300 & echo $!; wait")).await;
    let pid = frames.message().await.1["event"]["start"]["pid"].as_u64().unwrap() as u32;
    let data = frames.message().await.1;
    let child: u32 = String::from_utf8(STANDARD.decode(data["event"]["data"]["stdout"].as_str().unwrap()).unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(child));

    let (status, body) =
        unary(&fake, &id, "SendSignal", json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})).await;
    assert_eq!((status, body), (200, json!({})));
    let rest = frames.collect().await;
    assert_eq!(rest.end.unwrap(), json!({"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}));
    eventually("the background child to die with its group", async || !alive(child)).await;

    let (status, body) =
        unary(&fake, &id, "SendSignal", json!({"process": {"pid": 1}, "signal": "SIGNAL_SIGTERM"})).await;
    assert_eq!((status, body), (404, json!({"code": "not_found", "message": "process with pid 1 not found"})));
}

#[tokio::test]
async fn connect_after_a_cut_stream_follows_live_output_without_replay() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    fake.cut_process_streams_after(1);
    let mut frames = start(
        &fake,
        &id,
        json!({"process": {"cmd": "/bin/bash", "args": ["-c", "echo first; read line; echo \"got $line\""]}, "stdin": true}),
    )
    .await;
    let pid = frames.message().await.1["event"]["start"]["pid"].as_u64().unwrap();
    assert_eq!(frames.message().await.1["event"]["data"]["stdout"], STANDARD.encode("first\n"));
    assert!(matches!(frames.next().await, Frame::Eof { leftover: 0 } | Frame::Broken), "cut without an end frame");

    // The process outlived its stream; reattach by pid.
    let mut attached = start_with(envd_post(&fake, &id, "Connect"), json!({"process": {"pid": pid}})).await;
    assert_eq!(attached.message().await.1, json!({"event": {"start": {"pid": pid}}}));
    let (status, _) =
        unary(&fake, &id, "SendInput", json!({"process": {"pid": pid}, "input": {"stdin": STANDARD.encode("x\n")}}))
            .await;
    assert_eq!(status, 200);
    let rest = attached.collect().await;
    assert_eq!(rest.stdout_text(), "got x\n", "only live output, \"first\" is not replayed");
    assert_eq!(rest.end.unwrap()["exited"], true);
    assert_eq!(rest.end_of_stream.unwrap(), json!({}));
}

#[tokio::test]
async fn exits_stay_visible_for_the_retention_period_then_vanish() {
    let options = FakeOptions { exit_code_retention: Duration::from_millis(300), ..FakeOptions::default() };
    let fake = FakeE2b::start_with(options).await;
    let id = new_sandbox(&fake).await;
    let finished = start(&fake, &id, json!({"process": {"cmd": "/bin/sh", "args": ["-c", "exit 7"]}, "tag": "job"}))
        .await
        .collect()
        .await;
    let pid = finished.pid.unwrap();

    let (status, listed) = unary(&fake, &id, "List", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        listed,
        json!({"processes": [{"config": {"cmd": "/bin/sh", "args": ["-c", "exit 7"]}, "pid": pid, "tag": "job"}]})
    );
    let replayed =
        start_with(envd_post(&fake, &id, "Connect"), json!({"process": {"tag": "job"}})).await.collect().await;
    assert_eq!(replayed.end.unwrap()["exitCode"], 7);

    eventually("the exit to be forgotten", async || unary(&fake, &id, "List", json!({})).await.1 == json!({})).await;
    let gone = start_with(envd_post(&fake, &id, "Connect"), json!({"process": {"pid": pid}})).await.collect().await;
    assert_eq!(
        gone.end_of_stream.unwrap(),
        json!({"error": {"code": "not_found", "message": format!("process with pid {pid} not found")}})
    );
}

#[tokio::test]
async fn connect_timeout_ms_is_the_process_deadline() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let builder = envd_post(&fake, &id, "Start").header("connect-timeout-ms", "300");
    let collected = start_with(builder, bash("sleep 30")).await.collect().await;
    assert!(collected.end.is_none());
    assert_eq!(
        collected.end_of_stream.unwrap(),
        json!({"error": {"code": "deadline_exceeded", "message": "context deadline exceeded"}})
    );
    eventually("the process to be killed", async || !alive(collected.pid.unwrap())).await;
}

#[tokio::test]
async fn keepalives_arrive_on_the_requested_interval() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let builder = envd_post(&fake, &id, "Start").header("keepalive-ping-interval", "1");
    let mut frames = start_with(builder, bash("sleep 1.5")).await;
    frames.message().await;
    assert_eq!(frames.message().await, (0, json!({"event": {"keepalive": {}}})));
}

#[tokio::test]
async fn envd_rejects_wrong_tokens_sandboxes_and_content_types() {
    let fake = FakeE2b::start().await;
    let sandbox = common::create_sandbox(&fake, json!({"templateID": "base", "timeout": 60, "secure": true})).await;
    let id = sandbox["sandboxID"].as_str().unwrap();
    let token = sandbox["envdAccessToken"].as_str().unwrap();

    let (status, body) = unary(&fake, id, "List", json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"code": 401, "message": "unauthorized access, please provide a valid access token or method signing if supported"})
    );
    let with_token = envd_post(&fake, id, "List")
        .header("x-access-token", token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let wrong_type = envd_post(&fake, id, "List").header("x-access-token", token).body("{}").send().await.unwrap();
    assert_eq!(wrong_type.status(), 415);

    let (status, body) = unary(&fake, "nosuchsandbox", "List", json!({})).await;
    assert_eq!((status, body["code"].clone()), (502, json!(502)));
    assert_eq!(body["message"], "The sandbox was not found");

    let by_host = common::client()
        .post(format!("{}/process.Process/List", fake.envd_url()))
        .header("host", format!("49983-{id}.e2b.app"))
        .header("x-access-token", token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(by_host.status(), 200, "routing by host works too");
}

#[tokio::test]
async fn killing_a_sandbox_kills_its_process_groups() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let mut frames = start(&fake, &id, bash("sleep 300 & echo $!; wait")).await;
    let leader = frames.message().await.1["event"]["start"]["pid"].as_u64().unwrap() as u32;
    let data = frames.message().await.1;
    let child: u32 = String::from_utf8(STANDARD.decode(data["event"]["data"]["stdout"].as_str().unwrap()).unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let killed = common::client()
        .delete(format!("{}/sandboxes/{id}", fake.api_url()))
        .header("x-api-key", fake.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(killed.status(), 204);
    assert!(matches!(frames.next().await, Frame::Broken), "the stream breaks with the VM");
    eventually("the group to die", async || !alive(leader) && !alive(child)).await;
}

#[tokio::test]
async fn pausing_drops_streams_and_processes_resume_with_the_sandbox() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    let mut frames = start(&fake, &id, json!({"process": {"cmd": "/bin/cat"}, "stdin": true})).await;
    let pid = frames.message().await.1["event"]["start"]["pid"].as_u64().unwrap();
    let http = common::client();
    let control = |path: String, body: Value| {
        http.post(format!("{}{path}", fake.api_url())).header("x-api-key", fake.api_key()).json(&body).send()
    };
    assert_eq!(control(format!("/sandboxes/{id}/pause"), json!({})).await.unwrap().status(), 204);
    assert!(matches!(frames.next().await, Frame::Broken), "the connection dies with the paused VM");

    assert_eq!(control(format!("/sandboxes/{id}/connect"), json!({"timeout": 60})).await.unwrap().status(), 201);
    let mut attached = start_with(envd_post(&fake, &id, "Connect"), json!({"process": {"pid": pid}})).await;
    attached.message().await;
    let input = json!({"process": {"pid": pid}, "input": {"stdin": STANDARD.encode("after resume\n")}});
    assert_eq!(unary(&fake, &id, "SendInput", input).await.0, 200);
    assert_eq!(attached.message().await.1["event"]["data"]["stdout"], STANDARD.encode("after resume\n"));
}

#[tokio::test]
async fn injected_envd_failures_replace_the_stream() {
    let fake = FakeE2b::start().await;
    let id = new_sandbox(&fake).await;
    fake.fail_next("POST", "/process.Process/Start", 502, vec![], "<html>bad gateway</html>".into());
    let response = envd_post(&fake, &id, "Start")
        .header("content-type", "application/connect+json")
        .body(common::envelope(&bash("echo hi")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("content-type").is_none());
    assert_eq!(response.text().await.unwrap(), "<html>bad gateway</html>");
    let (status, listed) = unary(&fake, &id, "List", json!({})).await;
    assert_eq!((status, listed), (200, json!({})), "nothing was started");
    let recorded = fake.requests();
    let start_request = recorded.iter().find(|request| request.path == "/process.Process/Start").unwrap();
    assert_eq!(start_request.headers["e2b-sandbox-id"], id.as_str());
    assert_eq!(&start_request.body[..1], &[0u8]);
}
