//! The tools Stu's brain may call. None of them approves, merges or touches credentials: those
//! are human-only RPCs, and a test asserts this list never grows such a tool.

use serde_json::json;

use super::ToolSpec;

pub const SPAWN_WORKER: &str = "spawn_worker";
pub const SPAWN_INFRASTRUCTURE_WORKER: &str = "spawn_infrastructure_worker";
pub const REMEMBER: &str = "remember";
pub const RECALL: &str = "recall";
pub const LIST_CAPABILITIES: &str = "list_capabilities";
pub const WORKER_STATUS: &str = "worker_status";
pub const SHOW_CHANGE: &str = "show_change";
pub const INFRASTRUCTURE_STATUS: &str = "infrastructure_status";
pub const TEMPLATE_VERSIONS: &str = "template_versions";

/// Every tool, in the order models see them.
pub fn all() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: SPAWN_WORKER,
            description: "Start a worker: a coding agent in a fresh sandbox from the active worker template. \
                          Give it one self-contained task. Returns when the worker finishes, with its exit code \
                          and a summary of what it did.",
            input_schema: json!({
                "type": "object",
                "properties": {"task": {"type": "string", "description": "What the worker must do, self-contained."}},
                "required": ["task"]
            }),
        },
        ToolSpec {
            name: SPAWN_INFRASTRUCTURE_WORKER,
            description: "Start an infrastructure worker: it gets a checkout of the worker-template repository \
                          (no credentials, no remote) and may change it, e.g. install a tool in the worker \
                          Dockerfile. Its change becomes a pull request that is vetted and needs human approval. \
                          Use only when workers lack a capability the user needs.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "task": {"type": "string", "description": "The template change or analysis to make."},
                    "title": {"type": "string", "description": "Title of the pull request, if the worker changes files."}
                },
                "required": ["task"]
            }),
        },
        ToolSpec {
            name: REMEMBER,
            description: "Store a fact in long-term memory under a short key (overwrites that key).",
            input_schema: json!({
                "type": "object",
                "properties": {"key": {"type": "string"}, "content": {"type": "string"}},
                "required": ["key", "content"]
            }),
        },
        ToolSpec {
            name: RECALL,
            description: "Search long-term memory; an empty query lists everything.",
            input_schema: json!({
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": []
            }),
        },
        ToolSpec {
            name: LIST_CAPABILITIES,
            description: "What workers can do now, the active template versions, and since which version each \
                          capability exists.",
            input_schema: json!({"type": "object", "properties": {}, "required": []}),
        },
        ToolSpec {
            name: WORKER_STATUS,
            description: "State, exit code and summary of one worker (by id), or of the recent workers when no id is given.",
            input_schema: json!({
                "type": "object",
                "properties": {"worker_id": {"type": "string"}},
                "required": []
            }),
        },
        ToolSpec {
            name: SHOW_CHANGE,
            description: "Show a template pull request: its diff, the vetting findings and verdict, and its state. \
                          Without pr_number, the latest one of this conversation.",
            input_schema: json!({
                "type": "object",
                "properties": {"pr_number": {"type": "integer"}},
                "required": []
            }),
        },
        ToolSpec {
            name: INFRASTRUCTURE_STATUS,
            description: "Whether infrastructure workers are enabled: the infrastructure template and the code host \
                          (local-git or GitHub) the broker is configured with.",
            input_schema: json!({"type": "object", "properties": {}, "required": []}),
        },
        ToolSpec {
            name: TEMPLATE_VERSIONS,
            description: "Versions of a template (default: worker), newest first, the active one marked, with the \
                          pull request each came from.",
            input_schema: json!({
                "type": "object",
                "properties": {"template": {"type": "string"}},
                "required": []
            }),
        },
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_tool_approves_merges_or_builds() {
        for tool in super::all() {
            for forbidden in ["approve", "merge", "build", "promote", "credential", "token"] {
                assert!(!tool.name.contains(forbidden), "{} must stay a human-only action", tool.name);
            }
        }
    }
}
