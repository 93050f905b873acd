//! `cargo bench -p agentstudio-vetting`: how long `vet_diff` takes on realistic Dockerfile diffs of
//! 1,000 / 10,000 / 20,000 added lines, whether the cost grows linearly, and how it compares with
//! merely parsing the same diff. Goal: the 10k-line median at or under 50 ms, and linear growth.

use std::hint::black_box;
use std::time::{Duration, Instant};

use vetting::{VetOptions, diff_summary, vet_diff};

const APT: &[&str] = &[
    "ca-certificates",
    "curl",
    "git",
    "gnupg",
    "jq",
    "unzip",
    "wget",
    "build-essential",
    "libnss3",
    "libgbm1",
    "fonts-noto-color-emoji",
    "xvfb",
    "python3-venv",
    "ripgrep",
    "shellcheck",
    "libxkbcommon0",
];
const PIP: &[&str] = &["requests==2.32.3", "numpy==2.1.3", "pandas==2.2.3", "python-dateutil==2.9.0", "pytest==8.3.3"];
const NPM: &[&str] = &["typescript@5.6.3", "playwright@1.49.1", "express@4.21.2", "lodash@4.17.21", "prettier@3.3.3"];

/// A new-file Dockerfile diff with exactly `lines` added lines: comments, ARG/ENV, and RUN
/// instructions whose package lists continue over many lines, plus a few findings every ~400 lines
/// (a typosquat, an unknown package, a `curl | sh`).
fn dockerfile_diff(lines: usize) -> String {
    let mut body: Vec<String> = vec!["FROM ubuntu:22.04".into()];
    let mut block = 0;
    while body.len() < lines {
        block += 1;
        body.push(format!("# block {block}: tools for step {block}"));
        body.push(format!("ARG TOOL_VERSION_{block}=1.{block}.0"));
        body.push(format!("ENV APP_HOME_{block}=/opt/app{block}"));
        body.push("RUN apt-get update \\".into());
        body.push("    && apt-get install -y --no-install-recommends \\".into());
        for package in APT.iter().cycle().skip(block).take(12) {
            body.push(format!("        {package} \\"));
        }
        body.push("    && rm -rf /var/lib/apt/lists/*".into());
        body.push("RUN pip install --no-cache-dir \\".into());
        for package in PIP {
            body.push(format!("        {package} \\"));
        }
        body.push("    && pip cache purge".into());
        body.push("RUN npm install -g \\".into());
        for package in NPM {
            body.push(format!("        {package} \\"));
        }
        if block % 12 == 0 {
            body.push("        expres@4.0.0 \\".into());
            body.push("        malicious-package@1.0.0 \\".into());
        }
        body.push("    && npm cache clean --force".into());
        if block % 12 == 6 {
            body.push("RUN curl -fsSL https://get.example.com/install.sh | bash".into());
        }
        body.push(String::new());
    }
    body.truncate(lines - 1);
    // End on a complete instruction.
    while body.last().is_some_and(|line| line.ends_with('\\')) {
        body.pop();
    }
    while body.len() < lines - 1 {
        body.push("# padding".into());
    }
    body.push("USER user".into());
    let mut diff = format!(
        "diff --git a/worker/Dockerfile b/worker/Dockerfile\nnew file mode 100644\nindex 0000000..1111111\n--- /dev/null\n+++ b/worker/Dockerfile\n@@ -0,0 +1,{} @@\n",
        body.len()
    );
    for line in &body {
        diff.push('+');
        diff.push_str(line);
        diff.push('\n');
    }
    diff
}

fn sample(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

fn main() {
    let options = VetOptions::default();
    println!("vet_diff benchmark — goal: 10k-line median ≤ 50 ms, linear");
    println!(
        "{:>7} {:>5} {:>10} {:>9} {:>12} {:>9} {:>15} {:>10}",
        "lines", "runs", "median ms", "p99 ms", "µs per line", "findings", "parse median ms", "vet/parse"
    );
    let mut per_line = Vec::new();
    for (lines, runs) in [(1_000, 300), (10_000, 60), (20_000, 40)] {
        let diff = dockerfile_diff(lines);
        assert_eq!(diff_summary(&diff).added_lines, lines);
        let findings = vet_diff(&diff, &options).len();
        let vet = sample(runs, || {
            black_box(vet_diff(black_box(&diff), &options));
        });
        let parse = sample(runs, || {
            black_box(diff_summary(black_box(&diff)));
        });
        let median = percentile(&vet, 0.5);
        let parse_median = percentile(&parse, 0.5);
        per_line.push(median / lines as f64);
        println!(
            "{lines:>7} {runs:>5} {median:>10.2} {:>9.2} {:>12.2} {findings:>9} {parse_median:>15.3} {:>10.1}",
            percentile(&vet, 0.99),
            median * 1e3 / lines as f64,
            median / parse_median
        );
    }
    println!("per-line cost ratio 20k/1k: {:.2} (linear ≈ 1.0)", per_line[2] / per_line[0]);
}
