use super::*;

fn file(path: &str, content: &str) -> TreeFile {
    TreeFile { path: path.into(), content: content.as_bytes().to_vec(), executable: false }
}

fn change(path: &str, content: Option<&str>) -> FileChange {
    FileChange { path: path.into(), content: content.map(|c| c.as_bytes().to_vec()), executable: false }
}

async fn seeded(dir: &Path) -> LocalGit {
    let seed = [file("worker/Dockerfile", "FROM ubuntu:22.04\nRUN true\n"), file("README.md", "templates\n")];
    LocalGit::open_or_seed(dir, "worker-template", &seed, &CommitIdentity::default()).await.unwrap()
}

fn new_pr(base: &str, branch: &str, changes: Vec<FileChange>) -> NewPullRequest {
    NewPullRequest {
        base_branch: "main".into(),
        base_sha: base.into(),
        head_branch: branch.into(),
        changes,
        commit_message: "Install jq\n\nAgent-Studio-Worker: w-1\n".into(),
        title: "Install jq".into(),
        body: "because".into(),
        identity: CommitIdentity::default(),
    }
}

#[tokio::test]
async fn seeds_once_and_reads_the_tree_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = seeded(dir.path()).await;
    let head = host.branch_head("main").await.unwrap();
    let tree = host.read_tree(&head, TreeLimits::default()).await.unwrap();
    let paths: Vec<_> = tree.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["README.md", "worker/Dockerfile"]);
    // Reopening keeps the repository as it is.
    let again = seeded(dir.path()).await;
    assert_eq!(again.branch_head("main").await.unwrap(), head);
    let err = host.read_tree(&head, TreeLimits { max_files: 1, max_total_bytes: 1 << 20 }).await.unwrap_err();
    assert!(matches!(err, CodeHostError::TooLarge(_)), "{err}");
}

#[tokio::test]
async fn pull_request_diff_files_push_and_merge_with_expected_head() {
    let dir = tempfile::tempdir().unwrap();
    let host = seeded(dir.path()).await;
    let base = host.branch_head("main").await.unwrap();
    let changes = vec![
        change("worker/Dockerfile", Some("FROM ubuntu:22.04\nRUN true\nRUN apt-get install -y jq\n")),
        change("README.md", None),
    ];
    let pr = host.open_pull_request(new_pr(&base, "agentstudio/jq-1", changes)).await.unwrap();
    assert_eq!(pr.number, 1);
    assert_eq!(pr.state, PrState::Open);
    assert_eq!(pr.base_sha, base);
    assert!(pr.diff.contains("+RUN apt-get install -y jq"), "{}", pr.diff);
    assert_eq!(
        pr.files,
        vec![
            ChangedFile { path: "README.md".into(), status: "removed".into(), additions: 0, deletions: 1 },
            ChangedFile { path: "worker/Dockerfile".into(), status: "modified".into(), additions: 1, deletions: 0 },
        ]
    );
    // The branch exists already: a second PR from it is refused.
    let err = host.open_pull_request(new_pr(&base, "agentstudio/jq-1", vec![])).await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(_)), "{err}");

    // A new push moves the head; merging at the old head is refused.
    let first_head = pr.head_sha.clone();
    let pushed = host
        .push_to_pull_request(
            1,
            &base,
            vec![change("worker/Dockerfile", Some("FROM ubuntu:22.04\nRUN true\nRUN apt-get install -y jq curl\n"))],
            "Also curl",
            &CommitIdentity::default(),
        )
        .await
        .unwrap();
    assert_ne!(pushed.head_sha, first_head);
    assert!(pushed.diff.contains("jq curl") && !pushed.diff.contains("README"), "{}", pushed.diff);
    let err = host.merge_pull_request(1, &first_head, "merge").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("not the expected")), "{err}");
    assert_eq!(host.branch_head("main").await.unwrap(), base, "nothing merged");

    let merge = host.merge_pull_request(1, &pushed.head_sha, "Merge #1").await.unwrap();
    assert_eq!(host.branch_head("main").await.unwrap(), merge);
    let tree = host.read_tree(&merge, TreeLimits::default()).await.unwrap();
    let dockerfile = tree.iter().find(|f| f.path == "worker/Dockerfile").unwrap();
    assert!(String::from_utf8_lossy(&dockerfile.content).contains("jq curl"));
    assert!(tree.iter().any(|f| f.path == "README.md"), "the second push restored README.md");
    let merged = host.get_pull_request(1).await.unwrap();
    assert_eq!(merged.state, PrState::Merged);
    assert_eq!(merged.merge_sha.as_deref(), Some(merge.as_str()));
    let err = host.merge_pull_request(1, &pushed.head_sha, "again").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(_)), "{err}");
    let err = host.close_pull_request(1).await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(_)), "{err}");
}

#[tokio::test]
async fn conflicting_merge_is_refused_and_closed_prs_stay_closed() {
    let dir = tempfile::tempdir().unwrap();
    let host = seeded(dir.path()).await;
    let base = host.branch_head("main").await.unwrap();
    let a = host.open_pull_request(new_pr(&base, "a", vec![change("README.md", Some("A\n"))])).await.unwrap();
    let b = host.open_pull_request(new_pr(&base, "b", vec![change("README.md", Some("B\n"))])).await.unwrap();
    assert_eq!(b.number, 2);
    host.merge_pull_request(a.number, &a.head_sha, "merge a").await.unwrap();
    let err = host.merge_pull_request(b.number, &b.head_sha, "merge b").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("conflicts")), "{err}");
    let closed = host.close_pull_request(b.number).await.unwrap();
    assert_eq!(closed.state, PrState::Closed);
    let err = host.merge_pull_request(b.number, &b.head_sha, "merge b").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(_)), "{err}");
    let open = host.list_pull_requests(Some(PrState::Open)).await.unwrap();
    assert!(open.is_empty());
    let all = host.list_pull_requests(None).await.unwrap();
    assert_eq!(all.iter().map(|p| p.number).collect::<Vec<_>>(), [2, 1]);
    host.comment(2, "closed: conflicts").await.unwrap();
    assert!(matches!(host.comment(9, "x").await.unwrap_err(), CodeHostError::NotFound(_)));
}

#[test]
fn paths_that_git_would_misread_are_refused() {
    for bad in ["", "/etc/passwd", "a/../b", ".git/config", "a/.GIT/x", "a//b", "a\nb", "\"q\"", "./a"] {
        assert!(check_repo_path(bad).is_err(), "{bad:?}");
    }
    check_repo_path("worker/Dockerfile").unwrap();
    check_repo_path("worker/scripts/setup tools.sh").unwrap();
}

#[tokio::test]
async fn a_failed_merge_is_reverted_to_the_tree_before_it_only_while_main_is_still_there() {
    let dir = tempfile::tempdir().unwrap();
    let host = seeded(dir.path()).await;
    let base = host.branch_head("main").await.unwrap();
    let before = host.read_tree(&base, TreeLimits::default()).await.unwrap();
    let pr =
        host.open_pull_request(new_pr(&base, "a", vec![change("worker/Dockerfile", Some("FROM x\n"))])).await.unwrap();
    let merge = host.merge_pull_request(pr.number, &pr.head_sha, "merge a").await.unwrap();
    let revert = host.revert_merge("main", &merge, "Revert #1: smoke test failed\n").await.unwrap();
    assert_eq!(host.branch_head("main").await.unwrap(), revert);
    assert_eq!(host.read_tree(&revert, TreeLimits::default()).await.unwrap(), before);
    let parents = text(host.git(&["rev-list", "--parents", "-n1", &revert], &[], None).await.unwrap());
    assert_eq!(parents, format!("{revert} {merge}"), "on top of the merge: history is kept");
    let err = host.revert_merge("main", &merge, "again").await.unwrap_err();
    assert!(matches!(err, CodeHostError::Conflict(ref m) if m.contains("moved")), "{err}");
    let err = host.revert_merge("main", "nope", "x").await.unwrap_err();
    assert!(matches!(err, CodeHostError::InvalidArgument { .. }), "{err}");
}
