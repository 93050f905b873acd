//! The template repository's files by commit. A commit's files never change, yet one change
//! reads them many times: the bootstrap and each template's build at one head, every
//! infrastructure sandbox's checkout of the active version, and each proposal's base. On GitHub
//! every read is a tree listing plus a request per file, counted against the installation's
//! rate limit, so each commit is read from the code host once while it stays in this cache.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use codehost::{CodeHost, CodeHostError, TreeFile, TreeLimits};

/// Commits kept at most: the active versions' and the few a change in flight touches.
const MAX_TREES: usize = 8;
/// File bytes kept at most across those commits; a bigger tree is read each time instead.
const MAX_BYTES: u64 = 64 << 20;

#[derive(Default)]
pub struct TreeCache {
    /// Least recently used first.
    entries: Mutex<VecDeque<Entry>>,
}

struct Entry {
    sha: String,
    files: Arc<Vec<TreeFile>>,
    bytes: u64,
}

impl TreeCache {
    /// Every file of commit `sha`, from the cache or (once) from `host`. Only full commit ids are
    /// kept: a short one could be ambiguous later, so it is always asked for.
    pub async fn files(&self, host: &dyn CodeHost, sha: &str) -> Result<Arc<Vec<TreeFile>>, CodeHostError> {
        let cacheable = sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit());
        if cacheable && let Some(files) = self.hit(sha) {
            return Ok(files);
        }
        let files = Arc::new(host.read_tree(sha, TreeLimits::default()).await?);
        if cacheable {
            self.keep(sha, files.clone());
        }
        Ok(files)
    }

    fn hit(&self, sha: &str) -> Option<Arc<Vec<TreeFile>>> {
        let mut entries = self.entries.lock().expect("lock poisoned");
        let index = entries.iter().position(|entry| entry.sha.eq_ignore_ascii_case(sha))?;
        let entry = entries.remove(index).expect("index found");
        let files = entry.files.clone();
        entries.push_back(entry);
        Some(files)
    }

    fn keep(&self, sha: &str, files: Arc<Vec<TreeFile>>) {
        let bytes: u64 = files.iter().map(|file| file.content.len() as u64).sum();
        if bytes > MAX_BYTES {
            return;
        }
        let mut entries = self.entries.lock().expect("lock poisoned");
        // Two readers may have missed at once; one copy is enough.
        entries.retain(|entry| !entry.sha.eq_ignore_ascii_case(sha));
        entries.push_back(Entry { sha: sha.to_ascii_lowercase(), files, bytes });
        let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
        while entries.len() > MAX_TREES || total > MAX_BYTES {
            let dropped = entries.pop_front().expect("over a bound means not empty");
            total -= dropped.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use codehost::{CommitIdentity, FileChange, NewPullRequest, PrState, PullRequest};

    use super::*;

    /// Answers every tree read with one file of `file_bytes` bytes named after the commit, and
    /// counts the reads; nothing else is asked of it.
    struct CountingHost {
        reads: AtomicUsize,
        file_bytes: usize,
    }

    fn unused<T>() -> codehost::Result<T> {
        Err(CodeHostError::Unavailable("not used by the cache".into()))
    }

    #[async_trait]
    impl CodeHost for CountingHost {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn repository(&self) -> String {
            "t".into()
        }
        fn default_branch(&self) -> String {
            "main".into()
        }
        async fn branch_head(&self, _: &str) -> codehost::Result<String> {
            unused()
        }
        async fn read_tree(&self, sha: &str, _: TreeLimits) -> codehost::Result<Vec<TreeFile>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(vec![TreeFile { path: sha.into(), content: vec![b'x'; self.file_bytes], executable: false }])
        }
        async fn open_pull_request(&self, _: NewPullRequest) -> codehost::Result<PullRequest> {
            unused()
        }
        async fn push_to_pull_request(
            &self,
            _: u64,
            _: &str,
            _: Vec<FileChange>,
            _: &str,
            _: &CommitIdentity,
        ) -> codehost::Result<PullRequest> {
            unused()
        }
        async fn get_pull_request(&self, _: u64) -> codehost::Result<PullRequest> {
            unused()
        }
        async fn list_pull_requests(&self, _: Option<PrState>) -> codehost::Result<Vec<PullRequest>> {
            unused()
        }
        async fn merge_pull_request(&self, _: u64, _: &str, _: &str) -> codehost::Result<String> {
            unused()
        }
        async fn close_pull_request(&self, _: u64) -> codehost::Result<PullRequest> {
            unused()
        }
        async fn revert_merge(&self, _: &str, _: &str, _: &str) -> codehost::Result<String> {
            unused()
        }
        async fn comment(&self, _: u64, _: &str) -> codehost::Result<()> {
            unused()
        }
    }

    fn sha(n: usize) -> String {
        format!("{n:040x}")
    }

    #[tokio::test]
    async fn each_commit_is_read_once_within_the_bounds() {
        let host = CountingHost { reads: AtomicUsize::new(0), file_bytes: 10 };
        let cache = TreeCache::default();
        let first = cache.files(&host, &sha(1)).await.unwrap();
        let again = cache.files(&host, &sha(1).to_uppercase()).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "a hit, whatever the case of the id");
        assert_eq!(host.reads.load(Ordering::SeqCst), 1);
        // A short id is always asked for.
        cache.files(&host, "abc1234").await.unwrap();
        cache.files(&host, "abc1234").await.unwrap();
        assert_eq!(host.reads.load(Ordering::SeqCst), 3);
        // Least recently used goes first: touch 1, fill up, and 2 (not 1) was dropped.
        for n in 2..=MAX_TREES {
            cache.files(&host, &sha(n)).await.unwrap();
        }
        cache.files(&host, &sha(1)).await.unwrap();
        cache.files(&host, &sha(MAX_TREES + 1)).await.unwrap();
        let reads = host.reads.load(Ordering::SeqCst);
        cache.files(&host, &sha(1)).await.unwrap();
        assert_eq!(host.reads.load(Ordering::SeqCst), reads, "1 was kept");
        cache.files(&host, &sha(2)).await.unwrap();
        assert_eq!(host.reads.load(Ordering::SeqCst), reads + 1, "2 was dropped");
    }

    #[tokio::test]
    async fn a_tree_over_the_byte_bound_is_not_kept() {
        let host = CountingHost { reads: AtomicUsize::new(0), file_bytes: MAX_BYTES as usize + 1 };
        let cache = TreeCache::default();
        cache.files(&host, &sha(1)).await.unwrap();
        cache.files(&host, &sha(1)).await.unwrap();
        assert_eq!(host.reads.load(Ordering::SeqCst), 2);
        assert!(cache.entries.lock().unwrap().is_empty());
    }
}
