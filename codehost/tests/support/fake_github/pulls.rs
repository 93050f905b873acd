//! `/repos/{o}/{r}/pulls/...` and `/issues/{n}/comments`.

use axum::http::Method;
use serde_json::{Value, json};

use super::State;
use super::json::{self, API};
use super::repo::{Commit, Pull};
use super::routes::{Body, Call, Reply, full_name, now};

pub fn route(state: &mut State, call: &Call) -> Reply {
    let method = call.method;
    let number = |s: &str| s.parse::<u64>().ok();
    match call.rest {
        ["pulls"] if method == Method::GET => list(state, call),
        ["pulls"] if method == Method::POST => create(state, call),
        ["pulls", n] => match (number(n), method) {
            (Some(n), &Method::GET) if wants_diff(call) => diff(state, n),
            (Some(n), &Method::GET) => with_pull(state, n, |state, pull| Reply::json(200, pull_json(state, pull))),
            (Some(n), &Method::PATCH) => update(state, call, n),
            _ => Reply::not_found(),
        },
        ["pulls", n, "files"] if method == Method::GET => match number(n) {
            Some(n) => files(state, call, n),
            None => Reply::not_found(),
        },
        ["pulls", n, "merge"] if method == Method::PUT => match number(n) {
            Some(n) => merge(state, call, n),
            None => Reply::not_found(),
        },
        ["issues", n, "comments"] if method == Method::POST => match number(n) {
            Some(n) => comment(state, call, n),
            None => Reply::not_found(),
        },
        _ => Reply::not_found(),
    }
}

fn wants_diff(call: &Call) -> bool {
    call.request.header("accept").is_some_and(|a| a.contains("vnd.github.diff") || a.contains("vnd.github.v3.diff"))
}

fn pull_json(state: &State, pull: &Pull) -> Value {
    json::pull(&full_name(state), &state.owner, &state.repo, pull)
}

fn with_pull(state: &State, n: u64, then: impl FnOnce(&State, &Pull) -> Reply) -> Reply {
    match state.repo.pulls.iter().find(|p| p.number == n) {
        Some(pull) => then(state, pull),
        None => Reply::error(404, "Not Found", "pulls/pulls#get-a-pull-request"),
    }
}

/// `?per_page=&page=` over `items`, with GitHub's `Link` header when more follow.
fn paged(state: &State, call: &Call, items: Vec<Value>, path: &str) -> Reply {
    let per_page = call.param("per_page").and_then(|v| v.parse().ok()).unwrap_or(30usize).clamp(1, 100);
    let page = call.param("page").and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1);
    let total = items.len();
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut reply = Reply::json(200, Value::Array(slice));
    if page * per_page < total {
        let url = format!("{API}/repos/{}/{path}?per_page={per_page}&page={}", full_name(state), page + 1);
        reply.headers.push(("link", format!("<{url}>; rel=\"next\"")));
    }
    reply
}

fn list(state: &State, call: &Call) -> Reply {
    let wanted = call.param("state").unwrap_or("open");
    let mut pulls: Vec<&Pull> =
        state.repo.pulls.iter().filter(|p| wanted == "all" || (wanted == "open") == p.open).collect();
    if call.param("direction") != Some("asc") {
        pulls.reverse(); // created order, newest first
    }
    let items = pulls.into_iter().map(|p| pull_json(state, p)).collect();
    paged(state, call, items, "pulls")
}

fn create(state: &mut State, call: &Call) -> Reply {
    let docs = "pulls/pulls#create-a-pull-request";
    let (Some(title), Some(head), Some(base)) = (call.str("title"), call.str("head"), call.str("base")) else {
        return Reply::validation(
            json!([{ "resource": "PullRequest", "code": "missing_field", "field": "head" }]),
            docs,
        );
    };
    let head = head.split_once(':').map_or(head, |(_, branch)| branch);
    let (Some(head_sha), Some(base_sha)) = (state.repo.refs.get(head).cloned(), state.repo.refs.get(base).cloned())
    else {
        let field = if state.repo.refs.contains_key(head) { "base" } else { "head" };
        return Reply::validation(json!([{ "resource": "PullRequest", "field": field, "code": "invalid" }]), docs);
    };
    if state.repo.pulls.iter().any(|p| p.open && p.head_ref == head) {
        let message = format!("A pull request already exists for {}:{head}.", state.owner);
        return Reply::validation(json!([{ "resource": "PullRequest", "code": "custom", "message": message }]), docs);
    }
    if state.repo.is_ancestor(&head_sha, &base_sha) {
        let message = format!("No commits between {base} and {head}");
        return Reply::validation(json!([{ "resource": "PullRequest", "code": "custom", "message": message }]), docs);
    }
    let merge_base = state.repo.merge_base(&base_sha, &head_sha).unwrap_or(base_sha);
    let pull = Pull {
        number: state.repo.pulls.len() as u64 + 1,
        title: title.into(),
        body: call.str("body").unwrap_or_default().into(),
        head_ref: head.into(),
        last_head_sha: head_sha,
        base_ref: base.into(),
        base_sha: merge_base,
        open: true,
        merged_at: None,
        merge_commit_sha: None,
        created_at: now(),
        author: call.caller.into(),
    };
    let reply = Reply::json(201, pull_json(state, &pull));
    state.repo.pulls.push(pull);
    reply
}

fn diff(state: &State, n: u64) -> Reply {
    with_pull(state, n, |state, pull| {
        let head = state.repo.head_of(pull);
        let text: String = state.repo.compare(&pull.base_sha, &head).into_iter().map(|(.., text)| text).collect();
        Reply { status: 200, body: Body::Text(text), headers: Vec::new() }
    })
}

fn files(state: &State, call: &Call, n: u64) -> Reply {
    let Some(pull) = state.repo.pulls.iter().find(|p| p.number == n) else {
        return Reply::error(404, "Not Found", "pulls/pulls#list-pull-requests-files");
    };
    let full = full_name(state);
    let head = state.repo.head_of(pull);
    let items = state
        .repo
        .compare(&pull.base_sha, &head)
        .into_iter()
        .map(|(path, status, adds, dels, patch)| json::diff_entry(&full, &path, status, adds, dels, &patch))
        .collect();
    paged(state, call, items, &format!("pulls/{n}/files"))
}

fn update(state: &mut State, call: &Call, n: u64) -> Reply {
    let full = full_name(state);
    let Some(pull) = state.repo.pulls.iter_mut().find(|p| p.number == n) else {
        return Reply::error(404, "Not Found", "pulls/pulls#update-a-pull-request");
    };
    if let Some(wanted) = call.str("state") {
        if pull.merged_at.is_some() {
            return Reply::validation(
                json!([{ "resource": "PullRequest", "code": "custom", "message": format!("Cannot change the state of merged pull request {full}#{n}") }]),
                "pulls/pulls#update-a-pull-request",
            );
        }
        pull.open = wanted == "open";
    }
    if let Some(title) = call.str("title") {
        pull.title = title.into();
    }
    let pull = pull.clone();
    Reply::json(200, pull_json(state, &pull))
}

fn merge(state: &mut State, call: &Call, n: u64) -> Reply {
    let docs = "pulls/pulls#merge-a-pull-request";
    let Some(index) = state.repo.pulls.iter().position(|p| p.number == n) else {
        return Reply::error(404, "Not Found", docs);
    };
    let pull = state.repo.pulls[index].clone();
    if !pull.open {
        return Reply::error(405, "Pull Request is not mergeable", docs);
    }
    let head = state.repo.head_of(&pull);
    if call.str("sha").is_some_and(|sha| sha != head) {
        return Reply::error(409, "Head branch was modified. Review and try the merge again.", docs);
    }
    let base_head = state.repo.refs[&pull.base_ref].clone();
    let merge_base = state.repo.merge_base(&base_head, &head).unwrap_or_else(|| pull.base_sha.clone());
    let Some(tree) = state.repo.merge_trees(&merge_base, &base_head, &head) else {
        return Reply::error(405, "Pull Request is not mergeable", docs);
    };
    let tree = state.repo.put_tree(tree);
    let title = call.str("commit_title").map_or_else(|| format!("Merge pull request #{n}"), str::to_owned);
    let message = match call.str("commit_message") {
        Some(body) => format!("{title}\n\n{body}"),
        None => title,
    };
    let who = (call.caller.to_owned(), "noreply@github.com".to_owned());
    let commit = Commit { tree, parents: vec![base_head, head.clone()], message, author: who.clone(), committer: who };
    let sha = state.repo.put_commit(commit);
    state.repo.refs.insert(pull.base_ref.clone(), sha.clone());
    let pull = &mut state.repo.pulls[index];
    pull.open = false;
    pull.last_head_sha = head;
    pull.merged_at = Some(now());
    pull.merge_commit_sha = Some(sha.clone());
    Reply::json(200, json!({ "sha": sha, "merged": true, "message": "Pull Request successfully merged" }))
}

fn comment(state: &mut State, call: &Call, n: u64) -> Reply {
    if !state.repo.pulls.iter().any(|p| p.number == n) {
        return Reply::error(404, "Not Found", "issues/comments#create-an-issue-comment");
    }
    let Some(body) = call.str("body") else {
        return Reply::validation(
            json!([{ "resource": "IssueComment", "code": "missing_field", "field": "body" }]),
            "issues/comments#create-an-issue-comment",
        );
    };
    state.repo.comments.push((n, body.to_owned()));
    let id = state.repo.comments.len() as u64;
    Reply::json(201, json::comment(&full_name(state), n, id, body, call.caller, &now()))
}
