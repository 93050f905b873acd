//! Sandbox lifetimes: kill, timeout, idempotent create, listing, shutdown.

use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;

use crate::common::*;

fn seconds(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

async fn get(client: &mut Client, sandbox_id: &str) -> pb::Sandbox {
    let request = pb::GetSandboxRequest { sandbox_id: sandbox_id.into() };
    client.get_sandbox(request).await.unwrap().into_inner().sandbox.unwrap()
}

/// Starts a process tree (a shell with two background children) tagged with `marker`.
async fn start_tree(client: &mut Client, sandbox_id: &str, marker: &str) {
    let script = format!("sleep {marker} & sleep {marker} & echo ready; wait");
    let mut stream = client.start_process(start_request(sandbox_id, &script)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap(); // started
    eventually("tree running", || async { pids_with(marker).len() >= 2 }).await;
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
}

#[tokio::test]
async fn kill_leaves_no_process_behind_and_records_the_cause() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let marker = format!("2000.{}", std::process::id());
    start_tree(&mut client, &sandbox.sandbox_id, &marker).await;
    start_tree(&mut client, &sandbox.sandbox_id, &marker).await;
    client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: sandbox.sandbox_id.clone() }).await.unwrap();
    if local_only("KillSandbox waits for the host processes themselves; E2B's answer means the VM is gone") {
        // KillSandbox returns once the processes are gone: no polling needed.
        assert_eq!(pids_with(&marker), Vec::<u32>::new());
    } else {
        // The fake E2B SIGKILLs the process groups before it answers; they vanish a moment later.
        eventually("the killed processes are gone", || async { pids_with(&marker).is_empty() }).await;
    }
    let ended = get(&mut client, &sandbox.sandbox_id).await;
    assert_eq!(ended.state, pb::SandboxState::Killed as i32);
    assert_eq!(ended.end_reason, pb::SandboxEndReason::KilledByRequest as i32);
    assert!(ended.ended_at.is_some());
    assert!(!broker.workspaces().join(&sandbox.sandbox_id).exists(), "workspace removed");
    let processes = processes(&mut client, &sandbox.sandbox_id).await;
    assert!(processes.iter().all(|p| !p.running && p.exit_code.is_some()), "{processes:?}");
    // Killing again is a no-op; using it is refused with the reason.
    client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: sandbox.sandbox_id.clone() }).await.unwrap();
    let result = client.start_process(start_request(&sandbox.sandbox_id, "true")).await;
    assert_code(result, tonic::Code::FailedPrecondition, "has ended");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_is_killed_at_its_timeout_with_the_cause_visible() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let request = pb::CreateSandboxRequest { template: "worker".into(), timeout: seconds(1), ..Default::default() };
    let sandbox = create_with(&mut client, request).await;
    let marker = format!("3000.{}", std::process::id());
    start_tree(&mut client, &sandbox.sandbox_id, &marker).await;
    let sandbox_id = sandbox.sandbox_id.clone();
    eventually("sandbox times out", || {
        let mut client = client.clone();
        let sandbox_id = sandbox_id.clone();
        async move { get(&mut client, &sandbox_id).await.state == pb::SandboxState::Killed as i32 }
    })
    .await;
    let ended = get(&mut client, &sandbox.sandbox_id).await;
    assert_eq!(ended.end_reason, pb::SandboxEndReason::TimedOut as i32);
    assert!(ended.end_message.contains("timed out"), "{}", ended.end_message);
    assert_eq!(pids_with(&marker), Vec::<u32>::new());
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn set_timeout_moves_the_deadline_both_ways() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let request = pb::CreateSandboxRequest { template: "worker".into(), timeout: seconds(2), ..Default::default() };
    let sandbox = create_with(&mut client, request).await;
    let extended = client
        .set_sandbox_timeout(pb::SetSandboxTimeoutRequest {
            sandbox_id: sandbox.sandbox_id.clone(),
            timeout: seconds(3600),
        })
        .await
        .unwrap()
        .into_inner()
        .sandbox
        .unwrap();
    assert!(extended.expires_at.unwrap().seconds >= sandbox.created_at.unwrap().seconds + 3500);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&mut client, &sandbox.sandbox_id).await.state, pb::SandboxState::Running as i32, "extended");
    client
        .set_sandbox_timeout(pb::SetSandboxTimeoutRequest {
            sandbox_id: sandbox.sandbox_id.clone(),
            timeout: seconds(1),
        })
        .await
        .unwrap();
    let sandbox_id = sandbox.sandbox_id.clone();
    eventually("shortened timeout fires", || {
        let mut client = client.clone();
        let sandbox_id = sandbox_id.clone();
        async move { get(&mut client, &sandbox_id).await.end_reason == pb::SandboxEndReason::TimedOut as i32 }
    })
    .await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_sandbox_even_concurrently() {
    let broker = TestBroker::start(|_| {}).await;
    let client = broker.client().await;
    let request = pb::CreateSandboxRequest {
        template: "worker".into(),
        idempotency_key: "job-42".into(),
        metadata: metadata(&[("job", "42")]),
        ..Default::default()
    };
    let creates = (0..8).map(|_| {
        let mut client = client.clone();
        let request = request.clone();
        tokio::spawn(async move { create_with(&mut client, request).await.sandbox_id })
    });
    let ids: Vec<String> = futures_join(creates).await;
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    let mut client = client.clone();
    let listed = client
        .list_sandboxes(pb::ListSandboxesRequest { metadata: metadata(&[("job", "42")]), include_ended: false })
        .await
        .unwrap()
        .into_inner()
        .sandboxes;
    assert_eq!(listed.len(), 1, "one sandbox, not eight");
    let mut different = request.clone();
    different.template = "infrastructure".into();
    assert_code(client.create_sandbox(different).await, tonic::Code::InvalidArgument, "idempotency_key");
    broker.stop().await.unwrap();
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn list_filters_by_every_metadata_entry() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    for (team, kind) in [("a", "x"), ("a", "y"), ("b", "x")] {
        let request = pb::CreateSandboxRequest {
            template: "worker".into(),
            metadata: metadata(&[("team", team), ("kind", kind)]),
            ..Default::default()
        };
        create_with(&mut client, request).await;
    }
    let list = |filter: &[(&str, &str)]| {
        let mut client = client.clone();
        let request = pb::ListSandboxesRequest { metadata: metadata(filter), include_ended: false };
        async move { client.list_sandboxes(request).await.unwrap().into_inner().sandboxes.len() }
    };
    assert_eq!(list(&[]).await, 3);
    assert_eq!(list(&[("team", "a")]).await, 2);
    assert_eq!(list(&[("team", "a"), ("kind", "x")]).await, 1);
    assert_eq!(list(&[("team", "c")]).await, 0);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_goes_not_serving_and_kills_every_sandbox() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let marker = format!("4000.{}", std::process::id());
    start_tree(&mut client, &sandbox.sandbox_id, &marker).await;
    let attach = attach_request(&sandbox.sandbox_id, "p1", 0);
    let watcher = client.attach_process(attach).await.unwrap().into_inner();
    let mut health = tonic_health::pb::health_client::HealthClient::new(broker.channel().await);
    let mut watch =
        health.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1, "SERVING");
    let stopping = tokio::spawn(broker.stop());
    assert_eq!(watch.message().await.unwrap().unwrap().status, 2, "NOT_SERVING");
    drop(watch);
    stopping.await.unwrap().unwrap();
    assert_eq!(pids_with(&marker), Vec::<u32>::new());
    // The watcher saw the process end rather than hanging.
    let events = collect(watcher).await;
    assert!(exit_of(&events).is_some());
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_dir_is_refused_naming_it() {
    let broker = TestBroker::start(|_| {}).await;
    let data_dir = broker.data_dir.path().join("data");
    let mut config = sandbox_svc::BrokerConfig::for_tests(data_dir.clone());
    config.data_dir_lock_wait = Duration::from_millis(300);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = sandbox_svc::serve(config, listener, std::future::pending()).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("in use by another process") && message.contains("data dir"), "{message}");
    // The first one is untouched and still serves.
    let mut client = broker.client().await;
    create(&mut client, "worker").await;
    broker.stop().await.unwrap();
}
