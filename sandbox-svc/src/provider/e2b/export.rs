//! Exporting an E2B sandbox's workspace for a proposal: one `find` run inside the sandbox lists
//! every entry with its type, size, mode and symlink target (nothing followed), then regular
//! files within the limits are read through envd's `/files`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::provider::{ExportLimits, ProcessSpec, ProviderError, ProviderEvent, WorkspaceEntry};

use super::sandbox::E2bSandbox;

/// Longest the listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of listing accepted: far more than `ExportLimits::max_entries` paths need.
const MAX_LISTING_BYTES: usize = 8 << 20;

impl E2bSandbox {
    pub(super) async fn export(&self, limits: ExportLimits) -> Result<Vec<(String, WorkspaceEntry)>, ProviderError> {
        let listing = self.list_entries(&limits).await?;
        let mut entries = Vec::new();
        let mut total = 0u64;
        for (path, (kind, size, mode, target)) in listing {
            if entries.len() >= limits.max_entries {
                return Err(ProviderError::TooLarge(format!(
                    "the workspace holds more than {} entries",
                    limits.max_entries
                )));
            }
            let entry = match kind {
                'd' => continue,
                'l' => WorkspaceEntry::Symlink { target },
                'f' if size > limits.max_file_bytes => WorkspaceEntry::TooLarge { size },
                'f' => {
                    let workspace_path = crate::workspace_path::WorkspacePath::parse(&path)
                        .map_err(|e| ProviderError::FailedPrecondition(format!("{path}: {e}")))?;
                    let content = self.read_file_for_export(&workspace_path, limits.max_file_bytes).await?;
                    total += content.len() as u64;
                    if total > limits.max_total_bytes {
                        return Err(ProviderError::TooLarge(format!(
                            "the workspace's files exceed {} bytes in total (at {path})",
                            limits.max_total_bytes
                        )));
                    }
                    WorkspaceEntry::File { content: content.to_vec(), executable: mode & 0o111 != 0 }
                }
                _ => WorkspaceEntry::Special,
            };
            entries.push((path, entry));
        }
        Ok(entries)
    }

    /// path → (type letter, size, mode, symlink target), from `find -printf` in the workspace.
    async fn list_entries(
        &self,
        limits: &ExportLimits,
    ) -> Result<BTreeMap<String, (char, u64, u32, String)>, ProviderError> {
        let script = listing_script(limits.skip_top_level);
        let spec = ProcessSpec {
            argv: vec!["sh".into(), "-c".into(), script],
            cwd: None,
            env: Default::default(),
            stdin: false,
        };
        let mut started = self.start_process_for_export(spec).await?;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let exit = tokio::time::timeout(LIST_TIMEOUT, async {
            while let Some(event) = started.events.recv().await {
                match event {
                    ProviderEvent::Stdout(data) => out.extend_from_slice(&data),
                    ProviderEvent::Stderr(data) => err.extend_from_slice(&data[..data.len().min(4096)]),
                    ProviderEvent::Gap(reason) => return Err(format!("the listing's output was cut: {reason}")),
                    ProviderEvent::Exited { exit_code, .. } => return Ok(exit_code),
                }
                if out.len() > MAX_LISTING_BYTES {
                    return Err(format!("the listing is larger than {MAX_LISTING_BYTES} bytes"));
                }
            }
            Err("the listing process was lost".to_owned())
        })
        .await
        .map_err(|_| {
            ProviderError::Unavailable(format!("listing the workspace took over {}s", LIST_TIMEOUT.as_secs()))
        })?
        .map_err(ProviderError::Unavailable)?;
        if exit != 0 {
            return Err(ProviderError::Unavailable(format!(
                "listing the workspace failed (exit {exit}): {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        let mut entries = BTreeMap::new();
        for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let record = String::from_utf8(record.to_vec())
                .map_err(|_| ProviderError::FailedPrecondition("a workspace path is not UTF-8".into()))?;
            let fields: Vec<&str> = record.splitn(5, '\t').collect();
            let [kind, size, mode, path, target] = fields[..] else {
                return Err(ProviderError::FailedPrecondition(format!("cannot read the listing entry {record:?}")));
            };
            if path.contains('\t') {
                return Err(ProviderError::FailedPrecondition(format!(
                    "{path:?}: tabs in file names are not supported"
                )));
            }
            let kind = kind.chars().next().unwrap_or('?');
            let size = size.parse().unwrap_or(0);
            let mode = u32::from_str_radix(mode, 8).unwrap_or(0);
            entries.insert(path.to_owned(), (kind, size, mode, target.to_owned()));
        }
        Ok(entries)
    }
}

/// `find` listing every entry below the workspace (not descending into `skip`): type, size,
/// octal mode, relative path and symlink target, tab-separated, NUL-terminated.
fn listing_script(skip: &[&str]) -> String {
    let prunes: String = skip.iter().map(|name| format!("-path './{name}' -prune -o ")).collect();
    format!("find . -mindepth 1 {prunes}-printf '%y\\t%s\\t%m\\t%P\\t%l\\0'")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listing_skips_what_it_is_told_and_follows_nothing() {
        let script = super::listing_script(&[".git"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        std::fs::write(dir.path().join(".git/config"), "x").unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x:1\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(&script).current_dir(dir.path()).output().unwrap();
        let mut records: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|r| !r.is_empty())
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        records.sort();
        assert_eq!(records.len(), 2, "{records:?}");
        assert!(records[0].starts_with("f\t9\t") && records[0].ends_with("\tDockerfile\t"), "{records:?}");
        assert!(records[1].starts_with("l\t") && records[1].ends_with("\tlink\t/etc/passwd"), "{records:?}");
    }
}
