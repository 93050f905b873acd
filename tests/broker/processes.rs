//! Running processes and streaming their output: live, replayed, resumed.

use agentstudio_proto::sandbox::v1 as pb;
use agentstudio_proto::sandbox::v1::process_event::Event;

use crate::common::*;

#[tokio::test]
async fn create_start_stream_and_exit_code() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    assert_eq!(sandbox.template, "worker");
    assert_eq!(sandbox.state, pb::SandboxState::Running as i32);
    assert_eq!(sandbox.provider, PROVIDER.name());
    assert!(sandbox.expires_at.unwrap().seconds > sandbox.created_at.unwrap().seconds);

    let events = run(&mut client, &sandbox.sandbox_id, "echo out; echo err >&2; exit 7").await;
    assert_contiguous(&events, 1);
    assert!(matches!(events[0].event, Some(Event::Started(pb::process_event::Started { pid })) if pid > 0));
    assert_eq!(stdout_of(&events), "out\n");
    assert_eq!(stderr_of(&events), "err\n");
    let exited = exit_of(&events).expect("exited event");
    assert_eq!((exited.exit_code, exited.signal), (7, 0));
    assert!(matches!(events.last().unwrap().event, Some(Event::Exited(_))), "exited is last");
    // Output stays private to the broker on the host.
    let spool = broker.data_dir.path().join("data/spool");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(spool).unwrap().permissions()) & 0o077, 0);
    assert!(events.iter().all(|e| e.process_id == events[0].process_id));
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn the_sandbox_is_isolated_and_gets_only_declared_environment() {
    if !local_only("bubblewrap's isolation (namespaces, read-only host root, no capabilities, hidden paths)") {
        return;
    }
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create_with(
        &mut client,
        pb::CreateSandboxRequest {
            template: "infrastructure".into(),
            env: metadata(&[("FROM_SANDBOX", "s")]),
            ..Default::default()
        },
    )
    .await;
    let mut request = start_request(
        &sandbox.sandbox_id,
        "env | sort; echo uid=$(id -u); echo host=$(hostname); echo pid=$$; \
         touch /usr/escape 2>/dev/null && echo WROTE-ROOT; echo hi > /workspace/f && echo wrote-workspace; \
         ls /tmp | wc -l; cat /proc/net/dev | grep -c ':' ; grep CapEff /proc/self/status; \
         echo hidden=$(ls -A /root | wc -l)$(ls -A /home | wc -l); [ -e /run ] && echo RUN-VISIBLE; \
         head -c1 /etc/shadow >/dev/null 2>&1 && echo READ-SHADOW; ls / | tr '\\n' ' '",
    );
    request.env = metadata(&[("FROM_REQUEST", "r")]);
    let events = collect(client.start_process(request).await.unwrap().into_inner()).await;
    let out = stdout_of(&events);
    assert!(out.contains("FROM_SANDBOX=s\n") && out.contains("FROM_REQUEST=r\n"), "{out}");
    assert!(out.contains("LANG=C.UTF-8"), "template env is applied: {out}");
    assert!(!out.contains("CARGO") && !out.contains("RUST"), "broker environment leaked: {out}");
    assert!(out.contains("uid=1000\n"), "runs unprivileged: {out}");
    assert!(out.contains("host=sandbox\n"), "own uts namespace: {out}");
    assert!(out.contains("pid=2\n") || out.contains("pid=1\n"), "own pid namespace: {out}");
    assert!(!out.contains("WROTE-ROOT"), "host root is read-only: {out}");
    assert!(out.contains("wrote-workspace"), "{out}");
    assert!(out.contains("\n0\n"), "private empty /tmp: {out}");
    assert!(out.contains("\n1\n"), "infrastructure has no network (only lo): {out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "no capabilities: {out}");
    assert!(out.contains("hidden=00\n"), "/root and /home are empty inside: {out}");
    assert!(!out.contains("RUN-VISIBLE"), "/run (sockets, secrets) is not bound: {out}");
    if std::path::Path::new("/etc/shadow").exists() {
        assert!(!out.contains("READ-SHADOW"), "root-only host files stay unreadable: {out}");
    }
    let file = broker.workspaces().join(&sandbox.sandbox_id).join("f");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "hi\n");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn attach_after_a_seq_replays_exactly_the_missing_events() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let all = run(&mut client, &sandbox.sandbox_id, "for i in $(seq 1 300); do echo line $i; done").await;
    let last = all.last().unwrap().seq;
    for after in [0, 1, 2, last / 2, last - 1, last] {
        let request = attach_request(&sandbox.sandbox_id, &all[0].process_id, after);
        let replay = collect(client.attach_process(request).await.unwrap().into_inner()).await;
        assert_eq!(replay, all[after as usize..].to_vec(), "after {after}");
    }
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_dropped_mid_stream_resumes_with_no_gap_and_no_duplicate() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let script = "for i in $(seq 1 400); do echo line $i; if [ $((i % 50)) = 0 ]; then sleep 0.05; fi; done";
    let mut stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(stream.message().await.unwrap().unwrap());
    }
    drop(stream);
    // Reconnect on a fresh connection, as a restarted client would.
    let mut other = broker.client().await;
    let request = attach_request(&sandbox.sandbox_id, &seen[0].process_id, seen.last().unwrap().seq);
    seen.extend(collect(other.attach_process(request).await.unwrap().into_inner()).await);
    assert_contiguous(&seen, 1);
    let expected: String = (1..=400).map(|i| format!("line {i}\n")).collect();
    assert_eq!(stdout_of(&seen), expected);
    assert_eq!(exit_of(&seen).unwrap().exit_code, 0);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_process_keeps_running_and_spooling_while_nobody_is_attached() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    // Far more than a pipe buffer: the process would block if nobody read its output.
    let script = "head -c 3000000 /dev/zero | tr '\\0' 'x'; echo; echo done";
    let stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    drop(stream);
    let sandbox_id = sandbox.sandbox_id.clone();
    eventually("process exits with nobody attached", || {
        let mut client = client.clone();
        let sandbox_id = sandbox_id.clone();
        async move {
            let processes = processes(&mut client, &sandbox_id).await;
            processes.len() == 1 && !processes[0].running && processes[0].exit_code == Some(0)
        }
    })
    .await;
    let request = pb::AttachProcessRequest { sandbox_id, process_id: "p1".into(), after_seq: 0 };
    let events = collect(client.attach_process(request).await.unwrap().into_inner()).await;
    assert_contiguous(&events, 1);
    let out = stdout_of(&events);
    assert_eq!(out.len(), 3_000_000 + 1 + 5);
    assert!(out.ends_with("\ndone\n"));
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn several_watchers_see_the_same_live_events() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let mut request = start_request(&sandbox.sandbox_id, "read line; echo got $line; for i in 1 2 3; do echo $i; done");
    request.stdin = true;
    let first = client.start_process(request).await.unwrap().into_inner();
    let attach = attach_request(&sandbox.sandbox_id, "p1", 0);
    let second = client.attach_process(attach).await.unwrap().into_inner();
    let input = input_request(&sandbox.sandbox_id, "p1", "hello\n");
    client.send_process_input(input).await.unwrap();
    let (a, b) = tokio::join!(collect(first), collect(second));
    assert_eq!(a, b);
    assert_eq!(stdout_of(&a), "got hello\n1\n2\n3\n");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn stdin_can_be_written_and_closed() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let mut request = start_request(&sandbox.sandbox_id, "wc -c");
    request.stdin = true;
    let stream = client.start_process(request).await.unwrap().into_inner();
    for chunk in ["abc", "defg"] {
        let input = input_request(&sandbox.sandbox_id, "p1", chunk.as_bytes().to_vec());
        client.send_process_input(input).await.unwrap();
    }
    let close = pb::CloseProcessInputRequest { sandbox_id: sandbox.sandbox_id.clone(), process_id: "p1".into() };
    client.close_process_input(close).await.unwrap();
    let events = collect(stream).await;
    assert_eq!(stdout_of(&events).trim(), "7");
    // Without stdin = true, input is refused with the reason.
    let events = run(&mut client, &sandbox.sandbox_id, "true").await;
    let input = input_request(&sandbox.sandbox_id, &events[0].process_id, "x");
    assert_code(client.send_process_input(input).await, tonic::Code::FailedPrecondition, "exited");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_stuck_stdin_write_refuses_others_and_close_releases_it() {
    if !local_only(
        "e2b gap: a second write is refused while one is in flight, but CloseProcessInput does not \
         cancel a stuck write (it waits for envd's request timeout, 30 s)",
    ) {
        return;
    }
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let mut request = start_request(&sandbox.sandbox_id, "sleep 30");
    request.stdin = true;
    let _stream = client.start_process(request).await.unwrap().into_inner();
    let input = |data: Vec<u8>| input_request(&sandbox.sandbox_id, "p1", data);
    // More than a pipe holds, to a process that never reads: this write blocks.
    let mut writer = client.clone();
    let big = input(vec![b'x'; 4 << 20]);
    let stuck = tokio::spawn(async move { writer.send_process_input(big).await });
    eventually("a second write is refused while the first is stuck", || {
        let mut client = client.clone();
        let small = input(b"y".to_vec());
        async move {
            matches!(client.send_process_input(small).await, Err(s) if s.message().contains("still in progress"))
        }
    })
    .await;
    let close = pb::CloseProcessInputRequest { sandbox_id: sandbox.sandbox_id.clone(), process_id: "p1".into() };
    tokio::time::timeout(std::time::Duration::from_secs(5), client.close_process_input(close))
        .await
        .expect("close does not wait behind the stuck write")
        .unwrap();
    let result = stuck.await.unwrap();
    assert_code(result, tonic::Code::FailedPrecondition, "closed during the write");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_reaches_the_program_which_may_exit_gracefully() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let script = "trap 'echo cleaning up; exit 0' TERM; echo ready; while :; do sleep 0.05; done";
    let mut stream = client.start_process(start_request(&sandbox.sandbox_id, script)).await.unwrap().into_inner();
    let mut seen = vec![stream.message().await.unwrap().unwrap()];
    while !stdout_of(&seen).contains("ready") {
        seen.push(stream.message().await.unwrap().unwrap());
    }
    let signal = pb::SignalProcessRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        process_id: seen[0].process_id.clone(),
        signal: pb::Signal::Sigterm as i32,
    };
    client.signal_process(signal).await.unwrap();
    seen.extend(collect(stream).await);
    assert!(stdout_of(&seen).contains("cleaning up"), "{seen:?}");
    let exited = exit_of(&seen).unwrap();
    assert_eq!((exited.exit_code, exited.signal), (0, 0), "the program's own exit, not bubblewrap's death");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_signal_ends_the_process_tree_and_is_reported() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let marker = format!("1000.{}", std::process::id());
    let script = format!("sleep {marker} & sleep {marker}; echo never");
    let mut stream = client.start_process(start_request(&sandbox.sandbox_id, &script)).await.unwrap().into_inner();
    let started = stream.message().await.unwrap().unwrap();
    eventually("sleeps running", || async { pids_with(&marker).len() >= 2 }).await;
    let signal = pb::SignalProcessRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        process_id: started.process_id.clone(),
        signal: pb::Signal::Sigterm as i32,
    };
    client.signal_process(signal).await.unwrap();
    let events = collect(stream).await;
    let exited = exit_of(&events).unwrap();
    assert!(exited.signal == libc::SIGTERM || exited.exit_code == 128 + libc::SIGTERM, "{exited:?}");
    assert!(!stdout_of(&events).contains("never"));
    eventually("no sleep survives", || async { pids_with(&marker).is_empty() }).await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn list_processes_reports_argv_tag_state_and_exit_code() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let mut request = start_request(&sandbox.sandbox_id, "exit 4");
    request.tag = "build".into();
    collect(client.start_process(request).await.unwrap().into_inner()).await;
    let processes = processes(&mut client, &sandbox.sandbox_id).await;
    assert_eq!(processes.len(), 1);
    let p = &processes[0];
    assert_eq!((p.process_id.as_str(), p.tag.as_str(), p.running, p.exit_code), ("p1", "build", false, Some(4)));
    assert_eq!(p.argv, ["sh", "-c", "exit 4"]);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_program_is_reported_in_band() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let request = pb::StartProcessRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        argv: vec!["no-such-program-xyz".into()],
        ..Default::default()
    };
    let events = collect(client.start_process(request).await.unwrap().into_inner()).await;
    assert_ne!(exit_of(&events).unwrap().exit_code, 0);
    assert!(stderr_of(&events).contains("no-such-program-xyz"));
    broker.stop().await.unwrap();
}
