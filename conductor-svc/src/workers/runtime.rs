//! How a worker's task becomes a process, and how its output becomes a summary.
//!
//! `claude`: the Claude Code CLI, non-interactive, stream-json output; its final `result` line is
//! the summary (cost and turns recorded). `shell`: the task is a bash script; the exit code and the
//! output tail are the summary.

use serde::Deserialize;

/// The task's process in the sandbox.
pub fn argv(runtime: &str, task: &str, max_turns: u32) -> Vec<String> {
    match runtime {
        "claude" => vec![
            "claude".into(),
            "-p".into(),
            task.into(),
            "--output-format".into(),
            "stream-json".into(),
            // Required with -p + stream-json, else the CLI exits 1.
            "--verbose".into(),
            "--max-turns".into(),
            max_turns.to_string(),
            // The sandbox is the permission boundary; inside it the agent acts without prompts.
            "--permission-mode".into(),
            "bypassPermissions".into(),
        ],
        _ => vec!["bash".into(), "-c".into(), task.into()],
    }
}

/// Environment the runtime needs on top of the template's (never a credential: the broker injects those).
pub fn env(runtime: &str) -> Vec<(String, String)> {
    match runtime {
        // Lets bypass mode run where the sandbox user is root (E2B images may be).
        "claude" => vec![("IS_SANDBOX".into(), "1".into())],
        _ => Vec::new(),
    }
}

/// Bytes of output kept for a shell worker's summary.
pub const TAIL_BYTES: usize = 2048;
/// Longest stdout line parsed as stream-json; longer lines (huge tool results) are skipped.
const MAX_LINE_BYTES: usize = 1 << 20;

/// What the output told us so far.
#[derive(Debug, Default)]
pub struct OutputDigest {
    runtime_is_claude: bool,
    /// Last [`TAIL_BYTES`] of stdout and stderr interleaved, as produced.
    tail: Vec<u8>,
    /// Incomplete stdout line (claude only), bounded by [`MAX_LINE_BYTES`].
    line: Vec<u8>,
    skipping_long_line: bool,
    pub result: Option<ClaudeResult>,
}

/// The CLI's final `{"type":"result",…}` line.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ClaudeResult {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub result: String,
    #[serde(default)]
    pub num_turns: u32,
    #[serde(default)]
    pub total_cost_usd: f64,
    #[serde(default)]
    pub errors: Vec<String>,
}

impl OutputDigest {
    pub fn new(runtime: &str) -> OutputDigest {
        OutputDigest { runtime_is_claude: runtime == "claude", ..OutputDigest::default() }
    }

    pub fn push(&mut self, data: &[u8], is_stdout: bool) {
        self.tail.extend_from_slice(data);
        if self.tail.len() > TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
        }
        if self.runtime_is_claude && is_stdout {
            self.push_stdout_lines(data);
        }
    }

    fn push_stdout_lines(&mut self, mut data: &[u8]) {
        while let Some(newline) = data.iter().position(|&b| b == b'\n') {
            if !self.skipping_long_line {
                self.line.extend_from_slice(&data[..newline]);
                let line = std::mem::take(&mut self.line);
                self.parse_line(&line);
            }
            self.skipping_long_line = false;
            data = &data[newline + 1..];
        }
        if !self.skipping_long_line {
            self.line.extend_from_slice(data);
            if self.line.len() > MAX_LINE_BYTES {
                self.line.clear();
                self.skipping_long_line = true;
            }
        }
    }

    fn parse_line(&mut self, line: &[u8]) {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
        }
        if serde_json::from_slice::<Kind>(line).is_ok_and(|k| k.kind == "result")
            && let Ok(result) = serde_json::from_slice::<ClaudeResult>(line)
        {
            self.result = Some(result);
        }
    }

    /// The output tail as text (lossy UTF-8), trimmed.
    pub fn tail(&self) -> String {
        String::from_utf8_lossy(&self.tail).trim().to_owned()
    }

    /// The summary once the process exited with `exit_code`.
    pub fn summary(&mut self, exit_code: i32) -> String {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.parse_line(&line);
        }
        match &self.result {
            Some(result) if !result.result.is_empty() => result.result.clone(),
            Some(result) if !result.errors.is_empty() => result.errors.join("; "),
            Some(result) => format!("Claude Code ended: {}", result.subtype),
            None if self.runtime_is_claude => {
                format!("exit code {exit_code}; no result line. Output tail:\n{}", self.tail())
            }
            None => {
                let tail = self.tail();
                if tail.is_empty() {
                    format!("exit code {exit_code}; no output")
                } else {
                    format!("exit code {exit_code}. Output tail:\n{tail}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_result_line_is_the_summary_even_split_across_chunks() {
        let mut digest = OutputDigest::new("claude");
        let output = concat!(
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
            "\n",
            r#"{"type":"result","subtype":"success","is_error":false,"result":"Installed jq.","num_turns":3,"total_cost_usd":0.0123}"#,
            "\n"
        );
        for chunk in output.as_bytes().chunks(7) {
            digest.push(chunk, true);
        }
        assert_eq!(digest.summary(0), "Installed jq.");
        let result = digest.result.unwrap();
        assert_eq!((result.num_turns, result.total_cost_usd), (3, 0.0123));
    }

    #[test]
    fn shell_summary_is_exit_code_and_bounded_tail() {
        let mut digest = OutputDigest::new("shell");
        digest.push(&vec![b'x'; 10_000], true);
        digest.push(b"\nlast line\n", false);
        let summary = digest.summary(3);
        assert!(summary.starts_with("exit code 3."), "{summary}");
        assert!(summary.ends_with("last line"));
        assert!(summary.len() < TAIL_BYTES + 64);
    }

    #[test]
    fn argv_per_runtime() {
        assert_eq!(argv("shell", "echo hi", 5), ["bash", "-c", "echo hi"]);
        let claude = argv("claude", "do it", 7);
        assert_eq!(&claude[..3], ["claude", "-p", "do it"]);
        assert!(claude.windows(2).any(|w| w == ["--output-format", "stream-json"]));
        assert!(claude.contains(&"--verbose".to_owned()));
    }
}
