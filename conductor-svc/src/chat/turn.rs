//! One turn: the user's message, then brain calls and tool rounds until the brain stops asking
//! for tools (or the round budget ends), every step stored and streamed.

use std::time::SystemTime;

use tokio::sync::mpsc;

use super::{Chat, HISTORY_MESSAGES, TurnEvent};
use crate::brain::{Block, BrainReply, BrainRequest, ChatMessage, Role, budget, prompt, text_protocol, tools};
use crate::store::MessageRow;

pub(super) struct Turn {
    pub chat: Chat,
    pub conversation_id: String,
    pub created: bool,
    pub text: String,
    pub sender: String,
    pub trace_id: String,
    pub events: mpsc::Sender<TurnEvent>,
}

/// Text deltas buffered between a brain and the turn's event stream.
const TEXT_DELTAS_CAPACITY: usize = 64;

impl Turn {
    /// Sends an event; a watcher that went away is not an error — the turn carries on.
    pub(super) async fn emit(&self, event: TurnEvent) {
        let _ = self.events.send(event).await;
    }

    pub(super) async fn run(self) {
        self.emit(TurnEvent::Conversation { conversation_id: self.conversation_id.clone(), created: self.created })
            .await;
        let message_id = match self.converse().await {
            Ok(message_id) => message_id,
            Err(message) => {
                tracing::warn!(conversation = %self.conversation_id, "{message}");
                self.emit(TurnEvent::Error { code: tonic::Code::Unavailable, message }).await;
                String::new()
            }
        };
        self.emit(TurnEvent::Done { message_id }).await;
    }

    async fn converse(&self) -> Result<String, String> {
        let inner = &self.chat.inner;
        let store = &inner.store;
        let user = ChatMessage::user_text(&self.text);
        self.store_message(&user, &self.sender, Vec::new()).await?;
        self.chat
            .inner
            .workers
            .audit(&self.sender, "send_message", &self.conversation_id, &self.text, &self.trace_id)
            .await;
        if let Some(decision) = super::approval::parse(&self.text) {
            let answer = self.decide_change(decision).await;
            self.emit(TurnEvent::Text(answer.clone())).await;
            let reply = ChatMessage { role: Role::Assistant, content: vec![Block::text(answer)] };
            return self.store_message(&reply, "stu", Vec::new()).await;
        }

        let mut history: Vec<ChatMessage> = store
            .messages(&self.conversation_id, HISTORY_MESSAGES)
            .await
            .map_err(|e| format!("store: {e}"))?
            .into_iter()
            .map(|row| ChatMessage { role: row.role, content: row.blocks })
            .collect();
        let turn_start = history.len().saturating_sub(1);
        let mut last_message_id = String::new();
        for _round in 0..inner.budgets.max_tool_rounds {
            let request = BrainRequest {
                system: prompt::system_prompt(&self.prompt_context().await),
                messages: {
                    let mut messages = history.clone();
                    budget::trim_to_budget(&mut messages, inner.history_token_budget);
                    messages
                },
                tools: tools::all(),
            };
            tracing::debug!(conversation = %self.conversation_id, messages = request.messages.len(), "asking the brain");
            let mut reply = self.ask_brain(&request).await?;
            tracing::debug!(conversation = %self.conversation_id, stop_reason = %reply.stop_reason, "brain replied");
            if inner.brain.uses_text_protocol() && reply.tool_uses().next().is_none() {
                add_text_protocol_spawns(&mut reply, &history[turn_start..]);
            }
            let assistant = ChatMessage { role: Role::Assistant, content: reply.content.clone() };
            let tool_uses: Vec<(String, String, serde_json::Value)> =
                reply.tool_uses().map(|(id, name, input)| (id.to_owned(), name.to_owned(), input.clone())).collect();
            if tool_uses.is_empty() {
                last_message_id = self.store_message(&assistant, inner.brain.name(), Vec::new()).await?;
                history.push(assistant);
                return Ok(last_message_id);
            }
            history.push(assistant.clone());
            // Tools of one reply run concurrently: several workers at once.
            let results = futures_util::future::join_all(
                tool_uses.iter().map(|(id, name, input)| self.call_tool(id, name, input)),
            )
            .await;
            tracing::debug!(conversation = %self.conversation_id, tools = tool_uses.len(), "tool round done");
            let worker_ids = results.iter().filter_map(|r| r.worker_id.clone()).collect();
            last_message_id = self.store_message(&assistant, inner.brain.name(), worker_ids).await?;
            let tool_results = ChatMessage {
                role: Role::User,
                content: results
                    .into_iter()
                    .zip(&tool_uses)
                    .map(|(result, (id, _, _))| Block::ToolResult {
                        tool_use_id: id.clone(),
                        content: result.content,
                        is_error: result.is_error,
                    })
                    .collect(),
            };
            self.store_message(&tool_results, "tools", Vec::new()).await?;
            history.push(tool_results);
        }
        let note = format!(
            "\n(Stopped after {} tool rounds: CONDUCTOR_MAX_TOOL_ROUNDS. Ask me to continue if needed.)",
            inner.budgets.max_tool_rounds
        );
        self.emit(TurnEvent::Text(note.clone())).await;
        let closing = ChatMessage { role: Role::Assistant, content: vec![Block::text(note)] };
        if let Ok(id) = self.store_message(&closing, inner.brain.name(), Vec::new()).await {
            last_message_id = id;
        }
        Ok(last_message_id)
    }

    /// Calls the brain, streaming its text deltas to the watcher as they come.
    async fn ask_brain(&self, request: &BrainRequest) -> Result<BrainReply, String> {
        let brain = &self.chat.inner.brain;
        let (text_tx, mut text_rx) = mpsc::channel(TEXT_DELTAS_CAPACITY);
        let forward = async {
            while let Some(delta) = text_rx.recv().await {
                self.emit(TurnEvent::Text(delta)).await;
            }
        };
        let respond = async move {
            let reply = brain.respond(request, &text_tx).await;
            drop(text_tx);
            reply
        };
        let (reply, ()) = tokio::join!(respond, forward);
        reply.map_err(|error| format!("{} brain: {error}", brain.name()))
    }

    async fn prompt_context(&self) -> prompt::Context {
        let inner = &self.chat.inner;
        let memories = inner
            .store
            .list_memories("", prompt::MAX_PROMPT_MEMORIES as u32)
            .await
            .map(|rows| rows.into_iter().map(|m| (m.key, m.content)).collect())
            .unwrap_or_default();
        let (templates, infrastructure_note) = match inner.workers.templates().await {
            Ok(templates) => {
                let note = (!templates.iter().any(|t| t.name == "infrastructure"))
                    .then(|| "not enabled: the broker has no infrastructure template".to_owned());
                let rows = templates.into_iter().map(|t| (t.name, t.version, t.runtime, t.capabilities)).collect();
                (rows, note)
            }
            Err(error) => (Vec::new(), Some(format!("unknown right now: {error}"))),
        };
        prompt::Context { memories, templates, infrastructure_note }
    }

    /// Stores a message; returns its id.
    pub(super) async fn store_message(
        &self,
        message: &ChatMessage,
        sender: &str,
        worker_ids: Vec<String>,
    ) -> Result<String, String> {
        let row = MessageRow {
            id: format!("m-{}", uuid::Uuid::new_v4().simple()),
            conversation_id: self.conversation_id.clone(),
            role: message.role,
            sender: sender.to_owned(),
            text: message.text(),
            blocks: message.content.clone(),
            worker_ids,
            created_at: SystemTime::now(),
        };
        self.chat.inner.store.append_message(&row).await.map_err(|e| format!("store: {e}"))?;
        Ok(row.id)
    }
}

/// The seed's text protocol: `SPAWN_…:` lines in the model's own reply become tool calls. A line
/// that repeats what a tool result of this turn contained is the model parroting sandbox output,
/// not deciding: it spawns nothing.
fn add_text_protocol_spawns(reply: &mut BrainReply, this_turn: &[ChatMessage]) {
    let sandbox_text: String = this_turn
        .iter()
        .flat_map(|message| &message.content)
        .filter_map(|block| match block {
            Block::ToolResult { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    for (index, spawn) in text_protocol::parse_spawns(&reply.text()).into_iter().enumerate() {
        if sandbox_text.contains(&spawn.task) {
            tracing::warn!(task = %spawn.task, "ignoring a SPAWN line that repeats sandbox output");
            continue;
        }
        let name = match spawn.kind {
            crate::store::WorkerKind::Worker => tools::SPAWN_WORKER,
            crate::store::WorkerKind::Infrastructure => tools::SPAWN_INFRASTRUCTURE_WORKER,
        };
        reply.content.push(Block::ToolUse {
            id: format!("text-protocol-{index}"),
            name: name.to_owned(),
            input: serde_json::json!({ "task": spawn.task }),
        });
    }
}
