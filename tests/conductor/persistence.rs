//! Everything survives a conductor restart — on SQLite and on PostgreSQL — and a worker running
//! across the restart is re-adopted with no output lost.

use std::time::Duration;

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::conductor::v1::conductor_event::Event;

use super::*;

async fn state_survives_a_restart(database_url: Option<String>) {
    let broker = TestBroker::start(|_| {}).await;
    let data = tempfile::tempdir().unwrap();
    let dir = conductor_dir(data.path());
    let with_db = |url: Option<String>| move |config: &mut ConductorConfig| config.database_url = url;

    let conductor = TestConductor::start(&broker, &dir, with_db(database_url.clone())).await;
    let mut client = conductor.client().await;
    let events = send(&mut client, "", "run `echo persisted`").await;
    let conversation = conversation_id(&events);
    let worker_id = spawned(&events)[0].worker_id.clone();
    send(&mut client, "", "remember color: blue").await;
    conductor.stop().await;

    let conductor = TestConductor::start(&broker, &dir, with_db(database_url)).await;
    let mut client = conductor.client().await;
    let conversations =
        client.list_conversations(pb::ListConversationsRequest::default()).await.unwrap().into_inner().conversations;
    assert_eq!(conversations.len(), 2);
    let stored = client
        .get_conversation(pb::GetConversationRequest { conversation_id: conversation.clone() })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(stored.messages[0].text, "run `echo persisted`");
    assert!(stored.messages.last().unwrap().text.contains("persisted"));
    let worker = get_worker(&mut client, &worker_id).await;
    assert_eq!((worker.state, worker.exit_code), (pb::WorkerState::Succeeded as i32, Some(0)));
    assert!(worker.summary.contains("persisted"), "{}", worker.summary);
    let memories = client.list_memories(pb::ListMemoriesRequest::default()).await.unwrap().into_inner().memories;
    assert_eq!((memories[0].key.as_str(), memories[0].content.as_str()), ("color", "blue"));
    // The conversation goes on where it stopped.
    let events = send(&mut client, &conversation, "run `echo again`").await;
    assert_eq!(conversation_id(&events), conversation);
    conductor.stop().await;
}

#[tokio::test]
async fn state_survives_a_conductor_restart_on_sqlite() {
    state_survives_a_restart(None).await;
}

#[tokio::test]
async fn state_survives_a_conductor_restart_on_postgres() {
    let database = postgres::FreshDatabase::create().await;
    state_survives_a_restart(Some(database.url().to_owned())).await;
}

#[tokio::test]
async fn a_worker_running_across_a_conductor_restart_is_readopted_with_no_output_lost() {
    let broker = TestBroker::start(|_| {}).await;
    let data = tempfile::tempdir().unwrap();
    let dir = conductor_dir(data.path());
    let conductor = TestConductor::start(&broker, &dir, |_| {}).await;
    let mut client = conductor.client().await;
    let mut turn = client.clone();
    let script = "for i in $(seq 1 60); do echo line-$i; sleep 0.05; done";
    let request = pb::SendMessageRequest { text: format!("run `{script}`"), ..Default::default() };
    let mut stream = turn.send_message(request).await.unwrap().into_inner();
    let mut seen = Vec::new();
    let worker_id = loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.message()).await.expect("turn events");
        match event.unwrap().and_then(|e| e.event) {
            Some(Event::WorkerSpawned(spawned)) => break spawned.worker_id,
            Some(other) => seen.push(other),
            None => panic!("the turn ended without spawning: {seen:?}"),
        }
    };
    // Keep watching until the conductor goes away mid-turn.
    let _watcher = tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    let worker = get_worker(&mut client, &worker_id).await;
    // Let it produce some output, then restart the conductor while it runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    conductor.stop().await;
    let conductor = TestConductor::start(&broker, &dir, |_| {}).await;
    let mut client = conductor.client().await;
    let mut worker_now = get_worker(&mut client, &worker.worker_id).await;
    for _ in 0..200 {
        if worker_now.state != pb::WorkerState::Running as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        worker_now = get_worker(&mut client, &worker.worker_id).await;
    }
    assert_eq!(worker_now.state, pb::WorkerState::Succeeded as i32, "re-adopted and finished: {worker_now:?}");
    assert!(worker_now.summary.contains("line-60"), "{}", worker_now.summary);
    let (stdout, seqs, exit) = attach_stdout(&mut client, &worker.worker_id, 0).await;
    let expected: String = (1..=60).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(stdout, expected, "every line once, in order");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous seqs: {seqs:?}");
    assert_eq!(exit, Some(0));
    assert!(worker_now.last_seq >= *seqs.last().unwrap() - 1, "the conductor recorded how far it followed");
    conductor.stop().await;
}
