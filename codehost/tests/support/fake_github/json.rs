//! GitHub's response shapes, as in the REST docs' examples: full enough that octocrab's strict
//! models (`PullRequest`, `Ref`, `DiffEntry`, `Merge`) deserialize them as they would GitHub's.

use serde_json::{Value, json};

use super::repo::{Pull, Repo};

pub const API: &str = "https://api.github.com";

pub fn error(message: &str, docs: &str, status: u16) -> Value {
    json!({
        "message": message,
        "documentation_url": format!("https://docs.github.com/rest/{docs}"),
        "status": status.to_string(),
    })
}

/// The simple-user object GitHub embeds everywhere (every URL field is required by octocrab).
pub fn user(login: &str) -> Value {
    let api = format!("{API}/users/{login}");
    let bot = login.ends_with("[bot]");
    json!({
        "login": login,
        "id": if bot { 41898282 } else { 583231 },
        "node_id": "MDQ6VXNlcjU4MzIzMQ==",
        "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": if bot { "Bot" } else { "User" },
        "site_admin": false,
    })
}

pub fn reference(full: &str, owner: &str, repo: &str, branch: &str, sha: &str) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "node_id": "MDM6UmVmcmVmcy9oZWFkcy9mZWF0dXJlQQ==",
        "url": format!("{API}/repos/{full}/git/refs/heads/{branch}"),
        "object": {
            "type": "commit",
            "sha": sha,
            "url": format!("{API}/repos/{owner}/{repo}/git/commits/{sha}"),
        },
    })
}

pub fn pull(full: &str, owner: &str, repo: &Repo, pull: &Pull) -> Value {
    let n = pull.number;
    let head_sha = repo.head_of(pull);
    let base_sha = &pull.base_sha;
    let api = format!("{API}/repos/{full}");
    let html = format!("https://github.com/{full}/pull/{n}");
    let mut value = json!({
        "url": format!("{api}/pulls/{n}"),
        "id": 1_000_000 + n,
        "node_id": "MDExOlB1bGxSZXF1ZXN0MQ==",
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": format!("{api}/issues/{n}"),
        "commits_url": format!("{api}/pulls/{n}/commits"),
        "review_comments_url": format!("{api}/pulls/{n}/comments"),
        "review_comment_url": format!("{api}/pulls/comments{{/number}}"),
        "comments_url": format!("{api}/issues/{n}/comments"),
        "statuses_url": format!("{api}/statuses/{head_sha}"),
    });
    // Two halves: one `json!` this size exceeds the macro recursion limit.
    let rest = json!({
        "number": n,
        "state": if pull.open { "open" } else { "closed" },
        "locked": false,
        "title": pull.title,
        "user": user(&pull.author),
        "body": pull.body,
        "labels": [],
        "milestone": null,
        "active_lock_reason": null,
        "created_at": pull.created_at,
        "updated_at": pull.created_at,
        "closed_at": if pull.open { Value::Null } else { json!(pull.created_at) },
        "merged_at": pull.merged_at,
        // GitHub fills this for open pull requests too (the test merge commit).
        "merge_commit_sha": pull.merge_commit_sha.clone().unwrap_or_else(|| "e5bd3914e2e596debea16f433f57875b5b90bcd6".into()),
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "head": { "label": format!("{owner}:{}", pull.head_ref), "ref": pull.head_ref, "sha": head_sha, "user": user(owner) },
        "base": { "label": format!("{owner}:{}", pull.base_ref), "ref": pull.base_ref, "sha": base_sha, "user": user(owner) },
        "author_association": "OWNER",
        "auto_merge": null,
        "draft": false,
        "merged": pull.merged_at.is_some(),
        "mergeable": if pull.open { json!(true) } else { Value::Null },
        "rebaseable": true,
        "mergeable_state": "clean",
        "comments": 0,
        "review_comments": 0,
        "maintainer_can_modify": false,
        "commits": 1,
        "additions": 0,
        "deletions": 0,
        "changed_files": 0,
    });
    value.as_object_mut().unwrap().extend(rest.as_object().unwrap().clone());
    value
}

pub fn diff_entry(full: &str, path: &str, status: &str, additions: usize, deletions: usize, patch: &str) -> Value {
    json!({
        "sha": "bbcd538c8e72b8c175046e27cc8f907076331401",
        "filename": path,
        "status": status,
        "additions": additions,
        "deletions": deletions,
        "changes": additions + deletions,
        "blob_url": format!("https://github.com/{full}/blob/6dcb09b/{path}"),
        "raw_url": format!("https://github.com/{full}/raw/6dcb09b/{path}"),
        "contents_url": format!("{API}/repos/{full}/contents/{path}?ref=6dcb09b"),
        "patch": patch,
    })
}

pub fn comment(full: &str, number: u64, id: u64, body: &str, login: &str, now: &str) -> Value {
    json!({
        "id": id,
        "node_id": "MDEyOklzc3VlQ29tbWVudDE=",
        "url": format!("{API}/repos/{full}/issues/comments/{id}"),
        "html_url": format!("https://github.com/{full}/pull/{number}#issuecomment-{id}"),
        "body": body,
        "user": user(login),
        "created_at": now,
        "updated_at": now,
        "issue_url": format!("{API}/repos/{full}/issues/{number}"),
        "author_association": "OWNER",
    })
}
