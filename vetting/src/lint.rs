//! The Dockerfile syntax lint the template builder runs before it stores or builds a template: the
//! mistakes that make a build fail or drift (no `FROM`, unknown instructions, a dangling `\`, empty
//! `RUN`/`COPY`, broken exec-form JSON, untagged or `latest` base images). Style is hadolint's job.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::dockerfile::{BasePin, base_pin, exec_form, parse_from};
use crate::logical::{self, Mode, Segment, is_instruction};

/// One problem, at a 1-based line (0 when it concerns the whole file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LintIssue {
    pub line: u32,
    pub message: String,
}

/// Lints a whole Dockerfile. An empty result means the file is well-formed.
pub fn lint_dockerfile(text: &str) -> Vec<LintIssue> {
    let escape = escape_directive(text);
    let segments = text.lines().enumerate().map(|(index, line)| Segment {
        line: index as u32 + 1,
        text: line.strip_suffix('\r').unwrap_or(line),
        added: true,
    });
    let logicals = logical::build(segments, Mode::Dockerfile, false, escape);
    let mut issues = Vec::new();
    let mut issue = |line: u32, message: String| issues.push(LintIssue { line, message });
    let mut seen_from = false;
    let mut stages: HashSet<String> = HashSet::new();
    let mut global_args: HashMap<String, String> = HashMap::new();

    for logical in &logicals {
        let keyword = logical.keyword.clone().unwrap_or_default();
        let line = logical.first_line();
        if !is_instruction(&keyword) {
            issue(line, format!("unknown instruction \"{keyword}\""));
            continue;
        }
        if logical.unterminated {
            let last = logical.segments.last().map_or(line, |s| s.line);
            issue(
                last,
                format!(
                    "{keyword} never ends: a line continuation ({escape}) or heredoc is still open at the end of the file"
                ),
            );
        }
        let args = logical.text.trim();
        if args.is_empty() {
            issue(line, format!("{keyword} has no arguments"));
            continue;
        }
        if !seen_from && keyword != "FROM" && keyword != "ARG" {
            issue(line, format!("{keyword} comes before the first FROM; only ARG may precede FROM"));
        }
        let without_flags = strip_flags(args);
        match keyword.as_str() {
            "FROM" => {
                seen_from = true;
                let Some(from) = parse_from(args) else { continue };
                match base_pin(&from.image, &stages, &global_args) {
                    (BasePin::Latest, image) => {
                        issue(line, format!("FROM {image} uses the moving tag \"latest\"; pin a version"))
                    }
                    (BasePin::Untagged, image) => {
                        issue(line, format!("FROM {image} has no tag or digest, which means \"latest\"; pin a version"))
                    }
                    _ => {}
                }
                stages.extend(from.stage);
            }
            "ARG" if !seen_from => {
                for word in args.split_whitespace() {
                    if let Some((name, value)) = word.split_once('=') {
                        global_args.insert(name.to_string(), value.trim_matches(['"', '\'']).to_string());
                    }
                }
            }
            "ONBUILD" => {
                let inner = args.split_whitespace().next().unwrap_or("");
                if !is_instruction(inner)
                    || matches!(inner.to_ascii_uppercase().as_str(), "ONBUILD" | "FROM" | "MAINTAINER")
                {
                    issue(line, format!("ONBUILD cannot trigger \"{inner}\""));
                }
            }
            _ => {}
        }
        if matches!(keyword.as_str(), "RUN" | "CMD" | "ENTRYPOINT" | "SHELL" | "COPY" | "ADD" | "VOLUME")
            && let Some(problem) = json_problem(&keyword, without_flags)
        {
            issue(line, problem);
        }
        if matches!(keyword.as_str(), "COPY" | "ADD")
            && exec_form(without_flags).is_none()
            && !without_flags.contains("<<")
            && without_flags.split_whitespace().count() < 2
        {
            issue(line, format!("{keyword} needs at least one source and a destination"));
        }
    }
    if !seen_from {
        issue(
            0,
            "no FROM instruction: a Dockerfile must start from a base image (only ARG may come before FROM)"
                .to_string(),
        );
    }
    issues
}

/// `RUN --mount=… cmd` → `cmd`.
fn strip_flags(args: &str) -> &str {
    let mut rest = args.trim_start();
    while rest.starts_with("--") {
        rest = rest.split_once(char::is_whitespace).map_or("", |(_, after)| after.trim_start());
    }
    rest
}

/// Why exec-form arguments are malformed, if they are. Shell-form text that merely starts with `[`
/// (`RUN [ -f x ] && …`, a `test` command) is not exec form: a JSON-looking start is required, i.e.
/// a quote right after `[`, or a comma.
fn json_problem(keyword: &str, args: &str) -> Option<String> {
    if keyword == "SHELL" {
        return exec_form(args)
            .is_none()
            .then(|| "SHELL needs a JSON array of strings, e.g. [\"/bin/bash\", \"-c\"]".into());
    }
    let body = args.strip_prefix('[')?;
    if exec_form(args).is_some() {
        return None;
    }
    let starts_quoted = body.starts_with(['"', '\'']);
    let after_space = body.trim_start();
    let looks_json = starts_quoted || (after_space.starts_with(['"', '\'']) && body.contains(','));
    looks_json.then(|| {
        format!(
            "{keyword} arguments look like a JSON array (exec form) but are not valid JSON; use double quotes and commas: [\"a\", \"b\"]"
        )
    })
}

/// The `# escape=` parser directive (only at the very top of the file); `\` by default.
fn escape_directive(text: &str) -> char {
    for line in text.lines() {
        let Some(comment) = line.trim().strip_prefix('#') else { break };
        let Some((key, value)) = comment.split_once('=') else { break };
        if key.trim().eq_ignore_ascii_case("escape") {
            return if value.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<u32> {
        lint_dockerfile(text).into_iter().map(|issue| issue.line).collect()
    }

    #[test]
    fn the_real_templates_are_clean() {
        let worker = include_str!("../../templates/worker/Dockerfile");
        let infrastructure = include_str!("../../templates/infrastructure/Dockerfile");
        assert_eq!(lint_dockerfile(worker), vec![]);
        assert_eq!(lint_dockerfile(infrastructure), vec![]);
    }

    #[test]
    fn reports_each_syntax_problem_at_its_line() {
        assert_eq!(lines("ARG V=1\nFROM ubuntu:${V}\nRUN true\n"), Vec::<u32>::new());
        assert_eq!(lines("RUN true\n"), vec![1, 0]);
        assert_eq!(lines("FROM a:1\nRUNN true\n"), vec![2]);
        assert_eq!(lines("FROM a:1\nRUN true \\\n"), vec![2]);
        assert_eq!(lines("FROM a:1\nRUN\nCOPY\n"), vec![2, 3]);
        assert_eq!(lines("FROM a:1\nCOPY only-one\n"), vec![2]);
        assert_eq!(lines("FROM a:1\nCMD [\"a\" \"b\"]\nCMD ['a', 'b']\nRUN [ -f /x ] && echo ok\n"), vec![2, 3]);
        assert_eq!(lines("FROM a:1\nSHELL /bin/bash -c\n"), vec![2]);
        assert_eq!(lines("FROM ubuntu\nFROM ubuntu:latest\nFROM x@sha256:abc\nFROM scratch\n"), vec![1, 2]);
        assert_eq!(lines("FROM node:20 AS build\nFROM build\n"), Vec::<u32>::new());
    }

    #[test]
    fn heredocs_and_escape_directive() {
        assert_eq!(lines("FROM a:1\nRUN <<EOF\nset -e\necho hi\nEOF\n"), Vec::<u32>::new());
        assert_eq!(lines("# escape=`\nFROM a:1\nRUN echo a `\n    b\n"), Vec::<u32>::new());
    }
}
