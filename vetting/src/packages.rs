//! Package installs in shell commands: which registry (apt, pip, npm), which names, pinned or not.
//! `installs` only reads commands; `crate::rules` turns what it finds into findings.

use crate::known::Ecosystem;
use crate::shell::{Word, base_name, program_words};

/// One thing a command asks a package manager to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install<'w> {
    pub ecosystem: Ecosystem,
    /// The word the finding points at.
    pub word: &'w Word,
    pub spec: Spec,
    /// Runs the package (`npx x`) rather than installing it.
    pub exec: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A registry package; `name` as written, version removed.
    Name { name: String, pinned: bool },
    /// `pip install -r file`: the names are in a file.
    RequirementsFile(String),
    /// A URL, git repository or local path instead of a registry name.
    Location { target: String, host: Option<String>, local: bool },
    /// A package index or registry other than the default one.
    CustomIndex { target: String, host: Option<String> },
    /// The name comes from an expansion (`$PKGS`, `$(cat list)`) or is not a plain name.
    Unresolvable(String),
}

/// Everything `command` installs, in order.
pub fn installs(command: &[Word]) -> Vec<Install<'_>> {
    let words = program_words(command);
    let Some(first) = words.first() else { return Vec::new() };
    let rest = &words[1..];
    let program = base_name(&first.text);
    let mut out = Vec::new();
    match program {
        "apt-get" | "apt" | "aptitude" => {
            if let Some(args) = after_subcommands(rest, APT_VALUE_FLAGS, &[&["install"]]) {
                apt_args(args, &mut out);
            }
        }
        "pip" | "pip3" => {
            if let Some(args) = after_subcommands(rest, PIP_VALUE_FLAGS, &[&["install"]]) {
                pip_args(args, &mut out);
            }
        }
        _ if is_versioned(program, "pip") => {
            if let Some(args) = after_subcommands(rest, PIP_VALUE_FLAGS, &[&["install"]]) {
                pip_args(args, &mut out);
            }
        }
        "python" | "python3" => python_module_pip(rest, &mut out),
        _ if is_versioned(program, "python") => python_module_pip(rest, &mut out),
        "uv" => {
            if let Some(args) =
                after_subcommands(rest, PIP_VALUE_FLAGS, &[&["pip", "install"], &["add"], &["tool", "install"]])
            {
                pip_args(args, &mut out);
            }
        }
        "pipx" | "poetry" => {
            if let Some(args) = after_subcommands(rest, PIP_VALUE_FLAGS, &[&["install"], &["add"]]) {
                pip_args(args, &mut out);
            }
        }
        "npm" => {
            if let Some(args) = after_subcommands(rest, NPM_VALUE_FLAGS, NPM_INSTALL) {
                npm_args(args, false, &mut out);
            } else if let Some(args) = after_subcommands(rest, NPM_VALUE_FLAGS, &[&["exec"], &["x"]]) {
                npm_args(args, true, &mut out);
            }
        }
        "yarn" | "pnpm" | "bun" => {
            if let Some(args) =
                after_subcommands(rest, NPM_VALUE_FLAGS, &[&["add"], &["global", "add"], &["install"], &["i"]])
            {
                npm_args(args, false, &mut out);
            } else if let Some(args) = after_subcommands(rest, NPM_VALUE_FLAGS, &[&["dlx"], &["x"]]) {
                npm_args(args, true, &mut out);
            }
        }
        "npx" | "bunx" | "pnpx" => npm_args(rest, true, &mut out),
        _ => {}
    }
    out
}

/// The installs one `requirements.txt` line asks for (its words, as `pip install` would get them).
pub fn requirement_line(words: &[Word]) -> Vec<Install<'_>> {
    let mut out = Vec::new();
    pip_args(words, &mut out);
    out
}

/// `npm install` and its aliases (npm accepts these abbreviations and misspellings).
const NPM_INSTALL: &[&[&str]] = &[&["install"], &["i"], &["add"], &["in"], &["isntall"]];

const APT_VALUE_FLAGS: &[&str] = &[
    "-o",
    "--option",
    "-c",
    "--config-file",
    "-t",
    "--target-release",
    "--default-release",
    "-a",
    "--host-architecture",
];

const PIP_VALUE_FLAGS: &[&str] = &[
    "-c",
    "--constraint",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--src",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--progress-bar",
    "--cache-dir",
    "--log",
    "--timeout",
    "--retries",
    "--proxy",
    "--cert",
    "--client-cert",
    "--no-binary",
    "--only-binary",
    "--upgrade-strategy",
    "--global-option",
    "--install-option",
    "--config-settings",
    "-C",
    "--exists-action",
    "--report",
    "--root-user-action",
    "--keyring-provider",
    "--use-feature",
    "--use-deprecated",
    "--python",
    "-p",
    "--trusted-host",
    "--group",
    "--format",
    "--suffix",
    "--spec",
    "--pip-args",
];

const NPM_VALUE_FLAGS: &[&str] = &[
    "--prefix",
    "--cache",
    "--tag",
    "-w",
    "--workspace",
    "--omit",
    "--include",
    "--userconfig",
    "--loglevel",
    "--install-strategy",
    "--before",
    "--location",
    "--network-timeout",
    "--cache-folder",
    "--modules-folder",
    "--global-folder",
    "--cwd",
    "--mutex",
    "--filter",
    "-F",
    "--dir",
    "-C",
    "--store-dir",
    "--reporter",
    "-c",
    "--call",
    "--shell",
];

/// `pip3.11`, `python3.12`: the program name with a version suffix.
fn is_versioned(program: &str, stem: &str) -> bool {
    program.strip_prefix(stem).is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// `python3 -m pip install …`
fn python_module_pip<'w>(rest: &'w [Word], out: &mut Vec<Install<'w>>) {
    let Some(m) = rest.iter().position(|w| w.text == "-m") else { return };
    if !matches!(rest.get(m + 1).map(|w| w.text.as_str()), Some("pip" | "pip3")) {
        return;
    }
    if let Some(args) = after_subcommands(&rest[m + 2..], PIP_VALUE_FLAGS, &[&["install"]]) {
        pip_args(args, out);
    }
}

/// Skips options (and the values of `value_flags`) before the subcommand words; returns the words
/// after the first matching subcommand sequence.
fn after_subcommands<'w>(args: &'w [Word], value_flags: &[&str], subcommands: &[&[&str]]) -> Option<&'w [Word]> {
    let mut positional = Vec::new();
    let mut index = 0;
    while index < args.len() && positional.len() < 2 {
        let text = args[index].text.as_str();
        if text.starts_with('-') {
            if value_flags.contains(&text) {
                index += 1;
            }
        } else {
            positional.push(index);
            for sequence in subcommands {
                let matches = sequence.len() == positional.len()
                    && sequence.iter().zip(&positional).all(|(want, &at)| args[at].text == *want);
                if matches {
                    return Some(&args[index + 1..]);
                }
            }
            if !subcommands.iter().any(|s| s.len() > positional.len() && s[0] == args[positional[0]].text) {
                return None;
            }
        }
        index += 1;
    }
    None
}

/// Splits `--flag=value`; short flags and `--flag value` return `None` for the value.
fn split_flag(text: &str) -> (&str, Option<&str>) {
    match text.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
        _ => (text, None),
    }
}

fn apt_args<'w>(args: &'w [Word], out: &mut Vec<Install<'w>>) {
    let mut index = 0;
    while index < args.len() {
        let word = &args[index];
        let (flag, inline) = split_flag(&word.text);
        if flag.starts_with('-') {
            if APT_VALUE_FLAGS.contains(&flag) && inline.is_none() {
                index += 1;
            }
        } else {
            out.push(Install { ecosystem: Ecosystem::Debian, word, spec: apt_spec(&word.text), exec: false });
        }
        index += 1;
    }
}

fn pip_args<'w>(args: &'w [Word], out: &mut Vec<Install<'w>>) {
    let mut index = 0;
    while index < args.len() {
        let word = &args[index];
        let text = word.text.as_str();
        if text == "--" {
            index += 1;
            continue;
        }
        if !text.starts_with('-') {
            out.push(Install { ecosystem: Ecosystem::Pypi, word, spec: pip_spec(text), exec: false });
            index += 1;
            continue;
        }
        let (flag, inline) = split_flag(text);
        // `-rrequirements.txt` is the same as `-r requirements.txt`.
        let (flag, inline) = match flag {
            _ if inline.is_none()
                && !flag.starts_with("--")
                && flag.len() > 2
                && matches!(&flag[..2], "-r" | "-e" | "-i") =>
            {
                (&flag[..2], Some(&flag[2..]))
            }
            _ => (flag, inline),
        };
        let takes_value = matches!(
            flag,
            "-r" | "--requirement"
                | "-e"
                | "--editable"
                | "-i"
                | "--index-url"
                | "--extra-index-url"
                | "-f"
                | "--find-links"
                | "--index"
                | "--default-index"
        ) || PIP_VALUE_FLAGS.contains(&flag);
        let (value, value_word) = match inline {
            Some(value) => (Some(value.to_string()), word),
            None if takes_value => {
                index += 1;
                (args.get(index).map(|w| w.text.clone()), args.get(index).unwrap_or(word))
            }
            None => (None, word),
        };
        if let Some(value) = value {
            let spec = match flag {
                "-r" | "--requirement" => Some(Spec::RequirementsFile(value)),
                "-e" | "--editable" => Some(location(&value)),
                "-i" | "--index-url" | "--extra-index-url" | "-f" | "--find-links" | "--index" | "--default-index" => {
                    Some(Spec::CustomIndex { host: url_host(&value), target: value })
                }
                _ => None,
            };
            if let Some(spec) = spec {
                out.push(Install { ecosystem: Ecosystem::Pypi, word: value_word, spec, exec: false });
            }
        }
        index += 1;
    }
}

fn npm_args<'w>(args: &'w [Word], exec: bool, out: &mut Vec<Install<'w>>) {
    let mut index = 0;
    while index < args.len() {
        let word = &args[index];
        let text = word.text.as_str();
        if text == "--" {
            if exec {
                // `npx -- pkg args`: the package follows.
                if let Some(next) = args.get(index + 1) {
                    out.push(Install { ecosystem: Ecosystem::Npm, word: next, spec: npm_spec(&next.text), exec });
                }
                return;
            }
            index += 1;
            continue;
        }
        if !text.starts_with('-') {
            out.push(Install { ecosystem: Ecosystem::Npm, word, spec: npm_spec(text), exec });
            if exec {
                // Everything after the package are its own arguments (`npx playwright install chromium`).
                return;
            }
            index += 1;
            continue;
        }
        let (flag, inline) = split_flag(text);
        let registry = flag == "--registry";
        let package = exec && matches!(flag, "-p" | "--package");
        let (value, value_word) = match inline {
            Some(value) => (Some(value.to_string()), word),
            None if registry || package || NPM_VALUE_FLAGS.contains(&flag) => {
                index += 1;
                (args.get(index).map(|w| w.text.clone()), args.get(index).unwrap_or(word))
            }
            None => (None, word),
        };
        if let Some(value) = value {
            if registry {
                let spec = Spec::CustomIndex { host: url_host(&value), target: value };
                out.push(Install { ecosystem: Ecosystem::Npm, word: value_word, spec, exec: false });
            } else if package {
                out.push(Install { ecosystem: Ecosystem::Npm, word: value_word, spec: npm_spec(&value), exec });
            }
        }
        index += 1;
    }
}

/// npm: `name`, `name@1.2.3`, `@scope/name@^1`, `alias@npm:real@1`, git/URL/path specs, `user/repo`.
pub fn npm_spec(text: &str) -> Spec {
    if text.starts_with('$') {
        return Spec::Unresolvable(text.to_string());
    }
    if is_location(text) || text.starts_with("github:") || text.starts_with("gitlab:") || text.starts_with("bitbucket:")
    {
        return location(text);
    }
    let split_at = match text.strip_prefix('@') {
        Some(scoped) => scoped.find('@').map(|i| i + 1),
        None => text.find('@'),
    };
    let (name, version) = match split_at {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    if let Some(aliased) = version.and_then(|v| v.strip_prefix("npm:")) {
        return npm_spec(aliased);
    }
    if !name.starts_with('@') && name.contains('/') {
        // `user/repo` is GitHub shorthand: npm fetches the repository.
        return Spec::Location { target: text.to_string(), host: Some("github.com".to_string()), local: false };
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~@/".contains(&b)) {
        return Spec::Unresolvable(text.to_string());
    }
    let pinned = version.is_some_and(|v| v.contains('$') || is_exact_version(v.trim_start_matches(['=', 'v'])));
    Spec::Name { name: name.to_string(), pinned }
}

/// pip: `name`, `name==1.2`, `name[extra]>=1`, `Name_With.Dots`, URLs and paths.
pub fn pip_spec(text: &str) -> Spec {
    if is_location(text) || text.ends_with(".whl") || text.ends_with(".zip") {
        return location(text);
    }
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))).unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    if name.is_empty() || rest.starts_with('$') {
        return Spec::Unresolvable(text.to_string());
    }
    let rest = match rest.strip_prefix('[') {
        Some(extras) => extras.split_once(']').map_or("", |(_, after)| after),
        None => rest,
    };
    let rest = rest.split(';').next().unwrap_or("").trim();
    if rest.starts_with('@') {
        return location(rest.trim_start_matches('@').trim());
    }
    let pinned = (rest.starts_with("==") && !rest.contains('*') && !rest.contains(',')) || rest.starts_with("===");
    Spec::Name { name: name.to_string(), pinned }
}

/// apt: `name`, `name=1.2-3`, `name/jammy-backports`, `name:amd64`, local `.deb` files.
pub fn apt_spec(text: &str) -> Spec {
    if text.ends_with(".deb") || text.starts_with(['.', '/', '~']) {
        return Spec::Location { target: text.to_string(), host: None, local: true };
    }
    let end = text.find(['=', ':', '/']).unwrap_or(text.len());
    let name = &text[..end];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b)) {
        return Spec::Unresolvable(text.to_string());
    }
    Spec::Name { name: name.to_string(), pinned: text[end..].starts_with('=') }
}

fn is_location(text: &str) -> bool {
    text.contains("://")
        || text.starts_with("git+")
        || text.starts_with("git@")
        || text.starts_with("file:")
        || text.starts_with(['.', '/', '~'])
        || text.ends_with(".tgz")
        || text.ends_with(".tar.gz")
}

fn location(text: &str) -> Spec {
    let host = url_host(text);
    let local = host.is_none() && !text.contains("://") && !text.starts_with("git@");
    Spec::Location { target: text.to_string(), host, local }
}

/// An exact npm version: `1.2.3`, `1.2.3-rc.1`. (`1.2` is a range in npm: any `1.2.x`.)
fn is_exact_version(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The host of a URL (`https://user@Host:443/x` → `host`), or of `git@host:path`. `None` when there
/// is none or it comes from a variable.
pub fn url_host(text: &str) -> Option<String> {
    let after = match text.split_once("://") {
        Some((_, after)) => after,
        None => text.strip_prefix("git@")?,
    };
    let authority = after.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = host_port.split(':').next().unwrap_or("");
    if host.is_empty() || host.contains('$') || host.contains('{') {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::pipelines;

    fn specs(command: &str) -> Vec<(Ecosystem, Spec, bool)> {
        let pipelines = pipelines(command);
        pipelines
            .iter()
            .flatten()
            .flat_map(|c| installs(c).into_iter().map(|i| (i.ecosystem, i.spec, i.exec)).collect::<Vec<_>>())
            .collect()
    }

    fn name(name: &str, pinned: bool) -> Spec {
        Spec::Name { name: name.into(), pinned }
    }

    #[test]
    fn apt_names_skip_flags_and_strip_versions() {
        let got = specs(
            "apt-get -q install -y --no-install-recommends -o Dpkg::Options::=--force-confnew curl=7.81.0-1 jq:amd64 git/jammy-backports",
        );
        let want = vec![
            (Ecosystem::Debian, name("curl", true), false),
            (Ecosystem::Debian, name("jq", false), false),
            (Ecosystem::Debian, name("git", false), false),
        ];
        assert_eq!(got, want);
        assert!(specs("apt-get update && apt-get clean").is_empty());
    }

    #[test]
    fn pip_forms() {
        let got = specs(
            "python3 -m pip install --no-cache-dir 'requests[socks]==2.32.3' numpy>=1 -r req.txt --index-url https://mirror.example/simple",
        );
        assert_eq!(got[0], (Ecosystem::Pypi, name("requests", true), false));
        // `numpy>=1` unquoted is a redirection to the file `=1`, as in a real shell.
        assert_eq!(got[1], (Ecosystem::Pypi, name("numpy", false), false));
        assert_eq!(got[2].1, Spec::RequirementsFile("req.txt".into()));
        assert!(matches!(&got[3].1, Spec::CustomIndex { host: Some(h), .. } if h == "mirror.example"));
        assert_eq!(specs("uv pip install Python_Dateutil==2.9.0")[0].1, name("Python_Dateutil", true));
        assert_eq!(specs("pip3.11 install \"pandas>=2,<3\"")[0].1, name("pandas", false));
    }

    #[test]
    fn npm_forms() {
        let got = specs(
            "npm install -g \"@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}\" typescript@5.6.3 lodash@^4 expressjs/express",
        );
        assert_eq!(got[0].1, name("@anthropic-ai/claude-code", true));
        assert_eq!(got[1].1, name("typescript", true));
        assert_eq!(got[2].1, name("lodash", false));
        assert!(matches!(&got[3].1, Spec::Location { host: Some(h), .. } if h == "github.com"));
        let npx = specs("npx --yes playwright install --with-deps chromium");
        assert_eq!(npx, vec![(Ecosystem::Npm, name("playwright", false), true)]);
        assert_eq!(specs("yarn global add pm2@5.4.2")[0].1, name("pm2", true));
        assert_eq!(specs("pnpm add -D vitest")[0].1, name("vitest", false));
        assert!(specs("npm ci && npm run build").is_empty());
        assert_eq!(specs("npm i $PKGS")[0].1, Spec::Unresolvable("$PKGS".into()));
    }

    #[test]
    fn hosts() {
        assert_eq!(url_host("https://u:p@Deb.NodeSource.com:443/x").as_deref(), Some("deb.nodesource.com"));
        assert_eq!(url_host("git@github.com:a/b.git").as_deref(), Some("github.com"));
        assert_eq!(url_host("https://${MIRROR}/x"), None);
    }
}
