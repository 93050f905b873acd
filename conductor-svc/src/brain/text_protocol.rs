//! The seed's text protocol: a line `SPAWN_WORKER: <task>` or `SPAWN_INFRASTRUCTURE_WORKER: <task>`
//! in the **model's own reply** spawns a worker, so a chat model without tool support still works.
//!
//! Only ever applied to text a brain wrote. Worker output and PR text never pass through here
//! (they reach the brain as tool results), so a `SPAWN_…` line a sandbox printed spawns nothing.

use crate::store::WorkerKind;

/// A spawn the model asked for in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSpawn {
    pub kind: WorkerKind,
    pub task: String,
}

/// The spawn lines in `reply`, in order. A line counts only when the directive starts it (after
/// optional whitespace, `-`/`*` bullets or backticks), so prose that mentions the protocol does not.
pub fn parse_spawns(reply: &str) -> Vec<TextSpawn> {
    let mut spawns = Vec::new();
    let mut in_code_block = false;
    for line in reply.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            // A fenced block is an example the model is showing, not an instruction.
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        let line = trimmed.trim_start_matches(['-', '*', '`', ' ']);
        for (prefix, kind) in
            [("SPAWN_INFRASTRUCTURE_WORKER:", WorkerKind::Infrastructure), ("SPAWN_WORKER:", WorkerKind::Worker)]
        {
            if let Some(task) = line.strip_prefix(prefix) {
                let task = task.trim().trim_end_matches('`').trim();
                if !task.is_empty() {
                    spawns.push(TextSpawn { kind, task: task.to_owned() });
                }
                break;
            }
        }
    }
    spawns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_at_line_start_spawn_in_order() {
        let reply = "Sure.\nSPAWN_WORKER: run the tests\n  - SPAWN_INFRASTRUCTURE_WORKER: add jq\nDone.";
        assert_eq!(
            parse_spawns(reply),
            [
                TextSpawn { kind: WorkerKind::Worker, task: "run the tests".into() },
                TextSpawn { kind: WorkerKind::Infrastructure, task: "add jq".into() },
            ]
        );
    }

    #[test]
    fn mentions_code_blocks_and_empty_tasks_spawn_nothing() {
        let reply = "I could write SPAWN_WORKER: x in a line.\n```\nSPAWN_WORKER: example\n```\nSPAWN_WORKER:   \n";
        assert!(parse_spawns(reply).is_empty());
    }
}
