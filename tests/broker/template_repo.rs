//! The template repository through the broker: infrastructure checkouts, ProposeChange and its
//! refusals, merges bound to an approval of the head, builds, promotion and rollback — and no
//! credential anywhere a sandbox can see.

use agentstudio_proto::sandbox::v1 as pb;
use tonic::Code;

use crate::common::*;

async fn propose(client: &mut Client, sandbox_id: &str, title: &str) -> Result<pb::PullRequest, tonic::Status> {
    let request = pb::ProposeChangeRequest {
        sandbox_id: sandbox_id.into(),
        title: title.into(),
        body: "test".into(),
        pull_request_number: 0,
    };
    client.propose_change(request).await.map(|r| r.into_inner().pull_request.unwrap())
}

#[tokio::test]
async fn infrastructure_sandboxes_get_a_checkout_and_propose_a_pull_request() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let templates = client.list_templates(pb::ListTemplatesRequest {}).await.unwrap().into_inner();
    let host = templates.code_host.unwrap();
    assert_eq!(
        (host.kind.as_str(), host.repository.as_str(), host.builder.as_str()),
        ("local-git", "worker-template", PROVIDER.name())
    );
    let worker = templates.templates.iter().find(|t| t.name == "worker").unwrap();
    let active = worker.active_version.clone().unwrap();
    assert!(active.active && active.version_id == worker.version, "{active:?}");

    let sandbox = create(&mut client, "infrastructure").await;
    assert_eq!(sandbox.checkout_sha, active.git_sha, "checked out at the active worker version");
    let listing = run(&mut client, &sandbox.sandbox_id, "ls worker infrastructure; git remote 2>&1 | wc -l").await;
    assert!(stdout_of(&listing).contains("Dockerfile") && stdout_of(&listing).contains("template.toml"));

    // No change yet: refused, with the reason.
    let err = propose(&mut client, &sandbox.sandbox_id, "Nothing").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no change"), "{}", err.message());
    // A plain worker sandbox has no checkout to propose from.
    let plain = create(&mut client, "worker").await;
    let err = propose(&mut client, &plain.sandbox_id, "x").await.unwrap_err();
    assert!(err.message().contains("no template-repository checkout"), "{}", err.message());
    let err = propose(&mut client, &sandbox.sandbox_id, "").await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("title"), "{}", err.message());

    let edit = "sed -i 's/^USER user/RUN npm install -g playwright\\nUSER user/' worker/Dockerfile";
    let events = run(&mut client, &sandbox.sandbox_id, edit).await;
    assert_eq!(exit_of(&events).unwrap().exit_code, 0, "{}", stderr_of(&events));
    let pr = propose(&mut client, &sandbox.sandbox_id, "Install Playwright in the worker template").await.unwrap();
    assert_eq!(pr.number, 1);
    assert_eq!(pr.state, "open");
    assert_eq!(pr.base_sha, active.git_sha);
    assert!(pr.diff.contains("+RUN npm install -g playwright"), "{}", pr.diff);
    assert_eq!(pr.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["worker/Dockerfile"]);
    assert!(pr.head_branch.starts_with("agentstudio/install-playwright"), "{}", pr.head_branch);

    // A second proposal from the same sandbox pushes to the same pull request.
    run(&mut client, &sandbox.sandbox_id, "echo '# more' >> worker/Dockerfile").await;
    let pushed = propose(&mut client, &sandbox.sandbox_id, "Install Playwright in the worker template").await.unwrap();
    assert_eq!(pushed.number, 1);
    assert_ne!(pushed.head_sha, pr.head_sha);

    // Merging: no approval → PERMISSION_DENIED; approval of the old head → refused; nothing merged.
    let merge = |head: &str, approval: Option<pb::Approval>| pb::MergePullRequestRequest {
        number: 1,
        expected_head_sha: head.into(),
        approval,
    };
    let err = client.merge_pull_request(merge(&pushed.head_sha, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = client.merge_pull_request(merge(&pr.head_sha, Some(approval(&pr.head_sha, "a1")))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("head moved"), "{}", err.message());
    let err = client.merge_pull_request(merge(&pushed.head_sha, Some(approval(&pr.head_sha, "a2")))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "an approval names the head it approved: {}", err.message());
    let mut expired = approval(&pushed.head_sha, "a3");
    expired.expires_at =
        Some(prost_types::Timestamp::from(std::time::SystemTime::now() - std::time::Duration::from_secs(1)));
    let err = client.merge_pull_request(merge(&pushed.head_sha, Some(expired))).await.unwrap_err();
    assert!(err.code() == Code::PermissionDenied && err.message().contains("expired"), "{}", err.message());
    let get = client.get_pull_request(pb::GetPullRequestRequest { number: 1 }).await.unwrap().into_inner();
    assert_eq!(get.pull_request.unwrap().state, "open", "nothing merged");

    let merged = client
        .merge_pull_request(merge(&pushed.head_sha, Some(approval(&pushed.head_sha, "a4"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.pull_request.unwrap().state, "merged");
    // Single use: the same approval cannot merge anything again.
    let err =
        client.merge_pull_request(merge(&pushed.head_sha, Some(approval(&pushed.head_sha, "a4")))).await.unwrap_err();
    assert!(matches!(err.code(), Code::FailedPrecondition | Code::PermissionDenied), "{}", err.message());

    // Build → a new version, not yet active; promote; roll back.
    let (log, version) = build_template(&mut client, "worker", &merged.merge_sha, 1).await;
    assert_eq!(version.status, pb::TemplateVersionStatus::Built as i32, "{log:?}");
    assert!(!version.active);
    let said = match PROVIDER {
        Provider::Local => "no image is built",
        Provider::E2b => "is ready",
    };
    assert!(log.iter().any(|l| l.contains(said)), "the builder says what it did: {log:?}");
    assert_ne!(version.version_id, active.version_id);
    let smoke = create_with(
        &mut client,
        pb::CreateSandboxRequest {
            template: "worker".into(),
            template_version: version.version_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(smoke.template_version, version.version_id, "a sandbox of the new version before promotion");
    client
        .promote_template(pb::PromoteTemplateRequest {
            template: "worker".into(),
            version_id: version.version_id.clone(),
        })
        .await
        .unwrap();
    let next = create(&mut client, "worker").await;
    assert_eq!(next.template_version, version.version_id, "new workers run on the promoted version");
    let versions = client
        .list_template_versions(pb::ListTemplateVersionsRequest { template: "worker".into() })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 2);
    assert!(versions[0].active && versions[0].version_id == version.version_id);
    client
        .rollback_template(pb::RollbackTemplateRequest {
            template: "worker".into(),
            version_id: active.version_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(create(&mut client, "worker").await.template_version, active.version_id);
    let err = client
        .rollback_template(pb::RollbackTemplateRequest { template: "worker".into(), version_id: "sha256:nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn proposals_refuse_what_must_not_be_committed() {
    let broker = TestBroker::start(|config| {
        config.redact_secrets = vec!["broker-secret-canary-1234567890".parse().unwrap()];
    })
    .await;
    let mut client = broker.client().await;
    let cases = [
        ("ln -s /etc/passwd worker/passwd", "escapes the repository"),
        ("ln -s ../../../.. worker/up", "escapes the repository"),
        ("mkfifo worker/pipe", "FIFO"),
        ("head -c 2000000 /dev/zero | tr '\\0' a > worker/big.txt", "byte limit"),
        ("printf '\\177ELF\\000\\001' > worker/tool", "binary"),
        ("echo broker-secret-canary-1234567890 >> worker/Dockerfile", "credential the broker holds"),
    ];
    for (script, expected) in cases {
        let sandbox = create(&mut client, "infrastructure").await;
        let events = run(&mut client, &sandbox.sandbox_id, script).await;
        assert_eq!(exit_of(&events).unwrap().exit_code, 0, "{script}: {}", stderr_of(&events));
        let err = propose(&mut client, &sandbox.sandbox_id, "Bad").await.unwrap_err();
        assert!(err.message().contains(expected), "{script}: {}", err.message());
        assert!(!err.message().contains("broker-secret-canary"), "errors are masked: {}", err.message());
    }
    let prs =
        client.list_pull_requests(pb::ListPullRequestsRequest { state: String::new() }).await.unwrap().into_inner();
    assert!(prs.pull_requests.is_empty(), "nothing was opened");
    let err = client.list_pull_requests(pb::ListPullRequestsRequest { state: "weird".into() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("state"), "{}", err.message());
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_build_is_recorded_and_changes_nothing() {
    let broker = TestBroker::start(|_| {}).await;
    let mut client = broker.client().await;
    let before = create(&mut client, "worker").await.template_version;
    let sandbox = create(&mut client, "infrastructure").await;
    run(&mut client, &sandbox.sandbox_id, "printf 'RUN echo no base image\\n' > worker/Dockerfile").await;
    let pr = propose(&mut client, &sandbox.sandbox_id, "Break the Dockerfile").await.unwrap();
    let merged = client
        .merge_pull_request(pb::MergePullRequestRequest {
            number: pr.number,
            expected_head_sha: pr.head_sha.clone(),
            approval: Some(approval(&pr.head_sha, "b1")),
        })
        .await
        .unwrap()
        .into_inner();
    let (log, version) = build_template(&mut client, "worker", &merged.merge_sha, 1).await;
    assert_eq!(version.status, pb::TemplateVersionStatus::Failed as i32, "{log:?}");
    assert!(version.error.contains("FROM"), "the lint error says what is wrong: {}", version.error);
    let err = client
        .promote_template(pb::PromoteTemplateRequest {
            template: "worker".into(),
            version_id: version.version_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(create(&mut client, "worker").await.template_version, before);

    // The broken merge is reverted on the branch: what is built there again is the old version.
    let revert = |number: u64, reason: &str| pb::RevertPullRequestRequest { number, reason: reason.into() };
    let err = client.revert_pull_request(revert(pr.number, " ")).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("reason"), "{}", err.message());
    let err = client.revert_pull_request(revert(999, "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let reverted = client.revert_pull_request(revert(pr.number, "its build failed")).await.unwrap().into_inner();
    let (log, rebuilt) = build_template(&mut client, "worker", &reverted.revert_sha, 1).await;
    assert_eq!(rebuilt.version_id, before, "the same content as before the merge: {log:?}");
    // Only while the branch is still at the merge.
    let err = client.revert_pull_request(revert(pr.number, "again")).await.unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("moved"), "{}", err.message());
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn an_infrastructure_sandbox_never_sees_a_credential() {
    const GITHUB: &str = "ghp_canaryCANARYcanaryCANARYcanary012345";
    const E2B: &str = "e2b_canary0123456789abcdef0123456789abcdef";
    let broker = TestBroker::start(|config| {
        config.github_token = Some(GITHUB.parse().unwrap());
        config.e2b_api_key = Some(E2B.parse().unwrap());
    })
    .await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "infrastructure").await;
    // Everything the sandbox can read of itself: environment, workspace (checkout included), git config.
    let script = "env; cat /proc/self/environ | tr '\\0' '\\n'; find . -type f -exec cat {} +; \
                  git config --list 2>/dev/null; ls -la ~ 2>/dev/null";
    let events = run(&mut client, &sandbox.sandbox_id, script).await;
    let seen = format!("{}{}", stdout_of(&events), stderr_of(&events));
    assert!(seen.contains("FROM ubuntu"), "the checkout is there: {seen}");
    for secret in [GITHUB, E2B, "ghp_", "e2b_canary"] {
        assert!(!seen.contains(secret), "{secret} reached the sandbox");
    }
    assert!(!seen.to_lowercase().contains("[redacted]"), "nothing even needed masking");
    broker.stop().await.unwrap();
}
