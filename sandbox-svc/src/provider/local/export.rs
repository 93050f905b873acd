//! Exporting a `local` workspace for the broker to diff: every entry, symlinks reported as
//! symlinks, nothing followed.
//!
//! The sandbox may still be changing its files, so the walk never resolves a path twice: each
//! directory is opened relative to its parent's descriptor, one component at a time, with
//! `O_NOFOLLOW`, and files are read through the descriptor that was checked.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::provider::{ExportLimits, ProviderError, WorkspaceEntry};

pub fn export(workspace: &Path, limits: ExportLimits) -> Result<Vec<(String, WorkspaceEntry)>, ProviderError> {
    let root = File::open(workspace).map_err(|e| ProviderError::Unavailable(format!("workspace unavailable: {e}")))?;
    let mut walk = Walk { limits, entries: Vec::new(), total: 0 };
    walk.dir(&OwnedFd::from(root), "")?;
    walk.entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(walk.entries)
}

struct Walk {
    limits: ExportLimits,
    entries: Vec<(String, WorkspaceEntry)>,
    total: u64,
}

impl Walk {
    fn dir(&mut self, dir: &OwnedFd, prefix: &str) -> Result<(), ProviderError> {
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(unavailable)?;
        for entry in listing {
            let name = entry.map_err(unavailable)?.file_name();
            let path = format!("{prefix}{}", name.to_string_lossy());
            if prefix.is_empty() && self.limits.skip_top_level.iter().any(|skip| OsStr::new(skip) == name) {
                continue;
            }
            if self.entries.len() >= self.limits.max_entries {
                return Err(ProviderError::TooLarge(format!(
                    "the workspace holds more than {} entries",
                    self.limits.max_entries
                )));
            }
            let c_name = CString::new(name.as_bytes()).map_err(|_| unavailable(io::ErrorKind::InvalidData.into()))?;
            let stat = fstatat(dir, &c_name)?;
            match stat.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    let child = openat(dir, &c_name, libc::O_DIRECTORY | libc::O_RDONLY)?;
                    self.dir(&child, &format!("{path}/"))?;
                }
                libc::S_IFREG => {
                    let entry = self.file(dir, &c_name, &path)?;
                    self.entries.push((path, entry));
                }
                libc::S_IFLNK => {
                    let target = readlinkat(dir, &c_name)?;
                    self.entries.push((path, WorkspaceEntry::Symlink { target }));
                }
                _ => self.entries.push((path, WorkspaceEntry::Special)),
            }
        }
        Ok(())
    }

    fn file(&mut self, dir: &OwnedFd, name: &CString, path: &str) -> Result<WorkspaceEntry, ProviderError> {
        // O_NONBLOCK: a FIFO swapped in after the stat must not hang the broker.
        let file = File::from(openat(dir, name, libc::O_RDONLY | libc::O_NONBLOCK)?);
        let metadata = file.metadata().map_err(unavailable)?;
        if !metadata.is_file() {
            return Ok(WorkspaceEntry::Special);
        }
        if metadata.len() > self.limits.max_file_bytes {
            return Ok(WorkspaceEntry::TooLarge { size: metadata.len() });
        }
        let mut content = Vec::with_capacity(metadata.len() as usize);
        file.take(self.limits.max_file_bytes + 1).read_to_end(&mut content).map_err(unavailable)?;
        if content.len() as u64 > self.limits.max_file_bytes {
            return Ok(WorkspaceEntry::TooLarge { size: content.len() as u64 });
        }
        self.total += content.len() as u64;
        if self.total > self.limits.max_total_bytes {
            return Err(ProviderError::TooLarge(format!(
                "the workspace's files exceed {} bytes in total (at {path})",
                self.limits.max_total_bytes
            )));
        }
        Ok(WorkspaceEntry::File { content, executable: metadata.permissions().mode() & 0o111 != 0 })
    }
}

fn openat(dir: &OwnedFd, name: &CString, flags: i32) -> Result<OwnedFd, ProviderError> {
    // SAFETY: a live dirfd and a NUL-terminated single path component.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(unavailable(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat(dir: &OwnedFd, name: &CString) -> Result<libc::stat, ProviderError> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dirfd, NUL-terminated name, and a buffer of the right size.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), stat.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(unavailable(io::Error::last_os_error()));
    }
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { stat.assume_init() })
}

fn readlinkat(dir: &OwnedFd, name: &CString) -> Result<String, ProviderError> {
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid dirfd, NUL-terminated name, and a buffer of the given length.
    let len = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if len < 0 {
        return Err(unavailable(io::Error::last_os_error()));
    }
    buffer.truncate(len as usize);
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

fn unavailable(error: io::Error) -> ProviderError {
    ProviderError::Unavailable(format!("cannot export the workspace: {error}"))
}
