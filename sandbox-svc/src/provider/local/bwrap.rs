//! The bubblewrap command line for one sandboxed process.
//!
//! The sandbox's root is a fresh tmpfs holding read-only binds of an allow-list of host
//! directories (`/usr`, `/etc`, … — never `/run`, `/home` or other places with sockets and
//! secrets), so `/workspace` can be created on it. Hidden paths under those (the broker's data
//! dir, secret files, configured private paths) appear empty. The process runs in its own user,
//! pid, ipc and uts namespaces (and network namespace unless the template allows network), as
//! uid 1000 inside with every capability dropped, its environment cleared but for what was
//! declared.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the workspace appears inside the sandbox.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// The uid/gid processes see themselves as inside the sandbox.
const SANDBOX_UID: &str = "1000";
/// Used when neither the template nor the request sets PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host paths bound read-only into every sandbox unless configured otherwise.
pub const DEFAULT_ROOT_PATHS: &str = "/usr,/bin,/sbin,/lib,/lib32,/lib64,/libx32,/etc,/sys";

/// Host layout read once at startup: how to rebuild `/` inside a sandbox.
#[derive(Debug, Clone)]
pub struct RootLayout {
    /// `(host path, symlink target)`; `None` target = a directory to bind read-only.
    entries: Vec<(PathBuf, Option<PathBuf>)>,
    /// `(path, is_dir)`: directories get an empty tmpfs, files an empty `/dev/null` bind.
    hidden: Vec<(PathBuf, bool)>,
    /// Where `/etc/resolv.conf` really lives when that is outside the bound roots (systemd-resolved
    /// keeps it under /run): bound for sandboxes with network, so they can resolve names.
    resolv_conf: Option<PathBuf>,
}

impl RootLayout {
    /// Reads the host's `root_paths` (missing ones are skipped). `hidden` paths that exist under
    /// one of them are covered; others are invisible anyway.
    pub fn from_host(root_paths: &[PathBuf], hidden: &[PathBuf]) -> std::io::Result<RootLayout> {
        let mut entries = Vec::new();
        for path in root_paths {
            let Ok(metadata) = std::fs::symlink_metadata(path) else { continue };
            if metadata.file_type().is_symlink() {
                entries.push((path.clone(), Some(std::fs::read_link(path)?)));
            } else if metadata.is_dir() {
                entries.push((path.clone(), None));
            }
        }
        entries.sort();
        let visible = |path: &Path| entries.iter().any(|(root, target)| target.is_none() && path.starts_with(root));
        let hidden = hidden
            .iter()
            .filter(|path| visible(path))
            .filter_map(|path| std::fs::metadata(path).ok().map(|m| (path.clone(), m.is_dir())))
            .collect();
        let resolv_conf = std::fs::canonicalize("/etc/resolv.conf").ok().filter(|target| !visible(target));
        Ok(RootLayout { entries, hidden, resolv_conf })
    }
}

/// Everything that varies per process.
pub struct BwrapInvocation<'a> {
    pub layout: &'a RootLayout,
    pub workspace: &'a Path,
    pub cwd: Option<&'a Path>,
    pub network: bool,
    pub env: &'a BTreeMap<String, String>,
    pub argv: &'a [String],
}

impl BwrapInvocation<'_> {
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::with_capacity(64 + 3 * self.env.len());
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            args.extend(items.iter().map(|item| item.as_ref().to_owned()));
        };
        push(&[&"--die-with-parent", &"--unshare-user", &"--unshare-pid", &"--unshare-ipc", &"--unshare-uts"]);
        if !self.network {
            push(&[&"--unshare-net"]);
        }
        // No --new-session: the broker starts bubblewrap in a new session of its own (no
        // controlling terminal, so no TIOCSTI), and signals to that session reach the program.
        push(&[&"--uid", &SANDBOX_UID, &"--gid", &SANDBOX_UID, &"--cap-drop", &"ALL", &"--hostname", &"sandbox"]);
        for (path, target) in &self.layout.entries {
            match target {
                Some(target) => push(&[&"--symlink", target, path]),
                None => push(&[&"--ro-bind", path, path]),
            }
        }
        for (hidden, is_dir) in &self.layout.hidden {
            if *is_dir {
                push(&[&"--tmpfs", hidden]);
            } else if hidden.exists() {
                // Checked per start: a file that has since gone (a rotated secret) would make
                // bubblewrap fail to create the mount point under the read-only bind.
                push(&[&"--ro-bind", &"/dev/null", hidden]);
            }
        }
        if self.network
            && let Some(resolv_conf) = &self.layout.resolv_conf
        {
            push(&[&"--ro-bind-try", resolv_conf, resolv_conf]);
        }
        push(&[&"--proc", &"/proc", &"--dev", &"/dev", &"--tmpfs", &"/tmp"]);
        push(&[&"--bind", &self.workspace, &WORKSPACE_MOUNT]);
        let cwd = match self.cwd {
            Some(cwd) => Path::new(WORKSPACE_MOUNT).join(cwd),
            None => PathBuf::from(WORKSPACE_MOUNT),
        };
        push(&[&"--chdir", &cwd, &"--clearenv"]);
        for (key, value) in self.env {
            push(&[&"--setenv", key, value]);
        }
        push(&[&"--"]);
        for arg in self.argv {
            push(&[arg]);
        }
        args
    }
}

/// The environment a process gets: defaults, then sandbox env, then the request's env.
pub fn process_env(
    sandbox_env: &BTreeMap<String, String>,
    request_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env =
        BTreeMap::from([("PATH".to_owned(), DEFAULT_PATH.to_owned()), ("HOME".to_owned(), WORKSPACE_MOUNT.to_owned())]);
    env.extend(sandbox_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_flags_and_declared_env_only() {
        let layout = RootLayout {
            entries: vec![("/usr".into(), None), ("/bin".into(), Some("usr/bin".into()))],
            hidden: vec![("/usr/private".into(), true), ("/usr/bin".into(), false)],
            resolv_conf: Some("/run/systemd/resolve/stub-resolv.conf".into()),
        };
        let env = process_env(&BTreeMap::from([("A".into(), "1".into())]), &BTreeMap::from([("A".into(), "2".into())]));
        let invocation = BwrapInvocation {
            layout: &layout,
            workspace: Path::new("/data/ws/sbx"),
            cwd: Some(Path::new("src")),
            network: false,
            env: &env,
            argv: &["echo".into(), "hi".into()],
        };
        let args: Vec<String> = invocation.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        for expected in [
            "--unshare-user --unshare-pid --unshare-ipc --unshare-uts --unshare-net",
            "--cap-drop ALL",
            "--ro-bind /usr /usr",
            "--symlink usr/bin /bin",
            "--tmpfs /usr/private",
            "--ro-bind /dev/null /usr/bin",
            "--tmpfs /tmp",
            "--bind /data/ws/sbx /workspace",
            "--chdir /workspace/src --clearenv",
            "--setenv A 2",
            "-- echo hi",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in {joined}");
        }
        assert!(!joined.contains("resolv.conf"), "no DNS config without network");
        let with_network = BwrapInvocation { network: true, ..invocation };
        let joined = with_network.args().into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>().join(" ");
        assert!(!joined.contains("--unshare-net"));
        assert!(
            joined
                .contains("--ro-bind-try /run/systemd/resolve/stub-resolv.conf /run/systemd/resolve/stub-resolv.conf")
        );
    }

    #[test]
    fn only_allowed_roots_are_bound_and_hidden_paths_outside_them_are_ignored() {
        let host = tempfile::tempdir().unwrap();
        let allowed = host.path().join("usr");
        std::fs::create_dir_all(allowed.join("private")).unwrap();
        std::fs::write(allowed.join("secret.env"), "x").unwrap();
        std::fs::create_dir_all(host.path().join("run")).unwrap();
        let layout = RootLayout::from_host(
            &[allowed.clone(), host.path().join("missing")],
            &[allowed.join("private"), allowed.join("secret.env"), host.path().join("run"), allowed.join("gone")],
        )
        .unwrap();
        assert_eq!(layout.entries, vec![(allowed.clone(), None)]);
        assert_eq!(layout.hidden, vec![(allowed.join("private"), true), (allowed.join("secret.env"), false)]);
    }
}
