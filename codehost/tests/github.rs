//! The `github` code host against an in-process fake GitHub that speaks the REST wire format and
//! records what the client sent.

mod support;

use std::time::Duration;

use axum::http::Method;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use codehost::{
    ChangedFile, CodeHost, CodeHostError, CommitIdentity, FileChange, GitHub, GitHubAuth, GitHubOptions,
    NewPullRequest, PrState, TreeLimits,
};
use serde_json::json;
use service_kit::secret::SecretString;
use support::fake_github::{FakeApp, FakeGitHub, Scripted};

const OWNER: &str = "acme";
const REPO: &str = "worker-template";
const TOKEN: &str = "github_pat_11AAAAAAA0TestOnlyToken_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
const DOCKERFILE: &str = "FROM ubuntu:22.04\nRUN true\n";

fn broker() -> CommitIdentity {
    CommitIdentity { name: "Agent Studio Broker".into(), email: "broker@agent-studio.test".into() }
}

fn worker() -> CommitIdentity {
    CommitIdentity { name: "worker w-1".into(), email: "w-1@agent-studio.test".into() }
}

fn options(fake: &FakeGitHub, auth: GitHubAuth) -> GitHubOptions {
    GitHubOptions { api_url: fake.url.clone(), owner: OWNER.into(), repo: REPO.into(), auth, identity: broker() }
}

fn token_host(fake: &FakeGitHub) -> GitHub {
    GitHub::new(options(fake, GitHubAuth::Token(SecretString::new(TOKEN)))).unwrap()
}

/// A fake holding `main` with two regular files, an executable, a binary file, a symlink and a
/// submodule; returns it with `main`'s commit.
async fn seeded_fake() -> (FakeGitHub, String) {
    let fake = FakeGitHub::start(OWNER, REPO, Some(TOKEN), None).await;
    let binary: Vec<u8> = (0..=255).collect();
    let main = {
        let mut state = fake.state();
        let main = state.repo.seed(
            "main",
            &[
                ("README.md", b"templates\n", "100644"),
                ("worker/Dockerfile", DOCKERFILE.as_bytes(), "100644"),
                ("worker/setup.sh", b"#!/bin/sh\necho hi\n", "100755"),
                ("worker/logo.bin", &binary, "100644"),
                ("worker/latest", b"Dockerfile", "120000"),
            ],
        );
        // A submodule entry points at a commit, not a blob.
        let tree_sha = state.repo.commits[&main].tree.clone();
        let mut tree = state.repo.trees[&tree_sha].clone();
        tree.insert(
            "vendor/lib".into(),
            support::fake_github::repo::Entry { mode: "160000".into(), kind: "commit".into(), sha: "ab".repeat(20) },
        );
        let tree = state.repo.put_tree(tree);
        state.repo.commits.get_mut(&main).unwrap().tree = tree;
        main
    };
    (fake, main)
}

fn change(path: &str, content: Option<&str>) -> FileChange {
    FileChange { path: path.into(), content: content.map(|c| c.as_bytes().to_vec()), executable: false }
}

fn new_pr(base: &str, branch: &str, changes: Vec<FileChange>) -> NewPullRequest {
    NewPullRequest {
        base_branch: "main".into(),
        base_sha: base.into(),
        head_branch: branch.into(),
        changes,
        commit_message: "Install jq\n\nAgent-Studio-Worker: w-1\n".into(),
        title: "Install jq".into(),
        body: "because the task needs it".into(),
        identity: worker(),
    }
}

fn jq_changes() -> Vec<FileChange> {
    let mut script = change("worker/new.sh", Some("#!/bin/sh\njq --version\n"));
    script.executable = true;
    vec![
        change("worker/Dockerfile", Some("FROM ubuntu:22.04\nRUN true\nRUN apt-get install -y jq\n")),
        script,
        change("README.md", None),
    ]
}

fn main_tree(fake: &FakeGitHub, commit: &str) -> String {
    fake.state().repo.commits[commit].tree.clone()
}

#[tokio::test]
async fn reads_the_tree_of_a_commit_with_the_headers_github_expects() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    assert_eq!((host.kind(), host.repository()), ("github", "acme/worker-template".to_string()));

    assert_eq!(host.branch_head("main").await.unwrap(), main);
    let err = host.branch_head("nope").await.unwrap_err();
    assert!(matches!(err, CodeHostError::NotFound(_)), "{err}");

    let files = host.read_tree(&main, TreeLimits::default()).await.unwrap();
    let listed: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.executable)).collect();
    assert_eq!(
        listed,
        [("README.md", false), ("worker/Dockerfile", false), ("worker/logo.bin", false), ("worker/setup.sh", true)],
        "symlinks, submodules and directories are not files"
    );
    assert_eq!(files[1].content, DOCKERFILE.as_bytes());
    assert_eq!(files[2].content, (0..=255).collect::<Vec<u8>>(), "base64 with GitHub's line breaks decodes");

    for request in fake.requests() {
        assert_eq!(request.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()), "{}", request.path);
        assert_eq!(request.header("accept"), Some("application/vnd.github+json"), "{}", request.path);
        assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
        assert!(request.header("user-agent").is_some_and(|ua| !ua.is_empty()));
    }
    let tree_call = fake.requests().into_iter().find(|r| r.path.contains("/git/trees/")).unwrap();
    assert_eq!(tree_call.query, "recursive=1");
}

#[tokio::test]
async fn tree_limits_are_enforced_before_any_content_is_fetched() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    let err = host.read_tree(&main, TreeLimits { max_files: 3, max_total_bytes: 1 << 20 }).await.unwrap_err();
    assert!(matches!(err, CodeHostError::TooLarge(ref m) if m.contains("4 files")), "{err}");
    let err = host.read_tree(&main, TreeLimits { max_files: 100, max_total_bytes: 100 }).await.unwrap_err();
    assert!(matches!(err, CodeHostError::TooLarge(_)), "{err}");
    assert!(!fake.calls().iter().any(|c| c.contains("git/blobs")), "{:?}", fake.calls());

    fake.state().truncate_trees = true;
    let err = host.read_tree(&main, TreeLimits::default()).await.unwrap_err();
    assert!(matches!(err, CodeHostError::TooLarge(_)), "{err}");
    let err = host.read_tree("0123456789abcdef0123456789abcdef01234567", TreeLimits::default()).await.unwrap_err();
    assert!(matches!(err, CodeHostError::NotFound(_)), "{err}");
    let err = host.read_tree("../../etc", TreeLimits::default()).await.unwrap_err();
    assert!(matches!(err, CodeHostError::InvalidArgument { field: "sha", .. }), "{err}");
}

#[tokio::test]
async fn opening_a_pull_request_sends_blobs_tree_commit_ref_and_pull() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    fake.clear_requests();
    let pr = host.open_pull_request(new_pr(&main, "agentstudio/jq-1", jq_changes())).await.unwrap();

    assert_eq!(
        fake.calls(),
        [
            format!("GET git/commits/{main}"),
            "POST git/blobs".into(),
            "POST git/blobs".into(),
            "POST git/trees".into(),
            "POST git/commits".into(),
            "POST git/refs".into(),
            "POST pulls".into(),
            "GET pulls/1".into(),
            "GET pulls/1/files".into(),
        ]
    );
    let requests = fake.requests();
    let body = |i: usize| requests[i].json();
    assert_eq!(body(1)["encoding"], "base64");
    let uploaded = STANDARD.decode(body(1)["content"].as_str().unwrap()).unwrap();
    assert_eq!(uploaded, b"FROM ubuntu:22.04\nRUN true\nRUN apt-get install -y jq\n");
    let tree = body(3);
    assert_eq!(tree["base_tree"], main_tree(&fake, &main));
    assert_eq!(tree["tree"][1]["path"], "worker/new.sh");
    assert_eq!(tree["tree"][1]["mode"], "100755");
    assert_eq!(tree["tree"][2], json!({ "path": "README.md", "mode": "100644", "type": "blob", "sha": null }));
    let commit = body(4);
    assert_eq!(commit["parents"], json!([main]));
    assert_eq!(commit["message"], "Install jq\n\nAgent-Studio-Worker: w-1\n");
    assert_eq!(commit["author"], json!({ "name": "worker w-1", "email": "w-1@agent-studio.test" }));
    assert_eq!(commit["committer"], json!({ "name": "Agent Studio Broker", "email": "broker@agent-studio.test" }));
    assert_eq!(body(5)["ref"], "refs/heads/agentstudio/jq-1");
    assert_eq!(
        body(6),
        json!({ "title": "Install jq", "head": "agentstudio/jq-1", "base": "main", "body": "because the task needs it" })
    );
    assert_eq!(requests[7].header("accept"), Some("application/vnd.github.diff"));

    let head = fake.state().repo.refs["agentstudio/jq-1"].clone();
    assert_eq!(
        (pr.number, pr.state, pr.head_sha.as_str(), pr.base_sha.as_str()),
        (1, PrState::Open, head.as_str(), main.as_str())
    );
    assert_eq!(pr.url, "https://github.com/acme/worker-template/pull/1");
    assert_eq!(
        (pr.head_branch.as_str(), pr.base_branch.as_str(), pr.author.as_str()),
        ("agentstudio/jq-1", "main", "octo-bot")
    );
    assert!(pr.created_at > 1_700_000_000);
    assert!(pr.diff.contains("+RUN apt-get install -y jq") && pr.diff.contains("-templates"), "{}", pr.diff);
    assert!(!pr.diff_truncated);
    assert_eq!(
        pr.files,
        vec![
            ChangedFile { path: "README.md".into(), status: "removed".into(), additions: 0, deletions: 1 },
            ChangedFile { path: "worker/Dockerfile".into(), status: "modified".into(), additions: 1, deletions: 0 },
            ChangedFile { path: "worker/new.sh".into(), status: "added".into(), additions: 2, deletions: 0 },
        ]
    );
    assert_eq!(host.get_pull_request(1).await.unwrap(), pr);

    // The branch exists: refused as a conflict, and no pull request is attempted.
    fake.clear_requests();
    let err = host.open_pull_request(new_pr(&main, "agentstudio/jq-1", jq_changes())).await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("already exists")), "{err}");
    assert!(!fake.calls().contains(&"POST pulls".to_string()), "{:?}", fake.calls());
    let err = host.get_pull_request(42).await.unwrap_err();
    assert!(matches!(err, CodeHostError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn push_moves_the_head_and_a_merge_at_a_stale_head_is_refused_by_github() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    let pr = host.open_pull_request(new_pr(&main, "agentstudio/jq-1", jq_changes())).await.unwrap();
    let first_head = pr.head_sha.clone();

    fake.clear_requests();
    let dockerfile = "FROM ubuntu:22.04\nRUN true\nRUN apt-get install -y jq curl\n";
    let pushed = host
        .push_to_pull_request(1, &main, vec![change("worker/Dockerfile", Some(dockerfile))], "Also curl", &worker())
        .await
        .unwrap();
    let requests = fake.requests();
    let sent =
        |call: &str| requests.iter().find(|r| format!("{} {}", r.method, r.path).ends_with(call)).unwrap().json();
    assert_eq!(
        sent("POST /repos/acme/worker-template/git/trees")["base_tree"],
        main_tree(&fake, &main),
        "base's tree, not the head's"
    );
    assert_eq!(sent("POST /repos/acme/worker-template/git/commits")["parents"], json!([first_head]));
    assert_eq!(
        sent("PATCH /repos/acme/worker-template/git/refs/heads/agentstudio/jq-1"),
        json!({ "sha": pushed.head_sha, "force": false })
    );
    assert_ne!(pushed.head_sha, first_head);
    assert_eq!(fake.state().repo.refs["agentstudio/jq-1"], pushed.head_sha);
    assert!(pushed.diff.contains("jq curl") && !pushed.diff.contains("README"), "{}", pushed.diff);

    // Merging at the head the human saw before the push: GitHub answers 409, nothing merges.
    let err = host.merge_pull_request(1, &first_head, "Merge #1").await.unwrap_err();
    let CodeHostError::Conflict(message) = &err else { panic!("{err}") };
    assert!(message.contains(&first_head) && message.contains(&pushed.head_sha), "{message}");
    assert_eq!(fake.state().repo.refs["main"], main, "nothing merged");
    let merge_call = fake.requests().into_iter().rev().find(|r| r.path.ends_with("/merge")).unwrap();
    assert_eq!(merge_call.method, Method::PUT);
    assert_eq!(merge_call.json()["sha"], first_head);
    assert_eq!(merge_call.json()["merge_method"], "merge");

    let merge = host.merge_pull_request(1, &pushed.head_sha, "Merge #1: install jq\n\nApproved by ada").await.unwrap();
    assert_eq!(fake.state().repo.refs["main"], merge);
    let merge_call = fake.requests().into_iter().rev().find(|r| r.path.ends_with("/merge")).unwrap();
    assert_eq!(merge_call.json()["commit_title"], "Merge #1: install jq");
    assert_eq!(merge_call.json()["commit_message"], "Approved by ada");
    let tree = host.read_tree(&merge, TreeLimits::default()).await.unwrap();
    let merged_dockerfile = tree.iter().find(|f| f.path == "worker/Dockerfile").unwrap();
    assert_eq!(merged_dockerfile.content, dockerfile.as_bytes());
    assert!(tree.iter().any(|f| f.path == "README.md"), "the push restored README.md");

    let merged = host.get_pull_request(1).await.unwrap();
    assert_eq!((merged.state, merged.merge_sha.as_deref()), (PrState::Merged, Some(merge.as_str())));
    let err = host.merge_pull_request(1, &pushed.head_sha, "again").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(_)), "{err}");
    let err = host.push_to_pull_request(1, &main, vec![], "late", &worker()).await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("merged")), "{err}");
}

#[tokio::test]
async fn close_comment_and_list_by_state() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    for branch in ["a", "b", "c"] {
        let readme = format!("{branch}\n");
        host.open_pull_request(new_pr(&main, branch, vec![change(&format!("{branch}.txt"), Some(&readme))]))
            .await
            .unwrap();
    }
    let a = host.get_pull_request(1).await.unwrap();
    host.merge_pull_request(1, &a.head_sha, "merge a").await.unwrap();
    let closed = host.close_pull_request(2).await.unwrap();
    assert_eq!(closed.state, PrState::Closed);
    assert_eq!(fake.requests().last().unwrap().json(), json!({ "state": "closed" }));
    let err = host.close_pull_request(1).await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("merged")), "{err}");

    let numbers = |prs: Vec<codehost::PullRequest>| prs.iter().map(|p| p.number).collect::<Vec<_>>();
    assert_eq!(numbers(host.list_pull_requests(None).await.unwrap()), [3, 2, 1]);
    assert_eq!(numbers(host.list_pull_requests(Some(PrState::Open)).await.unwrap()), [3]);
    assert_eq!(numbers(host.list_pull_requests(Some(PrState::Closed)).await.unwrap()), [2]);
    fake.clear_requests();
    let merged = host.list_pull_requests(Some(PrState::Merged)).await.unwrap();
    assert_eq!(numbers(merged.clone()), [1]);
    assert!(merged[0].diff.is_empty() && merged[0].files.is_empty(), "lists carry no diffs");
    let query = fake.requests()[0].query.clone();
    assert!(
        query.contains("state=closed") && query.contains("per_page=100") && query.contains("direction=desc"),
        "{query}"
    );

    host.comment(3, "vetting: looks fine").await.unwrap();
    assert_eq!(fake.state().repo.comments, [(3, "vetting: looks fine".to_string())]);
    assert!(fake.calls().last().unwrap().ends_with("POST issues/3/comments"));
    let err = host.comment(99, "x").await.unwrap_err();
    assert!(matches!(err, CodeHostError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn lists_follow_pages_newest_first() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    host.open_pull_request(new_pr(&main, "first", vec![change("x", Some("x\n"))])).await.unwrap();
    {
        let mut state = fake.state();
        let template = state.repo.pulls[0].clone();
        for number in 2..=130 {
            state.repo.pulls.push(support::fake_github::repo::Pull { number, ..template.clone() });
        }
    }
    fake.clear_requests();
    let all = host.list_pull_requests(None).await.unwrap();
    assert_eq!(all.len(), 130);
    assert_eq!((all[0].number, all[129].number), (130, 1));
    assert_eq!(fake.requests().len(), 2, "two pages of 100");
}

#[tokio::test]
async fn big_diffs_are_cut_at_max_diff_bytes() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    let line = "RUN echo 0123456789012345678901234567890123456789012345678901234567890123456789\n";
    let big = line.repeat(codehost::MAX_DIFF_BYTES / line.len() + 100);
    let pr = host.open_pull_request(new_pr(&main, "big", vec![change("big.txt", Some(&big))])).await.unwrap();
    assert!(pr.diff_truncated);
    assert_eq!(pr.diff.len(), codehost::MAX_DIFF_BYTES);
    assert_eq!(pr.files[0].additions as usize, big.lines().count());
}

#[tokio::test]
async fn a_diff_github_refuses_to_produce_counts_as_truncated() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    host.open_pull_request(new_pr(&main, "wide", jq_changes())).await.unwrap();
    let too_large = json!({
        "message": "Sorry, the diff exceeded the maximum number of files (300). Consider using 'List pull requests files' API or locally cloning the repository instead.",
        "errors": [{ "resource": "PullRequest", "field": "diff", "code": "too_large" }],
        "documentation_url": "https://docs.github.com/rest/pulls/pulls#get-a-pull-request",
        "status": "406",
    });
    let path = "/repos/acme/worker-template/pulls/1";
    fake.script_with(Scripted { accept: Some("diff".into()), ..Scripted::new(Method::GET, path, 406, too_large) });
    let pr = host.get_pull_request(1).await.unwrap();
    assert!(pr.diff.is_empty() && pr.diff_truncated);
    assert_eq!(pr.files.len(), 3, "the files still come from their own endpoint");
}

#[tokio::test]
async fn rate_limits_are_unavailable_not_permission_denied() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    let path = "/repos/acme/worker-template/git/ref/heads/main";
    let in_an_hour = (chrono::Utc::now().timestamp() + 3600).to_string();
    let limited = Scripted {
        headers: vec![("x-ratelimit-remaining", "0".into()), ("x-ratelimit-reset", in_an_hour)],
        ..Scripted::new(Method::GET, path, 403, json!({ "message": "API rate limit exceeded for user ID 1." }))
    };
    fake.script_with(limited);
    let err = host.branch_head("main").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Unavailable(ref m) if m.contains("rate limited")), "{err}");
    assert_eq!(fake.calls().len(), 1, "an hour's wait is not waited out");

    // A short secondary-limit wait is honoured and the read succeeds.
    let secondary = Scripted {
        headers: vec![("retry-after", "1".into())],
        ..Scripted::new(Method::GET, path, 429, json!({ "message": "You have exceeded a secondary rate limit." }))
    };
    fake.script_with(secondary);
    assert_eq!(host.branch_head("main").await.unwrap(), main);
}

#[tokio::test]
async fn reads_are_retried_on_server_errors_but_writes_are_not() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    let body = json!({ "message": "Server Error" });
    fake.script(Method::GET, "/repos/acme/worker-template/git/ref/heads/main", 502, body.clone(), 1);
    assert_eq!(host.branch_head("main").await.unwrap(), main);
    assert_eq!(fake.calls(), ["GET git/ref/heads/main", "GET git/ref/heads/main"]);

    fake.clear_requests();
    fake.script(Method::POST, "/repos/acme/worker-template/git/blobs", 500, body, 1);
    let err = host.open_pull_request(new_pr(&main, "x", jq_changes())).await.unwrap_err();
    assert!(matches!(err, CodeHostError::Unavailable(_)), "{err}");
    assert_eq!(fake.calls(), [format!("GET git/commits/{main}"), "POST git/blobs".into()], "a write is sent once");

    fake.script(Method::GET, "/repos/acme/worker-template/git/ref/heads/main", 503, json!({ "message": "down" }), 3);
    let err = host.branch_head("main").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Unavailable(_)), "{err}");

    let nowhere = GitHubOptions {
        api_url: "http://127.0.0.1:9".into(),
        ..options(&fake, GitHubAuth::Token(SecretString::new(TOKEN)))
    };
    let err = GitHub::new(nowhere).unwrap().branch_head("main").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn refused_credentials_are_permission_denied_and_never_quoted() {
    let (fake, _) = seeded_fake().await;
    let wrong =
        GitHub::new(options(&fake, GitHubAuth::Token(SecretString::new("ghp_wrongwrongwrongwrongwrongwrong12"))))
            .unwrap();
    let err = wrong.branch_head("main").await.unwrap_err();
    assert!(matches!(err, CodeHostError::PermissionDenied(ref m) if m.contains("Bad credentials")), "{err}");
    assert!(!format!("{err} {err:?}").contains("ghp_wrong"), "{err}");

    // An upstream (or a proxy in front of it) that echoes the credential back.
    let host = token_host(&fake);
    let echo = format!("Bad credentials: Authorization: Bearer {TOKEN}");
    fake.script(Method::GET, "/repos/acme/worker-template/git/ref/heads/main", 401, json!({ "message": echo }), 1);
    let err = host.branch_head("main").await.unwrap_err();
    assert!(matches!(err, CodeHostError::PermissionDenied(_)), "{err}");
    assert!(!format!("{err} {err:?}").contains(TOKEN) && !format!("{err}").contains("11AAAAAAA0"), "{err}");

    let refusal = format!("Resource not accessible by personal access token {TOKEN}");
    fake.script(Method::POST, "/repos/acme/worker-template/issues/1/comments", 403, json!({ "message": refusal }), 1);
    let err = host.comment(1, "hello").await.unwrap_err();
    let CodeHostError::PermissionDenied(message) = &err else { panic!("{err}") };
    assert!(message.contains("Pull requests: read and write") && !message.contains(TOKEN), "{message}");
}

fn app_options(fake: &FakeGitHub, app_id: u64) -> GitHubOptions {
    let auth = GitHubAuth::App {
        app_id,
        private_key_pem: SecretString::new(support::TEST_APP_PRIVATE_KEY),
        installation_id: 77,
    };
    options(fake, auth)
}

async fn app_fake(token_ttl: Duration) -> (FakeGitHub, String) {
    let app =
        FakeApp { app_id: 1234, installation_id: 77, public_key_pem: support::TEST_APP_PUBLIC_KEY.into(), token_ttl };
    let fake = FakeGitHub::start(OWNER, REPO, None, Some(app)).await;
    let main = fake.state().repo.seed("main", &[("README.md", b"hi\n", "100644")]);
    (fake, main)
}

#[tokio::test]
async fn app_auth_mints_an_installation_token_and_replaces_it_before_expiry() {
    // Tokens that live an hour are minted once and reused.
    let (fake, main) = app_fake(Duration::from_secs(3600)).await;
    let host = GitHub::new(app_options(&fake, 1234)).unwrap();
    assert_eq!(host.branch_head("main").await.unwrap(), main);
    assert_eq!(host.branch_head("main").await.unwrap(), main);
    assert_eq!(fake.mints(), 1);
    let requests = fake.requests();
    assert_eq!(requests[0].path, "/app/installations/77/access_tokens");
    assert_eq!(requests[0].method, Method::POST);
    let jwt = requests[0].header("authorization").unwrap().strip_prefix("Bearer ").unwrap();
    assert!(jwt.starts_with("eyJ"), "a JWT the fake verified (RS256, iss = 1234): {jwt}");
    let token = fake.state().minted[0].0.clone();
    for request in &requests[1..] {
        assert_eq!(request.header("authorization"), Some(format!("Bearer {token}").as_str()));
    }

    // Tokens with less than five minutes left are replaced before the next call uses them.
    let (fake, main) = app_fake(Duration::from_secs(120)).await;
    let host = GitHub::new(app_options(&fake, 1234)).unwrap();
    assert_eq!(host.branch_head("main").await.unwrap(), main);
    assert_eq!(fake.mints(), 1);
    assert_eq!(host.branch_head("main").await.unwrap(), main);
    assert_eq!(fake.mints(), 2, "re-minted with two minutes left");
    let second = fake.state().minted[1].0.clone();
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some(format!("Bearer {second}").as_str()));
}

#[tokio::test]
async fn app_auth_failures_are_clear_and_leak_nothing() {
    let (fake, _) = app_fake(Duration::from_secs(3600)).await;
    let host = GitHub::new(app_options(&fake, 999)).unwrap();
    let err = host.branch_head("main").await.unwrap_err();
    assert!(
        matches!(err, CodeHostError::PermissionDenied(ref m) if m.contains("installation token") && m.contains("App id")),
        "{err}"
    );
    assert!(!format!("{err}").contains("eyJ"), "{err}");

    let mut bad = app_options(&fake, 1234);
    bad.auth = GitHubAuth::App {
        app_id: 1234,
        private_key_pem: SecretString::new(
            "-----BEGIN RSA PRIVATE KEY-----\nnot-a-key-secretish\n-----END RSA PRIVATE KEY-----\n",
        ),
        installation_id: 77,
    };
    let err = GitHub::new(bad).unwrap_err();
    assert!(matches!(err, CodeHostError::InvalidArgument { field: "private_key_pem", .. }), "{err}");
    assert!(!format!("{err}").contains("secretish"), "{err}");
}

#[tokio::test]
async fn a_failed_merge_is_reverted_to_the_tree_before_it_only_while_main_is_still_there() {
    let (fake, main) = seeded_fake().await;
    let host = token_host(&fake);
    let pr = host.open_pull_request(new_pr(&main, "agentstudio/jq-1", jq_changes())).await.unwrap();
    let merge = host.merge_pull_request(1, &pr.head_sha, "Merge #1").await.unwrap();

    fake.clear_requests();
    let revert = host.revert_merge("main", &merge, "Revert #1: smoke test failed").await.unwrap();
    let requests = fake.requests();
    let sent =
        |call: &str| requests.iter().find(|r| format!("{} {}", r.method, r.path).ends_with(call)).unwrap().json();
    let commit = sent("POST /repos/acme/worker-template/git/commits");
    assert_eq!(commit["parents"], json!([merge]), "on top of the merge: history is kept");
    assert_eq!(commit["tree"], main_tree(&fake, &main), "the tree from before the merge");
    assert_eq!(commit["message"], "Revert #1: smoke test failed");
    assert_eq!(sent("PATCH /repos/acme/worker-template/git/refs/heads/main"), json!({ "sha": revert, "force": false }));
    assert_eq!(fake.state().repo.refs["main"], revert);
    let tree = host.read_tree(&revert, TreeLimits::default()).await.unwrap();
    let dockerfile = tree.iter().find(|f| f.path == "worker/Dockerfile").unwrap();
    assert_eq!(dockerfile.content, DOCKERFILE.as_bytes());

    // Main moved on since that merge: a person decides.
    let err = host.revert_merge("main", &merge, "again").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("moved") && m.contains(&revert)), "{err}");
    assert_eq!(fake.state().repo.refs["main"], revert);
}
