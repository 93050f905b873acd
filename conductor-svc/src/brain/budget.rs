//! Keeps a conversation within a model's context budget by forgetting its oldest turns, without
//! breaking the shape both APIs insist on: the history starts with a user turn and every tool
//! result follows the tool call it answers.
//!
//! Token counts are estimates (about four characters per token plus a per-block overhead), good
//! enough to stay clear of a limit, not to bill by. The system prompt and tool specs are not part
//! of `messages`: leave room for them when choosing the budget.

use std::collections::HashMap;

use super::{Block, ChatMessage, Role};

/// Tokens a message costs beyond its blocks (role, separators).
const MESSAGE_OVERHEAD_TOKENS: usize = 4;
/// Tokens a block costs beyond its text (type tags, ids, JSON punctuation).
const BLOCK_OVERHEAD_TOKENS: usize = 8;
const CHARS_PER_TOKEN: usize = 4;

/// Estimated tokens of one message.
pub fn estimate_tokens(message: &ChatMessage) -> usize {
    let blocks: usize = message
        .content
        .iter()
        .map(|block| {
            let chars = match block {
                Block::Text { text } => text.len(),
                Block::ToolUse { id, name, input } => id.len() + name.len() + input.to_string().len(),
                Block::ToolResult { tool_use_id, content, .. } => tool_use_id.len() + content.len(),
            };
            chars.div_ceil(CHARS_PER_TOKEN) + BLOCK_OVERHEAD_TOKENS
        })
        .sum();
    blocks + MESSAGE_OVERHEAD_TOKENS
}

/// Drops the oldest messages until the estimate is within `budget_tokens`.
///
/// The kept history always starts with a user message that answers no dropped tool call, so a
/// tool call and its result are dropped together. It always includes the last user message (and
/// so the whole tool loop leading to it), even when that alone exceeds the budget. A history with
/// no such starting point is left as it is.
pub fn trim_to_budget(messages: &mut Vec<ChatMessage>, budget_tokens: usize) {
    let Some(last_user) = messages.iter().rposition(|message| message.role == Role::User) else {
        return;
    };
    let starts = valid_starts(messages);
    // Every message from index i on: suffix sums let each start be checked in O(1).
    let mut suffix_tokens = vec![0; messages.len() + 1];
    for index in (0..messages.len()).rev() {
        suffix_tokens[index] = suffix_tokens[index + 1] + estimate_tokens(&messages[index]);
    }
    let mut candidates = (0..=last_user).filter(|&index| starts[index]);
    let start =
        candidates.clone().find(|&index| suffix_tokens[index] <= budget_tokens).or_else(|| candidates.next_back());
    if let Some(start) = start {
        messages.drain(..start);
    }
}

/// `starts[i]`: the history may begin at message `i`: a user message, with every tool result at
/// or after `i` answering a tool call at or after `i`.
fn valid_starts(messages: &[ChatMessage]) -> Vec<bool> {
    let mut call_position = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        for block in &message.content {
            if let Block::ToolUse { id, .. } = block {
                call_position.entry(id.as_str()).or_insert(index);
            }
        }
    }
    // earliest_call[i]: the earliest tool call any result at or after i answers.
    let mut earliest_call = vec![usize::MAX; messages.len() + 1];
    for index in (0..messages.len()).rev() {
        let here = messages[index]
            .content
            .iter()
            .filter_map(|block| match block {
                // A result whose call is nowhere in the history is already orphaned; trimming
                // cannot fix or worsen it.
                Block::ToolResult { tool_use_id, .. } => call_position.get(tool_use_id.as_str()).copied(),
                _ => None,
            })
            .min()
            .unwrap_or(usize::MAX);
        earliest_call[index] = earliest_call[index + 1].min(here);
    }
    messages
        .iter()
        .enumerate()
        .map(|(index, message)| message.role == Role::User && earliest_call[index] >= index)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::user_text(text)
    }

    fn assistant(text: &str) -> ChatMessage {
        ChatMessage { role: Role::Assistant, content: vec![Block::text(text)] }
    }

    fn tool_call(id: &str) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            content: vec![Block::ToolUse { id: id.into(), name: "spawn_worker".into(), input: json!({"task": "x"}) }],
        }
    }

    fn tool_result(id: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: vec![Block::ToolResult { tool_use_id: id.into(), content: content.into(), is_error: false }],
        }
    }

    fn total(messages: &[ChatMessage]) -> usize {
        messages.iter().map(estimate_tokens).sum()
    }

    fn texts(messages: &[ChatMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|message| match &message.content[0] {
                Block::Text { text } => text.clone(),
                Block::ToolUse { id, .. } => format!("call {id}"),
                Block::ToolResult { tool_use_id, .. } => format!("result {tool_use_id}"),
            })
            .collect()
    }

    #[test]
    fn estimates_about_four_chars_per_token_and_count_json_by_its_serialized_length() {
        assert_eq!(estimate_tokens(&user(&"a".repeat(400))), 100 + BLOCK_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS);
        let big_input = ChatMessage {
            role: Role::Assistant,
            content: vec![Block::ToolUse {
                id: String::new(),
                name: String::new(),
                input: json!({"k": "v".repeat(790)}),
            }],
        };
        // {"k":"vvv…"} is 798 characters → 200 tokens.
        assert_eq!(estimate_tokens(&big_input), 200 + BLOCK_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS);
    }

    #[test]
    fn a_history_within_budget_is_untouched() {
        let mut messages = vec![user("hi"), assistant("hello"), user("how are you")];
        let before = messages.clone();
        trim_to_budget(&mut messages, 10_000);
        assert_eq!(messages, before);
    }

    #[test]
    fn the_oldest_turns_go_first_and_the_result_starts_with_a_user_turn() {
        let long = "x".repeat(400); // 112 tokens a message
        let mut messages = vec![user(&long), assistant(&long), user(&long), assistant(&long), user("latest")];
        trim_to_budget(&mut messages, 250);
        assert_eq!(texts(&messages), vec![long.clone(), long, "latest".to_owned()]);
        assert_eq!(messages[0].role, Role::User);
        assert!(total(&messages) <= 250);
    }

    #[test]
    fn the_last_user_message_stays_even_over_budget() {
        let mut messages = vec![user("old"), assistant("reply"), user(&"y".repeat(4000))];
        trim_to_budget(&mut messages, 10);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].text().len(), 4000);
    }

    #[test]
    fn a_tool_result_never_outlives_its_call() {
        let big = "z".repeat(2000);
        let mut messages =
            vec![user("start"), tool_call("a"), tool_result("a", &big), assistant("done"), user("next question")];
        // Starting at the tool result would fit, but its call would be gone: it must go too.
        trim_to_budget(&mut messages, 560);
        assert_eq!(texts(&messages), vec!["next question"]);
    }

    #[test]
    fn an_open_tool_loop_is_kept_whole() {
        let big = "z".repeat(2000);
        let mut messages = vec![
            user("old"),
            assistant("ok"),
            user("do it"),
            tool_call("a"),
            tool_result("a", &big),
            tool_call("b"),
            tool_result("b", "fine"),
        ];
        trim_to_budget(&mut messages, 50);
        assert_eq!(texts(&messages), vec!["do it", "call a", "result a", "call b", "result b"]);
    }

    #[test]
    fn a_history_with_no_user_turn_is_left_alone() {
        let mut messages = vec![assistant(&"x".repeat(4000))];
        trim_to_budget(&mut messages, 1);
        assert_eq!(messages.len(), 1);
        trim_to_budget(&mut Vec::new(), 1);
    }
}
