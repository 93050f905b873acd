//! One service per data directory. Two brokers on one directory would append to the same spools
//! and race on template versions and single-use approvals; two conductors would both re-adopt the
//! same workers. The lock is an exclusive `flock` on `<dir>/.lock`, held for the life of the
//! returned guard and released by the kernel however the process ends (a crash included).
//!
//! A rolling deploy that mounts the same volume starts the new process while the old one still
//! drains: acquiring waits for the previous holder, up to a bound, then fails naming who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// How often a waiting start tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Holds the data directory's lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes `<dir>/.lock`, waiting up to `wait` for another process to let go of it.
    pub async fn acquire(dir: &Path, wait: Duration) -> anyhow::Result<DirLock> {
        let path = dir.join(".lock");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Owner only: another user (a `local` sandbox's) able to open it could flock it and
            // hold every later start off.
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the data dir lock {}", path.display()))?;
        // A lock file left by an older version may be readable by others.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("cannot restrict the data dir lock {}", path.display()))?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut logged = false;
        loop {
            match try_lock(&file) {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => return Err(error).with_context(|| format!("cannot lock {}", path.display())),
            }
            let holder = read_holder(&mut file);
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the data dir {} is in use by another process ({holder}); one service per data dir — \
                     stop it or give this one another data dir",
                    dir.display()
                );
            }
            if !logged {
                tracing::info!(dir = %dir.display(), %holder, ?wait, "waiting for another process to release the data dir");
                logged = true;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
        // Who holds it, for the next one's message.
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}", std::process::id())?;
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `Ok(false)` when another open file holds the lock.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(error) }
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file.rewind().and_then(|()| file.take(64).read_to_string(&mut text));
    match read {
        Ok(_) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => "holder unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_then_gets_a_clear_error_or_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), Duration::ZERO).await.unwrap();
        let error = DirLock::acquire(dir.path(), Duration::from_millis(250)).await.unwrap_err().to_string();
        assert!(
            error.contains("in use by another process") && error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
        // Released by dropping (or by the process ending): a waiting start proceeds.
        let waiting = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { DirLock::acquire(&dir, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished(), "still waiting while the first holds it");
        drop(first);
        waiting.await.unwrap().expect("taken once released");
    }
}
