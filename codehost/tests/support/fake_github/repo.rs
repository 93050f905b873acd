//! The fake's repository: git objects (blobs, flat trees, commits), branch refs and pull
//! requests, with the few git algorithms GitHub runs for us (trees from a base plus entries,
//! fast-forward checks, a line diff, a three-way file-level merge).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest, Sha256};

/// One path of a flat tree: `mode` (`100644`, `100755`, `120000`, `160000`), `kind` (`blob`,
/// `commit`) and the object it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: String,
    pub kind: String,
    pub sha: String,
}

pub type Tree = BTreeMap<String, Entry>;

#[derive(Debug, Clone)]
pub struct Commit {
    pub tree: String,
    pub parents: Vec<String>,
    pub message: String,
    pub author: (String, String),
    pub committer: (String, String),
}

#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub head_ref: String,
    /// The head when the branch no longer resolves (GitHub keeps showing the last one).
    pub last_head_sha: String,
    pub base_ref: String,
    /// The merge base the diff is taken from (the base branch's head when opened).
    pub base_sha: String,
    pub open: bool,
    pub merged_at: Option<String>,
    pub merge_commit_sha: Option<String>,
    pub created_at: String,
    pub author: String,
}

#[derive(Default)]
pub struct Repo {
    pub blobs: HashMap<String, Vec<u8>>,
    pub trees: HashMap<String, Tree>,
    pub commits: HashMap<String, Commit>,
    pub refs: BTreeMap<String, String>,
    pub pulls: Vec<Pull>,
    pub comments: Vec<(u64, String)>,
}

/// A 40-hex object id: content-addressed like git's, with SHA-256 cut to SHA-1's length.
pub fn object_id(kind: &str, bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(bytes);
    hasher.finalize().iter().take(20).map(|b| format!("{b:02x}")).collect()
}

impl Repo {
    pub fn put_blob(&mut self, content: Vec<u8>) -> String {
        let sha = object_id("blob", &content);
        self.blobs.insert(sha.clone(), content);
        sha
    }

    pub fn put_tree(&mut self, tree: Tree) -> String {
        let listing: String =
            tree.iter().map(|(path, e)| format!("{} {} {} {path}\n", e.mode, e.kind, e.sha)).collect();
        let sha = object_id("tree", listing.as_bytes());
        self.trees.insert(sha.clone(), tree);
        sha
    }

    pub fn put_commit(&mut self, commit: Commit) -> String {
        let text = format!(
            "{}|{:?}|{}|{:?}|{:?}|{}",
            commit.tree,
            commit.parents,
            commit.message,
            commit.author,
            commit.committer,
            self.commits.len()
        );
        let sha = object_id("commit", text.as_bytes());
        self.commits.insert(sha.clone(), commit);
        sha
    }

    /// Seeds `branch` with one commit holding `files` (`(path, content, mode)`).
    pub fn seed(&mut self, branch: &str, files: &[(&str, &[u8], &str)]) -> String {
        let mut tree = Tree::new();
        for (path, content, mode) in files {
            let sha = self.put_blob(content.to_vec());
            tree.insert(path.to_string(), Entry { mode: mode.to_string(), kind: "blob".into(), sha });
        }
        let tree = self.put_tree(tree);
        let who = ("Seeder".to_string(), "seed@example.com".to_string());
        let commit = self.put_commit(Commit {
            tree,
            parents: vec![],
            message: "seed".into(),
            author: who.clone(),
            committer: who,
        });
        self.refs.insert(branch.into(), commit.clone());
        commit
    }

    pub fn commit_tree(&self, commit: &str) -> Option<&Tree> {
        self.commits.get(commit).and_then(|c| self.trees.get(&c.tree))
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> bool {
        let mut stack = vec![descendant.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(sha) = stack.pop() {
            if sha == ancestor {
                return true;
            }
            if seen.insert(sha.clone())
                && let Some(commit) = self.commits.get(&sha)
            {
                stack.extend(commit.parents.iter().cloned());
            }
        }
        false
    }

    /// The newest common ancestor of two commits.
    pub fn merge_base(&self, a: &str, b: &str) -> Option<String> {
        let mut queue = std::collections::VecDeque::from([b.to_string()]);
        let mut seen = BTreeSet::new();
        while let Some(sha) = queue.pop_front() {
            if self.is_ancestor(&sha, a) {
                return Some(sha);
            }
            if seen.insert(sha.clone())
                && let Some(commit) = self.commits.get(&sha)
            {
                queue.extend(commit.parents.iter().cloned());
            }
        }
        None
    }

    pub fn head_of(&self, pull: &Pull) -> String {
        self.refs.get(&pull.head_ref).cloned().unwrap_or_else(|| pull.last_head_sha.clone())
    }

    pub fn blob_text(&self, entry: Option<&Entry>) -> String {
        entry.and_then(|e| self.blobs.get(&e.sha)).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
    }

    /// Changed paths between two commits: `(path, status, additions, deletions, unified diff)`.
    pub fn compare(&self, from: &str, to: &str) -> Vec<(String, &'static str, usize, usize, String)> {
        let empty = Tree::new();
        let old = self.commit_tree(from).unwrap_or(&empty);
        let new = self.commit_tree(to).unwrap_or(&empty);
        let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let mut out = Vec::new();
        for path in paths {
            let (a, b) = (old.get(path), new.get(path));
            if a == b {
                continue;
            }
            let status = match (a, b) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "modified",
            };
            let (before, after) = (self.blob_text(a), self.blob_text(b));
            let lines = line_diff(&before, &after);
            let adds = lines.iter().filter(|l| l.starts_with('+')).count();
            let dels = lines.iter().filter(|l| l.starts_with('-')).count();
            let mut text = format!("diff --git a/{path} b/{path}\n");
            match status {
                "added" => text.push_str(&format!("new file mode {}\n", b.unwrap().mode)),
                "removed" => text.push_str(&format!("deleted file mode {}\n", a.unwrap().mode)),
                _ => {}
            }
            let short = |e: Option<&Entry>| e.map_or("0000000".to_string(), |e| e.sha[..7].to_string());
            text.push_str(&format!("index {}..{}\n", short(a), short(b)));
            text.push_str(&format!("--- {}\n", if a.is_some() { format!("a/{path}") } else { "/dev/null".into() }));
            text.push_str(&format!("+++ {}\n", if b.is_some() { format!("b/{path}") } else { "/dev/null".into() }));
            let (n, m) = (before.lines().count(), after.lines().count());
            text.push_str(&format!("@@ -{},{n} +{},{m} @@\n", n.min(1), m.min(1)));
            for line in &lines {
                text.push_str(line);
                text.push('\n');
            }
            out.push((path.clone(), status, adds, dels, text));
        }
        out
    }

    /// Three-way merge of whole files: a path changed on one side takes that side; changed
    /// differently on both is a conflict (`None`).
    pub fn merge_trees(&self, base: &str, ours: &str, theirs: &str) -> Option<Tree> {
        let empty = Tree::new();
        let (b, o, t) = (
            self.commit_tree(base).unwrap_or(&empty),
            self.commit_tree(ours).unwrap_or(&empty),
            self.commit_tree(theirs).unwrap_or(&empty),
        );
        let paths: BTreeSet<&String> = b.keys().chain(o.keys()).chain(t.keys()).collect();
        let mut merged = Tree::new();
        for path in paths {
            let (eb, eo, et) = (b.get(path), o.get(path), t.get(path));
            let pick = if eo == et || et == eb {
                eo
            } else if eo == eb {
                et
            } else {
                return None;
            };
            if let Some(entry) = pick {
                merged.insert(path.clone(), entry.clone());
            }
        }
        Some(merged)
    }
}

/// A line diff by longest common subsequence: every line prefixed with ' ', '-' or '+'.
pub fn line_diff(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+{}", b[j]));
            j += 1;
        } else {
            out.push(format!("-{}", a[i]));
            i += 1;
        }
    }
    out
}
