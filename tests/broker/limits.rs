//! Every configured bound answers RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for ranges) naming it.

use std::time::Duration;

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn sandboxes_per_broker() {
    let broker = TestBroker::start(|c| c.limits.max_sandboxes = 2).await;
    let mut client = broker.client().await;
    let first = create(&mut client, "worker").await;
    create(&mut client, "worker").await;
    let third =
        client.create_sandbox(pb::CreateSandboxRequest { template: "worker".into(), ..Default::default() }).await;
    assert_code(third, Code::ResourceExhausted, "SANDBOX_MAX_SANDBOXES");
    // Ending one frees its slot.
    client.kill_sandbox(pb::KillSandboxRequest { sandbox_id: first.sandbox_id }).await.unwrap();
    create(&mut client, "worker").await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn processes_per_sandbox() {
    let broker = TestBroker::start(|c| c.limits.max_processes_per_sandbox = 2).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    run(&mut client, &sandbox.sandbox_id, "true").await;
    run(&mut client, &sandbox.sandbox_id, "true").await;
    let third = client.start_process(start_request(&sandbox.sandbox_id, "true")).await;
    assert_code(third, Code::ResourceExhausted, "SANDBOX_MAX_PROCESSES_PER_SANDBOX");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_starts_cannot_overshoot_the_process_limit() {
    let broker = TestBroker::start(|c| c.limits.max_processes_per_sandbox = 2).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let starts = (0..6).map(|_| {
        let mut client = client.clone();
        let request = start_request(&sandbox.sandbox_id, "true");
        tokio::spawn(async move { client.start_process(request).await.map(drop) })
    });
    let mut started = 0;
    for start in starts {
        match start.await.unwrap() {
            Ok(()) => started += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert_eq!(started, 2);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_streams() {
    let broker = TestBroker::start(|c| c.limits.max_streams = 1).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let mut request = start_request(&sandbox.sandbox_id, "read x");
    request.stdin = true;
    let open = client.start_process(request).await.unwrap().into_inner();
    let attach = attach_request(&sandbox.sandbox_id, "p1", 0);
    assert_code(client.attach_process(attach.clone()).await, Code::ResourceExhausted, "SANDBOX_MAX_STREAMS");
    // A refused StartProcess starts nothing.
    assert_code(
        client.start_process(start_request(&sandbox.sandbox_id, "true")).await,
        Code::ResourceExhausted,
        "SANDBOX_MAX_STREAMS",
    );
    drop(open);
    eventually("the closed stream frees its permit", || {
        let mut client = client.clone();
        let attach = attach.clone();
        async move { client.attach_process(attach).await.is_ok() }
    })
    .await;
    assert_eq!(processes(&mut client, &sandbox.sandbox_id).await.len(), 1);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn timeout_range() {
    let broker = TestBroker::start(|c| c.limits.max_timeout = Duration::from_secs(3600)).await;
    let mut client = broker.client().await;
    for (seconds, needle) in [(7200, "timeout: 2h is outside the allowed range"), (-5, "timeout: must not be negative")]
    {
        let request = pb::CreateSandboxRequest {
            template: "worker".into(),
            timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        assert_code(client.create_sandbox(request).await, Code::InvalidArgument, needle);
    }
    let sandbox = create(&mut client, "worker").await;
    let huge = pb::SetSandboxTimeoutRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        timeout: Some(prost_types::Duration { seconds: i64::MAX, nanos: 0 }),
    };
    assert_code(client.set_sandbox_timeout(huge).await, Code::InvalidArgument, "timeout");
    let unset = pb::SetSandboxTimeoutRequest { sandbox_id: sandbox.sandbox_id, timeout: None };
    assert_code(client.set_sandbox_timeout(unset).await, Code::InvalidArgument, "timeout");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn file_size_and_message_size() {
    let broker = TestBroker::start(|c| {
        c.limits.max_file_bytes = 1000;
        c.limits.max_message_bytes = 64 << 10;
    })
    .await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let write = |content: Vec<u8>| pb::WriteFileRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        path: "f".into(),
        content: content.into(),
    };
    client.write_file(write(vec![b'a'; 1000])).await.unwrap();
    assert_code(client.write_file(write(vec![b'a'; 1001])).await, Code::ResourceExhausted, "SANDBOX_MAX_FILE_BYTES");
    assert_code(
        client.write_file(write(vec![b'a'; 100 << 10])).await,
        Code::ResourceExhausted,
        "SANDBOX_MAX_MESSAGE_BYTES",
    );
    // A file grown past the limit inside the sandbox cannot be read out.
    run(&mut client, &sandbox.sandbox_id, "head -c 2000 /dev/zero > big").await;
    let read = pb::ReadFileRequest { sandbox_id: sandbox.sandbox_id.clone(), path: "big".into() };
    assert_code(client.read_file(read).await, Code::ResourceExhausted, "SANDBOX_MAX_FILE_BYTES");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn spool_bytes_drops_the_oldest_and_reports_the_gap() {
    let broker = TestBroker::start(|c| c.limits.spool_bytes = 64 << 10).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let live = run(&mut client, &sandbox.sandbox_id, "for i in $(seq 1 20000); do echo line $i; done").await;
    assert!(stdout_of(&live).ends_with("line 20000\n"));
    let attach = attach_request(&sandbox.sandbox_id, "p1", 0);
    let replay = collect(client.attach_process(attach).await.unwrap().into_inner()).await;
    let Some(Event::Truncated(truncated)) = &replay[0].event else { panic!("first event: {:?}", replay[0]) };
    assert!(truncated.first_available_seq > 1);
    assert_eq!(replay[0].seq, truncated.first_available_seq - 1);
    assert_contiguous(&replay[1..], truncated.first_available_seq);
    assert!(stdout_of(&replay).len() <= 64 << 10);
    assert_eq!(replay.last(), live.last(), "the tail is intact");
    broker.stop().await.unwrap();
}
