//! Paths inside a sandbox workspace, validated before any provider sees them.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Longest path accepted, in bytes (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// A non-empty relative path with only normal components: no `..`, no `.`, not absolute.
/// Symlinks are the provider's to resolve (they can change under us inside the sandbox).
#[derive(Clone, PartialEq, Eq)]
pub struct WorkspacePath(PathBuf);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspacePathError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is absolute; give a path relative to the sandbox workspace")]
    Absolute(String),
    #[error("{0:?} contains `..`; paths may not leave the sandbox workspace")]
    ParentDir(String),
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("is {0} bytes, longer than {MAX_PATH_BYTES}")]
    TooLong(usize),
}

impl WorkspacePath {
    pub fn parse(raw: &str) -> Result<WorkspacePath, WorkspacePathError> {
        if raw.is_empty() {
            return Err(WorkspacePathError::Empty);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(WorkspacePathError::TooLong(raw.len()));
        }
        if raw.contains('\0') {
            return Err(WorkspacePathError::Nul(raw.to_owned()));
        }
        let mut clean = PathBuf::new();
        for component in Path::new(raw).components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(WorkspacePathError::ParentDir(raw.to_owned())),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(WorkspacePathError::Absolute(raw.to_owned()));
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(WorkspacePathError::Empty);
        }
        Ok(WorkspacePath(clean))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Debug for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.display(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        assert_eq!(WorkspacePath::parse("a/b.txt").unwrap().as_path(), Path::new("a/b.txt"));
        assert_eq!(WorkspacePath::parse("./a//b/").unwrap().as_path(), Path::new("a/b"));
    }

    #[test]
    fn rejects_escapes_with_the_reason() {
        assert_eq!(WorkspacePath::parse(""), Err(WorkspacePathError::Empty));
        assert_eq!(WorkspacePath::parse("."), Err(WorkspacePathError::Empty));
        assert!(matches!(WorkspacePath::parse("/etc/passwd"), Err(WorkspacePathError::Absolute(_))));
        assert!(matches!(WorkspacePath::parse("a/../../etc"), Err(WorkspacePathError::ParentDir(_))));
        assert!(matches!(WorkspacePath::parse("a/.."), Err(WorkspacePathError::ParentDir(_))));
        assert!(matches!(WorkspacePath::parse("a\0b"), Err(WorkspacePathError::Nul(_))));
        assert!(matches!(WorkspacePath::parse(&"a".repeat(5000)), Err(WorkspacePathError::TooLong(5000))));
    }
}
