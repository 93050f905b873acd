//! File access inside a `local` workspace that cannot be steered outside it.
//!
//! Processes in the sandbox can create symlinks at any time, so checking a path and then
//! opening it would race. Every open goes through `openat2(RESOLVE_BENEATH)`, which makes the
//! kernel refuse any resolution — `..`, absolute or relative symlink — that leaves the workspace.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bytes::Bytes;

use crate::provider::ProviderError;
use crate::workspace_path::WorkspacePath;

/// `struct open_how` from linux/openat2.h (libc's copy is non-exhaustive, so not constructible).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn open_beneath(root: &File, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid NUL-terminated path, a live dirfd and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn map_error(field: &'static str, path: &WorkspacePath, error: io::Error) -> ProviderError {
    let invalid = |message: String| ProviderError::InvalidArgument { field, message };
    match error.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => invalid(format!("{path:?} resolves outside the sandbox workspace")),
        Some(libc::ENOENT) => ProviderError::NotFound(format!("{field}: {path:?} does not exist in the workspace")),
        Some(libc::EISDIR) => invalid(format!("{path:?} is a directory")),
        Some(libc::ENOTDIR) => invalid(format!("{path:?}: a parent is not a directory")),
        Some(libc::ENOSPC) => ProviderError::TooLarge(format!("{field}: no space left for {path:?}")),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            ProviderError::FailedPrecondition(format!("{field}: {path:?} is not accessible: {error}"))
        }
        Some(libc::ENXIO) => invalid(format!("{path:?} is not a regular file (a FIFO, socket or device)")),
        _ => ProviderError::Unavailable(format!("{field}: {path:?}: {error}")),
    }
}

fn open_root(workspace: &Path) -> Result<File, ProviderError> {
    File::open(workspace).map_err(|e| ProviderError::Unavailable(format!("workspace unavailable: {e}")))
}

/// Creates each missing parent of `path` one level at a time, never following a symlink out.
fn create_parents(root: &File, path: &WorkspacePath, owner: Option<(u32, u32)>) -> Result<(), ProviderError> {
    let Some(parent) = path.as_path().parent() else {
        return Ok(());
    };
    let mut prefix = std::path::PathBuf::new();
    for component in parent.components() {
        let above = if prefix.as_os_str().is_empty() { None } else { Some(prefix.clone()) };
        prefix.push(component);
        match open_beneath(root, &prefix, libc::O_DIRECTORY | libc::O_PATH, 0) {
            Ok(_) => continue,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => return Err(map_error("path", path, error)),
        }
        let dir = match &above {
            Some(above) => open_beneath(root, above, libc::O_DIRECTORY | libc::O_PATH, 0)
                .map_err(|e| map_error("path", path, e))?,
            None => root.try_clone().map_err(|e| map_error("path", path, e))?.into(),
        };
        let name = CString::new(component.as_os_str().as_bytes()).expect("validated: no NUL");
        // SAFETY: valid dirfd and NUL-terminated single component (mkdirat never follows it).
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(map_error("path", path, error));
            }
        } else if let Some((uid, gid)) = owner {
            // SAFETY: as above; AT_SYMLINK_NOFOLLOW so a racing symlink is not followed.
            unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
        }
    }
    Ok(())
}

/// Writes `content`; new files and directories are given to `owner` (the sandbox's user) so
/// the sandbox can change them.
pub fn write_file(
    workspace: &Path,
    path: &WorkspacePath,
    content: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), ProviderError> {
    let root = open_root(workspace)?;
    create_parents(&root, path, owner)?;
    // O_NONBLOCK: a FIFO planted by the sandbox must not hang the broker; only regular files pass.
    let fd = open_beneath(&root, path.as_path(), libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK, 0o644)
        .map_err(|e| map_error("path", path, e))?;
    let mut file = File::from(fd);
    require_regular_file(&file, path)?;
    file.set_len(0).map_err(|e| map_error("path", path, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| map_error("path", path, e))?;
    }
    io::Write::write_all(&mut file, content).map_err(|e| map_error("content", path, e))
}

pub fn read_file(workspace: &Path, path: &WorkspacePath, max_bytes: u64) -> Result<Bytes, ProviderError> {
    let root = open_root(workspace)?;
    let fd = open_beneath(&root, path.as_path(), libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(|e| map_error("path", path, e))?;
    let file = File::from(fd);
    let metadata = require_regular_file(&file, path)?;
    let too_large = |size: u64| {
        ProviderError::TooLarge(format!(
            "file size limit: {path:?} is {size} bytes, more than {max_bytes} (SANDBOX_MAX_FILE_BYTES)"
        ))
    };
    if metadata.len() > max_bytes {
        return Err(too_large(metadata.len()));
    }
    // The file may grow while we read: never read more than the limit.
    let mut content = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes + 1).read_to_end(&mut content).map_err(|e| map_error("path", path, e))?;
    if content.len() as u64 > max_bytes {
        return Err(too_large(content.len() as u64));
    }
    Ok(Bytes::from(content))
}

fn require_regular_file(file: &File, path: &WorkspacePath) -> Result<std::fs::Metadata, ProviderError> {
    let metadata = file.metadata().map_err(|e| map_error("path", path, e))?;
    if metadata.is_dir() {
        return Err(map_error("path", path, io::Error::from_raw_os_error(libc::EISDIR)));
    }
    if !metadata.is_file() {
        return Err(ProviderError::InvalidArgument {
            field: "path",
            message: format!("{path:?} is not a regular file (a FIFO, socket or device)"),
        });
    }
    Ok(metadata)
}

/// Checks that `cwd` is a directory inside the workspace.
pub fn check_directory(workspace: &Path, cwd: &WorkspacePath) -> Result<(), ProviderError> {
    let root = open_root(workspace)?;
    open_beneath(&root, cwd.as_path(), libc::O_DIRECTORY | libc::O_PATH, 0).map(drop).map_err(|e| {
        match map_error("cwd", cwd, e) {
            ProviderError::NotFound(_) => ProviderError::InvalidArgument {
                field: "cwd",
                message: format!("{cwd:?} is not a directory in the workspace"),
            },
            other => other,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> WorkspacePath {
        WorkspacePath::parse(raw).unwrap()
    }

    #[test]
    fn writes_and_reads_with_parents_created() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), &path("a/b/c.txt"), b"hello", None).unwrap();
        assert_eq!(read_file(dir.path(), &path("a/b/c.txt"), 100).unwrap(), Bytes::from_static(b"hello"));
        assert!(matches!(read_file(dir.path(), &path("a/b/c.txt"), 4), Err(ProviderError::TooLarge(_))));
        assert!(matches!(read_file(dir.path(), &path("nope"), 4), Err(ProviderError::NotFound(_))));
    }

    #[test]
    fn a_fifo_is_refused_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for result in
            [read_file(dir.path(), &path("pipe"), 10).map(drop), write_file(dir.path(), &path("pipe"), b"x", None)]
        {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn symlinks_out_of_the_workspace_are_refused_for_read_write_and_parents() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "top secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("abs-link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dir-link")).unwrap();
        std::os::unix::fs::symlink("../../..", dir.path().join("rel-link")).unwrap();
        for bad in ["abs-link", "dir-link/secret", "rel-link/etc/passwd"] {
            let err = read_file(dir.path(), &path(bad), 1 << 20).unwrap_err();
            assert!(err.to_string().contains("outside the sandbox workspace"), "{bad}: {err}");
        }
        for bad in ["abs-link", "dir-link/new", "dir-link/deeper/new"] {
            let err = write_file(dir.path(), &path(bad), b"x", None).unwrap_err();
            assert!(err.to_string().contains("outside the sandbox workspace"), "{bad}: {err}");
        }
        assert_eq!(std::fs::read_to_string(outside.path().join("secret")).unwrap(), "top secret");
        assert!(!outside.path().join("new").exists() && !outside.path().join("deeper").exists());
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink("a", dir.path().join("inside-link")).unwrap();
        write_file(dir.path(), &path("a/f"), b"ok", None).unwrap();
        assert_eq!(read_file(dir.path(), &path("inside-link/f"), 10).unwrap(), Bytes::from_static(b"ok"));
    }
}
