//! Conversations with Stu: validate a message, run its turn in the background, stream the turn's
//! events to whoever is watching. A turn outlives its watcher: dropping the stream loses nothing.

mod approval;
mod change_tools;
mod tool_calls;
mod turn;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::Status;

use crate::brain::Brain;
use crate::changes::Changes;
use crate::config::Budgets;
use crate::store::{ConversationRow, Store, StoreError, WorkerKind, WorkerRow, WorkerState};
use crate::workers::Workers;

/// Events of one turn buffered for its watcher; a slow watcher slows the turn's event delivery,
/// never the workers (their output waits in the broker's spool).
const TURN_EVENTS_CAPACITY: usize = 256;
/// Messages of history loaded for a turn, before trimming to the token budget.
const HISTORY_MESSAGES: u32 = 200;
/// Longest sender label, in bytes.
const MAX_SENDER_BYTES: usize = 256;

/// What a turn tells its watcher, in order.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    Conversation { conversation_id: String, created: bool },
    Text(String),
    WorkerSpawned { worker_id: String, kind: WorkerKind, task: String, sandbox_id: String, template_version: String },
    WorkerOutput { worker_id: String, seq: u64, stderr: bool, data: Bytes },
    WorkerFinished { worker_id: String, exit_code: Option<i32>, summary: String, state: WorkerState },
    Notice(String),
    Error { code: tonic::Code, message: String },
    Done { message_id: String },
}

impl TurnEvent {
    fn finished(row: &WorkerRow) -> TurnEvent {
        TurnEvent::WorkerFinished {
            worker_id: row.id.clone(),
            exit_code: row.exit_code,
            summary: row.summary.clone(),
            state: row.state,
        }
    }
}

pub struct SendMessage {
    pub conversation_id: String,
    pub text: String,
    pub sender: String,
    pub trace_id: String,
}

#[derive(Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    workers: Workers,
    changes: Changes,
    brain: Arc<dyn Brain>,
    budgets: Budgets,
    history_token_budget: usize,
    /// Conversations with a turn in progress: one turn at a time per conversation.
    busy: Mutex<HashSet<String>>,
    /// Turns in progress across all conversations (CONDUCTOR_MAX_TURNS).
    turns: Arc<Semaphore>,
}

impl Chat {
    pub fn new(
        store: Store,
        workers: Workers,
        changes: Changes,
        brain: Arc<dyn Brain>,
        budgets: Budgets,
        history_token_budget: usize,
    ) -> Chat {
        let turns = Arc::new(Semaphore::new(budgets.max_turns));
        Chat {
            inner: Arc::new(Inner {
                store,
                workers,
                changes,
                brain,
                budgets,
                history_token_budget,
                busy: Mutex::new(HashSet::new()),
                turns,
            }),
        }
    }

    pub fn brain_name(&self) -> &'static str {
        self.inner.brain.name()
    }

    /// Starts a turn and returns its events. Errors before anything started are returned as
    /// `Status`; later ones arrive as `TurnEvent::Error` followed by `Done`.
    pub async fn send(&self, request: SendMessage) -> Result<mpsc::Receiver<TurnEvent>, Status> {
        let text = request.text.trim().to_owned();
        if text.is_empty() {
            return Err(Status::invalid_argument("text: must not be empty"));
        }
        let max = self.inner.budgets.max_message_bytes;
        if text.len() > max {
            return Err(Status::invalid_argument(format!(
                "text: {} bytes, at most {max} allowed (CONDUCTOR_MAX_MESSAGE_BYTES)",
                text.len()
            )));
        }
        if request.sender.len() > MAX_SENDER_BYTES {
            return Err(Status::invalid_argument(format!("sender: at most {MAX_SENDER_BYTES} bytes")));
        }
        let sender = if request.sender.trim().is_empty() { "anonymous".to_owned() } else { request.sender.clone() };
        let permit = self.inner.turns.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} turns are in progress (CONDUCTOR_MAX_TURNS); retry shortly",
                self.inner.budgets.max_turns
            ))
        })?;
        let store = &self.inner.store;
        let (conversation_id, created) = if request.conversation_id.is_empty() {
            let now = SystemTime::now();
            let row = ConversationRow {
                id: format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
                title: title_of(&text),
                created_at: now,
                updated_at: now,
                message_count: 0,
            };
            store.create_conversation(&row).await.map_err(store_status)?;
            (row.id, true)
        } else {
            match store.get_conversation(&request.conversation_id).await.map_err(store_status)? {
                Some(row) => (row.id, false),
                None => {
                    return Err(Status::not_found(format!(
                        "conversation_id: no conversation {:?}",
                        request.conversation_id
                    )));
                }
            }
        };
        let busy = BusyGuard::claim(&self.inner, &conversation_id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "conversation {conversation_id} is already answering a message; send again after its `done`"
            ))
        })?;
        let (events, receiver) = mpsc::channel(TURN_EVENTS_CAPACITY);
        let turn = turn::Turn {
            chat: self.clone(),
            conversation_id,
            created,
            text,
            sender,
            trace_id: request.trace_id,
            events,
        };
        tokio::spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            let _busy = busy;
            turn.run().await;
        });
        Ok(receiver)
    }
}

/// Marks a conversation busy for the life of its turn.
struct BusyGuard {
    inner: Arc<Inner>,
    conversation_id: String,
}

impl BusyGuard {
    fn claim(inner: &Arc<Inner>, conversation_id: &str) -> Option<BusyGuard> {
        let claimed = inner.busy.lock().expect("lock poisoned").insert(conversation_id.to_owned());
        claimed.then(|| BusyGuard { inner: inner.clone(), conversation_id: conversation_id.to_owned() })
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.inner.busy.lock().expect("lock poisoned").remove(&self.conversation_id);
    }
}

/// A conversation's title: its first message, shortened at a character boundary.
fn title_of(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut title: String = line.chars().take(60).collect();
    if title.len() < line.len() {
        title.push('…');
    }
    title
}

pub fn store_status(error: StoreError) -> Status {
    Status::unavailable(format!("store: {error}"))
}
