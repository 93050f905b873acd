//! A template's Dockerfile as the steps of an E2B v2 template build.
//!
//! In E2B's current build API the server never sees a Dockerfile: the client converts it into
//! `fromImage` plus steps (`RUN`, `COPY`, `ENV`, `WORKDIR`, `USER`), as E2B's SDK does in
//! `fromDockerfile`. Where that SDK loses Docker semantics this keeps them:
//!
//! * `SHELL [...]` is applied to later `RUN`s (the SDK drops it: `pipefail` would silently go);
//! * `ARG`s are build-time only: exported into each `RUN` and substituted into other
//!   instructions, never turned into `ENV` (which would leak into every sandbox);
//! * anything that cannot be kept (multi-stage builds, `COPY --from`, `ADD <url>`, heredocs)
//!   fails the build with the line number rather than building something different.

use std::collections::BTreeMap;

/// The build, before file hashes: COPY steps name their source within the template directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub from_image: String,
    pub steps: Vec<PlannedStep>,
    pub start_cmd: Option<String>,
    /// Instructions that have no equivalent and were skipped, for the build log.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// `RUN`, `COPY`, `ENV`, `WORKDIR`, `USER`.
    pub kind: &'static str,
    pub args: Vec<String>,
    /// For `COPY`: the source, relative to the template directory, to upload.
    pub copy_source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct DockerfileError {
    pub line: usize,
    pub message: String,
}

/// Converts `text` into a build plan.
pub fn plan(text: &str) -> Result<BuildPlan, DockerfileError> {
    let mut planner = Planner::default();
    for (line, instruction) in logical_lines(text)? {
        planner.line = line;
        let (keyword, rest) = match instruction.split_once(char::is_whitespace) {
            Some((keyword, rest)) => (keyword.to_ascii_uppercase(), rest.trim().to_owned()),
            None => (instruction.to_ascii_uppercase(), String::new()),
        };
        planner.instruction(&keyword, &rest)?;
    }
    planner.finish()
}

#[derive(Default)]
struct Planner {
    line: usize,
    from_image: Option<String>,
    steps: Vec<PlannedStep>,
    /// ARGs declared before FROM (usable only in FROM, or re-declared after it).
    global_args: BTreeMap<String, String>,
    /// ARGs in scope after FROM: exported into RUNs.
    args: BTreeMap<String, String>,
    /// ENV values in scope: substituted into later instructions like Docker does.
    env: BTreeMap<String, String>,
    shell: Option<Vec<String>>,
    start_cmd: Option<String>,
    user_set: bool,
    workdir_set: bool,
    skipped: Vec<String>,
}

impl Planner {
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, DockerfileError> {
        Err(DockerfileError { line: self.line, message: message.into() })
    }

    fn step(&mut self, kind: &'static str, args: Vec<String>) {
        self.steps.push(PlannedStep { kind, args, copy_source: None });
    }

    fn instruction(&mut self, keyword: &str, rest: &str) -> Result<(), DockerfileError> {
        if self.from_image.is_none() && !matches!(keyword, "FROM" | "ARG") {
            return self.fail(format!("{keyword} before FROM"));
        }
        if matches!(keyword, "RUN" | "COPY" | "ADD")
            && split_words(rest).iter().any(|w| w.starts_with("<<") && w.len() > 2)
        {
            return self.fail("heredocs are not supported by E2B template builds");
        }
        match keyword {
            "FROM" => self.from(rest),
            "ARG" => self.arg(rest),
            "ENV" => self.env(rest),
            "RUN" => self.run(rest),
            "COPY" | "ADD" => self.copy(keyword, rest),
            "WORKDIR" => {
                let path = self.substitute(rest);
                self.workdir_set = true;
                self.step("WORKDIR", vec![path]);
                Ok(())
            }
            "USER" => {
                let user = self.substitute(rest);
                self.user_set = true;
                self.step("USER", vec![user]);
                Ok(())
            }
            "SHELL" => {
                let Some(shell) = json_array(rest) else { return self.fail("SHELL needs the JSON array form") };
                if shell.is_empty() {
                    return self.fail("SHELL must name a program");
                }
                self.shell = Some(shell);
                Ok(())
            }
            "CMD" | "ENTRYPOINT" => {
                let command = match json_array(rest) {
                    Some(words) => shell_join(&words),
                    None => rest.to_owned(),
                };
                self.start_cmd = Some(command);
                Ok(())
            }
            "EXPOSE" | "VOLUME" | "LABEL" | "MAINTAINER" | "STOPSIGNAL" | "HEALTHCHECK" | "ONBUILD" => {
                self.skipped.push(format!("line {}: {keyword} has no E2B equivalent; skipped", self.line));
                Ok(())
            }
            other => self.fail(format!("unknown instruction {other}")),
        }
    }

    fn from(&mut self, rest: &str) -> Result<(), DockerfileError> {
        if self.from_image.is_some() {
            return self.fail("multi-stage Dockerfiles are not supported by E2B template builds");
        }
        let words = split_words(rest);
        let Some(image) = words.iter().find(|w| !w.starts_with("--")) else { return self.fail("FROM needs an image") };
        let image = substitute(image, &self.global_args);
        self.from_image = Some(image);
        // Docker's defaults until the Dockerfile says otherwise (E2B's differ: set at the end).
        self.step("USER", vec!["root".into()]);
        self.step("WORKDIR", vec!["/".into()]);
        Ok(())
    }

    fn arg(&mut self, rest: &str) -> Result<(), DockerfileError> {
        for word in split_words(rest) {
            let (name, value) = match word.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(self.substitute(value))),
                None => (word.clone(), None),
            };
            if !valid_name(&name) {
                return self.fail(format!("invalid ARG name {name:?}"));
            }
            if self.from_image.is_none() {
                self.global_args.insert(name, value.unwrap_or_default());
            } else {
                let value = value.or_else(|| self.global_args.get(&name).cloned()).unwrap_or_default();
                self.args.insert(name, value);
            }
        }
        Ok(())
    }

    fn env(&mut self, rest: &str) -> Result<(), DockerfileError> {
        let words = split_words(rest);
        let pairs: Vec<(String, String)> = if words.first().is_some_and(|w| w.contains('=')) {
            words
                .iter()
                .map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<Option<_>>()
                .map_or_else(|| self.fail("ENV mixes `key=value` and `key value` forms"), Ok)?
        } else {
            // Legacy `ENV key value with spaces`.
            match rest.split_once(char::is_whitespace) {
                Some((key, value)) => vec![(key.to_owned(), value.trim().to_owned())],
                None => return self.fail("ENV needs a value"),
            }
        };
        let mut args = Vec::new();
        for (key, value) in pairs {
            if !valid_name(&key) {
                return self.fail(format!("invalid ENV name {key:?}"));
            }
            let value = self.substitute(&value);
            self.env.insert(key.clone(), value.clone());
            args.extend([key, value]);
        }
        self.step("ENV", args);
        Ok(())
    }

    fn run(&mut self, rest: &str) -> Result<(), DockerfileError> {
        let words_or_text = match json_array(rest) {
            Some(words) => shell_join(&words),
            None => rest.to_owned(),
        };
        if words_or_text.trim().is_empty() {
            return self.fail("RUN needs a command");
        }
        // Build args are environment variables of each RUN in Docker, and only there.
        let exports: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={}", shell_quote(v))).collect();
        let script =
            if exports.is_empty() { words_or_text } else { format!("export {}\n{words_or_text}", exports.join(" ")) };
        let command = match &self.shell {
            Some(shell) => {
                let mut argv = shell.clone();
                argv.push(script);
                shell_join(&argv)
            }
            None => script,
        };
        self.step("RUN", vec![command]);
        Ok(())
    }

    fn copy(&mut self, keyword: &str, rest: &str) -> Result<(), DockerfileError> {
        let mut words = split_words(rest);
        let (mut user, mut mode) = (String::new(), String::new());
        while words.first().is_some_and(|w| w.starts_with("--")) {
            let flag = words.remove(0);
            let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
            match name {
                "--chown" => user = self.substitute(value.split(':').next().unwrap_or_default()),
                "--chmod" => {
                    let Ok(bits) = u32::from_str_radix(value, 8) else {
                        return self.fail(format!("--chmod={value} is not an octal mode"));
                    };
                    mode = format!("{bits:04o}");
                }
                "--from" => {
                    return self
                        .fail(format!("{keyword} --from needs a multi-stage build, which E2B does not support"));
                }
                "--link" => {}
                other => return self.fail(format!("{keyword} flag {other} is not supported")),
            }
        }
        if let Some(array) = json_array(&words.join(" ")) {
            words = array;
        }
        if words.len() < 2 {
            return self.fail(format!("{keyword} needs a source and a destination"));
        }
        let dest = self.substitute(words.last().expect("checked"));
        for source in &words[..words.len() - 1] {
            let source = self.substitute(source);
            if source.contains("://") {
                return self.fail(format!("{keyword} from a URL ({source}) is not supported; download it in a RUN"));
            }
            let normalized = normalize_source(&source).ok_or_else(|| DockerfileError {
                line: self.line,
                message: format!("{keyword} source {source:?} leaves the template directory"),
            })?;
            self.steps.push(PlannedStep {
                kind: "COPY",
                args: vec![normalized.clone(), dest.clone(), user.clone(), mode.clone()],
                copy_source: Some(normalized),
            });
        }
        Ok(())
    }

    fn substitute(&self, text: &str) -> String {
        let mut scope = self.args.clone();
        scope.extend(self.env.clone());
        substitute(text, &scope)
    }

    fn finish(mut self) -> Result<BuildPlan, DockerfileError> {
        let Some(from_image) = self.from_image.take() else {
            return Err(DockerfileError { line: 0, message: "no FROM instruction".into() });
        };
        // E2B's defaults when the Dockerfile names none (as its SDK does).
        if !self.user_set {
            self.step("USER", vec!["user".into()]);
        }
        if !self.workdir_set {
            self.step("WORKDIR", vec!["/home/user".into()]);
        }
        Ok(BuildPlan { from_image, steps: self.steps, start_cmd: self.start_cmd, skipped: self.skipped })
    }
}

/// Instructions with their first line number: continuation lines joined, comments dropped.
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, DockerfileError> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        // Comments (and parser directives, which we do not honour) are whole lines only, and
        // are dropped even inside a continuation.
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (content, continues) = match line.strip_suffix('\\') {
            Some(content) => (content, true),
            None => (line, false),
        };
        let entry = current.get_or_insert_with(|| (index + 1, String::new()));
        if !entry.1.is_empty() && !content.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(content.trim());
        if !continues {
            out.extend(current.take().filter(|(_, text)| !text.is_empty()));
        }
    }
    if let Some((line, _)) = current {
        return Err(DockerfileError { line, message: "the last instruction ends with a line continuation".into() });
    }
    Ok(out)
}

/// `["a", "b"]` → words; `None` when it is not a JSON array of strings (the shell form).
fn json_array(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    text.starts_with('[').then(|| serde_json::from_str(text).ok()).flatten()
}

/// Whitespace-separated words, with single and double quotes grouping (and removed) and `\`
/// escaping the next character outside single quotes.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}` from `scope`; `\$` stays
/// a literal `$`. Unknown names become empty, as in Docker.
fn substitute(text: &str, scope: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => out.push(chars.next().expect("peeked")),
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let (name, modifier) = match inner.find(':') {
                    Some(at) => (&inner[..at], Some(&inner[at + 1..])),
                    None => (inner.as_str(), None),
                };
                let value = scope.get(name).filter(|v| !v.is_empty());
                match (modifier.and_then(|m| m.split_at_checked(1)), value) {
                    (Some(("-", default)), None) => out.push_str(default),
                    (Some(("+", alternative)), Some(_)) => out.push_str(alternative),
                    (Some(("+", _)), None) => {}
                    (_, value) => out.push_str(value.map_or("", String::as_str)),
                }
            }
            '$' if chars.peek().is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') => {
                let mut name = String::new();
                while let Some(&c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                    name.push(c);
                    chars.next();
                }
                out.push_str(scope.get(&name).map_or("", String::as_str));
            }
            c => out.push(c),
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// A COPY source relative to the template directory, `.`-free; `None` if it leaves it.
fn normalize_source(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(if parts.is_empty() { ".".to_owned() } else { parts.join("/") })
}

/// `word` quoted for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c)) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn shell_join(words: &[String]) -> String {
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// Whether template file `path` is matched by the COPY source `source` (a file, a directory,
/// `.` for everything, or a last component with `*` / `?` wildcards).
pub fn source_matches(source: &str, path: &str) -> bool {
    if source == "." || source == path || path.strip_prefix(source).is_some_and(|rest| rest.starts_with('/')) {
        return true;
    }
    let (dir, pattern) = source.rsplit_once('/').unwrap_or(("", source));
    if !pattern.contains(['*', '?']) {
        return false;
    }
    let (path_dir, rest) = match dir {
        "" => ("", path),
        dir => match path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => (dir, rest),
            None => return false,
        },
    };
    let _ = path_dir;
    // The pattern matches a name in `dir`; a matched directory brings everything under it.
    let name = rest.split('/').next().unwrap_or(rest);
    wildcard(pattern.as_bytes(), name.as_bytes())
}

fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&pattern[1..], name) || (!name.is_empty() && wildcard(pattern, &name[1..])),
        (Some(b'?'), Some(_)) => wildcard(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard(&pattern[1..], &name[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_and_args(plan: &BuildPlan) -> Vec<(&str, Vec<&str>)> {
        plan.steps.iter().map(|s| (s.kind, s.args.iter().map(String::as_str).collect())).collect()
    }

    #[test]
    fn the_worker_dockerfile_converts_keeping_shell_and_args() {
        let text = include_str!("../../../../templates/worker/Dockerfile");
        let plan = plan(text).unwrap();
        assert_eq!(plan.from_image, "ubuntu:22.04");
        let steps = kinds_and_args(&plan);
        assert_eq!(steps[0], ("USER", vec!["root"]));
        assert_eq!(steps[1], ("WORKDIR", vec!["/"]));
        let runs: Vec<&str> = plan.steps.iter().filter(|s| s.kind == "RUN").map(|s| s.args[0].as_str()).collect();
        assert_eq!(runs.len(), 4);
        // SHELL ["/bin/bash", "-o", "pipefail", "-c"] wraps every RUN, with the ARGs exported.
        assert!(
            runs[0].starts_with("/bin/bash -o pipefail -c 'export DEBIAN_FRONTEND=noninteractive\napt-get update"),
            "{}",
            runs[0]
        );
        assert!(runs[1].contains("export DEBIAN_FRONTEND=noninteractive NODE_MAJOR=20"), "{}", runs[1]);
        assert!(runs[2].contains("CLAUDE_CODE_VERSION=2.0.77"), "{}", runs[2]);
        // No ARG became an ENV step.
        assert!(!steps.iter().any(|(kind, _)| *kind == "ENV"));
        assert_eq!(steps[steps.len() - 2], ("WORKDIR", vec!["/workspace"]));
        assert_eq!(steps[steps.len() - 1], ("USER", vec!["user"]));
    }

    #[test]
    fn copy_env_and_substitution() {
        let text = "ARG BASE=python:3.12\nFROM ${BASE}\nARG DIR=/opt/app\nENV APP_HOME=$DIR MODE=\"prod mode\"\n\
                    COPY --chown=user:user --chmod=755 scripts/ ./conf/*.toml ${APP_HOME}/\n\
                    # a comment\nRUN echo \"$APP_HOME\" \\\n  && true\nCMD [\"python\", \"-m\", \"app\"]\nEXPOSE 80\n";
        let plan = plan(text).unwrap();
        assert_eq!(plan.from_image, "python:3.12");
        let steps = kinds_and_args(&plan);
        assert_eq!(steps[2], ("ENV", vec!["APP_HOME", "/opt/app", "MODE", "prod mode"]));
        assert_eq!(steps[3], ("COPY", vec!["scripts", "/opt/app/", "user", "0755"]));
        assert_eq!(steps[4], ("COPY", vec!["conf/*.toml", "/opt/app/", "user", "0755"]));
        assert_eq!(plan.steps[3].copy_source.as_deref(), Some("scripts"));
        assert_eq!(steps[5], ("RUN", vec!["export DIR=/opt/app\necho \"$APP_HOME\" && true"]));
        assert_eq!(plan.start_cmd.as_deref(), Some("python -m app"));
        assert_eq!(plan.skipped.len(), 1);
        // E2B's defaults close a Dockerfile that set neither.
        assert_eq!(steps[steps.len() - 2], ("USER", vec!["user"]));
        assert_eq!(steps[steps.len() - 1], ("WORKDIR", vec!["/home/user"]));
    }

    #[test]
    fn unsupported_constructs_fail_with_their_line() {
        let error = plan("FROM a\nFROM b\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("multi-stage"));
        assert!(plan("FROM a\nCOPY --from=x /a /b\n").unwrap_err().message.contains("--from"));
        assert!(plan("FROM a\nADD https://x/y.tgz /y\n").unwrap_err().message.contains("URL"));
        assert!(plan("FROM a\nCOPY ../secret /x\n").unwrap_err().message.contains("leaves"));
        assert!(plan("RUN x\n").unwrap_err().message.contains("before FROM"));
        assert!(plan("FROM a\nRUN x \\\n").unwrap_err().message.contains("continuation"));
        assert!(plan("FROM a\nFROBNICATE\n").unwrap_err().message.contains("FROBNICATE"));
        assert_eq!(plan("").unwrap_err().message, "no FROM instruction");
    }

    #[test]
    fn copy_sources_match_files_dirs_and_wildcards() {
        assert!(source_matches(".", "a/b"));
        assert!(source_matches("scripts", "scripts/x.sh"));
        assert!(!source_matches("scripts", "scripts2/x.sh"));
        assert!(source_matches("setup.sh", "setup.sh"));
        assert!(source_matches("conf/*.toml", "conf/a.toml"));
        assert!(!source_matches("conf/*.toml", "conf/a.json"));
        assert!(source_matches("*.sh", "run.sh"));
        assert!(source_matches("s?ripts", "scripts/x"));
    }

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(shell_quote("plain-word_1.0"), "plain-word_1.0");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let output =
            std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote("a 'b' $c"))).output();
        if let Ok(output) = output {
            assert_eq!(output.stdout, b"a 'b' $c");
        }
    }
}
