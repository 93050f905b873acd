//! Dockerfile rules on the instructions a diff adds: remote `ADD`, unpinned base images, secrets in
//! `ENV`/`ARG`, `RUN` commands (through `crate::rules`), and the image's final `USER`.

use std::collections::{HashMap, HashSet};

use crate::diff::{FileDiff, FileStatus, LineKind};
use crate::logical::{self, Logical, Mode, Segment};
use crate::rules::{hunk_segments, mode_is_world_writable, shell_rules, text_rules};
use crate::shell::{self, Word, base_name, is_assignment};
use crate::{Report, Severity, quoted, secrets};

pub fn check(report: &mut Report<'_>, file: &FileDiff<'_>) {
    let path = file.path();
    let per_hunk: Vec<(usize, Vec<Logical<'_>>)> = hunk_segments(file)
        .map(|(index, segments)| (index, logical::build(segments, Mode::Dockerfile, true, '\\')))
        .collect();
    let all: Vec<&Logical<'_>> = per_hunk.iter().flat_map(|(_, logicals)| logicals).collect();
    let mut npm_installed = HashSet::new();
    let mut stages: HashSet<String> = HashSet::new();
    let mut seen_from = false;
    let mut global_args: HashMap<String, String> = HashMap::new();
    for (hunk, logicals) in &per_hunk {
        let hint = file.hunks[*hunk].header_context;
        for logical in logicals {
            let keyword = logical.keyword.as_deref();
            let from = if keyword == Some("FROM") { parse_from(&logical.text) } else { None };
            if logical.has_added() {
                text_rules(report, path, logical);
                match keyword {
                    None | Some("RUN" | "CMD" | "ENTRYPOINT") => {
                        if keyword.is_none() {
                            env_secrets(report, path, logical, "variable");
                        }
                        run_rules(report, path, logical, hint, &mut npm_installed);
                    }
                    Some(kind @ ("ENV" | "ARG")) => env_secrets(report, path, logical, kind),
                    Some(kind @ ("ADD" | "COPY")) => copy_rules(report, path, logical, kind),
                    Some("FROM") => {
                        if let Some(from) = &from {
                            base_image_rule(report, file, logical, from, &stages, &global_args);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(from) = from {
                seen_from = true;
                stages.extend(from.stage);
            } else if keyword == Some("ARG") && !seen_from {
                for (name, value, _, _) in assignments(&logical.text, "ARG") {
                    global_args.insert(name, value);
                }
            }
        }
    }
    final_user(report, file, &per_hunk, &all);
}

/// `RUN`/`CMD`/`ENTRYPOINT` and fragments: shell form through the shell rules; exec form (a JSON
/// array) too when it is `sh -c "…"`, else its words as one command.
fn run_rules(
    report: &mut Report<'_>,
    path: &str,
    logical: &Logical<'_>,
    hint: &str,
    npm_installed: &mut HashSet<String>,
) {
    let text = logical.text.as_str();
    // `RUN --mount=… --network=… cmd`: the options are not part of the command.
    let mut offset = text.len() - text.trim_start().len();
    while text[offset..].starts_with("--") {
        let end = text[offset..].find(char::is_whitespace).map_or(text.len(), |e| offset + e);
        offset = end + (text[end..].len() - text[end..].trim_start().len());
    }
    let command = &text[offset..];
    if let Some(elements) = exec_form(command) {
        let first_added = logical.segments.iter().find(|s| s.added).copied();
        let script = match elements.as_slice() {
            [shell, flag, script, ..] if base_name(shell).ends_with("sh") && flag == "-c" => script.clone(),
            _ => elements.join(" "),
        };
        shell_rules(report, path, logical, &script, &|_, _| first_added, hint, npm_installed);
        return;
    }
    shell_rules(
        report,
        path,
        logical,
        command,
        &|s, e| logical.added_in(s + offset, e + offset).copied(),
        hint,
        npm_installed,
    );
}

/// The strings of a JSON-array (exec form) argument list, if it is one.
pub fn exec_form(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(text).ok()
}

/// `ADD https://…` (Block) and `--chmod=777` on `ADD`/`COPY`.
fn copy_rules(report: &mut Report<'_>, path: &str, logical: &Logical<'_>, keyword: &str) {
    let words: Vec<Word> = shell::pipelines(&logical.text).into_iter().flatten().flatten().collect();
    for word in &words {
        let Some(segment) = logical.added_in(word.start, word.end) else { continue };
        if let Some(mode) = word.text.strip_prefix("--chmod=")
            && mode_is_world_writable(mode)
        {
            let message = format!("{keyword} --chmod={} lets every user change and run the copied files", quoted(mode));
            report.add("dockerfile.chmod-777", Severity::Block, path, segment.line, message, segment.text);
        }
        let remote =
            word.text.starts_with("http://") || word.text.starts_with("https://") || word.text.starts_with("git@");
        if keyword == "ADD" && remote {
            let message = format!(
                "ADD fetches {} at build time with no review of what it returns; download in RUN with a pinned checksum instead",
                quoted(&word.text)
            );
            report.add("dockerfile.remote-add", Severity::Block, path, segment.line, message, segment.text);
        }
    }
}

/// Secrets assigned in `ENV`/`ARG` (or assignments in a fragment): a secret-named variable with a
/// literal value, or a value that reads as random.
fn env_secrets(report: &mut Report<'_>, path: &str, logical: &Logical<'_>, keyword: &str) {
    for (name, value, start, end) in assignments(&logical.text, keyword) {
        let Some(segment) = logical.added_in(start, end) else { continue };
        if secrets::is_trivial_value(&value) || !secrets::scan(&value).is_empty() {
            // Known formats are reported by the line scan already.
            continue;
        }
        let span = segment.text.find(value.as_str()).map_or((0, 0), |at| (at, at + value.len()));
        if secrets::is_secret_name(&name) {
            let message = format!(
                "{keyword} {} is given a literal value in the Dockerfile; images must not hold credentials (pass them at run time)",
                quoted(&name)
            );
            report.add_secret("secret.env-literal", path, segment.line, message, segment.text, span);
        } else if secrets::is_high_entropy_token(&value) {
            let message = format!(
                "{keyword} {} holds a random-looking value ({:.1} bits per character over {} characters) that looks like a credential",
                quoted(&name),
                secrets::entropy(&value),
                value.len()
            );
            report.add_secret("secret.high-entropy", path, segment.line, message, segment.text, span);
        }
    }
}

/// (name, value, start, end) of each assignment; `ENV NAME value…` (the legacy form) too.
fn assignments(text: &str, keyword: &str) -> Vec<(String, String, usize, usize)> {
    let words: Vec<Word> = shell::pipelines(text).into_iter().flatten().flatten().collect();
    if keyword == "ENV" && words.len() >= 2 && !words[0].text.contains('=') {
        let last = words.last().expect("two or more words");
        let value = words[1..].iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        return vec![(words[0].text.clone(), value, words[1].start, last.end)];
    }
    words
        .iter()
        .filter(|word| is_assignment(&word.text))
        .filter_map(|word| {
            let (name, value) = word.text.split_once('=')?;
            Some((name.to_string(), value.to_string(), word.start, word.end))
        })
        .collect()
}

/// A parsed `FROM [--platform=…] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromLine {
    pub image: String,
    pub stage: Option<String>,
}

pub fn parse_from(text: &str) -> Option<FromLine> {
    let mut words = text.split_whitespace().skip_while(|w| w.starts_with("--"));
    let image = words.next()?.to_string();
    let stage = match (words.next(), words.next()) {
        (Some(as_word), Some(name)) if as_word.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
        _ => None,
    };
    Some(FromLine { image, stage })
}

/// How a base image reference is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BasePin {
    /// A tag other than `latest`, a digest, `scratch`, or an earlier build stage.
    Pinned,
    Latest,
    Untagged,
    /// Built from a build argument whose value is not known here.
    Dynamic,
}

/// Pins `image` after substituting `args` (global `ARG` defaults).
pub fn base_pin(image: &str, stages: &HashSet<String>, args: &HashMap<String, String>) -> (BasePin, String) {
    let image = substitute(image, args);
    if image.contains('$') {
        return (BasePin::Dynamic, image);
    }
    let lower = image.to_ascii_lowercase();
    if lower == "scratch" || stages.contains(&lower) || image.contains('@') {
        return (BasePin::Pinned, image);
    }
    let last = image.rsplit('/').next().unwrap_or(&image);
    let pin = match last.split_once(':') {
        Some((_, "latest")) => BasePin::Latest,
        Some(_) => BasePin::Pinned,
        None => BasePin::Untagged,
    };
    (pin, image)
}

/// `${NAME}`, `${NAME:-default}` and `$NAME` replaced from `args`; unknown names stay as written.
fn substitute(image: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = image;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, default, consumed) = if let Some(inner) = after.strip_prefix('{') {
            let Some(close) = inner.find('}') else { break };
            let body = &inner[..close];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            (name, default, close + 2)
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], None, end)
        };
        match args.get(name).filter(|v| !v.is_empty()).map(String::as_str).or(default) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[at..at + 1 + consumed]),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// Docker Hub official images: a plain untagged `FROM ubuntu` is one of these, not a stage name.
const OFFICIAL_IMAGES: &[&str] = &[
    "ubuntu",
    "debian",
    "alpine",
    "node",
    "python",
    "golang",
    "rust",
    "busybox",
    "centos",
    "fedora",
    "archlinux",
    "amazonlinux",
    "nginx",
    "redis",
    "postgres",
    "mysql",
    "openjdk",
    "eclipse-temurin",
    "ruby",
    "php",
    "gcc",
    "bash",
    "docker",
    "buildpack-deps",
    "rockylinux",
    "almalinux",
    "oraclelinux",
    "bitnami",
    "mcr",
];

fn base_image_rule(
    report: &mut Report<'_>,
    file: &FileDiff<'_>,
    logical: &Logical<'_>,
    from: &FromLine,
    stages: &HashSet<String>,
    args: &HashMap<String, String>,
) {
    let Some(segment) = logical.segments.iter().find(|s| s.added) else { return };
    let path = file.path();
    let (pin, image) = base_pin(&from.image, stages, args);
    let plain = !image.contains(['/', ':', '.']);
    // In a changed file the stage this names may be defined above the diff's context.
    let maybe_stage = file.status != FileStatus::Added && plain && !OFFICIAL_IMAGES.contains(&image.as_str());
    let (severity, why) = match pin {
        BasePin::Pinned => return,
        BasePin::Latest => (Severity::Block, "uses the moving tag \"latest\""),
        BasePin::Untagged if maybe_stage => {
            (Severity::Warn, "has no tag or digest (unless it names a build stage defined outside the diff)")
        }
        BasePin::Untagged => (Severity::Block, "has no tag or digest, which means \"latest\""),
        BasePin::Dynamic => (Severity::Warn, "comes from a build argument whose value is not visible in the diff"),
    };
    let message = format!("base image \"{}\" {why}; a rebuild could silently get a different image", quoted(&image));
    report.add("dockerfile.unpinned-base", severity, path, segment.line, message, segment.text);
}

fn is_root_user(text: &str) -> bool {
    let user = text.split_whitespace().next().unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    name == "root" || name == "0"
}

/// The image's final user must not be root. Judged only on what the diff shows: the whole file when
/// it is new, else the last hunk when it reaches the end of the file.
fn final_user(
    report: &mut Report<'_>,
    file: &FileDiff<'_>,
    per_hunk: &[(usize, Vec<Logical<'_>>)],
    all: &[&Logical<'_>],
) {
    let path = file.path();
    let keyword_is = |logical: &&Logical<'_>, want: &str| logical.keyword.as_deref() == Some(want);
    if !file.shows_end_of_new_file() {
        for logical in all.iter().filter(|l| keyword_is(l, "USER") && l.has_added() && is_root_user(&l.text)) {
            let segment = first_added(logical);
            let message = "sets USER root; whether a later USER drops root again is outside the diff".to_string();
            report.add("dockerfile.user-root", Severity::Warn, path, segment.line, message, segment.text);
        }
        return;
    }
    let tail: Vec<&Logical<'_>> = if file.status == FileStatus::Added {
        all.to_vec()
    } else {
        per_hunk.last().map(|(_, logicals)| logicals.iter().collect()).unwrap_or_default()
    };
    let last_user = tail.iter().rposition(|l| keyword_is(l, "USER"));
    let last_from = tail.iter().rposition(|l| keyword_is(l, "FROM"));
    let removed_user = file.hunks.last().is_some_and(|hunk| {
        hunk.lines
            .iter()
            .any(|l| l.kind == LineKind::Removed && l.text.trim_start().to_ascii_uppercase().starts_with("USER"))
    });
    match (last_user, last_from) {
        (Some(user), from) if from.is_none_or(|from| user > from) => {
            let logical = tail[user];
            if is_root_user(&logical.text) && logical.has_added() {
                let segment = first_added(logical);
                let message = "the image's final USER is root, so every worker process would run as root".to_string();
                report.add("dockerfile.final-user-root", Severity::Block, path, segment.line, message, segment.text);
            }
        }
        (_, Some(from)) => {
            let logical = tail[from];
            if logical.has_added() || removed_user {
                let segment = logical.segments.first().expect("a logical line has a segment");
                let message =
                    "the final build stage sets no USER, so the image runs as root; end it with a non-root USER"
                        .to_string();
                report.add("dockerfile.final-user-root", Severity::Block, path, segment.line, message, segment.text);
            }
        }
        (None, None) if removed_user => {
            let line = file.hunks.last().and_then(|h| h.lines.last()).map_or(0, |l| l.new_line);
            let message = "removes a USER line near the end of the file; the image may now run as root".to_string();
            report.add("dockerfile.user-root", Severity::Warn, path, line, message, "");
        }
        _ => {}
    }
}

fn first_added<'a>(logical: &'a Logical<'a>) -> &'a Segment<'a> {
    logical.segments.iter().find(|s| s.added).unwrap_or(&logical.segments[0])
}
