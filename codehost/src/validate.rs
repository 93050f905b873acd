//! Checks every host applies before a name reaches git or a URL: repository paths, branch
//! names, commit SHAs, change sets.

use crate::{CodeHostError, FileChange, Result};

fn invalid(field: &'static str, message: String) -> CodeHostError {
    CodeHostError::InvalidArgument { field, message }
}

/// A repository-relative path git will store as given: no absolute paths, `.`/`..`, `.git`,
/// empty components or control characters (they would break the index-info line format).
pub fn check_repo_path(path: &str) -> Result<()> {
    let bad = |why: &str| CodeHostError::InvalidArgument { field: "path", message: format!("{path:?}: {why}") };
    if path.is_empty() || path.starts_with('/') {
        return Err(bad("must be a relative path"));
    }
    if path.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(bad("must not contain control characters, quotes or backslashes"));
    }
    for component in path.split('/') {
        match component {
            "" | "." | ".." => return Err(bad("must not contain empty, '.' or '..' components")),
            c if c.eq_ignore_ascii_case(".git") => return Err(bad("must not touch .git")),
            _ => {}
        }
    }
    Ok(())
}

/// A branch name that is also safe as URL path segments (`git/ref/heads/{branch}`).
pub fn check_branch(branch: &str) -> Result<()> {
    let valid = !branch.is_empty()
        && branch.len() <= 200
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("/.")
        && branch.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid { Ok(()) } else { Err(invalid("branch", format!("{branch:?} is not a valid branch name"))) }
}

pub fn check_sha(sha: &str) -> Result<()> {
    if (7..=64).contains(&sha.len()) && sha.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid("sha", format!("{sha:?} is not a commit SHA")))
    }
}

pub fn check_changes(changes: &[FileChange]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for change in changes {
        check_repo_path(&change.path)?;
        if !seen.insert(change.path.as_str()) {
            return Err(invalid("path", format!("{:?} is changed twice", change.path)));
        }
    }
    Ok(())
}
