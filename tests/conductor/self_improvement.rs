//! The seed's self-improvement scenario end to end, offline (`rules` brain, `shell`
//! infrastructure workers, local-git, local builder), and its guard rails: approval voided by a
//! new push, merge without approval, a rejected PR never merging, a failing smoke test, rollback —
//! and the same flow driven by the Claude brain against a fake model.

use agentstudio_proto::conductor::v1 as pb;
use agentstudio_proto::sandbox::v1 as sandbox_pb;
use serde_json::json;
use tonic::Code;

use crate::common::{create, exit_of, run, stderr_of};
use crate::*;

async fn change(client: &mut Client, number: u64) -> pb::Change {
    client.get_change(pb::GetChangeRequest { pr_number: number }).await.unwrap().into_inner().change.unwrap()
}

async fn wait_settled(client: &mut Client, number: u64) -> pb::Change {
    for _ in 0..300 {
        let change = change(client, number).await;
        if change.state != pb::ChangeState::Approved as i32 {
            return change;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("change #{number} did not settle");
}

/// Vets `pr` (as `GetChange` does), approves its head as alice and waits for the pipeline.
async fn approve_and_settle(client: &mut Client, pr: &sandbox_pb::PullRequest) -> pb::Change {
    change(client, pr.number).await;
    let request = pb::ApproveChangeRequest {
        pr_number: pr.number,
        head_sha: pr.head_sha.clone(),
        approver: "alice".into(),
        ..Default::default()
    };
    client.approve_change(request).await.unwrap();
    wait_settled(client, pr.number).await
}

async fn worker_versions(client: &mut Client) -> Vec<pb::TemplateVersion> {
    let request = pb::ListTemplateVersionsRequest { template: "worker".into() };
    client.list_template_versions(request).await.unwrap().into_inner().versions
}

#[tokio::test]
async fn the_seed_scenario_runs_end_to_end_offline() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.conductor.client().await;
    let first_version = worker_versions(&mut client).await.into_iter().find(|v| v.active).unwrap();

    // 1. Commands, spawn_infrastructure_worker among them.
    let events = send(&mut client, "", "List your available commands").await;
    assert!(reply_text(&events).contains("spawn_infrastructure_worker"), "{}", reply_text(&events));
    let conversation = conversation_id(&events);

    // 2. Infrastructure workers: template and code host, named.
    let events = send(&mut client, &conversation, "Check if infrastructure workers are enabled").await;
    let reply = reply_text(&events);
    assert!(reply.contains("ENABLED") && reply.contains("local-git") && reply.contains("worker-template"), "{reply}");

    // 3. An infrastructure worker reads the checkout and reports; no change, no PR.
    let events = send(
        &mut client,
        &conversation,
        "Spawn an infrastructure worker to analyze the current worker template Dockerfile and report what's installed",
    )
    .await;
    let reply = reply_text(&events);
    assert!(reply.contains("ubuntu:22.04") && reply.contains("nodejs") && reply.contains("claude-code"), "{reply}");
    assert!(reply.contains("no pull request was opened"), "{reply}");

    // 4. Install Playwright → PR → vetted, a human is asked.
    let events =
        send(&mut client, &conversation, "Install Playwright in the worker template. Create a PR with the changes.")
            .await;
    let reply = reply_text(&events);
    assert!(reply.contains("Pull request #1") && reply.contains("NEEDS_HUMAN"), "{reply}");
    assert!(reply.contains("You cannot approve it yourself") || reply.contains("human approval"), "{reply}");
    let opened = change(&mut client, 1).await;
    assert_eq!(opened.state, pb::ChangeState::AwaitingApproval as i32, "{}", opened.state_detail);
    let report = opened.report.clone().unwrap();
    assert_eq!(report.verdict, pb::Verdict::NeedsHuman as i32, "{:?}", report.findings);
    assert!(!report.findings.iter().any(|f| f.severity == "block"), "{:?}", report.findings);
    assert!(report.digest.starts_with("sha256:"));
    assert_eq!(opened.requested_by, "test:alice");

    let events = send(&mut client, &conversation, "Show me the PR diff").await;
    let reply = reply_text(&events);
    assert!(reply.contains("+RUN npm install -g playwright"), "{reply}");

    // Approval comes from the person's own message, not from the model.
    let events = send(&mut client, &conversation, "Approved. Merge and rebuild.").await;
    let reply = reply_text(&events);
    assert!(reply.contains("Done:") && reply.contains("promoted worker"), "{reply}");
    let merged = change(&mut client, 1).await;
    assert_eq!(merged.state, pb::ChangeState::Promoted as i32, "{}", merged.state_detail);
    let approval = merged.approval.unwrap();
    assert!(
        approval.used
            && approval.approver == "test:alice"
            && approval.head_sha == opened.pull_request.unwrap().head_sha
    );

    let events = send(&mut client, &conversation, "What's the new template version?").await;
    let reply = reply_text(&events);
    let versions = worker_versions(&mut client).await;
    let active = versions.iter().find(|v| v.active).unwrap();
    assert_ne!(active.version_id, first_version.version_id);
    assert_eq!(active.pr_number, 1);
    assert!(reply.contains(&format!("{} [ACTIVE]", active.version_id)), "{reply}");

    // The capability is remembered with its version, PR and evidence.
    let capabilities = client.list_capabilities(pb::ListCapabilitiesRequest {}).await.unwrap().into_inner();
    let playwright = capabilities.capabilities.iter().find(|c| c.name == "playwright").expect("playwright recorded");
    assert_eq!((playwright.since_version.as_str(), playwright.pr_number), (active.version_id.as_str(), 1));
    assert!(playwright.evidence.contains("smoke test"), "{}", playwright.evidence);

    // The next worker runs on the new version.
    let events = send(&mut client, &conversation, "run `echo on the new version`").await;
    let worker = &spawned(&events)[0];
    assert_eq!(worker.template_version, active.version_id);

    // 5. An unknown package is questioned; insisting opens a PR that vetting rejects; nothing merges.
    let events = send(&mut client, &conversation, "Install a random npm package called malicious-package").await;
    let reply = reply_text(&events);
    assert!(reply.contains("install malicious-package anyway") && spawned(&events).is_empty(), "{reply}");
    let events = send(&mut client, &conversation, "Yes, install malicious-package anyway").await;
    let reply = reply_text(&events);
    assert!(reply.contains("Pull request #2") && reply.contains("REJECT"), "{reply}");
    let rejected = change(&mut client, 2).await;
    assert_eq!(rejected.state, pb::ChangeState::VettingRejected as i32);
    let blocking: Vec<_> = rejected.report.unwrap().findings.into_iter().filter(|f| f.severity == "block").collect();
    assert!(
        blocking.iter().any(|f| f.rule == "package.unknown" && f.message.contains("malicious-package")),
        "{blocking:?}"
    );
    let events = send(&mut client, &conversation, "approved #2").await;
    assert!(reply_text(&events).contains("did not merge"), "{}", reply_text(&events));
    let head = rejected.pull_request.unwrap().head_sha;
    let err = client
        .approve_change(pb::ApproveChangeRequest {
            pr_number: 2,
            head_sha: head.clone(),
            approver: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("override"), "{}", err.message());
    let after = worker_versions(&mut client).await;
    assert_eq!(after.iter().find(|v| v.active).unwrap().version_id, active.version_id, "nothing merged or promoted");
    // Overriding REJECT takes the explicit flag and a reason.
    let override_request = |reason: &str| pb::ApproveChangeRequest {
        pr_number: 2,
        head_sha: head.clone(),
        approver: "bob".into(),
        override_reject: true,
        override_reason: reason.into(),
        ..Default::default()
    };
    let err = client.approve_change(override_request(" ")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    client.approve_change(override_request("internal package, reviewed by hand")).await.unwrap();
    let overridden = wait_settled(&mut client, 2).await;
    let approval = overridden.approval.unwrap();
    assert_eq!(approval.override_reason, "internal package, reviewed by hand");
    assert!(approval.used, "{}", overridden.state_detail);
    stack.conductor.stop().await;
    stack.broker.stop().await.unwrap();
}

/// Opens a PR straight through the broker from an infrastructure sandbox running `script`.
async fn broker_pr(broker: &TestBroker, script: &str, title: &str) -> (String, sandbox_pb::PullRequest) {
    let mut broker = broker.client().await;
    let sandbox = create(&mut broker, "infrastructure").await;
    let events = run(&mut broker, &sandbox.sandbox_id, script).await;
    assert_eq!(exit_of(&events).unwrap().exit_code, 0, "{}", stderr_of(&events));
    let request = sandbox_pb::ProposeChangeRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        title: title.into(),
        body: String::new(),
        pull_request_number: 0,
    };
    let pr = broker.propose_change(request).await.unwrap().into_inner().pull_request.unwrap();
    (sandbox.sandbox_id, pr)
}

#[tokio::test]
async fn approvals_bind_to_the_head_and_guard_every_merge() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.conductor.client().await;
    let (sandbox_id, pr) =
        broker_pr(&stack.broker, "echo '# a comment' >> worker/Dockerfile", "Comment the Dockerfile").await;
    let vetted = change(&mut client, pr.number).await;
    assert_eq!(vetted.state, pb::ChangeState::AwaitingApproval as i32, "{}", vetted.state_detail);
    let digest = vetted.report.unwrap().digest;

    // A new push: the head moves; an approval of the old head is refused and nothing merges.
    let mut broker = stack.broker.client().await;
    run(&mut broker, &sandbox_id, "echo '# another' >> worker/Dockerfile").await;
    let push = sandbox_pb::ProposeChangeRequest {
        sandbox_id,
        title: "Comment".into(),
        body: String::new(),
        pull_request_number: 0,
    };
    let pushed = broker.propose_change(push).await.unwrap().into_inner().pull_request.unwrap();
    let approve = |head: &str, digest: &str| pb::ApproveChangeRequest {
        pr_number: pr.number,
        head_sha: head.into(),
        approver: "alice".into(),
        report_digest: digest.into(),
        ..Default::default()
    };
    let err = client.approve_change(approve(&pr.head_sha, &digest)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("moved after you reviewed it"), "{}", err.message());
    let revetted = change(&mut client, pr.number).await;
    let report = revetted.report.unwrap();
    assert_eq!(report.head_sha, pushed.head_sha, "the new head was vetted");
    assert_ne!(report.digest, digest);
    // The digest the approver saw must be the current one.
    let err = client.approve_change(approve(&pushed.head_sha, &digest)).await.unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("vetting report"), "{}", err.message());
    // Bad input names the field.
    let err = client
        .approve_change(pb::ApproveChangeRequest { pr_number: pr.number, ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("approver"), "{}", err.message());

    // Merge without approval at the broker: PERMISSION_DENIED.
    let merge = sandbox_pb::MergePullRequestRequest {
        number: pr.number,
        expected_head_sha: pushed.head_sha.clone(),
        approval: None,
    };
    let err = broker.merge_pull_request(merge).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Approve the current head → merged, built, smoke-tested, promoted.
    client.approve_change(approve(&pushed.head_sha, &report.digest)).await.unwrap();
    let done = wait_settled(&mut client, pr.number).await;
    assert_eq!(done.state, pb::ChangeState::Promoted as i32, "{}", done.state_detail);
    // A second approval of a merged PR is refused.
    let err = client.approve_change(approve(&pushed.head_sha, &report.digest)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    stack.conductor.stop().await;
    stack.broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_smoke_test_keeps_the_old_version_and_rollback_restores_any() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.conductor.client().await;
    let original = worker_versions(&mut client).await.into_iter().find(|v| v.active).unwrap();

    // Promote a good change first.
    let (_, good_pr) = broker_pr(&stack.broker, "echo '# fine' >> worker/Dockerfile", "Fine").await;
    assert_eq!(approve_and_settle(&mut client, &good_pr).await.state, pb::ChangeState::Promoted as i32);
    let breaks_smoke =
        "sed -i 's/^smoke_test = \"bash --version.*/smoke_test = \"echo checking; exit 3\"/' worker/template.toml";
    let (_, pr) = broker_pr(&stack.broker, breaks_smoke, "Change the smoke test").await;
    let done = approve_and_settle(&mut client, &pr).await;
    assert_eq!(done.state, pb::ChangeState::SmokeTestFailed as i32, "{}", done.state_detail);
    assert!(done.state_detail.contains("exit 3") && done.state_detail.contains("checking"), "{}", done.state_detail);
    assert!(done.state_detail.contains("previous version stays active"), "{}", done.state_detail);
    let versions = worker_versions(&mut client).await;
    let good = versions.iter().find(|v| v.pr_number == good_pr.number).unwrap();
    assert!(good.active, "the version before the failed one stays active: {versions:?}");
    assert_eq!(versions.len(), 3, "the failed candidate is listed, not active");
    // The failed merge is reverted on the branch: the next change does not inherit it.
    assert!(done.state_detail.contains("the merge is reverted on the branch as"), "{}", done.state_detail);
    let (_, next) = broker_pr(&stack.broker, "echo '# next' >> worker/Dockerfile", "Next").await;
    assert!(!next.diff.contains("exit 3"), "{}", next.diff);
    let next_done = approve_and_settle(&mut client, &next).await;
    assert_eq!(next_done.state, pb::ChangeState::Promoted as i32, "{}", next_done.state_detail);
    let versions = worker_versions(&mut client).await;
    assert!(versions.iter().any(|v| v.active && v.pr_number == next.number), "{versions:?}");

    // A rejected PR is closed and can never merge.
    let (_, second) = broker_pr(&stack.broker, "echo '# x' >> worker/Dockerfile", "Another").await;
    let err = client
        .reject_change(pb::RejectChangeRequest {
            pr_number: second.number,
            reason: String::new(),
            rejected_by: "alice".into(),
        })
        .await
        .unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("reason"), "{}", err.message());
    let rejected = client
        .reject_change(pb::RejectChangeRequest {
            pr_number: second.number,
            reason: "not needed".into(),
            rejected_by: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .change
        .unwrap();
    assert_eq!(rejected.state, pb::ChangeState::Closed as i32);
    let err = client
        .approve_change(pb::ApproveChangeRequest {
            pr_number: second.number,
            head_sha: second.head_sha.clone(),
            approver: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());

    // Roll back past all of them to the original.
    let rollback = pb::RollbackTemplateRequest {
        template: "worker".into(),
        version_id: original.version_id.clone(),
        requested_by: "alice".into(),
        reason: "testing rollback".into(),
    };
    let restored = client.rollback_template(rollback).await.unwrap().into_inner().version.unwrap();
    assert!(restored.active && restored.version_id == original.version_id);
    let mut broker = stack.broker.client().await;
    assert_eq!(create(&mut broker, "worker").await.template_version, original.version_id);
    stack.conductor.stop().await;
    stack.broker.stop().await.unwrap();
}

#[tokio::test]
async fn the_claude_brain_drives_the_same_flow_and_cannot_approve() {
    let fake = fake_anthropic::FakeAnthropic::start().await;
    let stack = Stack::start(anthropic(&fake)).await;
    let mut client = stack.conductor.client().await;
    let task = "sed -i 's/^USER user/RUN npm install -g playwright@1.49.1\\nUSER user/' worker/Dockerfile";
    fake.push_tool_use("spawn_infrastructure_worker", json!({ "task": task, "title": "Install Playwright" }));
    // The review of the PR (no tools), then the model's reply after the tool result.
    fake.push_text("Adds Playwright 1.49.1 to the worker image with npm; matches the request.");
    fake.push_text("I opened pull request #1; it needs your approval.");
    let events =
        send(&mut client, "", "Install Playwright in the worker template. Create a PR with the changes.").await;
    assert!(reply_text(&events).contains("needs your approval"), "{}", reply_text(&events));
    let opened = change(&mut client, 1).await;
    let report = opened.report.unwrap();
    assert_eq!(report.verdict, pb::Verdict::NeedsHuman as i32, "{:?}", report.findings);
    assert!(report.summary.contains("matches the request"), "{}", report.summary);
    // The review call had no tools, and the diff reached it only as untrusted data.
    let requests = fake.message_requests();
    let bodies: Vec<&serde_json::Value> = requests.iter().map(|r| &r.body).collect();
    let review = bodies.iter().find(|b| b["system"].to_string().contains("You review a pull request")).unwrap();
    assert!(review.get("tools").is_none_or(|t| t.as_array().is_some_and(|a| a.is_empty())), "{review}");
    assert!(review.to_string().contains("untrusted-data"), "{review}");
    // No tool the model was offered approves or merges.
    for body in &bodies {
        for tool in body["tools"].as_array().into_iter().flatten() {
            let name = tool["name"].as_str().unwrap();
            assert!(!["approve", "merge", "promote", "rollback"].iter().any(|w| name.contains(w)), "{name}");
        }
    }
    stack.conductor.stop().await;
    stack.broker.stop().await.unwrap();
}

/// The conductor's database while it is stopped.
async fn conductor_store(conductor_data: &std::path::Path) -> conductor_svc::store::Store {
    let url = format!("sqlite://{}", conductor_data.join("conductor.db").display());
    conductor_svc::store::Store::connect(&url).await.unwrap()
}

/// Marks change `number` as `approved`, as a conductor that stopped in the middle of its
/// pipeline leaves it.
async fn leave_mid_pipeline(store: &conductor_svc::store::Store, number: u64) {
    let mut row = store.get_change(number).await.unwrap().expect("the change was recorded");
    let mut document: serde_json::Value = serde_json::from_str(&row.document).unwrap();
    document["state"] = json!("approved");
    document["state_detail"] = json!("approved by alice; merging");
    row.document = document.to_string();
    row.state = "approved".into();
    store.save_change(&row).await.unwrap();
}

/// Records approval `id` of `pr`'s head as given and used, as a pipeline does before merging.
async fn record_used_approval(store: &conductor_svc::store::Store, pr: &sandbox_pb::PullRequest, id: &str) {
    let now = std::time::SystemTime::now();
    let used = conductor_svc::store::ApprovalRow {
        approval_id: id.into(),
        pr_number: pr.number,
        head_sha: pr.head_sha.clone(),
        report_digest: String::new(),
        approver: "alice".into(),
        override_reason: String::new(),
        approved_at: now,
        expires_at: now + std::time::Duration::from_secs(3600),
        used_at: None,
        void_reason: String::new(),
    };
    store.insert_approval(&used).await.unwrap();
    assert!(store.use_approval(id, now).await.unwrap());
}

/// Builds `template` at merged `pr`'s merge commit and promotes it, as a pipeline does.
async fn promote_at_broker(
    broker: &TestBroker,
    pr: &sandbox_pb::PullRequest,
    template: &str,
) -> sandbox_pb::TemplateVersion {
    let mut client = broker.client().await;
    let request = sandbox_pb::GetPullRequestRequest { number: pr.number };
    let merged = client.get_pull_request(request).await.unwrap().into_inner().pull_request.unwrap();
    let (_, built) = crate::common::build_template(&mut client, template, &merged.merge_sha, pr.number).await;
    let promote =
        sandbox_pb::PromoteTemplateRequest { template: template.into(), version_id: built.version_id.clone() };
    client.promote_template(promote).await.unwrap();
    built
}

/// Merges `pr` at the broker with approval `id`, as a pipeline does.
async fn merge_at_broker(broker: &TestBroker, pr: &sandbox_pb::PullRequest, id: &str) {
    let merge = sandbox_pb::MergePullRequestRequest {
        number: pr.number,
        expected_head_sha: pr.head_sha.clone(),
        approval: Some(crate::common::approval(&pr.head_sha, id)),
    };
    broker.client().await.merge_pull_request(merge).await.unwrap();
}

#[tokio::test]
async fn pipelines_a_stopped_conductor_left_mid_way_are_settled_at_its_next_start() {
    let Stack { broker, conductor, data_dir } = Stack::start(|_| {}).await;
    let mut client = conductor.client().await;
    // #1: approved, but the conductor stopped before merging it.
    let (_, not_merged) = broker_pr(&broker, "echo '# one' >> worker/Dockerfile", "One").await;
    // #2: approved and merged (the approval used), but the conductor stopped before building.
    let (_, merged) = broker_pr(&broker, "echo '# two' >> infrastructure/Dockerfile", "Two").await;
    // #3: merged, but with no approval the conductor recorded (merged by hand on the host).
    let (_, by_hand) = broker_pr(&broker, "echo '# three' > worker/NOTES.md", "Three").await;
    for pr in [&not_merged, &merged, &by_hand] {
        change(&mut client, pr.number).await;
    }
    merge_at_broker(&broker, &merged, "resume-2").await;
    merge_at_broker(&broker, &by_hand, "resume-3").await;
    conductor.stop().await;
    let conductor_data = conductor_dir(data_dir.path());
    let store = conductor_store(&conductor_data).await;
    record_used_approval(&store, &merged, "resume-2").await;
    for pr in [&not_merged, &merged, &by_hand] {
        leave_mid_pipeline(&store, pr.number).await;
    }
    drop(store);

    let conductor = TestConductor::start(&broker, &conductor_data, |_| {}).await;
    let mut client = conductor.client().await;
    let first = wait_settled(&mut client, not_merged.number).await;
    assert_eq!(first.state, pb::ChangeState::AwaitingApproval as i32, "{}", first.state_detail);
    assert!(first.state_detail.contains("nothing was merged"), "{}", first.state_detail);
    let second = wait_settled(&mut client, merged.number).await;
    assert_eq!(second.state, pb::ChangeState::Promoted as i32, "{}", second.state_detail);
    assert!(second.state_detail.contains("resumed"), "{}", second.state_detail);
    let request = pb::ListTemplateVersionsRequest { template: "infrastructure".into() };
    let versions = client.list_template_versions(request).await.unwrap().into_inner().versions;
    assert!(versions.iter().any(|v| v.active && v.pr_number == merged.number), "{versions:?}");
    let third = wait_settled(&mut client, by_hand.number).await;
    assert_eq!(third.state, pb::ChangeState::Closed as i32, "{}", third.state_detail);
    assert!(third.state_detail.contains("outside Stu's approval flow"), "{}", third.state_detail);
    let workers = worker_versions(&mut client).await;
    assert!(!workers.iter().any(|v| v.pr_number == by_hand.number), "nothing built from #3: {workers:?}");
    // #1 can be approved again, and lands.
    let again = approve_and_settle(&mut client, &not_merged).await;
    assert_eq!(again.state, pb::ChangeState::Promoted as i32, "{}", again.state_detail);
    conductor.stop().await;
    broker.stop().await.unwrap();
}

/// Sets `field` of change `number`'s saved document, as a pipeline saves its progress.
async fn set_progress(store: &conductor_svc::store::Store, number: u64, field: &str, value: serde_json::Value) {
    let mut row = store.get_change(number).await.unwrap().expect("the change was recorded");
    let mut document: serde_json::Value = serde_json::from_str(&row.document).unwrap();
    document[field] = value;
    row.document = document.to_string();
    store.save_change(&row).await.unwrap();
}

#[tokio::test]
async fn a_resumed_pipeline_skips_what_was_promoted_and_finishes_an_undo_it_had_begun() {
    let Stack { broker, conductor, data_dir } = Stack::start(|_| {}).await;
    let mut client = conductor.client().await;
    let original = worker_versions(&mut client).await.into_iter().find(|v| v.active).unwrap();
    let (_, pr) = broker_pr(&broker, "echo '# promoted' >> worker/Dockerfile", "Promoted").await;
    change(&mut client, pr.number).await;
    merge_at_broker(&broker, &pr, "progress-1").await;
    // What the stopped pipeline had done: built and promoted the worker template.
    let built = promote_at_broker(&broker, &pr, "worker").await;
    conductor.stop().await;
    let conductor_data = conductor_dir(data_dir.path());
    let store = conductor_store(&conductor_data).await;
    record_used_approval(&store, &pr, "progress-1").await;
    leave_mid_pipeline(&store, pr.number).await;
    let promoted = json!([{ "template": "worker", "version_id": built.version_id, "replaced": original.version_id }]);
    set_progress(&store, pr.number, "promoted", promoted).await;
    // The pipeline had failed after that and begun undoing it when it stopped.
    let failure = json!({ "state": "smoke_test_failed", "detail": "smoke test of a later template failed" });
    set_progress(&store, pr.number, "undoing", failure).await;
    drop(store);

    let conductor = TestConductor::start(&broker, &conductor_data, |_| {}).await;
    let mut client = conductor.client().await;
    let settled = wait_settled(&mut client, pr.number).await;
    assert_eq!(settled.state, pb::ChangeState::SmokeTestFailed as i32, "{}", settled.state_detail);
    let detail = &settled.state_detail;
    assert!(detail.contains("resumed") && detail.contains("a later template failed"), "{detail}");
    assert!(detail.contains(&format!("worker rolled back to {}", original.version_id)), "{detail}");
    assert!(detail.contains("the merge is reverted on the branch"), "{detail}");
    let active = worker_versions(&mut client).await.into_iter().find(|v| v.active).unwrap();
    assert_eq!(active.version_id, original.version_id, "nothing was built again; the undo finished");
    conductor.stop().await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_resumed_pipeline_does_not_build_again_what_it_promoted_before_the_stop() {
    let Stack { broker, conductor, data_dir } = Stack::start(|_| {}).await;
    let mut client = conductor.client().await;
    let script = "echo '# both' >> worker/Dockerfile && echo '# both' >> infrastructure/Dockerfile";
    let (_, pr) = broker_pr(&broker, script, "Both").await;
    change(&mut client, pr.number).await;
    merge_at_broker(&broker, &pr, "skip-1").await;
    // The stopped pipeline had promoted the worker template, not yet the infrastructure one.
    let built = promote_at_broker(&broker, &pr, "worker").await;
    conductor.stop().await;
    let conductor_data = conductor_dir(data_dir.path());
    let store = conductor_store(&conductor_data).await;
    record_used_approval(&store, &pr, "skip-1").await;
    leave_mid_pipeline(&store, pr.number).await;
    let promoted = json!([{ "template": "worker", "version_id": built.version_id, "replaced": null }]);
    set_progress(&store, pr.number, "promoted", promoted).await;
    drop(store);

    let conductor = TestConductor::start(&broker, &conductor_data, |_| {}).await;
    let mut client = conductor.client().await;
    let settled = wait_settled(&mut client, pr.number).await;
    assert_eq!(settled.state, pb::ChangeState::Promoted as i32, "{}", settled.state_detail);
    let detail = &settled.state_detail;
    assert!(detail.contains(&format!("worker {} promoted before the restart", built.version_id)), "{detail}");
    assert!(detail.contains("built, smoke-tested and promoted infrastructure"), "{detail}");
    let request = pb::ListTemplateVersionsRequest { template: "infrastructure".into() };
    let versions = client.list_template_versions(request).await.unwrap().into_inner().versions;
    assert!(versions.iter().any(|v| v.active && v.pr_number == pr.number), "{versions:?}");
    conductor.stop().await;
    broker.stop().await.unwrap();
}
