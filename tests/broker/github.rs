//! The whole template-repository flow through the broker with `SANDBOX_CODE_HOST=github`, against
//! the fake GitHub (real REST shapes): checkout from GitHub, ProposeChange through the git data
//! API, a merge bound to the approved head (GitHub's own 409 when it moved), a build at the merge.

use agentstudio_proto::sandbox::v1 as pb;
use tonic::Code;

use crate::common::*;
use crate::github_support::fake_github::FakeGitHub;

const TOKEN: &str = "github_pat_11TESTTOKEN0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";

#[tokio::test]
async fn the_template_flow_runs_against_github() {
    let github = FakeGitHub::start("acme", "worker-template", Some(TOKEN), None).await;
    let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
    let files: Vec<(String, Vec<u8>)> =
        ["worker/Dockerfile", "worker/template.toml", "infrastructure/Dockerfile", "infrastructure/template.toml"]
            .iter()
            .map(|path| (path.to_string(), std::fs::read(format!("{templates}/{path}")).unwrap()))
            .collect();
    let seeded: Vec<(&str, &[u8], &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_slice(), "100644")).collect();
    let seed_sha = github.state().repo.seed("main", &seeded);
    let url = github.url.clone();
    let broker = TestBroker::start(|config| {
        config.code_host = "github".into();
        config.github_repository = Some("acme/worker-template".into());
        config.github_api_url = url;
        config.github_token = Some(TOKEN.parse().unwrap());
    })
    .await;
    let mut client = broker.client().await;
    let listing = client.list_templates(pb::ListTemplatesRequest {}).await.unwrap().into_inner();
    let host = listing.code_host.unwrap();
    assert_eq!((host.kind.as_str(), host.repository.as_str()), ("github", "acme/worker-template"));
    let worker = listing.templates.iter().find(|t| t.name == "worker").unwrap();
    assert_eq!(worker.active_version.as_ref().unwrap().git_sha, seed_sha, "first version built from GitHub's main");

    let sandbox = create(&mut client, "infrastructure").await;
    assert_eq!(sandbox.checkout_sha, seed_sha);
    run(
        &mut client,
        &sandbox.sandbox_id,
        "sed -i 's/^USER user/RUN npm install -g playwright\\nUSER user/' worker/Dockerfile",
    )
    .await;
    let request = pb::ProposeChangeRequest {
        sandbox_id: sandbox.sandbox_id.clone(),
        title: "Install Playwright".into(),
        body: "asked in chat".into(),
        pull_request_number: 0,
    };
    let pr = client.propose_change(request.clone()).await.unwrap().into_inner().pull_request.unwrap();
    assert!(pr.url.contains("acme/worker-template/pull/"), "{}", pr.url);
    assert!(pr.diff.contains("+RUN npm install -g playwright"), "{}", pr.diff);
    let calls = github.calls();
    // The bootstrap, both first builds, the checkout and the proposal's base all read one commit:
    // its tree is listed (and its files fetched) once.
    let tree_reads = calls.iter().filter(|c| c.starts_with("GET git/trees/")).count();
    assert_eq!(tree_reads, 1, "{calls:?}");
    let writes: Vec<&str> = calls.iter().map(String::as_str).filter(|c| c.starts_with("POST")).collect();
    assert_eq!(writes, ["POST git/blobs", "POST git/trees", "POST git/commits", "POST git/refs", "POST pulls"]);
    for recorded in github.requests() {
        assert!(recorded.header("authorization").is_some_and(|h| h.contains(TOKEN)), "every call authenticated");
    }

    // Another push moves the head: GitHub itself refuses a merge at the old head (409).
    run(&mut client, &sandbox.sandbox_id, "echo '# pinned later' >> worker/Dockerfile").await;
    let pushed = client.propose_change(request).await.unwrap().into_inner().pull_request.unwrap();
    assert_eq!(pushed.number, pr.number);
    let err = client
        .merge_pull_request(pb::MergePullRequestRequest {
            number: pr.number,
            expected_head_sha: pr.head_sha.clone(),
            approval: Some(approval(&pr.head_sha, "g1")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let merged = client
        .merge_pull_request(pb::MergePullRequestRequest {
            number: pr.number,
            expected_head_sha: pushed.head_sha.clone(),
            approval: Some(approval(&pushed.head_sha, "g2")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.pull_request.unwrap().state, "merged");
    let merge_call = github.requests().into_iter().find(|r| r.path.ends_with("/merge")).unwrap();
    assert_eq!(merge_call.json()["sha"], pushed.head_sha.as_str(), "GitHub is told the approved head");

    let (_, version) = build_template(&mut client, "worker", &merged.merge_sha, pr.number).await;
    assert_eq!(version.status, pb::TemplateVersionStatus::Built as i32, "{}", version.error);
    assert_eq!(version.git_sha, merged.merge_sha);
    broker.stop().await.unwrap();
}
