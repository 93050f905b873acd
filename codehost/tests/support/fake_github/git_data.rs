//! `/repos/{o}/{r}/git/...`: refs, commits, trees and blobs.

use axum::http::Method;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::State;
use super::json::{self, API};
use super::repo::{Commit, Entry, Tree, object_id};
use super::routes::{Call, Reply, full_name, now};

pub fn route(state: &mut State, call: &Call) -> Reply {
    let method = call.method;
    match &call.rest[1..] {
        ["ref", "heads", branch @ ..] if method == Method::GET => get_ref(state, &branch.join("/")),
        ["refs"] if method == Method::POST => create_ref(state, call),
        ["refs", "heads", branch @ ..] if method == Method::PATCH => update_ref(state, call, &branch.join("/")),
        ["refs", "heads", branch @ ..] if method == Method::DELETE => delete_ref(state, &branch.join("/")),
        ["commits", sha] if method == Method::GET => match state.repo.commits.get(*sha) {
            Some(_) => Reply::json(200, commit_json(state, sha)),
            None => Reply::error(404, "Not Found", "git/commits#get-a-commit-object"),
        },
        ["commits"] if method == Method::POST => create_commit(state, call),
        ["trees", sha] if method == Method::GET => get_tree(state, call, sha),
        ["trees"] if method == Method::POST => create_tree(state, call),
        ["blobs", sha] if method == Method::GET => get_blob(state, sha),
        ["blobs"] if method == Method::POST => create_blob(state, call),
        _ => Reply::not_found(),
    }
}

fn ref_json(state: &State, branch: &str, sha: &str) -> Value {
    json::reference(&full_name(state), &state.owner, &state.repo_name, branch, sha)
}

fn get_ref(state: &State, branch: &str) -> Reply {
    match state.repo.refs.get(branch) {
        Some(sha) => Reply::json(200, ref_json(state, branch, sha)),
        None => Reply::error(404, "Not Found", "git/refs#get-a-reference"),
    }
}

fn create_ref(state: &mut State, call: &Call) -> Reply {
    let docs = "git/refs#create-a-reference";
    let (Some(reference), Some(sha)) = (call.str("ref"), call.str("sha")) else {
        return Reply::error(422, "Invalid request.\n\n\"ref\", \"sha\" weren't supplied.", docs);
    };
    let Some(branch) = reference.strip_prefix("refs/heads/") else {
        return Reply::error(422, "Reference name is invalid", docs);
    };
    if !state.repo.commits.contains_key(sha) {
        return Reply::error(422, "Object does not exist", docs);
    }
    if state.repo.refs.contains_key(branch) {
        return Reply::error(422, "Reference already exists", docs);
    }
    state.repo.refs.insert(branch.into(), sha.into());
    Reply::json(201, ref_json(state, branch, sha))
}

fn update_ref(state: &mut State, call: &Call, branch: &str) -> Reply {
    let docs = "git/refs#update-a-reference";
    let Some(sha) = call.str("sha") else {
        return Reply::error(422, "Invalid request.\n\n\"sha\" wasn't supplied.", docs);
    };
    let force = call.body.get("force").and_then(Value::as_bool).unwrap_or(false);
    let Some(current) = state.repo.refs.get(branch).cloned() else {
        return Reply::error(422, "Reference does not exist", docs);
    };
    if !state.repo.commits.contains_key(sha) {
        return Reply::error(422, "Object does not exist", docs);
    }
    if !force && !state.repo.is_ancestor(&current, sha) {
        return Reply::error(422, "Update is not a fast forward", docs);
    }
    state.repo.refs.insert(branch.into(), sha.into());
    Reply::json(200, ref_json(state, branch, sha))
}

fn delete_ref(state: &mut State, branch: &str) -> Reply {
    match state.repo.refs.remove(branch) {
        Some(_) => Reply { status: 204, body: super::routes::Body::Empty, headers: Vec::new() },
        None => Reply::error(422, "Reference does not exist", "git/refs#delete-a-reference"),
    }
}

fn commit_json(state: &State, sha: &str) -> Value {
    let commit = &state.repo.commits[sha];
    let api = format!("{API}/repos/{}", full_name(state));
    let person = |(name, email): &(String, String)| json!({ "name": name, "email": email, "date": now() });
    json!({
        "sha": sha,
        "node_id": "MDY6Q29tbWl0NmRjYjA5YjViNTc4NzVmMzM0ZjYxYWViZWQ2OTVlMmU0MTkzZGI1ZQ==",
        "url": format!("{api}/git/commits/{sha}"),
        "html_url": format!("https://github.com/{}/commit/{sha}", full_name(state)),
        "author": person(&commit.author),
        "committer": person(&commit.committer),
        "message": commit.message,
        "tree": { "sha": commit.tree, "url": format!("{api}/git/trees/{}", commit.tree) },
        "parents": commit.parents.iter().map(|p| json!({
            "sha": p, "url": format!("{api}/git/commits/{p}"), "html_url": format!("https://github.com/{}/commit/{p}", full_name(state)),
        })).collect::<Vec<_>>(),
        "verification": { "verified": false, "reason": "unsigned", "signature": null, "payload": null, "verified_at": null },
    })
}

fn create_commit(state: &mut State, call: &Call) -> Reply {
    let docs = "git/commits#create-a-commit";
    let (Some(message), Some(tree)) = (call.str("message"), call.str("tree")) else {
        return Reply::error(422, "Invalid request.\n\n\"message\", \"tree\" weren't supplied.", docs);
    };
    if !state.repo.trees.contains_key(tree) {
        return Reply::error(422, "Tree SHA does not exist", docs);
    }
    let parents: Vec<String> = call
        .body
        .get("parents")
        .and_then(Value::as_array)
        .map(|p| p.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if parents.iter().any(|p| !state.repo.commits.contains_key(p)) {
        return Reply::error(422, "Parent SHA does not exist or is not a commit object", docs);
    }
    let person = |field: &str| {
        let value = call.body.get(field)?;
        Some((value.get("name")?.as_str()?.to_owned(), value.get("email")?.as_str()?.to_owned()))
    };
    let caller = (call.caller.to_owned(), format!("{}@users.noreply.github.com", call.caller));
    let author = person("author").unwrap_or_else(|| caller.clone());
    let committer = person("committer").unwrap_or_else(|| author.clone());
    let commit = Commit { tree: tree.into(), parents, message: message.into(), author, committer };
    let sha = state.repo.put_commit(commit);
    Reply::json(201, commit_json(state, &sha))
}

fn get_tree(state: &State, call: &Call, sha: &str) -> Reply {
    let Some(tree) = state.repo.trees.get(sha) else {
        return Reply::error(404, "Not Found", "git/trees#get-a-tree");
    };
    let recursive = call.param("recursive").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    let api = format!("{API}/repos/{}", full_name(state));
    let mut listing = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, entry) in tree {
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            dirs.insert(parts[..depth].join("/"));
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let mut item = json!({ "path": path, "mode": entry.mode, "type": entry.kind, "sha": entry.sha });
        if entry.kind == "blob" {
            item["size"] = json!(state.repo.blobs.get(&entry.sha).map_or(0, Vec::len));
            item["url"] = json!(format!("{api}/git/blobs/{}", entry.sha));
        }
        listing.push(item);
    }
    for dir in dirs {
        if recursive || !dir.contains('/') {
            let sha = object_id("dir", dir.as_bytes());
            listing.push(json!({ "path": dir, "mode": "040000", "type": "tree", "sha": sha, "url": format!("{api}/git/trees/{sha}") }));
        }
    }
    listing.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let truncated = state.truncate_trees;
    Reply::json(
        200,
        json!({ "sha": sha, "url": format!("{api}/git/trees/{sha}"), "tree": listing, "truncated": truncated }),
    )
}

fn create_tree(state: &mut State, call: &Call) -> Reply {
    let docs = "git/trees#create-a-tree";
    let mut tree: Tree = match call.str("base_tree") {
        Some(base) => match state.repo.trees.get(base) {
            Some(tree) => tree.clone(),
            None => return Reply::error(422, "base_tree is not a valid tree oid", docs),
        },
        None => Tree::new(),
    };
    let Some(entries) = call.body.get("tree").and_then(Value::as_array) else {
        return Reply::error(422, "Invalid request.\n\n\"tree\" wasn't supplied.", docs);
    };
    for item in entries {
        let (Some(path), Some(mode), Some(kind)) =
            (item["path"].as_str(), item["mode"].as_str(), item["type"].as_str())
        else {
            return Reply::error(422, "Invalid tree info", docs);
        };
        if !["100644", "100755", "040000", "160000", "120000"].contains(&mode) {
            return Reply::error(422, &format!("Invalid tree info: mode {mode} is not valid"), docs);
        }
        let sha = match (item.get("sha"), item.get("content")) {
            (Some(Value::String(_)), Some(content)) if !content.is_null() => {
                return Reply::error(422, "Only one of 'sha' or 'content' may be supplied", docs);
            }
            (Some(Value::Null), _) => {
                tree.remove(path);
                let under = format!("{path}/");
                tree.retain(|p, _| !p.starts_with(&under));
                continue;
            }
            (Some(Value::String(sha)), _) => {
                if kind == "blob" && !state.repo.blobs.contains_key(sha) {
                    return Reply::error(422, "GitRPC::BadObjectState", docs);
                }
                sha.clone()
            }
            (_, Some(Value::String(content))) => state.repo.put_blob(content.as_bytes().to_vec()),
            _ => return Reply::error(422, "Must supply either tree.sha or tree.content", docs),
        };
        tree.insert(path.into(), Entry { mode: mode.into(), kind: kind.into(), sha });
    }
    let sha = state.repo.put_tree(tree);
    Reply::json(
        201,
        json!({ "sha": sha, "url": format!("{API}/repos/{}/git/trees/{sha}", full_name(state)), "tree": [], "truncated": false }),
    )
}

fn get_blob(state: &State, sha: &str) -> Reply {
    let Some(content) = state.repo.blobs.get(sha) else {
        return Reply::error(404, "Not Found", "git/blobs#get-a-blob");
    };
    // GitHub wraps the base64 at 60 characters.
    let encoded = STANDARD.encode(content);
    let wrapped: Vec<&str> = encoded.as_bytes().chunks(60).map(|c| std::str::from_utf8(c).unwrap()).collect();
    Reply::json(
        200,
        json!({
            "sha": sha,
            "node_id": "Q29udGVudA==",
            "size": content.len(),
            "url": format!("{API}/repos/{}/git/blobs/{sha}", full_name(state)),
            "content": wrapped.join("\n") + "\n",
            "encoding": "base64",
        }),
    )
}

fn create_blob(state: &mut State, call: &Call) -> Reply {
    let docs = "git/blobs#create-a-blob";
    let Some(content) = call.str("content") else {
        return Reply::error(422, "Invalid request.\n\n\"content\" wasn't supplied.", docs);
    };
    let bytes = match call.str("encoding").unwrap_or("utf-8") {
        "base64" => match STANDARD.decode(content.replace(['\n', '\r'], "")) {
            Ok(bytes) => bytes,
            Err(_) => return Reply::error(422, "Invalid base64 content", docs),
        },
        "utf-8" => content.as_bytes().to_vec(),
        other => return Reply::error(422, &format!("encoding {other} is not supported"), docs),
    };
    let sha = state.repo.put_blob(bytes);
    Reply::json(201, json!({ "sha": sha, "url": format!("{API}/repos/{}/git/blobs/{sha}", full_name(state)) }))
}
