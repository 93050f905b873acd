//! Rules shared by Dockerfile `RUN` lines and shell scripts (package installs, downloads, chmod,
//! sudo), text rules for any file (TLS checks off, sudoers), and the secret scan of every added line.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};

use crate::diff::FileDiff;
use crate::downloads::{self, SUBSTITUTION_PIPE, Use};
use crate::known::{Ecosystem, NameCheck};
use crate::logical::{self, Logical, Mode, Segment};
use crate::packages::{self, Install, Spec};
use crate::shell::{self, Pipeline, Word, base_name, program_words};
use crate::{Report, Severity, quoted, secrets};

/// Secrets in every added line of every file, plus Twilio sid/token pairs.
pub fn check_secrets(report: &mut Report<'_>, file: &FileDiff<'_>) {
    let path = file.path();
    let mut maybe_twilio = false;
    for line in file.added_lines() {
        for hit in secrets::scan(line.text) {
            let message = format!("{} added; credentials must never be committed to the template repository", hit.what);
            report.add_secret(hit.rule, path, line.new_line, message, line.text, (hit.start, hit.end));
        }
        maybe_twilio |= line.text.contains("AC");
    }
    if maybe_twilio {
        let lines: Vec<(u32, &str)> = file.added_lines().map(|l| (l.new_line, l.text)).collect();
        for (line, hit) in secrets::twilio_pairs(&lines) {
            let text = lines.iter().find(|(n, _)| *n == line).map_or("", |(_, t)| *t);
            let message = format!("{} added; credentials must never be committed to the template repository", hit.what);
            report.add_secret(hit.rule, path, line, message, text, (hit.start, hit.end));
        }
    }
}

/// New-side lines of each hunk, as segments for [`logical::build`].
pub fn hunk_segments<'a>(file: &'a FileDiff<'a>) -> impl Iterator<Item = (usize, Vec<Segment<'a>>)> + 'a {
    file.hunks.iter().enumerate().map(|(index, hunk)| {
        let segments = hunk
            .lines
            .iter()
            .filter(|line| line.kind != crate::diff::LineKind::Removed)
            .map(|line| Segment {
                line: line.new_line,
                text: line.text,
                added: line.kind == crate::diff::LineKind::Added,
            })
            .collect();
        (index, segments)
    })
}

pub fn check_shell_file(report: &mut Report<'_>, file: &FileDiff<'_>) {
    let path = file.path();
    let mut npm_installed = HashSet::new();
    for (hunk, segments) in hunk_segments(file) {
        for logical in logical::build(segments, Mode::Shell, true, '\\') {
            if !logical.has_added() {
                continue;
            }
            text_rules(report, path, &logical);
            let hint = file.hunks[hunk].header_context;
            shell_rules(
                report,
                path,
                &logical,
                &logical.text,
                &|s, e| logical.added_in(s, e).copied(),
                hint,
                &mut npm_installed,
            );
        }
    }
}

pub fn check_config_file(report: &mut Report<'_>, file: &FileDiff<'_>) {
    let path = file.path();
    for (_, segments) in hunk_segments(file) {
        for logical in logical::build(segments, Mode::Shell, true, '\\') {
            if logical.has_added() {
                text_rules(report, path, &logical);
            }
        }
    }
}

/// `requirements*.txt`: every added requirement line is a pip install (with `-r`, `-e`, `-i` and
/// `--extra-index-url` lines handled as pip handles them).
pub fn check_requirements_file(report: &mut Report<'_>, file: &FileDiff<'_>) {
    check_config_file(report, file);
    let path = file.path();
    for line in file.added_lines() {
        // Shell-style words: quotes removed, `#` comments and `; marker` tails cut off.
        let pipelines = shell::pipelines(line.text);
        let Some(words) = pipelines.first().and_then(|pipeline| pipeline.first()) else { continue };
        let segment = Segment { line: line.new_line, text: line.text, added: true };
        for install in packages::requirement_line(words) {
            package_finding(report, path, &segment, &install, &HashSet::new());
        }
    }
}

/// Rules on the commands of one logical line. `locate` maps a byte range of `text` to the added
/// physical line it is on (`None`: not added, so not this PR's doing). `header_hint` is the hunk
/// header's context, used when a fragment continues a command that starts outside the diff.
pub fn shell_rules<'s>(
    report: &mut Report<'_>,
    path: &str,
    logical: &Logical<'_>,
    text: &str,
    locate: &dyn Fn(usize, usize) -> Option<Segment<'s>>,
    header_hint: &str,
    npm_installed: &mut HashSet<String>,
) {
    let pipelines = shell::pipelines(text);
    // A fragment whose text starts with a word (not an operator or a redirection) continues a command
    // that begins above the diff: that first command's words are its arguments (usually a package list).
    let first_word_start = pipelines.first().and_then(|p| p.first()).and_then(|c| c.first()).map(|w| w.start);
    let starts_mid_command = logical.fragment && first_word_start == Some(text.len() - text.trim_start().len());
    for (index, pipeline) in pipelines.iter().enumerate() {
        for (position, command) in pipeline.iter().enumerate() {
            if starts_mid_command && index == 0 && position == 0 {
                headless_words(report, path, command, locate, header_hint);
                continue;
            }
            for install in packages::installs(command) {
                if install.ecosystem == Ecosystem::Npm
                    && !install.exec
                    && let Spec::Name { name, .. } = &install.spec
                {
                    npm_installed.insert(Ecosystem::Npm.normalize(name));
                }
                if let Some(segment) = locate(install.word.start, install.word.end) {
                    package_finding(report, path, &segment, &install, npm_installed);
                }
            }
            command_rules(report, path, command, locate);
        }
    }
    download_rules(report, path, &pipelines, locate);
    for captures in SUBSTITUTION_PIPE.captures_iter(text) {
        let url = captures.get(1).expect("url group");
        let whole = captures.get(0).expect("match");
        if let Some(segment) = locate(whole.start(), whole.end()) {
            pipe_finding(report, path, &segment, url.as_str(), &packages::url_host(url.as_str()), "a shell");
        }
    }
}

/// Words continuing a command that starts before the hunk: package-like words are checked against
/// the list the hunk header suggests (`RUN apt-get …` → apt), or against all lists.
fn headless_words<'s>(
    report: &mut Report<'_>,
    path: &str,
    command: &[Word],
    locate: &dyn Fn(usize, usize) -> Option<Segment<'s>>,
    header_hint: &str,
) {
    let hint_words: Vec<&str> =
        header_hint.split(|c: char| c.is_whitespace() || "\"';&|()".contains(c)).map(base_name).collect();
    let mentions = |tools: &[&str]| hint_words.iter().any(|word| tools.contains(word));
    let inferred = if mentions(&["apt-get", "apt", "aptitude"]) {
        Some(Ecosystem::Debian)
    } else if mentions(&["pip", "pip3", "uv", "pipx"]) {
        Some(Ecosystem::Pypi)
    } else if mentions(&["npm", "yarn", "pnpm", "npx"]) {
        Some(Ecosystem::Npm)
    } else {
        None
    };
    for word in command {
        let text = word.text.as_str();
        let package_like = !text.is_empty()
            && !word.dynamic
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._+@/=:^~<>[]".contains(&b))
            && (text.as_bytes()[0].is_ascii_alphanumeric() || text.starts_with('@'));
        if !package_like || text.contains("://") {
            continue;
        }
        let Some(segment) = locate(word.start, word.end) else { continue };
        let all = [Ecosystem::Debian, Ecosystem::Pypi, Ecosystem::Npm];
        let name = match inferred.map_or(Spec::Unresolvable(String::new()), |e| spec_for(e, text)) {
            Spec::Name { name, .. } => name,
            _ => text.split(['=', ':', '@', '[', '<', '>']).next().unwrap_or(text).to_string(),
        };
        if all.iter().any(|&ecosystem| report.check_name(ecosystem, &name) == NameCheck::Known) {
            continue;
        }
        match inferred {
            Some(ecosystem) => {
                let install =
                    Install { ecosystem, word, spec: Spec::Name { name: name.clone(), pinned: true }, exec: false };
                package_finding(report, path, &segment, &install, &HashSet::new());
            }
            None => {
                let message = format!(
                    "\"{}\" continues a command that starts outside the diff context, so it could not be checked against a package list",
                    quoted(text)
                );
                report.add("package.unresolved", Severity::Warn, path, segment.line, message, segment.text);
            }
        }
    }
}

fn spec_for(ecosystem: Ecosystem, text: &str) -> Spec {
    match ecosystem {
        Ecosystem::Debian => packages::apt_spec(text),
        Ecosystem::Pypi => packages::pip_spec(text),
        Ecosystem::Npm => packages::npm_spec(text),
    }
}

/// The finding (if any) for one install in an added line.
fn package_finding(
    report: &mut Report<'_>,
    path: &str,
    segment: &Segment<'_>,
    install: &Install<'_>,
    npm_installed: &HashSet<String>,
) {
    let ecosystem = install.ecosystem;
    let noun = ecosystem.noun();
    let line = segment.line;
    let evidence = segment.text;
    match &install.spec {
        Spec::Name { name, pinned } => match report.check_name(ecosystem, name) {
            NameCheck::Known => {
                let installed_earlier = install.exec && npm_installed.contains(&ecosystem.normalize(name));
                if !pinned && ecosystem != Ecosystem::Debian && !installed_earlier {
                    let example = if ecosystem == Ecosystem::Npm { "name@1.2.3" } else { "name==1.2.3" };
                    let message = format!(
                        "{noun} \"{}\" is installed without an exact version ({example}), so each template build may get a different release",
                        quoted(name)
                    );
                    report.add("package.unpinned", Severity::Warn, path, line, message, evidence);
                }
            }
            NameCheck::Typosquat { of, how } => {
                let message =
                    format!("{noun} \"{}\" looks like a typosquat of \"{of}\" ({})", quoted(name), how.describe());
                report.add("package.typosquat", Severity::Block, path, line, message, evidence);
            }
            NameCheck::Unknown => {
                let message = format!(
                    "{noun} \"{}\" is not in the shipped list of {} ({}); unknown names are blocked because invented packages are a real attack",
                    quoted(name),
                    ecosystem.list_name(),
                    ecosystem.list_path()
                );
                report.add("package.unknown", Severity::Block, path, line, message, evidence);
            }
        },
        Spec::RequirementsFile(file) => {
            let message = format!(
                "pip installs from the requirements file \"{}\"; the vetting cannot check a requirements file it does not see, so review its packages by hand",
                quoted(file)
            );
            report.add("package.requirements-file", Severity::Warn, path, line, message, evidence);
        }
        Spec::Location { target, host, local } => {
            if *local {
                let message =
                    format!("{noun} source \"{}\" is a local path; its contents are not checked", quoted(target));
                report.add("package.local-source", Severity::Warn, path, line, message, evidence);
            } else {
                let allowed = report.options.host_allowed(host.as_deref());
                let message = format!(
                    "{noun} source \"{}\" is a URL or repository on {}, not a registry name, so it cannot be checked against the known list{}",
                    quoted(target),
                    host.as_deref().unwrap_or("a host taken from a variable"),
                    if allowed { "" } else { " and the host is not on the download allowlist" }
                );
                let severity = if allowed { Severity::Warn } else { Severity::Block };
                report.add("package.non-registry", severity, path, line, message, evidence);
            }
        }
        Spec::CustomIndex { target, host } => {
            if !report.options.host_allowed(host.as_deref()) {
                let message = format!(
                    "{noun}s come from the index \"{}\", which is not on the download allowlist; another index can serve anything under a known name",
                    quoted(target)
                );
                report.add("package.custom-index", Severity::Block, path, line, message, evidence);
            }
        }
        Spec::Unresolvable(text) => {
            let message = format!(
                "cannot tell which {noun} \"{}\" names (it comes from a variable or command output); review it by hand",
                quoted(text)
            );
            report.add("package.unresolved", Severity::Warn, path, line, message, evidence);
        }
    }
}

/// `chmod 777`, world-writable install modes, and adding users to the sudo group.
fn command_rules<'s>(
    report: &mut Report<'_>,
    path: &str,
    command: &[Word],
    locate: &dyn Fn(usize, usize) -> Option<Segment<'s>>,
) {
    let words = program_words(command);
    let Some(first) = words.first() else { return };
    let program = base_name(&first.text);
    let args = &words[1..];
    let mode = match program {
        "chmod" => args.iter().find(|w| !w.text.starts_with('-') || mode_is_world_writable(&w.text)),
        "install" | "mkdir" => args
            .iter()
            .position(|w| w.text == "-m" || w.text == "--mode")
            .and_then(|i| args.get(i + 1))
            .or_else(|| args.iter().find(|w| w.text.starts_with("--mode="))),
        _ => None,
    };
    if let Some(mode) = mode {
        let value = mode.text.trim_start_matches("--mode=");
        if mode_is_world_writable(value)
            && let Some(segment) = locate(first.start, mode.end)
        {
            let message =
                format!("{program} {} lets every user on the system change and run these files", quoted(value));
            report.add("dockerfile.chmod-777", Severity::Block, path, segment.line, message, segment.text);
        }
    }
    if matches!(program, "usermod" | "useradd" | "adduser" | "gpasswd" | "addgroup") {
        let group = args.iter().find(|w| w.text.split(',').any(|g| matches!(g, "sudo" | "wheel" | "admin" | "root")));
        if let Some(group) = group
            && let Some(segment) = locate(first.start, group.end)
        {
            let message = format!(
                "{program} puts a user in the \"{}\" group, which gives the sandbox user root",
                quoted(&group.text)
            );
            report.add("dockerfile.sudoers", Severity::Block, path, segment.line, message, segment.text);
        }
    }
}

/// `777`, `0777`, `a+rwx`, `o=rwx`: others may write and execute. The sticky bit (`1777`, as on
/// `/tmp`) is the safe shared-directory idiom and is not reported.
pub fn mode_is_world_writable(mode: &str) -> bool {
    if !mode.is_empty() && mode.len() <= 4 && mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        let digits = mode.as_bytes();
        let others = digits[digits.len() - 1] - b'0';
        let sticky = digits.len() == 4 && (digits[0] - b'0') & 1 == 1;
        return digits.len() >= 3 && others == 7 && !sticky;
    }
    mode.split(',').any(|clause| {
        let Some(op) = clause.find(['+', '=']) else { return false };
        let (who, perms) = (&clause[..op], &clause[op + 1..]);
        (who.contains('a') || who.contains('o')) && perms.contains('w') && perms.contains('x')
    })
}

fn download_rules<'s>(
    report: &mut Report<'_>,
    path: &str,
    pipelines: &[Pipeline],
    locate: &dyn Fn(usize, usize) -> Option<Segment<'s>>,
) {
    let (fetches, uses) = downloads::analyse(pipelines);
    for fetch in &fetches {
        if let Some(flag) = fetch.insecure
            && let Some(segment) = locate(flag.start, flag.end)
        {
            let message = format!(
                "{} turns off TLS certificate verification for {}",
                flag.text,
                fetch.host.as_deref().unwrap_or("the download")
            );
            report.add("dockerfile.tls-disabled", Severity::Block, path, segment.line, message, segment.text);
        }
    }
    for found in uses {
        let fetch = &found.download;
        let Some(segment) =
            locate(fetch.url_word.start, fetch.url_word.end).or_else(|| locate(found.user.start, found.user.end))
        else {
            continue;
        };
        match &found.used {
            Use::PipedToShell(interpreter) => {
                pipe_finding(report, path, &segment, &fetch.url, &fetch.host, interpreter);
            }
            Use::SavedThenRun(interpreter) => {
                pipe_finding(report, path, &segment, &fetch.url, &fetch.host, interpreter);
            }
            Use::Binary => {
                let allowed = report.options.host_allowed(fetch.host.as_deref());
                let message = format!(
                    "downloads an executable from {} ({}){}{}",
                    fetch.host.as_deref().unwrap_or("a host taken from a variable"),
                    quoted(&fetch.url),
                    if found.checksum_verified {
                        ", checked against a pinned checksum"
                    } else {
                        " without a checksum check"
                    },
                    if allowed { "" } else { "; the host is not on the download allowlist" }
                );
                let severity = if allowed { Severity::Warn } else { Severity::Block };
                report.add("package.binary-download", severity, path, segment.line, message, segment.text);
            }
        }
    }
}

fn pipe_finding(
    report: &mut Report<'_>,
    path: &str,
    segment: &Segment<'_>,
    url: &str,
    host: &Option<String>,
    interpreter: &str,
) {
    let allowed = report.options.host_allowed(host.as_deref());
    let message = format!(
        "runs a script downloaded from {} ({}) with {interpreter}, unreviewed and as the build user{}",
        host.as_deref().unwrap_or("a host taken from a variable"),
        quoted(url),
        if allowed { "" } else { "; the host is not on the download allowlist" }
    );
    let severity = if allowed { Severity::Warn } else { Severity::Block };
    report.add("dockerfile.curl-pipe-shell", severity, path, segment.line, message, segment.text);
}

/// Patterns that are findings wherever they appear in an added instruction, command or config line.
struct TextRule {
    rule: &'static str,
    severity: Severity,
    pattern: &'static str,
    message: &'static str,
}

const TEXT_RULES: &[TextRule] = &[
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r"--no-check-certificate|(?i:check[-_]certificate\s*=\s*off)",
        message: "wget certificate checking is turned off",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r"(?i:--trusted-host|\btrusted[-_]host\b)",
        message: "pip trusted-host accepts any certificate (or plain HTTP) from that host",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r#"(?i:strict[-_]ssl["'\s=:]+["']?false)"#,
        message: "npm/yarn strict-ssl false turns off TLS certificate verification",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r#"GIT_SSL_NO_VERIFY|(?i:http\.sslverify["'\s=]+["']?(?:false|0|no)\b)"#,
        message: "git TLS certificate verification is turned off",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r#"NODE_TLS_REJECT_UNAUTHORIZED["'\s=]+["']?0"#,
        message: "NODE_TLS_REJECT_UNAUTHORIZED=0 turns off TLS certificate verification for Node.js",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r#"PYTHONHTTPSVERIFY["'\s=]+["']?0"#,
        message: "PYTHONHTTPSVERIFY=0 turns off TLS certificate verification for Python",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r"\[[^\]\n]*\btrusted=yes\b[^\]\n]*\]|(?im:^\s*Trusted:\s*yes)",
        message: "an apt source marked trusted=yes installs packages without checking their signatures",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r"--allow-unauthenticated|--allow-insecure-repositories|AllowInsecureRepositories|AllowUnauthenticated|AllowDowngradeToInsecureRepositories",
        message: "apt is told to accept unsigned packages or repositories",
    },
    TextRule {
        rule: "dockerfile.tls-disabled",
        severity: Severity::Block,
        pattern: r"(?i:\binsecure\b[^\n|;&]*>>?\s*\S*\.curlrc)",
        message: "\"insecure\" in .curlrc turns off TLS certificate verification for every curl",
    },
    TextRule {
        rule: "dockerfile.sudoers",
        severity: Severity::Block,
        pattern: r"/etc/sudoers",
        message: "changes /etc/sudoers or /etc/sudoers.d, which grants root to a user",
    },
    TextRule {
        rule: "dockerfile.sudoers",
        severity: Severity::Block,
        pattern: r"NOPASSWD",
        message: "a NOPASSWD sudo rule gives passwordless root",
    },
];

static TEXT_RULE_SET: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(TEXT_RULES.iter().map(|rule| rule.pattern)).expect("text rules compile"));
static TEXT_RULE_REGEXES: LazyLock<Vec<Regex>> =
    LazyLock::new(|| TEXT_RULES.iter().map(|rule| Regex::new(rule.pattern).expect("text rules compile")).collect());
/// An apt source line (`deb [opts] URL suite`); group 1 is the URL.
static APT_SOURCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\bdeb(?:-src)?\s+(?:\[[^\]]*\]\s+)?((?:https?|ftp)://[^\s"']+)"#).expect("regex compiles")
});

/// A package-index setting in a config file, environment variable or `npm config set`; group 1 is
/// the URL. (`--index-url`-style flags of install commands are reported by the install parser.)
static REGISTRY_SETTING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b(?:registry|index[-_]url|extra[-_]index[-_]url|find[-_]links|PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|PIP_FIND_LINKS|UV_INDEX_URL|UV_EXTRA_INDEX_URL|UV_DEFAULT_INDEX|UV_INDEX|NPM_CONFIG_REGISTRY|YARN_REGISTRY)["']?[ \t]*[=: \t][ \t]*["']?((?:https?|ftp)://[^\s"']+)"#,
    )
    .expect("regex compiles")
});

/// [`TEXT_RULES`] and third-party apt sources on the text of one logical line; one finding per rule
/// and line.
pub fn text_rules(report: &mut Report<'_>, path: &str, logical: &Logical<'_>) {
    let text = &logical.text;
    let matched = TEXT_RULE_SET.matches(text);
    let mut reported: HashSet<(&'static str, u32)> = HashSet::new();
    for index in matched.iter() {
        let rule = &TEXT_RULES[index];
        for found in TEXT_RULE_REGEXES[index].find_iter(text) {
            let Some(segment) = logical.added_in(found.start(), found.end()) else { continue };
            if reported.insert((rule.rule, segment.line)) {
                report.add(rule.rule, rule.severity, path, segment.line, rule.message.to_string(), segment.text);
            }
        }
    }
    if text.contains("://") {
        for captures in REGISTRY_SETTING.captures_iter(text) {
            let whole = captures.get(0).expect("match");
            let url = captures.get(1).expect("url group");
            let host = packages::url_host(url.as_str());
            if text[..whole.start()].ends_with("--") || report.options.host_allowed(host.as_deref()) {
                continue;
            }
            let Some(segment) = logical.added_in(whole.start(), whole.end()) else { continue };
            let message = format!(
                "packages come from the index \"{}\", which is not on the download allowlist; another index can serve anything under a known name",
                quoted(url.as_str())
            );
            report.add("package.custom-index", Severity::Block, path, segment.line, message, segment.text);
        }
    }
    if text.contains("deb") {
        for captures in APT_SOURCE.captures_iter(text) {
            let url = captures.get(1).expect("url group");
            let host = packages::url_host(url.as_str());
            if report.options.host_allowed(host.as_deref()) {
                continue;
            }
            let Some(segment) = logical.added_in(url.start(), url.end()) else { continue };
            let message = format!(
                "adds an apt repository on {}, which is not on the download allowlist; its packages are not covered by the Debian/Ubuntu list",
                host.as_deref().unwrap_or("a host taken from a variable")
            );
            report.add("dockerfile.apt-source", Severity::Warn, path, segment.line, message, segment.text);
        }
    }
}
