//! Deterministic vetting of a pull request against the worker-template repository, and the Dockerfile
//! syntax lint the template builder runs.
//!
//! The conductor runs [`vet_diff`] on every infrastructure worker's PR before a human sees it: secrets,
//! package installs checked against shipped name lists (`vetting/data/*.txt`), risky Dockerfile
//! patterns, and the PR's scope. A [`Severity::Block`] finding rejects the PR outright; nothing lifts
//! it. Without one the PR still goes to a human ([`Verdict::NeedsHuman`]): there is no auto-approve.
//! The crate is pure (no I/O, no clock), so the same diff always gives the same findings.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

mod diff;
mod dockerfile;
mod downloads;
mod known;
mod lint;
mod logical;
mod packages;
mod rules;
mod scope;
mod secrets;
mod shell;
mod typosquat;

pub use known::Ecosystem;
pub use lint::{LintIssue, lint_dockerfile};

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The PR is rejected; no approval can lift it.
    Block,
    /// A human reviewer should look at this.
    Warn,
}

/// One result of the checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id, e.g. `secret.github-token`, `package.typosquat`, `dockerfile.curl-pipe-shell`.
    pub rule: &'static str,
    pub severity: Severity,
    /// Path in the repository (the new path; the old one for a deletion; empty for the whole PR).
    pub file: String,
    /// Line in the new file; 0 when the finding is not about one line.
    pub line: u32,
    /// What was found and why it matters, in one sentence. At most [`MAX_MESSAGE_CHARS`].
    pub message: String,
    /// The offending text with every secret masked. At most [`MAX_EVIDENCE_CHARS`].
    pub evidence: String,
}

/// The outcome of vetting. There is deliberately no "approve" variant: a clean PR still needs a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// At least one blocking finding.
    Reject,
    /// Nothing blocks; a human decides.
    NeedsHuman,
}

/// `Reject` iff any finding blocks.
pub fn verdict(findings: &[Finding]) -> Verdict {
    if findings.iter().any(|finding| finding.severity == Severity::Block) {
        Verdict::Reject
    } else {
        Verdict::NeedsHuman
    }
}

/// Evidence is one line of context for a reviewer, not a copy of the file: long lines (minified JSON,
/// base64 blobs) are cut to this many characters.
pub const MAX_EVIDENCE_CHARS: usize = 200;
/// Messages quote package names and hosts taken from the diff; this bounds them too.
pub const MAX_MESSAGE_CHARS: usize = 400;
/// Names and values quoted inside a message are cut to this many characters.
pub const MAX_QUOTED_CHARS: usize = 100;

/// What the checks accept, with defaults for the Agent Studio template repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VetOptions {
    /// Path prefixes (ending in `/`) and exact paths that belong to templates. Files elsewhere are
    /// reported (`scope.outside-template`, Warn).
    pub template_paths: Vec<String>,
    /// Hosts from which downloads (`curl | sh`, binaries, package sources, apt repositories) are only
    /// warned about instead of blocked. Exact host names; an entry starting with `.` also covers its
    /// subdomains (`.example.com`).
    pub download_allowlist: Vec<String>,
    /// More added plus removed lines than this blocks the PR (`scope.too-large`): a change that size
    /// cannot be reviewed by a human, which is the point of the review.
    pub max_changed_lines: usize,
    /// At most this many findings are returned; the rest are summarised in one `vetting.truncated`
    /// finding whose severity is the worst of those left out, so the verdict never changes. Bounds the
    /// report a reviewer and the LLM have to read.
    pub max_findings: usize,
}

impl Default for VetOptions {
    fn default() -> Self {
        VetOptions {
            template_paths: vec!["worker/".into(), "infrastructure/".into(), "README.md".into()],
            download_allowlist: [
                "deb.nodesource.com",
                "github.com",
                "objects.githubusercontent.com",
                "codeload.github.com",
                "registry.npmjs.org",
                "registry.yarnpkg.com",
                "pypi.org",
                "files.pythonhosted.org",
                "deb.debian.org",
                "security.debian.org",
                "archive.ubuntu.com",
                "security.ubuntu.com",
                "ports.ubuntu.com",
                "nodejs.org",
                "dl.google.com",
                "storage.googleapis.com",
                "playwright.azureedge.net",
                "cdn.playwright.dev",
                "download.docker.com",
                "apt.releases.hashicorp.com",
                "packages.microsoft.com",
                "static.rust-lang.org",
                "sh.rustup.rs",
                "go.dev",
                "dl.yarnpkg.com",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            max_changed_lines: 20_000,
            max_findings: 500,
        }
    }
}

impl VetOptions {
    /// Whether downloads from `host` are warned about rather than blocked. A host from a variable
    /// (`None`) is never allowed: nobody can review where it points.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let host = host.to_ascii_lowercase();
        self.download_allowlist.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            match entry.strip_prefix('.') {
                Some(domain) => host == domain || host.ends_with(&entry),
                None => host == entry,
            }
        })
    }
}

/// Runs every check on a unified diff (`git diff` / GitHub's diff format). Findings come sorted by
/// file, line and rule.
pub fn vet_diff(diff: &str, options: &VetOptions) -> Vec<Finding> {
    let parsed = diff::parse(diff);
    let mut report = Report::new(options);
    scope::check(&mut report, &parsed);
    for file in &parsed.files {
        rules::check_secrets(&mut report, file);
        match scope::kind(file) {
            scope::FileKind::Dockerfile => dockerfile::check(&mut report, file),
            scope::FileKind::Shell => rules::check_shell_file(&mut report, file),
            scope::FileKind::Requirements => rules::check_requirements_file(&mut report, file),
            scope::FileKind::Config => rules::check_config_file(&mut report, file),
            scope::FileKind::Documentation => {}
        }
    }
    report.finish()
}

/// Collects findings while the checks run; bounds and redacts their text.
pub(crate) struct Report<'o> {
    pub options: &'o VetOptions,
    findings: Vec<Finding>,
    /// Each distinct package name is looked up (and typosquat-searched) once per diff.
    names: HashMap<(Ecosystem, String), known::NameCheck>,
}

impl<'o> Report<'o> {
    fn new(options: &'o VetOptions) -> Self {
        Report { options, findings: Vec::new(), names: HashMap::new() }
    }

    /// Adds a finding. `evidence` is redacted, trimmed and cut to [`MAX_EVIDENCE_CHARS`].
    pub fn add(
        &mut self,
        rule: &'static str,
        severity: Severity,
        file: &str,
        line: u32,
        message: String,
        evidence: &str,
    ) {
        let evidence = bound(&secrets::redact(evidence.trim()), MAX_EVIDENCE_CHARS);
        let message = bound(&secrets::redact(&message), MAX_MESSAGE_CHARS);
        self.findings.push(Finding { rule, severity, file: file.to_string(), line, message, evidence });
    }

    /// Adds a finding whose evidence must hide `secret_span` (a byte range of `line_text`) even if the
    /// general redactor would not recognise it.
    pub fn add_secret(
        &mut self,
        rule: &'static str,
        file: &str,
        line: u32,
        message: String,
        line_text: &str,
        secret_span: (usize, usize),
    ) {
        let masked = secrets::redact_spans(line_text, vec![secret_span]);
        self.add(rule, Severity::Block, file, line, message, &masked);
    }

    pub fn check_name(&mut self, ecosystem: Ecosystem, name: &str) -> known::NameCheck {
        let key = (ecosystem, ecosystem.normalize(name));
        if let Some(check) = self.names.get(&key) {
            return check.clone();
        }
        let check = known::list(ecosystem).check(name);
        self.names.insert(key, check.clone());
        check
    }

    fn finish(mut self) -> Vec<Finding> {
        let order = |a: &Finding, b: &Finding| {
            (&a.file, a.line, a.rule, a.severity, &a.message).cmp(&(&b.file, b.line, b.rule, b.severity, &b.message))
        };
        self.findings.sort_by(order);
        self.findings
            .dedup_by(|a, b| a.file == b.file && a.line == b.line && a.rule == b.rule && a.message == b.message);
        let limit = self.options.max_findings.max(1);
        if self.findings.len() <= limit {
            return self.findings;
        }
        // Keep blocking findings first so the kept set explains the verdict, then restore the order.
        let mut all = std::mem::take(&mut self.findings);
        all.sort_by_key(|finding| finding.severity);
        let dropped = all.split_off(limit - 1);
        all.sort_by(order);
        let worst = dropped.iter().map(|f| f.severity).min().unwrap_or(Severity::Warn);
        all.push(Finding {
            rule: "vetting.truncated",
            severity: worst,
            file: String::new(),
            line: 0,
            message: format!(
                "{} more findings not shown (limit {}); the first of them: {}",
                dropped.len(),
                self.options.max_findings,
                bound(&dropped[0].message, MAX_QUOTED_CHARS)
            ),
            evidence: String::new(),
        });
        all
    }
}

/// Counts from parsing a diff without vetting it: for showing a PR's size, and the benchmark's
/// baseline (how much of `vet_diff`'s time is just reading the diff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    pub files: usize,
    pub hunks: usize,
    pub added_lines: usize,
    pub removed_lines: usize,
}

/// Parses `diff` (the same one-pass parser `vet_diff` uses) and counts what it holds.
pub fn diff_summary(diff: &str) -> DiffSummary {
    let parsed = diff::parse(diff);
    DiffSummary {
        files: parsed.files.len(),
        hunks: parsed.files.iter().map(|file| file.hunks.len()).sum(),
        added_lines: parsed.added,
        removed_lines: parsed.removed,
    }
}

/// How many names the shipped list for `ecosystem` holds (`vetting/data/*.txt`).
pub fn known_package_count(ecosystem: Ecosystem) -> usize {
    known::list(ecosystem).len()
}

/// Whether `name` is on the shipped list for `ecosystem` (PyPI names compared per PEP 503).
pub fn is_known_package(ecosystem: Ecosystem, name: &str) -> bool {
    known::list(ecosystem).contains(name)
}

/// `text` cut to `max` characters, with `…` marking the cut.
pub(crate) fn bound(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some(_) => {
            let cut = text.char_indices().nth(max.saturating_sub(1)).map_or(text.len(), |(index, _)| index);
            format!("{}…", &text[..cut])
        }
    }
}

/// A name or value from the diff, cut to [`MAX_QUOTED_CHARS`] for use inside a message.
pub(crate) fn quoted(text: &str) -> String {
    bound(text, MAX_QUOTED_CHARS)
}

#[cfg(test)]
mod tests;
