//! WriteFile / ReadFile: round trips and every way out of the workspace refused.

use agentstudio_proto::sandbox::v1 as pb;
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn files_round_trip_and_are_visible_to_processes() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let write = pb::WriteFileRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        path: "src/deep/hello.txt".into(),
        content: "hello\n".into(),
    };
    client.write_file(write).await.unwrap();
    let script = "cat src/deep/hello.txt; echo more > src/deep/out.txt; echo again >> src/deep/hello.txt && mkdir src/deep/sub && echo writable";
    let events = run(&mut client, &sandbox.sandbox_id, script).await;
    assert_eq!(
        stdout_of(&events),
        "hello\nwritable\n",
        "files the broker wrote belong to the sandbox: {}",
        stderr_of(&events)
    );
    let read = pb::ReadFileRequest { sandbox_id: sandbox.sandbox_id.clone(), path: "src/deep/out.txt".into() };
    assert_eq!(&client.read_file(read).await.unwrap().into_inner().content[..], b"more\n");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn path_escapes_are_refused() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let id = sandbox.sandbox_id.clone();
    // Symlinks a process in the sandbox made, pointing out of the workspace.
    run(&mut client, &id, "ln -s /etc/hostname abs; ln -s ../../.. up; ln -s /etc dir; mkdir -p ok; ln -s ok inside")
        .await;
    let host_file = broker.data_dir.path().join("outside.txt");
    std::fs::write(&host_file, "host secret").unwrap();
    // An E2B sandbox is a whole VM: a symlink out of its workspace reaches only that VM, so the
    // e2b provider does not resolve them (and the fake's symlinks would lead into this host).
    let symlinks_checked = local_only("symlinks out of the workspace lead to the host around it");
    for (path, needle) in [
        ("/etc/passwd", "path: \"/etc/passwd\" is absolute"),
        ("../outside.txt", "contains `..`"),
        ("a/../../outside.txt", "contains `..`"),
        ("", "path: must not be empty"),
        ("abs", "resolves outside the sandbox workspace"),
        ("up/outside.txt", "resolves outside the sandbox workspace"),
        ("dir/hostname", "resolves outside the sandbox workspace"),
    ] {
        if needle.starts_with("resolves outside") && !symlinks_checked {
            continue;
        }
        let read = pb::ReadFileRequest { sandbox_id: id.clone(), path: path.into() };
        assert_code(client.read_file(read).await, Code::InvalidArgument, needle);
        let write = pb::WriteFileRequest { sandbox_id: id.clone(), path: path.into(), content: "pwned".into() };
        assert_code(client.write_file(write).await, Code::InvalidArgument, needle);
    }
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host secret");
    if symlinks_checked {
        let write = pb::WriteFileRequest { sandbox_id: id.clone(), path: "dir/new/file".into(), content: "x".into() };
        assert_code(client.write_file(write).await, Code::InvalidArgument, "resolves outside");
    }
    // A symlink that stays inside works.
    let write = pb::WriteFileRequest { sandbox_id: id.clone(), path: "inside/f".into(), content: "fine".into() };
    client.write_file(write).await.unwrap();
    run(&mut client, &id, "mkfifo fifo").await;
    let fifo = pb::ReadFileRequest { sandbox_id: id.clone(), path: "fifo".into() };
    assert_code(client.read_file(fifo).await, Code::InvalidArgument, "not a regular file");
    let missing = pb::ReadFileRequest { sandbox_id: id.clone(), path: "nope.txt".into() };
    assert_code(client.read_file(missing).await, Code::NotFound, "does not exist");
    let directory = pb::ReadFileRequest { sandbox_id: id, path: "ok".into() };
    assert_code(client.read_file(directory).await, Code::InvalidArgument, "is a directory");
    broker.stop().await.unwrap();
}
